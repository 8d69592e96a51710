//! The REST API end to end: the gateway in front of the real control plane, KubeVirt's
//! controllers, the operator and the node simulator. A customer's calls move real
//! VirtualMachines; what kubectl users create shows up in the API with its id.

mod support;

use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::gateway::{Gateway, Tenant};
use vps_operator::api::VpsServer;
use vps_operator::kubevirt::VirtualMachine;

async fn setup(test: &str) -> (Client, Gateway, Tenant) {
    support::gateway::system_tenant(test).await
}

/// Polls `GET /servers/{id}/` until `status` is `want` (90 s at most).
async fn wait_status(gw: &Gateway, token: &str, id: i64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(token), None).await;
        assert_eq!(got.status, 200, "{got:?}");
        if got.body["status"] == want {
            return got.body;
        }
        assert!(Instant::now() < deadline, "server {id} not {want} after 90 s: {}", got.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn action(gw: &Gateway, token: &str, id: i64, verb: &str) -> support::gateway::Answer {
    gw.call("POST", &format!("/api/v1/servers/{id}/{verb}/"), Some(token), None).await
}

#[tokio::test]
async fn a_customer_drives_a_server_through_its_life() {
    let (client, gw, t) = setup("api-life").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "web-server-02", "plan_id": 1, "os_id": 5, "location": "us-west",
                        "hostname": "web02.example.com", "backups_enabled": false})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["status"], "provisioning");
    let id = created.body["id"].as_i64().unwrap();

    let active = wait_status(&gw, &t.token, id, "active").await;
    let ip = active["ip_address"].as_str().expect("an active server has an address").to_string();
    assert!(support::existing_cluster() || ip.starts_with("198.18."), "from the simulator's pool: {ip}");
    assert!(active["ipv6_address"].as_str().is_some());

    // Both views agree: kubectl shows the same server, id filled in by the operator.
    let (ok, out, err) = support::kubectl(&["get", "vps", "-n", &t.namespace, "--no-headers"]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&row[1..6], [id.to_string().as_str(), "web-server-02", "Active", ip.as_str(), "standard"]);

    assert_eq!(action(&gw, &t.token, id, "start").await.status, 400, "already running");
    let stop = action(&gw, &t.token, id, "stop").await;
    assert_eq!((stop.status, stop.body["server"]["status"].as_str()), (200, Some("stopping")), "{stop:?}");
    let stopped = wait_status(&gw, &t.token, id, "stopped").await;
    assert_eq!(stopped["ip_address"], Value::Null);
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(vm.spec.run_strategy.as_deref(), Some("Halted"));
    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 400, "not running");
    assert_eq!(action(&gw, &t.token, id, "reboot").await.status, 400, "not running");

    let start = action(&gw, &t.token, id, "start").await;
    assert_eq!((start.status, start.body["server"]["status"].as_str()), (200, Some("starting")), "{start:?}");
    wait_status(&gw, &t.token, id, "active").await;

    let reboot = action(&gw, &t.token, id, "reboot").await;
    assert_eq!((reboot.status, reboot.body["server"]["status"].as_str()), (200, Some("rebooting")), "{reboot:?}");
    wait_status(&gw, &t.token, id, "active").await;

    let gone = gw.call("DELETE", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
    assert_eq!(gone.status, 204);
    assert_eq!(gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.status, 404);
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &t.namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    while vms.get_opt(&format!("srv-{id}")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the VM of a deleted server is still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_server_applied_with_kubectl_appears_in_the_api() {
    let (client, gw, t) = setup("api-kubectl").await;
    let manifest: VpsServer = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
        "metadata": {"name": "db-server-01", "namespace": t.namespace},
        "spec": {"name": "db-server-01", "plan": "performance", "os": "debian-12", "location": "us-east", "hostname": "db01.example.com"},
    }))
    .unwrap();
    Api::<VpsServer>::namespaced(client.clone(), &t.namespace).create(&PostParams::default(), &manifest).await.unwrap();

    // The operator allocates its id; then the API lists it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let item = loop {
        let list = gw.call("GET", "/api/v1/servers/", Some(&t.token), None).await;
        assert_eq!(list.status, 200);
        if let Some(item) = list.body["results"].as_array().and_then(|r| r.first()).cloned()
            && item["status"] == "active"
        {
            break item;
        }
        assert!(Instant::now() < deadline, "the kubectl-made server never showed up active: {}", list.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(item["name"], "db-server-01");
    assert_eq!(item["location"], "us-east");
    assert_eq!(item["plan"]["id"], 2);
    assert_eq!(item["os"], json!({"id": 3, "name": "Debian 12"}));
    let id = item["id"].as_i64().unwrap();
    let status = Api::<VpsServer>::namespaced(client, &t.namespace).get("db-server-01").await.unwrap().status.unwrap();
    assert_eq!(status.id, Some(id));
    let one = gw.call("GET", &format!("/api/v1/servers/{id}"), Some(&t.token), None).await;
    assert_eq!((one.status, one.body["hostname"].as_str()), (200, Some("db01.example.com")));
}
