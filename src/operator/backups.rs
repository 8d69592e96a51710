//! Backups: a KubeVirt `VirtualMachineSnapshot` every interval while backups are enabled,
//! the newest N of those kept, and one more whenever `spec.backupRequestedAt` changes (an
//! on-demand backup, kept until it is deleted); each with an integer id. `lastBackupTime`
//! and where the last requested backup stands go in the status. Disabling stops new
//! scheduled snapshots and keeps the existing ones. A ready backup gets its size once
//! ([`BACKUP_SIZE_ANNOTATION`]: what its VolumeSnapshots say a restored disk needs).

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};

use super::{Context, Result};
use crate::api::{
    BACKUP_KIND_LABEL, BACKUP_REQUEST_ANNOTATION, BACKUP_SIZE_ANNOTATION, ConditionStatus, OPERATOR_MANAGER, Phase,
    SERVER_LABEL, VpsServer, VpsServerStatus,
};
use crate::ids::IdKind;
use crate::kubevirt::{VirtualMachineSnapshot, VolumeSnapshot, backup_snapshot, quantity_bytes};

/// The `BackupsSucceeded` condition's status, CamelCase reason and message.
pub type Verdict = (ConditionStatus, String, String);

/// What to do about backups now, from the snapshots that exist (pure; unit-tested).
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub take_now: bool,
    /// The newest snapshot failed (KubeVirt gave up at its deadline).
    pub latest_failed: bool,
    /// Names of ready snapshots beyond the newest `keep`.
    pub prune: Vec<String>,
    pub last_backup: Option<Timestamp>,
    /// How long until the next one is due.
    pub next_in: Duration,
}

/// A snapshot as the planner sees it: name, creation time, whether it finished, whether it failed.
pub struct Seen {
    pub name: String,
    pub created: Timestamp,
    pub ready: bool,
    pub failed: bool,
}

pub fn plan(snapshots: &[Seen], now: Timestamp, interval: Duration, keep: usize, can_snapshot: bool) -> Plan {
    let mut ready: Vec<&Seen> = snapshots.iter().filter(|s| s.ready).collect();
    ready.sort_by_key(|s| std::cmp::Reverse(s.created));
    let in_flight = snapshots.iter().any(|s| !s.ready && !s.failed);
    let newest_attempt = snapshots.iter().filter(|s| !s.failed || s.ready).map(|s| s.created).max();
    let since = newest_attempt.map(|t| now.duration_since(t).unsigned_abs());
    let due = since.is_none_or(|d| d >= interval);
    let newest = snapshots.iter().max_by_key(|s| s.created);
    let mut failed: Vec<&Seen> = snapshots.iter().filter(|s| s.failed && !s.ready).collect();
    failed.sort_by_key(|s| std::cmp::Reverse(s.created));
    Plan {
        take_now: due && !in_flight && can_snapshot,
        latest_failed: newest.is_some_and(|s| s.failed && !s.ready),
        // Keep every ready one up to `keep`, and of the failed ones only the newest (to report).
        prune: ready.iter().skip(keep).chain(failed.iter().skip(1)).map(|s| s.name.clone()).collect(),
        last_backup: ready.first().map(|s| s.created),
        next_in: match since {
            Some(d) if d < interval => interval - d,
            _ => interval,
        },
    }
}

/// What the backups of a server look like now: when to look again, the newest backup, the
/// `BackupsSucceeded` verdict (while the schedule is on) and the last requested backup.
pub struct Report {
    pub next: Duration,
    pub last_backup: Option<String>,
    pub verdict: Option<Verdict>,
    /// The `spec.backupRequestedAt` acted on, and its snapshot's state (`InProgress`,
    /// `Ready`, `Failed`).
    pub observed_request: Option<String>,
    pub request_state: Option<String>,
}

/// A snapshot's state as the status and the REST API tell it.
fn state_of(s: &VirtualMachineSnapshot) -> &'static str {
    let st = s.status.as_ref();
    if st.and_then(|st| st.ready_to_use) == Some(true) {
        "Ready"
    } else if st.and_then(|st| st.phase.as_deref()) == Some("Failed") {
        "Failed"
    } else {
        "InProgress"
    }
}

/// Makes a snapshot of the server's VM, with a new backup id.
async fn take(
    ctx: &Context,
    api: &Api<VirtualMachineSnapshot>,
    ns: &str,
    name: &str,
    request: Option<&str>,
) -> Result<()> {
    let id = ctx.ids.allocate(IdKind::Backup).await?;
    let snapshot = backup_snapshot(ns, name, id, request, ctx.config.backup_deadline.as_secs());
    let snapshot_name = format!("{name}-backup-{id}");
    api.patch(&snapshot_name, &PatchParams::apply(OPERATOR_MANAGER), &Patch::Apply(&snapshot)).await?;
    tracing::info!(namespace = %ns, server = %name, snapshot = %snapshot_name, on_demand = request.is_some(), "Started a backup");
    Ok(())
}

