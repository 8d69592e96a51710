//! The nine server endpoints: list, create, get, update (PUT/PATCH), delete, start, stop,
//! reboot. Reads come from the cache; writes go to the API server and wait for the cache.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::auth::Tenant;
use super::cache::{server_id, wait_for_delete, wait_for_write};
use super::error::{ApiError, FieldErrors, RawBody};
use super::idempotency::{self, Claim, IDEMPOTENCY_LABEL, Stored};
use super::index::Filter;
use super::pagination::{self, Query};
use super::validate::{Fields, IMMUTABLE, Presence};
use super::view::{
    self, ActionResponse, ActionServer, CreatedServer, Page, ServerDetail, ServerListItem, UPDATED_AT_ANNOTATION,
    api_status,
};
use super::{AppState, FIELD_MANAGER, base_url, route_both, with_405};
use crate::api::{ACCOUNT_LABEL, Phase, PowerState, SERVER_ID_LABEL, VpsServer, VpsServerSpec};
use crate::ids::IdKind;

pub const CREATED_MESSAGE: &str = "Server is being provisioned. This may take 2-5 minutes.";

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
    let r = route_both(r, "/api/v1/servers/{server_id}/start/", with_405(post(start_server), "POST"));
    let r = route_both(r, "/api/v1/servers/{server_id}/stop/", with_405(post(stop_server), "POST"));
    route_both(r, "/api/v1/servers/{server_id}/reboot/", with_405(post(reboot_server), "POST"))
}

fn now_stamp() -> String {
    view::rfc3339(jiff::Timestamp::now())
}

/// Maps a failed write: gone → 404, refused by the schema → 400, anything else → 500.
fn write_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(s) if s.code == 404 => ApiError::NotFound,
        kube::Error::Api(s) if s.code == 422 => {
            tracing::warn!(message = s.message, "The API server refused a write");
            ApiError::BadRequest("The request was refused by validation.".into())
        }
        e => e.into(),
    }
}

/// The caller's server with this id, or 404 (also for another tenant's servers and for
/// ids that are not integers).
fn find(state: &AppState, tenant: &Tenant, server_id: &str) -> Result<std::sync::Arc<VpsServer>, ApiError> {
    state.caches.server(&tenant.namespace, parse_id(server_id)?).ok_or(ApiError::NotFound)
}

/// The id of a server path: digits only, as the documented integer path parameter (no sign,
/// no spaces); anything else names no server.
fn parse_id(server_id: &str) -> Result<i64, ApiError> {
    if server_id.is_empty() || !server_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::NotFound);
    }
    server_id.parse::<i64>().map_err(|_| ApiError::NotFound)
}

fn detail(state: &AppState, s: &VpsServer) -> Result<ServerDetail, ApiError> {
    view::server_detail(s, &state.caches)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("server {} has no id", s.name_any())))
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
    let status = query.get("status");
    if let Some(s) = status
        && Phase::from_api_str(s).is_none()
    {
        errors.add("status", format!("Select a valid choice. {s} is not one of the available choices."));
    }
    let location = query.get("location");
    if let Some(l) = location
        && state.caches.locations.get(&kube::runtime::reflector::ObjectRef::new(l)).is_none()
    {
        errors.add("location", format!("Select a valid choice. {l} is not one of the available choices."));
    }
    let page = pagination::params(&query, &mut errors);
    errors.into_result()?;

    // The index keeps each account's servers in id order with their status computed: only
    // the servers of the page are touched and turned into list items.
    let caches = &state.caches;
    let (count, items) =
        caches.servers.page(&tenant.namespace, Filter { status, location }, (page.0 - 1) * page.1, page.1, |e| {
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

/// The create body, as documented (validated by hand, see [`super::validate`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateServer {
    /// 1–63 letters, digits and hyphens, not starting or ending with a hyphen.
    name: String,
    plan_id: i64,
    os_id: i64,
    /// A location code.
    location: String,
    /// A fully qualified domain name.
    hostname: Option<String>,
    ssh_key_id: Option<i64>,
    /// Default false.
    backups_enabled: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/servers/", tag = "servers",
    request_body = CreateServer,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first successful answer for 24 h")),
    responses(
        (status = 201, description = "Provisioning started", body = CreatedServer,
            headers(("Location" = String, description = "URL of the new server"))),
        (status = 400, description = "Invalid fields, listed all at once"),
        (status = 401, description = "Missing or unknown token"),
        (status = 402, description = "The account's credit does not cover the plan"),
    ),
    security(("bearer" = [])))]
