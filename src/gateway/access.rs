//! Each request's id and its access log line. The id is the request's `X-Request-Id` when it
//! carries a sane one (1–128 visible ASCII characters, as a proxy in front would set it),
//! else a new random one; every response carries it back, and the access log line (level
//! `info`, target `vps_operator::gateway::access`, off with `--access-log=false`) names it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// Whether a client's id is taken as it is.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new id: 128 random bits in hex.
fn new_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).expect("hex is a valid header value")
}

/// The middleware: sets the id, answers with it, and logs the request when `log` is on.
pub async fn middleware(State(log): State<bool>, mut req: Request, next: Next) -> Response {
    let id = req.headers().get(&REQUEST_ID).filter(|v| acceptable(v)).cloned().unwrap_or_else(new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let method = req.method().clone();
    let route = super::metrics::route_label(req.extensions().get::<MatchedPath>());
    let mut res = next.run(req).await;
    if log {
        tracing::info!(
            request_id = id.to_str().unwrap_or_default(),
            method = %method,
            route,
            status = res.status().as_u16(),
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
    res.headers_mut().insert(REQUEST_ID, id);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_taken_from_the_client() {
        assert!(acceptable(&HeaderValue::from_static("req-42.abc")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("two words")));
        assert!(!acceptable(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
        let fresh = new_id();
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, new_id());
    }
}
