//! What the operator watches: the caches every reconcile reads, and which server each change
//! wakes. Servers are cached as the JSON of their pruned object, VMs and instances as the few
//! fields the phase is derived from ([`super::observed`]), the catalog in kube-runtime stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use super::cache::{self, Cache, key_of};
use super::held::IdsHeld;
use super::observed::{VmState, VmiState};
use super::queue::Requests;
use super::reconcile::RECREATE_ANNOTATION;
use super::status::Written;
use crate::api::{
    ActionState, SERVER_ID_LABEL, SERVER_LABEL, SIMULATOR_ANNOTATION_PREFIX, VpsAccount, VpsAction, VpsAddress,
    VpsImage, VpsLocation, VpsPlan, VpsServer,
};
use crate::kubevirt::{VirtualMachineInstanceView, VirtualMachineView};
use crate::watch_cache::Ready;

/// The caches of the operator.
#[derive(Clone)]
pub struct Caches {
    pub accounts: Store<VpsAccount>,
    pub plans: Store<VpsPlan>,
    pub images: Store<VpsImage>,
    pub locations: Store<VpsLocation>,
    /// Each server as the JSON of its cached form ([`slim_server`]): about half the memory of
    /// the parsed object in kube-runtime's store; parsed again for each reconcile.
    pub servers: Cache<Box<[u8]>>,
    pub vms: Cache<VmState>,
    pub vmis: Cache<VmiState>,
    /// The servers' tracked actions.
    pub actions: Store<VpsAction>,
    /// The addresses given out in the locations' pools (a change wakes no server: one
    /// waiting for an address looks again on its own).
    pub addresses: Store<VpsAddress>,
}

impl Caches {
    /// Resolves once every cache has listed its objects once.
    pub async fn ready(&self) {
        let (plans, images, locations) = (self.plans.clone(), self.images.clone(), self.locations.clone());
        let (accounts, actions, addresses) = (self.accounts.clone(), self.actions.clone(), self.addresses.clone());
        let _ = futures::join!(
            accounts.wait_until_ready(),
            addresses.wait_until_ready(),
            actions.wait_until_ready(),
            plans.wait_until_ready(),
            images.wait_until_ready(),
            locations.wait_until_ready(),
            Ready::all([self.servers.ready(), self.vms.ready(), self.vmis.ready()]),
        );
    }
}

/// The watches behind [`Caches`]: each yields the key of every server a change concerns.
pub struct Watches {
    accounts: BoxStream<'static, Result<Box<str>, watcher::Error>>,
    servers: BoxStream<'static, Result<Box<str>, watcher::Error>>,
    vms: BoxStream<'static, Result<Box<str>, watcher::Error>>,
    vmis: BoxStream<'static, Result<Box<str>, watcher::Error>>,
    actions: BoxStream<'static, Result<Box<str>, watcher::Error>>,
    catalog: BoxStream<'static, Result<(), watcher::Error>>,
    addresses: BoxStream<'static, Result<(), watcher::Error>>,
}

/// Starts nothing yet: the caches fill as [`Watches::wake`] runs. `written` learns which of
/// the operator's status writes the server cache shows, `held` the ids in servers' statuses.
pub fn watch(client: &Client, written: Arc<Written>, held: Arc<IdsHeld>) -> (Caches, Watches) {
    let all = || watcher::Config::default().page_size(500);
    let ours = || all().labels(SERVER_LABEL);
    let (accounts, account_events) = reflect_keys(Api::<VpsAccount>::all(client.clone()), all());
    let (plans, plan_events) = reflect(Api::<VpsPlan>::all(client.clone()), all());
    let (images, image_events) = reflect(Api::<VpsImage>::all(client.clone()), all());
    let (locations, location_events) = reflect(Api::<VpsLocation>::all(client.clone()), all());
    let (vms, vm_keys) = observe(Api::<VirtualMachineView>::all(client.clone()), ours(), VmState::of);
    let (vmis, vmi_keys) = observe(Api::<VirtualMachineInstanceView>::all(client.clone()), ours(), VmiState::of);
    let (servers, mut feed) =
        cache::cache(|server: &VpsServer| serde_json::to_vec(server).expect("a server serializes").into_boxed_slice());
    let mut wakes = wakes_on_change();
    let server_keys = watcher(Api::<VpsServer>::all(client.clone()), all())
        .default_backoff()
        .modify(slim_server)
        .map_ok(move |event| {
            let woken = match &event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    let key = key_of(s);
                    written.cached(&key, s.metadata.resource_version.as_deref());
                    if let Some(id) = s.status.as_ref().and_then(|st| st.id) {
                        held.hold(id, &key);
                    }
                    // Our own status writes change none of what wakes: they do not wake us again.
                    wakes(s).then_some(key)
                }
                watcher::Event::Delete(s) => {
                    let key = key_of(s);
                    if let Some(id) = s.id() {
                        held.release(id, &key);
                    }
                    wakes(s).then_some(key)
                }
                _ => None,
            };
            feed.apply(event);
            futures::stream::iter(woken.map(Ok))
        })
        .try_flatten();
    let catalog = futures::stream::select_all([plan_events, image_events, location_events]);
    let (actions, action_keys) = reflect_actions(Api::<VpsAction>::all(client.clone()), all());
    let (addresses, address_events) = reflect(Api::<VpsAddress>::all(client.clone()), all());
    let caches = Caches { accounts, plans, images, locations, servers, vms, vmis, actions, addresses };
    let watches = Watches {
        accounts: account_events,
        actions: action_keys,
        servers: server_keys.boxed(),
        vms: vm_keys,
        vmis: vmi_keys,
        catalog: catalog.boxed(),
        addresses: address_events,
    };
    (caches, watches)
}

