//! The operator: a controller on `VpsServer` that owns KubeVirt `VirtualMachine`s and
//! watches their `VirtualMachineInstance`s. kube-runtime's watcher feeds compact caches of
//! its own; its work queue takes the place of kube-runtime's `Controller`.
//!
//! - [`watches`]: what is watched, kept in compact [`cache`]s ([`observed`]), and which
//!   server each change wakes.
//! - [`queue`]: which server to reconcile when (backoff, readiness, shutdown).
//! - [`phase`]: pure mapping from KubeVirt's view to the server's phase.
//! - [`references`]: what a server is built from, resolved once ([`held`]: whose id is whose).
//! - [`addresses`]: a server's own addresses on a provider network.
//! - [`vm`]: pure construction of the VirtualMachine.
//! - [`status`]: the pure next status and the Events it tells of.
//! - [`reconcile`]: apply and cleanup (behind a finalizer); [`power`]: a server's reboots and
//!   forced stops.
//! - [`backups`]: the snapshot schedule; [`accounts`]: an account's teardown; [`charging`]:
//!   its servers' hours charged against its funds, and its suspension at zero.
//! - [`leader`]: leader election among replicas (a Lease).
//! - [`metrics`]: Prometheus metrics and health endpoints.
//! - [`config`]: the operator's flags, and the billing clock they give.

pub mod accounts;
pub mod actions;
pub mod addresses;
pub mod backups;
pub mod cache;
pub mod charging;
pub mod config;
pub mod held;
pub mod leader;
pub mod metrics;
pub mod observed;
pub mod phase;
pub mod power;
pub mod queue;
pub mod rebuild;
pub mod reconcile;
pub mod references;
pub mod resize;
pub mod restore;
pub mod status;
pub mod vm;
pub mod watches;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use tracing::Instrument as _;

use crate::api::{OPERATOR_MANAGER, TEARDOWN_FINALIZER, VpsServer};
use crate::ids::{IdAllocator, IdError};
pub use config::OperatorConfig;
use watches::Caches;

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
    #[error("credit ledger: {0}")]
    Ledger(#[from] crate::credit_ledger::LedgerError),
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
            Error::Ledger(_) => "ledger",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name of the operator's Lease.
pub const LEASE_NAME: &str = "vps-operator";

impl OperatorConfig {
    /// The election this replica takes part in, if any.
    pub fn election(&self) -> Option<leader::Election> {
        if !self.leader_elect {
            return None;
        }
        let identity = self.leader_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "operator".into());
            format!("{}-{:08x}", host.trim(), rand::random::<u32>())
        });
        Some(leader::Election::new(&self.system_namespace, LEASE_NAME, &identity))
    }
}

/// What every reconcile shares.
pub struct Context {
    /// A client whose calls time out after `config.api_timeout`.
    pub client: Client,
    pub recorder: Recorder,
    pub ids: IdAllocator,
    pub caches: Caches,
    pub config: OperatorConfig,
    pub metrics: metrics::Metrics,
    /// (account namespace, image namespace) pairs whose clone RoleBinding is in place.
    pub clone_bindings: Mutex<HashSet<(String, String)>>,
    /// Status writes the server cache does not show yet.
    pub written: Arc<status::Written>,
    /// Which server holds each id.
    pub ids_held: Arc<held::IdsHeld>,
    /// What each account's servers commit of its credit.
    pub ledger: crate::credit_ledger::Ledger,
    /// What each account's servers have been charged.
    pub billing: crate::billing::Ledgers,
}

impl Context {
    /// The account that owns namespace `ns`, if any (servers outside accounts are the
    /// hosting team's own: no credit applies).
    pub fn account_of(&self, ns: &str) -> Option<Arc<crate::api::VpsAccount>> {
        self.accounts.find(|a| a.spec.namespace == ns)
    }
}

impl std::ops::Deref for Context {
    type Target = Caches;

    fn deref(&self) -> &Caches {
        &self.caches
    }
}

