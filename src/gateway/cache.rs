//! Reflector caches: every read of the gateway (tokens, accounts, catalog, keys, servers)
//! is served from memory, kept current by watches. `managedFields` are pruned before caching.
//!
//! Read-your-writes: after a write, a handler waits (bounded) until the cache holds the
//! written `resourceVersion` or a newer one, so the next GET on this gateway reflects it.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::api::{SERVER_ID_LABEL, VpsAccount, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey};
use crate::tokens::TOKEN_LABEL;

use super::index::ServerIndex;

/// How long a handler waits for its own write to reach the cache.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's caches.
pub struct Caches {
    pub servers: Store<VpsServer>,
    /// The servers by account namespace and id (what lists and lookups read).
    pub server_index: Arc<ServerIndex>,
    pub plans: Store<VpsPlan>,
    pub images: Store<VpsImage>,
    pub locations: Store<VpsLocation>,
    pub accounts: Store<VpsAccount>,
    pub ssh_keys: Store<VpsSshKey>,
    pub tokens: Store<Secret>,
    ready: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
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
    spawn_indexed_reflector(api, config, tasks, |_| {})
}

/// A reflector whose events also go to `index`, before the store sees them.
fn spawn_indexed_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    tasks: &mut Vec<JoinHandle<()>>,
    index: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, config.page_size(500))
        .default_backoff()
        .modify(|obj: &mut K| {
            obj.managed_fields_mut().clear();
            obj.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
        })
        .inspect_ok(move |event| index(event))
        .reflect(writer)
        .for_each(move |event| {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "Watch failed; retrying with backoff");
            }
            futures::future::ready(())
        });
    tasks.push(tokio::spawn(stream));
    reader
}

impl Caches {
    /// Starts the watches; tokens are watched in `system_namespace` only.
    pub fn start(client: Client, system_namespace: &str) -> Caches {
        let mut tasks = Vec::new();
        let all = watcher::Config::default();
        let server_index = Arc::new(ServerIndex::default());
        let indexer = server_index.clone();
        let servers =
            spawn_indexed_reflector(Api::<VpsServer>::all(client.clone()), all.clone(), &mut tasks, move |e| {
                indexer.apply(e)
            });
        let plans = spawn_reflector(Api::<VpsPlan>::all(client.clone()), all.clone(), &mut tasks);
        let images = spawn_reflector(Api::<VpsImage>::all(client.clone()), all.clone(), &mut tasks);
        let locations = spawn_reflector(Api::<VpsLocation>::all(client.clone()), all.clone(), &mut tasks);
        let accounts = spawn_reflector(Api::<VpsAccount>::all(client.clone()), all.clone(), &mut tasks);
        let ssh_keys = spawn_reflector(Api::<VpsSshKey>::all(client.clone()), all, &mut tasks);
        let tokens = spawn_reflector(
            Api::<Secret>::namespaced(client, system_namespace),
            watcher::Config::default().labels(&format!("{TOKEN_LABEL}=true")),
            &mut tasks,
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
                s.wait_until_ready(),
                p.wait_until_ready(),
                i.wait_until_ready(),
                l.wait_until_ready(),
                a.wait_until_ready(),
                k.wait_until_ready(),
                t.wait_until_ready()
            );
            if synced.is_ok() {
                tracing::info!("Caches synced");
                flag.store(true, Ordering::Release);
            }
        }));
        Caches { servers, server_index, plans, images, locations, accounts, ssh_keys, tokens, ready, tasks }
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
        self.server_index.get(namespace, id)
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

/// Waits until `store` holds `obj` at its resourceVersion or newer (or until the object is
/// deleted, which is newer still). Gives up quietly after a bound: the write succeeded.
pub async fn wait_for_write<K>(store: &Store<K>, obj: &K)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let Some(want) = obj.resource_version() else { return };
    let key = ObjectRef::from_obj(obj);
    let uid = obj.uid();
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
    loop {
        match store.get(&key) {
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

/// Waits until `store` no longer holds the object, or holds it marked for deletion.
pub async fn wait_for_delete<K>(store: &Store<K>, obj: &K)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let key = ObjectRef::from_obj(obj);
    let uid = obj.uid();
    let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
    loop {
        match store.get(&key) {
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
