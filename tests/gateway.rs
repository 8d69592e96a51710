//! The REST gateway over HTTP, against the real control plane: every endpoint of
//! shared/API.md, its errors, tenancy, pagination, idempotency and kubectl interplay.
//! The operator does not run here: where a test needs a phase, it writes the status itself.

mod support;

use std::collections::BTreeSet;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::gateway::{self as gw, Answer, Gateway, Tenant, eventually};
use vps_operator::api::{PowerState, VpsServer};

fn sample_create(name: &str) -> Value {
    json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west",
           "hostname": "web02.example.com", "backups_enabled": true})
}

async fn setup(test: &str, credit: i64) -> (Client, Gateway, Tenant) {
    let client = support::client().await;
    let tenant = gw::tenant(&client, test, credit).await;
    let gateway = gw::start(&client).await;
    gateway.wait_token(&tenant.token).await;
    (client, gateway, tenant)
}

async fn create(g: &Gateway, t: &Tenant, body: Value) -> i64 {
    let a = g.call("POST", "/api/v1/servers/", Some(&t.token), Some(body)).await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["id"].as_i64().expect("id")
}

async fn set_status(client: &Client, ns: &str, id: i64, status: Value) {
    let api: Api<VpsServer> = Api::namespaced(client.clone(), ns);
    api.patch_status(&format!("srv-{id}"), &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
        .await
        .expect("patch status");
}

async fn wait_status(g: &Gateway, t: &Tenant, id: i64, status: &str) {
    eventually(&format!("server {id} shows {status}"), || async {
        g.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.body["status"] == status
    })
    .await;
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn is_rfc3339_z(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.ends_with('Z') && s.parse::<jiff::Timestamp>().is_ok())
}

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

#[tokio::test]
async fn authentication_comes_first() {
    let (client, g, t) = setup("auth", 100_000).await;
    let id = create(&g, &t, sample_create("mine")).await;
    let paths = [
        ("GET", "/api/v1/servers/".to_string()),
        ("POST", "/api/v1/servers/".to_string()),
        ("GET", format!("/api/v1/servers/{id}/")),
        ("GET", "/api/v1/servers/999999999/".to_string()),
        ("PUT", "/api/v1/servers/999999999/".to_string()),
        ("DELETE", "/api/v1/servers/abc/".to_string()),
        ("POST", "/api/v1/servers/999999999/start/".to_string()),
        ("GET", "/api/v1/servers/999999999/start/".to_string()),
        ("GET", "/api/v1/plans/".to_string()),
        ("GET", "/api/v1/ssh-keys/".to_string()),
    ];
    for (method, path) in &paths {
        for token in [None, Some("not-a-token")] {
            let a = g.call(method, path, token, Some(json!({"name": 1}))).await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}: {a:?}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(a.body["detail"].is_string(), "{a:?}");
        }
    }
    // Another scheme is not a Bearer token.
    let a = g.raw("GET", "/api/v1/servers/", None, vec![], &[("Authorization", &format!("Token {}", t.token))]).await;
    assert_eq!(a.status, 401);
    // Lower-case scheme is fine (schemes are case-insensitive).
    let a = g.raw("GET", "/api/v1/servers/", None, vec![], &[("Authorization", &format!("bearer {}", t.token))]).await;
    assert_eq!(a.status, 200);

    // Revoked tokens stop working.
    assert!(vps_operator::tokens::revoke_token(&client, gw::SYSTEM_NAMESPACE, &t.token).await.unwrap());
    eventually("the revoked token is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn another_tenants_servers_are_not_found() {
    let client = support::client().await;
    let a = gw::tenant(&client, "tenant-a", 100_000).await;
    let b = gw::tenant(&client, "tenant-b", 100_000).await;
    let g = gw::start(&client).await;
    g.wait_token(&a.token).await;
    g.wait_token(&b.token).await;
    let id = create(&g, &a, sample_create("a-server")).await;
    set_status(&client, &a.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &a, id, "active").await;
    let key = g
        .call(
            "POST",
            "/api/v1/ssh-keys/",
            Some(&a.token),
            Some(json!({"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA a@h"})),
        )
        .await;
    assert_eq!(key.status, 201, "{key:?}");
    let key_id = key.body["id"].as_i64().unwrap();

    let put = json!({"name": "x", "hostname": "x.example.com", "backups_enabled": false});
    let calls = [
        ("GET", format!("/api/v1/servers/{id}/"), None),
        ("PUT", format!("/api/v1/servers/{id}/"), Some(put)),
        ("PATCH", format!("/api/v1/servers/{id}/"), Some(json!({"name": "x"}))),
        ("POST", format!("/api/v1/servers/{id}/start/"), None),
        ("POST", format!("/api/v1/servers/{id}/stop/"), None),
        ("POST", format!("/api/v1/servers/{id}/reboot/"), None),
        ("DELETE", format!("/api/v1/servers/{id}/"), None),
        ("GET", format!("/api/v1/ssh-keys/{key_id}/"), None),
        ("DELETE", format!("/api/v1/ssh-keys/{key_id}/"), None),
    ];
    for (method, path, body) in calls {
        let r = g.call(method, &path, Some(&b.token), body).await;
        assert_eq!((r.status, &r.body), (404, &json!({"detail": "Not found."})), "{method} {path}");
    }
    assert_eq!(g.call("GET", "/api/v1/servers/", Some(&b.token), None).await.body["count"], 0);
    assert_eq!(g.call("GET", "/api/v1/ssh-keys/", Some(&b.token), None).await.body["count"], 0);
    // B cannot use A's key either.
    let mut body = sample_create("b-server");
    body["ssh_key_id"] = json!(key_id);
    let r = g.call("POST", "/api/v1/servers/", Some(&b.token), Some(body)).await;
    assert_eq!(r.status, 400);
    assert!(r.body["ssh_key_id"].is_array(), "{r:?}");

    // A's server and key are untouched.
    let mine = g.call("GET", &format!("/api/v1/servers/{id}/"), Some(&a.token), None).await;
    assert_eq!((mine.body["name"].as_str(), mine.body["status"].as_str()), (Some("a-server"), Some("active")));
    let obj = Api::<VpsServer>::namespaced(client.clone(), &a.namespace).get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(obj.spec.power_state, PowerState::Running);
    assert!(obj.spec.reboot_requested_at.is_none());
    assert_eq!(g.call("GET", &format!("/api/v1/ssh-keys/{key_id}/"), Some(&a.token), None).await.status, 200);
}

/// Normalizes what legitimately differs between two otherwise identical answers.
fn scrub(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "created_at", "updated_at"] {
            o.remove(k);
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
                Some(json!({"name": "k", "public_key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ k"})),
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
async fn bodies_are_validated_strictly_and_all_at_once() {
    let (_client, g, t) = setup("validation", 1_000_000).await;
    let tok = Some(t.token.as_str());

    // Not JSON, not an object.
    for body in [&b"{\"name\": "[..], b"not json", b"[1, 2]", b"\"a string\""] {
        let a = g.raw("POST", "/api/v1/servers/", tok, body.to_vec(), &[]).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert!(a.body["detail"].as_str().unwrap().starts_with("JSON parse error - "), "{a:?}");
    }
    // Nothing at all: every required field listed.
    let a = g.call("POST", "/api/v1/servers/", tok, Some(json!({}))).await;
    assert_eq!(a.status, 400);
    let required = json!(["This field is required."]);
    assert_eq!(a.body, json!({"name": required, "plan_id": required, "os_id": required, "location": required}));
    // Wrong types, each named.
    let a = g
        .call(
            "POST",
            "/api/v1/servers/",
            tok,
            Some(json!({"name": 5, "plan_id": "1", "os_id": 1.5, "location": 7, "hostname": "not a host",
                        "ssh_key_id": "2", "backups_enabled": "true"})),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["name"], json!(["Not a valid string."]));
    assert_eq!(a.body["plan_id"], json!(["A valid integer is required."]));
    assert_eq!(a.body["os_id"], json!(["A valid integer is required."]));
    assert_eq!(a.body["location"], json!(["Not a valid string."]));
    assert_eq!(a.body["ssh_key_id"], json!(["A valid integer is required."]));
    assert_eq!(a.body["backups_enabled"], json!(["Must be a valid boolean."]));
    assert!(a.body["hostname"].is_array());
    assert_eq!(keys(&a.body).len(), 7, "{a:?}");
    // Values that do not exist, names and hosts that break the rules.
    let a = g
        .call(
            "POST",
            "/api/v1/servers/",
            tok,
            Some(json!({"name": "-bad-", "plan_id": 99, "os_id": 98, "location": "mars", "ssh_key_id": 97,
                        "hostname": format!("{}.example.com", "a".repeat(64)), "backups_enabled": 1})),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        keys(&a.body),
        ["backups_enabled", "hostname", "location", "name", "os_id", "plan_id", "ssh_key_id"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(a.body["plan_id"], json!(["Invalid pk \"99\" - object does not exist."]));
    let a = g
        .call(
            "POST",
            "/api/v1/servers/",
            tok,
            Some(json!({"name": "x".repeat(64), "plan_id": 1, "os_id": 5, "location": "us-west"})),
        )
        .await;
    assert_eq!(a.body, json!({"name": ["Ensure this field has no more than 63 characters."]}));
    let a = g
        .call("POST", "/api/v1/servers/", tok, Some(json!({"name": null, "plan_id": 1, "os_id": 5, "location": ""})))
        .await;
    assert_eq!(a.body, json!({"name": ["This field may not be null."], "location": ["This field may not be blank."]}));
    // Nothing was created by any of that.
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 0);

    // Read-only and unknown fields are ignored.
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

    // PUT needs all three; each missing one is listed.
    let p = g.call("PUT", &path, tok, Some(json!({"name": "only-name"}))).await;
    assert_eq!(p.status, 400);
    assert_eq!(p.body, json!({"hostname": required, "backups_enabled": required}));
    let p = g.call("PUT", &path, tok, None).await;
    assert_eq!(p.body, json!({"name": required, "hostname": required, "backups_enabled": required}));
    // Plan, OS and location cannot be changed.
    let p = g.call("PATCH", &path, tok, Some(json!({"plan_id": 2, "os_id": 3, "location": "us-east"}))).await;
    assert_eq!(p.status, 400);
    assert_eq!(keys(&p.body), ["location", "os_id", "plan_id"].iter().map(|s| s.to_string()).collect());
    let p = g
        .call(
            "PUT",
            &path,
            tok,
            Some(json!({"name": "n", "hostname": "n.example.com", "backups_enabled": false, "plan_id": 2})),
        )
        .await;
    assert_eq!((p.status, keys(&p.body)), (400, ["plan_id".to_string()].into()));
    let p = g.call("PATCH", &path, tok, Some(json!({"backups_enabled": "true", "hostname": 5}))).await;
    assert_eq!(p.body, json!({"hostname": ["Not a valid string."], "backups_enabled": ["Must be a valid boolean."]}));
    let p = g.raw("PATCH", &path, tok, b"{oops".to_vec(), &[]).await;
    assert!(p.body["detail"].as_str().unwrap().starts_with("JSON parse error - "));
    // None of that changed the server.
    let d = g.call("GET", &path, tok, None).await;
    assert_eq!(
        (&d.body["name"], &d.body["location"], &d.body["plan"]["id"]),
        (&json!("readonly"), &json!("us-west"), &json!(1))
    );

    // Over 64 KiB: 413.
    let mut big = sample_create("big");
    big["padding"] = json!("x".repeat(70 * 1024));
    let a = g.call("POST", "/api/v1/servers/", tok, Some(big.clone())).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(g.call("PATCH", &path, tok, Some(big)).await.status, 413);
    // Just under: fine (it is ignored).
    let mut fits = sample_create("fits");
    fits["padding"] = json!("x".repeat(60 * 1024));
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(fits)).await.status, 201);

    // Wrong method: 405 with Allow; unknown path: 404 JSON.
    let a = g.call("DELETE", "/api/v1/servers/", tok, None).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("GET, POST, HEAD")));
    assert_eq!(a.body, json!({"detail": "Method \"DELETE\" not allowed."}));
    assert_eq!(g.call("GET", &format!("/api/v1/servers/{id}/start/"), tok, None).await.status, 405);
    assert_eq!(g.call("POST", &path, tok, None).await.status, 405);
    let a = g.call("GET", "/api/v1/nothing-here/", tok, None).await;
    assert_eq!((a.status, &a.body), (404, &json!({"detail": "Not found."})));
}

