//! The REST gateway: the VPS API of `shared/API.md`, translated into operations on
//! `VpsServer` objects in the caller's account namespace.
//!
//! - [`args`]: the flags of `vps-operator gateway` (the gateway's settings).
//! - [`cache`], [`index`]: the caches every read is served from (filled by watches, or by a
//!   fixture in the handlers' unit tests: [`feeds`]).
//! - [`credit`]: the credit check of creates.
//! - [`auth`]: the Bearer-token extractor (tenancy).
//! - [`servers`], [`lifecycle`], [`actions`], [`backups`], [`catalog`], [`ssh_keys`]: one
//!   router per resource (a server's create in [`create`], the server actions beyond power in
//!   `lifecycle`, tracked actions in `actions`, a server's backups in `backups`).
//! - [`view`]: the JSON representation, [`validate`]: hand validation with DRF's messages.
//! - [`usage`]: a server's `resource_usage`, from Prometheus; its history in [`server_metrics`].
//! - [`idempotency`]: `Idempotency-Key` replay kept in the cluster.
//! - [`console`]: a server's serial or VNC console, relayed to KubeVirt's; its single-use
//!   tokens in [`console_tickets`]; its boot log in [`console_output`].
//! - [`metrics`], [`openapi`], [`docs`]: `/metrics` (its own listener), `/api/v1/openapi.json`
//!   and the docs page rendering it, `/api/v1/docs/`.
//! - [`access`]: each request's `X-Request-Id` and access log line.
//! - [`listen`]: the connections (timeouts, a cap), [`rate_limit`]: requests per token.
//! - `routes`: the whole HTTP surface ([`app`]) under its middleware, and [`metrics_app`].

pub mod access;
pub mod account;
pub mod actions;
pub mod args;
pub mod auth;
pub mod backups;
pub mod cache;
pub mod catalog;
pub mod console;
pub mod console_output;
pub mod console_tickets;
pub mod create;
pub mod credit;
pub mod docs;
pub mod error;
pub mod feeds;
pub mod idempotency;
pub mod index;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod openapi;
pub mod pagination;
pub mod power;
pub mod rate_limit;
mod routes;
pub mod server_metrics;
pub mod servers;
pub mod ssh_keys;
#[cfg(test)]
pub mod testing;
pub mod usage;
pub mod validate;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::{Context, Result, bail};
use axum::http::{HeaderMap, header};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;

pub use args::GatewayArgs;
pub use routes::{app, metrics_app};
pub(crate) use routes::{route_both, with_405};

use crate::ids::IdAllocator;
use cache::Caches;
use metrics::Metrics;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;
/// How many ids the gateway takes from the cluster's counter at once: parallel creates share
/// one compare-and-swap per block instead of racing one each. A restart leaves the rest of a
/// block unused (ids are never reused, gaps are allowed).
pub const SERVER_ID_BLOCK: i64 = 16;
/// Field manager of the gateway's writes.
pub const FIELD_MANAGER: &str = crate::api::GATEWAY_MANAGER;
/// How long a starting gateway waits for its caches.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What every handler shares: one pointer, cheap to clone for each request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    pub client: Client,
    pub system_namespace: String,
    pub caches: Arc<Caches>,
    pub ids: IdAllocator,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    /// Creates in flight, for the credit check.
    pub credit: Arc<credit::Credit>,
    pub rate_limiter: rate_limit::RateLimiter,
    pub settings: GatewayArgs,
    /// Set once a shutdown began: /readyz fails while the last requests are served.
    pub draining: std::sync::atomic::AtomicBool,
    /// Resource usage from Prometheus, when `--prometheus-url` is set.
    pub usage: Option<usage::Usage>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// The state over `caches` (watching the cluster, or filled from a fixture); requests are
    /// served once [`Caches::wait_ready`] resolves (`/readyz`).
    pub fn new(client: Client, caches: Caches, settings: &GatewayArgs) -> AppState {
        let limit = rate_limit::Limit { rate: settings.rate_limit, burst: f64::from(settings.rate_burst) };
        let ledger = crate::credit_ledger::Ledger::new(client.clone(), &settings.system_namespace);
        AppState(Arc::new(Shared {
            caches: Arc::new(caches),
            ids: IdAllocator::new(client.clone(), &settings.system_namespace).with_block(SERVER_ID_BLOCK),
            client,
            system_namespace: settings.system_namespace.clone(),
            metrics: Arc::new(Metrics::new()),
            request_timeout: Duration::from_secs(settings.request_timeout_secs),
            credit: Arc::new(credit::Credit::new(ledger)),
            rate_limiter: rate_limit::RateLimiter::new(Some(limit)),
            settings: settings.clone(),
            draining: std::sync::atomic::AtomicBool::new(false),
            usage: settings
                .prometheus_url
                .as_deref()
                .and_then(|url| usage::Usage::new(url).map_err(|e| tracing::error!("No resource usage: {e:#}")).ok()),
        }))
    }
}

