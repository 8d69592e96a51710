//! The server endpoints' unit tests, through the whole router (`testing::app`) over cached
//! fixture servers: authentication, tenancy, validation, pagination, trailing slashes.

use super::*;
use crate::api::PowerState;
use crate::gateway::testing::{self, OTHER_TOKEN, TOKEN, call, keys, raw, server};
use serde_json::Value;

fn sample_create(name: &str) -> Value {
    json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west",
           "hostname": "web02.example.com", "backups_enabled": true})
}

/// Server 7 of `acme`, active; server 8 of `other`.
async fn app() -> Router {
    testing::app(vec![server("acme", 7, "web", Some("Active")), server("other", 8, "theirs", Some("Active"))], vec![])
        .await
}

#[tokio::test]
async fn authentication_comes_first() {
    let app = app().await;
    let paths = [
        ("GET", "/api/v1/servers/"),
        ("POST", "/api/v1/servers/"),
        ("GET", "/api/v1/servers/7/"),
        ("GET", "/api/v1/servers/999999999/"),
        ("PUT", "/api/v1/servers/999999999/"),
        ("DELETE", "/api/v1/servers/abc/"),
        ("POST", "/api/v1/servers/999999999/start/"),
        ("GET", "/api/v1/servers/999999999/start/"),
        ("GET", "/api/v1/plans/"),
        ("GET", "/api/v1/ssh-keys/"),
    ];
    for (method, path) in paths {
        for token in [None, Some("not-a-token")] {
            let a = call(&app, method, path, token, Some(json!({"name": 1}))).await;
            assert_eq!(a.status, 401, "{method} {path} with {token:?}: {a:?}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(a.body["detail"].is_string(), "{a:?}");
        }
    }
    let with = |value: String| {
        let app = app.clone();
        async move { raw(&app, "GET", "/api/v1/servers/", None, vec![], &[("authorization", &value)]).await.status }
    };
    assert_eq!(with(format!("Token {TOKEN}")).await, 401, "another scheme is not a Bearer token");
    assert_eq!(with(format!("Bearer {TOKEN} extra")).await, 401);
    assert_eq!(with(format!("bearer {TOKEN}")).await, 200, "schemes are case-insensitive");
}

#[tokio::test]
async fn another_tenants_servers_are_not_found() {
    let app = app().await;
    let put = json!({"name": "x", "hostname": "x.example.com", "backups_enabled": false});
    for (method, path, body) in [
        ("GET", "/api/v1/servers/8/", None),
        ("PUT", "/api/v1/servers/8/", Some(put)),
        ("PATCH", "/api/v1/servers/8/", Some(json!({"name": "x"}))),
        ("POST", "/api/v1/servers/8/start/", None),
        ("POST", "/api/v1/servers/8/stop/", None),
        ("POST", "/api/v1/servers/8/reboot/", None),
        ("DELETE", "/api/v1/servers/8/", None),
    ] {
        let r = call(&app, method, path, Some(TOKEN), body).await;
        assert_eq!((r.status, &r.body), (404, &json!({"detail": "Not found."})), "{method} {path}");
    }
    let list = call(&app, "GET", "/api/v1/servers/", Some(TOKEN), None).await;
    assert_eq!(list.body["count"], 1);
    assert_eq!(call(&app, "GET", "/api/v1/servers/8/", Some(OTHER_TOKEN), None).await.status, 200);
}

#[tokio::test]
async fn detail_and_list_have_the_fields_of_the_contract() {
    let mut s = server("acme", 7, "web", Some("Active"));
    s.status.as_mut().unwrap().ip_address = Some("203.0.113.10".into());
    s.spec.backups_enabled = true;
    s.status.as_mut().unwrap().last_backup_time = Some("2025-01-11T02:00:00.25Z".into());
    let app = testing::app(vec![s], vec![]).await;
    let d = call(&app, "GET", "/api/v1/servers/7/", Some(TOKEN), None).await;
    assert_eq!(d.status, 200);
    assert_eq!(
        d.body,
        json!({"id": 7, "name": "web", "hostname": "web01.example.com", "status": "active",
            "ip_address": "203.0.113.10", "ipv6_address": null, "location": "us-west",
            "plan": {"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096, "storage": 80, "bandwidth": 2048},
            "os": {"id": 5, "name": "Ubuntu 22.04 LTS"}, "backups_enabled": true,
            "last_backup_at": "2025-01-11T02:00:00Z",
            "protection": {"delete": false}, "resource_usage": null,
            "created_at": "2025-01-10T14:30:00Z", "updated_at": "2025-01-10T14:30:00Z"})
    );
    let l = call(&app, "GET", "/api/v1/servers/", Some(TOKEN), None).await;
    assert_eq!((&l.body["count"], &l.body["next"], &l.body["previous"]), (&json!(1), &Value::Null, &Value::Null));
    let item = &l.body["results"][0];
    assert_eq!(
        keys(item),
        ["created_at", "hostname", "id", "ip_address", "location", "name", "os", "plan", "status", "updated_at"]
    );
    assert_eq!(keys(&item["plan"]), ["id", "memory", "name", "storage", "vcpus"]);
}

#[tokio::test]
async fn bodies_are_validated_strictly_and_all_at_once() {
    let app = app().await;
    let post = |body: Value| {
        let app = app.clone();
        async move { call(&app, "POST", "/api/v1/servers/", Some(TOKEN), Some(body)).await }
    };
    // Not JSON, not an object.
    for body in [&b"{\"name\": "[..], b"not json", b"[1, 2]", b"\"a string\""] {
        let a = raw(&app, "POST", "/api/v1/servers/", Some(TOKEN), body.to_vec(), &[]).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert!(a.body["detail"].as_str().unwrap().starts_with("JSON parse error - "), "{a:?}");
    }
    // Nothing at all: every required field listed.
    let required = json!(["This field is required."]);
    let a = post(json!({})).await;
    assert_eq!(
        (a.status, &a.body),
        (400, &json!({"name": required, "plan_id": required, "os_id": required, "location": required}))
    );
    // Wrong types, each named.
    let a = post(json!({"name": 5, "plan_id": "1", "os_id": 1.5, "location": 7, "hostname": "not a host",
                        "ssh_key_id": "2", "backups_enabled": "true"}))
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
    let a = post(json!({"name": "-bad-", "plan_id": 99, "os_id": 98, "location": "mars", "ssh_key_id": 97,
                        "hostname": format!("{}.example.com", "a".repeat(64)), "backups_enabled": 1}))
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(keys(&a.body), ["backups_enabled", "hostname", "location", "name", "os_id", "plan_id", "ssh_key_id"]);
    assert_eq!(a.body["plan_id"], json!(["Invalid pk \"99\" - object does not exist."]));
    let a = post(json!({"name": "x".repeat(64), "plan_id": 1, "os_id": 5, "location": "us-west"})).await;
    assert_eq!(a.body, json!({"name": ["Ensure this field has no more than 63 characters."]}));
    let a = post(json!({"name": null, "plan_id": 1, "os_id": 5, "location": ""})).await;
    assert_eq!(a.body, json!({"name": ["This field may not be null."], "location": ["This field may not be blank."]}));

    // PUT needs all three; each missing one is listed.
    let path = "/api/v1/servers/7/";
    let p = call(&app, "PUT", path, Some(TOKEN), Some(json!({"name": "only-name"}))).await;
    assert_eq!((p.status, &p.body), (400, &json!({"hostname": required, "backups_enabled": required})));
    let p = call(&app, "PUT", path, Some(TOKEN), None).await;
    assert_eq!(p.body, json!({"name": required, "hostname": required, "backups_enabled": required}));
    // Plan, OS and location cannot be changed.
    let p =
        call(&app, "PATCH", path, Some(TOKEN), Some(json!({"plan_id": 2, "os_id": 3, "location": "us-east"}))).await;
    assert_eq!((p.status, keys(&p.body)), (400, vec!["location".into(), "os_id".into(), "plan_id".into()]));
    let put = json!({"name": "n", "hostname": "n.example.com", "backups_enabled": false, "plan_id": 2});
    let p = call(&app, "PUT", path, Some(TOKEN), Some(put)).await;
    assert_eq!((p.status, keys(&p.body)), (400, vec!["plan_id".to_string()]));
    let p = call(&app, "PATCH", path, Some(TOKEN), Some(json!({"backups_enabled": "true", "hostname": 5}))).await;
    assert_eq!(p.body, json!({"hostname": ["Not a valid string."], "backups_enabled": ["Must be a valid boolean."]}));
    let p = raw(&app, "PATCH", path, Some(TOKEN), b"{oops".to_vec(), &[]).await;
    assert!(p.body["detail"].as_str().unwrap().starts_with("JSON parse error - "));

    // Over 64 KiB: 413.
    let mut big = sample_create("big");
    big["padding"] = json!("x".repeat(70 * 1024));
    assert_eq!(post(big.clone()).await.status, 413);
    assert_eq!(call(&app, "PATCH", path, Some(TOKEN), Some(big)).await.status, 413);

    // Wrong method: 405 with Allow; unknown path: 404 JSON.
    let a = call(&app, "DELETE", "/api/v1/servers/", Some(TOKEN), None).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("GET, POST, HEAD")));
    assert_eq!(a.body, json!({"detail": "Method \"DELETE\" not allowed."}));
    assert_eq!(call(&app, "GET", "/api/v1/servers/7/start/", Some(TOKEN), None).await.status, 405);
    assert_eq!(call(&app, "POST", path, Some(TOKEN), None).await.status, 405);
    let a = call(&app, "GET", "/api/v1/nothing-here/", Some(TOKEN), None).await;
    assert_eq!((a.status, &a.body), (404, &json!({"detail": "Not found."})));
    for id in ["abc", "-7", "+7", "7.0", "99999999999999999999"] {
        assert_eq!(call(&app, "GET", &format!("/api/v1/servers/{id}/"), Some(TOKEN), None).await.status, 404);
    }
}