#[tokio::test]
async fn list_paginates_and_filters() {
    let (client, g, t) = setup("pagination", 1_000_000).await;
    let tok = Some(t.token.as_str());
    let mut ids = vec![];
    for (i, location) in ["us-west", "us-east", "us-west", "us-east", "us-west"].iter().enumerate() {
        let mut body = sample_create(&format!("s{i}"));
        body["location"] = json!(location);
        ids.push(create(&g, &t, body).await);
    }
    set_status(&client, &t.namespace, ids[0], json!({"phase": "Active", "ipAddress": "203.0.113.10"})).await;
    set_status(&client, &t.namespace, ids[1], json!({"phase": "Active"})).await;
    set_status(&client, &t.namespace, ids[2], json!({"phase": "Active"})).await;
    Api::<VpsServer>::namespaced(client.clone(), &t.namespace)
        .patch(
            &format!("srv-{}", ids[2]),
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"powerState": "Stopped"}})),
        )
        .await
        .unwrap();
    set_status(&client, &t.namespace, ids[2], json!({"phase": "Stopped"})).await;
    wait_status(&g, &t, ids[2], "stopped").await;
    wait_status(&g, &t, ids[1], "active").await;
    wait_status(&g, &t, ids[0], "active").await;

    let base = format!("{}/api/v1/servers/", g.url);
    let p1 = g.call("GET", "/api/v1/servers/?page_size=2", tok, None).await;
    assert_eq!(p1.status, 200);
    assert_eq!(p1.body["count"], 5);
    assert_eq!(p1.body["previous"], Value::Null);
    assert_eq!(p1.body["next"], format!("{base}?page_size=2&page=2"));
    let got: Vec<i64> = p1.body["results"].as_array().unwrap().iter().map(|s| s["id"].as_i64().unwrap()).collect();
    assert_eq!(got, ids[..2]);
    assert_eq!(p1.body["results"][0]["ip_address"], "203.0.113.10");
    let p2 = g.call("GET", "/api/v1/servers/?page_size=2&page=2", tok, None).await;
    assert_eq!(p2.body["previous"], format!("{base}?page_size=2"));
    assert_eq!(p2.body["next"], format!("{base}?page_size=2&page=3"));
    let p3 = g.call("GET", p2.body["next"].as_str().unwrap().trim_start_matches(&g.url), tok, None).await;
    assert_eq!(p3.body["next"], Value::Null);
    assert_eq!(p3.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(p3.body["results"][0]["id"], ids[4]);
    // Default page size covers all; a too-large page size is capped, not refused.
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["results"].as_array().unwrap().len(), 5);
    assert_eq!(g.call("GET", "/api/v1/servers/?page_size=5000", tok, None).await.body["count"], 5);

    let count = |q: &'static str| {
        let g = &g;
        async move {
            let a = g.call("GET", &format!("/api/v1/servers/?{q}"), tok, None).await;
            assert_eq!(a.status, 200, "{q}: {a:?}");
            let n = a.body["count"].as_i64().unwrap();
            assert_eq!(n as usize, a.body["results"].as_array().unwrap().len());
            n
        }
    };
    assert_eq!(count("status=active").await, 2);
    assert_eq!(count("status=stopped").await, 1);
    assert_eq!(count("status=provisioning").await, 2);
    assert_eq!(count("status=suspended").await, 0);
    assert_eq!(count("location=us-east").await, 2);
    assert_eq!(count("location=us-west").await, 3);
    assert_eq!(count("status=active&location=us-east").await, 1);
    let a = g.call("GET", "/api/v1/servers/?status=active&page_size=1", tok, None).await;
    assert_eq!(a.body["next"], format!("{base}?status=active&page_size=1&page=2"));

    for (q, field) in [
        ("status=running", "status"),
        ("status=Active", "status"),
        ("location=mars", "location"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=9", "page"),
        ("page_size=-1", "page_size"),
    ] {
        let a = g.call("GET", &format!("/api/v1/servers/?{q}"), tok, None).await;
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert!(a.body[field].is_array(), "{q}: {a:?}");
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
    // Provisioning: nothing is possible yet.
    for action in ["start", "stop", "reboot"] {
        expect_400(act(action).await);
    }
    set_status(&client, &t.namespace, id, json!({"phase": "Active"})).await;
    wait_status(&g, &t, id, "active").await;
    let a = act("start").await;
    expect_400(a);

    // Stop: the answer and an immediate GET show "stopping"; the spec asks for Stopped.
    let before = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.body["updated_at"].clone();
    let a = act("stop").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        json!({"status": "success", "message": "Server is stopping", "server": {"id": id, "name": "power", "status": "stopping"}})
    );
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

    // Suspended by an administrator: nothing is possible.
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"suspended": true}}))).await.unwrap();
    wait_status(&g, &t, id, "suspended").await;
    for action in ["start", "stop", "reboot"] {
        expect_400(act(action).await);
    }
    // Error phase: neither.
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"suspended": false}}))).await.unwrap();
    set_status(&client, &t.namespace, id, json!({"phase": "Error"})).await;
    wait_status(&g, &t, id, "error").await;
    expect_400(act("start").await);
    expect_400(act("stop").await);
}

