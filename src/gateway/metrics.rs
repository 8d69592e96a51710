//! `/metrics`: request count and latency by matched route template and status code. Labels
//! are bounded: never an id, never a raw path.

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
        Metrics { registry, requests, latency }
    }

    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route: route.to_string(), status };
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
    let start = Instant::now();
    let res = next.run(req).await;
    metrics.observe(&route, res.status().as_u16(), start.elapsed().as_secs_f64());
    res
}

pub async fn serve(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}
