//! The parts of KubeVirt's, CDI's and the CSI snapshotter's objects this project reads and
//! writes, as small serde types (the operator builds VM specs as JSON; KubeVirt's admission
//! webhooks check them in the tests). Unknown fields are ignored when reading; writes are
//! server-side apply or patches, so nothing is lost.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The namespace KubeVirt's components and its `KubeVirt` object live in.
pub const KUBEVIRT_NAMESPACE: &str = "kubevirt";
/// The ConfigMap of the KubeVirt CA (key `ca-bundle`), by which virt-api and virt-handler
/// trust each other.
pub const CA_CONFIG_MAP: &str = "kubevirt-ca";
/// The Secret of virt-handler's serving certificate (`tls.crt`, `tls.key`).
pub const HANDLER_SERVER_SECRET: &str = "kubevirt-virt-handler-server-certs";

/// The `printableStatus` values KubeVirt gives a VirtualMachine.
pub const PRINTABLE_STATUSES: [&str; 19] = [
    "Stopped",
    "Provisioning",
    "Starting",
    "Running",
    "Paused",
    "Stopping",
    "Terminating",
    "CrashLoopBackOff",
    "Migrating",
    "Unknown",
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrorPvcNotFound",
    "DataVolumeError",
    "WaitingForVolumeBinding",
    "WaitingForReceiver",
    "ErrorDataVolumeNotFound",
    "Halted",
];

/// `printableStatus` values KubeVirt uses for a VM that cannot make progress.
pub const ERROR_STATUSES: [&str; 8] = [
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrorPvcNotFound",
    "ErrorDataVolumeNotFound",
    "DataVolumeError",
    "CrashLoopBackOff",
    "Unknown",
];

/// A condition as KubeVirt and CDI report them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `kubevirt.io/v1` VirtualMachine.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    namespaced,
    status = "VirtualMachineStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<Value>,
    #[serde(default)]
    pub template: Value,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub conditions: Vec<KvCondition>,
}

/// `kubevirt.io/v1` VirtualMachineInstance.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<VmiInterface>,
    #[serde(default)]
    pub conditions: Vec<KvCondition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmiInterface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

/// What the operator caches of a VirtualMachine: metadata and status. The spec (template,
/// cloud-init, disk templates: most of the object) is skipped while parsing, never built.
pub mod view {
    use super::{VirtualMachineInstanceStatus, VirtualMachineStatus};
    use kube::CustomResource;
    use serde::{Deserialize, Serialize};

    #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
    #[kube(
        group = "kubevirt.io",
        version = "v1",
        kind = "VirtualMachine",
        root = "VirtualMachineView",
        namespaced,
        status = "VirtualMachineStatus",
        schema = "disabled"
    )]
    pub struct SkippedVmSpec {}

    /// What the operator caches of a VirtualMachineInstance: metadata and status.
    #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
    #[kube(
        group = "kubevirt.io",
        version = "v1",
        kind = "VirtualMachineInstance",
        root = "VirtualMachineInstanceView",
        namespaced,
        status = "VirtualMachineInstanceStatus",
        schema = "disabled"
    )]
    pub struct SkippedVmiSpec {}
}
pub use view::{VirtualMachineInstanceView, VirtualMachineView};

/// `cdi.kubevirt.io/v1beta1` DataVolume.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    namespaced,
    status = "DataVolumeStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<KvCondition>,
}

/// `cdi.kubevirt.io/v1beta1` DataSource.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(group = "cdi.kubevirt.io", version = "v1beta1", kind = "DataSource", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    pub source: Value,
}

/// `snapshot.kubevirt.io/v1beta1` VirtualMachineSnapshot.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "snapshot.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineSnapshot",
    namespaced,
    status = "VirtualMachineSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotSpec {
    pub source: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_deadline: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The VirtualMachineSnapshotContent holding the volumes' snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_snapshot_content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
}

/// `snapshot.storage.k8s.io/v1` VolumeSnapshot.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest size a volume restored from it may have (a quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
}

