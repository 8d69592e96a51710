//! The KubeVirt VirtualMachine a server becomes: a pure function of the server and the
//! catalog entries it names. KubeVirt's own admission webhooks check its output in tests.

use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{
    ACCOUNT_LABEL, PowerState, SERVER_ID_LABEL, SERVER_LABEL, SIMULATOR_ANNOTATION_PREFIX, VpsImage, VpsLocation,
    VpsPlan, VpsServer, VpsSshKey,
};

/// Annotation on the VM: hash of what the operator last applied, so it applies only changes.
pub const SPEC_HASH_ANNOTATION: &str = "vps.org/spec-hash";

/// Everything a VM is built from.
pub struct VmInputs<'a> {
    pub server: &'a VpsServer,
    pub id: i64,
    pub plan: &'a VpsPlan,
    pub image: &'a VpsImage,
    pub location: &'a VpsLocation,
    pub ssh_key: Option<&'a VpsSshKey>,
}

/// `Always` while the server should run, `Halted` when stopped or suspended.
pub fn run_strategy(server: &VpsServer) -> &'static str {
    if server.spec.suspended || server.spec.power_state == PowerState::Stopped { "Halted" } else { "Always" }
}

/// The name of the root disk's DataVolume.
pub fn root_disk_name(server_name: &str) -> String {
    format!("{server_name}-root")
}

