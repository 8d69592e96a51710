//! The REST view of tracked actions.

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{ActionState, VpsAction};

/// A tracked action (`GET /api/v1/actions/{id}/`).
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ActionView {
    pub id: i64,
    /// create, start, stop, reboot, resize, rebuild, restore, backup or delete.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// in-progress, completed or errored.
    pub status: &'static str,
    /// The server's id.
    pub server_id: i64,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub error: Option<String>,
}

/// The REST view of an action.
pub fn action_view(a: &VpsAction) -> ActionView {
    let status = a.status.clone().unwrap_or_default();
    ActionView {
        id: a.spec.id,
        type_: a.spec.type_.as_str(),
        status: match status.status {
            ActionState::InProgress => "in-progress",
            ActionState::Completed => "completed",
            ActionState::Errored => "errored",
        },
        server_id: a.spec.server_id,
        started_at: a.spec.started_at.clone(),
        completed_at: status.completed_at,
        error: status.error,
    }
}