/// Bytes of a quantity as the operator and the API server write sizes (`80Gi`, `1Ti`, `512Mi`,
/// plain bytes); `None` for any other form.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let units = [("Ki", 1u128 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50)];
    let (digits, factor) =
        units.iter().find_map(|(suffix, f)| q.strip_suffix(suffix).map(|d| (d, *f))).unwrap_or((q, 1));
    digits.parse::<u128>().ok().map(|n| n * factor)
}

/// How long KubeVirt may take over an on-demand backup the gateway asks for (the operator's
/// `--backup-deadline` applies to its own).
pub const ON_DEMAND_BACKUP_DEADLINE_SECS: u64 = 300;

/// The VirtualMachineSnapshot of backup `id` of server `server` in `ns`: scheduled, or
/// on demand when it answers `request` (a `spec.backupRequestedAt`).
pub fn backup_snapshot(ns: &str, server: &str, id: i64, request: Option<&str>, deadline_secs: u64) -> Value {
    use crate::api::{BACKUP_ID_LABEL, BACKUP_KIND_LABEL, BACKUP_REQUEST_ANNOTATION, SERVER_LABEL};
    let kind = if request.is_some() { "on-demand" } else { "scheduled" };
    serde_json::json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineSnapshot",
        "metadata": {
            "name": format!("{server}-backup-{id}"), "namespace": ns,
            "labels": {SERVER_LABEL: server, BACKUP_ID_LABEL: id.to_string(), BACKUP_KIND_LABEL: kind},
            "annotations": request.map(|r| serde_json::json!({BACKUP_REQUEST_ANNOTATION: r})).unwrap_or_else(|| serde_json::json!({})),
        },
        "spec": {
            "source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": server},
            "failureDeadline": format!("{}s", deadline_secs.max(1)),
        },
    })
}

/// `snapshot.kubevirt.io/v1beta1` VirtualMachineRestore: virt-controller restores a VM's
/// volumes from a VirtualMachineSnapshot.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "snapshot.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineRestore",
    namespaced,
    status = "VirtualMachineRestoreStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreSpec {
    pub target: Value,
    pub virtual_machine_snapshot_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<KvCondition>,
}

impl VirtualMachineRestore {
    /// Why it failed, when KubeVirt says it has (its `Failure` condition).
    pub fn failure(&self) -> Option<String> {
        let status = self.status.as_ref()?;
        let failed = status.conditions.iter().find(|c| c.type_ == "Failure" && c.status == "True")?;
        Some(failed.message.clone().or_else(|| failed.reason.clone()).unwrap_or_else(|| "Failure".into()))
    }
}

/// The VirtualMachineRestore `name` of server `server`'s VM from the snapshot of backup
/// `backup` (`<server>-backup-<id>`), in place: the disks keep their names, so the VM the
/// operator applies afterwards still names them.
pub fn vm_restore(ns: &str, server: &str, name: &str, backup: i64) -> Value {
    use crate::api::{BACKUP_ID_LABEL, SERVER_LABEL};
    serde_json::json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1",
        "kind": "VirtualMachineRestore",
        "metadata": {"name": name, "namespace": ns, "labels": {SERVER_LABEL: server, BACKUP_ID_LABEL: backup.to_string()}},
        "spec": {
            "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": server},
            "virtualMachineSnapshotName": format!("{server}-backup-{backup}"),
            "volumeRestorePolicy": "InPlace",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::quantity_bytes;

    #[test]
    fn sizes_compare_across_units() {
        assert_eq!(quantity_bytes("80Gi"), Some(80 << 30));
        assert!(quantity_bytes("160Gi") > quantity_bytes("80Gi"));
        assert_eq!(quantity_bytes("1Ti"), quantity_bytes("1024Gi"));
        assert_eq!(quantity_bytes("512"), Some(512));
        assert_eq!(quantity_bytes("1.5Gi"), None);
    }
}
