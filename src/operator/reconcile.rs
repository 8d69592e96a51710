//! One reconcile of a VpsServer: look at everything, change what differs, report what is.
//! It never branches on which event woke it. Each step is a short I/O shell around a pure
//! part: [`super::vm::build_vm`], [`super::phase::observe`], [`super::status::next`] and
//! [`super::status::notices`].

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;

use super::addresses::{self, Addressing};
use super::observed::{VmState, decode_hash};
use super::phase;
use super::power;
use super::queue::Next;
use super::rebuild::{self, Rebuild};
use super::restore::{self, Restore};
use super::status;
use super::vm::{self, VmInputs};
use super::{Context, Error, Result, actions, backups, references, resize};
use crate::api::{OPERATOR_MANAGER, Resolved, SERVER_ID_LABEL, SERVER_LABEL, VpsServer, VpsServerStatus};
use crate::credit_ledger::Reservation;
use crate::ids::IdKind;
use crate::kubevirt::{DataVolume, VirtualMachineSnapshot, VirtualMachineView};

/// ClusterRole that lets a namespace's `default` ServiceAccount clone disks from the image
/// namespace (CDI's clone authorization: `create` on `datavolumes/source`).
pub const CLONE_CLUSTER_ROLE: &str = "vps-datavolume-cloner";

/// Annotation asking the operator to build a lost server anew, on a fresh disk (the
/// operator removes it once it has).
pub const RECREATE_ANNOTATION: &str = "vps.org/recreate";

