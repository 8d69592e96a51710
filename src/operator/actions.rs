//! Tracked actions, completed: after each reconcile, every action in progress on the server
//! is compared with the status just computed ([`verdict`], pure). Done is `completed`; a
//! server in `error`, or a later power action that supersedes it, is `errored` with the
//! reason. A delete completes when the teardown is done. Finished actions are pruned after
//! the configured retention.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::phase::Observation;
use super::{Context, Result};
use crate::api::{ActionState, ActionType, OPERATOR_MANAGER, Phase, VpsAction, VpsServerStatus};

/// The actions in progress on server `name` of namespace `ns`, oldest first.
fn open(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<VpsAction>> {
    let mut open: Vec<Arc<VpsAction>> = ctx
        .actions
        .state()
        .into_iter()
        .filter(|a| {
            a.namespace().as_deref() == Some(ns)
                && a.spec.server == name
                && a.status.as_ref().is_none_or(|s| s.status == ActionState::InProgress)
        })
        .collect();
    open.sort_by_key(|a| a.spec.id);
    open
}

/// Start, stop, reboot and create decide the power state: a later one supersedes them.
fn decides_power(t: ActionType) -> bool {
    matches!(t, ActionType::Create | ActionType::Start | ActionType::Stop | ActionType::Reboot)
}

/// What becomes of an action in progress, given the server's status and observation, and
/// the newest power action of the server (`None`: it stays in progress).
pub fn verdict(
    action: &VpsAction,
    status: &VpsServerStatus,
    obs: &Observation,
    newest_power: Option<i64>,
) -> Option<(ActionState, Option<String>)> {
    let spec = &action.spec;
    if spec.type_ == ActionType::Delete {
        return None; // the teardown completes it
    }
    if decides_power(spec.type_)
        && let Some(newer) = newest_power.filter(|n| *n > spec.id)
    {
        return Some((ActionState::Errored, Some(format!("Superseded by action {newer}"))));
    }
    if status.phase == Some(Phase::Error) {
        return Some((ActionState::Errored, Some(format!("{}: {}", obs.reason, obs.message))));
    }
    let e = &spec.expect;
    let done = e.phase.is_none_or(|p| status.phase == Some(p))
        && e.reboot_request.as_ref().is_none_or(|r| status.observed_reboot_request.as_ref() == Some(r))
        && e.rebuild_request.as_ref().is_none_or(|r| {
            status.observed_rebuild_request.as_ref() == Some(r) && status.rebuild_from_volume.is_none()
        })
        && e.plan.as_ref().is_none_or(|p| status.resolved.as_ref().is_some_and(|r| r.plan.name == *p))
        && e.backup_request.as_ref().is_none_or(|r| {
            status.observed_backup_request.as_ref() == Some(r)
                && status.backup_request_state.as_deref() == Some("Ready")
        });
    let restore = e.restore_request.as_ref().map(|r| status.restore.as_ref().filter(|s| s.requested_at == *r));
    let done = done && restore.is_none_or(|s| s.is_some_and(|s| s.state == crate::api::RestoreState::Completed));
    if let Some(Some(failed)) = restore.filter(|s| s.is_some_and(|s| s.state == crate::api::RestoreState::Failed)) {
        let why = failed.message.clone().unwrap_or_else(|| "unknown".into());
        return Some((ActionState::Errored, Some(format!("The restore failed: {why}"))));
    }
    let backup_failed = e.backup_request.as_ref().is_some_and(|r| {
        status.observed_backup_request.as_ref() == Some(r) && status.backup_request_state.as_deref() == Some("Failed")
    });
    if backup_failed {
        return Some((ActionState::Errored, Some("The backup snapshot failed".into())));
    }
    done.then_some((ActionState::Completed, None))
}

async fn finish(ctx: &Context, action: &VpsAction, state: ActionState, error: Option<String>) -> Result<()> {
    let ns = action.namespace().unwrap_or_default();
    let status =
        json!({"status": {"status": state, "completedAt": jiff::Timestamp::now().to_string(), "error": error}});
    let pp = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    match Api::<VpsAction>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&action.name_any(), &pp, &Patch::Merge(&status))
        .await
    {
        Ok(_) => {
            if action.spec.type_ == ActionType::Create
                && state == ActionState::Completed
                && let Some(created) = action.creation_timestamp()
            {
                let took = jiff::Timestamp::now().duration_since(created.0).as_secs_f64().max(0.0);
                ctx.metrics.provisioning.observe(took);
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()), // pruned or gone with its server
        Err(e) => Err(e.into()),
    }
}

/// Completes or errors the actions in progress on a server from its new status.
pub async fn settle(ctx: &Context, ns: &str, name: &str, status: &VpsServerStatus, obs: &Observation) -> Result<()> {
    let open = open(ctx, ns, name);
    let newest_power = open.iter().filter(|a| decides_power(a.spec.type_)).map(|a| a.spec.id).max();
    for action in &open {
        if let Some((state, error)) = verdict(action, status, obs, newest_power) {
            finish(ctx, action, state, error).await?;
        }
    }
    Ok(())
}

/// The server is gone: its delete actions are complete, the rest of what is open errored.
pub async fn settle_teardown(ctx: &Context, ns: &str, name: &str) -> Result<()> {
    for action in open(ctx, ns, name) {
        match action.spec.type_ {
            ActionType::Delete => finish(ctx, &action, ActionState::Completed, None).await?,
            _ => finish(ctx, &action, ActionState::Errored, Some("The server was deleted".into())).await?,
        }
    }
    Ok(())
}

/// Deletes the finished actions older than `retention`, every `every`, forever.
pub async fn prune(ctx: Arc<Context>, retention: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::try_from(retention).unwrap_or_default();
        for action in ctx.actions.state() {
            let Some(finished) = action.status.as_ref().filter(|s| s.status != ActionState::InProgress) else {
                continue;
            };
            let old = finished
                .completed_at
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t < cutoff);
            if old {
                let api: Api<VpsAction> = Api::namespaced(ctx.client.clone(), &action.namespace().unwrap_or_default());
                if let Err(e) = api.delete(&action.name_any(), &DeleteParams::background()).await {
                    tracing::debug!(action = %action.name_any(), "Could not prune an action: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Expectation, VpsActionSpec};

    fn action(id: i64, type_: ActionType, expect: Expectation) -> VpsAction {
        let spec = VpsActionSpec {
            id,
            type_,
            server: "srv-7".into(),
            server_id: 7,
            started_at: "2026-12-01T10:00:00Z".into(),
            expect,
        };
        VpsAction::new(&format!("act-{id}"), spec)
    }

    fn status(phase: Phase) -> VpsServerStatus {
        VpsServerStatus { phase: Some(phase), ..Default::default() }
    }

    fn obs(reason: &str) -> Observation {
        Observation { phase: Phase::Error, reason: reason.into(), message: "m".into(), ipv4: None, ipv6: None }
    }

    #[test]
    fn an_action_completes_when_the_server_shows_what_was_asked() {
        let at = |p| Expectation { phase: Some(p), ..Default::default() };
        let o = obs("Running");
        let start = action(3, ActionType::Start, at(Phase::Active));
        assert_eq!(verdict(&start, &status(Phase::Starting), &o, Some(3)), None, "not yet");
        assert_eq!(verdict(&start, &status(Phase::Active), &o, Some(3)), Some((ActionState::Completed, None)));
        let superseded = verdict(&start, &status(Phase::Stopping), &o, Some(4));
        assert_eq!(superseded, Some((ActionState::Errored, Some("Superseded by action 4".into()))));
        let failed = verdict(&start, &status(Phase::Error), &obs("ErrorUnschedulable"), Some(3));
        assert_eq!(failed, Some((ActionState::Errored, Some("ErrorUnschedulable: m".into()))));

        let reboot =
            action(5, ActionType::Reboot, Expectation { reboot_request: Some("t1".into()), ..at(Phase::Active) });
        assert_eq!(verdict(&reboot, &status(Phase::Active), &o, Some(5)), None, "the reboot not acted on yet");
        let mut rebooted = status(Phase::Active);
        rebooted.observed_reboot_request = Some("t1".into());
        assert_eq!(verdict(&reboot, &rebooted, &o, Some(5)).map(|v| v.0), Some(ActionState::Completed));

        let rebuild =
            action(6, ActionType::Rebuild, Expectation { rebuild_request: Some("t2".into()), ..at(Phase::Active) });
        let mut rebuilding = status(Phase::Active);
        rebuilding.observed_rebuild_request = Some("t2".into());
        rebuilding.rebuild_from_volume = Some("old".into());
        assert_eq!(verdict(&rebuild, &rebuilding, &o, None), None, "the disk not replaced yet");
        rebuilding.rebuild_from_volume = None;
        assert_eq!(
            verdict(&rebuild, &rebuilding, &o, Some(9)).map(|v| v.0),
            Some(ActionState::Completed),
            "not a power action"
        );

        let restore =
            action(7, ActionType::Restore, Expectation { restore_request: Some("t3".into()), ..at(Phase::Active) });
        let restored = |state, requested_at: &str| VpsServerStatus {
            restore: Some(crate::api::RestoreStatus {
                requested_at: requested_at.into(),
                backup_id: 2,
                name: None,
                state,
                message: Some("snapshot gone".into()),
            }),
            ..status(Phase::Active)
        };
        use crate::api::RestoreState::{Completed, Failed, InProgress};
        assert_eq!(verdict(&restore, &status(Phase::Active), &o, None), None, "not taken up yet");
        assert_eq!(verdict(&restore, &restored(Completed, "t0"), &o, None), None, "an earlier restore");
        assert_eq!(verdict(&restore, &restored(InProgress, "t3"), &o, None), None);
        assert_eq!(verdict(&restore, &restored(Completed, "t3"), &o, None), Some((ActionState::Completed, None)));
        assert_eq!(
            verdict(&restore, &restored(Failed, "t3"), &o, None),
            Some((ActionState::Errored, Some("The restore failed: snapshot gone".into())))
        );

        let resize =
            action(8, ActionType::Resize, Expectation { plan: Some("performance".into()), ..Default::default() });
        assert_eq!(verdict(&resize, &status(Phase::Stopped), &o, None), None, "no plan resolved yet");
        assert_eq!(
            verdict(&action(9, ActionType::Delete, Expectation::default()), &status(Phase::Active), &o, None),
            None
        );
    }
}
