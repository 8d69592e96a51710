//! The KubeVirt VirtualMachine a server becomes: a pure function of the server and what it
//! was resolved to ([`Resolved`]: its plan, image, location and key). KubeVirt's own
//! admission webhooks check its output in tests.

use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{
    ACCOUNT_LABEL, PowerState, Resolved, SERVER_ID_LABEL, SERVER_LABEL, SIMULATOR_ANNOTATION_PREFIX, VpsServer,
};

/// Annotation on the VM: hash of what the operator last applied, so it applies only changes.
pub const SPEC_HASH_ANNOTATION: &str = "vps.org/spec-hash";

/// Everything a VM is built from.
pub struct VmInputs<'a> {
    pub server: &'a VpsServer,
    pub id: i64,
    pub resolved: &'a Resolved,
    /// Halted whatever the server wants (a rebuild replacing its disk).
    pub halted: bool,
    /// Copy the server's failure-injection annotations (only where the node simulator runs).
    pub simulator_annotations: bool,
    /// On a provider network: the server's own interface there (else the pod network's).
    pub attached: Option<Attached<'a>>,
}

/// A server's interface on its location's provider network.
#[derive(Clone, Copy)]
pub struct Attached<'a> {
    /// The NetworkAttachmentDefinition, `namespace/name`.
    pub attachment: &'a str,
    pub mac: &'a str,
    /// The cloud-init network configuration (version 2) of its addresses.
    pub network_data: &'a str,
}

/// The name of the VM's interface (and network) on a provider network.
pub const PUBLIC_INTERFACE: &str = "public";

/// `Always` while the server should run, `Halted` when stopped or suspended.
pub fn run_strategy(server: &VpsServer) -> &'static str {
    if server.spec.suspended || server.spec.power_state == PowerState::Stopped { "Halted" } else { "Always" }
}

/// The name of the root disk's DataVolume.
pub fn root_disk_name(server_name: &str) -> String {
    format!("{server_name}-root")
}

/// The cloud-init user data: a structure serialized by a YAML library, so that no value can
/// add a key (a key's comment holding a line break) or change type (a host named `no`).
#[derive(Serialize)]
struct CloudConfig<'a> {
    hostname: &'a str,
    fqdn: &'a str,
    prefer_fqdn_over_hostname: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_authorized_keys: Vec<&'a str>,
}

/// The `#cloud-config` document of a server.
pub fn user_data(server: &VpsServer, resolved: &Resolved) -> String {
    let fqdn = server.spec.hostname.as_deref().unwrap_or(&server.spec.name);
    let config = CloudConfig {
        hostname: fqdn.split('.').next().unwrap_or(fqdn),
        fqdn,
        prefer_fqdn_over_hostname: true,
        ssh_authorized_keys: resolved.ssh_key.iter().map(|k| k.public_key.as_str()).collect(),
    };
    format!("#cloud-config\n{}", serde_yaml::to_string(&config).expect("the cloud config serializes"))
}

