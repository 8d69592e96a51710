//! `VpsAction`: one mutating call on a server (create, start, stop, reboot, resize, rebuild,
//! restore, backup, delete), recorded by the gateway and completed by the operator once the
//! server has converged on what was asked, or errored with the reason. Kept in the cluster so
//! actions survive gateway restarts and show in kubectl; owned by their server (a delete's by
//! nothing, so it outlives the server), pruned by the operator after a retention.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::server::Phase;

/// What was asked of a server, and what the server looks like once it is done.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsAction",
    doc = "One action on a VpsServer (create, start, stop, reboot, resize, rebuild, restore, backup, delete), as the REST API's /api/v1/actions/{spec.id}/ shows it: recorded when it was asked for, completed by the vps-operator once the server has converged, or errored with KubeVirt's reason.",
    namespaced,
    shortname = "vpsact",
    category = "hosting",
    status = "VpsActionStatus",
    printcolumn(name = "ID", type_ = "integer", json_path = ".spec.id"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Server", type_ = "integer", json_path = ".spec.serverId"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VpsActionSpec {
    /// The action's integer id in the REST API; never reused.
    pub id: i64,
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// The `VpsServer` object it acts on.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// That server's id.
    pub server_id: i64,
    /// When it was asked for (RFC 3339, sub-second).
    #[schemars(length(max = 64))]
    pub started_at: String,
    /// What the server shows once the action is done.
    #[serde(default)]
    pub expect: Expectation,
}

/// The kinds of action.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionType {
    Create,
    Start,
    Stop,
    Reboot,
    Resize,
    Rebuild,
    Restore,
    Backup,
    Delete,
}

impl ActionType {
    /// The REST API's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Create => "create",
            ActionType::Start => "start",
            ActionType::Stop => "stop",
            ActionType::Reboot => "reboot",
            ActionType::Resize => "resize",
            ActionType::Rebuild => "rebuild",
            ActionType::Restore => "restore",
            ActionType::Backup => "backup",
            ActionType::Delete => "delete",
        }
    }
}

/// The state a server reaches when an action is done (every given field must hold).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// The phase it settles in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `spec.rebootRequestedAt` it has acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reboot_request: Option<String>,
    /// The `spec.rebuildRequestedAt` it has acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rebuild_request: Option<String>,
    /// The `spec.restore.requestedAt` whose restore has completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub restore_request: Option<String>,
    /// The `spec.backupRequestedAt` whose snapshot is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub backup_request: Option<String>,
    /// The plan it is built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub plan: Option<String>,
}

/// Where an action stands.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ActionState {
    #[default]
    #[serde(rename = "in-progress")]
    InProgress,
    #[serde(rename = "completed")]
    Completed,
    #[serde(rename = "errored")]
    Errored,
}

/// What the operator found.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VpsActionStatus {
    pub status: ActionState,
    /// When it completed or errored (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why it errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