/// The bytes a disk restored from `snapshot` needs: the sum of its VolumeSnapshots'
/// `restoreSize` (found through its VirtualMachineSnapshotContent); `None` while any is unknown.
async fn restore_size(ctx: &Context, ns: &str, snapshot: &VirtualMachineSnapshot) -> Result<Option<u128>> {
    let Some(content) = snapshot.status.as_ref().and_then(|s| s.virtual_machine_snapshot_content_name.as_deref())
    else {
        return Ok(None);
    };
    let resource = ApiResource {
        group: "snapshot.kubevirt.io".into(),
        version: "v1beta1".into(),
        api_version: "snapshot.kubevirt.io/v1beta1".into(),
        kind: "VirtualMachineSnapshotContent".into(),
        plural: "virtualmachinesnapshotcontents".into(),
    };
    let contents: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let Some(content) = contents.get_opt(content).await? else { return Ok(None) };
    let names: Vec<String> = content.data["status"]["volumeSnapshotStatus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["volumeSnapshotName"].as_str().map(String::from))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let volumes: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let mut total = 0;
    for name in names {
        let size = volumes.get_opt(&name).await?.and_then(|v| v.status).and_then(|s| s.restore_size);
        let Some(bytes) = size.as_deref().and_then(quantity_bytes) else { return Ok(None) };
        total += bytes;
    }
    Ok(Some(total))
}

/// Gives each ready backup of `list` without a size its size, where its volumes tell it.
async fn record_sizes(
    ctx: &Context,
    api: &Api<VirtualMachineSnapshot>,
    ns: &str,
    list: &[VirtualMachineSnapshot],
) -> Result<()> {
    let without_size =
        list.iter().filter(|s| state_of(s) == "Ready" && !s.annotations().contains_key(BACKUP_SIZE_ANNOTATION));
    for snapshot in without_size {
        if let Some(bytes) = restore_size(ctx, ns, snapshot).await? {
            let patch = serde_json::json!({"metadata": {"annotations": {BACKUP_SIZE_ANNOTATION: bytes.to_string()}}});
            let pp = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
            api.patch(&snapshot.name_any(), &pp, &Patch::Merge(&patch)).await?;
        }
    }
    Ok(())
}

/// Runs the backups of one server (`None`: the schedule is off and no request is open).
pub async fn reconcile(
    server: &VpsServer,
    ctx: &Context,
    ns: &str,
    name: &str,
    phase: Phase,
    old: &VpsServerStatus,
) -> Result<Option<Report>> {
    let requested = server.spec.backup_requested_at.as_deref();
    let new_request = requested.filter(|r| old.observed_backup_request.as_deref() != Some(*r));
    let open_request = old.backup_request_state.as_deref() == Some("InProgress");
    if !server.spec.backups_enabled && new_request.is_none() && !open_request {
        return Ok(None);
    }
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let list = api.list(&ListParams::default().labels(&format!("{SERVER_LABEL}={name}"))).await?;
    let scheduled =
        |s: &&VirtualMachineSnapshot| s.labels().get(BACKUP_KIND_LABEL).map(String::as_str) != Some("on-demand");
    let seen: Vec<Seen> = list
        .items
        .iter()
        .filter(scheduled)
        .map(|s| Seen {
            name: s.name_any(),
            created: s.creation_timestamp().map(|t| t.0).unwrap_or_else(Timestamp::now),
            ready: state_of(s) == "Ready",
            failed: state_of(s) == "Failed",
        })
        .collect();
    let now = Timestamp::now();
    let can_snapshot = matches!(phase, Phase::Active | Phase::Stopped);
    let plan = plan(&seen, now, ctx.config.backup_interval, ctx.config.backup_keep, can_snapshot);
    let enabled = server.spec.backups_enabled;
    if enabled && plan.take_now {
        take(ctx, &api, ns, name, None).await?;
    }
    if enabled {
        for old in &plan.prune {
            let _ = api.delete(old, &DeleteParams::background()).await;
        }
    }
    // A size is for the customer's eyes: not knowing it stops nothing (and it waits for the
    // schedule's own work).
    let kept: Vec<_> = list.items.iter().filter(|s| !plan.prune.contains(&s.name_any())).cloned().collect();
    if let Err(e) = record_sizes(ctx, &api, ns, &kept).await {
        tracing::warn!(namespace = %ns, server = %name, "Could not record the size of a backup: {e}");
    }
    // An on-demand backup: taken once the server can be snapshotted.
    let (mut observed_request, mut request_state) =
        (old.observed_backup_request.clone(), old.backup_request_state.clone());
    let answering = |request: &str| {
        list.items.iter().find(|s| s.annotations().get(BACKUP_REQUEST_ANNOTATION).map(String::as_str) == Some(request))
    };
    if let Some(request) = new_request {
        match answering(request) {
            // The gateway made it before it asked (so that its answer has the backup's id).
            Some(made) => {
                (observed_request, request_state) = (Some(request.to_string()), Some(state_of(made).to_string()))
            }
            None if can_snapshot => {
                take(ctx, &api, ns, name, Some(request)).await?;
                (observed_request, request_state) = (Some(request.to_string()), Some("InProgress".to_string()));
            }
            None => {}
        }
    } else if let Some(request) = &observed_request {
        let answer = list.items.iter().find(|s| s.annotations().get(BACKUP_REQUEST_ANNOTATION) == Some(request));
        if let Some(snapshot) = answer {
            request_state = Some(state_of(snapshot).to_string());
        }
    }
    let newest_ready =
        list.items.iter().filter(|s| state_of(s) == "Ready").filter_map(|s| s.creation_timestamp().map(|t| t.0)).max();
    let verdict = if plan.latest_failed {
        (ConditionStatus::False, "BackupFailed".to_string(), "The newest backup snapshot failed".to_string())
    } else if plan.last_backup.is_some() {
        (ConditionStatus::True, "BackupSucceeded".to_string(), "The newest backup snapshot is ready".to_string())
    } else {
        (ConditionStatus::Unknown, "BackupPending".to_string(), "No backup has been taken yet".to_string())
    };
    // Look again when the next one is due, or soon while one is in flight (or a request
    // waits for the server to be snapshotted).
    let in_flight = (enabled && plan.take_now)
        || list.items.iter().any(|s| state_of(s) == "InProgress")
        || request_state.as_deref() == Some("InProgress")
        || (new_request.is_some() && !can_snapshot);
    let next = if enabled { plan.next_in } else { Duration::from_secs(86_400) };
    Ok(Some(Report {
        next: if in_flight { Duration::from_secs(2).min(next) } else { next },
        last_backup: newest_ready.map(|t| t.to_string()),
        verdict: enabled.then_some(verdict),
        observed_request,
        request_state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, secs_ago: i64, ready: bool, failed: bool) -> Seen {
        Seen { name: name.into(), created: Timestamp::from_second(1_000_000 - secs_ago).unwrap(), ready, failed }
    }

    const NOW: i64 = 1_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn first_backup_is_due_at_once() {
        let p = plan(&[], Timestamp::from_second(NOW).unwrap(), DAY, 7, true);
        assert!(p.take_now);
        assert_eq!(p.last_backup, None);
    }

    #[test]
    fn not_due_within_the_interval_and_not_while_one_runs() {
        let now = Timestamp::from_second(NOW).unwrap();
        let p = plan(&[seen("a", 3600, true, false)], now, DAY, 7, true);
        assert!(!p.take_now);
        assert_eq!(p.next_in, DAY - Duration::from_secs(3600));
        let p = plan(&[seen("a", 90_000, true, false), seen("b", 10, false, false)], now, DAY, 7, true);
        assert!(!p.take_now, "one is in flight");
        let p = plan(&[seen("a", 90_000, true, false)], now, DAY, 7, false);
        assert!(!p.take_now, "not while provisioning or in error");
        let p = plan(&[seen("a", 90_000, true, false)], now, DAY, 7, true);
        assert!(p.take_now);
    }

    #[test]
    fn a_failed_newest_snapshot_is_reported_and_old_failures_pruned() {
        let now = Timestamp::from_second(NOW).unwrap();
        let snaps = [seen("ok", 300, true, false), seen("f1", 200, false, true), seen("f2", 100, false, true)];
        let p = plan(&snaps, now, DAY, 7, true);
        assert!(p.latest_failed);
        assert_eq!(p.prune, ["f1"]);
        assert!(!plan(&snaps[..1], now, DAY, 7, true).latest_failed);
    }

    #[test]
    fn keeps_the_newest_n() {
        let snaps: Vec<Seen> = (0..10).map(|i| seen(&format!("s{i}"), i * 100, true, false)).collect();
        let p = plan(&snaps, Timestamp::from_second(NOW).unwrap(), DAY, 7, true);
        assert_eq!(p.prune, ["s7", "s8", "s9"]);
        assert_eq!(p.last_backup, Some(Timestamp::from_second(NOW).unwrap()));
    }
}
