//! Lifecycle actions beyond power: resize. A resize changes the server's plan (the CRD allows
//! it only while the server is stopped); the operator grows the root disk and the VM's CPU
//! and memory follow at the next start (`operator::resize`).

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use kube::ResourceExt;
use serde_json::json;

use super::auth::Tenant;
use super::error::{ApiError, FieldErrors, RawBody};
use super::servers::{find, now_stamp, patch_server_object};
use super::validate::{Fields, Presence};
use super::view::{ActionResponse, ActionServer, ApiStatus, UPDATED_AT_ANNOTATION, api_status};
use super::{AppState, route_both, with_405};
use crate::api::Phase;
use crate::credit_ledger::Reservation;

pub fn router() -> Router<AppState> {
    route_both(Router::new(), "/api/v1/servers/{server_id}/resize/", with_405(post(resize_server), "POST"))
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
        .ok_or_else(|| field_error("plan_id", format!("Invalid pk \"{plan_id}\" - object does not exist.")))?;
    let status = api_status(&server);
    if status != Phase::Stopped {
        return Err(ApiError::BadRequest(format!(
            "Server can be resized only while it is stopped; it is {}.",
            status.as_api_str()
        )));
    }
    let current = match server.status.as_ref().and_then(|s| s.resolved.as_ref()) {
        Some(resolved) => resolved.plan.spec.clone(),
        None => state.caches.plan_by_name(&server.spec.plan).map(|p| p.spec.clone()).ok_or(ApiError::NotFound)?,
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
    let id = updated.id().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("server {name} lost its id")))?;
    Ok(Json(ActionResponse {
        status: "success",
        message: "Server is resized",
        server: ActionServer { id, name: updated.spec.name.clone(), status: ApiStatus(api_status(&updated)) },
    }))
}
