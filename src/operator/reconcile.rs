//! One reconcile of a VpsServer: look at everything, change what differs, report what is.
//! It never branches on which event woke it. Each step is a short I/O shell around a pure
//! part: [`super::vm::build_vm`], [`super::phase::observe`], [`super::status::next`] and
//! [`super::status::notices`].

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;

use super::observed::{VmState, VmiState, decode_hash};
use super::phase;
use super::queue::Next;
use super::status::{self, Reboot};
use super::vm::{self, VmInputs};
use super::{Context, Error, Result, backups};
use crate::api::{OPERATOR_MANAGER, SERVER_ID_LABEL, SERVER_LABEL, VpsServer, VpsServerStatus, VpsSshKey};
use crate::ids::IdKind;
use crate::kubevirt::{DataVolume, VirtualMachineInstanceView, VirtualMachineSnapshot, VirtualMachineView};

/// ClusterRole that lets a namespace's `default` ServiceAccount clone disks from the image
/// namespace (CDI's clone authorization: `create` on `datavolumes/source`).
pub const CLONE_CLUSTER_ROLE: &str = "vps-datavolume-cloner";

/// A bad plan, image, location or key: a CamelCase reason and a message.
type ReferenceError = (String, String);

/// Brings the world in line with one server (the finalizer is in place).
pub async fn apply(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<Next> {
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = server.name_any();
    let key = super::cache::key(&ns, &name);
    let id = ensure_id(&server, &ctx, &ns, &name).await?;
    // The newest status: the operator's own last write while the cache does not show it yet.
    let old = match ctx.written.newer_than_cache(&key, server.metadata.resource_version.as_deref()) {
        Some(written) => written,
        None => server.status.clone().unwrap_or_default(),
    };
    let resolved = resolve(&server, &ctx, &ns).await?;
    let vm = match &resolved {
        Ok(inputs) => Some(ensure_vm(&server, &ctx, id, inputs).await?),
        Err(_) => ctx.vms.get(&ns, &name),
    };
    let vmi = ctx.vmis.get(&ns, &name);
    let reboot = handle_reboot(&server, &ctx, vmi.as_ref(), &old).await?;
    let reference_error = resolved.as_ref().err().map(|(r, m)| (r.as_str(), m.as_str()));
    let obs = phase::observe(
        &server.spec,
        reference_error,
        vm.as_ref(),
        vmi.as_ref(),
        reboot.from_instance.as_deref(),
        old.phase,
    );
    // A failing backup must not hide the server's state: the status is written first.
    let backup =
        if resolved.is_ok() { backups::reconcile(&server, &ctx, &ns, &name, obs.phase).await } else { Ok(None) };
    let now = jiff::Timestamp::now().to_string();
    let new = status::next(&status::Inputs {
        id,
        old: &old,
        obs: &obs,
        vm_name: resolved.is_ok().then_some(name.as_str()),
        references_ok: resolved.is_ok(),
        reboot: &reboot,
        backup: backup.as_ref().ok().and_then(Option::as_ref),
        generation: server.metadata.generation,
        now: &now,
    });
    // Condition times only move when a status flips: an unchanged world writes nothing.
    if old != new {
        write_status(&server, &ctx, &key, &new).await?;
        for notice in status::notices(&old, &new, &obs) {
            publish(&ctx, &server, notice.type_, &notice.reason, &notice.message).await;
        }
    }
    Ok(match (resolved.is_err(), backup?) {
        (true, _) => Next::After(ctx.config.reference_retry),
        (false, Some(report)) => Next::After(report.next),
        (false, None) => Next::OnChange,
    })
}

/// The server's id: its own, or a new one recorded in its label.
async fn ensure_id(server: &VpsServer, ctx: &Context, ns: &str, name: &str) -> Result<i64> {
    if let Some(id) = server.id() {
        return Ok(id);
    }
    let id = ctx.ids.allocate(IdKind::Server).await?;
    let patch = json!({"metadata": {"labels": {SERVER_ID_LABEL: id.to_string()}}});
    Api::<VpsServer>::namespaced(ctx.client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(namespace = %ns, server = %name, id, "Allocated a server id");
    Ok(id)
}

/// Applies the VM the server should have when what KubeVirt holds differs from it; returns
/// what is known of the VM.
async fn ensure_vm(server: &VpsServer, ctx: &Context, id: i64, inputs: &Resolved) -> Result<VmState> {
    let ns = server.namespace().unwrap_or_default();
    let name = server.name_any();
    ensure_clone_permission(ctx, &ns, &inputs.image.spec.source.data_source_namespace).await?;
    let desired = vm::build_vm(&VmInputs {
        server,
        id,
        plan: &inputs.plan,
        image: &inputs.image,
        location: &inputs.location,
        ssh_key: inputs.ssh_key.as_ref(),
    });
    let current = ctx.vms.get(&ns, &name);
    if let Some(vm) = &current
        && vm.spec_hash.is_some()
        && vm.spec_hash == vm::spec_hash(&desired).and_then(decode_hash)
    {
        return Ok(vm.clone());
    }
    let vms: Api<VirtualMachineView> = Api::namespaced(ctx.client.clone(), &ns);
    let applied = vms.patch(&name, &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&desired)).await?;
    if current.is_none() {
        publish(ctx, server, EventType::Normal, "VirtualMachineCreated", "Created the virtual machine").await;
    }
    Ok(VmState::of(&applied))
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
    publish(&ctx, &server, EventType::Normal, "Deleted", "The virtual machine, its disks and snapshots are gone").await;
    Ok(())
}

/// The catalog entries a server names, owned.
pub struct Resolved {
    pub plan: crate::api::VpsPlan,
    pub image: crate::api::VpsImage,
    pub location: crate::api::VpsLocation,
    pub ssh_key: Option<VpsSshKey>,
}

/// Looks up plan, image, location (caches) and SSH key; `Err((reason, message))` names the
/// first missing one.
async fn resolve(server: &VpsServer, ctx: &Context, ns: &str) -> Result<std::result::Result<Resolved, ReferenceError>> {
    let spec = &server.spec;
    let missing =
        |reason: &str, what: &str, name: &str| Err((reason.to_string(), format!("{what} {name:?} does not exist")));
    let Some(plan) = ctx.plans.get(&ObjectRef::new(&spec.plan)) else {
        return Ok(missing("PlanNotFound", "VpsPlan", &spec.plan));
    };
    let Some(image) = ctx.images.get(&ObjectRef::new(&spec.os)) else {
        return Ok(missing("ImageNotFound", "VpsImage", &spec.os));
    };
    let Some(location) = ctx.locations.get(&ObjectRef::new(&spec.location)) else {
        return Ok(missing("LocationNotFound", "VpsLocation", &spec.location));
    };
    let ssh_key = match &spec.ssh_key {
        Some(key) => match Api::<VpsSshKey>::namespaced(ctx.client.clone(), ns).get_opt(key).await? {
            Some(k) => Some(k),
            None => return Ok(missing("SshKeyNotFound", "VpsSshKey", key)),
        },
        None => None,
    };
    Ok(Ok(Resolved { plan: (*plan).clone(), image: (*image).clone(), location: (*location).clone(), ssh_key }))
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

/// Honours a new `rebootRequestedAt` once: deletes the running instance (KubeVirt starts a
/// new one under `runStrategy: Always`) and remembers which instance it replaced. Returns
/// where the reboot stands, starting from what `old` recorded.
async fn handle_reboot(
    server: &VpsServer,
    ctx: &Context,
    vmi: Option<&VmiState>,
    old: &VpsServerStatus,
) -> Result<Reboot> {
    let mut reboot = Reboot {
        observed_request: old.observed_reboot_request.clone(),
        from_instance: old.reboot_from_instance.clone(),
    };
    let Some(stamp) = &server.spec.reboot_requested_at else { return Ok(reboot) };
    if reboot.observed_request.as_ref() == Some(stamp) {
        return Ok(reboot);
    }
    reboot.observed_request = Some(stamp.clone());
    let running = vmi.filter(|v| v.running);
    let Some(vmi) = running.filter(|_| vm::run_strategy(server) == "Always") else {
        return Ok(reboot); // nothing runs: nothing to reboot
    };
    let uid = vmi.uid.as_deref().map(String::from);
    // The instance has the server's name.
    let api: Api<VirtualMachineInstanceView> =
        Api::namespaced(ctx.client.clone(), &server.namespace().unwrap_or_default());
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: uid.clone(), resource_version: None }),
        ..Default::default()
    };
    ignore_not_found(api.delete(&server.name_any(), &dp).await)?;
    reboot.from_instance = uid;
    publish(ctx, server, EventType::Normal, "Rebooting", "Restarting the virtual machine instance").await;
    Ok(reboot)
}

fn ignore_not_found<T>(result: std::result::Result<T, kube::Error>) -> Result<()> {
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
