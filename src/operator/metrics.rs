//! The operator's Prometheus metrics (labels bounded: a result and an error kind, a phase and
//! a location of the catalog, never an object name): reconciles, their duration, the work
//! queue, the build, and the fleet (servers by phase and location, the time from a create to
//! its server active, actions in progress); and its health endpoints.

use std::collections::HashMap;
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
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kube::ResourceExt;

use crate::api::{ActionState, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseAt {
    phase: &'static str,
    location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionKind {
    r#type: &'static str,
}

/// Reconcile counters and durations, and the fleet.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    /// From a create (its action) to the server active.
    pub provisioning: Histogram,
    servers: Family<PhaseAt, Gauge>,
    actions: Family<ActionKind, Gauge>,
    /// The operator's caches, once it has them: the fleet is counted from them at each scrape.
    pub fleet: Arc<std::sync::OnceLock<super::watches::Caches>>,
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
        let provisioning = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "provisioning_duration_seconds",
            "From a create through the REST API to its server active",
            provisioning.clone(),
        );
        let servers = Family::<PhaseAt, Gauge>::default();
        registry.register("servers", "Servers by phase and location", servers.clone());
        let actions = Family::<ActionKind, Gauge>::default();
        registry.register("actions_in_progress", "Tracked actions in progress, by type", actions.clone());
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
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            duration,
            provisioning,
            servers,
            actions,
            fleet: Arc::default(),
            queue,
            ready: Arc::new(AtomicBool::new(false)),
        }
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
        if let Some(caches) = self.fleet.get() {
            self.count_fleet(caches);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }

    /// Counts the servers by phase and location and the open actions by type, from the caches.
    /// A location that is not in the catalog is counted as `other` (the labels stay bounded).
    fn count_fleet(&self, caches: &super::watches::Caches) {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Slim {
            spec: SlimSpec,
            status: Option<SlimStatus>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct SlimSpec {
            location: String,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct SlimStatus {
            phase: Option<Phase>,
        }
        let known: std::collections::HashSet<String> = caches.locations.state().iter().map(|l| l.name_any()).collect();
        let mut counts: HashMap<PhaseAt, i64> = HashMap::new();
        caches.servers.for_each(|json| {
            let slim: Slim = serde_json::from_slice(json).unwrap_or_default();
            let phase = slim.status.and_then(|s| s.phase).unwrap_or(Phase::Provisioning);
            let location = if known.contains(&slim.spec.location) { slim.spec.location } else { "other".into() };
            *counts.entry(PhaseAt { phase: phase.as_api_str(), location }).or_default() += 1;
        });
        self.servers.clear();
        for (labels, n) in counts {
            self.servers.get_or_create(&labels).set(n);
        }
        self.actions.clear();
        for action in caches.actions.state() {
            if action.status.as_ref().is_none_or(|s| s.status == ActionState::InProgress) {
                let kind = ActionKind { r#type: action.spec.type_.as_str() };
                self.actions.get_or_create(&kind).inc();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_families_are_rendered_with_bounded_labels() {
        let m = Metrics::default();
        m.servers.get_or_create(&PhaseAt { phase: "active", location: "us-west".into() }).set(3);
        m.actions.get_or_create(&ActionKind { r#type: "create" }).inc();
        m.provisioning.observe(12.0);
        let text = m.render();
        assert!(text.contains("vps_operator_servers{phase=\"active\",location=\"us-west\"} 3\n"), "{text}");
        assert!(text.contains("vps_operator_actions_in_progress{type=\"create\"} 1\n"), "{text}");
        assert!(text.contains("vps_operator_provisioning_duration_seconds_count 1\n"), "{text}");
    }
}