/// The operator's two clients: one for watches (which hold their connection open) and one
/// whose every call has a deadline.
fn clients(kube_config: kube::Config, timeout: Duration) -> anyhow::Result<(Client, Client)> {
    let watch_client = Client::try_from(kube_config.clone())?;
    let mut call_config = kube_config;
    call_config.read_timeout = Some(timeout);
    call_config.write_timeout = Some(timeout);
    call_config.connect_timeout = Some(timeout);
    Ok((watch_client, crate::telemetry::counting_client(call_config)?))
}

/// Runs the operator until `shutdown` resolves; then it starts no new reconcile and returns
/// once the running ones have finished.
///
/// Finished actions older than `config.action_retention` are pruned every ten minutes. Serves `/metrics`, `/healthz` and `/readyz` on
/// `metrics_addr` when given.
const ACTION_PRUNE_EVERY: Duration = Duration::from_secs(600);

pub async fn run(
    kube_config: kube::Config,
    config: OperatorConfig,
    metrics_addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (watch_client, client) = clients(kube_config, config.api_timeout)?;
    crate::preflight::require_vps_crds(&watch_client).await?;
    crate::preflight::require_kubevirt(&watch_client).await?;
    let written = Arc::new(status::Written::default());
    let ids_held = Arc::new(held::IdsHeld::default());
    let (caches, watches) = watches::watch(&watch_client, written.clone(), ids_held.clone());
    let reporter = Reporter { controller: OPERATOR_MANAGER.into(), instance: None };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        ids: IdAllocator::new(client.clone(), &config.system_namespace),
        ledger: crate::credit_ledger::Ledger::new(client.clone(), &config.system_namespace),
        billing: crate::billing::Ledgers::new(client.clone(), &config.system_namespace),
        client,
        caches: caches.clone(),
        config: config.clone(),
        metrics: metrics::Metrics::default(),
        clone_bindings: Mutex::new(HashSet::new()),
        written,
        ids_held,
    });
    let _ = ctx.metrics.fleet.set(caches.clone());
    ensure_clone_cluster_role(&ctx.client).await;

    let (requests, queue) = queue::queue();
    let election = config.election();
    let (leader_tx, leader) = tokio::sync::watch::channel(election.is_none());
    // Never judge a server by half-filled caches (a plan not seen yet is not a missing plan),
    // and reconcile only as the leader.
    let ready = {
        let (caches, ready, mut leader) = (caches.clone(), ctx.metrics.ready.clone(), leader.clone());
        async move {
            caches.ready().await;
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("Caches are synced; the operator is ready");
            let _ = leader.wait_for(|l| *l).await;
        }
    };
    // The queue stops on shutdown, and when this replica loses the lease it once held.
    let lost = {
        let mut leader = leader.clone();
        async move {
            let _ = leader.wait_for(|l| *l).await;
            let _ = leader.wait_for(|l| !*l).await;
        }
    };
    let mut lost = std::pin::pin!(lost);
    let mut lost_leadership = false;
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = &mut lost => lost_leadership = true,
        }
    };
    let backoff = queue::Backoff { base: config.retry_base, cap: config.retry_cap };
    let reconciles =
        queue::run(queue, config.concurrency.into(), backoff, ctx.metrics.queue.clone(), ready, stop, |key| {
            reconcile_key(key, ctx.clone())
        });
    // Everything runs inside this future (nothing is spawned): dropping it stops it all.
    let pruning = {
        let (ctx, mut leader) = (ctx.clone(), leader.clone());
        async move {
            let _ = leader.wait_for(|l| *l).await;
            futures::future::join(
                actions::prune(ctx.clone(), config.action_retention, ACTION_PRUNE_EVERY),
                addresses::sweep(ctx, config.address_sweep),
            )
            .await;
        }
    };
    let forever = futures::future::join5(
        watches.wake(requests, caches.clone()),
        pruning,
        async {
            if let Some(addr) = metrics_addr {
                metrics::serve(addr, ctx.metrics.clone()).await;
            }
        },
        async {
            match &election {
                Some(election) => leader::campaign(ctx.client.clone(), election.clone(), leader_tx).await,
                None => std::future::pending().await,
            }
        },
        crate::memory::trim_forever(crate::memory::TRIM_EVERY),
    );
    tokio::select! {
        () = reconciles => {}
        _ = forever => {}
    }
    if lost_leadership {
        // Its successor reconciles now; this replica starts again as a standby.
        anyhow::bail!("lost the leader lease");
    }
    if let Some(election) = &election {
        leader::release(ctx.client.clone(), election).await;
    }
    tracing::info!("The operator stopped");
    Ok(())
}

