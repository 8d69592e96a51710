//! The operator: a controller on `VpsServer` that owns KubeVirt `VirtualMachine`s and
//! watches their `VirtualMachineInstance`s. kube-runtime's watcher feeds compact caches of
//! its own; its work queue takes the place of kube-runtime's `Controller`.
//!
//! - [`observed`]: what is kept of the VMs and instances, in compact [`cache`]s.
//! - [`queue`]: which server to reconcile when.
//! - [`phase`]: pure mapping from KubeVirt's view to the server's phase.
//! - [`vm`]: pure construction of the VirtualMachine.
//! - [`reconcile`]: apply and cleanup (behind a finalizer).
//! - [`backups`]: the snapshot schedule.
//! - [`metrics`]: Prometheus metrics and health endpoints.

pub mod backups;
pub mod cache;
pub mod metrics;
pub mod observed;
pub mod phase;
pub mod queue;
pub mod reconcile;
pub mod status;
pub mod vm;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::api::{VpsImage, VpsLocation, VpsPlan, VpsServer};
use crate::ids::{IdAllocator, IdError};
use crate::kubevirt::{VirtualMachineInstanceView, VirtualMachineView};
use cache::Cache;
use observed::{VmState, VmiState};

/// The finalizer that guarantees teardown of a server's VM, disks and snapshots.
pub const FINALIZER: &str = "vps.org/teardown";

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("id allocation failed: {0}")]
    Ids(#[from] IdError),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("API call timed out")]
    Timeout,
    #[error("waiting for {0} object(s) of the server to be deleted")]
    TeardownPending(usize),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Ids(_) => "ids",
            Error::MissingField(_) => "invalid",
            Error::Timeout => "timeout",
            Error::TeardownPending(_) => "teardown_pending",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the operator.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorConfig {
    /// Namespace of the id counters (shared with the gateway).
    #[arg(long, env = "VPS_SYSTEM_NAMESPACE", default_value = "vps-system")]
    pub system_namespace: String,
    /// Time between scheduled backups.
    #[arg(long, value_parser = humantime_duration, default_value = "24h")]
    pub backup_interval: Duration,
    /// How long KubeVirt may take for one backup snapshot before it counts as failed.
    #[arg(long, value_parser = humantime_duration, default_value = "5m")]
    pub backup_deadline: Duration,
    /// Backups kept per server.
    #[arg(long, default_value_t = 7)]
    pub backup_keep: usize,
    /// How soon to look again at a server whose plan, image, location or key is missing.
    #[arg(long, value_parser = humantime_duration, default_value = "10s")]
    pub reference_retry: Duration,
    /// Servers reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Timeout of every API call the reconciler makes.
    #[arg(long, value_parser = humantime_duration, default_value = "15s")]
    pub api_timeout: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            system_namespace: "vps-system".into(),
            backup_interval: Duration::from_secs(86_400),
            backup_deadline: Duration::from_secs(300),
            backup_keep: 7,
            reference_retry: Duration::from_secs(10),
            concurrency: 16,
            api_timeout: Duration::from_secs(15),
        }
    }
}

/// Parses `90s`, `5m`, `24h`, `1d` or plain seconds.
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// What every reconcile shares.
pub struct Context {
    /// A client whose calls time out after `config.api_timeout`.
    pub client: Client,
    pub recorder: Recorder,
    pub ids: IdAllocator,
    pub plans: Store<VpsPlan>,
    pub images: Store<VpsImage>,
    pub locations: Store<VpsLocation>,
    /// Each server as the JSON of its cached form ([`slim_server`]): about half the memory of
    /// the parsed object in kube-runtime's store; parsed again for each reconcile.
    pub servers: Cache<Box<[u8]>>,
    pub vms: Cache<VmState>,
    pub vmis: Cache<VmiState>,
    pub config: OperatorConfig,
    pub metrics: metrics::Metrics,
    /// (account namespace, image namespace) pairs whose clone RoleBinding is in place.
    pub clone_bindings: Mutex<HashSet<(String, String)>>,
    /// Status writes the server cache does not show yet.
    pub written: status::Written,
}

