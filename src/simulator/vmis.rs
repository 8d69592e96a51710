//! virt-handler's part for VirtualMachineInstances on simulated nodes: Scheduled → Running
//! with interfaces; an instance being deleted → Succeeded (the guest shut down).
//! VMIs have no status subresource: every write is a patch of the whole object guarded by
//! its resourceVersion (a conflict is retried by the controller).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::{Failure, Sim, remaining};

pub fn resource() -> ApiResource {
    ApiResource {
        group: "kubevirt.io".into(),
        version: "v1".into(),
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachineInstance".into(),
        plural: "virtualmachineinstances".into(),
    }
}

pub async fn run(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::all_with(sim.client.clone(), &resource());
    Controller::new_with(api, watcher::Config::default(), resource())
        .run(
            reconcile,
            |_, e, _| {
                tracing::debug!("Simulated virt-handler: {e}");
                Action::requeue(Duration::from_millis(300))
            },
            sim,
        )
        .for_each(|_| async {})
        .await;
    Ok(())
}

/// Whether the instance `name` in `ns` has stopped (it is final, or gone).
pub async fn stopped(sim: &Sim, ns: &str, name: &str) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client.clone(), ns, &resource());
    let phase = api.get_opt(name).await?.map(|vmi| vmi.data["status"]["phase"].as_str().unwrap_or("").to_string());
    Ok(phase.is_none_or(|p| p == "Succeeded" || p == "Failed"))
}

