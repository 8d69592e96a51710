//! CDI's importer and a CSI driver, resizer and snapshotter, simulated: a DataVolume gets a
//! PVC bound to a simulated PV and then `Succeeded`; a claim asking for more than it has
//! grows (the PV, then the claim's capacity, as the external resizer and the kubelet do); a
//! VolumeSnapshot becomes ready; a claim restored from one is bound (and adopted by its
//! DataVolume, as CDI does after an in-place restore); released PVs go.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::{DRIVER, Failure, STORAGE_CLASS, Sim, remaining};
use crate::kubevirt::{DataVolume, VolumeSnapshot, quantity_bytes};

use crate::api::SIMULATOR_MANAGER as MANAGER;

/// The simulated StorageClass (default) and its VolumeSnapshotClass.
pub async fn ensure_storage_classes(client: &Client) -> anyhow::Result<()> {
    let class = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate", "allowVolumeExpansion": true,
    });
    Api::<StorageClass>::all(client.clone())
        .patch(STORAGE_CLASS, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&class))
        .await?;
    let snapshot_class = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
        "driver": DRIVER, "deletionPolicy": "Delete",
    });
    let ar = kube::core::ApiResource {
        group: "snapshot.storage.k8s.io".into(),
        version: "v1".into(),
        api_version: "snapshot.storage.k8s.io/v1".into(),
        kind: "VolumeSnapshotClass".into(),
        plural: "volumesnapshotclasses".into(),
    };
    Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar)
        .patch(STORAGE_CLASS, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&snapshot_class))
        .await?;
    Ok(())
}

fn requeue_on_error<K, E: std::fmt::Display>(_: Arc<K>, e: &E, _: Arc<Sim>) -> Action {
    tracing::debug!("Simulated storage: {e}");
    Action::requeue(Duration::from_millis(500))
}

/// CDI's importer: every DataVolume not yet Succeeded.
pub async fn run_data_volumes(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<DataVolume> = Api::all(sim.client.clone());
    Controller::new(api, watcher::Config::default())
        .owns(
            Api::<PersistentVolumeClaim>::all(sim.client.clone()),
            watcher::Config::default().labels("simulator.vps.org/volume"),
        )
        .run(reconcile_data_volume, requeue_on_error, sim)
        .for_each(|_| async {})
        .await;
    Ok(())
}

async fn reconcile_data_volume(dv: Arc<DataVolume>, sim: Arc<Sim>) -> Result<Action, kube::Error> {
    let phase = dv.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if dv.annotations().contains_key(PRE_POPULATED) && dv.metadata.deletion_timestamp.is_none() {
        return prepopulated(&dv, &phase, &sim).await;
    }
    if phase == "Succeeded" || phase == "Failed" || dv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let dvs: Api<DataVolume> = Api::namespaced(sim.client.clone(), &ns);
    let now = super::k8s_now();
    let vm =
        dv.owner_references().iter().find(|o| o.kind == "VirtualMachine").map(|o| o.name.clone()).unwrap_or_default();
    if sim.failure(&ns, &vm) == Some(Failure::DataVolume) {
        let status = json!({"status": {"phase": "Failed", "progress": "N/A", "conditions": [
            {"type": "Running", "status": "False", "reason": "Error", "message": "simulated import failure", "lastTransitionTime": now, "lastHeartbeatTime": now},
            {"type": "Ready", "status": "False", "reason": "Error", "lastTransitionTime": now, "lastHeartbeatTime": now},
        ]}});
        dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        return Ok(Action::await_change());
    }
    let storage = &dv.spec.rest.get("storage").or_else(|| dv.spec.rest.get("pvc")).cloned().unwrap_or_default();
    let size = storage["resources"]["requests"]["storage"].as_str().unwrap_or("10Gi").to_string();
    let class = storage["storageClassName"].as_str().unwrap_or(STORAGE_CLASS).to_string();

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client.clone(), &ns);
    let pvc = match pvcs.get_opt(&name).await? {
        // The claim of a DataVolume this one replaces (a rebuild): wait until it is gone.
        Some(pvc)
            if pvc.metadata.deletion_timestamp.is_some()
                || !pvc.owner_references().iter().any(|o| Some(o.uid.as_str()) == dv.uid().as_deref()) =>
        {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Some(pvc) => pvc,
        None => {
            let pvc = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns, "labels": {"simulator.vps.org/volume": "true"},
                    "ownerReferences": [dv.controller_owner_ref(&()).expect("a DataVolume from the API has a uid")]},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class, "volumeMode": "Filesystem",
                    "resources": {"requests": {"storage": size}}},
            });
            let created = pvcs.patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&pvc)).await?;
            provision(&sim, &created, &size, &class).await?;
            created
        }
    };
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        // kube-controller-manager binds it; the PVC watch wakes us.
        let status = json!({"status": {"phase": "ImportScheduled", "progress": "N/A", "claimName": name}});
        if phase.is_empty() {
            dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let wait = remaining(sim.config.import_delay, dv.creation_timestamp().map(|t| t.0));
    if !wait.is_zero() {
        return Ok(Action::requeue(wait));
    }
    let status = json!({"status": {"phase": "Succeeded", "progress": "100.0%", "claimName": name, "conditions": [
        {"type": "Bound", "status": "True", "reason": "Bound", "lastTransitionTime": now, "lastHeartbeatTime": now},
        {"type": "Ready", "status": "True", "reason": "Completed", "lastTransitionTime": now, "lastHeartbeatTime": now},
        {"type": "Running", "status": "False", "reason": "Completed", "lastTransitionTime": now, "lastHeartbeatTime": now},
    ]}});
    dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(Action::await_change())
}

