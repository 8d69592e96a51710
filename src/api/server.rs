//! `VpsServer`: one virtual private server, reconciled by the operator into a KubeVirt
//! `VirtualMachine` and served by the gateway as a REST server object.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::catalog::{VpsImageSpec, VpsLocationSpec, VpsPlanSpec};
use super::conditions::{Condition, conditions_schema};

/// What a customer ordered and what they want it to do.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsServer",
    doc = "A virtual private server: what a customer ordered (plan, OS image, location, hostname, SSH key, backups) and its desired power state. The vps-operator makes it a KubeVirt VirtualMachine and reports its phase, addresses and conditions in status; the REST gateway serves it as /api/v1/servers/{status.id}/.",
    namespaced,
    shortname = "vps",
    category = "hosting",
    status = "VpsServerStatus",
    printcolumn(name = "ID", type_ = "integer", json_path = ".status.id"),
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "IP", type_ = "string", json_path = ".status.ipAddress"),
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".status.ipv6Address", priority = 1)
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.plan == oldSelf.plan || (has(self.powerState) && self.powerState == 'Stopped')",
    "message": "plan can change only while the server is stopped (powerState: Stopped): a resize"
}, {
    "rule": "self.os == oldSelf.os || (has(self.rebuildRequestedAt) && (!has(oldSelf.rebuildRequestedAt) || self.rebuildRequestedAt != oldSelf.rebuildRequestedAt))",
    "message": "os can change only with a new rebuildRequestedAt: a rebuild"
}]))]
pub struct VpsServerSpec {
    /// Display name: 1–63 letters, digits and hyphens, not starting or ending with a hyphen.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::SERVER_NAME_PATTERN))]
    pub name: String,
    /// Name of the `VpsPlan`. Changes only while the server is stopped (a resize): CPU and
    /// memory follow the new plan, the root disk grows to its size (a plan with a smaller
    /// disk is refused: disks only grow).
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub plan: String,
    /// Name of the `VpsImage` the root disk is cloned from. Changes only with a new
    /// `rebuildRequestedAt` (a rebuild).
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub os: String,
    /// Name (code) of the `VpsLocation`. Cannot be changed.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "location is immutable"}]))]
    pub location: String,
    /// Fully qualified host name (RFC 1123) given to the guest by cloud-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = super::FQDN_PATTERN)
    )]
    pub hostname: Option<String>,
    /// Name of a `VpsSshKey` in the same namespace, installed for the default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ssh_key: Option<String>,
    /// Take scheduled snapshots of the server.
    #[serde(default)]
    pub backups_enabled: bool,
    /// Whether the server should be running.
    #[serde(default)]
    pub power_state: PowerState,
    /// Set to a new value (a timestamp, by convention) to ask for one reboot, of the kind
    /// `rebootType` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub reboot_requested_at: Option<String>,
    /// How the next reboot is done: `Soft` (the default) asks the guest (KubeVirt's
    /// `softreboot`: guest agent or ACPI), `Hard` resets the machine (KubeVirt's `reset`).
    /// Neither replaces the instance: its pod, node and addresses stay. When virt-api cannot
    /// reach the host, the operator restarts the instance instead (Warning `RebootFallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_type: Option<RebootType>,
    /// Set to a new value (a timestamp, by convention), with `powerState: Stopped`, to stop the
    /// server at once: its instance's grace period becomes 0 (KubeVirt's `stop` with
    /// `gracePeriod: 0`), so a guest that does not shut down is not waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub force_stop_requested_at: Option<String>,
    /// Set to a new value (a timestamp, by convention) to take one backup now, besides the
    /// schedule (kept until deleted: the schedule's retention does not count it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub backup_requested_at: Option<String>,
    /// Set to a new value (a timestamp, by convention) to rebuild the server once from `os`:
    /// its root disk replaced by a fresh copy of the image, cloud-init run again on it; the
    /// server keeps its id, name and backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rebuild_requested_at: Option<String>,
    /// Set (with a new `requestedAt`) to restore the server's disks once from one of its
    /// backups through a KubeVirt VirtualMachineRestore: the server is halted first, and runs
    /// again afterwards if it should.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRequest>,
    /// An administrator's hold (e.g. an unpaid account): the server is halted while set.
    #[serde(default)]
    pub suspended: bool,
    /// Refuse to delete the server while set (the REST API's delete protection).
    #[serde(default)]
    pub delete_protection: bool,
}

impl VpsServer {
    /// The server's integer id in the REST API: what the operator recorded in its status,
    /// else (before the operator has looked at it) its [`super::SERVER_ID_LABEL`] label. A
    /// label never overrides the status.
    pub fn id(&self) -> Option<i64> {
        self.status.as_ref().and_then(|s| s.id).or_else(|| self.label_id())
    }

    /// The id its [`super::SERVER_ID_LABEL`] label claims (set by the gateway, which
    /// allocated it, or by a user, who may not).
    pub fn label_id(&self) -> Option<i64> {
        self.metadata.labels.as_ref().and_then(|l| l.get(super::SERVER_ID_LABEL)).and_then(|v| v.parse().ok())
    }
}

