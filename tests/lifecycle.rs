//! The operator on real KubeVirt controllers (virt-controller, virt-api) and a real control
//! plane, with the node simulator playing the hosts: whole server lifecycles.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vps_operator::api::{Phase, VpsServer};
use vps_operator::kubevirt::{DataVolume, VirtualMachine, VirtualMachineInstance, VirtualMachineSnapshot};

/// A real public key (ed25519).
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt me@laptop";

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
    // From the simulator's pools (a real cluster's hosts give addresses of their own).
    if !support::existing_cluster() {
        assert!(status.ip_address.as_deref().is_some_and(|ip| ip.starts_with("198.18.")), "{:?}", status.ip_address);
        assert!(status.ipv6_address.as_deref().is_some_and(|ip| ip.starts_with("2001:db8:200:")));
    }
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

async fn patch_spec(api: &Api<VpsServer>, name: &str, spec: serde_json::Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&json!({ "spec": spec }))).await.unwrap();
}

async fn vmi_uid(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<VirtualMachineInstance>::namespaced(client.clone(), ns).get_opt(name).await.unwrap().and_then(|v| v.uid())
}

async fn run_strategy(client: &Client, ns: &str, name: &str) -> Option<String> {
    Api::<VirtualMachine>::namespaced(client.clone(), ns).get(name).await.unwrap().spec.run_strategy
}