#[tokio::test]
async fn credit_limits_creates() {
    // Standard costs 1000, Performance 4000 cents a month.
    let (client, g, t) = setup("credit", 2500).await;
    let tok = Some(t.token.as_str());
    let first = create(&g, &t, sample_create("one")).await;
    create(&g, &t, sample_create("two")).await;
    let a = g.call("POST", "/api/v1/servers/", tok, Some(sample_create("three"))).await;
    assert_eq!(a.status, 402, "{a:?}");
    assert_eq!(keys(&a.body), ["detail".to_string()].into());
    let mut perf = sample_create("perf");
    perf["plan_id"] = json!(2);
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(perf)).await.status, 402);
    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 2, "nothing was created");
    // Deleting one frees its share.
    assert_eq!(g.call("DELETE", &format!("/api/v1/servers/{first}/"), tok, None).await.status, 204);
    create(&g, &t, sample_create("three")).await;
}

#[tokio::test]
async fn concurrent_creates_never_overspend() {
    // Room for exactly five Standard servers (1000 cents each); eight creates race.
    let (client, g, t) = setup("credit-race", 5500).await;
    let tok = Some(t.token.as_str());
    let calls = (0..8).map(|i| g.call("POST", "/api/v1/servers/", tok, Some(sample_create(&format!("race-{i}")))));
    let mut statuses: Vec<u16> = futures::future::join_all(calls).await.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 402, 402, 402]);
    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 5);
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let (client, g, t) = setup("idempotency", 1_000_000).await;
    let tok = Some(t.token.as_str());
    let body = serde_json::to_vec(&sample_create("idem")).unwrap();
    let key = format!("key-{}", t.namespace);
    let first = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // Another gateway (a restart, a replica) replays it too.
    let other = gw::start(&client).await;
    let replay = other.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!((replay.status, &replay.body["id"]), (201, &first.body["id"]));
    drop(other);

    // The same key with another body is refused; another key creates another server.
    let changed = serde_json::to_vec(&sample_create("changed")).unwrap();
    assert_eq!(g.raw("POST", "/api/v1/servers/", tok, changed, &[("Idempotency-Key", &key)]).await.status, 400);
    let second = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", "another")]).await;
    assert_eq!(second.status, 201);
    assert_ne!(second.body["id"], first.body["id"]);

    // Concurrent requests with one key: one server, one answer.
    let concurrent = format!("concurrent-{}", t.namespace);
    let header = [("Idempotency-Key", concurrent.as_str())];
    let results =
        futures::future::join_all((0..5).map(|_| g.raw("POST", "/api/v1/servers/", tok, body.clone(), &header))).await;
    let ids: BTreeSet<String> = results
        .iter()
        .map(|a| {
            assert_eq!(a.status, 201, "{a:?}");
            a.body["id"].to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");

    // A failed request does not use up its key.
    let bad = serde_json::to_vec(&json!({"name": "x"})).unwrap();
    assert_eq!(g.raw("POST", "/api/v1/servers/", tok, bad, &[("Idempotency-Key", "retry-me")]).await.status, 400);
    assert_eq!(
        g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", "retry-me")]).await.status,
        201
    );

    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 4, "first, another, concurrent, retry-me");
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 4);

    // Keys are per account: another tenant's same key is its own.
    let other_tenant = gw::tenant(&client, "idempotency-other", 1_000_000).await;
    g.wait_token(&other_tenant.token).await;
    let theirs = g.raw("POST", "/api/v1/servers/", Some(&other_tenant.token), body, &[("Idempotency-Key", &key)]).await;
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.body["id"], first.body["id"]);
}

