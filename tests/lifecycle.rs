//! The operator on real KubeVirt controllers (virt-controller, virt-api) and a real control
//! plane, with the node simulator playing the hosts: whole server lifecycles.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vps_operator::api::{Phase, VpsServer};
use vps_operator::kubevirt::{DataVolume, VirtualMachine};

fn server(name: &str) -> VpsServer {
    serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
        "metadata": {"name": name},
        "spec": {"name": name, "plan": "standard", "os": "ubuntu-22-04", "location": "us-west", "hostname": format!("{name}.example.com")},
    }))
    .unwrap()
}

async fn setup(test: &str) -> (Client, String, Api<VpsServer>) {
    let _ = support::system();
    let client = support::client().await;
    let ns = support::namespace(&client, test).await;
    let api = Api::namespaced(client.clone(), &ns);
    (client, ns, api)
}

/// Waits until the server satisfies `pred`, failing with its last status after `secs`.
async fn wait_for(
    api: &Api<VpsServer>,
    name: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&VpsServer) -> bool,
) -> VpsServer {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = api.get(name).await.unwrap();
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("server {name} not {what} after {secs} s; status: {:#?}", s.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase(s: &VpsServer) -> Option<Phase> {
    s.status.as_ref().and_then(|st| st.phase)
}

async fn wait_phase(api: &Api<VpsServer>, name: &str, want: Phase) -> VpsServer {
    wait_for(api, name, 90, &format!("{want:?}"), |s| phase(s) == Some(want)).await
}

#[tokio::test]
async fn create_provisions_to_active_with_addresses() {
    let (client, ns, api) = setup("create").await;
    api.create(&PostParams::default(), &server("web")).await.unwrap();
    let active = wait_phase(&api, "web", Phase::Active).await;
    let status = active.status.clone().unwrap();
    assert!(status.id.is_some_and(|id| id > 0));
    assert!(status.ip_address.as_deref().is_some_and(|ip| ip.starts_with("10.200.")), "{:?}", status.ip_address);
    assert!(status.ipv6_address.as_deref().is_some_and(|ip| ip.starts_with("fd00:200::")));
    assert_eq!(status.vm_name.as_deref(), Some("web"));
    assert!(
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == vps_operator::api::ConditionStatus::True)
    );
    assert_eq!(
        active.labels().get("vps.org/server-id").map(String::as_str),
        Some(status.id.unwrap().to_string().as_str())
    );

    let vm = Api::<VirtualMachine>::namespaced(client.clone(), &ns).get("web").await.unwrap();
    assert_eq!(vm.spec.run_strategy.as_deref(), Some("Always"));
    assert_eq!(vm.owner_references()[0].kind, "VpsServer");
    assert!(Api::<DataVolume>::namespaced(client.clone(), &ns).get_opt("web-root").await.unwrap().is_some());
}