fn reason(s: &VpsServer) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn stop_start_reboot() {
    let (client, ns, api) = setup("power").await;
    api.create(&PostParams::default(), &server("pw")).await.unwrap();
    wait_phase(&api, "pw", Phase::Active).await;

    patch_spec(&api, "pw", json!({"powerState": "Stopped"})).await;
    let stopped = wait_phase(&api, "pw", Phase::Stopped).await;
    assert_eq!(run_strategy(&client, &ns, "pw").await.as_deref(), Some("Halted"));
    assert_eq!(stopped.status.unwrap().ip_address, None, "a stopped server has no address");
    wait_until(30, "the instance is gone", || async { vmi_uid(&client, &ns, "pw").await.is_none() }).await;

    patch_spec(&api, "pw", json!({"powerState": "Running"})).await;
    wait_phase(&api, "pw", Phase::Active).await;
    assert_eq!(run_strategy(&client, &ns, "pw").await.as_deref(), Some("Always"));

    // A reboot is done in place, soft by default: virt-api asks the host's virt-handler,
    // which reports it with an Event on the instance; the instance stays.
    let before = vmi_uid(&client, &ns, "pw").await.expect("a running instance");
    for (stamp, kind, event) in
        [("2026-11-27T00:00:00Z", None, "SoftRebooted"), ("2026-11-27T00:00:01Z", Some("Hard"), "Reset")]
    {
        patch_spec(&api, "pw", json!({"rebootRequestedAt": stamp, "rebootType": kind})).await;
        let active = wait_for(&api, "pw", 30, "active after the reboot", |s| {
            phase(s) == Some(Phase::Active)
                && s.status.as_ref().and_then(|st| st.observed_reboot_request.as_deref()) == Some(stamp)
        })
        .await;
        assert_eq!(vmi_uid(&client, &ns, "pw").await.as_deref(), Some(before.as_str()), "{event}: the same instance");
        assert!(active.status.unwrap().ip_address.is_some());
        wait_until(10, &format!("an Event {event} on the instance"), || async {
            support::events_about(&client, &ns, "VirtualMachineInstance", "pw", event).await > 0
        })
        .await;
    }
    assert!(!support::warning_event(&client, &ns, "RebootFallback").await);

    // The same stamp again is not a second reboot.
    patch_spec(&api, "pw", json!({"name": "pw-renamed"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vmi_uid(&client, &ns, "pw").await.as_deref(), Some(before.as_str()));
    assert_eq!(support::events_about(&client, &ns, "VirtualMachineInstance", "pw", "Reset").await, 1, "one reset");
}

#[tokio::test]
async fn a_reboot_the_host_cannot_do_restarts_the_instance() {
    if support::skip_on_existing_cluster("it injects failures into the simulated hosts") {
        return;
    }
    let (client, ns, api) = setup("reboot-fallback").await;
    let mut s = server("rf");
    s.metadata.annotations = Some([("simulator.vps.org/fail".to_string(), "reboot-fails".to_string())].into());
    api.create(&PostParams::default(), &s).await.unwrap();
    wait_phase(&api, "rf", Phase::Active).await;
    let before = vmi_uid(&client, &ns, "rf").await.expect("a running instance");
    patch_spec(&api, "rf", json!({"rebootRequestedAt": "2026-11-27T00:00:00Z"})).await;
    wait_for(&api, "rf", 90, "active after the restart", |s| {
        phase(s) == Some(Phase::Active)
            && s.status.as_ref().is_some_and(|st| {
                st.reboot_from_instance.is_none()
                    && st.observed_reboot_request.as_deref() == Some("2026-11-27T00:00:00Z")
            })
    })
    .await;
    let after = vmi_uid(&client, &ns, "rf").await.expect("a new instance");
    assert_ne!(before, after, "the restart replaced the instance");
    assert!(support::warning_event(&client, &ns, "RebootFallback").await);
    assert_eq!(support::events_about(&client, &ns, "VirtualMachineInstance", "rf", "SoftRebooted").await, 0);
}

#[tokio::test]
async fn suspend_and_lift() {
    let (client, ns, api) = setup("suspend").await;
    api.create(&PostParams::default(), &server("su")).await.unwrap();
    wait_phase(&api, "su", Phase::Active).await;
    patch_spec(&api, "su", json!({"suspended": true})).await;
    wait_phase(&api, "su", Phase::Suspended).await;
    assert_eq!(run_strategy(&client, &ns, "su").await.as_deref(), Some("Halted"));
    wait_until(30, "a suspended server's instance is gone", || async { vmi_uid(&client, &ns, "su").await.is_none() })
        .await;
    patch_spec(&api, "su", json!({"suspended": false})).await;
    wait_phase(&api, "su", Phase::Active).await;
}

#[tokio::test]
async fn bad_references_are_errors_until_fixed() {
    let (client, ns, api) = setup("badref").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    for (field, value, reason_want, fixed) in [
        ("plan", "no-such-plan", "PlanNotFound", None),
        ("os", "no-such-image", "ImageNotFound", None),
        ("location", "no-such-place", "LocationNotFound", None),
        ("sshKey", "missing-key", "SshKeyNotFound", Some("missing-key")),
    ] {
        let name = format!("bad-{}", field.to_lowercase());
        let mut s = server(&name);
        let mut spec = serde_json::to_value(&s.spec).unwrap();
        spec[field] = json!(value);
        s.spec = serde_json::from_value(spec).unwrap();
        api.create(&PostParams::default(), &s).await.unwrap();
        let failed = wait_for(&api, &name, 30, reason_want, |s| phase(s) == Some(Phase::Error)).await;
        assert_eq!(reason(&failed), reason_want);
        assert!(
            failed
                .status
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.type_ == "ReferencesResolved" && c.reason == reason_want)
        );
        assert!(vms.get_opt(&name).await.unwrap().is_none(), "no VM for a server with a bad {field}");
        // The Event follows the status write.
        wait_until(10, &format!("a Warning event {reason_want}"), || support::warning_event(&client, &ns, reason_want))
            .await;
        match fixed {
            // The missing key appears: the server recovers on its own.
            Some(key) => {
                let k: vps_operator::api::VpsSshKey = serde_json::from_value(json!({
                    "apiVersion": "vps.org/v1alpha1", "kind": "VpsSshKey", "metadata": {"name": key},
                    "spec": {"name": "laptop", "publicKey": KEY}
                }))
                .unwrap();
                Api::<vps_operator::api::VpsSshKey>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &k)
                    .await
                    .unwrap();
                wait_phase(&api, &name, Phase::Active).await;
                let vm = vms.get(&name).await.unwrap();
                let user_data = serde_json::to_string(&vm.spec.template).unwrap();
                assert!(user_data.contains(KEY));
            }
            // Plan, image and location are immutable: a bad one is fixed by deleting the server.
            None => {
                api.delete(&name, &DeleteParams::default()).await.unwrap();
                wait_gone(&api, &name).await;
            }
        }
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(secs: u64, what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "not true after {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_gone(api: &Api<VpsServer>, name: &str) {
    for _ in 0..450 {
        if api.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("server {name} still exists after 90 s: {:#?}", api.get(name).await.unwrap().status);
}

#[tokio::test]
async fn deletion_tears_everything_down() {
    let (client, ns, api) = setup("delete").await;
    api.create(&PostParams::default(), &server("del")).await.unwrap();
    wait_phase(&api, "del", Phase::Active).await;
    let s = api.get("del").await.unwrap();
    assert!(s.finalizers().iter().any(|f| f == "vps.org/teardown"));
    api.delete("del", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "del").await;
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), &ns).get_opt("del").await.unwrap();
    assert!(vm.is_none(), "the VM outlived its server: {:?}", vm.map(|v| v.metadata));
    assert!(Api::<VirtualMachineInstance>::namespaced(client.clone(), &ns).get_opt("del").await.unwrap().is_none());
    assert!(Api::<DataVolume>::namespaced(client.clone(), &ns).get_opt("del-root").await.unwrap().is_none());
}

#[tokio::test]
async fn failures_on_the_hosts_are_errors_with_their_reason() {
    if support::skip_on_existing_cluster("it injects failures into the simulated hosts") {
        return;
    }
    let (client, _ns, api) = setup("failures").await;
    // A location whose nodes do not exist: kube-scheduler cannot place the launcher Pod.
    let nowhere: vps_operator::api::VpsLocation = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsLocation", "metadata": {"name": "nowhere"},
        "spec": {"displayName": "Nowhere", "nodeSelector": {"topology.kubernetes.io/region": "nowhere"}}
    }))
    .unwrap();
    let locations: Api<vps_operator::api::VpsLocation> = Api::all(client.clone());
    let _ = locations.create(&PostParams::default(), &nowhere).await;
    let mut s = server("unsched");
    s.spec.location = "nowhere".into();
    api.create(&PostParams::default(), &s).await.unwrap();

    for (name, failure) in [("pull", "image-pull"), ("dv", "data-volume"), ("crash", "crash")] {
        let mut s = server(name);
        s.metadata.annotations = Some([("simulator.vps.org/fail".to_string(), failure.to_string())].into());
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    for (name, want) in [
        ("unsched", "ErrorUnschedulable"),
        ("pull", "ErrImagePull"),
        ("dv", "DataVolumeError"),
        ("crash", "CrashLoopBackOff"),
    ] {
        let failed = wait_for(&api, name, 120, want, |s| phase(s) == Some(Phase::Error) && reason(s) == want).await;
        assert!(failed.status.unwrap().ip_address.is_none());
    }
}

