//! Simulated Nodes: what kubelet and virt-handler publish about a host.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::SIMULATOR_MANAGER as MANAGER;

/// One simulated node: a name and its labels (e.g. the region a VpsLocation selects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// Parses `NAME` or `NAME:key=value,key=value`.
    pub fn parse(s: &str) -> Result<NodeSpec> {
        let (name, labels) = s.split_once(':').unwrap_or((s, ""));
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).context("labels are key=value"))
            .collect::<Result<_>>()?;
        Ok(NodeSpec { name: name.to_string(), labels })
    }

    /// The labels kubelet and virt-handler's node labeller would set, plus the configured ones.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        for (k, v) in [
            ("kubernetes.io/hostname", self.name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubevirt.io/schedulable", "true"),
            ("machine-type.node.kubevirt.io/q35", "true"),
            ("cpu-model.node.kubevirt.io/host-model", "true"),
            ("simulator.vps.org/node", "true"),
        ] {
            labels.insert(k.to_string(), v.to_string());
        }
        labels
    }
}

fn now() -> String {
    super::k8s_now()
}

fn micro_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The InternalIP of the `i`-th simulated node.
pub fn address(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

/// Creates or updates the Nodes and reports them Ready, with kubelet `kubelet_version`
/// listening on `kubelet_port`.
pub async fn register(client: &Client, specs: &[NodeSpec], kubelet_version: &str, kubelet_port: u16) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for (i, spec) in specs.iter().enumerate() {
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": spec.name,
                "labels": spec.all_labels(),
                "annotations": {"kubevirt.io/heartbeat": now(), "node.alpha.kubernetes.io/ttl": "0"},
            },
        });
        api.patch(&spec.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&node)).await?;
        let resources = json!({
            "cpu": "1000", "memory": "4Ti", "pods": "20000", "ephemeral-storage": "100Ti",
            "devices.kubevirt.io/kvm": "1000", "devices.kubevirt.io/tun": "1000", "devices.kubevirt.io/vhost-net": "1000",
        });
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": address(i)}, {"type": "Hostname", "address": spec.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "", "osImage": "simulated", "kernelVersion": "simulated", "containerRuntimeVersion": "simulated://1",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
            "conditions": conditions(),
        }});
        api.patch_status(&spec.name, &PatchParams::default(), &Patch::Strategic(&status)).await?;
    }
    Ok(())
}

fn conditions() -> serde_json::Value {
    let t = now();
    let c = |type_: &str, status: &str, reason: &str| json!({"type": type_, "status": status, "reason": reason, "message": "simulated", "lastHeartbeatTime": t, "lastTransitionTime": t});
    json!([
        c("Ready", "True", "KubeletReady"),
        c("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        c("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        c("PIDPressure", "False", "KubeletHasSufficientPID"),
    ])
}

/// Keeps the nodes alive: kubelet's Lease every 10 s and Ready condition every 20 s,
/// virt-handler's heartbeat annotation every 60 s.
pub async fn heartbeat(client: Client, specs: Vec<NodeSpec>) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick: u64 = 0;
    loop {
        for spec in &specs {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": spec.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": spec.name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
            });
            if let Err(e) = leases.patch(&spec.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease)).await
            {
                tracing::warn!(node = %spec.name, "Lease renewal failed: {e}");
            }
            if tick.is_multiple_of(2) {
                let t = now();
                let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": t}]}});
                if let Err(e) =
                    nodes.patch_status(&spec.name, &PatchParams::default(), &Patch::Strategic(&status)).await
                {
                    tracing::warn!(node = %spec.name, "Node heartbeat failed: {e}");
                }
            }
            if tick.is_multiple_of(6) {
                let patch = json!({"metadata": {"annotations": {"kubevirt.io/heartbeat": now()}, "labels": {"kubevirt.io/schedulable": "true"}}});
                if let Err(e) = nodes.patch(&spec.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    tracing::warn!(node = %spec.name, "virt-handler heartbeat failed: {e}");
                }
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_labels() {
        let s = NodeSpec::parse("sim-1:topology.kubernetes.io/region=us-west,tier=gold").unwrap();
        assert_eq!(s.name, "sim-1");
        assert_eq!(s.labels["topology.kubernetes.io/region"], "us-west");
        let all = s.all_labels();
        assert_eq!(all["kubevirt.io/schedulable"], "true");
        assert_eq!(all["tier"], "gold");
        assert_eq!(NodeSpec::parse("plain").unwrap().labels.len(), 0);
        assert!(NodeSpec::parse("bad:novalue").is_err());
    }
}