/// Prunes what the caches need not hold.
fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A server keeps its spec, status, finalizers and the annotations its VM copies. Of its
/// labels only the id is read: it moves into the cached `status.id` (where [`server_id`]
/// finds it when there is no label), so the cache holds no label map.
fn slim_server(server: &mut VpsServer) {
    slim(server);
    let annotations = &mut server.metadata.annotations;
    if let Some(map) = annotations {
        map.retain(|k, _| k.starts_with(vm::SIMULATOR_ANNOTATION_PREFIX));
    }
    drop_if_empty(annotations);
    if let Some(id) = server.labels().get(crate::api::SERVER_ID_LABEL).and_then(|v| v.parse::<i64>().ok()) {
        server.status.get_or_insert_default().id = Some(id);
    }
    server.metadata.labels = None;
}

/// An empty map still holds a node: none is cheaper.
fn drop_if_empty(map: &mut Option<std::collections::BTreeMap<String, String>>) {
    if map.as_ref().is_some_and(|m| m.is_empty()) {
        *map = None;
    }
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config.page_size(500)).default_backoff().modify(prune).reflect(writer).touched_objects();
    (reader, stream)
}

/// A watch of `api` that keeps `derive(object)` of each object in a compact [`Cache`].
fn observe<K, T>(
    api: Api<K>,
    config: watcher::Config,
    derive: fn(&K) -> T,
) -> (Cache<T>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    let (reader, mut writer) = cache::cache(derive);
    let stream =
        watcher(api, config.page_size(500)).default_backoff().inspect_ok(move |e| writer.apply(e)).touched_objects();
    (reader, stream)
}

/// Runs the operator until the future is dropped. Serves `/metrics`, `/healthz` and
/// `/readyz` on `metrics_addr` when given.
pub async fn run(
    kube_config: kube::Config,
    config: OperatorConfig,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // Watches hold their connection open; every other call gets a deadline.
    let client = Client::try_from(kube_config.clone())?;
    let mut call_config = kube_config;
    call_config.read_timeout = Some(config.api_timeout);
    call_config.write_timeout = Some(config.api_timeout);
    call_config.connect_timeout = Some(config.api_timeout);
    let call_client = Client::try_from(call_config)?;
    check_crds(&client).await?;
    let server_label = vm::SERVER_LABEL.to_string();
    let (plans, plan_stream) = reflect(Api::<VpsPlan>::all(client.clone()), watcher::Config::default(), slim);
    let (images, image_stream) = reflect(Api::<VpsImage>::all(client.clone()), watcher::Config::default(), slim);
    let (locations, location_stream) =
        reflect(Api::<VpsLocation>::all(client.clone()), watcher::Config::default(), slim);
    let (vms, vm_stream) = observe(
        Api::<VirtualMachineView>::all(client.clone()),
        watcher::Config::default().labels(&server_label),
        VmState::of,
    );
    let (vmis, vmi_stream) = observe(
        Api::<VirtualMachineInstanceView>::all(client.clone()),
        watcher::Config::default().labels(&server_label),
        VmiState::of,
    );
    let (servers, mut server_writer) =
        cache::cache(|server: &VpsServer| serde_json::to_vec(server).expect("a server serializes").into_boxed_slice());
    let metrics = metrics::Metrics::default();
    let recorder = Recorder::new(call_client.clone(), Reporter { controller: "vps-operator".into(), instance: None });
    let ctx = Arc::new(Context {
        client: call_client.clone(),
        recorder,
        ids: IdAllocator::new(call_client.clone(), &config.system_namespace),
        plans: plans.clone(),
        images: images.clone(),
        locations: locations.clone(),
        servers: servers.clone(),
        vms: vms.clone(),
        vmis: vmis.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        clone_bindings: Mutex::new(HashSet::new()),
        written: status::Written::default(),
    });
    ensure_clone_cluster_role(&call_client).await;
    let server_stream = watcher(Api::<VpsServer>::all(client.clone()), watcher::Config::default().page_size(500))
        .default_backoff()
        .modify(slim_server)
        .inspect_ok({
            let ctx = ctx.clone();
            move |e| {
                server_writer.apply(e);
                if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = e {
                    ctx.written.cached(&cache::key_of(s), s.metadata.resource_version.as_deref());
                }
            }
        })
        .touched_objects()
        // Our own status writes change none of this: they do not wake us again.
        .try_filter(wakes_on_change());

    // Catalog changes (a plan that appears, say) wake the servers that name it.
    let catalog = futures::stream::select_all([
        plan_stream.map_ok(|_| ()).boxed(),
        image_stream.map_ok(|_| ()).boxed(),
        location_stream.map_ok(|_| ()).boxed(),
    ]);
    let ready = metrics.ready.clone();
    let readiness = {
        let (plans, images, locations, vms, vmis, servers) =
            (plans.clone(), images.clone(), locations.clone(), vms.clone(), vmis.clone(), servers.clone());
        async move {
            let _ = futures::join!(
                plans.wait_until_ready(),
                images.wait_until_ready(),
                locations.wait_until_ready(),
                vms.wait_until_ready(),
                vmis.wait_until_ready(),
                servers.wait_until_ready()
            );
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("Caches are synced; the operator is ready");
        }
    };
    // Everything runs inside this future (nothing is spawned): dropping it stops it all.
    let metrics_server = async {
        if let Some(addr) = metrics_addr {
            metrics::serve(addr, metrics.clone()).await;
        }
    };

    // What wakes a server: its own changes, its VM's and its instance's (they have its name,
    // and carry its label, which the watches select on), and any catalog change (a plan that
    // appears, say).
    let (requests, queue) = queue::queue();
    let wake = |requests: queue::Requests| {
        move |object: Result<Box<str>, watcher::Error>| {
            match object {
                Ok(key) => requests.now(key),
                Err(e) => tracing::debug!("Watch failed: {e}"),
            }
            futures::future::ready(())
        }
    };
    let triggers = futures::future::join4(
        server_stream.map_ok(|s| cache::key_of(&s)).for_each(wake(requests.clone())),
        vm_stream.map_ok(|vm| cache::key_of(&vm)).for_each(wake(requests.clone())),
        vmi_stream.map_ok(|vmi| cache::key_of(&vmi)).for_each(wake(requests.clone())),
        // A burst of catalog events (the first list) wakes every server once.
        catalog.ready_chunks(256).for_each(|events| {
            if events.iter().any(Result::is_ok) {
                servers.keys().into_iter().for_each(|key| requests.now(key));
            }
            futures::future::ready(())
        }),
    );
    let reconciles = queue::run(queue, config.concurrency.into(), |key| reconcile_key(key, ctx.clone()));
    futures::join!(
        reconciles,
        triggers,
        metrics_server,
        readiness,
        crate::memory::trim_forever(crate::memory::TRIM_EVERY)
    );
    Ok(())
}

