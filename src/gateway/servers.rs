//! The server endpoints: list, create, get, update (PUT/PATCH), delete, delete protection
//! (create is in [`super::create`]; start, stop and reboot are in [`super::power`]). Reads
//! come from the cache; writes go to the API server and wait for the cache.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::actions;
use super::auth::Tenant;
use super::cache::{Caches, wait_for_delete, wait_for_write};
use super::create::create_server;
use super::error::{ApiError, FieldErrors, RawBody};
use super::index::Filter;
use super::pagination::{self, Query};
use super::validate::{Fields, IMMUTABLE, Presence};
use super::view::{self, Page, ServerDetail, ServerListItem, UPDATED_AT_ANNOTATION};
use super::{AppState, FIELD_MANAGER, base_url, route_both, with_405};
use crate::api::{ActionType, Expectation, Phase, VpsServer};

pub fn router() -> Router<AppState> {
    let r = Router::new();
    let r = route_both(r, "/api/v1/servers/", with_405(get(list_servers).post(create_server), "GET, POST, HEAD"));
    let r = route_both(
        r,
        "/api/v1/servers/{server_id}/",
        with_405(
            get(get_server).put(put_server).patch(patch_server).delete(delete_server),
            "GET, PUT, PATCH, DELETE, HEAD",
        ),
    );
    route_both(r, "/api/v1/servers/{server_id}/protection/", with_405(post(protect_server), "POST"))
}

pub(super) fn now_stamp() -> String {
    view::rfc3339(jiff::Timestamp::now())
}

/// The caller's server with this id, or 404 (also for another tenant's servers and for
/// ids that are not integers).
pub(super) fn find(state: &AppState, tenant: &Tenant, server_id: &str) -> Result<Arc<VpsServer>, ApiError> {
    state.caches.server(&tenant.namespace, parse_id(server_id)?).ok_or(ApiError::NotFound)
}

/// The id of a server path: digits only, as the documented integer path parameter (no sign,
/// no spaces); anything else names no server.
pub(super) fn parse_id(server_id: &str) -> Result<i64, ApiError> {
    if server_id.is_empty() || !server_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::NotFound);
    }
    server_id.parse::<i64>().map_err(|_| ApiError::NotFound)
}

pub(super) fn detail(state: &AppState, s: &VpsServer) -> Result<ServerDetail, ApiError> {
    view::server_detail(s, state.caches.as_ref())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("server {} has no id", s.name_any())))
}

/// The detail with the server's `resource_usage` (when Prometheus is configured).
async fn detail_with_usage(state: &AppState, s: &VpsServer) -> Result<ServerDetail, ApiError> {
    let mut detail = detail(state, s)?;
    detail.resource_usage = super::usage::of_server(state, s).await;
    Ok(detail)
}

#[utoipa::path(get, path = "/api/v1/servers/", tag = "servers",
    params(
        ("status" = Option<String>, Query, description = "provisioning, active, starting, stopping, stopped, rebooting, suspended or error"),
        ("location" = Option<String>, Query, description = "A location code"),
        ("page" = Option<usize>, Query, description = "1-based page number"),
        ("page_size" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "The account's servers", body = Page<ServerListItem>),
        (status = 400, description = "A bad filter value"),
        (status = 401, description = "Missing or unknown token"),
    ),
    security(("bearer" = [])))]
pub async fn list_servers(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref())?;
    let mut errors = FieldErrors::default();
    let status = query.get("status").and_then(|s| {
        let phase = Phase::from_api_str(s);
        if phase.is_none() {
            errors.add("status", format!("Select a valid choice. {s} is not one of the available choices."));
        }
        phase
    });
    let location = query.get("location");
    if let Some(l) = location
        && state.caches.location(l).is_none()
    {
        errors.add("location", format!("Select a valid choice. {l} is not one of the available choices."));
    }
    let page = pagination::params(&query, &mut errors);
    errors.into_result()?;

    // The index keeps each account's servers in id order with their status computed: only
    // the servers of the page are touched and turned into list items.
    let caches = &state.caches;
    let (count, items) =
        caches.servers.page(&tenant.namespace, Filter { status, location }, pagination::offset(page), page.1, |e| {
            caches.rendered(e).map(|r| r.item)
        });
    let url = format!("{}{}", base_url(&headers), uri.path());
    let page = pagination::page_of(count, items.into_iter().flatten().collect(), &query, page, &url)?;
    Ok(json_response(view::page_json(&page)))
}