#[tokio::test]
async fn kubectl_and_the_api_see_the_same_servers() {
    let (client, g, t) = setup("kubectl", 100_000).await;
    let tok = Some(t.token.as_str());

    // Created with kubectl; the id label stands in for the operator's.
    let id = vps_operator::ids::IdAllocator::new(client.clone(), gw::SYSTEM_NAMESPACE)
        .allocate(vps_operator::ids::IdKind::Server)
        .await
        .unwrap();
    let manifest = format!(
        "apiVersion: vps.org/v1alpha1\nkind: VpsServer\nmetadata:\n  name: db-1\n  namespace: {ns}\n  labels:\n    vps.org/server-id: \"{id}\"\nspec:\n  name: db-server-01\n  plan: performance\n  os: debian-12\n  location: us-east\n  hostname: db01.example.com\n",
        ns = t.namespace
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    let (ok, out, err) = support::kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    // And one without an id yet: not listed until the operator gives it one.
    let unlabeled = format!(
        "apiVersion: vps.org/v1alpha1\nkind: VpsServer\nmetadata:\n  name: no-id\n  namespace: {}\nspec:\n  name: pending\n  plan: standard\n  os: debian-12\n  location: us-east\n",
        t.namespace
    );
    std::fs::write(file.path(), unlabeled).unwrap();
    let (ok, out, err) = support::kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{out} {err}");

    eventually("the kubectl server is served", || async {
        g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.status == 200
    })
    .await;
    let d = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!(d.body["name"], "db-server-01");
    assert_eq!(d.body["plan"]["name"], "Performance VPS");
    assert_eq!(d.body["plan"]["bandwidth"], 4096);
    assert_eq!(d.body["os"], json!({"id": 3, "name": "Debian 12"}));
    assert_eq!(d.body["status"], "provisioning");
    let list = g.call("GET", "/api/v1/servers/", tok, None).await;
    assert_eq!(list.body["count"], 1, "{list:?}");

    // status.id serves when the label is missing.
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    api.patch_status("no-id", &PatchParams::default(), &Patch::Merge(&json!({"status": {"id": id + 100000}})))
        .await
        .unwrap();
    eventually("a server with only status.id is served", || async {
        g.call("GET", &format!("/api/v1/servers/{}/", id + 100000), tok, None).await.status == 200
    })
    .await;

    // Created through the API: kubectl shows it.
    let api_id = create(&g, &t, sample_create("from-the-api")).await;
    let (ok, out, err) = support::kubectl(&["get", "vps", "-n", &t.namespace]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with(&format!("srv-{api_id} "))).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("from-the-api") && line.contains("standard") && line.contains("us-west"), "{line}");
    let (ok, out, _) = support::kubectl(&[
        "get",
        "vps",
        "-n",
        &t.namespace,
        "-l",
        &format!("vps.org/server-id={api_id}"),
        "-o",
        "jsonpath={.items[*].spec.name}",
    ]);
    assert!(ok);
    assert_eq!(out, "from-the-api");
}