/// Brings the world in line with one server (the finalizer is in place).
pub async fn apply(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<Next> {
    // While its account is suspended the server is built halted.
    let (server, account_suspended) = super::charging::billing_suspension(server, &ctx);
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = server.name_any();
    let key = super::cache::key(&ns, &name);
    // The newest status: the operator's own last write while the cache does not show it yet.
    let old = match ctx.written.newer_than_cache(&key, server.metadata.resource_version.as_deref()) {
        Some(written) => written,
        None => server.status.clone().unwrap_or_default(),
    };
    let id = ensure_id(&server, &ctx, &old, &ns, &name).await?;
    let mut resolution = references::resolve(&server, &ctx, &ns, old.resolved.as_ref()).await?;
    resize::commit_price(&ctx, &ns, &name, old.resolved.as_ref(), &mut resolution).await?;
    let credit = match &resolution.resolved {
        Some(resolved) => check_credit(&server, &ctx, &ns, &name, resolved, &old).await?,
        None => None,
    };
    let addressing = match (&resolution.resolved, credit) {
        (Some(resolved), None) => addresses::ensure(&server, &ctx, resolved, &old).await?,
        _ => Addressing::Pod,
    };
    let vmi = ctx.vmis.get(&ns, &name);
    let rebuild = rebuild::step(&server, &ctx, &old, vmi.is_some()).await?;
    let restore = restore::step(&server, &ctx, &old, vmi.is_some()).await?;
    let built = match (&resolution.resolved, credit, addressing.fault()) {
        (Some(resolved), None, None) => {
            let desired = Desired { id, resolved, attached: addressing.attached() };
            ensure_vm(&server, &ctx, &desired, &old, &rebuild, &restore).await?
        }
        _ => Built {
            vm: ctx.vms.get(&ns, &name),
            vm_uid: old.vm_uid.clone(),
            root_volume_uid: old.root_volume_uid.clone(),
            lost: None,
        },
    };
    if let (Some(resolved), None) = (&resolution.resolved, built.lost) {
        resize::grow_root_disk(&server, &ctx, old.resolved.as_ref(), resolved).await?;
    }
    let reboot = power::handle_reboot(&server, &ctx, vmi.as_ref(), &old).await?;
    let force_stop = power::handle_force_stop(&server, &ctx, vmi.is_some(), &old).await?;
    let fault = resolution.fault().or(credit).or(addressing.fault()).or(built.lost);
    let obs = phase::observe(
        &server.spec,
        fault,
        built.vm.as_ref(),
        vmi.as_ref(),
        reboot.from_instance.as_deref(),
        rebuild.progress(),
        old.phase,
    );
    let mut obs = restore.observe(obs);
    if account_suspended {
        super::charging::observe_suspension(&mut obs);
    }
    // A failing backup must not hide the server's state: the status is written first.
    let sound =
        resolution.resolved.is_some() && credit.is_none() && addressing.fault().is_none() && built.lost.is_none();
    let backup = if sound { backups::reconcile(&server, &ctx, &ns, &name, obs.phase, &old).await } else { Ok(None) };
    let now = jiff::Timestamp::now().to_string();
    let new = status::next(&status::Inputs {
        id,
        old: &old,
        obs: &obs,
        vm_name: resolution.resolved.is_some().then_some(name.as_str()),
        resolved: resolution.resolved.as_ref(),
        address: addressing.claim(),
        vm_uid: built.vm_uid.as_deref(),
        root_volume_uid: built.root_volume_uid.as_deref(),
        reference_problem: resolution.problem.as_ref(),
        reboot: &reboot,
        force_stop_request: force_stop.as_deref(),
        rebuild: &rebuild,
        restore: restore.status.as_ref(),
        backup: backup.as_ref().ok().and_then(Option::as_ref),
        generation: server.metadata.generation,
        now: &now,
    });
    // Condition times only move when a status flips: an unchanged world writes nothing.
    if status::worth_writing(&old, &new) {
        write_status(&server, &ctx, &key, &new).await?;
        for notice in status::notices(&old, &new, &obs) {
            publish(&ctx, &server, notice.type_, &notice.reason, &notice.message).await;
        }
    }
    actions::settle(&ctx, &ns, &name, &new, &obs).await?;
    if server.annotations().contains_key(RECREATE_ANNOTATION) && built.lost.is_none() {
        let patch = json!({"metadata": {"annotations": {RECREATE_ANNOTATION: null}}});
        Api::<VpsServer>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let waiting = resolution.problem.is_some() || credit.is_some() || addressing.fault().is_some();
    Ok(match (waiting, backup?) {
        (true, _) => Next::After(ctx.config.reference_retry),
        // The root disk's DataVolume is not watched: a rebuild looks again shortly.
        _ if new.rebuild_from_volume.is_some() => Next::After(std::time::Duration::from_secs(1)),
        // Nor is the VirtualMachineRestore.
        _ if restore.halts() => Next::After(std::time::Duration::from_secs(1)),
        (false, Some(report)) => Next::After(report.next),
        (false, None) => Next::OnChange,
    })
}

/// The server's id: the one its status records (a label never overrides it); else the one
/// its label claims (the gateway's allocation), unless another server holds it; else a new
/// one. The id is recorded in the status (and the label put right) by the status write.
async fn ensure_id(server: &VpsServer, ctx: &Context, old: &VpsServerStatus, ns: &str, name: &str) -> Result<i64> {
    let key = super::cache::key(ns, name);
    if let Some(id) = old.id {
        if server.label_id() != Some(id) {
            tracing::warn!(namespace = %ns, server = %name, id, label = ?server.label_id(), "Putting the id label right");
            set_id_label(ctx, ns, name, id).await?;
        }
        ctx.ids_held.hold(id, &key);
        return Ok(id);
    }
    if let Some(claimed) = server.label_id() {
        if ctx.ids_held.hold(claimed, &key) {
            return Ok(claimed);
        }
        let message = format!("Another server already has id {claimed}: this one gets an id of its own");
        publish(ctx, server, EventType::Warning, "DuplicateId", &message).await;
    }
    let id = ctx.ids.allocate(IdKind::Server).await?;
    ctx.ids_held.hold(id, &key);
    set_id_label(ctx, ns, name, id).await?;
    tracing::info!(namespace = %ns, server = %name, id, "Allocated a server id");
    Ok(id)
}

async fn set_id_label(ctx: &Context, ns: &str, name: &str, id: i64) -> Result<()> {
    let patch = json!({"metadata": {"labels": {SERVER_ID_LABEL: id.to_string()}}});
    Api::<VpsServer>::namespaced(ctx.client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

const OVER_CREDIT: (&str, &str) = (
    "CreditExceeded",
    "The account's credit does not cover this server's plan on top of its other servers: no virtual machine is made",
);

/// Before a server's first VM: its plan's price committed on its account's ledger (the
/// gateway did so for the servers it made; this covers servers made with kubectl). `Some`
/// (a fault) when it does not fit.
async fn check_credit(
    server: &VpsServer,
    ctx: &Context,
    ns: &str,
    name: &str,
    resolved: &Resolved,
    old: &VpsServerStatus,
) -> Result<Option<(&'static str, &'static str)>> {
    let built_before = old.vm_uid.is_some() || ctx.vms.get(ns, name).is_some();
    let Some(account) = ctx.account_of(ns).filter(|_| !built_before) else { return Ok(None) };
    let price = resolved.plan.spec.monthly_price_cents;
    let reserved = ctx.ledger.reserve(&account.name_any(), name, price, account.spec.credit_cents).await?;
    if let Reservation::Insufficient { used } = reserved {
        tracing::info!(namespace = %ns, server = %server.name_any(), price, used, "Over the account's credit");
        return Ok(Some(OVER_CREDIT));
    }
    Ok(None)
}

/// What a reconcile knows of the server's VM after [`ensure_vm`].
struct Built {
    vm: Option<VmState>,
    vm_uid: Option<String>,
    root_volume_uid: Option<String>,
    /// The VM or its root disk was lost (reason, message): nothing is built anew.
    lost: Option<(&'static str, &'static str)>,
}

const VM_LOST: (&str, &str) = (
    "VirtualMachineLost",
    "The virtual machine was deleted or replaced outside the platform; it is not made again on its own. Annotate the \
     server with vps.org/recreate to build it anew on a fresh disk.",
);
const DISK_LOST: (&str, &str) = (
    "RootVolumeLost",
    "The root disk was deleted or replaced outside the platform; the server is halted. Annotate the server with \
     vps.org/recreate to start it on the fresh disk.",
);

/// What the server's VM is built from, besides the server.
struct Desired<'a> {
    id: i64,
    resolved: &'a Resolved,
    attached: Option<vm::Attached<'a>>,
}

/// Applies the VM the server should have when what KubeVirt holds differs from it, unless
/// the VM or its root disk the server had is gone (then it reports the loss instead).
async fn ensure_vm(
    server: &VpsServer,
    ctx: &Context,
    desired: &Desired<'_>,
    old: &VpsServerStatus,
    rebuild: &Rebuild,
    restore: &Restore,
) -> Result<Built> {
    let Desired { id, resolved, attached } = *desired;
    let ns = server.namespace().unwrap_or_default();
    let name = server.name_any();
    let recreate = server.annotations().contains_key(RECREATE_ANNOTATION);
    let (mut vm_uid, mut root_volume_uid) =
        if recreate { (None, None) } else { (old.vm_uid.clone(), old.root_volume_uid.clone()) };
    if rebuild.from_volume.is_some() {
        root_volume_uid = None; // being replaced: the disk there is (once made) is the server's
    }
    let vms: Api<VirtualMachineView> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = ctx.vms.get(&ns, &name);
    if let Some(uid) = &vm_uid {
        // The cache may lag behind a VM just made: ask the API server before calling it lost.
        let live = match &current {
            Some(vm) if vm.deleting => None,
            Some(vm) => vm.uid.clone(),
            None => vms
                .get_metadata_opt(&name)
                .await?
                .filter(|m| m.metadata.deletion_timestamp.is_none())
                .and_then(|m| m.metadata.uid)
                .map(Into::into),
        };
        if live.as_deref() != Some(uid.as_str()) {
            return Ok(Built { vm: current, vm_uid, root_volume_uid, lost: Some(VM_LOST) });
        }
    }
    if current.is_some() {
        let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
        let disk = dvs.get_metadata_opt(&vm::root_disk_name(&name)).await?.and_then(|m| m.metadata.uid);
        match (&root_volume_uid, disk) {
            (Some(want), have) if have.as_deref() != Some(want.as_str()) => {
                halt(&vms, &name).await?;
                return Ok(Built { vm: current, vm_uid, root_volume_uid, lost: Some(DISK_LOST) });
            }
            (None, Some(have)) => root_volume_uid = Some(have),
            _ => {}
        }
    }
    ensure_clone_permission(ctx, &ns, &resolved.image.spec.source.data_source_namespace).await?;
    let desired = vm::build_vm(&VmInputs {
        server,
        id,
        resolved,
        halted: rebuild.halts() || restore.halts(),
        simulator_annotations: ctx.config.simulator_annotations,
        attached,
    });
    // A restore replaced the VM's spec by its snapshot's, under the same hash annotation.
    let unchanged = !restore.finished_now
        && current
            .as_ref()
            .is_some_and(|vm| vm.spec_hash.is_some() && vm.spec_hash == vm::spec_hash(&desired).and_then(decode_hash));
    if !unchanged {
        let applied = vms.patch(&name, &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&desired)).await?;
        if current.is_none() {
            publish(ctx, server, EventType::Normal, "VirtualMachineCreated", "Created the virtual machine").await;
        }
        current = Some(VmState::of(&applied));
    }
    vm_uid = current.as_ref().and_then(|vm| vm.uid.as_deref().map(String::from)).or(vm_uid);
    Ok(Built { vm: current, vm_uid, root_volume_uid, lost: None })
}

/// Stops a VM whose disk was replaced, so it does not boot a blank one.
async fn halt(vms: &Api<VirtualMachineView>, name: &str) -> Result<()> {
    let patch = json!({"spec": {"runStrategy": "Halted"}});
    ignore_not_found(vms.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await)
}

/// Writes the server's status (server-side apply) and remembers it until the cache shows it.
async fn write_status(server: &VpsServer, ctx: &Context, key: &str, status: &VpsServerStatus) -> Result<()> {
    let api: Api<VpsServer> = Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsServer", "status": status});
    let written = api
        .patch_status(&server.name_any(), &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    ctx.written.record(key, written.metadata.resource_version.as_deref(), status);
    Ok(())
}

/// Tears down the VM, its disks and its snapshots; done once they are all gone.
pub async fn cleanup(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<()> {
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = server.name_any();
    let selector = format!("{SERVER_LABEL}={name}");
    let lp = ListParams::default().labels(&selector);
    let mut remaining = 0;

    let vms: Api<VirtualMachineView> = Api::namespaced(ctx.client.clone(), &ns);
    if vms.get_opt(&name).await?.is_some() {
        remaining += 1;
        ignore_not_found(vms.delete(&name, &DeleteParams::foreground()).await)?;
    }
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    for dv in dvs.list_metadata(&lp).await?.items {
        remaining += 1;
        ignore_not_found(dvs.delete(&dv.name_any(), &DeleteParams::background()).await)?;
    }
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    for snapshot in snapshots.list_metadata(&lp).await?.items {
        remaining += 1;
        ignore_not_found(snapshots.delete(&snapshot.name_any(), &DeleteParams::background()).await)?;
    }
    if remaining > 0 {
        // An error keeps the finalizer (it is removed once cleanup succeeds).
        return Err(Error::TeardownPending(remaining));
    }
    addresses::release(&server, &ctx).await?;
    actions::settle_teardown(&ctx, &ns, &name).await?;
    publish(&ctx, &server, EventType::Normal, "Deleted", "The virtual machine, its disks and snapshots are gone").await;
    Ok(())
}

/// Lets the account namespace's `default` ServiceAccount clone from the image namespace.
async fn ensure_clone_permission(ctx: &Context, ns: &str, image_ns: &str) -> Result<()> {
    let key = (ns.to_string(), image_ns.to_string());
    if ctx.clone_bindings.lock().expect("lock").contains(&key) {
        return Ok(());
    }
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": format!("vps-clone-{ns}"), "namespace": image_ns, "labels": {"app.kubernetes.io/managed-by": OPERATOR_MANAGER}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLONE_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    });
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), image_ns);
    api.patch(&format!("vps-clone-{ns}"), &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&binding))
        .await?;
    ctx.clone_bindings.lock().expect("lock").insert(key);
    Ok(())
}

pub(super) fn ignore_not_found<T>(result: std::result::Result<T, kube::Error>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Publishes an Event about the server; failures are logged, never fatal.
pub async fn publish(ctx: &Context, server: &VpsServer, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &server.object_ref(&())).await {
        tracing::warn!("Could not publish an event: {e}");
    }
}
