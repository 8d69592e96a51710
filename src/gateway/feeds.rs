//! The write side of the gateway's caches ([`Feeds`]): the cluster's watches that fill them,
//! each object pruned on the way in, or (in tests) a [`Fixture`] loaded at once.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::api::{
    SERVER_LABEL, VpsAccount, VpsAction, VpsAddress, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey,
};
use crate::kubevirt::VirtualMachineSnapshot;
use crate::tokens::TOKEN_LABEL;
use crate::watch_cache::Feed;

use super::cache::TokenIndex;
use super::index::ServerIndex;
use super::view::UPDATED_AT_ANNOTATION;

/// The write side of [`Caches`](super::cache::Caches).
pub struct Feeds {
    pub servers: Feed<VpsServer, ServerIndex>,
    pub tokens: Feed<Secret, TokenIndex>,
    pub plans: Writer<VpsPlan>,
    pub images: Writer<VpsImage>,
    pub locations: Writer<VpsLocation>,
    pub accounts: Writer<VpsAccount>,
    pub ssh_keys: Writer<VpsSshKey>,
    pub actions: Writer<VpsAction>,
    pub snapshots: Writer<VirtualMachineSnapshot>,
    pub addresses: Writer<VpsAddress>,
    pub(super) catalog_version: Arc<AtomicU64>,
}

/// What a cached server keeps: the fields the API serves and the gateway decides on.
fn prune_server(s: &mut VpsServer) {
    s.metadata.owner_references = None;
    s.metadata.finalizers = None;
    if let Some(annotations) = &mut s.metadata.annotations {
        annotations.retain(|k, _| k == UPDATED_AT_ANNOTATION);
    }
    if let Some(status) = &mut s.status {
        status.conditions = Vec::new();
        status.vm_name = None;
        status.reboot_from_instance = None;
        status.rebuild_from_volume = None;
        status.observed_backup_request = None;
        status.backup_request_state = None;
        status.vm_uid = None;
        status.root_volume_uid = None;
        if let Some(restore) = &mut status.restore {
            (restore.name, restore.message) = (None, None);
        }
        // Of what the server was built from, the API shows its plan and image.
        if let Some(resolved) = &mut status.resolved {
            resolved.ssh_key = None;
            resolved.location.spec.node_selector.clear();
            resolved.location.spec.storage_class = None;
        }
    }
}

/// What every cached object loses: the server-side apply bookkeeping and kubectl's copy.
fn prune<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Follows a watch of `api`, handing each event (pruned) to `sink`.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    prune_more: fn(&mut K),
    mut sink: impl FnMut(watcher::Event<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, config.page_size(500))
        .default_backoff()
        .modify(move |obj: &mut K| {
            prune(obj);
            prune_more(obj);
        })
        .for_each(move |event| {
            match event {
                Ok(event) => sink(event),
                Err(e) => tracing::warn!(kind, error = %e, "Watch failed; retrying with backoff"),
            }
            futures::future::ready(())
        });
    tokio::spawn(stream)
}

/// A kube-runtime store's writer as a sink of watch events; `version` moves on after each.
fn into_sink<K>(mut writer: Writer<K>, version: Option<Arc<AtomicU64>>) -> impl FnMut(watcher::Event<K>) + Send
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    move |event| {
        writer.apply_watcher_event(&event);
        if let Some(version) = &version {
            version.fetch_add(1, Ordering::Release);
        }
    }
}

impl Feeds {
    /// Follows the cluster's watches into the caches (one task per watch).
    pub fn watch(self, client: Client, system_namespace: &str) -> Vec<JoinHandle<()>> {
        let all = watcher::Config::default;
        let Feeds {
            mut servers,
            mut tokens,
            plans,
            images,
            locations,
            accounts,
            ssh_keys,
            actions,
            snapshots,
            addresses,
            catalog_version,
        } = self;
        let catalog = Some(catalog_version);
        vec![
            spawn_watch(Api::<VpsServer>::all(client.clone()), all(), prune_server, move |e| servers.apply(e)),
            spawn_watch(Api::<VpsPlan>::all(client.clone()), all(), |_| {}, into_sink(plans, catalog.clone())),
            spawn_watch(Api::<VpsImage>::all(client.clone()), all(), |_| {}, into_sink(images, catalog)),
            spawn_watch(Api::<VpsLocation>::all(client.clone()), all(), |_| {}, into_sink(locations, None)),
            spawn_watch(Api::<VpsAccount>::all(client.clone()), all(), |_| {}, into_sink(accounts, None)),
            spawn_watch(Api::<VpsSshKey>::all(client.clone()), all(), |_| {}, into_sink(ssh_keys, None)),
            spawn_watch(Api::<VpsAction>::all(client.clone()), all(), |_| {}, into_sink(actions, None)),
            spawn_watch(Api::<VpsAddress>::all(client.clone()), all(), |_| {}, into_sink(addresses, None)),
            spawn_watch(
                Api::<VirtualMachineSnapshot>::all(client.clone()),
                all().labels(SERVER_LABEL),
                |_| {},
                into_sink(snapshots, None),
            ),
            spawn_watch(
                Api::<Secret>::namespaced(client, system_namespace),
                all().labels(&format!("{TOKEN_LABEL}=true")),
                |_| {},
                move |e| tokens.apply(e),
            ),
        ]
    }

    /// Fills every cache with one complete list of the objects given, as the watches' first
    /// lists would (tests without a cluster).
    pub fn load(self, fixture: Fixture) {
        fn load_store<K>(mut writer: Writer<K>, objects: Vec<K>)
        where
            K: Resource + Clone,
            K::DynamicType: Eq + Hash + Clone,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(object));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        let Feeds {
            mut servers,
            mut tokens,
            plans,
            images,
            locations,
            accounts,
            ssh_keys,
            actions,
            snapshots,
            addresses,
            ..
        } = self;
        servers.load(fixture.servers.into_iter().map(|mut s| {
            prune_server(&mut s);
            s
        }));
        tokens.load(fixture.tokens);
        load_store(plans, fixture.plans);
        load_store(images, fixture.images);
        load_store(locations, fixture.locations);
        load_store(accounts, fixture.accounts);
        load_store(ssh_keys, fixture.ssh_keys);
        load_store(actions, fixture.actions);
        load_store(snapshots, fixture.snapshots);
        load_store(addresses, fixture.addresses);
    }
}

/// Objects to fill the caches with ([`Feeds::load`]).
#[derive(Default)]
pub struct Fixture {
    pub servers: Vec<VpsServer>,
    pub tokens: Vec<Secret>,
    pub plans: Vec<VpsPlan>,
    pub images: Vec<VpsImage>,
    pub locations: Vec<VpsLocation>,
    pub accounts: Vec<VpsAccount>,
    pub ssh_keys: Vec<VpsSshKey>,
    pub actions: Vec<VpsAction>,
    pub snapshots: Vec<VirtualMachineSnapshot>,
    pub addresses: Vec<VpsAddress>,
}
