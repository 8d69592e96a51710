//! Caches: every read of the gateway (tokens, accounts, catalog, keys, servers) is served
//! from memory. [`Caches::new`] makes them empty with the [`Feeds`] that fill them: from the
//! cluster's watches ([`Feeds::watch`], what [`Caches::watch`] does) or, in tests, from a
//! fixture ([`Feeds::load`]). `managedFields` are pruned before caching, and servers keep
//! only what the API serves.
//!
//! Read-your-writes: after a write, a handler waits (bounded) until the cache holds the
//! written `resourceVersion` or a newer one, so the next GET on this gateway reflects it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{
    SERVER_LABEL, VpsAccount, VpsAction, VpsAddress, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey,
};
use crate::kubevirt::VirtualMachineSnapshot;
use crate::tokens::{TOKEN_LABEL, TokenRecord, read_token_secret};
use crate::watch_cache::{self, Feed, Index, Ready};

use super::index::{Entry, ServerIndex};
use super::view::{self, Catalog, Rendered, UPDATED_AT_ANNOTATION};

/// How long a handler waits for its own write to reach the cache.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's caches.
pub struct Caches {
    /// The servers by namespace and name, and by account namespace and id.
    pub servers: Arc<ServerIndex>,
    pub plans: Store<VpsPlan>,
    pub images: Store<VpsImage>,
    pub locations: Store<VpsLocation>,
    pub accounts: Store<VpsAccount>,
    pub ssh_keys: Store<VpsSshKey>,
    /// The servers' tracked actions (managed fields pruned).
    pub actions: Store<VpsAction>,
    /// The servers' backups (VirtualMachineSnapshots with a server label).
    pub snapshots: Store<VirtualMachineSnapshot>,
    /// The addresses given out in the locations' pools.
    pub addresses: Store<VpsAddress>,
    pub tokens: Arc<TokenIndex>,
    /// Moves on with every change of a plan or image: rendered servers show both.
    catalog_version: Arc<AtomicU64>,
    ready: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The write side of [`Caches`].
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
    catalog_version: Arc<AtomicU64>,
}

/// The API tokens: the SHA-256 of each token and the account it acts for, kept from a watch
/// of the token Secrets.
#[derive(Default)]
pub struct TokenIndex {
    inner: RwLock<TokenMaps>,
}

/// A token Secret's name → its token's hash, and hash → the token's record.
#[derive(Default)]
pub struct TokenMaps {
    secrets: HashMap<String, String>,
    by_hash: HashMap<String, TokenRecord>,
}

impl TokenMaps {
    fn insert(&mut self, secret: &Secret) {
        let Some(record) = read_token_secret(secret) else {
            self.remove(&secret.name_any());
            return;
        };
        if let Some(old_hash) = self.secrets.insert(secret.name_any(), record.hash.clone()) {
            self.by_hash.remove(&old_hash);
        }
        self.by_hash.insert(record.hash.clone(), record);
    }

    fn remove(&mut self, name: &str) {
        if let Some(hash) = self.secrets.remove(name) {
            self.by_hash.remove(&hash);
        }
    }
}

impl Index<Secret> for TokenIndex {
    type Staging = TokenMaps;

    fn upsert(&self, secret: Secret) {
        self.inner.write().expect("token index lock").insert(&secret);
    }

    fn remove(&self, secret: &Secret) {
        self.inner.write().expect("token index lock").remove(&secret.name_any());
    }

    fn stage(&self, staging: &mut TokenMaps, secret: Secret) {
        staging.insert(&secret);
    }

    fn replace(&self, staging: TokenMaps) {
        *self.inner.write().expect("token index lock") = staging;
    }
}

impl TokenIndex {
    /// The record of the token with this hex SHA-256. A map lookup keyed by the hash: what
    /// its timing could reveal is the hash, which says nothing of any token.
    pub fn record(&self, hash: &str) -> Option<TokenRecord> {
        self.inner.read().expect("token index lock").by_hash.get(hash).cloned()
    }
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

impl Drop for Caches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Caches {
    /// Empty caches and what fills them. Must be called within a Tokio runtime (a task
    /// tells when every cache has its first list).
    pub fn new() -> (Caches, Feeds) {
        let servers = Arc::new(ServerIndex::default());
        let tokens = Arc::new(TokenIndex::default());
        let (server_feed, servers_ready) = watch_cache::feed(servers.clone());
        let (token_feed, tokens_ready) = watch_cache::feed(tokens.clone());
        let (plans, plan_writer) = reflector::store();
        let (images, image_writer) = reflector::store();
        let (locations, location_writer) = reflector::store();
        let (accounts, account_writer) = reflector::store();
        let (ssh_keys, key_writer) = reflector::store();
        let (actions, action_writer) = reflector::store();
        let (snapshots, snapshot_writer) = reflector::store();
        let (addresses, address_writer) = reflector::store();
        let (ready_tx, ready) = watch::channel(false);
        let stores = (plans.clone(), images.clone(), locations.clone(), accounts.clone(), ssh_keys.clone());
        let (tracked, backups, given) = (actions.clone(), snapshots.clone(), addresses.clone());
        let readiness = tokio::spawn(async move {
            let (p, i, l, a, k) = stores;
            let synced = futures::join!(
                p.wait_until_ready(),
                i.wait_until_ready(),
                l.wait_until_ready(),
                a.wait_until_ready(),
                k.wait_until_ready(),
                tracked.wait_until_ready(),
                backups.wait_until_ready(),
                given.wait_until_ready(),
                Ready::all([servers_ready, tokens_ready]),
            );
            let stores = [synced.0, synced.1, synced.2, synced.3, synced.4, synced.5, synced.6, synced.7];
            if stores.iter().all(Result::is_ok) {
                tracing::info!("Caches synced");
                ready_tx.send_replace(true);
            }
        });
        let catalog_version = Arc::new(AtomicU64::new(0));
        let caches = Caches {
            servers,
            plans,
            images,
            locations,
            accounts,
            ssh_keys,
            actions,
            snapshots,
            addresses,
            tokens,
            catalog_version: catalog_version.clone(),
            ready,
            tasks: vec![readiness],
        };
        let feeds = Feeds {
            servers: server_feed,
            tokens: token_feed,
            plans: plan_writer,
            images: image_writer,
            locations: location_writer,
            accounts: account_writer,
            ssh_keys: key_writer,
            actions: action_writer,
            snapshots: snapshot_writer,
            addresses: address_writer,
            catalog_version,
        };
        (caches, feeds)
    }

