//! Caches: every read of the gateway (tokens, accounts, catalog, keys, servers) is served
//! from memory, kept current by watches. `managedFields` are pruned before caching, and
//! servers keep only what the API serves.
//!
//! Read-your-writes: after a write, a handler waits (bounded) until the cache holds the
//! written `resourceVersion` or a newer one, so the next GET on this gateway reflects it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::api::{SERVER_ID_LABEL, VpsAccount, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey};
use crate::tokens::{TOKEN_LABEL, read_token_secret};

use super::index::{Entry, Rendered, ServerIndex};
use super::view::{self, UPDATED_AT_ANNOTATION};

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
    pub tokens: Arc<TokenIndex>,
    /// Moves on with every change of a plan or image: rendered servers show both.
    catalog_version: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The API tokens: the SHA-256 of each token and the account it acts for, kept from a watch
/// of the token Secrets.
#[derive(Default)]
pub struct TokenIndex {
    inner: RwLock<TokenMaps>,
    ready: AtomicBool,
}

#[derive(Default)]
struct TokenMaps {
    /// Secret name → (hash, account).
    secrets: HashMap<String, (String, String)>,
    staging: Option<HashMap<String, (String, String)>>,
    /// Hash → account, rebuilt from `secrets` on every change.
    by_hash: HashMap<String, String>,
}

impl TokenIndex {
    fn apply(&self, event: watcher::Event<Secret>) {
        let mut maps = self.inner.write().expect("token index lock");
        let maps = &mut *maps;
        let entry = |s: &Secret| read_token_secret(s).map(|token| (s.name_any(), token));
        match event {
            watcher::Event::Apply(s) => match entry(&s) {
                Some((name, token)) => drop(maps.secrets.insert(name, token)),
                None => drop(maps.secrets.remove(&s.name_any())),
            },
            watcher::Event::Delete(s) => drop(maps.secrets.remove(&s.name_any())),
            watcher::Event::Init => maps.staging = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                if let (Some(staging), Some((name, token))) = (&mut maps.staging, entry(&s)) {
                    staging.insert(name, token);
                }
            }
            watcher::Event::InitDone => {
                if let Some(staging) = maps.staging.take() {
                    maps.secrets = staging;
                }
                self.ready.store(true, Ordering::Release);
            }
        }
        maps.by_hash = maps.secrets.values().map(|(hash, account)| (hash.clone(), account.clone())).collect();
    }

    /// The account of the token with this hex SHA-256. A map lookup keyed by the hash: what
    /// its timing could reveal is the hash, which says nothing of any token.
    pub fn account(&self, hash: &str) -> Option<String> {
        self.inner.read().expect("token index lock").by_hash.get(hash).cloned()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
        status.last_backup_time = None;
        status.reboot_from_instance = None;
    }
}

/// Follows a watch of `api`, handing each event (pruned) to `sink`.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    tasks: &mut Vec<JoinHandle<()>>,
    prune: fn(&mut K),
    mut sink: impl FnMut(watcher::Event<K>) + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, config.page_size(500))
        .default_backoff()
        .modify(move |obj: &mut K| {
            obj.managed_fields_mut().clear();
            obj.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
            prune(obj);
        })
        .for_each(move |event| {
            match event {
                Ok(event) => sink(event),
                Err(e) => tracing::warn!(kind, error = %e, "Watch failed; retrying with backoff"),
            }
            futures::future::ready(())
        });
    tasks.push(tokio::spawn(stream));
}

impl Drop for Caches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    spawn_versioned_reflector(api, config, tasks, Arc::default())
}

/// A reflector that moves `version` on after each event has reached the store.
fn spawn_versioned_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    tasks: &mut Vec<JoinHandle<()>>,
    version: Arc<AtomicU64>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, mut writer) = reflector::store();
    spawn_watch(
        api,
        config,
        tasks,
        |_| {},
        move |event| {
            writer.apply_watcher_event(&event);
            version.fetch_add(1, Ordering::Release);
        },
    );
    reader
}

impl Caches {
    /// Starts the watches; tokens are watched in `system_namespace` only.
    pub fn start(client: Client, system_namespace: &str) -> Caches {
        let mut tasks = Vec::new();
        let all = watcher::Config::default();
        let servers = Arc::new(ServerIndex::default());
        let index = servers.clone();
        spawn_watch(Api::<VpsServer>::all(client.clone()), all.clone(), &mut tasks, prune_server, move |e| {
            index.apply(e)
        });
        let catalog_version = Arc::new(AtomicU64::new(0));
        let plans = spawn_versioned_reflector(
            Api::<VpsPlan>::all(client.clone()),
            all.clone(),
            &mut tasks,
            catalog_version.clone(),
        );
        let images = spawn_versioned_reflector(
            Api::<VpsImage>::all(client.clone()),
            all.clone(),
            &mut tasks,
            catalog_version.clone(),
        );
        let locations = spawn_reflector(Api::<VpsLocation>::all(client.clone()), all.clone(), &mut tasks);
        let accounts = spawn_reflector(Api::<VpsAccount>::all(client.clone()), all.clone(), &mut tasks);
        let ssh_keys = spawn_reflector(Api::<VpsSshKey>::all(client.clone()), all, &mut tasks);
        let tokens = Arc::new(TokenIndex::default());
        let index = tokens.clone();
        spawn_watch(
            Api::<Secret>::namespaced(client, system_namespace),
            watcher::Config::default().labels(&format!("{TOKEN_LABEL}=true")),
            &mut tasks,
            |_| {},
            move |e| index.apply(e),
        );
        let ready = Arc::new(AtomicBool::new(false));
        let (s, p, i, l, a, k, t) = (
            servers.clone(),
            plans.clone(),
            images.clone(),
            locations.clone(),
            accounts.clone(),
            ssh_keys.clone(),
            tokens.clone(),
        );
        let flag = ready.clone();
        tasks.push(tokio::spawn(async move {
            let synced = futures::try_join!(
                p.wait_until_ready(),
                i.wait_until_ready(),
                l.wait_until_ready(),
                a.wait_until_ready(),
                k.wait_until_ready(),
            );
            while !(s.is_ready() && t.is_ready()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if synced.is_ok() {
                tracing::info!("Caches synced");
                flag.store(true, Ordering::Release);
            }
        }));
        Caches { servers, plans, images, locations, accounts, ssh_keys, tokens, catalog_version, ready, tasks }
    }

    /// Whether every cache has listed its objects once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Resolves once every cache has synced.
    pub async fn wait_ready(&self) {
        while !self.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    pub fn account(&self, name: &str) -> Option<Arc<VpsAccount>> {
        self.accounts.get(&ObjectRef::new(name))
    }
}

/// A server's integer id: its `vps.org/server-id` label, else `status.id`.
pub fn server_id(s: &VpsServer) -> Option<i64> {
    s.labels()
        .get(SERVER_ID_LABEL)
        .and_then(|v| v.parse::<i64>().ok())
        .or_else(|| s.status.as_ref().and_then(|st| st.id))
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