#[tokio::test]
async fn list_paginates_and_filters() {
    let phases = [Some("Active"), Some("Active"), Some("Stopped"), None, None];
    let locations = ["us-west", "us-east", "us-west", "us-east", "us-west"];
    let servers: Vec<VpsServer> = (0..5)
        .map(|i| {
            let mut s = server("acme", 10 + i as i64, &format!("s{i}"), phases[i]);
            s.spec.location = locations[i].into();
            if i == 2 {
                s.spec.power_state = PowerState::Stopped;
            }
            s
        })
        .collect();
    let app = testing::app(servers, vec![]).await;
    let get = |q: &'static str| {
        let app = app.clone();
        async move { call(&app, "GET", &format!("/api/v1/servers/{q}"), Some(TOKEN), None).await }
    };
    let ids = |a: &testing::Answer| -> Vec<i64> {
        a.body["results"].as_array().unwrap().iter().map(|s| s["id"].as_i64().unwrap()).collect()
    };
    let base = "http://gw.example.com/api/v1/servers/";
    let p1 = get("?page_size=2").await;
    assert_eq!((p1.status, &p1.body["count"], &p1.body["previous"]), (200, &json!(5), &Value::Null));
    assert_eq!(p1.body["next"], format!("{base}?page_size=2&page=2"));
    assert_eq!(ids(&p1), [10, 11]);
    let p2 = get("?page_size=2&page=2").await;
    assert_eq!(p2.body["previous"], format!("{base}?page_size=2"));
    assert_eq!(p2.body["next"], format!("{base}?page_size=2&page=3"));
    let p3 = get("?page_size=2&page=3").await;
    assert_eq!((&p3.body["next"], ids(&p3)), (&Value::Null, vec![14]));
    // Default page size covers all; a too-large page size is capped, not refused.
    assert_eq!(ids(&get("").await).len(), 5);
    assert_eq!(get("?page_size=5000").await.body["count"], 5);
    for q in ["?page=72057594037927937&page_size=506326425421", "?page=", "?page_size=", "?page=0"] {
        let a = get(q).await;
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert!(a.body["page"].is_array() || a.body["page_size"].is_array(), "{q}: {a:?}");
    }
    for q in ["?location=us-east&page=72057594037927937&page_size=506326425421", "?status=active&page=9"] {
        assert_eq!(get(q).await.status, 400, "{q}: past the last page");
    }
    for (q, count) in [
        ("?status=active", 2),
        ("?status=stopped", 1),
        ("?status=provisioning", 2),
        ("?status=suspended", 0),
        ("?location=us-east", 2),
        ("?location=us-west", 3),
        ("?status=active&location=us-east", 1),
    ] {
        let a = get(q).await;
        assert_eq!((a.status, &a.body["count"]), (200, &json!(count)), "{q}: {a:?}");
        assert_eq!(ids(&a).len(), count, "{q}");
    }
    let a = get("?status=active&page_size=1").await;
    assert_eq!(a.body["next"], format!("{base}?status=active&page_size=1&page=2"));
    for (q, field) in [
        ("?status=running", "status"),
        ("?status=Active", "status"),
        ("?location=mars", "location"),
        ("?page=0", "page"),
        ("?page=abc", "page"),
        ("?page=9", "page"),
        ("?page_size=-1", "page_size"),
    ] {
        let a = get(q).await;
        assert_eq!(a.status, 400, "{q}: {a:?}");
        assert!(a.body[field].is_array(), "{q}: {a:?}");
    }
}