/// Hash of what should wake a reconcile: uid, generation (spec), the id, finalizers, deletion.
fn spec_and_metadata(server: &VpsServer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    server.metadata.uid.hash(&mut h);
    server.metadata.generation.hash(&mut h);
    reconcile::server_id(server).hash(&mut h);
    server.finalizers().hash(&mut h);
    server.metadata.deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut h);
    h.finish()
}

/// A filter that passes a server on only when [`spec_and_metadata`] changed since it last
/// passed (kube-runtime's `predicate_filter` keeps three strings per server for this; this
/// keeps one key). A server that is going away, with no finalizer left, always passes and is
/// forgotten.
fn wakes_on_change() -> impl FnMut(&VpsServer) -> futures::future::Ready<bool> {
    let mut seen: std::collections::HashMap<Box<str>, u64> = std::collections::HashMap::new();
    move |server| {
        let key = cache::key_of(server);
        if server.metadata.deletion_timestamp.is_some() && server.finalizers().is_empty() {
            seen.remove(&key);
            return futures::future::ready(true);
        }
        let hash = spec_and_metadata(server);
        futures::future::ready(seen.insert(key, hash) != Some(hash))
    }
}

/// Reconciles the server under `key`, if it still exists; says when to run again.
async fn reconcile_key(key: Box<str>, ctx: Arc<Context>) -> queue::Next {
    let server = match ctx.servers.with(&key, |json| serde_json::from_slice::<VpsServer>(json)) {
        None => return queue::Next::OnChange, // gone
        Some(Ok(server)) => Arc::new(server),
        Some(Err(e)) => {
            tracing::error!(server = %key, "A cached server does not parse: {e}");
            return queue::Next::OnChange;
        }
    };
    match reconcile_server(server.clone(), ctx).await {
        Ok(next) => next,
        Err(Error::TeardownPending(_)) => queue::Next::After(Duration::from_millis(500)),
        Err(error) => {
            tracing::warn!(server = %server.name_any(), namespace = ?server.namespace(), "Reconcile failed: {error}");
            queue::Next::After(Duration::from_secs(2))
        }
    }
}