/// CDI's annotation on a DataVolume whose claim is filled by someone else (virt-controller,
/// restoring it in place): CDI makes no claim for it, and follows the one that appears.
const PRE_POPULATED: &str = "cdi.kubevirt.io/storage.prePopulated";

/// A prepopulated DataVolume: `Pending` while its claim is missing or not yet its own and
/// bound, `Succeeded` once it is (the phase change is what wakes virt-controller's restore).
async fn prepopulated(dv: &DataVolume, phase: &str, sim: &Sim) -> Result<Action, kube::Error> {
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let pvc = Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &ns).get_opt(&name).await?;
    let ready = pvc.as_ref().is_some_and(|pvc| {
        pvc.metadata.deletion_timestamp.is_none()
            && pvc.owner_references().iter().any(|o| Some(o.uid.as_str()) == dv.uid().as_deref())
            && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    });
    let now = super::k8s_now();
    let (want, bound, reason) =
        if ready { ("Succeeded", "True", "Bound") } else { ("Pending", "False", "ClaimPending") };
    if phase != want {
        let status = json!({"status": {"phase": want, "progress": "N/A", "claimName": name, "conditions": [
            {"type": "Bound", "status": bound, "reason": reason, "lastTransitionTime": now, "lastHeartbeatTime": now},
            {"type": "Ready", "status": bound, "reason": reason, "lastTransitionTime": now, "lastHeartbeatTime": now},
        ]}});
        Api::<DataVolume>::namespaced(sim.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    // An unowned claim is adopted by the claims' controller; its events reach us after that.
    Ok(if ready { Action::await_change() } else { Action::requeue(Duration::from_secs(1)) })
}

/// The CSI driver's cleanup: simulated PVs whose claim is gone are deleted.
pub async fn run_volumes(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<PersistentVolume> = Api::all(sim.client.clone());
    Controller::new(api, watcher::Config::default().labels("simulator.vps.org/volume"))
        .run(
            |pv: Arc<PersistentVolume>, sim: Arc<Sim>| async move {
                let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
                if phase == "Released" || phase == "Failed" {
                    let api: Api<PersistentVolume> = Api::all(sim.client.clone());
                    match api.delete(&pv.name_any(), &DeleteParams::background()).await {
                        Ok(_) | Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Action::await_change())
            },
            requeue_on_error,
            sim,
        )
        .for_each(|_| async {})
        .await;
    Ok(())
}

/// The simulated claims: restored ones bound and adopted ([`bind_restored`],
/// [`adopt_prepopulated`]); and the CSI resizer (and the kubelet's filesystem growth): a bound
/// claim whose request is larger than its capacity gets a PV and a capacity of that size.
pub async fn run_expansion(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::all(sim.client.clone());
    Controller::new(api, watcher::Config::default().labels("simulator.vps.org/volume"))
        .run(reconcile_expansion, requeue_on_error, sim)
        .for_each(|_| async {})
        .await;
    Ok(())
}

async fn reconcile_expansion(pvc: Arc<PersistentVolumeClaim>, sim: Arc<Sim>) -> Result<Action, kube::Error> {
    if pvc.metadata.deletion_timestamp.is_none() {
        bind_restored(&pvc, &sim).await?;
        adopt_prepopulated(&pvc, &sim).await?;
    }
    let status = pvc.status.as_ref();
    let quantity = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| q.map(|q| q.0.clone());
    let requested = quantity(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
    );
    let capacity = quantity(status.and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")));
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    let (Some(requested), Some(capacity), Some(volume)) = (requested, capacity, volume) else {
        return Ok(Action::await_change());
    };
    if status.and_then(|s| s.phase.as_deref()) != Some("Bound")
        || quantity_bytes(&requested) <= quantity_bytes(&capacity)
        || pvc.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let size = json!({"storage": requested});
    Api::<PersistentVolume>::all(sim.client.clone())
        .patch(&volume, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"capacity": size}})))
        .await?;
    Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &pvc.namespace().unwrap_or_default())
        .patch_status(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": {"capacity": size}})))
        .await?;
    tracing::info!(claim = %pvc.name_any(), size = %requested, "Simulated volume expansion");
    Ok(Action::await_change())
}

