//! A resize: a server whose plan changed, which the CRD allows only while it is stopped. A
//! plan with a smaller disk was already refused when the references were resolved (disks
//! only grow); here the new plan's price is committed on the account's ledger (the gateway
//! did so for its own resizes; this covers kubectl's), and the root disk's claim grows to
//! the new plan's size: KubeVirt does not resize an existing DataVolume when the VM's
//! template changes. CPU and memory follow the VM's template at the next start.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::reconcile::publish;
use super::references::Resolution;
use super::{Context, Result, vm};
use crate::api::{OPERATOR_MANAGER, Resolved, VpsServer};
use crate::credit_ledger::Reservation;

/// Commits the price of a plan that changed since the server was built; over the account's
/// credit, the server stays on the plan it has and the problem is reported.
pub async fn commit_price(
    ctx: &Context,
    ns: &str,
    name: &str,
    old: Option<&Resolved>,
    resolution: &mut Resolution,
) -> Result<()> {
    let (Some(old), Some(new)) = (old, resolution.resolved.as_mut()) else { return Ok(()) };
    if old.plan.name == new.plan.name {
        return Ok(());
    }
    let Some(account) = ctx.account_of(ns) else { return Ok(()) };
    let price = new.plan.spec.monthly_price_cents;
    let credit = account.spec.credit_cents;
    if let Reservation::Insufficient { used } = ctx.ledger.recommit(&account.name_any(), name, price, credit).await? {
        let message = format!(
            "VpsPlan {:?} costs {price} cents a month and the account's other servers use {used} of its {credit} \
             cents: the server keeps plan {:?}",
            new.plan.name, old.plan.name
        );
        new.plan = old.plan.clone();
        resolution.problem.get_or_insert(("CreditExceeded".to_string(), message));
    }
    Ok(())
}

/// The size a claim asks for, `{n}Gi`.
pub fn claim_size(gib: i64) -> String {
    format!("{gib}Gi")
}

/// Grows the root disk's claim when the plan the server is now built from has a larger disk
/// than the one it was built from.
pub async fn grow_root_disk(server: &VpsServer, ctx: &Context, old: Option<&Resolved>, new: &Resolved) -> Result<()> {
    let Some(old) = old.filter(|o| new.plan.spec.storage > o.plan.spec.storage) else { return Ok(()) };
    let ns = server.namespace().unwrap_or_default();
    let claim = vm::root_disk_name(&server.name_any());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvcs.get_metadata_opt(&claim).await?.is_none() {
        return Ok(()); // not made yet: it will be made from the template, at the new size
    }
    let size = claim_size(new.plan.spec.storage);
    let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
    let pp = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    pvcs.patch(&claim, &pp, &Patch::Merge(&patch)).await?;
    let note = format!(
        "Resized from plan {:?} to {:?}: the root disk grows from {} to {} GiB; CPU and memory change at the next start",
        old.plan.name, new.plan.name, old.plan.spec.storage, new.plan.spec.storage
    );
    publish(ctx, server, EventType::Normal, "Resized", &note).await;
    Ok(())
}
