//! The operator's Prometheus metrics (labels bounded: a result and an error kind, never an
//! object name): reconciles, their duration, the work queue, the build; and its health
//! endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
    error: &'static str,
}

/// Reconcile counters and durations.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    /// The work queue's depth, running reconciles and retries.
    pub queue: super::queue::Stats,
    /// Set once every cache has synced.
    pub ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vps_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register("reconciles", "Reconciles by result and error kind", reconciles.clone());
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Duration of reconciles", duration.clone());
        let queue = super::queue::Stats::default();
        registry.register(
            "queue_waiting",
            "Servers waiting for a reconcile that is due or scheduled",
            queue.waiting.clone(),
        );
        registry.register("queue_running", "Reconciles running now", queue.running.clone());
        registry.register("queue_retries", "Failed reconciles scheduled again after a backoff", queue.retries.clone());
        crate::telemetry::register_build_info(&mut registry);
        crate::telemetry::register_kube_writes(&mut registry);
        Metrics { registry: Arc::new(registry), reconciles, duration, queue, ready: Arc::new(AtomicBool::new(false)) }
    }
}

impl Metrics {
    pub fn observe(&self, elapsed: Duration, error: Option<&'static str>) {
        let outcome = match error {
            None => Outcome { result: "success", error: "" },
            Some(e) => Outcome { result: "failure", error: e },
        };
        self.reconciles.get_or_create(&outcome).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// The content type of the OpenMetrics text `prometheus_client` writes.
pub const OPENMETRICS: &str = crate::telemetry::OPENMETRICS_CONTENT_TYPE;

/// Serves `/metrics`, `/healthz` and `/readyz`.
pub async fn serve(addr: SocketAddr, metrics: Metrics) {
    let m = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS)], m.render()).into_response() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if metrics.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("Metrics server failed: {e}");
            }
        }
        Err(e) => tracing::error!("Could not listen on {addr}: {e}"),
    }
}