#[tokio::test]
async fn webhooks_accept_every_catalog_vm_and_refuse_a_broken_one() {
    use vps_operator::api::{Resolved, ResolvedKey, VpsImage, VpsLocation, VpsPlan};
    use vps_operator::operator::vm::{VmInputs, build_vm};
    let (client, ns, api) = setup("webhooks").await;
    // An owner to reference (dry runs do not persist anything).
    let owner = api.create(&PostParams::default(), &server("owner")).await.unwrap();
    let plans = Api::<VpsPlan>::all(client.clone()).list(&Default::default()).await.unwrap().items;
    let images = Api::<VpsImage>::all(client.clone()).list(&Default::default()).await.unwrap().items;
    let locations: Vec<VpsLocation> = Api::<VpsLocation>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|l| l.name_any().starts_with("us-"))
        .collect();
    assert!(plans.len() >= 2 && images.len() >= 2 && locations.len() >= 2);
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<VirtualMachine>(&()));
    let dry = PostParams { dry_run: true, ..Default::default() };
    for plan in &plans {
        for image in &images {
            for location in &locations {
                let key = ResolvedKey { name: "k".into(), public_key: KEY.into() };
                let resolved = Resolved::of(plan, image, location, Some(key));
                let inputs = VmInputs {
                    server: &owner,
                    id: 1,
                    resolved: &resolved,
                    halted: false,
                    simulator_annotations: true,
                    attached: None,
                };
                let mut vm = build_vm(&inputs);
                vm["metadata"]["name"] =
                    json!(format!("dry-{}-{}-{}", plan.name_any(), image.name_any(), location.name_any()));
                let object: kube::api::DynamicObject = serde_json::from_value(vm).unwrap();
                raw.create(&dry, &object).await.unwrap_or_else(|e| {
                    panic!(
                        "virt-api refused the VM for {}/{}/{}: {e}",
                        plan.name_any(),
                        image.name_any(),
                        location.name_any()
                    )
                });
            }
        }
    }
    // On a provider network: bridged to a Multus attachment, with a fixed MAC and network data.
    let network_data = "version: 2\nethernets:\n  eth0:\n    match: {macaddress: '02:aa:00:00:00:05'}\n    addresses: [203.0.113.5/24]\n";
    for plan in &plans {
        let resolved = Resolved::of(plan, &images[0], &locations[0], None);
        let attached = vps_operator::operator::vm::Attached {
            attachment: "vps-system/public",
            mac: "02:aa:00:00:00:05",
            network_data,
        };
        let inputs = VmInputs {
            server: &owner,
            id: 1,
            resolved: &resolved,
            halted: false,
            simulator_annotations: true,
            attached: Some(attached),
        };
        let mut vm = build_vm(&inputs);
        vm["metadata"]["name"] = json!(format!("dry-public-{}", plan.name_any()));
        let object: kube::api::DynamicObject = serde_json::from_value(vm).unwrap();
        raw.create(&dry, &object)
            .await
            .unwrap_or_else(|e| panic!("virt-api refused the provider-network VM for {}: {e}", plan.name_any()));
    }
    // A disk that names no volume: KubeVirt's own validation refuses it.
    let resolved = Resolved::of(&plans[0], &images[0], &locations[0], None);
    let mut broken = build_vm(&VmInputs {
        server: &owner,
        id: 1,
        resolved: &resolved,
        halted: false,
        simulator_annotations: true,
        attached: None,
    });
    broken["metadata"]["name"] = json!("dry-broken");
    broken["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "ghost", "disk": {"bus": "virtio"}}));
    let object: kube::api::DynamicObject = serde_json::from_value(broken).unwrap();
    match raw.create(&dry, &object).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("ghost"), "{}", e.message),
        other => panic!("a broken VM was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_creations_get_distinct_ids() {
    let (client, _ns, api) = setup("ids").await;
    // Servers whose plan does not exist get their ids but no VM: this tests allocation alone.
    let creates = (0..50).map(|i| {
        let api = api.clone();
        async move {
            let mut s = server(&format!("c{i}"));
            s.spec.plan = "no-such-plan".into();
            api.create(&PostParams::default(), &s).await.unwrap();
        }
    });
    futures::future::join_all(creates).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..50 {
        let s = wait_for(&api, &format!("c{i}"), 60, "given an id", |s| {
            s.status.as_ref().is_some_and(|st| st.id.is_some())
        })
        .await;
        ids.insert(s.status.unwrap().id.unwrap());
    }
    assert_eq!(ids.len(), 50, "50 servers, 50 distinct ids");

    // Several allocators racing on the same counter (gateways taking blocks of ids, operators
    // taking one at a time) never collide.
    let allocators: Vec<_> = (0..5)
        .map(|i| vps_operator::ids::IdAllocator::new(client.clone(), "vps-system").with_block([1, 16, 3, 1, 16][i]))
        .collect();
    let tasks = (0..50).map(|i| {
        let a = allocators[i % 5].clone();
        async move { a.allocate(vps_operator::ids::IdKind::Server).await.unwrap() }
    });
    let more: std::collections::BTreeSet<i64> = futures::future::join_all(tasks).await.into_iter().collect();
    assert_eq!(more.len(), 50);
    assert!(more.is_disjoint(&ids), "ids are never reused");
}

