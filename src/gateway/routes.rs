//! The routing: every resource's router merged into the whole HTTP surface under its
//! middleware (body limit, panics, timeout, metrics, tracing, CORS, access log), `/metrics`
//! apart, and the helpers each router registers its paths with.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::trace::TraceLayer;

use super::auth::Tenant;
use super::error::ApiError;
use super::{
    AppState, BODY_LIMIT, access, account, actions, backups, catalog, console, console_output, docs, lifecycle,
    metrics, openapi, power, server_metrics, servers, ssh_keys,
};

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

/// `/metrics`, served apart from the API ([`serve_metrics`](super::serve_metrics)).
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

#[cfg(test)]
mod tests {
    use crate::gateway::testing::{self, TOKEN, call, raw};

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