/// The CSI provisioner's part in a restore: a pending claim made from a VolumeSnapshot (what
/// virt-controller creates for a VirtualMachineRestore) gets a simulated PV of its size, bound
/// to it by kube-controller-manager.
async fn bind_restored(pvc: &PersistentVolumeClaim, sim: &Sim) -> Result<(), kube::Error> {
    let Some(spec) = pvc.spec.as_ref() else { return Ok(()) };
    let from_snapshot = spec.data_source.as_ref().is_some_and(|d| d.kind == "VolumeSnapshot");
    if !from_snapshot || spec.volume_name.is_some() {
        return Ok(());
    }
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "1Gi".to_string(), |q| q.0.clone());
    let class = spec.storage_class_name.clone().unwrap_or_else(|| STORAGE_CLASS.into());
    provision(sim, pvc, &size, &class).await?;
    tracing::info!(claim = %pvc.name_any(), "Simulated restore of a claim from its VolumeSnapshot");
    Ok(())
}

/// The CSI provisioner: a simulated PV of `size` for `claim`, bound to it in advance (its
/// `claimRef` names the claim's uid; kube-controller-manager completes the binding).
async fn provision(sim: &Sim, claim: &PersistentVolumeClaim, size: &str, class: &str) -> Result<(), kube::Error> {
    let (ns, name, uid) = (claim.namespace().unwrap_or_default(), claim.name_any(), claim.uid().unwrap_or_default());
    let pv_name = format!("sim-{uid}");
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"simulator.vps.org/volume": "true"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": size}, "storageClassName": class,
            "persistentVolumeReclaimPolicy": "Retain", "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid},
            "csi": {"driver": DRIVER, "volumeHandle": uid}},
    });
    Api::<PersistentVolume>::all(sim.client.clone())
        .patch(&pv_name, &PatchParams::apply(MANAGER), &Patch::Apply(&pv))
        .await?;
    Ok(())
}

/// CDI's adoption of a prepopulated claim: a claim whose `populatedFor` annotation names a
/// DataVolume, and that nothing owns, becomes that DataVolume's (as after an in-place restore).
async fn adopt_prepopulated(pvc: &PersistentVolumeClaim, sim: &Sim) -> Result<(), kube::Error> {
    const POPULATED_FOR: &str = "cdi.kubevirt.io/storage.populatedFor";
    let Some(dv_name) = pvc.annotations().get(POPULATED_FOR) else { return Ok(()) };
    if !pvc.owner_references().is_empty() {
        return Ok(());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let Some(dv) = Api::<DataVolume>::namespaced(sim.client.clone(), &ns).get_opt(dv_name).await? else {
        return Ok(());
    };
    let owner = dv.controller_owner_ref(&()).expect("a DataVolume from the API has a uid");
    let patch = json!({"metadata": {"ownerReferences": [owner]}});
    Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &ns)
        .patch(&pvc.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The CSI snapshotter: VolumeSnapshots become ready.
pub async fn run_snapshots(sim: Arc<Sim>) -> anyhow::Result<()> {
    let api: Api<VolumeSnapshot> = Api::all(sim.client.clone());
    Controller::new(api, watcher::Config::default())
        .run(reconcile_snapshot, requeue_on_error, sim)
        .for_each(|_| async {})
        .await;
    Ok(())
}

async fn reconcile_snapshot(snapshot: Arc<VolumeSnapshot>, sim: Arc<Sim>) -> Result<Action, kube::Error> {
    if snapshot.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
        || snapshot.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let ns = snapshot.namespace().unwrap_or_default();
    let pvc_name = snapshot.spec.source["persistentVolumeClaimName"].as_str().unwrap_or_default().to_string();
    // The VM behind the volume: PVC ← DataVolume ← VirtualMachine.
    let dvs: Api<DataVolume> = Api::namespaced(sim.client.clone(), &ns);
    let vm = match dvs.get_opt(&pvc_name).await? {
        Some(dv) => dv.owner_references().iter().find(|o| o.kind == "VirtualMachine").map(|o| o.name.clone()),
        None => None,
    };
    if vm.is_some_and(|vm| sim.failure(&ns, &vm) == Some(Failure::Snapshot)) {
        return Ok(Action::await_change()); // never ready: KubeVirt fails it at its deadline
    }
    let wait = remaining(sim.config.snapshot_delay, snapshot.creation_timestamp().map(|t| t.0));
    if !wait.is_zero() {
        return Ok(Action::requeue(wait));
    }
    let size = match Api::<PersistentVolumeClaim>::namespaced(sim.client.clone(), &ns).get_opt(&pvc_name).await? {
        Some(pvc) => pvc
            .spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").map(|q| q.0.clone()))
            .unwrap_or_else(|| "1Gi".into()),
        None => "1Gi".into(),
    };
    let status = json!({"status": {"readyToUse": true, "creationTime": super::k8s_now(), "restoreSize": size,
        "boundVolumeSnapshotContentName": format!("snapcontent-{}", snapshot.uid().unwrap_or_default())}});
    Api::<VolumeSnapshot>::namespaced(sim.client.clone(), &ns)
        .patch_status(&snapshot.name_any(), &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(Action::await_change())
}