/// The absolute URL of this gateway as the client addressed it (`http://host:port`).
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let first = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next()).map(|v| v.trim().to_string())
    };
    let scheme = first("x-forwarded-proto").filter(|s| s == "http" || s == "https").unwrap_or_else(|| "http".into());
    let host = first("x-forwarded-host")
        .or_else(|| first(header::HOST.as_str()))
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#'))
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}")
}

/// A gateway on the cluster of `client`, its caches starting to fill (it answers 503 until
/// they have: [`AppState::synced`]). The vps.org CRDs and the system namespace must exist.
pub async fn start(client: Client, settings: &GatewayArgs) -> Result<AppState> {
    if let Some(url) = &settings.prometheus_url {
        usage::Usage::new(url)?;
    }
    crate::preflight::require_vps_crds(&client).await?;
    let system_namespace = &settings.system_namespace;
    if Api::<Namespace>::all(client.clone()).get_opt(system_namespace).await?.is_none() {
        bail!("the system namespace {system_namespace:?} does not exist; create it first");
    }
    let caches = Caches::watch(client.clone(), system_namespace);
    Ok(AppState::new(client, caches, settings))
}

impl AppState {
    /// Waits until the caches have synced (at most [`SYNC_TIMEOUT`]).
    pub async fn synced(self) -> Result<AppState> {
        tokio::time::timeout(SYNC_TIMEOUT, self.caches.wait_ready())
            .await
            .with_context(|| format!("the gateway's caches did not sync within {} s", SYNC_TIMEOUT.as_secs()))?;
        Ok(self)
    }
}

/// Serves `state` on `listener` (with the header timeout and connection cap of
/// [`listen`]) until `shutdown` resolves and the shutdown delay has passed, then lets open
/// requests finish; sweeps expired idempotency records meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let sweep = idempotency::sweep_forever(state.client.clone(), state.system_namespace.clone());
    let limits = listen::Limits {
        header_timeout: state.settings.header_timeout,
        max_connections: state.settings.max_connections,
    };
    // On shutdown: fail /readyz first, so that Services stop sending new connections, and
    // keep serving for the shutdown delay; then stop accepting and finish what is open.
    let drain = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(delay = ?state.settings.shutdown_delay, "Shutting down: /readyz fails, still serving");
            tokio::time::sleep(state.settings.shutdown_delay).await;
        }
    };
    tokio::select! {
        () = listen::serve(listener, app(state), limits, drain) => Ok(()),
        () = sweep => unreachable!("the sweep runs forever"),
    }
}

/// Serves [`metrics_app`] on `listener` until the process ends.
pub async fn serve_metrics(listener: tokio::net::TcpListener, state: AppState) -> Result<()> {
    axum::serve(listener, metrics_app(state)).await.context("serve the gateway's metrics")
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn run(args: GatewayArgs) -> Result<()> {
    let config = kube::Config::infer().await.context("find the cluster's configuration")?;
    let client = crate::telemetry::counting_client(config).context("connect to the cluster")?;
    let state = start(client, &args).await?;
    tokio::spawn(crate::memory::trim_forever(crate::memory::TRIM_EVERY));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let metrics = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listen on {}", args.metrics_listen))?;
    tokio::spawn(serve_metrics(metrics, state.clone()));
    tracing::info!(address = %args.listen, metrics = %args.metrics_listen, "Gateway listening");
    serve(listener, state, crate::shutdown::signal()).await?;
    tracing::info!("Gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testing::{self, TOKEN};
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn on_shutdown_readyz_fails_first_while_requests_are_still_served() {
        let delay = Duration::from_millis(1500);
        let settings = super::GatewayArgs { shutdown_delay: delay, ..testing::settings() };
        let state = testing::state_of(testing::fixture(vec![], vec![]), &settings).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(super::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let status = |path: &'static str| {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(format!("{url}{path}")).bearer_auth(TOKEN).send().await.map(|r| r.status().as_u16()) }
        };
        assert_eq!(status("/readyz").await.unwrap(), 200);
        let began = Instant::now();
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(status("/readyz").await.unwrap(), 503, "draining");
        assert_eq!(status("/api/v1/plans/").await.unwrap(), 200, "still serving");
        served.await.unwrap().unwrap();
        assert!(began.elapsed() >= delay, "served for the whole delay: {:?}", began.elapsed());
        assert!(status("/healthz").await.is_err(), "closed after the delay");
    }
}
