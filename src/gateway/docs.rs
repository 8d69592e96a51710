//! The API's docs page at `/api/v1/docs/`: Swagger UI rendering `/api/v1/openapi.json`, its
//! assets vendored in `assets/swagger-ui/` (`scripts/vendor-swagger-ui.sh`) and served from
//! the binary, so the page works with no internet. Public, like the document it renders.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, route_both};

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>VPS.org API</title>
<link rel="stylesheet" href="/api/v1/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/v1/docs/swagger-ui-bundle.js"></script>
<script src="/api/v1/docs/init.js"></script>
</body>
</html>
"#;

/// Kept out of the page so the page's policy can forbid inline scripts.
const INIT: &str = r##"window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  validatorUrl: null,
  tryItOutEnabled: false,
});
"##;

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

/// Everything from this gateway; Swagger UI draws its icons as data URLs and sets inline styles.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
    script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn router() -> Router<AppState> {
    let r = route_both(
        Router::new(),
        "/api/v1/docs/",
        get(|| async { asset("text/html; charset=utf-8", PAGE.as_bytes()) }),
    );
    r.route("/api/v1/docs/init.js", get(|| async { asset("text/javascript", INIT.as_bytes()) }))
        .route("/api/v1/docs/swagger-ui-bundle.js", get(|| async { asset("text/javascript", BUNDLE) }))
        .route("/api/v1/docs/swagger-ui.css", get(|| async { asset("text/css", CSS) }))
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    res
}
