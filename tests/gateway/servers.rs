//! Servers: the writes of CRUD, deletion, read-your-writes, trailing slashes on writes, power.

use super::prelude::*;

#[tokio::test]
async fn server_crud_follows_the_contract() {
    let (client, g, t) = setup("crud", 100_000).await;
    let tok = Some(t.token.as_str());

    let a = g.call("POST", "/api/v1/servers/", tok, Some(sample_create("web-server-02"))).await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["id"].as_i64().unwrap();
    assert_eq!(a.header("location"), Some(format!("{}/api/v1/servers/{id}/", g.url).as_str()));
    let b = &a.body;
    assert_eq!(b["name"], "web-server-02");
    assert_eq!(b["hostname"], "web02.example.com");
    assert_eq!(b["status"], "provisioning");
    assert_eq!(b["ip_address"], Value::Null);
    assert_eq!(b["ipv6_address"], Value::Null);
    assert_eq!(b["location"], "us-west");
    assert_eq!(
        b["plan"],
        json!({"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096, "storage": 80, "bandwidth": 2048})
    );
    assert_eq!(b["os"], json!({"id": 5, "name": "Ubuntu 22.04 LTS"}));
    assert_eq!(b["backups_enabled"], true);
    assert_eq!(b["resource_usage"], Value::Null);
    assert_eq!(b["message"], "Server is being provisioned. This may take 2-5 minutes.");
    assert!(is_rfc3339_z(&b["created_at"]) && is_rfc3339_z(&b["updated_at"]), "{b}");

    // The object behind it.
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let obj = api.get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(obj.metadata.labels.as_ref().unwrap()["vps.org/server-id"], id.to_string());
    assert_eq!(obj.metadata.labels.as_ref().unwrap()["vps.org/account"], t.account);
    assert_eq!((obj.spec.plan.as_str(), obj.spec.os.as_str()), ("standard", "ubuntu-22-04"));
    assert_eq!(obj.spec.power_state, PowerState::Running);
    assert!(obj.spec.backups_enabled);

    // Detail: the create's answer without the message.
    let d = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!(d.status, 200);
    let mut expected = a.body.clone();
    expected.as_object_mut().unwrap().remove("message");
    let action = expected.as_object_mut().unwrap().remove("action").expect("the create's tracked action");
    assert_eq!(
        (&action["type"], &action["status"], &action["server_id"]),
        (&json!("create"), &json!("in-progress"), &json!(id))
    );
    assert_eq!(d.body, expected);

    // List: exactly the fields of the original's list sample.
    let l = g.call("GET", "/api/v1/servers/", tok, None).await;
    assert_eq!(l.status, 200);
    assert_eq!(l.body["count"], 1);
    assert_eq!((&l.body["next"], &l.body["previous"]), (&Value::Null, &Value::Null));
    let item = &l.body["results"][0];
    let want: BTreeSet<String> =
        ["id", "name", "hostname", "status", "ip_address", "location", "plan", "os", "created_at", "updated_at"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(keys(item), want);
    assert_eq!(
        keys(&item["plan"]),
        ["id", "memory", "name", "storage", "vcpus"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(item["id"], id);

    // PUT: all three fields.
    let put = json!({"name": "web-server-updated", "hostname": "web-updated.example.com", "backups_enabled": false});
    let p = g.call("PUT", &format!("/api/v1/servers/{id}/"), tok, Some(put)).await;
    assert_eq!(p.status, 200, "{p:?}");
    assert_eq!(
        (&p.body["name"], &p.body["hostname"], &p.body["backups_enabled"]),
        (&json!("web-server-updated"), &json!("web-updated.example.com"), &json!(false))
    );
    assert!(p.body.get("message").is_none() && p.body.get("resource_usage").is_some());
    // PATCH: only the given field.
    let p = g.call("PATCH", &format!("/api/v1/servers/{id}/"), tok, Some(json!({"name": "new-server-name"}))).await;
    assert_eq!(p.status, 200, "{p:?}");
    assert_eq!((&p.body["name"], &p.body["hostname"]), (&json!("new-server-name"), &json!("web-updated.example.com")));
    let obj = api.get(&format!("srv-{id}")).await.unwrap();
    assert_eq!((obj.spec.name.as_str(), obj.spec.backups_enabled), ("new-server-name", false));
    assert!(obj.metadata.annotations.unwrap().contains_key("vps.org/updated-at"));

    // DELETE: 204 and empty; then 404 everywhere.
    let del = g.call("DELETE", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!((del.status, &del.body), (204, &Value::Null));
    let gone = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!((gone.status, &gone.body), (404, &json!({"detail": "Not found."})));
    assert_eq!(g.call("DELETE", &format!("/api/v1/servers/{id}/"), tok, None).await.status, 404);
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 0);

    // Ids are never reused.
    let next = create(&g, &t, sample_create("web-server-03")).await;
    assert!(next > id, "{next} after {id}");
}

#[tokio::test]
async fn a_server_being_deleted_is_gone() {
    let (client, g, t) = setup("deleting", 100_000).await;
    let tok = Some(t.token.as_str());
    let id = create(&g, &t, sample_create("held")).await;
    // The server is created with the operator's finalizer, which keeps the object while the
    // VM is torn down (no operator runs in this suite).
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let name = format!("srv-{id}");
    assert_eq!(api.get(&name).await.unwrap().finalizers(), ["vps.org/teardown"]);
    assert_eq!(g.call("DELETE", &format!("/api/v1/servers/{id}/"), tok, None).await.status, 204);
    assert!(api.get(&name).await.unwrap().metadata.deletion_timestamp.is_some(), "still there, deleting");
    assert_eq!(g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.status, 404);
    assert_eq!(g.call("POST", &format!("/api/v1/servers/{id}/stop/"), tok, None).await.status, 404);
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 0);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}}))).await.unwrap();
}