/// A 200 with a JSON body rendered elsewhere.
fn json_response(body: impl Into<axum::body::Body>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.into()).into_response()
}

/// The SSH key `id` of the account whose namespace is `namespace`.
pub(super) fn account_key(caches: &Caches, namespace: &str, id: i64) -> Option<Arc<crate::api::VpsSshKey>> {
    caches.ssh_keys.find(|k| {
        k.namespace().as_deref() == Some(namespace)
            && k.metadata.deletion_timestamp.is_none()
            && view::ssh_key_id(k) == Some(id)
    })
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 200, description = "The server", body = ServerDetail),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn get_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&server_id)?;
    let caches = &state.caches;
    let rendered = caches.servers.get_with(&tenant.namespace, id, |e| caches.rendered(e)).flatten();
    let detail = rendered.ok_or(ApiError::NotFound)?.detail;
    if state.usage.is_none() {
        return Ok(json_response(detail));
    }
    let Some(server) = caches.server(&tenant.namespace, id) else { return Ok(json_response(detail)) };
    match super::usage::of_server(&state, &server).await {
        Some(u) => Ok(json_response(super::usage::spliced(&detail, &u))),
        None => Ok(json_response(detail)),
    }
}

/// The PUT body: every field required.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UpdateServer {
    name: String,
    hostname: String,
    backups_enabled: bool,
}

/// The PATCH body: any of the fields.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PatchServer {
    name: Option<String>,
    hostname: Option<String>,
    backups_enabled: Option<bool>,
}