#[tokio::test]
async fn catalog_and_ssh_keys() {
    let (client, g, t) = setup("catalog", 100_000).await;
    let tok = Some(t.token.as_str());
    let plans = g.call("GET", "/api/v1/plans/", tok, None).await;
    assert_eq!(plans.status, 200);
    assert_eq!(plans.body["count"], 2);
    assert_eq!(
        plans.body["results"][0],
        json!({"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096, "storage": 80, "bandwidth": 2048, "monthly_price_cents": 1000})
    );
    assert_eq!(plans.body["results"][1]["name"], "Performance VPS");
    let os = g.call("GET", "/api/v1/os/", tok, None).await;
    assert_eq!(os.body["results"], json!([{"id": 3, "name": "Debian 12"}, {"id": 5, "name": "Ubuntu 22.04 LTS"}]));
    let locations = g.call("GET", "/api/v1/locations/", tok, None).await;
    assert_eq!(
        locations.body["results"],
        json!([{"code": "us-east", "name": "US East (Virginia)"}, {"code": "us-west", "name": "US West (Oregon)"}])
    );
    let paged = g.call("GET", "/api/v1/plans/?page_size=1", tok, None).await;
    assert_eq!(paged.body["next"], format!("{}/api/v1/plans/?page_size=1&page=2", g.url));
    assert_eq!(g.call("POST", "/api/v1/plans/", tok, None).await.status, 405);

    // SSH keys.
    let a = g.call("POST", "/api/v1/ssh-keys/", tok, Some(json!({"public_key": "not a key"}))).await;
    assert_eq!(a.status, 400);
    assert_eq!(keys(&a.body), ["name", "public_key"].iter().map(|s| s.to_string()).collect());
    let public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";
    let a = g.call("POST", "/api/v1/ssh-keys/", tok, Some(json!({"name": "laptop", "public_key": public_key}))).await;
    assert_eq!(a.status, 201, "{a:?}");
    let key_id = a.body["id"].as_i64().unwrap();
    assert_eq!((&a.body["name"], &a.body["public_key"]), (&json!("laptop"), &json!(public_key)));
    assert_eq!(a.header("location"), Some(format!("{}/api/v1/ssh-keys/{key_id}/", g.url).as_str()));
    let list = g.call("GET", "/api/v1/ssh-keys/", tok, None).await;
    assert_eq!((list.body["count"].as_i64(), &list.body["results"][0]["id"]), (Some(1), &json!(key_id)));
    assert_eq!(g.call("GET", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.body["name"], "laptop");

    let mut body = sample_create("with-key");
    body["ssh_key_id"] = json!(key_id);
    let id = create(&g, &t, body).await;
    let obj = Api::<VpsServer>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(obj.spec.ssh_key, Some(format!("key-{key_id}")));

    assert_eq!(g.call("DELETE", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.status, 204);
    assert_eq!(g.call("GET", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.status, 404);
    assert_eq!(g.call("GET", "/api/v1/ssh-keys/", tok, None).await.body["count"], 0);
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
async fn health_metrics_and_openapi() {
    let (_client, g, t) = setup("observability", 100_000).await;
    assert_eq!(g.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(g.call("GET", "/readyz", None, None).await.status, 200);
    assert_eq!(g.call("GET", "/api/v1/servers/123456789/", Some(&t.token), None).await.status, 404);
    assert_eq!(g.call("GET", "/api/v1/servers/123456788", Some(&t.token), None).await.status, 404);
    let m = g.raw("GET", "/metrics", None, vec![], &[]).await;
    assert_eq!(m.status, 200);
    let text = m.body.as_str().unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("vps_gateway_http_requests_total{")
                && l.contains("route=\"/api/v1/servers/{server_id}/\"")
                && l.contains("status=\"404\"")
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(" 2"), "both spellings count under one route: {line}");
    assert!(text.contains("vps_gateway_http_request_duration_seconds_bucket{"), "{text}");
    assert!(!text.contains("123456789"), "no ids in labels");

    // A browser's CORS preflight carries no token and is answered.
    let pre = g
        .raw(
            "OPTIONS",
            "/api/v1/servers/",
            None,
            vec![],
            &[
                ("Origin", "https://panel.example.com"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization,content-type"),
            ],
        )
        .await;
    assert_eq!((pre.status, pre.header("access-control-allow-origin")), (200, Some("*")), "{pre:?}");

    let doc = g.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc.body["paths"];
    for p in [
        "/api/v1/servers/",
        "/api/v1/servers/{server_id}/",
        "/api/v1/servers/{server_id}/start/",
        "/api/v1/servers/{server_id}/stop/",
        "/api/v1/servers/{server_id}/reboot/",
        "/api/v1/plans/",
        "/api/v1/os/",
        "/api/v1/locations/",
        "/api/v1/ssh-keys/",
    ] {
        assert!(paths[p].is_object(), "{p} missing");
    }
    let detail = &paths["/api/v1/servers/{server_id}/"];
    assert!(["get", "put", "patch", "delete"].iter().all(|m| detail[m].is_object()));
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc.body["components"]["schemas"]["ServerDetail"].is_object());
}

#[tokio::test]
async fn token_subcommands_create_and_revoke() {
    let (client, g, t) = setup("token-cli", 100_000).await;
    let kubeconfig = support::shared().kubeconfig.clone();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vps-operator"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("VPS_API_TOKEN")
            .output()
            .expect("run vps-operator");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, token, err) = cli(&["token", "create", "--account", &t.account]);
    assert!(ok, "{err}");
    assert!(token.starts_with("vps_"), "{token}");
    g.wait_token(&token).await;
    // Only the hash is stored.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), gw::SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels(&format!("vps.org/account={}", t.account)))
        .await
        .unwrap();
    assert_eq!(secrets.items.len(), 2);
    for secret in &secrets.items {
        let dump = serde_json::to_string(secret).unwrap();
        assert!(!dump.contains(&token) && !dump.contains(&t.token));
        let hashes: Vec<String> =
            secret.data.as_ref().unwrap().values().map(|v| String::from_utf8_lossy(&v.0).into_owned()).collect();
        assert!(hashes.iter().any(|h| h.len() == 64), "{hashes:?}");
    }
    assert!(!cli(&["token", "create", "--account", "no-such-account"]).0);

    let (ok, _, err) = cli(&["token", "revoke", "--token", &token]);
    assert!(ok, "{err}");
    eventually("the revoked token is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&token), None).await.status == 401
    })
    .await;
    // The account's other token still works, until the account's tokens are all revoked.
    assert_eq!(g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status, 200);
    let (ok, _, err) = cli(&["token", "revoke", "--account", &t.account]);
    assert!(ok, "{err}");
    eventually("every token of the account is refused", || async {
        g.call("GET", "/api/v1/servers/", Some(&t.token), None).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn the_gateway_subcommand_serves_until_sigterm() {
    let client = support::client().await;
    let t = gw::tenant(&client, "gateway-cli", 100_000).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vps-operator"))
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--system-namespace", gw::SYSTEM_NAMESPACE])
        .env("KUBECONFIG", &support::shared().kubeconfig)
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the gateway is ready", || async {
        matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let r = http.get(format!("{base}/api/v1/os")).bearer_auth(&t.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["name"], "Debian 12");
    let pid = child.id().expect("running") as i32;
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}
