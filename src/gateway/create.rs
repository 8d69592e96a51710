//! Creating a server: `POST /api/v1/servers/` (routed by [`super::servers`]), with its
//! `Idempotency-Key` replay, the body's validation, the credit reservation and the new
//! `VpsServer` object.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::actions;
use super::auth::Tenant;
use super::cache::{Caches, wait_for_write};
use super::error::{ApiError, RawBody};
use super::idempotency::{self, Claim, IDEMPOTENCY_LABEL, Stored};
use super::servers::{account_key, detail, now_stamp};
use super::validate::{Fields, Presence, does_not_exist};
use super::view::{self, CreatedServer, UPDATED_AT_ANNOTATION};
use super::{AppState, FIELD_MANAGER, base_url};
use crate::api::{
    ACCOUNT_LABEL, ActionType, Expectation, Phase, PowerState, SERVER_ID_LABEL, TEARDOWN_FINALIZER, VpsImage, VpsPlan,
    VpsServer, VpsServerSpec,
};
use crate::credit_ledger::Reservation;
use crate::ids::IdKind;

pub const CREATED_MESSAGE: &str = "Server is being provisioned. This may take 2-5 minutes.";

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
        (status = 409, description = "The account is being deleted, no public address is left in the location, or a request with this Idempotency-Key is still being processed"),
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

/// A create request, its fields read and checked against the catalog and the account.
#[derive(Clone)]
struct NewServer {
    name: String,
    plan: Arc<VpsPlan>,
    image: Arc<VpsImage>,
    location: String,
    hostname: Option<String>,
    ssh_key: Option<String>,
    backups_enabled: bool,
}

/// Reads a create body; every failing field is listed at once.
fn parse_create(body: &RawBody, caches: &Caches, namespace: &str) -> Result<NewServer, ApiError> {
    let map = body.json_object()?;
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
            f.errors.add("plan_id", does_not_exist(id));
        }
        plan
    });
    let image = os_id.and_then(|id| {
        let image = caches.images.find(|i| i.spec.id == id);
        if image.is_none() {
            f.errors.add("os_id", does_not_exist(id));
        }
        image
    });
    if let Some(l) = &location
        && caches.location(l).is_none()
    {
        f.errors.add("location", format!("\"{l}\" is not a valid choice."));
    }
    let ssh_key = ssh_key_id.and_then(|id| {
        let key = account_key(caches, namespace, id);
        if key.is_none() {
            f.errors.add("ssh_key_id", does_not_exist(id));
        }
        key
    });
    f.errors.into_result()?;
    let (Some(name), Some(plan), Some(image), Some(location)) = (name, plan, image, location) else {
        return Err(ApiError::Internal(anyhow::anyhow!("validation passed with a field missing")));
    };
    Ok(NewServer { name, plan, image, location, hostname, ssh_key: ssh_key.map(|k| k.name_any()), backups_enabled })
}

/// The `VpsServer` object of a new server with id `id` (pure).
fn server_object(new: NewServer, id: i64, account: &str, idempotency_key: Option<&str>, now: &str) -> VpsServer {
    let mut labels = BTreeMap::from([
        (SERVER_ID_LABEL.to_string(), id.to_string()),
        (ACCOUNT_LABEL.to_string(), account.to_string()),
    ]);
    if let Some(key) = idempotency_key {
        labels.insert(IDEMPOTENCY_LABEL.to_string(), key.to_string());
    }
    let mut server = VpsServer::new(
        &format!("srv-{id}"),
        VpsServerSpec {
            name: new.name,
            plan: new.plan.name_any(),
            os: new.image.name_any(),
            location: new.location,
            hostname: new.hostname,
            ssh_key: new.ssh_key,
            backups_enabled: new.backups_enabled,
            power_state: PowerState::Running,
            reboot_requested_at: None,
            reboot_type: None,
            force_stop_requested_at: None,
            rebuild_requested_at: None,
            backup_requested_at: None,
            restore: None,
            suspended: false,
            delete_protection: false,
        },
    );
    server.metadata.labels = Some(labels);
    server.metadata.annotations = Some(BTreeMap::from([(UPDATED_AT_ANNOTATION.to_string(), now.to_string())]));
    // The operator's teardown finalizer from the start: it would otherwise add it with a write
    // of its own.
    server.metadata.finalizers = Some(vec![TEARDOWN_FINALIZER.to_string()]);
    server
}