pub async fn create_server(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(created_response(create(&state, &tenant, &headers, &body, None).await?));
    };
    let key = idempotency::parse_key(key)?;
    let request = idempotency::request_hash(&body.0);
    match idempotency::claim(&state.client, &state.system_namespace, &tenant.account, &key, &request).await? {
        Claim::Replay(stored) => Ok(stored.into_response()),
        Claim::Fresh(lock) => match create(&state, &tenant, &headers, &body, Some(&lock.key_hash)).await {
            Ok(created) => {
                let stored = Stored {
                    status: StatusCode::CREATED,
                    body: serde_json::to_string(&created.0).map_err(anyhow::Error::from)?,
                    location: Some(created.1.clone()),
                };
                lock.complete(&stored).await;
                Ok(created_response(created))
            }
            Err(e) => {
                lock.release().await;
                Err(e)
            }
        },
    }
}

fn created_response((body, location): (CreatedServer, String)) -> Response {
    let mut res = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    res
}

async fn create(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &RawBody,
    idempotency_key: Option<&str>,
) -> Result<(CreatedServer, String), ApiError> {
    let map = body.json_object()?;
    let caches = &state.caches;
    let mut f = Fields::new(&map);
    let name = f.server_name("name", Presence::Required);
    let plan_id = f.integer("plan_id", Presence::Required);
    let os_id = f.integer("os_id", Presence::Required);
    let location = f.string("location", Presence::Required, 63);
    let hostname = f.hostname("hostname", Presence::OptionalNullable);
    let ssh_key_id = f.integer("ssh_key_id", Presence::OptionalNullable);
    let backups_enabled = f.boolean("backups_enabled", Presence::Optional).unwrap_or(false);
    let plan = plan_id.and_then(|id| {
        let plan = caches.plans.find(|p| p.spec.id == id);
        if plan.is_none() {
            f.errors.add("plan_id", format!("Invalid pk \"{id}\" - object does not exist."));
        }
        plan
    });
    let image = os_id.and_then(|id| {
        let image = caches.images.find(|i| i.spec.id == id);
        if image.is_none() {
            f.errors.add("os_id", format!("Invalid pk \"{id}\" - object does not exist."));
        }
        image
    });
    if let Some(l) = &location
        && caches.locations.get(&kube::runtime::reflector::ObjectRef::new(l)).is_none()
    {
        f.errors.add("location", format!("\"{l}\" is not a valid choice."));
    }
    let ssh_key = ssh_key_id.and_then(|id| {
        let key = caches.ssh_keys.find(|k| {
            k.namespace().as_deref() == Some(tenant.namespace.as_str())
                && k.metadata.deletion_timestamp.is_none()
                && view::ssh_key_id(k) == Some(id)
        });
        if key.is_none() {
            f.errors.add("ssh_key_id", format!("Invalid pk \"{id}\" - object does not exist."));
        }
        key
    });
    f.errors.into_result()?;
    let (Some(name), Some(plan), Some(image), Some(location)) = (name, plan, image, location) else {
        return Err(ApiError::Internal(anyhow::anyhow!("validation passed with a field missing")));
    };

    // A gateway that died after creating this server but before recording the answer.
    if let Some(key) = idempotency_key
        && let Some(earlier) = caches
            .servers
            .servers_of(&tenant.namespace)
            .into_iter()
            .find(|s| s.labels().get(IDEMPOTENCY_LABEL).map(String::as_str) == Some(key))
    {
        let id = server_id(&earlier).unwrap_or_default();
        let location = format!("{}/api/v1/servers/{id}/", base_url(headers));
        return Ok((CreatedServer { server: detail(state, &earlier)?, message: CREATED_MESSAGE }, location));
    }
    // The credit check counts the account's servers and the creates in flight in this gateway.
    let price = plan.spec.monthly_price_cents;
    let plan_price = |s: &VpsServer| caches.plan_by_name(&s.spec.plan).map_or(0, |p| p.spec.monthly_price_cents);
    let reservation = state
        .credit
        .reserve(&tenant.namespace, price, tenant.credit_cents, &caches.servers, plan_price)
        .map_err(|used| {
            ApiError::PaymentRequired(format!(
                "Insufficient credit: the plan costs {price} cents per month and the account's servers already use \
                 {used} of its {} cents.",
                tenant.credit_cents
            ))
        })?;

    let id = state.ids.allocate(IdKind::Server).await.map_err(anyhow::Error::from)?;
    let mut labels = BTreeMap::from([
        (SERVER_ID_LABEL.to_string(), id.to_string()),
        (ACCOUNT_LABEL.to_string(), tenant.account.clone()),
    ]);
    if let Some(key) = idempotency_key {
        labels.insert(IDEMPOTENCY_LABEL.to_string(), key.to_string());
    }
    let mut server = VpsServer::new(
        &format!("srv-{id}"),
        VpsServerSpec {
            name,
            plan: plan.name_any(),
            os: image.name_any(),
            location,
            hostname,
            ssh_key: ssh_key.map(|k| k.name_any()),
            backups_enabled,
            power_state: PowerState::Running,
            reboot_requested_at: None,
            suspended: false,
        },
    );
    server.metadata.labels = Some(labels);
    server.metadata.annotations = Some(BTreeMap::from([(UPDATED_AT_ANNOTATION.to_string(), now_stamp())]));
    // The operator's teardown finalizer from the start: it would otherwise add it with a write
    // of its own.
    server.metadata.finalizers = Some(vec![crate::operator::FINALIZER.to_string()]);
    reservation.name(&server.name_any());
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let created = api.create(&pp, &server).await.map_err(write_error)?;
    tracing::info!(id, namespace = tenant.namespace, "Server created");
    wait_for_write(caches.servers.as_ref(), &created).await;
    drop(reservation);
    let location = format!("{}/api/v1/servers/{id}/", base_url(headers));
    Ok((CreatedServer { server: detail(state, &created)?, message: CREATED_MESSAGE }, location))
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
    Ok(json_response(rendered.ok_or(ApiError::NotFound)?.detail))
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
    Ok(Json(detail(state, &updated)?))
}

