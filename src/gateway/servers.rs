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
mod tests;