/// Creates a server: parse, then (unless an earlier request with this idempotency key made
/// it) reserve the credit, take an id, create the object and wait for the cache to show it.
async fn create(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &RawBody,
    idempotency_key: Option<&str>,
) -> Result<(CreatedServer, String), ApiError> {
    let caches = &state.caches;
    let new = parse_create(body, caches, &tenant.namespace)?;
    let location_of = |id: i64| format!("{}/api/v1/servers/{id}/", base_url(headers));
    // A gateway that died after creating this server but before recording the answer.
    if let Some(key) = idempotency_key
        && let Some(earlier) = caches
            .servers
            .servers_of(&tenant.namespace)
            .into_iter()
            .find(|s| s.labels().get(IDEMPOTENCY_LABEL).map(String::as_str) == Some(key))
    {
        let id = earlier.id().unwrap_or_default();
        let action = caches
            .actions
            .find(|a| a.spec.server == earlier.name_any() && a.spec.type_ == ActionType::Create)
            .map(|a| view::action_view(&a));
        return Ok((
            CreatedServer { server: detail(state, &earlier)?, message: CREATED_MESSAGE, action },
            location_of(id),
        ));
    }
    // A location on a provider network gives each server addresses of its own: none left,
    // no server (the operator would hold it in an error until one is released).
    if let Some(location) = caches.location(&new.location)
        && caches.addresses_left(&location) == Some(0)
    {
        return Err(ApiError::Conflict(format!(
            "No public address is left in location {}: choose another location, or try again once a server there is deleted.",
            new.location
        )));
    }
    if tenant.suspended {
        return Err(ApiError::PaymentRequired(
            "Insufficient credit: the account's balance is used up and its servers are suspended until the hosting \
             team tops it up."
                .into(),
        ));
    }
    // The server's price is committed on the account's ledger before its object exists.
    let price = new.plan.spec.monthly_price_cents;
    let api: Api<VpsServer> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    // A server made with kubectl may have taken the object name of the id drawn: draw again.
    let mut attempts = 0;
    let (id, created) = loop {
        attempts += 1;
        let id = state.ids.allocate(IdKind::Server).await.map_err(anyhow::Error::from)?;
        let server = server_object(new.clone(), id, &tenant.account, idempotency_key, &now_stamp());
        let name = server.name_any();
        let reserved = state.credit.reserve(&tenant.account, &name, price, tenant.credit_cents).await;
        if let Reservation::Insufficient { used } = reserved.map_err(anyhow::Error::from)? {
            return Err(ApiError::PaymentRequired(format!(
                "Insufficient credit: the plan costs {price} cents per month and the account's servers already use \
                 {used} of its {} cents.",
                tenant.credit_cents
            )));
        }
        match api.create(&pp, &server).await {
            Ok(created) => break (id, created),
            Err(e) => {
                state.credit.release(&tenant.account, &name).await;
                match e {
                    kube::Error::Api(s) if s.reason == "AlreadyExists" && attempts < 5 => {
                        tracing::warn!(id, name, "A server of that name exists already: drawing another id");
                    }
                    e => return Err(e.into()),
                }
            }
        }
    };
    tracing::info!(id, namespace = tenant.namespace, "Server created");
    wait_for_write(caches.servers.as_ref(), &created).await;
    let expect = Expectation { phase: Some(Phase::Active), ..Default::default() };
    let action = actions::record(state, &created, ActionType::Create, expect).await;
    Ok((CreatedServer { server: detail(state, &created)?, message: CREATED_MESSAGE, action }, location_of(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_server_is_the_object_the_operator_expects() {
        let plan: VpsPlan = serde_json::from_value(json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsPlan",
            "metadata": {"name": "standard"}, "spec": {"id": 1, "displayName": "S", "vcpus": 1, "memory": 512,
            "storage": 10, "bandwidth": 1, "monthlyPriceCents": 1}}))
        .unwrap();
        let image: VpsImage = serde_json::from_value(json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsImage",
            "metadata": {"name": "debian-12"}, "spec": {"id": 3, "displayName": "D",
            "source": {"dataSourceNamespace": "i", "dataSourceName": "d"}}}))
        .unwrap();
        let new = NewServer {
            name: "web".into(),
            plan: Arc::new(plan),
            image: Arc::new(image),
            location: "us-west".into(),
            hostname: None,
            ssh_key: Some("key-4".into()),
            backups_enabled: true,
        };
        let s = server_object(new, 42, "acme", Some("k1"), "2025-01-10T14:30:00Z");
        assert_eq!(s.metadata.name.as_deref(), Some("srv-42"));
        assert_eq!(s.id(), Some(42));
        assert_eq!(s.labels()[ACCOUNT_LABEL], "acme");
        assert_eq!(s.labels()[IDEMPOTENCY_LABEL], "k1");
        assert_eq!(s.finalizers(), [TEARDOWN_FINALIZER]);
        assert_eq!(
            (s.spec.plan.as_str(), s.spec.os.as_str(), s.spec.ssh_key.as_deref()),
            ("standard", "debian-12", Some("key-4"))
        );
        assert_eq!((s.spec.power_state, s.spec.backups_enabled, s.spec.suspended), (PowerState::Running, true, false));
        assert_eq!(s.annotations()[UPDATED_AT_ANNOTATION], "2025-01-10T14:30:00Z");
    }
}