#[utoipa::path(put, path = "/api/v1/servers/{server_id}/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = UpdateServer,
    responses(
        (status = 200, description = "Updated", body = ServerDetail),
        (status = 400, description = "Invalid or missing fields, listed all at once; plan_id, os_id, location cannot be changed"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn put_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ServerDetail>, ApiError> {
    update(&state, &tenant, &server_id, &body, Presence::Required).await
}

#[utoipa::path(patch, path = "/api/v1/servers/{server_id}/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = PatchServer,
    responses(
        (status = 200, description = "Updated", body = ServerDetail),
        (status = 400, description = "Invalid fields; plan_id, os_id, location cannot be changed"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn patch_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ServerDetail>, ApiError> {
    update(&state, &tenant, &server_id, &body, Presence::Optional).await
}

async fn update(
    state: &AppState,
    tenant: &Tenant,
    server_id: &str,
    body: &RawBody,
    presence: Presence,
) -> Result<Json<ServerDetail>, ApiError> {
    let server = find(state, tenant, server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let name = f.server_name("name", presence);
    let hostname = f.hostname("hostname", presence);
    let backups_enabled = f.boolean("backups_enabled", presence);
    for field in ["plan_id", "os_id", "location"] {
        f.forbid(field, IMMUTABLE);
    }
    f.errors.into_result()?;

    let mut spec = serde_json::Map::new();
    if let Some(name) = name {
        spec.insert("name".into(), json!(name));
    }
    if let Some(hostname) = hostname {
        spec.insert("hostname".into(), json!(hostname));
    }
    if let Some(backups) = backups_enabled {
        spec.insert("backupsEnabled".into(), json!(backups));
    }
    let patch = json!({
        "metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}},
        "spec": spec,
    });
    let updated = patch_server_object(state, &server, &patch).await?;
    Ok(Json(detail_with_usage(state, &updated).await?))
}

pub(super) async fn patch_server_object(
    state: &AppState,
    server: &VpsServer,
    patch: &serde_json::Value,
) -> Result<VpsServer, ApiError> {
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &server.namespace().unwrap_or_default());
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let updated = api.patch(&server.name_any(), &pp, &Patch::Merge(patch)).await?;
    wait_for_write(state.caches.servers.as_ref(), &updated).await;
    Ok(updated)
}

/// The protection body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SetProtection {
    /// Refuse DELETE while true.
    delete: bool,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/protection/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = SetProtection,
    responses(
        (status = 200, description = "The server with its new protection", body = ServerDetail),
        (status = 400, description = "A missing or invalid field"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn protect_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ServerDetail>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let delete = f.boolean("delete", Presence::Required);
    f.errors.into_result()?;
    let patch = json!({
        "metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}},
        "spec": {"deleteProtection": delete},
    });
    let updated = patch_server_object(&state, &server, &patch).await?;
    Ok(Json(detail_with_usage(&state, &updated).await?))
}

#[utoipa::path(delete, path = "/api/v1/servers/{server_id}/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 204, description = "Deleted; the id answers 404 from now on and is never reused"),
        (status = 400, description = "The server is protected from deletion"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn delete_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    _body: RawBody,
) -> Result<StatusCode, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    if server.spec.delete_protection {
        return Err(ApiError::BadRequest(
            "Server is protected from deletion: turn its delete protection off first.".into(),
        ));
    }
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: server.uid(), resource_version: None }),
        ..Default::default()
    };
    api.delete(&server.name_any(), &dp).await?;
    tracing::info!(id = server_id, namespace = tenant.namespace, "Server deleted");
    actions::record(&state, &server, ActionType::Delete, Expectation::default()).await;
    wait_for_delete(state.caches.servers.as_ref(), &server).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
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
        testing::app(
            vec![server("acme", 7, "web", Some("Active")), server("other", 8, "theirs", Some("Active"))],
            vec![],
        )
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
        assert_eq!(
            keys(&a.body),
            ["backups_enabled", "hostname", "location", "name", "os_id", "plan_id", "ssh_key_id"]
        );
        assert_eq!(a.body["plan_id"], json!(["Invalid pk \"99\" - object does not exist."]));
        let a = post(json!({"name": "x".repeat(64), "plan_id": 1, "os_id": 5, "location": "us-west"})).await;
        assert_eq!(a.body, json!({"name": ["Ensure this field has no more than 63 characters."]}));
        let a = post(json!({"name": null, "plan_id": 1, "os_id": 5, "location": ""})).await;
        assert_eq!(
            a.body,
            json!({"name": ["This field may not be null."], "location": ["This field may not be blank."]})
        );

        // PUT needs all three; each missing one is listed.
        let path = "/api/v1/servers/7/";
        let p = call(&app, "PUT", path, Some(TOKEN), Some(json!({"name": "only-name"}))).await;
        assert_eq!((p.status, &p.body), (400, &json!({"hostname": required, "backups_enabled": required})));
        let p = call(&app, "PUT", path, Some(TOKEN), None).await;
        assert_eq!(p.body, json!({"name": required, "hostname": required, "backups_enabled": required}));
        // Plan, OS and location cannot be changed.
        let p = call(&app, "PATCH", path, Some(TOKEN), Some(json!({"plan_id": 2, "os_id": 3, "location": "us-east"})))
            .await;
        assert_eq!((p.status, keys(&p.body)), (400, vec!["location".into(), "os_id".into(), "plan_id".into()]));
        let put = json!({"name": "n", "hostname": "n.example.com", "backups_enabled": false, "plan_id": 2});
        let p = call(&app, "PUT", path, Some(TOKEN), Some(put)).await;
        assert_eq!((p.status, keys(&p.body)), (400, vec!["plan_id".to_string()]));
        let p = call(&app, "PATCH", path, Some(TOKEN), Some(json!({"backups_enabled": "true", "hostname": 5}))).await;
        assert_eq!(
            p.body,
            json!({"hostname": ["Not a valid string."], "backups_enabled": ["Must be a valid boolean."]})
        );
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
}
