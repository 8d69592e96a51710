//! The REST API end to end: the gateway in front of the real control plane, KubeVirt's
//! controllers, the operator and the node simulator. A customer's calls move real
//! VirtualMachines; what kubectl users create shows up in the API with its id.

mod support;

#[path = "api_lifecycle/billing.rs"]
mod billing;
#[path = "api_lifecycle/real_guest.rs"]
mod real_guest;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::gateway::{Gateway, Tenant};
use vps_operator::api::VpsServer;
use vps_operator::kubevirt::{VirtualMachine, VirtualMachineInstance};

async fn setup(test: &str) -> (Client, Gateway, Tenant) {
    support::gateway::system_tenant(test).await
}

/// Polls `GET /servers/{id}/` until `status` is `want` (90 s at most).
async fn wait_status(gw: &Gateway, token: &str, id: i64, want: &str) -> Value {
    wait_status_within(gw, token, id, want, 90).await
}

/// Polls `GET /servers/{id}/` until `status` is `want` (`secs` seconds at most).
async fn wait_status_within(gw: &Gateway, token: &str, id: i64, want: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(token), None).await;
        assert_eq!(got.status, 200, "{got:?}");
        if got.body["status"] == want {
            return got.body;
        }
        assert!(Instant::now() < deadline, "server {id} not {want} after {secs} s: {}", got.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bridge NetworkAttachmentDefinition `public` in `namespace` (a provider network).
async fn create_attachment(client: &Client, namespace: &str) {
    let nad = kube::api::ApiResource {
        group: "k8s.cni.cncf.io".into(),
        version: "v1".into(),
        api_version: "k8s.cni.cncf.io/v1".into(),
        kind: "NetworkAttachmentDefinition".into(),
        plural: "network-attachment-definitions".into(),
    };
    let attachment: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "public", "namespace": namespace},
        "spec": {"config": r#"{"cniVersion": "0.4.0", "name": "public", "type": "bridge", "bridge": "br-public", "ipam": {}}"#},
    }))
    .unwrap();
    Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), namespace, &nad)
        .create(&PostParams::default(), &attachment)
        .await
        .unwrap();
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

    // Reboots, soft (the default) and hard, are done in place: the instance stays.
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &t.namespace);
    let instance = vmis.get(&format!("srv-{id}")).await.unwrap().uid();
    let reboot = action(&gw, &t.token, id, "reboot").await;
    assert_eq!((reboot.status, reboot.body["server"]["status"].as_str()), (200, Some("rebooting")), "{reboot:?}");
    wait_status(&gw, &t.token, id, "active").await;
    let path = format!("/api/v1/servers/{id}/reboot/");
    let bad = gw.call("POST", &path, Some(&t.token), Some(json!({"type": "warm"}))).await;
    assert_eq!((bad.status, &bad.body), (400, &json!({"type": ["\"warm\" is not a valid choice."]})), "{bad:?}");
    let hard = gw.call("POST", &path, Some(&t.token), Some(json!({"type": "hard"}))).await;
    assert_eq!((hard.status, hard.body["server"]["status"].as_str()), (200, Some("rebooting")), "{hard:?}");
    assert_eq!(hard.body["action"]["type"], "reboot", "{hard:?}");
    wait_status(&gw, &t.token, id, "active").await;
    let tracked = format!("/api/v1/actions/{}/", hard.body["action"]["id"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = gw.call("GET", &tracked, Some(&t.token), None).await;
        if a.body["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline && a.body["status"] == "in-progress", "{a:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vmis.get(&format!("srv-{id}")).await.unwrap().uid(), instance, "the same instance");

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

/// A resize as a customer does it: refused while running, over the credit and to a smaller
/// disk; then the VM's CPU and memory and the root disk's claim follow the new plan, and the
/// server starts on it. kubectl cannot change a running server's plan.
#[tokio::test]
async fn a_stopped_server_is_resized_and_its_disk_grows() {
    let _ = support::system();
    let client = support::client().await;
    // Plan 1 (1000 cents) now, plan 2 (2000) fits the credit, a plan of 5000 does not.
    let t = support::gateway::tenant(&client, "api-resize", 2500).await;
    let gw = support::gateway::start(&client).await;
    gw.wait_token(&t.token).await;
    let pricey: vps_operator::api::VpsPlan = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsPlan", "metadata": {"name": "resize-pricey"},
        "spec": {"id": 9301, "displayName": "Pricey", "vcpus": 8, "memory": 16384, "storage": 320, "bandwidth": 8192,
                 "monthlyPriceCents": 5000},
    }))
    .unwrap();
    let plans: Api<vps_operator::api::VpsPlan> = Api::all(client.clone());
    let pp = kube::api::PatchParams::apply("api-lifecycle-test").force();
    plans.patch("resize-pricey", &pp, &kube::api::Patch::Apply(&pricey)).await.unwrap();
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "grows", "plan_id": 1, "os_id": 5, "location": "us-west"})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    let name = format!("srv-{id}");
    wait_status(&gw, &t.token, id, "active").await;
    let resize = |plan: i64| {
        let (gw, token) = (&gw, &t.token);
        async move {
            gw.call("POST", &format!("/api/v1/servers/{id}/resize/"), Some(token), Some(json!({"plan_id": plan}))).await
        }
    };
    let running = resize(2).await;
    assert_eq!(running.status, 400, "{running:?}");
    assert!(running.body["detail"].as_str().unwrap().contains("only while it is stopped"), "{running:?}");
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let by_kubectl = json!({"spec": {"plan": "performance"}});
    match servers.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&by_kubectl)).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("only while the server is stopped")),
        other => panic!("a running server's plan changed: {other:?}"),
    }

    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 200);
    wait_status(&gw, &t.token, id, "stopped").await;
    let over = resize(9301).await;
    assert_eq!(over.status, 402, "{over:?}");
    assert_eq!(resize(1).await.body["plan_id"][0], "The server already has this plan.");
    assert!(resize(424242).await.body["plan_id"][0].as_str().unwrap().contains("does not exist"));
    let done = resize(2).await;
    assert_eq!((done.status, &done.body["server"]["status"]), (200, &json!("stopped")), "{done:?}");

    // The operator: the VM's CPU and memory, the claim grown by the simulated resizer.
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &t.namespace);
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &t.namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vm = serde_json::to_value(vms.get(&name).await.unwrap()).unwrap();
        let domain = &vm["spec"]["template"]["spec"]["domain"];
        let pvc = serde_json::to_value(pvcs.get(&format!("{name}-root")).await.unwrap()).unwrap();
        let (cores, memory) = (&domain["cpu"]["cores"], &domain["memory"]["guest"]);
        let (request, capacity) =
            (&pvc["spec"]["resources"]["requests"]["storage"], &pvc["status"]["capacity"]["storage"]);
        if cores == 4 && (memory == "8192Mi" || memory == "8Gi") && request == "160Gi" && capacity == "160Gi" {
            break;
        }
        assert!(Instant::now() < deadline, "not resized after 60 s: {domain} {request} {capacity}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Right after the resize the gateway still shows the plan the server was built from, and
    // yet refuses a smaller disk (the plan asked for counts).
    let smaller = resize(1).await;
    assert!(smaller.body["plan_id"][0].as_str().unwrap().contains("disks only grow"), "{smaller:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
        if (&detail.body["plan"]["id"], &detail.body["plan"]["storage"]) == (&json!(2), &json!(160)) {
            break;
        }
        assert!(Instant::now() < deadline, "the detail never showed the new plan: {detail:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let smaller = resize(1).await;
    assert!(smaller.body["plan_id"][0].as_str().unwrap().contains("disks only grow"), "{smaller:?}");
    // The same with kubectl (the CRD cannot see plans): the operator keeps the plan and says why.
    let shrink = json!({"spec": {"plan": "standard"}});
    servers.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&shrink)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = servers.get(&name).await.unwrap();
        let status = s.status.unwrap_or_default();
        let refused =
            status.conditions.iter().any(|c| c.type_ == "ReferencesResolved" && c.reason == "DiskWouldShrink");
        if refused {
            assert_eq!(status.resolved.map(|r| r.plan.name).as_deref(), Some("performance"));
            break;
        }
        assert!(Instant::now() < deadline, "a smaller disk was not refused: {:?}", status.conditions);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pvc = pvcs.get(&format!("{name}-root")).await.unwrap();
    let request = pvc.spec.and_then(|s| s.resources).and_then(|r| r.requests).and_then(|r| r.get("storage").cloned());
    assert_eq!(request.map(|q| q.0).as_deref(), Some("160Gi"), "disks only grow");
    let back = json!({"spec": {"plan": "performance"}});
    servers.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&back)).await.unwrap();
    assert_eq!(action(&gw, &t.token, id, "start").await.status, 200);
    wait_status(&gw, &t.token, id, "active").await;
    let (ok, out, err) = support::kubectl(&["get", "vps", &name, "-n", &t.namespace, "--no-headers"]);
    assert!(ok && out.split_whitespace().nth(5) == Some("performance"), "{out} {err}");
    plans.delete("resize-pricey", &Default::default()).await.unwrap();
}