async fn patch_server_object(
    state: &AppState,
    server: &VpsServer,
    patch: &serde_json::Value,
) -> Result<VpsServer, ApiError> {
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &server.namespace().unwrap_or_default());
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let updated = api.patch(&server.name_any(), &pp, &Patch::Merge(patch)).await.map_err(write_error)?;
    wait_for_write(state.caches.servers.as_ref(), &updated).await;
    Ok(updated)
}

#[utoipa::path(delete, path = "/api/v1/servers/{server_id}/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 204, description = "Deleted; the id answers 404 from now on and is never reused"),
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
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: server.uid(), resource_version: None }),
        ..Default::default()
    };
    api.delete(&server.name_any(), &dp).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => ApiError::NotFound,
        e => write_error(e),
    })?;
    tracing::info!(id = server_id, namespace = tenant.namespace, "Server deleted");
    wait_for_delete(state.caches.servers.as_ref(), &server).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Clone, Copy)]
enum Action {
    Start,
    Stop,
    Reboot,
}

async fn action(
    state: &AppState,
    tenant: &Tenant,
    server_id: &str,
    action: Action,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(state, tenant, server_id)?;
    let current = api_status(&server);
    let (allowed, refusal, message) = match action {
        Action::Start => (
            current == "stopped",
            if current == "active" {
                "Server is already running.".to_string()
            } else {
                format!("Server cannot be started while it is {current}.")
            },
            "Server is starting",
        ),
        Action::Stop => (
            current == "active",
            if current == "stopped" {
                "Server is not running.".to_string()
            } else {
                format!("Server cannot be stopped while it is {current}.")
            },
            "Server is stopping",
        ),
        Action::Reboot => (
            current == "active",
            if current == "stopped" {
                "Server is not running.".to_string()
            } else {
                format!("Server cannot be rebooted while it is {current}.")
            },
            "Server is rebooting",
        ),
    };
    if !allowed {
        return Err(ApiError::BadRequest(refusal));
    }
    let spec = match action {
        Action::Start => json!({"powerState": "Running"}),
        Action::Stop => json!({"powerState": "Stopped"}),
        // Sub-second precision: two reboots in one second are two requests.
        Action::Reboot => json!({"rebootRequestedAt": jiff::Timestamp::now().to_string()}),
    };
    let patch = json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}}, "spec": spec});
    let updated = patch_server_object(state, &server, &patch).await?;
    let id = server_id_of(&updated)?;
    Ok(Json(ActionResponse {
        status: "success",
        message,
        server: ActionServer { id, name: updated.spec.name.clone(), status: api_status(&updated) },
    }))
}

fn server_id_of(s: &VpsServer) -> Result<i64, ApiError> {
    server_id(s).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("server {} lost its id", s.name_any())))
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/start/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 200, description = "Starting", body = ActionResponse),
        (status = 400, description = "Already running, or not startable now"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn start_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    _body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    action(&state, &tenant, &server_id, Action::Start).await
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/stop/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 200, description = "Stopping", body = ActionResponse),
        (status = 400, description = "Not running"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn stop_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    _body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    action(&state, &tenant, &server_id, Action::Stop).await
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/reboot/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 200, description = "Rebooting", body = ActionResponse),
        (status = 400, description = "Not running"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn reboot_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    _body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    action(&state, &tenant, &server_id, Action::Reboot).await
}