/// The VM to server-side apply, with its spec hash annotation set.
pub fn build_vm(inputs: &VmInputs<'_>) -> Value {
    let server = inputs.server;
    let name = server.name_any();
    let plan = &inputs.plan.spec;
    let hostname = server.spec.hostname.clone().unwrap_or_else(|| server.spec.name.clone());
    let short = hostname.split('.').next().unwrap_or(&hostname).to_string();
    let mut cloud_config =
        format!("#cloud-config\nhostname: {short}\nfqdn: {hostname}\nprefer_fqdn_over_hostname: true\n");
    if let Some(key) = inputs.ssh_key {
        cloud_config.push_str(&format!("ssh_authorized_keys:\n  - {}\n", key.spec.public_key.trim()));
    }
    let labels = json!({
        SERVER_LABEL: name,
        SERVER_ID_LABEL: inputs.id.to_string(),
        ACCOUNT_LABEL: server.labels().get(ACCOUNT_LABEL).cloned().unwrap_or_else(|| server.namespace().unwrap_or_default()),
    });
    let mut storage = json!({"resources": {"requests": {"storage": format!("{}Gi", plan.storage)}}});
    if let Some(class) = &inputs.location.spec.storage_class {
        storage["storageClassName"] = json!(class);
    }
    let source = &inputs.image.spec.source;
    let memory = format!("{}Mi", plan.memory);
    let mut vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": server.namespace(),
            "labels": labels,
            "ownerReferences": [server.controller_owner_ref(&()).expect("a VpsServer from the API has a uid")],
        },
        "spec": {
            "runStrategy": run_strategy(server),
            "dataVolumeTemplates": [{
                "metadata": {"name": root_disk_name(&name), "labels": labels},
                "spec": {
                    "sourceRef": {"kind": "DataSource", "name": source.data_source_name, "namespace": source.data_source_namespace},
                    "storage": storage,
                },
            }],
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "domain": {
                        "cpu": {"cores": plan.vcpus, "sockets": 1, "threads": 1},
                        "memory": {"guest": memory},
                        "resources": {"requests": {"memory": memory}},
                        "devices": {
                            "disks": [
                                {"name": "root", "disk": {"bus": "virtio"}},
                                {"name": "cloudinit", "disk": {"bus": "virtio"}},
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "nodeSelector": inputs.location.spec.node_selector,
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {"name": "root", "dataVolume": {"name": root_disk_name(&name)}},
                        {"name": "cloudinit", "cloudInitNoCloud": {"userData": cloud_config}},
                    ],
                },
            },
        },
    });
    // Annotations meant for the simulated hosts (failure injection) travel with the VM.
    let mut annotations: serde_json::Map<String, Value> = server
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(SIMULATOR_ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    vm["metadata"]["annotations"] = Value::Object(annotations.clone());
    let hash = hex(&Sha256::digest(serde_json::to_vec(&vm).expect("JSON serializes")));
    annotations.insert(SPEC_HASH_ANNOTATION.into(), json!(hash));
    vm["metadata"]["annotations"] = Value::Object(annotations);
    vm
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash annotation of a built VM.
pub fn spec_hash(vm: &Value) -> Option<&str> {
    vm["metadata"]["annotations"][SPEC_HASH_ANNOTATION].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ImageSource, VpsImageSpec, VpsLocationSpec, VpsPlanSpec, VpsSshKeySpec};
    use serde_json::json;

    fn mk_server(power: &str, suspended: bool) -> VpsServer {
        let mut s: VpsServer = serde_json::from_value(json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": "srv-7", "namespace": "acme", "uid": "u-1"},
            "spec": {"name": "web", "plan": "standard", "os": "ubuntu", "location": "us-west",
                     "hostname": "web01.example.com", "powerState": power, "suspended": suspended}
        }))
        .unwrap();
        s.metadata.labels = Some([(ACCOUNT_LABEL.to_string(), "acme".to_string())].into());
        s
    }

    fn build(server: &VpsServer, key: Option<&VpsSshKey>) -> Value {
        let plan = VpsPlan::new(
            "standard",
            VpsPlanSpec {
                id: 1,
                display_name: "Standard VPS".into(),
                vcpus: 2,
                memory: 4096,
                storage: 80,
                bandwidth: 2048,
                monthly_price_cents: 1000,
            },
        );
        let image = VpsImage::new(
            "ubuntu",
            VpsImageSpec {
                id: 5,
                display_name: "Ubuntu 22.04 LTS".into(),
                source: ImageSource {
                    data_source_namespace: "vps-images".into(),
                    data_source_name: "ubuntu-22-04".into(),
                },
            },
        );
        let location = VpsLocation::new(
            "us-west",
            VpsLocationSpec {
                display_name: "US West".into(),
                node_selector: [("topology.kubernetes.io/region".to_string(), "us-west".to_string())].into(),
                storage_class: Some("fast".into()),
            },
        );
        build_vm(&VmInputs { server, id: 7, plan: &plan, image: &image, location: &location, ssh_key: key })
    }

    #[test]
    fn sizes_disk_source_and_placement_come_from_the_catalog() {
        let vm = build(&mk_server("Running", false), None);
        let spec = &vm["spec"];
        assert_eq!(spec["runStrategy"], "Always");
        assert_eq!(spec["template"]["spec"]["domain"]["cpu"]["cores"], 2);
        assert_eq!(spec["template"]["spec"]["domain"]["memory"]["guest"], "4096Mi");
        let dv = &spec["dataVolumeTemplates"][0];
        assert_eq!(dv["metadata"]["name"], "srv-7-root");
        assert_eq!(dv["spec"]["storage"]["resources"]["requests"]["storage"], "80Gi");
        assert_eq!(dv["spec"]["storage"]["storageClassName"], "fast");
        assert_eq!(
            dv["spec"]["sourceRef"],
            json!({"kind": "DataSource", "name": "ubuntu-22-04", "namespace": "vps-images"})
        );
        assert_eq!(spec["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/region"], "us-west");
        assert_eq!(vm["metadata"]["labels"][SERVER_ID_LABEL], "7");
        assert_eq!(vm["metadata"]["ownerReferences"][0]["kind"], "VpsServer");
        assert_eq!(vm["metadata"]["ownerReferences"][0]["controller"], true);
    }

    #[test]
    fn cloud_init_carries_hostname_and_key() {
        let key = VpsSshKey::new(
            "k",
            VpsSshKeySpec { name: "laptop".into(), public_key: "ssh-ed25519 AAAAC3Nza me@laptop".into() },
        );
        let vm = build(&mk_server("Running", false), Some(&key));
        let user_data = vm["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"].as_str().unwrap();
        assert!(user_data.starts_with("#cloud-config\n"));
        assert!(user_data.contains("hostname: web01\n"));
        assert!(user_data.contains("fqdn: web01.example.com\n"));
        assert!(user_data.contains("  - ssh-ed25519 AAAAC3Nza me@laptop\n"));
    }

    #[test]
    fn power_and_suspension_map_to_run_strategy() {
        assert_eq!(build(&mk_server("Stopped", false), None)["spec"]["runStrategy"], "Halted");
        assert_eq!(build(&mk_server("Running", true), None)["spec"]["runStrategy"], "Halted");
    }

    #[test]
    fn hash_changes_only_with_content() {
        let a = build(&mk_server("Running", false), None);
        let b = build(&mk_server("Running", false), None);
        let c = build(&mk_server("Stopped", false), None);
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_ne!(spec_hash(&a), spec_hash(&c));
    }
}
