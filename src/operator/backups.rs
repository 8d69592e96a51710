//! Scheduled backups: a KubeVirt `VirtualMachineSnapshot` every interval while backups are
//! enabled, the newest N kept, `lastBackupTime` in status. Disabling stops new snapshots and
//! keeps the existing ones.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::{Context, Result};
use crate::api::{ConditionStatus, OPERATOR_MANAGER, Phase, SERVER_LABEL, VpsServer};
use crate::kubevirt::VirtualMachineSnapshot;

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

/// What the schedule found: when to look again, the newest backup, and the
/// `BackupsSucceeded` verdict.
pub struct Report {
    pub next: Duration,
    pub last_backup: Option<String>,
    pub verdict: Verdict,
}

/// Runs the backup schedule of one server (`None`: backups are off).
pub async fn reconcile(
    server: &VpsServer,
    ctx: &Context,
    ns: &str,
    name: &str,
    phase: Phase,
) -> Result<Option<Report>> {
    if !server.spec.backups_enabled {
        return Ok(None);
    }
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let list = api.list(&ListParams::default().labels(&format!("{SERVER_LABEL}={name}"))).await?;
    let seen: Vec<Seen> = list
        .items
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            Seen {
                name: s.name_any(),
                created: s.creation_timestamp().map(|t| t.0).unwrap_or_else(Timestamp::now),
                ready: st.ready_to_use == Some(true),
                failed: st.phase.as_deref() == Some("Failed"),
            }
        })
        .collect();
    let now = Timestamp::now();
    let can_snapshot = matches!(phase, Phase::Active | Phase::Stopped);
    let plan = plan(&seen, now, ctx.config.backup_interval, ctx.config.backup_keep, can_snapshot);
    if plan.take_now {
        let snapshot_name = format!("{name}-backup-{}", now.as_second());
        let snapshot = json!({
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot",
            "metadata": {"name": snapshot_name, "namespace": ns, "labels": {SERVER_LABEL: name}},
            "spec": {
                "source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": name},
                "failureDeadline": format!("{}s", ctx.config.backup_deadline.as_secs().max(1)),
            },
        });
        api.patch(&snapshot_name, &PatchParams::apply(OPERATOR_MANAGER), &Patch::Apply(&snapshot)).await?;
        tracing::info!(namespace = %ns, server = %name, snapshot = %snapshot_name, "Started a backup");
    }
    for old in &plan.prune {
        let _ = api.delete(old, &DeleteParams::background()).await;
    }
    let verdict = if plan.latest_failed {
        (ConditionStatus::False, "BackupFailed".to_string(), "The newest backup snapshot failed".to_string())
    } else if plan.last_backup.is_some() {
        (ConditionStatus::True, "BackupSucceeded".to_string(), "The newest backup snapshot is ready".to_string())
    } else {
        (ConditionStatus::Unknown, "BackupPending".to_string(), "No backup has been taken yet".to_string())
    };
    // Look again when the next one is due, or soon while one is in flight.
    let in_flight = plan.take_now || seen.iter().any(|s| !s.ready && !s.failed);
    Ok(Some(Report {
        next: if in_flight { Duration::from_secs(2).min(plan.next_in) } else { plan.next_in },
        last_backup: plan.last_backup.map(|t| t.to_string()),
        verdict,
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
