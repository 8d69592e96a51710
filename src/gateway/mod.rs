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
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::trace::TraceLayer;

pub use args::GatewayArgs;

use crate::ids::IdAllocator;
use auth::Tenant;
use cache::Caches;
use error::ApiError;
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

/// Registers `path` (ending in `/`) and the same path without the slash, served identically.
pub(crate) fn route_both(router: Router<AppState>, path: &str, methods: MethodRouter<AppState>) -> Router<AppState> {
    router.route(path, methods.clone()).route(path.trim_end_matches('/'), methods)
}

/// A wrong method on an API path: 405, after authentication (as DRF does).
pub(crate) fn with_405(methods: MethodRouter<AppState>, allow: &'static str) -> MethodRouter<AppState> {
    methods.fallback(move |_tenant: Tenant, method: Method| async move {
        ApiError::MethodNotAllowed { method: method.to_string(), allow }
    })
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

/// The whole HTTP surface, with its middleware.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(servers::router())
        .merge(power::router())
        .merge(console::router())
        .merge(console_output::router())
        .merge(server_metrics::router())
        .merge(lifecycle::router())
        .merge(actions::router())
        .merge(backups::router())
        .merge(catalog::router())
        .merge(ssh_keys::router())
        .merge(account::router())
        .merge(docs::router())
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound });
    let access_log = state.settings.access_log;
    api.layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("A request handler panicked");
            ApiError::detail(StatusCode::INTERNAL_SERVER_ERROR, "A server error occurred.")
        }))
        .layer(middleware::from_fn_with_state(state.request_timeout, timeout))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::record))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // A debug span: at the default `info` level, building and formatting an info span
                    // for every request cost about a quarter of the gateway's read throughput
                    // (benches/vps). Handlers log what goes wrong themselves.
                    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                    tracing::debug_span!("request", method = %req.method(), route)
                })
                // Internal errors are logged where they happen; a 503 from /readyz is no error.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(
            // Tokens travel in a header, never in cookies: any origin may call the API.
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::HeaderName::from_static("idempotency-key"),
                    access::REQUEST_ID,
                ])
                .expose_headers([header::LOCATION, access::REQUEST_ID]),
        )
        .layer(middleware::from_fn_with_state(access_log, access::middleware))
        .with_state(state)
}

/// `/metrics`, served apart from the API ([`serve_metrics`]).
pub fn metrics_app(state: AppState) -> Router {
    Router::new().route("/metrics", get(metrics::serve)).with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if state.caches.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced").into_response()
    }
}

async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!("Request timed out");
            ApiError::detail(StatusCode::SERVICE_UNAVAILABLE, "Request timed out.")
        }
    }
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
    use super::testing::{self, TOKEN, call, raw};
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

    #[tokio::test]
    async fn health_metrics_cors_and_openapi() {
        let state = testing::state_of(testing::fixture(vec![], vec![]), &testing::settings()).await;
        let app = super::app(state.clone());
        assert_eq!(call(&app, "GET", "/healthz", None, None).await.status, 200);
        assert_eq!(call(&app, "GET", "/readyz", None, None).await.status, 200);
        assert_eq!(call(&app, "GET", "/api/v1/servers/123456789/", Some(TOKEN), None).await.status, 404);
        assert_eq!(call(&app, "GET", "/api/v1/servers/123456788", Some(TOKEN), None).await.status, 404);
        assert_eq!(call(&app, "GET", "/metrics", None, None).await.status, 404, "not on the public port");
        let m = raw(&super::metrics_app(state), "GET", "/metrics", None, vec![], &[]).await;
        assert_eq!(m.status, 200);
        assert_eq!(m.header("content-type"), Some(crate::telemetry::OPENMETRICS_CONTENT_TYPE));
        let text = m.body.as_str().unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("vps_gateway_http_requests_total{")
                    && l.contains("method=\"GET\"")
                    && l.contains("route=\"/api/v1/servers/{server_id}/\"")
                    && l.contains("status=\"404\"")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with(" 2"), "both spellings count under one route: {line}");
        assert!(text.contains("vps_gateway_http_request_duration_seconds_bucket{"), "{text}");
        assert!(
            text.contains(&format!("vps_gateway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(!text.contains("123456789"), "no ids in labels");

        // Every answer carries a request id: the client's when it sent a sane one.
        let r = raw(&app, "GET", "/api/v1/plans/", Some(TOKEN), vec![], &[("x-request-id", "trace-7")]).await;
        assert_eq!(r.header("x-request-id"), Some("trace-7"));
        let r = raw(&app, "GET", "/api/v1/nothing/", Some(TOKEN), vec![], &[("x-request-id", "two words")]).await;
        let id = r.header("x-request-id").expect("an id");
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a new id: {id}");

        // A browser's CORS preflight carries no token and is answered.
        let pre = raw(
            &app,
            "OPTIONS",
            "/api/v1/servers/",
            None,
            vec![],
            &[
                ("origin", "https://panel.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization,content-type"),
            ],
        )
        .await;
        assert_eq!((pre.status, pre.header("access-control-allow-origin")), (200, Some("*")), "{pre:?}");

        // The docs page and its assets come from the binary, with no token.
        let page = raw(&app, "GET", "/api/v1/docs/", None, vec![], &[]).await;
        assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
        assert!(page.header("content-security-policy").is_some_and(|p| p.contains("script-src 'self'")));
        let html = page.body.as_str().unwrap();
        for asset in ["/api/v1/docs/swagger-ui-bundle.js", "/api/v1/docs/swagger-ui.css", "/api/v1/docs/init.js"] {
            assert!(html.contains(asset), "{html}");
            let a = raw(&app, "GET", asset, None, vec![], &[]).await;
            assert_eq!(a.status, 200, "{asset}");
            assert!(!a.body.as_str().unwrap_or_default().is_empty(), "{asset}");
        }
        assert!(!html.contains("http"), "nothing from elsewhere: {html}");
        assert_eq!(raw(&app, "GET", "/api/v1/docs", None, vec![], &[]).await.status, 200);

        let doc = call(&app, "GET", "/api/v1/openapi.json", None, None).await;
        assert_eq!(doc.status, 200);
        assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
        let paths = &doc.body["paths"];
        for p in [
            "/api/v1/servers/",
            "/api/v1/servers/{server_id}/",
            "/api/v1/servers/{server_id}/start/",
            "/api/v1/servers/{server_id}/stop/",
            "/api/v1/servers/{server_id}/reboot/",
            "/api/v1/plans/",
            "/api/v1/os/",
            "/api/v1/locations/",
            "/api/v1/ssh-keys/",
        ] {
            assert!(paths[p].is_object(), "{p} missing");
        }
        let detail = &paths["/api/v1/servers/{server_id}/"];
        assert!(["get", "put", "patch", "delete"].iter().all(|m| detail[m].is_object()));
        let schemas = &doc.body["components"]["schemas"];
        assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
        assert!(schemas["ServerDetail"].is_object());
        assert_eq!(schemas["ServerStatus"]["enum"].as_array().map(Vec::len), Some(10), "{}", schemas["ServerStatus"]);
    }
}