/// One restore asked for: the backup (its id, as the REST API shows it) and when.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRequest {
    /// The id of one of the server's backups (its VirtualMachineSnapshot's
    /// `vps.org/backup-id` label).
    #[schemars(range(min = 1))]
    pub backup_id: i64,
    /// A new value (a timestamp, by convention) for each restore.
    #[schemars(length(min = 1, max = 64))]
    pub requested_at: String,
}

/// Where the last restore asked for stands.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The `spec.restore.requestedAt` it answers.
    pub requested_at: String,
    pub backup_id: i64,
    /// The KubeVirt VirtualMachineRestore doing it (none when it could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: RestoreState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The stages of a restore.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RestoreState {
    InProgress,
    Completed,
    Failed,
}

/// The desired power state of a server.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PowerState {
    #[default]
    Running,
    Stopped,
}

/// How a server reboots.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RebootType {
    #[default]
    Soft,
    Hard,
}

/// What the operator observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VpsServerStatus {
    /// The server's integer id in the REST API; never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The server's IPv4 address: its own for its life on a provider network (from its
    /// `VpsAddress`), else the one its instance reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// The server's IPv6 address, as the IPv4 one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// The `VpsAddress` holding the server's addresses, on a provider network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_claim: Option<String>,
    /// The fixed MAC address of the server's interface, on a provider network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Name of the KubeVirt VirtualMachine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    /// When the newest backup snapshot was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<String>,
    /// The `spec.rebootRequestedAt` that was last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_reboot_request: Option<String>,
    /// UID of the VM instance a reboot replaced; `Rebooting` lasts until another one is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_from_instance: Option<String>,
    /// The `spec.forceStopRequestedAt` that was last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_force_stop_request: Option<String>,
    /// The `spec.backupRequestedAt` that was last acted on (its snapshot made), and where
    /// that snapshot stands: `InProgress`, `Ready` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_backup_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_request_state: Option<String>,
    /// The `spec.rebuildRequestedAt` that was last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rebuild_request: Option<String>,
    /// UID of the root disk a rebuild replaces (empty when the server had none yet);
    /// `Rebuilding` lasts until the server is active (or stopped) on a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_from_volume: Option<String>,
    /// The last restore asked for (`spec.restore`) and where it stands; `Restoring` lasts
    /// while it is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the server is built from: the plan, image, location and SSH key it names, as
    /// they were when it was created. Later changes to the catalog (an image retired, a key
    /// deleted) leave it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolved>,
    /// UID of the VirtualMachine the operator made: a VM that is missing or has another UID
    /// is lost, and is not silently made again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_uid: Option<String>,
    /// UID of the root disk's DataVolume (a new one would be an empty disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume_uid: Option<String>,
    /// `Ready` and friends, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The catalog entries and key a server was built from, each with the name it had.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub plan: Named<VpsPlanSpec>,
    pub image: Named<VpsImageSpec>,
    pub location: Named<VpsLocationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<ResolvedKey>,
}

impl Resolved {
    /// What a server naming these catalog entries (and this key) resolves to.
    pub fn of(
        plan: &super::VpsPlan,
        image: &super::VpsImage,
        location: &super::VpsLocation,
        ssh_key: Option<ResolvedKey>,
    ) -> Resolved {
        let named = |meta: &kube::api::ObjectMeta| meta.name.clone().unwrap_or_default();
        Resolved {
            plan: Named { name: named(&plan.metadata), spec: plan.spec.clone() },
            image: Named { name: named(&image.metadata), spec: image.spec.clone() },
            location: Named { name: named(&location.metadata), spec: location.spec.clone() },
            ssh_key,
        }
    }
}

/// A catalog entry's name and spec.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub spec: T,
}

/// An SSH key a server was built with.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedKey {
    /// The `VpsSshKey` it came from.
    pub name: String,
    /// The key as one `authorized_keys` line.
    pub public_key: String,
}

/// A server's lifecycle phase; its lowercase form is the REST API's `status`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum Phase {
    Provisioning,
    Active,
    Starting,
    Stopping,
    Stopped,
    Rebooting,
    Rebuilding,
    Restoring,
    Suspended,
    Error,
}

impl Phase {
    /// Every phase, in the order the REST API documents them.
    pub const ALL: [Phase; 10] = [
        Phase::Provisioning,
        Phase::Active,
        Phase::Starting,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Rebooting,
        Phase::Rebuilding,
        Phase::Restoring,
        Phase::Suspended,
        Phase::Error,
    ];

    /// The REST API's lowercase status string.
    pub fn as_api_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "provisioning",
            Phase::Active => "active",
            Phase::Starting => "starting",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Rebooting => "rebooting",
            Phase::Rebuilding => "rebuilding",
            Phase::Restoring => "restoring",
            Phase::Suspended => "suspended",
            Phase::Error => "error",
        }
    }

    /// Parses the REST API's lowercase status string.
    pub fn from_api_str(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_api_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_status_strings_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_api_str(phase.as_api_str()), Some(phase));
        }
        assert_eq!(Phase::from_api_str("Active"), None);
        assert_eq!(Phase::from_api_str("running"), None);
    }
}
