//! A restore: a new `spec.restore` (a backup's id and `requestedAt`) brings the server's disks
//! back to that backup. The VM is halted; once no instance runs, a KubeVirt
//! VirtualMachineRestore (in place: the disks keep their names) is created and
//! virt-controller does the rest: it replaces the root claim by one restored from the backup's
//! VolumeSnapshot and the VM's spec by the snapshot's. When it is complete the operator applies
//! its own VM again (the current plan, image and key), and the server runs again if it should.
//! `Restoring` lasts while the restore is in progress; a backup that is missing or not ready,
//! or a restore KubeVirt fails, ends it as `Failed` with the reason.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::phase::Observation;
use super::reconcile::publish;
use super::{Context, Result};
use crate::api::{OPERATOR_MANAGER, Phase, RestoreState, RestoreStatus, VpsServer, VpsServerStatus};
use crate::kubevirt::{VirtualMachineRestore, VirtualMachineSnapshot, vm_restore};

/// Where a server's restore stands after this step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Restore {
    /// What the status records (the last restore asked for).
    pub status: Option<RestoreStatus>,
    /// KubeVirt completed it in this step: the operator's VM is applied again.
    pub finished_now: bool,
}

impl Restore {
    fn in_progress(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.state == RestoreState::InProgress)
    }

    /// The VM stays halted while the restore lasts.
    pub fn halts(&self) -> bool {
        self.in_progress()
    }

    /// The phase while it lasts: `Restoring`, unless something keeps the server from being
    /// built at all.
    pub fn observe(&self, obs: Observation) -> Observation {
        if self.in_progress() && obs.phase != Phase::Error {
            return Observation::new(Phase::Restoring, "Restoring", MESSAGE);
        }
        obs
    }
}

const MESSAGE: &str = "The server's disks are being restored from a backup";

/// The VirtualMachineRestore's name for one request: the server's name and a short hash of
/// `requestedAt` (FNV-1a), so each request has its own.
pub fn restore_name(server: &str, requested_at: &str) -> String {
    let hash = requested_at.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{server}-restore-{hash:08x}")
}

/// Takes a server's restore one step; `instance_runs`: a VMI of the server exists.
pub async fn step(server: &VpsServer, ctx: &Context, old: &VpsServerStatus, instance_runs: bool) -> Result<Restore> {
    let mut restore = Restore { status: old.restore.clone(), finished_now: false };
    let ns = server.namespace().unwrap_or_default();
    let name = server.name_any();
    if let Some(asked) = &server.spec.restore
        && restore.status.as_ref().map(|s| &s.requested_at) != Some(&asked.requested_at)
    {
        let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
        let snapshot = snapshots.get_opt(&format!("{name}-backup-{}", asked.backup_id)).await?;
        let ready = snapshot.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.ready_to_use) == Some(true);
        let problem = match &snapshot {
            None => Some(format!("Backup {} does not exist", asked.backup_id)),
            Some(s) if s.metadata.deletion_timestamp.is_some() => {
                Some(format!("Backup {} is being deleted", asked.backup_id))
            }
            Some(_) if !ready => Some(format!("Backup {} is not ready", asked.backup_id)),
            Some(_) => None,
        };
        let state = if problem.is_some() { RestoreState::Failed } else { RestoreState::InProgress };
        let note = match &problem {
            Some(why) => format!("Cannot restore: {why}"),
            None => format!("Restoring from backup {}: the server is halted first", asked.backup_id),
        };
        let (kind, reason) =
            if problem.is_some() { (EventType::Warning, "RestoreFailed") } else { (EventType::Normal, "Restoring") };
        publish(ctx, server, kind, reason, &note).await;
        restore.status = Some(RestoreStatus {
            requested_at: asked.requested_at.clone(),
            backup_id: asked.backup_id,
            name: problem.is_none().then(|| restore_name(&name, &asked.requested_at)),
            state,
            message: problem,
        });
    }
    let Some(status) = restore.status.as_mut().filter(|s| s.state == RestoreState::InProgress) else {
        return Ok(restore);
    };
    if instance_runs {
        return Ok(restore); // halted meanwhile: KubeVirt restores only a VM without an instance
    }
    let restore_name = status.name.clone().unwrap_or_else(|| restore_name(&name, &status.requested_at));
    let restores: Api<VirtualMachineRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(current) = restores.get_opt(&restore_name).await? else {
        let object = vm_restore(&ns, &name, &restore_name, status.backup_id);
        restores.patch(&restore_name, &PatchParams::apply(OPERATOR_MANAGER), &Patch::Apply(&object)).await?;
        return Ok(restore);
    };
    if let Some(why) = current.failure() {
        status.state = RestoreState::Failed;
        status.message = Some(why.clone());
        publish(ctx, server, EventType::Warning, "RestoreFailed", &format!("KubeVirt could not restore: {why}")).await;
    } else if current.status.as_ref().and_then(|s| s.complete) == Some(true) {
        status.state = RestoreState::Completed;
        restore.finished_now = true;
        let note = format!("Restored from backup {} (VirtualMachineRestore {restore_name})", status.backup_id);
        publish(ctx, server, EventType::Normal, "Restored", &note).await;
    } else if waits_for_new_claims(&current) && nudge_due(&current, jiff::Timestamp::now()) {
        nudge_if_claim_gone(ctx, &restores, &current, &ns, &name).await?;
    }
    Ok(restore)
}