/// Normalizes what legitimately differs between two otherwise identical answers.
fn scrub(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "created_at", "updated_at"] {
            o.remove(k);
        }
        // The tracked action: its own id and time.
        if let Some(action) = o.get_mut("action").and_then(|a| a.as_object_mut()) {
            for k in ["id", "server_id", "started_at"] {
                action.remove(k);
            }
        }
        if let Some(server) = o.get_mut("server").and_then(|s| s.as_object_mut()) {
            server.remove("id");
        }
    }
    v
}

#[tokio::test]
async fn every_path_works_with_and_without_the_trailing_slash() {
    let (client, g, t) = setup("slash", 1_000_000).await;
    let tok = Some(t.token.as_str());
    let mut ids = vec![];
    for slash in ["/", ""] {
        let a = g.call("POST", &format!("/api/v1/servers{slash}"), tok, Some(sample_create("s"))).await;
        assert_eq!(a.status, 201, "POST with {slash:?}: {a:?}");
        ids.push(a.body["id"].as_i64().unwrap());
    }
    for id in &ids {
        set_status(&client, &t.namespace, *id, json!({"phase": "Active"})).await;
        wait_status(&g, &t, *id, "active").await;
    }
    let mut answers: Vec<Vec<(u16, Value)>> = vec![];
    for (slash, id) in [("/", ids[0]), ("", ids[1])] {
        let mut got = vec![];
        let s = |p: &str| format!("{p}{slash}");
        let list = g.call("GET", &s("/api/v1/servers"), tok, None).await;
        // The first round deletes its server before the second lists.
        let expected = if slash == "/" { 2 } else { 1 };
        assert_eq!(list.body["count"], expected, "{list:?}");
        got.push((list.status, Value::Null));
        for path in ["/api/v1/plans", "/api/v1/os", "/api/v1/locations", "/api/v1/ssh-keys"] {
            let r = g.call("GET", &s(path), tok, None).await;
            got.push((r.status, r.body["count"].clone()));
        }
        let detail = s(&format!("/api/v1/servers/{id}"));
        for (method, body) in [
            ("GET", None),
            ("PUT", Some(json!({"name": "renamed", "hostname": "r.example.com", "backups_enabled": true}))),
            ("PATCH", Some(json!({"name": "patched"}))),
        ] {
            let r = g.call(method, &detail, tok, body).await;
            got.push((r.status, scrub(r.body)));
        }
        for action in ["reboot", "stop", "start"] {
            let r = g.call("POST", &s(&format!("/api/v1/servers/{id}/{action}")), tok, None).await;
            got.push((r.status, scrub(r.body)));
        }
        let key = g
            .call(
                "POST",
                &s("/api/v1/ssh-keys"),
                tok,
                Some(json!({"name": "k", "public_key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDUGrsjooWul96+ZhoAgUxFDV/HjHaV6nIkpFUt4lTYlaLYQAMSaJh0zh77+VbhaqpBiF+nvrdRLGoVKjQmuUta71wbpAAZZGzGZjKm66FHawNMx21t9msSzMVO7JSuiBIs2+7fm2xhZm1fKiVDwezfZMvsZQHsu8dSaoXhzM446Q== k"})),
            )
            .await;
        got.push((key.status, key.body["name"].clone()));
        let key_path = s(&format!("/api/v1/ssh-keys/{}", key.body["id"]));
        got.push((g.call("GET", &key_path, tok, None).await.status, Value::Null));
        got.push((g.call("DELETE", &key_path, tok, None).await.status, Value::Null));
        let r = g.call("DELETE", &detail, tok, None).await;
        got.push((r.status, r.body));
        got.push((g.call("GET", &detail, tok, None).await.status, Value::Null));
        // Wrong method: 405 either way.
        got.push((g.call("DELETE", &s("/api/v1/servers"), tok, None).await.status, Value::Null));
        answers.push(got);
    }
    // Every answer: no redirect, and the same with and without the slash.
    for (status, _) in &answers[0] {
        assert!(!(300..400).contains(status), "redirected: {answers:?}");
    }
    assert_eq!(answers[0], answers[1]);
    // And they are the documented ones (reboot 200; stop while rebooting 400; start 400).
    let statuses: Vec<u16> = answers[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 200, 200, 200, 400, 400, 201, 200, 204, 204, 404, 405]);
}

