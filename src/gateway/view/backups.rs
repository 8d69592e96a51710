//! The REST view of a server's backups (KubeVirt snapshots with the backup labels).

use kube::ResourceExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::created_at;
use crate::api::{BACKUP_ID_LABEL, BACKUP_KIND_LABEL, BACKUP_SIZE_ANNOTATION};
use crate::kubevirt::VirtualMachineSnapshot;

/// A backup of a server (`GET /api/v1/servers/{id}/backups/`).
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct BackupView {
    pub id: i64,
    /// scheduled or on-demand.
    #[serde(rename = "type")]
    pub type_: String,
    /// in-progress, available or failed.
    pub status: &'static str,
    pub created_at: Option<String>,
    /// GiB (rounded up) a disk restored from it needs, where its volume snapshots say.
    pub size: Option<i64>,
}

/// A backup's id (its label), if it has one.
pub fn backup_id(s: &VirtualMachineSnapshot) -> Option<i64> {
    s.labels().get(BACKUP_ID_LABEL).and_then(|v| v.parse().ok())
}

/// The REST view of a backup; `None` without an id or while it is being deleted.
pub fn backup_view(s: &VirtualMachineSnapshot) -> Option<BackupView> {
    if s.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let st = s.status.as_ref();
    let status = if st.and_then(|st| st.ready_to_use) == Some(true) {
        "available"
    } else if st.and_then(|st| st.phase.as_deref()) == Some("Failed") {
        "failed"
    } else {
        "in-progress"
    };
    Some(BackupView {
        id: backup_id(s)?,
        type_: s.labels().get(BACKUP_KIND_LABEL).cloned().unwrap_or_else(|| "scheduled".into()),
        status,
        created_at: created_at(s),
        size: s
            .annotations()
            .get(BACKUP_SIZE_ANNOTATION)
            .and_then(|b| b.parse::<u128>().ok())
            .and_then(|b| i64::try_from(b.div_ceil(1 << 30)).ok()),
    })
}