/// Annotation on a VirtualMachineRestore: when the operator last woke virt-controller for it.
const NUDGED_AT_ANNOTATION: &str = "vps.org/nudged-at";
/// How often a stalled restore is woken.
const NUDGE_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// virt-controller deleted the old claim and waits to create the restored one.
fn waits_for_new_claims(restore: &VirtualMachineRestore) -> bool {
    let status = restore.status.as_ref();
    status.is_some_and(|s| s.conditions.iter().any(|c| c.reason.as_deref() == Some("Waiting for new PVCs")))
}

fn nudge_due(restore: &VirtualMachineRestore, now: jiff::Timestamp) -> bool {
    let last = restore.annotations().get(NUDGED_AT_ANNOTATION).and_then(|t| t.parse::<jiff::Timestamp>().ok());
    last.is_none_or(|t| now.duration_since(t) >= NUDGE_EVERY)
}

/// KubeVirt 1.7's restore controller is woken by a claim's creation and updates, not its
/// deletion: when the old root claim's final delete comes after its last look, the restore
/// waits forever for an event (seen under load in the tests). Once the claim is gone, an
/// annotation (an update of the restore) wakes it.
async fn nudge_if_claim_gone(
    ctx: &Context,
    restores: &Api<VirtualMachineRestore>,
    restore: &VirtualMachineRestore,
    ns: &str,
    server: &str,
) -> Result<()> {
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    if claims.get_metadata_opt(&super::vm::root_disk_name(server)).await?.is_some() {
        return Ok(());
    }
    let now = crate::timestamps::now();
    let patch = serde_json::json!({"metadata": {"annotations": {NUDGED_AT_ANNOTATION: now}}});
    restores.patch(&restore.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(namespace = %ns, server, "Woke KubeVirt's restore, which waits for a claim already gone");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_has_its_own_restore_object() {
        let a = restore_name("web", "2026-12-01T10:00:00Z");
        assert!(a.starts_with("web-restore-") && a.len() == "web-restore-".len() + 8, "{a}");
        assert_eq!(a, restore_name("web", "2026-12-01T10:00:00Z"));
        assert_ne!(a, restore_name("web", "2026-12-01T10:00:01Z"));
    }

    #[test]
    fn restoring_shows_while_in_progress_but_not_over_a_fault() {
        let status = |state| RestoreStatus {
            requested_at: "t".into(),
            backup_id: 3,
            name: Some("web-restore-1".into()),
            state,
            message: None,
        };
        let running = Restore { status: Some(status(RestoreState::InProgress)), finished_now: false };
        assert!(running.halts());
        assert_eq!(running.observe(Observation::new(Phase::Stopped, "Stopped", "")).phase, Phase::Restoring);
        assert_eq!(running.observe(Observation::new(Phase::Error, "VmLost", "")).phase, Phase::Error);
        let done = Restore { status: Some(status(RestoreState::Completed)), finished_now: true };
        assert!(!done.halts());
        assert_eq!(done.observe(Observation::new(Phase::Starting, "Starting", "")).phase, Phase::Starting);
    }
}
