//! The transport: one HTTP/1.1 request at a time to the gateway, over TCP or TLS (rustls with
//! the ring provider and the system's roots, as kube's client already builds them). The bearer
//! token goes only to the configured host: pagination links are followed by their query alone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a page of 1,000 servers is about 400 KB).
const MAX_BODY: usize = 64 << 20;

/// One request of the API: a path under the gateway's root (`/api/v1/servers/`), an
/// already encoded query, and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<serde_json::Value>,
    /// Sent as `Idempotency-Key` (creates), so that a retry after a lost answer makes one server.
    pub idempotency_key: Option<String>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request { method, path: path.into(), query: None, body: None, idempotency_key: None }
    }

    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::GET, path)
    }

    /// The query from these pairs (none when empty).
    pub fn with_query(mut self, pairs: &[(&str, String)]) -> Request {
        let encoded = serde_urlencoded::to_string(pairs).unwrap_or_default();
        self.query = (!encoded.is_empty()).then_some(encoded);
        self
    }

    pub fn with_body(mut self, body: serde_json::Value) -> Request {
        self.body = Some(body);
        self
    }
}

/// An answer: status, headers and the body's text (the API answers JSON; empty for 204).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The gateway at a base URL, with a token.
pub struct Api {
    /// Scheme, authority and any path prefix, without a trailing slash.
    base: String,
    token: HeaderValue,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The gateway's root from `VPS_API_URL`: `http://host:port` (a trailing `/` or `/api/v1` is
/// dropped, a path prefix of a proxy kept).
pub fn base_url(url: &str) -> Result<(String, bool)> {
    let url = url.trim();
    let uri: Uri = url.parse().with_context(|| format!("not a URL: {url:?}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("the API URL must start with http:// or https:// (got {url:?})"),
    };
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        bail!("the API URL has no host: {url:?}");
    }
    if uri.query().is_some() {
        bail!("the API URL must not have a query: {url:?}");
    }
    let mut base = url.trim_end_matches('/');
    if let Some(root) = base.strip_suffix("/api/v1") {
        base = root;
    }
    Ok((base.to_string(), https))
}

impl Api {
    pub fn new(url: &str, token: &str) -> Result<Api> {
        let (base, https) = base_url(url)?;
        let token = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .ok()
            .filter(|_| !token.trim().is_empty())
            .context("the API token is empty or has characters a header cannot carry")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if https {
            // The system's roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
            builder
                .with_provider_and_native_roots(provider)
                .context("no usable CA certificates on this machine for https:// (set SSL_CERT_FILE to a PEM bundle)")?
        } else {
            // Plain HTTP: the TLS side is never used.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Api { base, token, client })
    }

    /// The absolute URL of a request.
    pub fn url(&self, req: &Request) -> String {
        match &req.query {
            Some(q) => format!("{}{}?{q}", self.base, req.path),
            None => format!("{}{}", self.base, req.path),
        }
    }

    /// Sends one request; an error only when no answer came (connection, TLS, timeout).
    /// Creates (which carry an idempotency key) and GETs are retried twice on such errors.
    pub async fn send(&self, req: &Request) -> Result<Reply> {
        let retries = if req.method == Method::GET || req.idempotency_key.is_some() { 2 } else { 0 };
        let mut attempt = 0;
        loop {
            match self.send_once(req).await {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt < retries => {
                    attempt += 1;
                    tracing::debug!(error = %format!("{e:#}"), attempt, "retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once(&self, req: &Request) -> Result<Reply> {
        let url = self.url(req);
        let body = match &req.body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(&url)
            .header(header::AUTHORIZATION, self.token.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("vps-operator-client/", env!("CARGO_PKG_VERSION")));
        if req.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = &req.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        let request = builder.body(Full::new(body)).with_context(|| format!("a request to {url}"))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_BODY).collect().await.map_err(|e| anyhow::anyhow!(e))?.to_bytes();
            anyhow::Ok((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            .and_then(|r| r)
            .with_context(|| format!("{} {url}", req.method))?;
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// The query of a pagination link (`next`), to send to our own base URL.
pub fn query_of_link(link: &str) -> Option<String> {
    link.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or_default().to_string()).filter(|q| !q.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("http://127.0.0.1:8080").unwrap(), ("http://127.0.0.1:8080".into(), false));
        assert_eq!(base_url("http://127.0.0.1:8080/").unwrap().0, "http://127.0.0.1:8080");
        assert_eq!(base_url("https://vps.example.com/api/v1/").unwrap(), ("https://vps.example.com".into(), true));
        assert_eq!(base_url("https://proxy.example.com/vps").unwrap().0, "https://proxy.example.com/vps");
        for bad in ["127.0.0.1:8080", "ftp://h", "http://", "", "http://h/?x=1"] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn urls_and_tokens() {
        let api = Api::new("http://gw:8080/", "t0k").unwrap();
        let req = Request::get("/api/v1/servers/").with_query(&[("status", "active".into()), ("page", "2".into())]);
        assert_eq!(api.url(&req), "http://gw:8080/api/v1/servers/?status=active&page=2");
        assert_eq!(api.url(&Request::get("/api/v1/plans/").with_query(&[])), "http://gw:8080/api/v1/plans/");
        assert!(Api::new("http://gw", "").is_err());
        assert!(Api::new("http://gw", "a\nb").is_err());
    }

    #[test]
    fn links_give_only_their_query() {
        assert_eq!(
            query_of_link("http://elsewhere/api/v1/servers/?page_size=1&page=2").as_deref(),
            Some("page_size=1&page=2")
        );
        assert_eq!(query_of_link("http://h/api/v1/servers/"), None);
    }
}
