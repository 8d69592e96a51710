//! The control plane under the tests is real: kube-apiserver validates our CRDs' schemas and
//! CEL rules, keeps spec and status apart, kube-controller-manager collects garbage, kubectl
//! prints our columns, and KubeVirt's and CDI's kinds are served.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::time::Duration;
use vps_operator::api::{Phase, PowerState, VpsServer, VpsServerSpec, VpsServerStatus};

fn spec(name: &str) -> VpsServerSpec {
    VpsServerSpec {
        name: name.into(),
        plan: "standard".into(),
        os: "ubuntu-22-04".into(),
        location: "us-west".into(),
        hostname: Some("web01.example.com".into()),
        ssh_key: None,
        backups_enabled: false,
        power_state: PowerState::Running,
        reboot_requested_at: None,
        reboot_type: None,
        force_stop_requested_at: None,
        rebuild_requested_at: None,
        backup_requested_at: None,
        restore: None,
        suspended: false,
        delete_protection: false,
    }
}

fn expect_invalid(result: Result<VpsServer, kube::Error>, needle: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            assert!(status.message.contains(needle), "message {:?} lacks {needle:?}", status.message);
        }
        other => panic!("expected the API server to refuse it, got {other:?}"),
    }
}

#[tokio::test]
async fn vps_server_create_get_list_delete() {
    let client = support::client().await;
    let ns = support::namespace(&client, "crud").await;
    let api: Api<VpsServer> = Api::namespaced(client, &ns);

    let created = api.create(&PostParams::default(), &VpsServer::new("web-1", spec("web-server-01"))).await.unwrap();
    assert!(created.uid().is_some());
    let got = api.get("web-1").await.unwrap();
    assert_eq!(got.spec, spec("web-server-01"));
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);

    api.delete("web-1", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("web-1").await.unwrap().is_none());
    assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn api_server_enforces_the_schema() {
    let client = support::client().await;
    let ns = support::namespace(&client, "schema").await;
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();

    expect_invalid(api.create(&pp, &VpsServer::new("a", spec("-bad-name"))).await, "spec.name");
    expect_invalid(api.create(&pp, &VpsServer::new("b", spec(&"x".repeat(64)))).await, "spec.name");
    expect_invalid(api.create(&pp, &VpsServer::new("c", spec("under_score"))).await, "spec.name");
    let mut bad_host = spec("ok");
    bad_host.hostname = Some("not a host".into());
    expect_invalid(api.create(&pp, &VpsServer::new("d", bad_host)).await, "spec.hostname");
    let mut single_label = spec("ok");
    single_label.hostname = Some("localhost".into());
    expect_invalid(api.create(&pp, &VpsServer::new("e", single_label)).await, "spec.hostname");

    // A required field missing, and an enum value outside the set: sent as raw JSON.
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<VpsServer>(&()));
    let missing_plan: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer", "metadata": {"name": "f"},
        "spec": {"name": "ok", "os": "ubuntu-22-04", "location": "us-west"}
    }))
    .unwrap();
    match raw.create(&pp, &missing_plan).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("spec.plan"), "{s:?}"),
        other => panic!("missing plan accepted: {other:?}"),
    }
    let bad_power: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer", "metadata": {"name": "g"},
        "spec": {"name": "ok", "plan": "standard", "os": "ubuntu-22-04", "location": "us-west", "powerState": "Sleeping"}
    }))
    .unwrap();
    match raw.create(&pp, &bad_power).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("spec.powerState"), "{s:?}"),
        other => panic!("bad power state accepted: {other:?}"),
    }

    // OS and location are immutable (CEL transition rules); the plan changes only while the
    // server is stopped (a resize); the name changes at any time.
    api.create(&pp, &VpsServer::new("h", spec("ok"))).await.unwrap();
    let ssa = PatchParams::default();
    for (field, value, message) in [
        ("plan", "performance", "plan can change only while the server is stopped"),
        ("os", "debian-12", "os can change only with a new rebuildRequestedAt"),
        ("location", "us-east", "location is immutable"),
    ] {
        let patch = json!({"spec": {field: value}});
        expect_invalid(api.patch("h", &ssa, &Patch::Merge(&patch)).await, message);
    }
    let renamed = api.patch("h", &ssa, &Patch::Merge(&json!({"spec": {"name": "renamed"}}))).await.unwrap();
    assert_eq!(renamed.spec.name, "renamed");
    let resize = json!({"spec": {"plan": "performance", "powerState": "Stopped"}});
    let resized = api.patch("h", &ssa, &Patch::Merge(&resize)).await.unwrap();
    assert_eq!(resized.spec.plan, "performance", "stopped: a resize");
    let rebuild = json!({"spec": {"os": "debian-12", "rebuildRequestedAt": "2026-12-01T12:00:00Z"}});
    let rebuilt = api.patch("h", &ssa, &Patch::Merge(&rebuild)).await.unwrap();
    assert_eq!(rebuilt.spec.os, "debian-12", "with a new rebuild request: a rebuild");
    let same_request = json!({"spec": {"os": "ubuntu-22-04"}});
    expect_invalid(api.patch("h", &ssa, &Patch::Merge(&same_request)).await, "os can change only with a new");
}