/// The VM to server-side apply, with its spec hash annotation set.
pub fn build_vm(inputs: &VmInputs<'_>) -> Value {
    let server = inputs.server;
    let name = server.name_any();
    let plan = &inputs.resolved.plan.spec;
    let location = &inputs.resolved.location.spec;
    let cloud_config = user_data(server, inputs.resolved);
    let labels = json!({
        SERVER_LABEL: name,
        SERVER_ID_LABEL: inputs.id.to_string(),
        ACCOUNT_LABEL: server.labels().get(ACCOUNT_LABEL).cloned().unwrap_or_else(|| server.namespace().unwrap_or_default()),
    });
    let mut storage = json!({"resources": {"requests": {"storage": super::resize::claim_size(plan.storage)}}});
    if let Some(class) = &location.storage_class {
        storage["storageClassName"] = json!(class);
    }
    let source = &inputs.resolved.image.spec.source;
    let memory = format!("{}Mi", plan.memory);
    let mut cloud_init = json!({"userData": cloud_config});
    let (interfaces, networks) = match &inputs.attached {
        None => (json!([{"name": "default", "masquerade": {}}]), json!([{"name": "default", "pod": {}}])),
        Some(a) => {
            cloud_init["networkData"] = json!(a.network_data);
            (
                json!([{"name": PUBLIC_INTERFACE, "bridge": {}, "macAddress": a.mac}]),
                json!([{"name": PUBLIC_INTERFACE, "multus": {"networkName": a.attachment}}]),
            )
        }
    };
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
            "runStrategy": if inputs.halted { "Halted" } else { run_strategy(server) },
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
                            "interfaces": interfaces,
                            // The serial console's output, kept by the launcher's
                            // `guest-console-log` container (the server's console-output),
                            // whatever the cluster's default.
                            "logSerialConsole": true,
                        },
                    },
                    "networks": networks,
                    "nodeSelector": location.node_selector,
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {"name": "root", "dataVolume": {"name": root_disk_name(&name)}},
                        {"name": "cloudinit", "cloudInitNoCloud": cloud_init},
                    ],
                },
            },
        },
    });
    // Annotations meant for the simulated hosts (failure injection) travel with the VM.
    let mut annotations: serde_json::Map<String, Value> = server
        .annotations()
        .iter()
        .filter(|(k, _)| inputs.simulator_annotations && k.starts_with(SIMULATOR_ANNOTATION_PREFIX))
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
    use crate::api::{ImageSource, Named, ResolvedKey, VpsImageSpec, VpsLocationSpec, VpsPlanSpec};
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

    fn resolved(key: Option<&str>) -> Resolved {
        Resolved {
            plan: Named {
                name: "standard".into(),
                spec: VpsPlanSpec {
                    id: 1,
                    display_name: "Standard VPS".into(),
                    vcpus: 2,
                    memory: 4096,
                    storage: 80,
                    bandwidth: 2048,
                    monthly_price_cents: 1000,
                    charged_while_stopped: true,
                },
            },
            image: Named {
                name: "ubuntu".into(),
                spec: VpsImageSpec {
                    id: 5,
                    display_name: "Ubuntu 22.04 LTS".into(),
                    source: ImageSource {
                        data_source_namespace: "vps-images".into(),
                        data_source_name: "ubuntu-22-04".into(),
                    },
                },
            },
            location: Named {
                name: "us-west".into(),
                spec: VpsLocationSpec {
                    display_name: "US West".into(),
                    node_selector: [("topology.kubernetes.io/region".to_string(), "us-west".to_string())].into(),
                    storage_class: Some("fast".into()),
                    network: None,
                },
            },
            ssh_key: key.map(|k| ResolvedKey { name: "k".into(), public_key: k.into() }),
        }
    }

    fn build(server: &VpsServer, key: Option<&str>) -> Value {
        build_vm(&VmInputs {
            server,
            id: 7,
            resolved: &resolved(key),
            halted: false,
            simulator_annotations: true,
            attached: None,
        })
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

    /// The user data as YAML reads it back.
    fn user_data_of(vm: &Value) -> serde_yaml::Value {
        let text = vm["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"]["userData"].as_str().unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn cloud_init_carries_hostname_and_key() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt me@laptop";
        let data = user_data_of(&build(&mk_server("Running", false), Some(key)));
        assert_eq!(data["hostname"], "web01");
        assert_eq!(data["fqdn"], "web01.example.com");
        assert_eq!(data["ssh_authorized_keys"][0], key);
        let keys: Vec<&str> = data.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["hostname", "fqdn", "prefer_fqdn_over_hostname", "ssh_authorized_keys"]);
    }

    #[test]
    fn no_value_can_change_the_shape_of_the_user_data() {
        let mut server = mk_server("Running", false);
        for name in ["no", "yes", "null", "true", "1e3", "0x10", "~"] {
            server.spec.name = name.into();
            server.spec.hostname = None;
            let data = user_data_of(&build(&server, None));
            assert_eq!(data["hostname"], serde_yaml::Value::String(name.into()), "a host named {name:?} is a string");
        }
        // Even a key line that got past the parser with a line break stays one string.
        let data = user_data_of(&build(&mk_server("Running", false), Some("ssh-ed25519 AAAA x\rruncmd: [reboot]")));
        assert!(data.get("runcmd").is_none(), "{data:?}");
        assert_eq!(data["ssh_authorized_keys"][0], "ssh-ed25519 AAAA x\rruncmd: [reboot]");
    }

    #[test]
    fn simulator_annotations_travel_only_where_the_simulator_runs() {
        let mut server = mk_server("Running", false);
        server.metadata.annotations = Some([("simulator.vps.org/fail".to_string(), "crash".to_string())].into());
        let r = resolved(None);
        let with = build_vm(&VmInputs {
            server: &server,
            id: 7,
            resolved: &r,
            halted: false,
            simulator_annotations: true,
            attached: None,
        });
        let without = build_vm(&VmInputs {
            server: &server,
            id: 7,
            resolved: &r,
            halted: false,
            simulator_annotations: false,
            attached: None,
        });
        assert_eq!(with["metadata"]["annotations"]["simulator.vps.org/fail"], "crash");
        assert!(without["metadata"]["annotations"].get("simulator.vps.org/fail").is_none());
    }

    #[test]
    fn on_a_provider_network_the_vm_is_bridged_with_its_mac_and_network_data() {
        let server = mk_server("Running", false);
        let r = resolved(None);
        let attached =
            Attached { attachment: "vps-system/public", mac: "02:aa:00:00:00:04", network_data: "version: 2\n" };
        let vm = build_vm(&VmInputs {
            server: &server,
            id: 7,
            resolved: &r,
            halted: false,
            simulator_annotations: false,
            attached: Some(attached),
        });
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["interfaces"],
            json!([{"name": "public", "bridge": {}, "macAddress": "02:aa:00:00:00:04"}])
        );
        assert_eq!(spec["networks"], json!([{"name": "public", "multus": {"networkName": "vps-system/public"}}]));
        assert_eq!(spec["volumes"][1]["cloudInitNoCloud"]["networkData"], "version: 2\n");
        // The pod network's VM has no network data at all (its hash is what it was).
        let pod = build(&server, None);
        assert!(pod["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"].get("networkData").is_none());
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
