//! Caches: every read of the gateway (tokens, accounts, catalog, keys, servers) is served
//! from memory. [`Caches::new`] makes them empty with the [`Feeds`] that fill them: from the
//! cluster's watches ([`Feeds::watch`], what [`Caches::watch`] does) or, in tests, from a
//! fixture ([`Feeds::load`]). `managedFields` are pruned before caching, and servers keep
//! only what the API serves.
//!
//! Read-your-writes: after a write, a handler waits (bounded) until the cache holds the
//! written `resourceVersion` or a newer one, so the next GET on this gateway reflects it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{VpsAccount, VpsAction, VpsAddress, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey};
use crate::kubevirt::VirtualMachineSnapshot;
use crate::tokens::{TokenRecord, read_token_secret};
use crate::watch_cache::{self, Index, Ready};

pub use super::feeds::{Feeds, Fixture};
use super::index::{Entry, ServerIndex};
use super::view::{self, Catalog, Rendered};

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