#[tokio::test]
async fn spec_and_status_are_separate() {
    let client = support::client().await;
    let ns = support::namespace(&client, "subresource").await;
    let api: Api<VpsServer> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &VpsServer::new("s", spec("one"))).await.unwrap();

    // A status write through the status subresource does not touch spec...
    let status =
        json!({"status": {"id": 7, "phase": "Active", "ipAddress": "203.0.113.10"}, "spec": {"name": "sneaky"}});
    let after = api.patch_status("s", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(after.spec.name, "one");
    let st = after.status.clone().unwrap();
    assert_eq!((st.id, st.phase, st.ip_address.as_deref()), (Some(7), Some(Phase::Active), Some("203.0.113.10")));
    let generation = after.metadata.generation;

    // ...and a spec write does not touch status (nor can it set status).
    let patch = json!({"spec": {"name": "two"}, "status": {"phase": "Error"}});
    let after = api.patch("s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(after.spec.name, "two");
    assert_eq!(after.status.unwrap().phase, Some(Phase::Active));
    assert!(after.metadata.generation > generation, "a spec change bumps the generation");

    let untouched = api
        .patch_status("s", &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Stopped"}})))
        .await
        .unwrap();
    assert_eq!(untouched.metadata.generation, after.metadata.generation, "a status change does not");
    let _: Option<VpsServerStatus> = untouched.status;
}

#[tokio::test]
async fn owned_objects_are_garbage_collected() {
    let client = support::client().await;
    let ns = support::namespace(&client, "gc").await;
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), &ns);
    let owner = servers.create(&PostParams::default(), &VpsServer::new("owner", spec("owner"))).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: VpsServer::api_version(&()).into_owned(),
                kind: VpsServer::kind(&()).into_owned(),
                name: owner.name_any(),
                uid: owner.uid().unwrap(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    maps.create(&PostParams::default(), &child).await.unwrap();
    servers.delete("owner", &DeleteParams::background()).await.unwrap();
    for _ in 0..300 {
        if maps.get_opt("child").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ConfigMap owned by a deleted VpsServer was not garbage-collected within 30 s");
}

#[tokio::test]
async fn kubectl_prints_the_columns() {
    let client = support::client().await;
    let ns = support::namespace(&client, "columns").await;
    let api: Api<VpsServer> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &VpsServer::new("web", spec("web-server-01"))).await.unwrap();
    let status = json!({"status": {"id": 12345, "phase": "Active", "ipAddress": "203.0.113.10"}});
    api.patch_status("web", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    let (ok, out, err) = support::kubectl(&["get", "vps", "-n", &ns]);
    assert!(ok, "kubectl failed: {err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ID", "NAME", "STATUS", "IP", "PLAN", "LOCATION", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["web", "12345", "web-server-01", "Active", "203.0.113.10", "standard", "us-west"]);
}

#[tokio::test]
async fn kubevirt_and_cdi_kinds_are_served() {
    let _ = support::client().await;
    let (ok, out, err) = support::kubectl(&["api-resources", "-o", "name"]);
    assert!(ok, "{err}");
    for resource in [
        "virtualmachines.kubevirt.io",
        "virtualmachineinstances.kubevirt.io",
        "virtualmachinesnapshots.snapshot.kubevirt.io",
        "datavolumes.cdi.kubevirt.io",
        "datasources.cdi.kubevirt.io",
        "storageprofiles.cdi.kubevirt.io",
        "cdis.cdi.kubevirt.io",
        "cdiconfigs.cdi.kubevirt.io",
        "volumesnapshots.snapshot.storage.k8s.io",
        "vpsservers.vps.org",
    ] {
        assert!(out.lines().any(|l| l == resource), "{resource} is not served");
    }
    let (ok, out, _) = support::kubectl(&["version", "-o", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], vps_operator::controlplane::KUBERNETES_VERSION);
    assert_eq!(v["clientVersion"]["gitVersion"], vps_operator::controlplane::KUBERNETES_VERSION);
}
