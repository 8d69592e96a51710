//! The contract's power actions: start, stop (graceful, or forced with `{"force": true}`) and
//! reboot (soft, or hard with `{"type": "hard"}`), each a spec change of the server and a tracked action; and the answer they share
//! with the other actions ([`action_response`]).

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use kube::ResourceExt;
use serde_json::json;

use super::actions;
use super::auth::Tenant;
use super::error::{ApiError, RawBody};
use super::servers::{find, now_stamp, patch_server_object};
use super::validate::{Fields, Presence};
use super::view::{self, ActionResponse, ActionServer, ApiStatus, UPDATED_AT_ANNOTATION, api_status};
use super::{AppState, route_both, with_405};
use crate::api::{ActionType, Expectation, Phase, RebootType, VpsServer};

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/servers/{server_id}/start/", with_405(post(start_server), "POST"));
    let r = route_both(r, "/api/v1/servers/{server_id}/stop/", with_405(post(stop_server), "POST"));
    route_both(r, "/api/v1/servers/{server_id}/reboot/", with_405(post(reboot_server), "POST"))
}

/// A power action of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    /// A stop that does not wait for the guest (also of a server already stopping).
    ForceStop,
    Reboot(RebootType),
}

impl Action {
    /// Whether the action may run on a server in `status`, and the refusal's detail when not
    /// (pure: the state rules of the contract).
    fn check(self, status: Phase) -> Result<(), String> {
        let (allowed_from, verb) = match self {
            Action::Start => (Phase::Stopped, "started"),
            Action::Stop | Action::ForceStop => (Phase::Active, "stopped"),
            Action::Reboot(_) => (Phase::Active, "rebooted"),
        };
        match (self, status) {
            (_, s) if s == allowed_from => Ok(()),
            (Action::ForceStop, Phase::Stopping) => Ok(()),
            (Action::Start, Phase::Active) => Err("Server is already running.".into()),
            (Action::Stop | Action::ForceStop | Action::Reboot(_), Phase::Stopped) => {
                Err("Server is not running.".into())
            }
            (_, s) => Err(format!("Server cannot be {verb} while it is {}.", s.as_api_str())),
        }
    }

    /// The spec change that asks for it, and what the server shows once it is done.
    fn spec_patch(self) -> (serde_json::Value, ActionType, Expectation) {
        let phase = |p| Expectation { phase: Some(p), ..Default::default() };
        match self {
            Action::Start => (json!({"powerState": "Running"}), ActionType::Start, phase(Phase::Active)),
            Action::Stop => (json!({"powerState": "Stopped"}), ActionType::Stop, phase(Phase::Stopped)),
            Action::ForceStop => {
                let stamp = jiff::Timestamp::now().to_string();
                (
                    json!({"powerState": "Stopped", "forceStopRequestedAt": stamp}),
                    ActionType::Stop,
                    phase(Phase::Stopped),
                )
            }
            // Sub-second precision: two reboots in one second are two requests.
            Action::Reboot(kind) => {
                let stamp = jiff::Timestamp::now().to_string();
                let expect = Expectation { reboot_request: Some(stamp.clone()), ..phase(Phase::Active) };
                (json!({"rebootRequestedAt": stamp, "rebootType": kind}), ActionType::Reboot, expect)
            }
        }
    }

    fn message(self) -> &'static str {
        match self {
            Action::Start => "Server is starting",
            Action::Stop | Action::ForceStop => "Server is stopping",
            Action::Reboot(_) => "Server is rebooting",
        }
    }
}

/// Runs `action` on `server` (the caller's, found already).
async fn action(state: &AppState, server: &VpsServer, action: Action) -> Result<Json<ActionResponse>, ApiError> {
    action.check(api_status(server)).map_err(ApiError::BadRequest)?;
    let (spec, type_, expect) = action.spec_patch();
    let patch = json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}}, "spec": spec});
    let updated = patch_server_object(state, server, &patch).await?;
    let tracked = actions::record(state, &updated, type_, expect).await;
    action_response(&updated, action.message(), tracked)
}

/// The answer to an action on `updated`: the contract's shape, and the tracked action.
pub(super) fn action_response(
    updated: &VpsServer,
    message: &'static str,
    action: Option<view::ActionView>,
) -> Result<Json<ActionResponse>, ApiError> {
    let id =
        updated.id().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("server {} lost its id", updated.name_any())))?;
    Ok(Json(ActionResponse {
        status: "success",
        message,
        server: ActionServer { id, name: updated.spec.name.clone(), status: ApiStatus(api_status(updated)) },
        action,
    }))
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
    action(&state, &*find(&state, &tenant, &server_id)?, Action::Start).await
}

