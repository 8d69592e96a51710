//! `/metrics` (on its own listener, `--metrics-listen`, never the public API port): request
//! count and latency by method, matched route template and status code, and the build.
//! Labels are bounded: never an id, never a raw path.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vps_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request", latency.clone());
        crate::telemetry::register_build_info(&mut registry);
        crate::telemetry::register_kube_writes(&mut registry);
        Metrics { registry, requests, latency }
    }

    pub fn observe(&self, method: &axum::http::Method, route: &str, status: u16, seconds: f64) {
        // Methods outside the standard ones count as one: a client cannot grow the label set.
        let method = match *method {
            axum::http::Method::GET
            | axum::http::Method::HEAD
            | axum::http::Method::POST
            | axum::http::Method::PUT
            | axum::http::Method::PATCH
            | axum::http::Method::DELETE
            | axum::http::Method::OPTIONS => method.as_str(),
            _ => "other",
        };
        let labels = RequestLabels { method: method.to_string(), route: route.to_string(), status };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode metrics into a String");
        out
    }
}

/// The route label: the matched template, with the trailing slash every API path documents.
pub fn route_label(matched: Option<&MatchedPath>) -> String {
    match matched.map(MatchedPath::as_str) {
        None => "unmatched".to_string(),
        Some(p) if p.starts_with("/api/") && !p.ends_with('/') && !p.ends_with(".json") => format!("{p}/"),
        Some(p) => p.to_string(),
    }
}

/// Middleware recording every answered request.
pub async fn record(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = req.method().clone();
    let start = Instant::now();
    let res = next.run(req).await;
    metrics.observe(&method, &route, res.status().as_u16(), start.elapsed().as_secs_f64());
    res
}

pub async fn serve(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, crate::telemetry::OPENMETRICS_CONTENT_TYPE)], state.metrics.encode()).into_response()
}