/// Reconciles the server (or the account, [`watches::account_key`]) under `key`, if it
/// still exists; says when to run again.
async fn reconcile_key(key: Box<str>, ctx: Arc<Context>) -> queue::Next {
    if let Some(account) = key.strip_prefix('@') {
        return match accounts::reconcile(account, &ctx).await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(account, "Reconcile of an account failed: {error}");
                queue::Next::Backoff
            }
        };
    }
    let server = match ctx.servers.with(&key, |json| serde_json::from_slice::<VpsServer>(json)) {
        None => return queue::Next::OnChange, // gone
        Some(Ok(server)) => Arc::new(server),
        Some(Err(e)) => {
            tracing::error!(server = %key, "A cached server does not parse: {e}");
            return queue::Next::OnChange;
        }
    };
    let started = Instant::now();
    // Each call has its own deadline; this bounds a reconcile that makes many.
    let timeout = ctx.config.api_timeout * 4;
    // Every line a reconcile logs names its server.
    let span =
        tracing::info_span!("reconcile", namespace = server.namespace().unwrap_or_default(), name = server.name_any());
    let result = tokio::time::timeout(timeout, with_finalizer(server.clone(), ctx.clone()).instrument(span))
        .await
        .map_err(|_| Error::Timeout)
        .and_then(|r| r);
    ctx.metrics.observe(started.elapsed(), result.as_ref().err().map(Error::metric_label));
    match result {
        Ok(next) => next,
        // Not a failure: the teardown is under way.
        Err(Error::TeardownPending(_)) => queue::Next::After(Duration::from_millis(500)),
        Err(error) => {
            tracing::warn!(server = %server.name_any(), namespace = ?server.namespace(), "Reconcile failed: {error}");
            queue::Next::Backoff
        }
    }
}

/// Runs [`reconcile::apply`] on a server that carries the teardown finalizer (adding it
/// first), and [`reconcile::cleanup`] on one being deleted, removing the finalizer once
/// everything is gone. Finalizer writes are conditional on the server's resourceVersion.
async fn with_finalizer(server: Arc<VpsServer>, ctx: Arc<Context>) -> Result<queue::Next> {
    let ns = server.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<VpsServer> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = server.finalizers().iter().any(|f| f == TEARDOWN_FINALIZER);
    let set_finalizers = |finalizers: Vec<String>| set_finalizers(&api, server.as_ref(), finalizers);
    match (server.metadata.deletion_timestamp.is_some(), ours) {
        (true, true) => {
            reconcile::cleanup(server.clone(), ctx.clone()).await?;
            // Torn down: its commitment of the account's credit ends.
            if let Some(account) = ctx.account_of(&ns) {
                ctx.ledger.release(&account.name_any(), &server.name_any()).await?;
            }
            let rest = server.finalizers().iter().filter(|f| *f != TEARDOWN_FINALIZER).cloned().collect();
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
            finalizers.push(TEARDOWN_FINALIZER.into());
            set_finalizers(finalizers).await?;
            Ok(queue::Next::OnChange)
        }
        (false, true) => reconcile::apply(server, ctx).await,
    }
}

/// Sets an object's finalizers, provided it is still at the resourceVersion it was read at.
pub async fn set_finalizers<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.meta().resource_version,
    }});
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await
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
    let apply = PatchParams::apply(OPERATOR_MANAGER);
    if let Err(e) = api.patch(reconcile::CLONE_CLUSTER_ROLE, &apply, &Patch::Apply(&role)).await {
        tracing::warn!("Could not create ClusterRole {}: {e}", reconcile::CLONE_CLUSTER_ROLE);
    }
}
