//! A rebuild: a new `spec.rebuildRequestedAt` (with, usually, another `spec.os`) replaces the
//! server's root disk by a fresh copy of its image. The VM is halted; once no instance runs
//! on the old disk, its DataVolume is deleted and virt-controller makes a new one from the
//! VM's template, which already names the new image; cloud-init runs again on the fresh disk.
//! The server keeps its id, name, VM and backups. `Rebuilding` lasts until it is active (or
//! stopped, when it should not run) on the new disk.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::EventType;

use super::reconcile::publish;
use super::{Context, Result, vm};
use crate::api::{VpsServer, VpsServerStatus};
use crate::kubevirt::DataVolume;

/// Where a server's rebuild stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuild {
    /// The last `spec.rebuildRequestedAt` acted on.
    pub observed_request: Option<String>,
    /// While a rebuild lasts: the UID of the root disk it replaces (empty: there was none).
    pub from_volume: Option<String>,
    /// A root disk other than that one exists: what is left is an ordinary start.
    pub disk_replaced: bool,
}

impl Rebuild {
    /// The VM stays halted until its new disk exists.
    pub fn halts(&self) -> bool {
        self.from_volume.is_some() && !self.disk_replaced
    }

    /// For the phase: `None` without a rebuild, else whether the disk is replaced yet.
    pub fn progress(&self) -> Option<bool> {
        self.from_volume.as_ref().map(|_| self.disk_replaced)
    }
}

/// Takes a server's rebuild one step; `instance_runs`: a VMI of the server exists.
pub async fn step(server: &VpsServer, ctx: &Context, old: &VpsServerStatus, instance_runs: bool) -> Result<Rebuild> {
    let mut rebuild = Rebuild {
        observed_request: old.observed_rebuild_request.clone(),
        from_volume: old.rebuild_from_volume.clone(),
        disk_replaced: false,
    };
    let ns = server.namespace().unwrap_or_default();
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = vm::root_disk_name(&server.name_any());
    if let Some(stamp) = &server.spec.rebuild_requested_at
        && rebuild.observed_request.as_ref() != Some(stamp)
    {
        let current = match &old.root_volume_uid {
            Some(uid) => Some(uid.clone()),
            None => dvs.get_metadata_opt(&claim).await?.and_then(|m| m.metadata.uid),
        };
        rebuild.observed_request = Some(stamp.clone());
        rebuild.from_volume = Some(current.unwrap_or_default());
        let note = format!("Rebuilding from VpsImage {:?}: the root disk is replaced by a fresh copy", server.spec.os);
        publish(ctx, server, EventType::Normal, "Rebuilding", &note).await;
    }
    let Some(from) = rebuild.from_volume.clone() else { return Ok(rebuild) };
    match dvs.get_metadata_opt(&claim).await? {
        Some(disk) if disk.metadata.deletion_timestamp.is_some() => {} // going
        Some(disk) if disk.metadata.uid.as_deref() != Some(from.as_str()) => rebuild.disk_replaced = true,
        Some(_) if !instance_runs => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(from), resource_version: None }),
                ..DeleteParams::foreground()
            };
            match dvs.delete(&claim, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        // An instance still runs on the old disk (the VM is halted meanwhile), or no disk yet.
        _ => {}
    }
    Ok(rebuild)
}