#[tokio::test]
async fn operator_killed_mid_provisioning_converges_to_one_vm() {
    let shared = support::system();
    let (client, ns, api) = setup("restart").await;
    let system = shared.system.as_ref().unwrap();
    api.create(&PostParams::default(), &server("rs")).await.unwrap();
    // Kill the operator as soon as it has started working on the server.
    wait_for(&api, "rs", 30, "picked up", |s| !s.finalizers().is_empty()).await;
    system.kill_operator();
    // A delete issued while the operator is down completes once it is back.
    let mut doomed = server("doomed");
    doomed.metadata.finalizers = Some(vec!["vps.org/teardown".into()]);
    api.create(&PostParams::default(), &doomed).await.unwrap();
    api.delete("doomed", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(api.get_opt("doomed").await.unwrap().is_some(), "nobody finalizes while the operator is down");
    system.start_operator(&shared.kubeconfig);
    wait_phase(&api, "rs", Phase::Active).await;
    wait_gone(&api, "doomed").await;
    let vms = Api::<VirtualMachine>::namespaced(client.clone(), &ns).list(&Default::default()).await.unwrap();
    assert_eq!(vms.items.len(), 1, "exactly one VM");
}

#[tokio::test]
async fn a_settled_server_causes_no_writes() {
    let (client, ns, api) = setup("settled").await;
    api.create(&PostParams::default(), &server("calm")).await.unwrap();
    wait_phase(&api, "calm", Phase::Active).await;
    // Let in-flight events drain, then watch for changes over an interval.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let before = (
        api.get("calm").await.unwrap().resource_version(),
        vms.get("calm").await.unwrap().resource_version(),
        events.list(&Default::default()).await.unwrap().items.len(),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = (
        api.get("calm").await.unwrap().resource_version(),
        vms.get("calm").await.unwrap().resource_version(),
        events.list(&Default::default()).await.unwrap().items.len(),
    );
    assert_eq!(before, after, "no write to the server, its VM or events while nothing changes");
}

#[tokio::test]
async fn backups_are_taken_pruned_and_stopped() {
    if support::skip_on_existing_cluster("its 6 s backup interval needs the simulator's instant snapshots") {
        return;
    }
    let (client, ns, api) = setup("backups").await;
    let mut s = server("bk");
    s.spec.backups_enabled = true;
    api.create(&PostParams::default(), &s).await.unwrap();
    wait_phase(&api, "bk", Phase::Active).await;
    // The test operator takes one every 6 s and keeps 2.
    let backed =
        wait_for(&api, "bk", 60, "backed up", |s| s.status.as_ref().is_some_and(|st| st.last_backup_time.is_some()))
            .await;
    let first = backed.status.unwrap().last_backup_time.unwrap();
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &ns);
    wait_for(&api, "bk", 60, "backed up again", |s| {
        s.status.as_ref().and_then(|st| st.last_backup_time.as_ref()).is_some_and(|t| *t != first)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    // Kept: ready and not being deleted (a pruned snapshot goes once KubeVirt lets it).
    let ready = |list: &[VirtualMachineSnapshot]| {
        list.iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .filter(|s| s.status.as_ref().and_then(|st| st.ready_to_use) == Some(true))
            .count()
    };
    // A snapshot that just became ready is pruned by the next reconcile: look until it is.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut list = snapshots.list(&Default::default()).await.unwrap().items;
    while ready(&list) > 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        list = snapshots.list(&Default::default()).await.unwrap().items;
    }
    assert!(ready(&list) <= 2, "retention keeps the newest 2, found {}", ready(&list));
    assert!(ready(&list) >= 1);

    patch_spec(&api, "bk", json!({"backupsEnabled": false})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names =
        |l: Vec<VirtualMachineSnapshot>| l.iter().map(|s| s.name_any()).collect::<std::collections::BTreeSet<_>>();
    let frozen = names(snapshots.list(&Default::default()).await.unwrap().items);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = names(snapshots.list(&Default::default()).await.unwrap().items);
    assert!(later.is_subset(&frozen), "no new snapshot after disabling backups: {frozen:?} → {later:?}");
}

#[tokio::test]
async fn the_operator_serves_metrics_and_health() {
    let (_client, _ns, api) = setup("metrics").await;
    api.create(&PostParams::default(), &server("m")).await.unwrap();
    wait_phase(&api, "m", Phase::Active).await;
    let addr = support::system().system.as_ref().unwrap().metrics_addr;
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    };
    // The operator may have been restarted by another test: wait until it is ready again.
    wait_until(30, "the operator is ready", || async { get("/readyz").await.starts_with("HTTP/1.1 200") }).await;
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(metrics.contains("vps_operator_reconciles_total{result=\"success\",error=\"\"}"), "{metrics}");
    assert!(metrics.contains("vps_operator_reconcile_duration_seconds_bucket"));
    assert!(metrics.contains("content-type: application/openmetrics-text; version=1.0.0"), "{metrics}");
    for family in ["vps_operator_queue_waiting ", "vps_operator_queue_running ", "vps_operator_queue_retries_total "] {
        assert!(metrics.contains(family), "{family}: {metrics}");
    }
    assert!(metrics.contains("vps_operator_build_info{version="), "{metrics}");
    // The fleet, counted from the operator's caches at each scrape.
    let active = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vps_operator_servers{phase=\"active\",location=\"us-west\"} "))
        .and_then(|n| n.parse::<i64>().ok());
    assert!(active.is_some_and(|n| n >= 1), "{metrics}");
    assert!(metrics.contains("# TYPE vps_operator_provisioning_duration_seconds histogram"), "{metrics}");
    // vps_operator_actions_in_progress has no series while no action is open (kubectl makes
    // none here); its rendering is a unit test of operator::metrics.
    assert!(!metrics.contains("namespace="), "labels are bounded: never per object");
}

#[tokio::test]
async fn a_failed_backup_is_reported_without_harming_the_server() {
    if support::skip_on_existing_cluster("it injects a snapshot failure into the simulated hosts") {
        return;
    }
    let (_client, _ns, api) = setup("backupfail").await;
    let mut s = server("bf");
    s.spec.backups_enabled = true;
    s.metadata.annotations = Some([("simulator.vps.org/fail".to_string(), "snapshot".to_string())].into());
    api.create(&PostParams::default(), &s).await.unwrap();
    let failed = wait_for(&api, "bf", 90, "reporting a failed backup", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.conditions.iter().any(|c| {
                c.type_ == "BackupsSucceeded"
                    && c.status == vps_operator::api::ConditionStatus::False
                    && c.reason == "BackupFailed"
            })
        })
    })
    .await;
    assert_eq!(phase(&failed), Some(Phase::Active), "the server itself is fine");
    assert_eq!(failed.status.unwrap().last_backup_time, None);
}