/// The UID and source (the spec, as JSON: virt-controller resolves the DataSource) of a
/// server's root disk.
async fn root_disk(client: &Client, ns: &str, server: &str) -> Option<(String, String)> {
    let dvs: Api<vps_operator::kubevirt::DataVolume> = Api::namespaced(client.clone(), ns);
    let dv = serde_json::to_value(dvs.get_opt(&format!("{server}-root")).await.unwrap()?).unwrap();
    let uid = dv["metadata"]["uid"].as_str()?.to_string();
    Some((uid, dv["spec"].to_string()))
}

/// A rebuild as a customer does it: a running server gets a fresh disk of another image and a
/// new key, keeping its id and VM, and runs again; a stopped one is rebuilt and stays stopped.
#[tokio::test]
async fn a_server_is_rebuilt_on_a_fresh_disk_of_another_image() {
    let (client, gw, t) = setup("api-rebuild").await;
    let key_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICfEbCCBLd+8e/DUJQKQk/3Fmn6NKFyS1ApydWGPcN0m rebuild@laptop";
    let key =
        gw.call("POST", "/api/v1/ssh-keys/", Some(&t.token), Some(json!({"name": "k", "public_key": key_line}))).await;
    assert_eq!(key.status, 201, "{key:?}");
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "phoenix", "plan_id": 1, "os_id": 5, "location": "us-west"})),
        )
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let name = format!("srv-{id}");
    wait_status(&gw, &t.token, id, "active").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &t.namespace);
    let vm_uid = vms.get(&name).await.unwrap().metadata.uid;
    let (first_disk, first_image) = root_disk(&client, &t.namespace, &name).await.expect("a root disk");
    assert!(first_image.contains("ubuntu-22-04") && !first_image.contains("debian-12"), "{first_image}");

    let rebuild = |body: Value| {
        let (gw, token) = (&gw, &t.token);
        async move { gw.call("POST", &format!("/api/v1/servers/{id}/rebuild/"), Some(token), Some(body)).await }
    };
    let bad = rebuild(json!({"os_id": 4242, "ssh_key_id": 4242})).await;
    assert_eq!((bad.status, super_keys(&bad.body)), (400, vec!["os_id".to_string(), "ssh_key_id".to_string()]));
    let started = rebuild(json!({"os_id": 3, "ssh_key_id": key.body["id"]})).await;
    assert_eq!((started.status, &started.body["server"]["status"]), (200, &json!("rebuilding")), "{started:?}");
    assert_eq!(rebuild(json!({"os_id": 3})).await.status, 400, "already rebuilding");
    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 400, "not while rebuilding");
    let active = wait_status(&gw, &t.token, id, "active").await;
    assert_eq!((&active["id"], &active["name"], &active["os"]["id"]), (&json!(id), &json!("phoenix"), &json!(3)));
    let (second_disk, second_image) = root_disk(&client, &t.namespace, &name).await.expect("a new root disk");
    assert_ne!(second_disk, first_disk, "a fresh disk");
    assert!(second_image.contains("debian-12") && !second_image.contains("ubuntu-22-04"), "{second_image}");
    let vm = vms.get(&name).await.unwrap();
    assert_eq!(vm.metadata.uid, vm_uid, "the same VM");
    let vm = serde_json::to_value(vm).unwrap();
    let volumes = vm["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("rebuild@laptop"), "the new key in cloud-init: {volumes}");
    let server = Api::<VpsServer>::namespaced(client.clone(), &t.namespace).get(&name).await.unwrap();
    let status = server.status.unwrap();
    assert_eq!(status.root_volume_uid.as_deref(), Some(second_disk.as_str()));
    assert_eq!(status.rebuild_from_volume, None);

    // Stopped: rebuilt (to the image it has) and still stopped.
    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 200);
    wait_status(&gw, &t.token, id, "stopped").await;
    assert_eq!(rebuild(json!({"os_id": 3})).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let disk = root_disk(&client, &t.namespace, &name).await;
        let shown = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
        if shown.body["status"] == "stopped" && disk.as_ref().is_some_and(|(uid, _)| *uid != second_disk) {
            break;
        }
        assert!(Instant::now() < deadline, "not rebuilt while stopped: {} {disk:?}", shown.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(vms.get(&name).await.unwrap().spec.run_strategy.as_deref(), Some("Halted"));
}

fn super_keys(v: &Value) -> Vec<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// Waits until action `id` is no longer in progress; returns it.
async fn settled_action(gw: &Gateway, token: &str, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let a = gw.call("GET", &format!("/api/v1/actions/{id}/"), Some(token), None).await;
        assert_eq!(a.status, 200, "{a:?}");
        if a.body["status"] != "in-progress" {
            return a.body;
        }
        assert!(Instant::now() < deadline, "action {id} still in progress after 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every mutating call records an action the operator completes once the server converged;
/// they are listed newest first, survive in the cluster (kubectl), and a delete's outlives
/// its server.
#[tokio::test]
async fn every_mutating_call_is_a_tracked_action() {
    let (client, gw, t) = setup("api-actions").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "tracked", "plan_id": 1, "os_id": 5, "location": "us-west"})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    let create = &created.body["action"];
    assert_eq!(
        (&create["type"], &create["status"], &create["server_id"]),
        (&json!("create"), &json!("in-progress"), &json!(id))
    );
    let done = settled_action(&gw, &t.token, create["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["completed_at"].is_string());
    wait_status(&gw, &t.token, id, "active").await;

    let mut ids = vec![create["id"].as_i64().unwrap()];
    for (verb, settles) in [("stop", "stopped"), ("start", "active"), ("reboot", "active")] {
        let a = action(&gw, &t.token, id, verb).await;
        assert_eq!((a.status, &a.body["action"]["type"]), (200, &json!(verb)), "{a:?}");
        let action_id = a.body["action"]["id"].as_i64().unwrap();
        let done = settled_action(&gw, &t.token, action_id).await;
        assert_eq!(done["status"], "completed", "{verb}: {done}");
        // The operator completes an action after the status write it follows from: the API
        // server (not the gateway's cache, which may lag) shows that status already.
        let server =
            Api::<VpsServer>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{id}")).await.unwrap();
        let phase = server.status.and_then(|s| s.phase).map(|p| p.as_api_str());
        assert_eq!(phase, Some(settles), "{verb} completed only once the server converged");
        wait_status(&gw, &t.token, id, settles).await;
        ids.push(action_id);
    }
    let list = gw.call("GET", &format!("/api/v1/servers/{id}/actions/"), Some(&t.token), None).await;
    let listed: Vec<i64> = list.body["results"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
    ids.reverse();
    assert_eq!(listed, ids, "newest first");
    let (ok, out, err) = support::kubectl(&["get", "vpsactions", "-n", &t.namespace, "--no-headers"]);
    assert!(ok && out.lines().count() == 4 && out.contains("completed"), "{out} {err}");

    assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.status, 204);
    let actions: Api<vps_operator::api::VpsAction> = Api::namespaced(client.clone(), &t.namespace);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = actions.list(&Default::default()).await.unwrap().items;
        let delete = all.iter().find(|a| a.spec.type_ == vps_operator::api::ActionType::Delete);
        let finished = delete.and_then(|a| a.status.as_ref()).map(|s| s.status);
        if finished == Some(vps_operator::api::ActionState::Completed) {
            let delete_id = delete.unwrap().spec.id;
            let shown = gw.call("GET", &format!("/api/v1/actions/{delete_id}/"), Some(&t.token), None).await;
            assert_eq!((shown.status, &shown.body["status"]), (200, &json!("completed")), "outlives its server");
            // The others went with their server (owned by it).
            assert!(all.iter().all(|a| a.spec.type_ == vps_operator::api::ActionType::Delete
                || a.metadata.deletion_timestamp.is_some()
                || !kube::ResourceExt::owner_references(a).is_empty()));
            break;
        }
        assert!(Instant::now() < deadline, "the delete action never completed: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Backups a customer takes, lists and deletes: an on-demand snapshot of KubeVirt's own
/// snapshot controller (the simulator plays the CSI snapshotter), with an id, its action
/// completed once it is available, the detail's last_backup_at; gone when deleted.
#[tokio::test]
async fn a_customer_takes_lists_and_deletes_a_backup() {
    let (_client, gw, t) = setup("api-backups").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "kept", "plan_id": 1, "os_id": 5, "location": "us-west", "backups_enabled": false})),
        )
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let backups = format!("/api/v1/servers/{id}/backups/");
    wait_status(&gw, &t.token, id, "active").await;
    let empty = gw.call("GET", &backups, Some(&t.token), None).await;
    assert_eq!((empty.status, &empty.body["count"]), (200, &json!(0)), "{empty:?}");

    let taken = gw.call("POST", &backups, Some(&t.token), None).await;
    assert_eq!((taken.status, &taken.body["action"]["type"]), (201, &json!("backup")), "{taken:?}");
    let made = taken.body["backup"]["id"].as_i64().expect("the new backup's id");
    assert!(taken.header("location").is_some_and(|l| l.ends_with(&format!("/backups/{made}/"))), "{taken:?}");
    let done = settled_action(&gw, &t.token, taken.body["action"]["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The gateway's caches of snapshots and servers follow their own watches: eventually.
    let deadline = Instant::now() + Duration::from_secs(60);
    let backup = loop {
        let list = gw.call("GET", &backups, Some(&t.token), None).await;
        let detail = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
        let first = list.body["results"][0].clone();
        let shown = detail.body["last_backup_at"].as_str().is_some_and(|t| t.ends_with('Z'));
        // Its size: what its volume snapshots say a restored disk needs: the plan's disk (a
        // real cluster's storage may add its overhead).
        let (size, disk) = (first["size"].as_i64(), detail.body["plan"]["storage"].as_i64());
        let sized = if support::existing_cluster() { size >= disk } else { size == disk } && size.is_some();
        if list.body["count"] == 1 && first["status"] == "available" && shown && sized {
            assert_eq!((&first["type"], &first["id"]), (&json!("on-demand"), &json!(made)), "{list:?}");
            break first;
        }
        assert!(Instant::now() < deadline, "the backup never showed as available: {list:?} {detail:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let gone = gw.call("DELETE", &format!("{backups}{}/", backup["id"]), Some(&t.token), None).await;
    assert_eq!(gone.status, 204, "{gone:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.call("GET", &backups, Some(&t.token), None).await.body["count"] != 0 {
        assert!(Instant::now() < deadline, "the deleted backup is still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.call("DELETE", &format!("{backups}{}/", backup["id"]), Some(&t.token), None).await.status, 404);
}

/// A restore as a customer does it: the server is stopped, KubeVirt's own VirtualMachineRestore
/// brings its root disk back from the backup's VolumeSnapshot (in place: the same DataVolume,
/// a claim restored from the snapshot, bound by the simulated CSI driver), and it runs again;
/// a backup of another server, or none, is 404; not while provisioning or restoring.
#[tokio::test]
async fn a_server_is_restored_from_its_backup() {
    let (client, gw, t) = setup("api-restore").await;
    let create = |name: &str| {
        let (gw, token) = (&gw, &t.token);
        let body = json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west"});
        async move { gw.call("POST", "/api/v1/servers/", Some(token), Some(body)).await.body["id"].as_i64().unwrap() }
    };
    let restore = |id: i64, body: Value| {
        let (gw, token) = (&gw, &t.token);
        async move { gw.call("POST", &format!("/api/v1/servers/{id}/restore/"), Some(token), Some(body)).await }
    };
    let id = create("restored").await;
    let name = format!("srv-{id}");
    let fresh = create("fresh").await;
    assert_eq!(restore(fresh, json!({"backup_id": 1})).await.status, 400, "not while provisioning");
    wait_status(&gw, &t.token, id, "active").await;
    let missing = restore(id, json!({})).await;
    assert_eq!((missing.status, super_keys(&missing.body)), (400, vec!["backup_id".to_string()]), "{missing:?}");
    assert_eq!(restore(id, json!({"backup_id": 4242})).await.status, 404, "no such backup");

    let taken = gw.call("POST", &format!("/api/v1/servers/{id}/backups/"), Some(&t.token), None).await;
    assert_eq!(taken.status, 201, "{taken:?}");
    let backup = taken.body["backup"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.call("GET", &format!("/api/v1/servers/{id}/backups/"), Some(&t.token), None).await.body["results"][0]["status"]
        != "available"
    {
        assert!(Instant::now() < deadline, "the backup never became available");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_status(&gw, &t.token, fresh, "active").await;
    assert_eq!(restore(fresh, json!({"backup_id": backup})).await.status, 404, "another server's backup");
    let other = support::gateway::tenant(&client, "api-restore-other", 1_000_000).await;
    gw.wait_token(&other.token).await;
    let theirs = gw
        .call("POST", &format!("/api/v1/servers/{id}/restore/"), Some(&other.token), Some(json!({"backup_id": backup})))
        .await;
    assert_eq!(theirs.status, 404, "another tenant's server: {theirs:?}");

    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &t.namespace);
    let vm_uid = vms.get(&name).await.unwrap().metadata.uid;
    let (disk_uid, _) = root_disk(&client, &t.namespace, &name).await.expect("a root disk");
    let started = restore(id, json!({"backup_id": backup})).await;
    assert_eq!(
        (started.status, &started.body["server"]["status"], &started.body["action"]["type"]),
        (200, &json!("restoring"), &json!("restore")),
        "{started:?}"
    );
    assert_eq!(restore(id, json!({"backup_id": backup})).await.status, 400, "already restoring");
    let action_id = started.body["action"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while gw.call("GET", &format!("/api/v1/actions/{action_id}/"), Some(&t.token), None).await.body["status"]
        == "in-progress"
    {
        if Instant::now() > deadline {
            for what in ["vps", "virtualmachinerestores", "pvc", "vm", "dv"] {
                let (_, out, err) = support::kubectl(&["get", what, "-n", &t.namespace, "-o", "yaml"]);
                eprintln!("--- {what}\n{out}{err}");
            }
            let dir = support::current().kubeconfig.parent().unwrap().to_path_buf();
            let log = std::fs::read_to_string(dir.join("virt-controller.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("restore") || l.contains("Restore")).collect();
            eprintln!("--- virt-controller\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
            let (_, out, _) = support::kubectl(&["get", "events", "-n", &t.namespace]);
            panic!("the restore is still in progress\n{out}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let done = settled_action(&gw, &t.token, action_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    wait_status(&gw, &t.token, id, "active").await;

    // KubeVirt's side: the restore completed, the claim restored from the snapshot, in place.
    let (ok, restores, err) = support::kubectl(&[
        "get",
        "virtualmachinerestores",
        "-n",
        &t.namespace,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.complete}{\"\\n\"}{end}",
    ]);
    assert!(
        ok && restores.lines().any(|l| l.starts_with(&format!("{name}-restore-")) && l.ends_with(" true")),
        "{restores} {err}"
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &t.namespace);
    let claim = claims.get(&format!("{name}-root")).await.unwrap();
    let source = claim.spec.as_ref().and_then(|s| s.data_source.as_ref()).map(|d| (d.kind.clone(), d.name.clone()));
    assert!(source.as_ref().is_some_and(|(kind, _)| kind == "VolumeSnapshot"), "restored from a snapshot: {source:?}");
    assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    assert_eq!(root_disk(&client, &t.namespace, &name).await.map(|d| d.0), Some(disk_uid), "the same DataVolume");
    assert_eq!(vms.get(&name).await.unwrap().metadata.uid, vm_uid, "the same VM");
    let server = Api::<VpsServer>::namespaced(client.clone(), &t.namespace).get(&name).await.unwrap();
    let status = server.status.unwrap().restore.expect("the restore in status");
    assert_eq!((status.backup_id, status.state), (backup, vps_operator::api::RestoreState::Completed));
}

/// A forced stop: a guest that ignores the shutdown request keeps a graceful stop waiting for
/// its instance's grace period (30 s); `{"force": true}` stops it at once, through KubeVirt's
/// `stop` subresource with a grace period of 0 (virt-api, reached through the API aggregator).
#[tokio::test]
async fn a_forced_stop_does_not_wait_for_a_hung_guest() {
    if support::skip_on_existing_cluster("it injects a hung guest into the simulated hosts") {
        return;
    }
    let (client, gw, t) = setup("api-force-stop").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "stuck", "plan_id": 1, "os_id": 5, "location": "us-west"})),
        )
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let name = format!("srv-{id}");
    wait_status(&gw, &t.token, id, "active").await;
    let (ok, _, err) =
        support::kubectl(&["annotate", "vps", &name, "-n", &t.namespace, "simulator.vps.org/fail=shutdown-hang"]);
    assert!(ok, "{err}");
    // An annotation is no spec change (the operator follows generations): a rename makes one.
    let renamed =
        gw.call("PATCH", &format!("/api/v1/servers/{id}/"), Some(&t.token), Some(json!({"name": "stuck-guest"}))).await;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &t.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    while vms.get(&name).await.unwrap().annotations().get("simulator.vps.org/fail").map(String::as_str)
        != Some("shutdown-hang")
    {
        assert!(Instant::now() < deadline, "the operator did not pass the annotation on");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stop = |body: Option<Value>| {
        let (gw, token) = (&gw, &t.token);
        async move { gw.call("POST", &format!("/api/v1/servers/{id}/stop/"), Some(token), body).await }
    };
    let bad = stop(Some(json!({"force": "yes"}))).await;
    assert_eq!((bad.status, super_keys(&bad.body)), (400, vec!["force".to_string()]), "{bad:?}");
    let graceful = stop(None).await;
    assert_eq!((graceful.status, &graceful.body["server"]["status"]), (200, &json!("stopping")), "{graceful:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shown = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
    assert_eq!(shown.body["status"], "stopping", "the guest ignores the shutdown: {}", shown.body);
    assert_eq!(stop(Some(json!({"force": false}))).await.status, 400, "a graceful stop while stopping");

    let forced_at = Instant::now();
    let forced = stop(Some(json!({"force": true}))).await;
    assert_eq!((forced.status, &forced.body["action"]["type"]), (200, &json!("stop")), "{forced:?}");
    wait_status(&gw, &t.token, id, "stopped").await;
    assert!(forced_at.elapsed() < Duration::from_secs(20), "not waited for: {:?}", forced_at.elapsed());
    let done = settled_action(&gw, &t.token, forced.body["action"]["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let superseded = settled_action(&gw, &t.token, graceful.body["action"]["id"].as_i64().unwrap()).await;
    assert_eq!(superseded["status"], "errored", "{superseded}");
    let (ok, events, err) = support::kubectl(&[
        "get",
        "events",
        "-n",
        &t.namespace,
        "--field-selector",
        "reason=ForcedStop",
        "-o",
        "jsonpath={.items[*].involvedObject.name}",
    ]);
    assert!(ok && events.contains(&name), "a ForcedStop event: {events} {err}");
    let again = stop(Some(json!({"force": true}))).await;
    assert_eq!((again.status, &again.body["detail"]), (400, &json!("Server is not running.")), "{again:?}");
}

/// A location on a provider network: each server gets its own addresses from the pools
/// (distinct under concurrent creates), keeps them through stop, start, reboot, resize and
/// rebuild, and the guest is configured with them (the simulator reports what the network
/// data says); a full pool answers 409, and a server made with kubectl waits in an error
/// until an address is released and its cool-down has passed.
#[tokio::test]
async fn servers_keep_their_own_addresses_on_a_provider_network() {
    use vps_operator::api::{VpsAddress, VpsLocation};
    let (client, gw, t) = setup("api-net").await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    if crds.get_opt("network-attachment-definitions.k8s.cni.cncf.io").await.unwrap().is_none() {
        eprintln!("skipped: the cluster has no Multus (NetworkAttachmentDefinition CRD)");
        return;
    }
    create_attachment(&client, &t.namespace).await;
    // Two addresses: .0 network, .1 gateway, .2-.4 excluded, .7 broadcast.
    let code = format!("pn-{}", t.namespace.rsplit('-').next().unwrap());
    let location: VpsLocation = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsLocation", "metadata": {"name": code},
        "spec": {"displayName": "Provider network", "nodeSelector": {"topology.kubernetes.io/region": "us-west"},
                 "network": {"attachment": format!("{}/public", t.namespace),
                             "ipv4": {"cidr": "203.0.113.0/29", "gateway": "203.0.113.1", "dns": ["203.0.113.53"],
                                      "excluded": ["203.0.113.2-203.0.113.4"]},
                             "ipv6": {"cidr": "2001:db8:16::/64", "gateway": "2001:db8:16::1"}}},
    }))
    .unwrap();
    let locations: Api<VpsLocation> = Api::all(client.clone());
    locations.create(&PostParams::default(), &location).await.unwrap();
    let left = || async {
        let list = gw.call("GET", "/api/v1/locations/?page_size=100", Some(&t.token), None).await;
        list.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["code"] == code)
            .map(|l| l["addresses_available"].clone())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while left().await != Some(json!(2)) {
        assert!(Instant::now() < deadline, "the location never showed 2 addresses: {:?}", left().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let create = |name: &'static str| {
        let (gw, token, code) = (&gw, &t.token, &code);
        async move {
            gw.call(
                "POST",
                "/api/v1/servers/",
                Some(token),
                Some(json!({"name": name, "plan_id": 1, "os_id": 5, "location": code})),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(create("net-a"), create("net-b"));
    assert_eq!((a.status, b.status), (201, 201), "{a:?} {b:?}");
    let (a, b) = (a.body["id"].as_i64().unwrap(), b.body["id"].as_i64().unwrap());
    let shown_a = wait_status(&gw, &t.token, a, "active").await;
    let shown_b = wait_status(&gw, &t.token, b, "active").await;
    let ip_a = shown_a["ip_address"].as_str().unwrap().to_string();
    let ip_b = shown_b["ip_address"].as_str().unwrap().to_string();
    let mut ips = [ip_a.clone(), ip_b.clone()];
    ips.sort();
    assert_eq!(ips, ["203.0.113.5", "203.0.113.6"], "one address each, from the pool");
    let last = ip_a.rsplit('.').next().unwrap();
    assert_eq!(shown_a["ipv6_address"], json!(format!("2001:db8:16::{last}")), "the same offset in the IPv6 pool");
    assert_eq!(left().await, Some(json!(0)));

    // The VM is bridged to the attachment with its fixed MAC and the guest's network data;
    // its instance reports exactly those addresses.
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let status = servers.get(&format!("srv-{a}")).await.unwrap().status.unwrap();
    let mac = status.mac_address.clone().expect("a fixed MAC");
    assert_eq!(status.address_claim.as_deref(), Some(format!("{code}.{ip_a}").as_str()));
    let vm = serde_json::to_value(
        Api::<VirtualMachine>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{a}")).await.unwrap(),
    )
    .unwrap();
    let template = &vm["spec"]["template"]["spec"];
    assert_eq!(template["networks"][0]["multus"]["networkName"], json!(format!("{}/public", t.namespace)));
    assert_eq!(template["domain"]["devices"]["interfaces"][0]["macAddress"], json!(mac));
    let network_data = template["volumes"][1]["cloudInitNoCloud"]["networkData"].as_str().unwrap();
    assert!(network_data.contains(&format!("{ip_a}/29")) && network_data.contains("203.0.113.1"), "{network_data}");
    let vmi_kind = kube::api::ApiResource::erase::<VirtualMachineInstance>(&());
    let vmi = Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &t.namespace, &vmi_kind)
        .get(&format!("srv-{a}"))
        .await
        .unwrap()
        .data;
    assert_eq!(vmi["status"]["interfaces"][0]["ipAddress"], json!(ip_a));
    assert_eq!(vmi["status"]["interfaces"][0]["mac"], json!(mac));
    let (ok, out, err) = support::kubectl(&["get", "vps", "-n", &t.namespace, "-o", "wide", "--no-headers"]);
    assert!(ok && out.contains(&ip_a) && out.contains(&format!("2001:db8:16::{last}")), "{out}{err}");

    // A full pool: a clear 409 from the API.
    let full = create("net-c").await;
    assert_eq!(full.status, 409, "{full:?}");
    assert!(full.body["detail"].as_str().unwrap().contains("No public address is left"), "{full:?}");

    // The addresses stay through stop, resize, start, hard reboot and rebuild.
    let same = |shown: &Value| assert_eq!(shown["ip_address"], json!(ip_a), "{shown}");
    assert_eq!(action(&gw, &t.token, a, "stop").await.status, 200);
    same(&wait_status(&gw, &t.token, a, "stopped").await);
    let resized =
        gw.call("POST", &format!("/api/v1/servers/{a}/resize/"), Some(&t.token), Some(json!({"plan_id": 2}))).await;
    assert_eq!(resized.status, 200, "{resized:?}");
    same(&wait_status(&gw, &t.token, a, "stopped").await);
    assert_eq!(action(&gw, &t.token, a, "start").await.status, 200);
    same(&wait_status(&gw, &t.token, a, "active").await);
    let reboot =
        gw.call("POST", &format!("/api/v1/servers/{a}/reboot/"), Some(&t.token), Some(json!({"type": "hard"}))).await;
    assert_eq!(reboot.status, 200, "{reboot:?}");
    settled_action(&gw, &t.token, a).await;
    same(&wait_status(&gw, &t.token, a, "active").await);
    let rebuilt =
        gw.call("POST", &format!("/api/v1/servers/{a}/rebuild/"), Some(&t.token), Some(json!({"os_id": 3}))).await;
    assert_eq!(rebuilt.status, 200, "{rebuilt:?}");
    wait_status(&gw, &t.token, a, "rebuilding").await;
    same(&wait_status(&gw, &t.token, a, "active").await);

    // A server made with kubectl in the full location waits, in an error that says why.
    let manifest: VpsServer = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
        "metadata": {"name": "net-d", "namespace": t.namespace},
        "spec": {"name": "net-d", "plan": "standard", "os": "debian-12", "location": code},
    }))
    .unwrap();
    servers.create(&PostParams::default(), &manifest).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = servers.get("net-d").await.unwrap().status.unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.clone());
        if status.phase == Some(vps_operator::api::Phase::Error) && ready.as_deref() == Some("AddressPoolExhausted") {
            break;
        }
        assert!(Instant::now() < deadline, "not held for an address: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // b's teardown releases its address; after the cool-down it is net-d's.
    assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{b}/"), Some(&t.token), None).await.status, 204);
    let claims: Api<VpsAddress> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let claim = claims.get(&format!("{code}.{ip_b}")).await.unwrap();
        let d = servers.get("net-d").await.unwrap().status.unwrap_or_default();
        if claim.spec.server.name == "net-d" && d.phase == Some(vps_operator::api::Phase::Active) {
            assert_eq!(d.ip_address.as_deref(), Some(ip_b.as_str()), "the released address, reused");
            assert_eq!(claim.spec.reusable_after, None);
            break;
        }
        assert!(Instant::now() < deadline, "net-d never got the released address: {claim:?} {d:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    servers.delete("net-d", &Default::default()).await.unwrap();
    assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{a}/"), Some(&t.token), None).await.status, 204);

    // A claim whose server is gone without releasing it (its finalizer stripped by hand, say)
    // is released by the operator's sweep.
    let orphan: VpsAddress = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsAddress",
        "metadata": {"name": format!("{code}.203.0.113.250")},
        "spec": {
            "location": code, "ipv4": "203.0.113.250", "mac": "02:00:00:00:00:fa",
            "server": {"namespace": t.namespace, "name": "never-was", "uid": "00000000-0000-0000-0000-000000000000"},
        },
    }))
    .unwrap();
    claims.create(&PostParams::default(), &orphan).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let claim = claims.get(&orphan.name_any()).await.unwrap();
        if claim.spec.reusable_after.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the orphaned claim was never released: {claim:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    claims.delete(&orphan.name_any(), &Default::default()).await.unwrap();
    locations.delete(&code, &Default::default()).await.unwrap();
}

/// Frames of a console until what they carry holds `needle` (30 s at most); returns it all.
async fn console_until<S>(ws: &mut S, seen: &mut Vec<u8>, needle: &[u8]) -> Vec<u8>
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await;
        match frame {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "the console ended before {:?}: {other:?}; it said {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(seen)
            ),
        }
    }
    std::mem::take(seen)
}

/// The HTTP status a websocket handshake to `url` was refused with.
async fn refused_with(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => panic!("{url} opened"),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// A customer's consoles end to end (gateway → API server → virt-api → the simulated
/// virt-handler): the serial console shows a login prompt and echoes what is typed, the VNC
/// console completes the RFB handshake; a token opens one connection, and none once expired;
/// another tenant's server is 404, a stopped one 400; a console closes when its server stops.
#[tokio::test]
async fn a_customer_opens_the_serial_and_vnc_consoles() {
    use futures::SinkExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use tokio_tungstenite::tungstenite::Message;
    let (client, gw, t) = setup("api-console").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "console-1", "plan_id": 1, "os_id": 3, "location": "us-west", "hostname": "shell.example.com"})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    wait_status(&gw, &t.token, id, "active").await;
    let console = |token: String, body: Option<Value>| {
        let gw = &gw;
        async move { gw.call("POST", &format!("/api/v1/servers/{id}/console/"), Some(&token), body).await }
    };
    let bad = console(t.token.clone(), Some(json!({"type": "rdp"}))).await;
    assert_eq!((bad.status, &bad.body), (400, &json!({"type": ["\"rdp\" is not a valid choice."]})));

    let serial = console(t.token.clone(), None).await;
    assert_eq!((serial.status, &serial.body["type"]), (200, &json!("serial")), "{serial:?}");
    let url = serial.body["wss_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("ws://") && url.ends_with(serial.body["token"].as_str().unwrap()), "{url}");
    assert!(serial.body["expires_at"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("the serial console opens");
    let mut seen = Vec::new();
    let banner = console_until(&mut ws, &mut seen, b"shell login: ").await;
    assert!(String::from_utf8_lossy(&banner).contains("Debian GNU/Linux 12 shell ttyS0"), "{banner:?}");
    ws.send(Message::binary(b"root\r".to_vec())).await.unwrap();
    console_until(&mut ws, &mut seen, b"root\r\n\r\nLogin incorrect\r\nshell login: ").await;
    ws.close(None).await.unwrap();
    assert_eq!(refused_with(&url).await, 401, "a token opens one connection");

    // The boot log: KubeVirt's serial console log of the instance, through the API server's
    // pods/log and the node's kubelet; what the console showed is in it.
    let output = |token: String, query: &'static str| {
        let gw = &gw;
        async move { gw.call("GET", &format!("/api/v1/servers/{id}/console-output/{query}"), Some(&token), None).await }
    };
    let log = output(t.token.clone(), "").await;
    assert_eq!(log.status, 200, "{log:?}");
    let text = log.body["output"].as_str().unwrap();
    assert!(text.contains("smpboot: Allowing 2 CPUs") && text.contains("Debian GNU/Linux 12 shell ttyS0\n"), "{text}");
    assert!(text.ends_with("shell login: root\n\nLogin incorrect\nshell login: "), "{text}");
    assert!(!text.contains('\r'));
    assert_eq!(log.body["lines"].as_u64(), Some(text.lines().count() as u64));
    let last = output(t.token.clone(), "?lines=2").await;
    assert_eq!(last.body, json!({"output": "Login incorrect\nshell login: ", "lines": 2}), "{last:?}");
    for query in ["?lines=0", "?lines=1001", "?lines=ten"] {
        let bad = output(t.token.clone(), query).await;
        assert_eq!(
            (bad.status, &bad.body),
            (400, &json!({"lines": ["Ensure this value is an integer from 1 to 1000."]}))
        );
    }

    // A token whose minute has passed (its ticket made older, as time would).
    let late = console(t.token.clone(), None).await;
    let tickets: Api<ConfigMap> = Api::namespaced(client.clone(), "vps-system");
    for ticket in tickets.list(&kube::api::ListParams::default().labels("vps.org/console-ticket=true")).await.unwrap() {
        if ticket.data.as_ref().and_then(|d| d.get("id")) == Some(&id.to_string()) {
            let patch = json!({"data": {"expires-at": "2026-01-01T00:00:00Z"}});
            tickets.patch(&ticket.name_any(), &Default::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        }
    }
    assert_eq!(refused_with(late.body["wss_url"].as_str().unwrap()).await, 401, "an expired token");

    // VNC: RFB 3.8 with no authentication, up to the server's init message.
    let vnc = console(t.token.clone(), Some(json!({"type": "vnc"}))).await;
    assert_eq!((vnc.status, &vnc.body["type"]), (200, &json!("vnc")), "{vnc:?}");
    let (mut ws, _) = tokio_tungstenite::connect_async(vnc.body["wss_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(console_until(&mut ws, &mut seen, b"RFB 003.008\n").await, b"RFB 003.008\n");
    ws.send(Message::binary(b"RFB 003.008\n".to_vec())).await.unwrap();
    assert_eq!(console_until(&mut ws, &mut seen, &[1, 1]).await, [1, 1], "one security type: None");
    ws.send(Message::binary(vec![1])).await.unwrap();
    assert_eq!(console_until(&mut ws, &mut seen, &[0, 0, 0, 0]).await, [0, 0, 0, 0], "security passed");
    ws.send(Message::binary(vec![1])).await.unwrap();
    let name = format!("srv-{id}");
    let init = console_until(&mut ws, &mut seen, name.as_bytes()).await;
    assert_eq!((u16::from_be_bytes([init[0], init[1]]), u16::from_be_bytes([init[2], init[3]])), (1024, 768));
    drop(ws);

    // Another tenant's server does not exist for it.
    let other = support::gateway::tenant(&client, "api-console-other", 1_000_000).await;
    gw.wait_token(&other.token).await;
    assert_eq!(console(other.token.clone(), None).await.status, 404);
    assert_eq!(output(other.token.clone(), "").await.status, 404);

    // A console closes when its server stops; a stopped server has none.
    let open = console(t.token.clone(), None).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(open.body["wss_url"].as_str().unwrap()).await.unwrap();
    console_until(&mut ws, &mut seen, b"login: ").await;
    assert_eq!(action(&gw, &t.token, id, "stop").await.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(90), async {
        use futures::StreamExt;
        while let Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the console stayed open after the server stopped");
    wait_status(&gw, &t.token, id, "stopped").await;
    let stopped = console(t.token.clone(), None).await;
    assert_eq!((stopped.status, &stopped.body), (400, &json!({"detail": "Server is not running."})));
    let none = output(t.token.clone(), "").await;
    let detail = "Server is not running: its console output is kept while it runs.";
    assert_eq!((none.status, &none.body), (400, &json!({"detail": detail})));
}

/// `resource_usage` from a real Prometheus scraping KubeVirt's metrics of the instance (the
/// simulator plays virt-handler, with the load the server's annotations steer); `null` at
/// once when Prometheus does not answer; list items never carry it.
#[tokio::test]
async fn resource_usage_comes_from_prometheus_and_is_null_without_it() {
    if support::skip_on_existing_cluster("the simulator steers the load and the harness runs Prometheus") {
        return;
    }
    let (client, gw, t) = setup("api-usage").await;
    let created = gw
        .call(
            "POST",
            "/api/v1/servers/",
            Some(&t.token),
            Some(json!({"name": "busy-1", "plan_id": 1, "os_id": 3, "location": "us-west"})),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["resource_usage"], Value::Null);
    let id = created.body["id"].as_i64().unwrap();
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let name = servers.list(&Default::default()).await.unwrap().items[0].name_any();
    let load = json!({"metadata": {"annotations": {
        "simulator.vps.org/cpu-load": "0.5",
        "simulator.vps.org/memory-load": "0.5",
        "simulator.vps.org/disk-load": "0.25",
        "simulator.vps.org/network-bytes-per-second": "1073741824",
    }}});
    servers.patch(&name, &Default::default(), &kube::api::Patch::Merge(&load)).await.unwrap();
    wait_status(&gw, &t.token, id, "active").await;

    // Standard: 2 vCPUs, 4096 MiB, 80 GiB.
    let deadline = Instant::now() + Duration::from_secs(120);
    let usage = loop {
        let got = gw.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
        let usage = &got.body["resource_usage"];
        if usage.is_object() && usage["cpu_percent"].as_f64().is_some_and(|c| c > 0.0) {
            break usage.clone();
        }
        assert!(Instant::now() < deadline, "no resource usage: {got:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let cpu = usage["cpu_percent"].as_f64().unwrap();
    assert!((35.0..=65.0).contains(&cpu), "half of each vCPU busy: {usage}");
    assert_eq!(usage["memory_used"], 2048, "half of 4096 MiB: {usage}");
    assert_eq!(usage["disk_used"], 20, "a quarter of 80 GiB: {usage}");
    assert!(usage["bandwidth_used"].as_i64().unwrap() >= 1, "a GiB a second each way: {usage}");

    // Its history: the last two minutes, every 5 s.
    let end = jiff::Timestamp::now().as_second();
    let range = format!(
        "start={}&end={}&step=5",
        jiff::Timestamp::from_second(end - 120).unwrap(),
        jiff::Timestamp::from_second(end).unwrap()
    );
    let history =
        gw.call("GET", &format!("/api/v1/servers/{id}/metrics/?type=cpu&{range}"), Some(&t.token), None).await;
    assert_eq!(history.status, 200, "{history:?}");
    assert_eq!(history.body["metrics"]["step"], 5);
    let points = history.body["metrics"]["time_series"]["cpu"]["values"].as_array().unwrap().clone();
    let last: f64 = points.last().expect("CPU points")[1].as_str().unwrap().parse().unwrap();
    assert!(last > 0.0 && last <= 100.0, "{points:?}");
    let network =
        gw.call("GET", &format!("/api/v1/servers/{id}/metrics/?type=network&{range}"), Some(&t.token), None).await;
    let series = network.body["metrics"]["time_series"].as_object().unwrap();
    assert_eq!(series.keys().collect::<Vec<_>>(), ["network.in", "network.out"], "{network:?}");
    let bad = gw.call("GET", &format!("/api/v1/servers/{id}/metrics/?type=gpu&{range}"), Some(&t.token), None).await;
    assert_eq!((bad.status, &bad.body), (400, &json!({"type": ["\"gpu\" is not a valid choice."]})));

    let patched =
        gw.call("PATCH", &format!("/api/v1/servers/{id}/"), Some(&t.token), Some(json!({"name": "busy-2"}))).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.body["resource_usage"]["memory_used"], 2048, "a PATCH answers the detail: {patched:?}");
    let list = gw.call("GET", "/api/v1/servers/", Some(&t.token), None).await;
    assert!(list.body["results"][0].get("resource_usage").is_none(), "{list:?}");

    // The operator timed the create (its action) to active.
    let addr = support::system().system.as_ref().unwrap().metrics_addr;
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vps_operator_provisioning_duration_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(count.is_some_and(|n| n >= 1), "{metrics}");

    // A Prometheus that takes connections and never answers: the detail comes at once, with
    // `resource_usage` null.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let settings = vps_operator::gateway::GatewayArgs {
        system_namespace: "vps-system".into(),
        prometheus_url: Some(url),
        ..Default::default()
    };
    let blind = support::gateway::start_with(client.clone(), settings).await;
    blind.wait_token(&t.token).await;
    let started = Instant::now();
    let got = blind.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await;
    let took = started.elapsed();
    assert_eq!((got.status, &got.body["resource_usage"]), (200, &Value::Null), "{got:?}");
    assert!(took < Duration::from_secs(3), "the detail waited {took:?} for Prometheus");
    let started = Instant::now();
    let history =
        blind.call("GET", &format!("/api/v1/servers/{id}/metrics/?type=cpu&{range}"), Some(&t.token), None).await;
    assert_eq!(history.status, 503, "{history:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "the history waited {:?}", started.elapsed());
    held.abort();
}