impl Watches {
    /// Follows every watch, forever, asking `requests` for the reconcile of each server a
    /// change concerns: its own changes, its VM's and its instance's (they have its name and
    /// carry its label, which the watches select on), and any catalog change (a plan that
    /// appears, say) for every server.
    /// An account's suspension starting or ending wakes its servers.
    pub async fn wake(self, requests: Requests, caches: Caches) {
        let servers = caches.servers.clone();
        let mut suspended: HashMap<String, bool> = HashMap::new();
        let accounts = self.accounts.for_each(|key| {
            if let Ok(key) = &key
                && let Some(name) = key.strip_prefix('@')
            {
                let account = caches.accounts.get(&reflector::ObjectRef::new(name));
                let now = account.as_ref().is_some_and(|a| a.suspended());
                if suspended.insert(name.to_string(), now).unwrap_or(false) != now
                    && let Some(account) = account
                {
                    let prefix = format!("{}/", account.spec.namespace);
                    servers.keys().into_iter().filter(|k| k.starts_with(&prefix)).for_each(|k| requests.now(k));
                }
            }
            if let Ok(key) = key {
                requests.now(key);
            }
            futures::future::ready(())
        });
        let wake = |requests: Requests| {
            move |key: Result<Box<str>, watcher::Error>| {
                match key {
                    Ok(key) => requests.now(key),
                    Err(e) => tracing::debug!("Watch failed: {e}"),
                }
                futures::future::ready(())
            }
        };
        futures::join!(
            accounts,
            self.servers.for_each(wake(requests.clone())),
            self.vms.for_each(wake(requests.clone())),
            self.vmis.for_each(wake(requests.clone())),
            self.actions.for_each(wake(requests.clone())),
            self.addresses.for_each(|_| futures::future::ready(())),
            // A burst of catalog events (the first list) wakes every server once.
            self.catalog.ready_chunks(256).for_each(|events| {
                if events.iter().any(Result::is_ok) {
                    servers.keys().into_iter().for_each(|key| requests.now(key));
                }
                futures::future::ready(())
            }),
        );
    }
}

/// A kube-runtime store of `api`'s objects, and a stream with one item per change.
fn reflect<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, BoxStream<'static, Result<(), watcher::Error>>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(slim).reflect(writer).touched_objects().map_ok(|_| ());
    (reader, stream.boxed())
}

/// A kube-runtime store of `api`'s cluster-scoped objects, and the queue key
/// ([`account_key`]) of every change.
fn reflect_keys<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, BoxStream<'static, Result<Box<str>, watcher::Error>>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .touched_objects()
        .map_ok(|o| account_key(&o.name_any()));
    (reader, stream.boxed())
}

/// A store of the tracked actions, and the key of the server of every action in progress
/// that changes (a new action wakes its server; the operator's own completions do not).
fn reflect_actions(
    api: Api<VpsAction>,
    config: watcher::Config,
) -> (Store<VpsAction>, BoxStream<'static, Result<Box<str>, watcher::Error>>) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(slim).reflect(writer).touched_objects().try_filter_map(
        |a: VpsAction| {
            let open = a.status.as_ref().is_none_or(|s| s.status == ActionState::InProgress);
            let key = open.then(|| cache::key(&a.namespace().unwrap_or_default(), &a.spec.server));
            futures::future::ready(Ok(key))
        },
    );
    (reader, stream.boxed())
}

/// The queue key of an account: not a `namespace/name` (a namespace never starts with `@`).
pub fn account_key(name: &str) -> Box<str> {
    format!("@{name}").into_boxed_str()
}