#[tokio::test]
async fn writes_are_read_back_at_once() {
    let (_client, g, t) = setup("read-your-writes", 100_000).await;
    let tok = Some(t.token.as_str());
    for i in 0..8 {
        let id = create(&g, &t, sample_create(&format!("rw{i}"))).await;
        let path = format!("/api/v1/servers/{id}/");
        assert_eq!(g.call("GET", &path, tok, None).await.status, 200, "GET right after POST");
        let name = format!("renamed-{i}");
        assert_eq!(g.call("PATCH", &path, tok, Some(json!({"name": name}))).await.status, 200);
        assert_eq!(g.call("GET", &path, tok, None).await.body["name"], name.as_str(), "GET right after PATCH");
        assert_eq!(g.call("DELETE", &path, tok, None).await.status, 204);
        assert_eq!(g.call("GET", &path, tok, None).await.status, 404, "GET right after DELETE");
    }
}

#[tokio::test]
async fn start_stop_and_reboot_follow_the_status() {
    let (client, g, t) = setup("power", 100_000).await;
    let tok = Some(t.token.as_str());
    let id = create(&g, &t, sample_create("power")).await;
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    let name = format!("srv-{id}");
    let act = |action: &'static str| {
        let g = &g;
        async move { g.call("POST", &format!("/api/v1/servers/{id}/{action}/"), tok, None).await }
    };
    let expect_400 = |a: Answer| {
        assert_eq!(a.status, 400, "{a:?}");
        assert!(a.body["detail"].is_string());
    };
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &t, id, "active").await;
    let a = act("start").await;
    expect_400(a);

    // Stop: the answer and an immediate GET show "stopping"; the spec asks for Stopped.
    let before = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.body["updated_at"].clone();
    let a = act("stop").await;
    assert_eq!(a.status, 200, "{a:?}");
    let mut body = a.body.clone();
    let action = body.as_object_mut().unwrap().remove("action").expect("the stop's tracked action");
    assert_eq!(
        body,
        json!({"status": "success", "message": "Server is stopping", "server": {"id": id, "name": "power", "status": "stopping"}})
    );
    assert_eq!((&action["type"], &action["status"]), (&json!("stop"), &json!("in-progress")));
    let d = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!(d.body["status"], "stopping");
    assert!(is_rfc3339_z(&d.body["updated_at"]) && d.body["updated_at"].as_str() >= before.as_str());
    assert_eq!(api.get(&name).await.unwrap().spec.power_state, PowerState::Stopped);
    expect_400(act("stop").await);
    expect_400(act("reboot").await);

    // Stopped: start works, stop and reboot do not.
    set_status(&client, &t.namespace, id, json!({"phase": "Stopped"})).await;
    wait_status(&g, &t, id, "stopped").await;
    let a = act("stop").await;
    assert_eq!((a.status, &a.body["detail"]), (400, &json!("Server is not running.")));
    expect_400(act("reboot").await);
    let a = act("start").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["message"], "Server is starting");
    assert_eq!(a.body["server"]["status"], "starting");
    assert_eq!(g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.body["status"], "starting");
    assert_eq!(api.get(&name).await.unwrap().spec.power_state, PowerState::Running);
    expect_400(act("start").await);

    // Active again: reboot stamps a request; "rebooting" until the operator observes it.
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &t, id, "active").await;
    let a = act("reboot").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!((&a.body["message"], &a.body["server"]["status"]), (&json!("Server is rebooting"), &json!("rebooting")));
    assert_eq!(g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.body["status"], "rebooting");
    let stamp = api.get(&name).await.unwrap().spec.reboot_requested_at.expect("a reboot request");
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    expect_400(act("reboot").await);
    set_status(&client, &t.namespace, id, json!({"observedRebootRequest": stamp})).await;
    wait_status(&g, &t, id, "active").await;
}