/// The stop body (optional).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Stop {
    /// Do not wait for the guest to shut down (KubeVirt's stop with a grace period of 0); also
    /// allowed while the server is already stopping. Default `false`: a graceful shutdown.
    force: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/stop/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body(content = Option<Stop>, description = "Optional: `{\"force\": true}` for a forced stop"),
    responses(
        (status = 200, description = "Stopping", body = ActionResponse),
        (status = 400, description = "Not running (a forced stop: not running or stopping), or a `force` that is not a boolean"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn stop_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(&state, &tenant, &server_id)?; // 404 before the body's 400, as DRF does
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let force = f.boolean("force", Presence::Optional);
    f.errors.into_result()?;
    let stop = if force == Some(true) { Action::ForceStop } else { Action::Stop };
    action(&state, &server, stop).await
}

/// The reboot body (optional).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Reboot {
    /// `soft` (the default) asks the guest to reboot (KubeVirt's `softreboot`: guest agent or
    /// ACPI); `hard` resets the machine (KubeVirt's `reset`). Neither replaces the server's
    /// instance: its node and addresses stay.
    #[schema(example = "soft")]
    r#type: Option<RebootKind>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
enum RebootKind {
    Soft,
    Hard,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/reboot/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body(content = Option<Reboot>, description = "Optional: `{\"type\": \"hard\"}` for a reset"),
    responses(
        (status = 200, description = "Rebooting", body = ActionResponse),
        (status = 400, description = "Not running, or a `type` that is neither `soft` nor `hard`"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn reboot_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(&state, &tenant, &server_id)?; // 404 before the body's 400, as DRF does
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let kind = f.choice("type", Presence::Optional, &["soft", "hard"]);
    f.errors.into_result()?;
    let kind = if kind == Some("hard") { RebootType::Hard } else { RebootType::Soft };
    action(&state, &server, Action::Reboot(kind)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PowerState;
    use crate::gateway::testing::{self, TOKEN, call, server};

    #[test]
    fn power_actions_follow_the_status() {
        use Phase::*;
        let reboot = Action::Reboot(RebootType::Soft);
        for (action, allowed) in [(Action::Start, Stopped), (Action::Stop, Active), (reboot, Active)] {
            for phase in Phase::ALL {
                assert_eq!(action.check(phase).is_ok(), phase == allowed, "{action:?} while {phase:?}");
            }
        }
        assert_eq!(Action::Start.check(Active).unwrap_err(), "Server is already running.");
        assert_eq!(Action::Stop.check(Stopped).unwrap_err(), "Server is not running.");
        assert_eq!(reboot.check(Stopped).unwrap_err(), "Server is not running.");
        assert_eq!(Action::Stop.check(Rebooting).unwrap_err(), "Server cannot be stopped while it is rebooting.");
        assert_eq!(
            Action::Start.check(Provisioning).unwrap_err(),
            "Server cannot be started while it is provisioning."
        );
    }

    #[tokio::test]
    async fn power_actions_are_refused_in_the_wrong_status() {
        let mut stopping = server("acme", 3, "stopping", Some("Active"));
        stopping.spec.power_state = PowerState::Stopped;
        let mut stopped = server("acme", 4, "stopped", Some("Stopped"));
        stopped.spec.power_state = PowerState::Stopped;
        let mut suspended = server("acme", 5, "suspended", Some("Active"));
        suspended.spec.suspended = true;
        let mut rebooting = server("acme", 6, "rebooting", Some("Active"));
        rebooting.spec.reboot_requested_at = Some("2025-01-01T00:00:00Z".into());
        let app = testing::app(
            vec![
                server("acme", 1, "new", None),
                server("acme", 2, "active", Some("Active")),
                stopping,
                stopped,
                suspended,
                rebooting,
                server("acme", 7, "broken", Some("Error")),
            ],
            vec![],
        )
        .await;
        for (id, refused) in [
            (1, &["start", "stop", "reboot"][..]),
            (2, &["start"]),
            (3, &["start", "stop", "reboot"]),
            (4, &["stop", "reboot"]),
            (5, &["start", "stop", "reboot"]),
            (6, &["start", "stop", "reboot"]),
            (7, &["start", "stop", "reboot"]),
        ] {
            for action in refused {
                let a = call(&app, "POST", &format!("/api/v1/servers/{id}/{action}/"), Some(TOKEN), None).await;
                assert_eq!(a.status, 400, "{action} of server {id}: {a:?}");
                assert!(a.body["detail"].is_string(), "{a:?}");
            }
        }
        let a = call(&app, "POST", "/api/v1/servers/4/stop/", Some(TOKEN), None).await;
        assert_eq!(a.body["detail"], "Server is not running.");
        // A reboot's type is one of two words.
        for (kind, said) in
            [(json!("warm"), "\"warm\" is not a valid choice."), (json!(1), "\"1\" is not a valid choice.")]
        {
            let a = call(&app, "POST", "/api/v1/servers/2/reboot/", Some(TOKEN), Some(json!({"type": kind}))).await;
            assert_eq!((a.status, &a.body), (400, &json!({"type": [said]})), "{a:?}");
        }
    }
}
