//! One reconcile of a VpsServer: look at everything, change what differs, report what is.
//! It never branches on which event woke it.

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;

use super::observed::{VmState, VmiState, decode_hash};
use super::phase::{self, Observation};
use super::queue::Next;
use super::vm::{self, SERVER_LABEL, VmInputs};
use super::{Context, Error, Result, backups, status};
use crate::api::{Phase, SERVER_ID_LABEL, VpsServer, VpsServerStatus, VpsSshKey};
use crate::ids::IdKind;
use crate::kubevirt::{DataVolume, VirtualMachineInstanceView, VirtualMachineSnapshot, VirtualMachineView};

/// The operator's field manager for server-side apply.
pub const MANAGER: &str = "vps-operator";
/// ClusterRole that lets a namespace's `default` ServiceAccount clone disks from the image
/// namespace (CDI's clone authorization: `create` on `datavolumes/source`).
pub const CLONE_CLUSTER_ROLE: &str = "vps-datavolume-cloner";

/// Brings the world in line with one server (the finalizer is in place).
pub async fn apply(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<Next> {
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = server.name_any();
    let servers: Api<VpsServer> = Api::namespaced(ctx.client.clone(), &ns);

    let id = match server_id(&server) {
        Some(id) => id,
        None => {
            let id = ctx.ids.allocate(IdKind::Server).await?;
            let patch = json!({"metadata": {"labels": {SERVER_ID_LABEL: id.to_string()}}});
            servers.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            tracing::info!(namespace = %ns, server = %name, id, "Allocated a server id");
            id
        }
    };

    // The newest status: the operator's own last write while the cache does not show it yet.
    let key = super::cache::key(&ns, &name);
    let old_status = match ctx.written.newer_than_cache(&key, server.metadata.resource_version.as_deref()) {
        Some(written) => written,
        None => server.status.clone().unwrap_or_default(),
    };
    let mut new_status = VpsServerStatus { id: Some(id), ..old_status.clone() };
    let mut vm = ctx.vms.get(&ns, &name);

    let resolved = resolve(&server, &ctx, &ns).await?;
    let reference_error = resolved.as_ref().err().map(|(r, m)| (r.as_str(), m.as_str()));
    if let Ok(inputs) = &resolved {
        ensure_clone_permission(&ctx, &ns, &inputs.image.spec.source.data_source_namespace).await?;
        let desired = vm::build_vm(&VmInputs {
            server: &server,
            id,
            plan: &inputs.plan,
            image: &inputs.image,
            location: &inputs.location,
            ssh_key: inputs.ssh_key.as_ref(),
        });
        let current_hash = vm.as_ref().and_then(|v| v.spec_hash);
        if current_hash != vm::spec_hash(&desired).and_then(decode_hash) {
            let vms: Api<VirtualMachineView> = Api::namespaced(ctx.client.clone(), &ns);
            let applied = vms.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired)).await?;
            if vm.is_none() {
                publish(&ctx, &server, EventType::Normal, "VirtualMachineCreated", "Created the virtual machine").await;
            }
            vm = Some(VmState::of(&applied));
        }
        new_status.vm_name = Some(name.clone());
    }

    let vmi = ctx.vmis.get(&ns, &name);
    handle_reboot(&server, &ctx, vmi.as_ref(), &mut new_status).await?;

    let obs: Observation = phase::observe(
        &server.spec,
        reference_error,
        vm.as_ref(),
        vmi.as_ref(),
        new_status.reboot_from_instance.as_deref(),
        old_status.phase,
    );
    if new_status.reboot_from_instance.is_some() && obs.phase != Phase::Rebooting {
        new_status.reboot_from_instance = None;
    }
    let now = jiff::Timestamp::now().to_string();
    new_status.phase = Some(obs.phase);
    new_status.ip_address = obs.ipv4.clone();
    new_status.ipv6_address = obs.ipv6.clone();
    new_status.observed_generation = server.metadata.generation;

    // A failing backup must not hide the server's state: the status is written first.
    let backup =
        if resolved.is_ok() { backups::reconcile(&server, &ctx, &ns, &name, obs.phase).await } else { Ok(None) };
    let report = backup.as_ref().ok().and_then(Option::as_ref);
    if let Some(t) = report.and_then(|r| r.last_backup.clone()) {
        new_status.last_backup_time = Some(t);
    }
    new_status.conditions = status::conditions(
        &obs,
        reference_error.is_none(),
        report.map(|r| &r.verdict),
        server.metadata.generation,
        &old_status.conditions,
        &now,
    );

    // Condition times only move when a status flips: an unchanged world writes nothing.
    if old_status != new_status {
        let patch = json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsServer", "status": new_status});
        let written = servers.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.written.record(&key, written.metadata.resource_version.as_deref(), &new_status);
        // A first status is no transition (the VirtualMachineCreated Event tells of it),
        // unless it is an error.
        let first = old_status.phase.is_none() && obs.phase != Phase::Error;
        if old_status.phase != new_status.phase && !first {
            let (kind, reason) = match obs.phase {
                Phase::Error => (EventType::Warning, obs.reason.clone()),
                p => (EventType::Normal, format!("{p:?}")),
            };
            publish(&ctx, &server, kind, &reason, &obs.message).await;
        }
        let failed = |conditions: &[crate::api::Condition]| {
            conditions.iter().any(|c| c.type_ == "BackupsSucceeded" && c.status == crate::api::ConditionStatus::False)
        };
        if failed(&new_status.conditions) && !failed(&old_status.conditions) {
            publish(&ctx, &server, EventType::Warning, "BackupFailed", "The newest backup snapshot failed").await;
        }
    }

    let backup_wait = backup?.map(|r| r.next);
    Ok(match (reference_error, backup_wait) {
        (Some(_), _) => Next::After(ctx.config.reference_retry),
        (None, Some(wait)) => Next::After(wait),
        (None, None) => Next::OnChange,
    })
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