#[tokio::test]
async fn read_only_and_unknown_fields_are_ignored() {
    let (_client, g, t) = setup("readonly", 1_000_000).await;
    let tok = Some(t.token.as_str());
    // A refused create makes nothing.
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(json!({"name": "-bad-"}))).await.status, 400);
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 0);

    let mut body = sample_create("readonly");
    for (k, v) in [
        ("id", json!(424242)),
        ("status", json!("active")),
        ("ip_address", json!("198.51.100.1")),
        ("created_at", json!("2000-01-01T00:00:00Z")),
        ("resource_usage", json!({"cpu_percent": 1.0})),
        ("power_state", json!("Stopped")),
        ("unknown", json!("x")),
    ] {
        body[k] = v;
    }
    let a = g.call("POST", "/api/v1/servers/", tok, Some(body)).await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["id"].as_i64().unwrap();
    assert_ne!(id, 424242);
    assert_eq!(
        (&a.body["status"], &a.body["ip_address"], &a.body["resource_usage"]),
        (&json!("provisioning"), &Value::Null, &Value::Null)
    );
    assert_ne!(a.body["created_at"], "2000-01-01T00:00:00Z");
    let path = format!("/api/v1/servers/{id}/");
    let p = g.call("PATCH", &path, tok, Some(json!({"id": 1, "status": "stopped", "ip_address": "1.2.3.4"}))).await;
    assert_eq!(
        (p.status, &p.body["id"], &p.body["status"], &p.body["ip_address"]),
        (200, &json!(id), &json!("provisioning"), &Value::Null)
    );
    // Refused updates change nothing.
    assert_eq!(g.call("PATCH", &path, tok, Some(json!({"plan_id": 2, "name": "renamed"}))).await.status, 400);
    let d = g.call("GET", &path, tok, None).await;
    assert_eq!(
        (&d.body["name"], &d.body["location"], &d.body["plan"]["id"]),
        (&json!("readonly"), &json!("us-west"), &json!(1))
    );
    // Just under 64 KiB: fine (the padding is ignored).
    let mut fits = sample_create("fits");
    fits["padding"] = json!("x".repeat(60 * 1024));
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(fits)).await.status, 201);
}

#[tokio::test]
async fn creating_in_an_account_whose_namespace_is_going_is_a_conflict() {
    let (client, g, t) = setup("terminating", 1_000_000).await;
    let tok = Some(t.token.as_str());
    // A ConfigMap with a finalizer of its own holds the namespace in Terminating.
    let held: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "finalizers": ["tests.vps.org/hold"]},
    }))
    .unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &t.namespace);
    cms.create(&Default::default(), &held).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(&t.namespace, &Default::default()).await.unwrap();
    let a = g.call("POST", "/api/v1/servers/", tok, Some(sample_create("late"))).await;
    assert_eq!(a.status, 409, "{a:?}");
    assert!(a.body["detail"].as_str().unwrap().contains("being deleted"), "{a:?}");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt me@laptop";
    let a = g.call("POST", "/api/v1/ssh-keys/", tok, Some(json!({"name": "k", "public_key": key}))).await;
    assert_eq!(a.status, 409, "{a:?}");
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_name_taken_with_kubectl_makes_the_gateway_draw_another_id() {
    let (client, g, t) = setup("name-taken", 1_000_000).await;
    // The next ids the cluster's counter gives: their object names taken by hand first.
    let counters = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), gw::SYSTEM_NAMESPACE);
    let next: i64 = counters
        .get_opt("vps-ids")
        .await
        .unwrap()
        .and_then(|cm| cm.data?.get("next-server-id")?.parse().ok())
        .unwrap_or(1);
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    for id in next..next + 3 {
        let decoy: VpsServer = serde_json::from_value(json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": format!("srv-{id}")},
            "spec": {"name": "decoy", "plan": "standard", "os": "ubuntu-22-04", "location": "us-west"}}))
        .unwrap();
        servers.create(&Default::default(), &decoy).await.unwrap();
    }
    let a = g.call("POST", "/api/v1/servers/", Some(&t.token), Some(sample_create("mine"))).await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["id"].as_i64().unwrap();
    let mine = servers.get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(mine.spec.name, "mine");
}
