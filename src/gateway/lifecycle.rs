//! Lifecycle actions beyond power: resize and rebuild. A resize changes the server's plan
//! (the CRD allows it only while the server is stopped); the operator grows the root disk and
//! the VM's CPU and memory follow at the next start (`operator::resize`). A rebuild sets a new
//! `rebuildRequestedAt` with the image (the CRD lets `os` change only with one); the operator
//! replaces the root disk (`operator::rebuild`).

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use kube::ResourceExt;
use serde_json::json;

use super::actions;
use super::auth::Tenant;
use super::error::{ApiError, FieldErrors, RawBody};
use super::power::action_response;
use super::servers::{account_key, find, now_stamp, patch_server_object};
use super::validate::{Fields, Presence, does_not_exist};
use super::view::{ActionResponse, UPDATED_AT_ANNOTATION, api_status};
use super::{AppState, route_both, with_405};
use crate::api::{ActionType, Expectation, Phase, PowerState};
use crate::credit_ledger::Reservation;

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/servers/{server_id}/resize/", with_405(post(resize_server), "POST"));
    route_both(r, "/api/v1/servers/{server_id}/rebuild/", with_405(post(rebuild_server), "POST"))
}

/// The resize body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Resize {
    /// The new plan: a disk at least as large as the server's (disks only grow).
    plan_id: i64,
}

fn field_error(field: &str, message: String) -> ApiError {
    let mut errors = FieldErrors::default();
    errors.add(field, message);
    ApiError::Fields(errors)
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/resize/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = Resize,
    responses(
        (status = 200, description = "Resized: CPU and memory follow the new plan at the next start, the disk grows now", body = ActionResponse),
        (status = 400, description = "The server is not stopped; or an unknown plan, the plan it has, or a plan with a smaller disk"),
        (status = 401, description = "Missing or unknown token"),
        (status = 402, description = "The account's credit does not cover the new plan"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn resize_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let plan_id = f.integer("plan_id", Presence::Required);
    f.errors.into_result()?;
    let plan_id = plan_id.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("validation passed without plan_id")))?;
    let plan = state
        .caches
        .plans
        .find(|p| p.spec.id == plan_id)
        .ok_or_else(|| field_error("plan_id", does_not_exist(plan_id)))?;
    let status = api_status(&server);
    if status != Phase::Stopped {
        return Err(ApiError::BadRequest(format!(
            "Server can be resized only while it is stopped; it is {}.",
            status.as_api_str()
        )));
    }
    // What the server is built from, and the plan it was last asked to have (the two differ
    // until the operator has taken up a resize): the disk is the larger of the two.
    let resolved = server.status.as_ref().and_then(|s| s.resolved.as_ref()).map(|r| r.plan.spec.clone());
    let asked = state.caches.plan_by_name(&server.spec.plan).map(|p| p.spec.clone());
    let current = match (asked, resolved) {
        (Some(asked), Some(resolved)) => {
            if asked.storage >= resolved.storage {
                asked
            } else {
                resolved
            }
        }
        (Some(plan), None) | (None, Some(plan)) => plan,
        (None, None) => return Err(ApiError::NotFound),
    };
    if plan.name_any() == server.spec.plan {
        return Err(field_error("plan_id", "The server already has this plan.".into()));
    }
    if plan.spec.storage < current.storage {
        return Err(field_error(
            "plan_id",
            format!(
                "The plan's disk ({} GiB) is smaller than the server's ({} GiB): disks only grow.",
                plan.spec.storage, current.storage
            ),
        ));
    }
    let name = server.name_any();
    let price = plan.spec.monthly_price_cents;
    let committed = state.credit.recommit(&tenant.account, &name, price, tenant.credit_cents).await;
    if let Reservation::Insufficient { used } = committed.map_err(anyhow::Error::from)? {
        return Err(ApiError::PaymentRequired(format!(
            "Insufficient credit: the plan costs {price} cents per month and the account's other servers already use \
             {used} of its {} cents.",
            tenant.credit_cents
        )));
    }
    let patch =
        json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}}, "spec": {"plan": plan.name_any()}});
    let updated = match patch_server_object(&state, &server, &patch).await {
        Ok(updated) => updated,
        Err(e) => {
            // The old plan's price again (it was committed before; no limit applies to it).
            let _ = state.credit.recommit(&tenant.account, &name, current.monthly_price_cents, i64::MAX).await;
            return Err(e);
        }
    };
    let expect = Expectation { phase: Some(Phase::Stopped), plan: Some(plan.name_any()), ..Default::default() };
    let tracked = actions::record(&state, &updated, ActionType::Resize, expect).await;
    action_response(&updated, "Server is resized", tracked)
}

/// The rebuild body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Rebuild {
    /// The OS image to rebuild from (it may be the one the server has).
    os_id: i64,
    /// An SSH key of the account for the new disk; `null` for none; absent: the server's own.
    ssh_key_id: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/rebuild/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = Rebuild,
    responses(
        (status = 200, description = "Rebuilding: a fresh root disk from the image, cloud-init run again; id, name and backups kept", body = ActionResponse),
        (status = 400, description = "Not active, stopped or in error; or an unknown image or key"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn rebuild_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let os_id = f.integer("os_id", Presence::Required);
    let key_given = map.contains_key("ssh_key_id");
    let ssh_key_id = f.integer("ssh_key_id", Presence::OptionalNullable);
    let image = os_id.and_then(|id| {
        let image = state.caches.images.find(|i| i.spec.id == id);
        if image.is_none() {
            f.errors.add("os_id", does_not_exist(id));
        }
        image
    });
    let key = ssh_key_id.and_then(|id| {
        let key = account_key(&state.caches, &tenant.namespace, id);
        if key.is_none() {
            f.errors.add("ssh_key_id", does_not_exist(id));
        }
        key
    });
    f.errors.into_result()?;
    let image = image.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("validation passed without os_id")))?;
    let status = api_status(&server);
    if !matches!(status, Phase::Active | Phase::Stopped | Phase::Error) {
        return Err(ApiError::BadRequest(format!("Server cannot be rebuilt while it is {}.", status.as_api_str())));
    }
    let stamp = jiff::Timestamp::now().to_string();
    let mut spec = json!({"os": image.name_any(), "rebuildRequestedAt": stamp});
    if key_given {
        spec["sshKey"] = json!(key.map(|k| k.name_any()));
    }
    let patch = json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}}, "spec": spec});
    let updated = patch_server_object(&state, &server, &patch).await?;
    let settles = if updated.spec.power_state == PowerState::Stopped { Phase::Stopped } else { Phase::Active };
    let expect = Expectation { phase: Some(settles), rebuild_request: Some(stamp), ..Default::default() };
    let tracked = actions::record(&state, &updated, ActionType::Rebuild, expect).await;
    action_response(&updated, "Server is rebuilding", tracked)
}