async fn reconcile_server(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<queue::Next> {
    // Never judge a server by half-filled caches (a plan not seen yet is not a missing plan).
    if !ctx.metrics.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(queue::Next::After(Duration::from_millis(200)));
    }
    let started = Instant::now();
    // Each call has its own deadline; this bounds a reconcile that makes many.
    let timeout = ctx.config.api_timeout * 4;
    let result = tokio::time::timeout(timeout, with_finalizer(server, ctx.clone()))
        .await
        .map_err(|_| Error::Timeout)
        .and_then(|r| r);
    ctx.metrics.observe(started.elapsed(), result.as_ref().err().map(Error::metric_label));
    result
}

/// Runs [`reconcile::apply`] on a server that carries the teardown finalizer (adding it
/// first), and [`reconcile::cleanup`] on one being deleted, removing the finalizer once
/// everything is gone. Finalizer writes are conditional on the server's resourceVersion.
async fn with_finalizer(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<queue::Next> {
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<VpsServer> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = server.finalizers().iter().any(|f| f == FINALIZER);
    let set_finalizers = |finalizers: Vec<String>| {
        let patch = serde_json::json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": server.metadata.resource_version,
        }});
        let api = api.clone();
        let name = server.name_any();
        async move { api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await }
    };
    match (server.metadata.deletion_timestamp.is_some(), ours) {
        (true, true) => {
            reconcile::cleanup(server.clone(), ctx.clone()).await?;
            let rest = server.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
            match set_finalizers(rest).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                other => drop(other?),
            }
            ctx.written.forget(&cache::key_of(server.as_ref()));
            Ok(queue::Next::OnChange)
        }
        // Not ours to tear down, or torn down already.
        (true, false) => Ok(queue::Next::OnChange),
        // Nothing is made before the finalizer is in place; its write wakes the server again.
        (false, false) => {
            let mut finalizers = server.finalizers().to_vec();
            finalizers.push(FINALIZER.into());
            set_finalizers(finalizers).await?;
            Ok(queue::Next::OnChange)
        }
        (false, true) => reconcile::apply(server, ctx).await,
    }
}

/// Exits with a clear message when the CRDs are not installed (the operator never installs them).
async fn check_crds(client: &Client) -> anyhow::Result<()> {
    use kube::api::ListParams;
    let lp = ListParams::default().limit(1);
    Api::<VpsServer>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| anyhow::anyhow!("the vps.org CRDs are not installed (apply crds/vps.org.yaml first): {e}"))?;
    Api::<VirtualMachineView>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| anyhow::anyhow!("KubeVirt's VirtualMachine CRD is not installed (is KubeVirt installed?): {e}"))?;
    Ok(())
}

/// The ClusterRole bound in image namespaces for CDI's clone authorization. Shipped in
/// deploy/; created here when missing and allowed (local runs and tests).
async fn ensure_clone_cluster_role(client: &Client) {
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": reconcile::CLONE_CLUSTER_ROLE},
        "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes/source"], "verbs": ["create"]}],
    });
    let api: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    if api.get_opt(reconcile::CLONE_CLUSTER_ROLE).await.ok().flatten().is_some() {
        return;
    }
    if let Err(e) =
        api.patch(reconcile::CLONE_CLUSTER_ROLE, &PatchParams::apply(reconcile::MANAGER), &Patch::Apply(&role)).await
    {
        tracing::warn!("Could not create ClusterRole {}: {e}", reconcile::CLONE_CLUSTER_ROLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((reconcile::server_id(&server), server.metadata.labels.as_ref()), (Some(7), None));
        assert_eq!(server.annotations().keys().collect::<Vec<_>>(), ["simulator.vps.org/fail"]);
        let mut vmi = VirtualMachineInstanceView::new("web", Default::default());
        vmi.metadata.namespace = Some("acme".into());
        assert_eq!(&*cache::key_of(&vmi), "acme/web", "a server's instance has its key");
    }

    #[test]
    fn only_spec_and_metadata_changes_wake_a_reconcile() {
        let mut wakes = wakes_on_change();
        let mut passes = |s: &VpsServer| futures::executor::block_on(wakes(s));
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
        server.metadata.finalizers = Some(vec![FINALIZER.into()]);
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