    /// Caches kept by watches of the cluster; tokens are watched in `system_namespace` only.
    pub fn watch(client: Client, system_namespace: &str) -> Caches {
        let (mut caches, feeds) = Caches::new();
        caches.tasks.extend(feeds.watch(client, system_namespace));
        caches
    }

    /// Whether every cache has listed its objects once.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once every cache has synced.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// One server of a namespace by its integer id; deleted or deleting servers are gone.
    pub fn server(&self, namespace: &str, id: i64) -> Option<Arc<VpsServer>> {
        self.servers.get(namespace, id)
    }

    /// The JSON of an indexed server: rendered once, then reused until it or the catalog
    /// changes. `None` for a server without an id.
    pub fn rendered(&self, entry: &Entry) -> Option<Rendered> {
        entry.rendered(self.catalog_version.load(Ordering::Acquire), |s| view::render(s, self))
    }

    pub fn plan_by_name(&self, name: &str) -> Option<Arc<VpsPlan>> {
        self.plans.get(&ObjectRef::new(name))
    }

    pub fn image_by_name(&self, name: &str) -> Option<Arc<VpsImage>> {
        self.images.get(&ObjectRef::new(name))
    }

    pub fn location(&self, code: &str) -> Option<Arc<VpsLocation>> {
        self.locations.get(&ObjectRef::new(code))
    }

    pub fn account(&self, name: &str) -> Option<Arc<VpsAccount>> {
        self.accounts.get(&ObjectRef::new(name))
    }

    /// How many servers more `location`'s pools have addresses for; `None` on the pod
    /// network (or pools that cannot be used: the operator says why).
    pub fn addresses_left(&self, location: &VpsLocation) -> Option<u64> {
        let network = location.spec.network.as_ref()?;
        let code = location.name_any();
        let pools = crate::address_pool::Pools::parse(&code, network).ok()?;
        let now = jiff::Timestamp::now();
        let held = self
            .addresses
            .state()
            .iter()
            .filter(|a| a.spec.location == code && !a.reusable_at(now) && pools.contains(&a.spec.ipv4))
            .count();
        Some(pools.assignments().count().saturating_sub(held) as u64)
    }
}

impl Catalog for Caches {
    fn plan(&self, name: &str) -> Option<Arc<VpsPlan>> {
        self.plan_by_name(name)
    }

    fn image(&self, name: &str) -> Option<Arc<VpsImage>> {
        self.image_by_name(name)
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

/// Whether `have` is the same as or newer than `want`. resourceVersions are opaque in
/// principle; in practice they are etcd revisions, compared as integers when they parse.
fn at_least(have: Option<&str>, want: &str) -> bool {
    match (have.and_then(|h| h.parse::<u64>().ok()), want.parse::<u64>().ok()) {
        (Some(h), Some(w)) => h >= w,
        _ => have == Some(want),
    }
}

/// A cache that can be asked for its copy of an object.
pub trait Lookup<K> {
    fn lookup(&self, obj: &K) -> Option<Arc<K>>;
}

impl<K> Lookup<K> for Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    fn lookup(&self, obj: &K) -> Option<Arc<K>> {
        self.get(&ObjectRef::from_obj(obj))
    }
}

impl Lookup<VpsServer> for ServerIndex {
    fn lookup(&self, obj: &VpsServer) -> Option<Arc<VpsServer>> {
        self.object(obj.metadata.namespace.as_deref().unwrap_or_default(), obj.metadata.name.as_deref()?)
    }
}

/// Waits until `cache` holds `obj` at its resourceVersion or newer (or until the object is
/// deleted, which is newer still). Gives up quietly after a bound: the write succeeded.
pub async fn wait_for_write<K: Resource>(cache: &impl Lookup<K>, obj: &K) {
    let Some(want) = obj.resource_version() else { return };
    let key = obj.name_any();
    let uid = obj.uid();
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
    loop {
        match cache.lookup(obj) {
            Some(cached) if cached.uid() != uid => return,
            Some(cached) if at_least(cached.resource_version().as_deref(), &want) => return,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(object = %key, "Cache did not reach a write in time");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `cache` no longer holds the object, or holds it marked for deletion.
pub async fn wait_for_delete<K: Resource>(cache: &impl Lookup<K>, obj: &K) {
    let key = obj.name_any();
    let uid = obj.uid();
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
    loop {
        match cache.lookup(obj) {
            None => return,
            Some(cached) if cached.uid() != uid || cached.meta().deletion_timestamp.is_some() => return,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(object = %key, "Cache did not reach a delete in time");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::at_least;

    #[test]
    fn resource_versions_compare_as_numbers() {
        assert!(at_least(Some("10"), "9"));
        assert!(at_least(Some("10"), "10"));
        assert!(!at_least(Some("9"), "10"));
        assert!(!at_least(None, "10"));
        assert!(at_least(Some("abc"), "abc"));
        assert!(!at_least(Some("abc"), "abd"));
    }
}
