//! kubelet's part for virt-launcher Pods on simulated nodes: Running with addresses once
//! bound, Ready once virt-controller reports the guest unpaused, terminated when deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::{Failure, Sim, remaining};

const UNPAUSED: &str = "kubevirt.io/virtual-machine-unpaused";

pub async fn run(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(sim.client.clone());
    Controller::new(api, watcher::Config::default().labels("kubevirt.io=virt-launcher"))
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("Simulated kubelet: {e}");
                Action::requeue(Duration::from_millis(500))
            },
            sim,
        )
        .for_each(|_| async {})
        .await;
    Ok(())
}

fn condition_true(pod: &Pod, type_: &str) -> bool {
    pod.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == type_ && c.status == "True")
}

async fn reconcile(pod: Arc<Pod>, sim: Arc<Sim>) -> Result<Action, kube::Error> {
    let spec = pod.spec.clone().unwrap_or_default();
    if !sim.is_our_node(spec.node_name.as_deref()) {
        return Ok(Action::await_change());
    }
    let api: Api<Pod> = Api::namespaced(sim.client.clone(), &pod.namespace().unwrap_or_default());
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        // virt-launcher exits once its domain is down: a guest that ignores the shutdown keeps
        // it until virt-handler stops the instance (its grace period, or a forced stop).
        let ns = pod.namespace().unwrap_or_default();
        let vm_name = pod.labels().get("vm.kubevirt.io/name").map(String::as_str).unwrap_or_default();
        // So does a real guest until its machine is down.
        let hangs = sim.failure(&ns, vm_name) == Some(Failure::ShutdownHang);
        let real = sim.guests.get(&format!("{ns}/{vm_name}")).is_some();
        if (hangs && !super::vmis::stopped(&sim, &ns, vm_name).await?) || real {
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        let wait = remaining(sim.config.shutdown_delay, Some(deleted.0));
        if !wait.is_zero() {
            return Ok(Action::requeue(wait));
        }
        if let Some(vmi_uid) = pod.labels().get("kubevirt.io/created-by") {
            sim.serial.forget(vmi_uid);
        }
        return terminate(&api, &pod, phase, &containers).await;
    }
    if phase == "Running" {
        return follow_readiness_gate(&api, &pod).await;
    }
    let wait = remaining(sim.config.pod_start_delay, scheduled_at(&pod));
    if !wait.is_zero() {
        return Ok(Action::requeue(wait));
    }
    let vm_name = pod.labels().get("vm.kubevirt.io/name").map(String::as_str).unwrap_or_default();
    let status = match sim.failure(&pod.namespace().unwrap_or_default(), vm_name) {
        Some(Failure::ImagePull) => image_pull_failure(&containers),
        _ => {
            let vmi_uid =
                pod.labels().get("kubevirt.io/created-by").cloned().unwrap_or_else(|| pod.uid().unwrap_or_default());
            let host_ip = sim.node_address(spec.node_name.as_deref()).unwrap_or_default();
            running(&pod, &containers, &host_ip, sim.pools.for_uid(&vmi_uid))
        }
    };
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&status)).await?;
    Ok(Action::await_change())
}

/// A deleted Pod: its containers exit, then it goes (as kubelet deletes it with grace 0).
async fn terminate(api: &Api<Pod>, pod: &Pod, phase: &str, containers: &[&str]) -> Result<Action, kube::Error> {
    if phase != "Succeeded" && phase != "Failed" {
        let status = terminated(containers);
        api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&status)).await?;
    }
    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// A running Pod: Ready follows the readiness gate virt-controller sets.
async fn follow_readiness_gate(api: &Api<Pod>, pod: &Pod) -> Result<Action, kube::Error> {
    let gate = condition_true(pod, UNPAUSED);
    if gate != condition_true(pod, "Ready") {
        let status = json!({"status": {"conditions": [
            {"type": "Ready", "status": if gate { "True" } else { "False" }, "lastTransitionTime": super::k8s_now()}
        ]}});
        api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&status)).await?;
    }
    Ok(Action::await_change())
}

/// When the Pod was scheduled (or made).
fn scheduled_at(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| pod.creation_timestamp().map(|t| t.0))
}

/// The status of a Pod whose containers exited cleanly.
fn terminated(containers: &[&str]) -> Value {
    let now = super::k8s_now();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({"name": c, "ready": false, "restartCount": 0, "image": "simulated", "imageID": "simulated",
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    json!({"status": {"phase": "Succeeded", "containerStatuses": statuses,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}]}})
}

/// The status of a Pod whose images cannot be pulled (an injected failure).
fn image_pull_failure(containers: &[&str]) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({"name": c, "ready": false, "restartCount": 0, "image": "simulated", "imageID": "",
            "state": {"waiting": {"reason": "ErrImagePull", "message": "simulated image pull failure"}}})
        })
        .collect();
    json!({"status": {"phase": "Pending", "containerStatuses": statuses}})
}

/// The status of a Pod whose containers run (and its sidecars: init containers that restart
/// always, as KubeVirt's `guest-console-log`), with the guest's addresses as its own.
fn running(pod: &Pod, containers: &[&str], host_ip: &str, (v4, v6): (String, String)) -> Value {
    let now = super::k8s_now();
    let uid = pod.uid().unwrap_or_default();
    let status = |c: &str| {
        json!({"name": c, "ready": true, "started": true, "restartCount": 0, "image": "simulated", "imageID": "simulated",
            "containerID": format!("simulated://{uid}-{c}"),
            "state": {"running": {"startedAt": now}}})
    };
    let statuses: Vec<Value> = containers.iter().map(|c| status(c)).collect();
    let sidecars: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| status(&c.name))
        .collect();
    let ready = if condition_true(pod, UNPAUSED) { "True" } else { "False" };
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}],
        "startTime": now,
        "containerStatuses": statuses,
        "initContainerStatuses": sidecars,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ],
    }})
}