#[tokio::test]
async fn every_path_answers_the_same_without_the_trailing_slash() {
    let app = app().await;
    for (method, path, body) in [
        ("GET", "/api/v1/servers/", None),
        ("GET", "/api/v1/servers/7/", None),
        ("GET", "/api/v1/servers/8/", None),
        ("POST", "/api/v1/servers/", Some(json!({}))),
        ("PUT", "/api/v1/servers/7/", Some(json!({"name": "x"}))),
        ("PATCH", "/api/v1/servers/7/", Some(json!({"plan_id": 2}))),
        ("POST", "/api/v1/servers/7/start/", None),
        ("GET", "/api/v1/servers/7/stop/", None),
        ("DELETE", "/api/v1/servers/", None),
        ("GET", "/api/v1/plans/", None),
        ("GET", "/api/v1/os/", None),
        ("GET", "/api/v1/locations/", None),
        ("GET", "/api/v1/ssh-keys/", None),
        ("POST", "/api/v1/ssh-keys/", Some(json!({}))),
        ("GET", "/api/v1/ssh-keys/1/", None),
    ] {
        let with = call(&app, method, path, Some(TOKEN), body.clone()).await;
        let without = call(&app, method, path.trim_end_matches('/'), Some(TOKEN), body).await;
        assert!(!(300..400).contains(&with.status), "{method} {path} redirected");
        assert_eq!((with.status, &with.body), (without.status, &without.body), "{method} {path}");
    }
}

