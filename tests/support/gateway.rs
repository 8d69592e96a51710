//! Gateway test support: the shared catalog, tenants (namespace + account + token), and a
//! gateway served in-process on a real listener (127.0.0.1:0).

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use reqwest::header::HeaderMap;
use serde_json::Value;
use vps_operator::gateway::{self, AppState};

pub const SYSTEM_NAMESPACE: &str = "vps-system";

/// Creates the system namespace once (idempotent: other tests may have made it).
pub async fn ensure_system_namespace(client: &Client) {
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(SYSTEM_NAMESPACE.into()), ..Default::default() },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create {SYSTEM_NAMESPACE}: {e}"),
    }
}

/// The demo catalog (`deploy/samples/catalog.yaml`), applied server-side (idempotent; shared
/// by every test of the binary).
pub async fn ensure_catalog(client: &Client) {
    vps_operator::testbed::install_demo_catalog(client).await.expect("install the demo catalog");
}

/// One account of a test: its namespace, the account's name, and a token for it.
pub struct Tenant {
    pub account: String,
    pub namespace: String,
    pub token: String,
}

/// A namespace, a `VpsAccount` for it with `credit_cents`, and a token.
pub async fn tenant(client: &Client, test: &str, credit_cents: i64) -> Tenant {
    ensure_system_namespace(client).await;
    ensure_catalog(client).await;
    let namespace = super::namespace(client, test).await;
    let account = namespace.clone();
    vps_operator::testbed::ensure_account(client, &account, credit_cents).await.expect("apply account");
    let token = vps_operator::tokens::create(client, SYSTEM_NAMESPACE, &account, None).await.expect("create token");
    Tenant { account, namespace, token }
}

/// A gateway served in this test's runtime; stops when dropped.
pub struct Gateway {
    pub url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer: status, headers, body as JSON (`Null` when empty, a string when not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Starts a gateway on 127.0.0.1:0 against the shared control plane; returns once its
/// caches have synced.
pub async fn start(client: &Client) -> Gateway {
    ensure_system_namespace(client).await;
    start_as(client.clone()).await
}

/// Starts a gateway on 127.0.0.1:0 that uses `client` (its own credentials) for everything.
pub async fn start_as(client: Client) -> Gateway {
    let prometheus_url = super::current().system.as_ref().and_then(|s| s.prometheus_url.clone());
    let settings =
        gateway::GatewayArgs { system_namespace: SYSTEM_NAMESPACE.into(), prometheus_url, ..Default::default() };
    start_with(client, settings).await
}

/// Starts a gateway on 127.0.0.1:0 with `settings`.
pub async fn start_with(client: Client, settings: gateway::GatewayArgs) -> Gateway {
    let state = gateway::start(client, &settings).await.expect("start the gateway");
    let state = state.synced().await.expect("gateway caches sync");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = state.clone();
    let task = tokio::spawn(async move {
        gateway::serve(listener, served, std::future::pending()).await.expect("serve");
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    Gateway { url, state, http, task }
}

impl Gateway {
    /// Sends a request with an optional JSON body, as the original's samples do
    /// (`Content-Type: application/json` always).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, path, token, bytes, &[]).await
    }

    /// Sends raw bytes with extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req =
            self.http.request(method, format!("{}{path}", self.url)).header("Content-Type", "application/json");
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let res = req.send().await.expect("send request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, headers, body }
    }

    /// Waits until the gateway accepts a token (tokens made after it started reach its cache
    /// through a watch).
    pub async fn wait_token(&self, token: &str) {
        for _ in 0..500 {
            if self.call("GET", "/api/v1/plans/", Some(token), None).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the gateway never accepted the token");
    }
}

/// Polls `check` until it returns true (10 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The operator's system ([`super::system`]), a tenant with ample credit and a gateway that
/// accepts its token.
pub async fn system_tenant(test: &str) -> (Client, Gateway, Tenant) {
    let _ = super::system();
    let client = super::client().await;
    let tenant = tenant(&client, test, 1_000_000).await;
    let gateway = start(&client).await;
    gateway.wait_token(&tenant.token).await;
    (client, gateway, tenant)
}