/// A compact [`Cache`] of `derive(object)` for `api`'s objects, and the key of every change.
fn observe<K, T>(
    api: Api<K>,
    config: watcher::Config,
    derive: fn(&K) -> T,
) -> (Cache<T>, BoxStream<'static, Result<Box<str>, watcher::Error>>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    let (reader, mut feed) = cache::cache(derive);
    let stream = watcher(api, config).default_backoff().map_ok(move |event| {
        let key = match &event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => Some(key_of(o)),
            _ => None,
        };
        feed.apply(event);
        futures::stream::iter(key.map(Ok))
    });
    (reader, stream.try_flatten().boxed())
}

/// Prunes what the caches need not hold.
fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A server keeps its spec, status, finalizers, the annotations its VM copies and the
/// recreate request; of its labels only the id label (what it claims until the operator
/// records its id).
pub fn slim_server(server: &mut VpsServer) {
    slim(server);
    let annotations = &mut server.metadata.annotations;
    if let Some(map) = annotations {
        map.retain(|k, _| k.starts_with(SIMULATOR_ANNOTATION_PREFIX) || k == RECREATE_ANNOTATION);
    }
    drop_if_empty(annotations);
    let labels = &mut server.metadata.labels;
    if let Some(map) = labels {
        map.retain(|k, _| k == SERVER_ID_LABEL);
    }
    drop_if_empty(labels);
}

/// An empty map still holds a node: none is cheaper.
fn drop_if_empty(map: &mut Option<BTreeMap<String, String>>) {
    if map.as_ref().is_some_and(|m| m.is_empty()) {
        *map = None;
    }
}

/// Hash of what should wake a reconcile: uid, generation (spec), the id, finalizers,
/// deletion, a request to recreate a lost server.
fn spec_and_metadata(server: &VpsServer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    server.metadata.uid.hash(&mut h);
    server.metadata.generation.hash(&mut h);
    server.id().hash(&mut h);
    server.label_id().hash(&mut h);
    server.finalizers().hash(&mut h);
    server.metadata.deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut h);
    server.annotations().get(RECREATE_ANNOTATION).hash(&mut h);
    h.finish()
}

/// Whether a server should wake its reconcile: only when [`spec_and_metadata`] changed since
/// it last did (kube-runtime's `predicate_filter` keeps three strings per server for this;
/// this keeps one hash per key). A server that is going away, with no finalizer left, always
/// wakes and is forgotten.
fn wakes_on_change() -> impl FnMut(&VpsServer) -> bool {
    let mut seen: HashMap<Box<str>, u64> = HashMap::new();
    move |server| {
        let key = key_of(server);
        if server.metadata.deletion_timestamp.is_some() && server.finalizers().is_empty() {
            seen.remove(&key);
            return true;
        }
        let hash = spec_and_metadata(server);
        seen.insert(key, hash) != Some(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TEARDOWN_FINALIZER;

    #[test]
    fn the_cached_server_keeps_its_id_and_simulator_annotations() {
        let mut server: VpsServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": "web", "labels": {crate::api::SERVER_ID_LABEL: "7", "other": "x"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "simulator.vps.org/fail": "crash"}},
            "spec": {"name": "web", "plan": "p", "os": "o", "location": "l"},
        }))
        .unwrap();
        slim_server(&mut server);
        assert_eq!(server.id(), Some(7));
        assert_eq!(server.labels().keys().collect::<Vec<_>>(), [crate::api::SERVER_ID_LABEL]);
        assert_eq!(server.annotations().keys().collect::<Vec<_>>(), ["simulator.vps.org/fail"]);
        let mut vmi = VirtualMachineInstanceView::new("web", Default::default());
        vmi.metadata.namespace = Some("acme".into());
        assert_eq!(&*key_of(&vmi), "acme/web", "a server's instance has its key");
    }

    #[test]
    fn only_spec_and_metadata_changes_wake_a_reconcile() {
        let mut passes = wakes_on_change();
        let mut server: VpsServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": "web", "namespace": "acme", "uid": "u1", "generation": 1},
            "spec": {"name": "web", "plan": "p", "os": "o", "location": "l"},
        }))
        .unwrap();
        assert!(passes(&server), "first sight");
        server.status =
            Some(crate::api::VpsServerStatus { phase: Some(crate::api::Phase::Active), ..Default::default() });
        assert!(!passes(&server), "our own status write");
        server.metadata.generation = Some(2);
        assert!(passes(&server), "a spec change");
        server.metadata.finalizers = Some(vec![TEARDOWN_FINALIZER.into()]);
        assert!(passes(&server));
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        server.metadata.deletion_timestamp = Some(now);
        assert!(passes(&server), "deletion");
        server.metadata.finalizers = None;
        assert!(passes(&server) && passes(&server), "gone: always passes, never remembered");
        server.metadata.deletion_timestamp = None;
        assert!(passes(&server), "a new server of the same name is new");
    }
}