#[tokio::test]
async fn a_protected_server_is_not_deleted() {
    let mut protected = server("acme", 7, "web", Some("Active"));
    protected.spec.delete_protection = true;
    let app = testing::app(vec![protected], vec![]).await;
    let a = call(&app, "DELETE", "/api/v1/servers/7/", Some(TOKEN), None).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body["detail"].as_str().unwrap().contains("protected"), "{a:?}");
    let d = call(&app, "GET", "/api/v1/servers/7/", Some(TOKEN), None).await;
    assert_eq!(d.body["protection"], json!({"delete": true}));
    for body in [json!({}), json!({"delete": "true"}), json!({"delete": null})] {
        let a = call(&app, "POST", "/api/v1/servers/7/protection/", Some(TOKEN), Some(body.clone())).await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
        assert!(a.body["delete"].is_array(), "{a:?}");
    }
    assert_eq!(call(&app, "GET", "/api/v1/servers/7/protection/", Some(TOKEN), None).await.status, 405);
}

#[tokio::test]
async fn no_string_field_takes_line_breaks_or_control_characters() {
    let app = app().await;
    for (field, value) in
        [("name", "web\rruncmd"), ("hostname", "web.example.com\u{2028}x"), ("location", "us-west\u{85}")]
    {
        let mut body = sample_create("web");
        body[field] = json!(value);
        let a = call(&app, "POST", "/api/v1/servers/", Some(TOKEN), Some(body)).await;
        assert_eq!(a.status, 400, "{field}: {a:?}");
        assert_eq!(keys(&a.body), [field], "{a:?}");
    }
}

#[tokio::test]
async fn writes_without_a_reachable_cluster_answer_503() {
    let app = app().await;
    let a = call(&app, "POST", "/api/v1/servers/7/stop/", Some(TOKEN), None).await;
    assert_eq!((a.status, a.header("retry-after")), (503, Some("5")), "{a:?}");
    assert!(a.body["detail"].is_string());
}