/// The server's id: its label, else what the status recorded.
pub fn server_id(server: &VpsServer) -> Option<i64> {
    server
        .labels()
        .get(SERVER_ID_LABEL)
        .and_then(|v| v.parse().ok())
        .or_else(|| server.status.as_ref().and_then(|s| s.id))
}

/// The catalog entries a server names, owned.
pub struct Resolved {
    pub plan: crate::api::VpsPlan,
    pub image: crate::api::VpsImage,
    pub location: crate::api::VpsLocation,
    pub ssh_key: Option<VpsSshKey>,
}

/// Looks up plan, image, location (caches) and SSH key; `Err((reason, message))` names the first missing one.
async fn resolve(
    server: &VpsServer,
    ctx: &Context,
    ns: &str,
) -> Result<std::result::Result<Resolved, (String, String)>> {
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
        "metadata": {"name": format!("vps-clone-{ns}"), "namespace": image_ns, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLONE_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    });
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), image_ns);
    api.patch(&format!("vps-clone-{ns}"), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&binding)).await?;
    ctx.clone_bindings.lock().expect("lock").insert(key);
    Ok(())
}

/// Honours a new `rebootRequestedAt` once: deletes the running instance (KubeVirt starts a
/// new one under `runStrategy: Always`) and remembers which instance it replaced.
async fn handle_reboot(
    server: &VpsServer,
    ctx: &Context,
    vmi: Option<&VmiState>,
    status: &mut VpsServerStatus,
) -> Result<()> {
    let Some(stamp) = &server.spec.reboot_requested_at else { return Ok(()) };
    if status.observed_reboot_request.as_ref() == Some(stamp) {
        return Ok(());
    }
    status.observed_reboot_request = Some(stamp.clone());
    let running = vmi.filter(|v| v.running);
    let Some(vmi) = running.filter(|_| vm::run_strategy(server) == "Always") else {
        return Ok(()); // nothing runs: nothing to reboot
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
    status.reboot_from_instance = uid;
    publish(ctx, server, EventType::Normal, "Rebooting", "Restarting the virtual machine instance").await;
    Ok(())
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