async fn reconcile(vmi: Arc<DynamicObject>, sim: Arc<Sim>) -> Result<Action, kube::Error> {
    let status = vmi.data.get("status").cloned().unwrap_or(Value::Null);
    let node = status["nodeName"].as_str();
    if !sim.is_our_node(node) {
        return Ok(Action::await_change());
    }
    let ns = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client.clone(), &ns, &resource());
    let phase = status["phase"].as_str().unwrap_or("");
    let final_phase = phase == "Succeeded" || phase == "Failed";
    let rv = vmi.resource_version();
    let transition = |p: &str| transition(&status, p);

    if let Some(deleted) = &vmi.metadata.deletion_timestamp {
        if final_phase {
            // A real guest of an instance that ended otherwise stops with it.
            sim.guests.remove(&format!("{ns}/{name}")).await;
            return Ok(Action::await_change());
        }
        // virt-handler asks the guest to shut down and stops the domain when the instance's
        // grace period ends (at once for 0: a forced stop); the VMI's update wakes us.
        let grace = Duration::from_secs(vmi.data["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        let key = format!("{ns}/{name}");
        if let Some(guest) = sim.guests.get(&key) {
            // A real guest: an ACPI shutdown, and the machine stopped when the grace period ends.
            if !guest.exited().await && !remaining(grace, Some(deleted.0)).is_zero() {
                if let Err(e) = guest.power_down().await {
                    tracing::warn!(instance = key, "Could not ask the guest to shut down: {e:#}");
                }
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            sim.guests.remove(&key).await;
        }
        let guest = match sim.failure(&ns, &name) {
            Some(Failure::ShutdownHang) => grace,
            _ => sim.config.shutdown_delay.min(grace),
        };
        let wait = remaining(guest, Some(deleted.0));
        if !wait.is_zero() {
            return Ok(Action::requeue(wait));
        }
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Succeeded", "phaseTransitionTimestamps": transition("Succeeded")}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(Action::await_change());
    }

    let key = format!("{ns}/{name}");
    match phase {
        "Scheduled" if sim.guests.get(&key).is_some() || sim.guests.has_room() => {
            // A real guest is Running once it has booted.
            let guest = match sim.guests.get(&key) {
                Some(guest) => guest,
                None => match super::guest::boot_of(&sim, &vmi).await? {
                    None => return simulated_boot(&vmi, &sim, &api, &status).await,
                    Some(boot) => match sim.guests.boot(boot).await {
                        Ok(guest) => guest,
                        Err(e) => {
                            tracing::error!(instance = key, "A real guest did not start: {e:#}");
                            let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Failed", "phaseTransitionTimestamps": transition("Failed")}});
                            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                            return Ok(Action::await_change());
                        }
                    },
                },
            };
            if guest.exited().await {
                sim.guests.remove(&key).await;
                let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Failed", "phaseTransitionTimestamps": transition("Failed")}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                return Ok(Action::await_change());
            }
            if !guest.booted().await {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let command = format!("ssh -p {} debian@127.0.0.1", guest.ssh_port);
            tracing::info!(instance = key, command, "A real guest is up");
            let ssh = format!("127.0.0.1:{}", guest.ssh_port);
            let patch = json!({
                "metadata": {"resourceVersion": rv, "annotations": {super::guest::SSH_ANNOTATION: ssh}},
                "status": running(&sim, &vmi, &status),
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        "Scheduled" => simulated_boot(&vmi, &sim, &api, &status).await,
        // A real guest that powered itself off (or died): its instance ends.
        "Running" if sim.guests.get(&key).is_some() => {
            let guest = sim.guests.get(&key).expect("just seen");
            if !guest.exited().await {
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            sim.guests.remove(&key).await;
            let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Succeeded", "phaseTransitionTimestamps": transition("Succeeded")}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

/// A simulated guest boots: Running after the boot delay, unless a crash is injected.
async fn simulated_boot(
    vmi: &DynamicObject,
    sim: &Sim,
    api: &Api<DynamicObject>,
    status: &Value,
) -> Result<Action, kube::Error> {
    let (ns, name, rv) = (vmi.namespace().unwrap_or_default(), vmi.name_any(), vmi.resource_version());
    let since = status["phaseTransitionTimestamps"]
        .as_array()
        .and_then(|l| l.iter().rev().find(|t| t["phase"] == "Scheduled"))
        .and_then(|t| t["phaseTransitionTimestamp"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let wait = remaining(sim.config.boot_delay, since);
    if !wait.is_zero() {
        return Ok(Action::requeue(wait));
    }
    // An injected crash: the guest dies while starting, again and again (KubeVirt counts
    // failures before Running as failed starts and backs off).
    let vm_name = vmi.labels().get("vm.kubevirt.io/name").cloned().unwrap_or_else(|| name.clone());
    if sim.failure(&ns, &vm_name) == Some(Failure::Crash) {
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Failed", "phaseTransitionTimestamps": transition(status, "Failed")}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(Action::await_change());
    }
    let patch = json!({"metadata": {"resourceVersion": rv}, "status": running(sim, vmi, status)});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(Action::await_change())
}

/// The phase transitions of `status` with `phase` entered now.
fn transition(status: &Value, phase: &str) -> Value {
    let mut list = status["phaseTransitionTimestamps"].as_array().cloned().unwrap_or_default();
    list.push(json!({"phase": phase, "phaseTransitionTimestamp": super::k8s_now()}));
    Value::Array(list)
}

/// The status of an instance that runs now.
fn running(sim: &Sim, vmi: &DynamicObject, status: &Value) -> Value {
    json!({
        "phase": "Running",
        "phaseTransitionTimestamps": transition(status, "Running"),
        "interfaces": [interface(sim, vmi)],
        "machine": {"type": "q35"},
        "migrationMethod": "BlockMigration",
        "guestOSInfo": {},
    })
}

/// The guest's interface as the guest agent reports it: with the addresses its cloud-init
/// network configuration gives it (a provider network), else one of the simulated pod
/// network's by the instance's UID.
fn interface(sim: &Sim, vmi: &DynamicObject) -> Value {
    let spec = &vmi.data["spec"];
    let configured = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| v["cloudInitNoCloud"]["networkData"].as_str())
        .and_then(crate::address_pool::configured);
    let name = spec["domain"]["devices"]["interfaces"][0]["name"].as_str().unwrap_or("default");
    let (mac, addresses) = match configured {
        Some(configured) => configured,
        None => {
            let (v4, v6) = sim.pools.for_uid(&vmi.uid().unwrap_or_default());
            (mac(&v4), vec![v4, v6])
        }
    };
    json!({
        "name": name, "interfaceName": "eth0", "mac": mac,
        "ipAddress": addresses.first(), "ipAddresses": addresses,
        "infoSource": "domain", "linkState": "up", "queueCount": 1,
    })
}

/// A locally administered MAC derived from the IPv4 address.
fn mac(v4: &str) -> String {
    let octets: Vec<u8> = v4.split('.').filter_map(|o| o.parse().ok()).collect();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", octets[0], octets[1], octets[2], octets[3])
}
