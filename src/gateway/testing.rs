//! Support for the handlers' unit tests: the whole HTTP surface ([`super::app`]) over caches
//! filled from a fixture, called with `oneshot` as the axum `testing` example does: no
//! socket, no cluster. What needs the API server (writes, watches, kubectl) is tested in
//! `tests/gateway/`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use http_body_util::BodyExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::AppState;
use super::cache::{Caches, Fixture};
use crate::api::{VpsAccount, VpsAccountSpec, VpsImage, VpsLocation, VpsPlan, VpsServer, VpsSshKey};
use crate::tokens::{ACCOUNT_KEY, ACCOUNT_UID_KEY, HASH_KEY, hash_token};

/// The token of account `acme` (namespace `acme`).
pub const TOKEN: &str = "vps_test_acme";
/// The token of account `other` (namespace `other`).
pub const OTHER_TOKEN: &str = "vps_test_other";

/// The demo catalog of `deploy/samples/catalog.yaml`.
fn catalog() -> (Vec<VpsPlan>, Vec<VpsImage>, Vec<VpsLocation>) {
    let (mut plans, mut images, mut locations) = (vec![], vec![], vec![]);
    for doc in serde_yaml::Deserializer::from_str(include_str!("../../deploy/samples/catalog.yaml")) {
        let value = <Value as serde::Deserialize>::deserialize(doc).expect("the catalog is YAML");
        match value["kind"].as_str() {
            Some("VpsPlan") => plans.push(serde_json::from_value(value).unwrap()),
            Some("VpsImage") => images.push(serde_json::from_value(value).unwrap()),
            Some("VpsLocation") => locations.push(serde_json::from_value(value).unwrap()),
            _ => {}
        }
    }
    (plans, images, locations)
}

fn token_secret(token: &str, account: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(format!("api-token-{account}"));
    secret.data = Some(BTreeMap::from([
        (HASH_KEY.to_string(), ByteString(hash_token(token).into_bytes())),
        (ACCOUNT_KEY.to_string(), ByteString(account.as_bytes().to_vec())),
        (ACCOUNT_UID_KEY.to_string(), ByteString(format!("uid-{account}").into_bytes())),
    ]));
    secret
}

/// A server of `namespace` with id `id`, named `name` in the API, in `phase` (`None`: no
/// status yet), on plan `standard` and image `ubuntu-22-04` in `us-west`, wanted running.
pub fn server(namespace: &str, id: i64, name: &str, phase: Option<&str>) -> VpsServer {
    let mut server: VpsServer = serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
        "metadata": {"name": format!("srv-{id}"), "namespace": namespace, "uid": format!("uid-{id}"),
            "resourceVersion": "1", "creationTimestamp": "2025-01-10T14:30:00Z",
            "labels": {crate::api::SERVER_ID_LABEL: id.to_string()}},
        "spec": {"name": name, "plan": "standard", "os": "ubuntu-22-04", "location": "us-west",
            "hostname": "web01.example.com"},
    }))
    .unwrap();
    if let Some(phase) = phase {
        server.status = Some(serde_json::from_value(json!({"id": id, "phase": phase})).unwrap());
    }
    server
}

/// An SSH key of `namespace` with id `id`.
pub fn ssh_key(namespace: &str, id: i64) -> VpsSshKey {
    serde_json::from_value(json!({
        "apiVersion": "vps.org/v1alpha1", "kind": "VpsSshKey",
        "metadata": {"name": format!("key-{id}"), "namespace": namespace, "creationTimestamp": "2025-01-10T14:30:00Z",
            "labels": {crate::api::SSH_KEY_ID_LABEL: id.to_string()}},
        "spec": {"name": format!("key {id}"), "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt me@laptop"},
    }))
    .unwrap()
}

/// An account (namespace of the same name, 100,000 cents of credit) with UID `uid-NAME`.
pub fn account(name: &str) -> VpsAccount {
    let mut a =
        VpsAccount::new(name, VpsAccountSpec { namespace: name.into(), credit_cents: 100_000, funds_cents: None });
    a.metadata.uid = Some(format!("uid-{name}"));
    a
}

/// The demo catalog, accounts `acme` and `other` with a token each ([`TOKEN`],
/// [`OTHER_TOKEN`]), and `servers` and `keys`.
pub fn fixture(servers: Vec<VpsServer>, keys: Vec<VpsSshKey>) -> Fixture {
    let (plans, images, locations) = catalog();
    Fixture {
        servers,
        tokens: vec![token_secret(TOKEN, "acme"), token_secret(OTHER_TOKEN, "other")],
        plans,
        images,
        locations,
        accounts: vec![account("acme"), account("other")],
        ssh_keys: keys,
        actions: Vec::new(),
        snapshots: Vec::new(),
        addresses: Vec::new(),
    }
}

/// Action `id` on server `server_id` (object `srv-ID`) in namespace `namespace`.
pub fn action(namespace: &str, id: i64, server_id: i64, type_: crate::api::ActionType) -> crate::api::VpsAction {
    let mut a = crate::api::VpsAction::new(
        &format!("act-{id}"),
        crate::api::VpsActionSpec {
            id,
            type_,
            server: format!("srv-{server_id}"),
            server_id,
            started_at: format!("2026-12-01T10:00:{:02}.5Z", id % 60),
            expect: Default::default(),
        },
    );
    a.metadata.namespace = Some(namespace.to_string());
    a
}

/// The settings of the tests' gateways: no rate limit (a test makes more requests at once
/// than a client would).
pub fn settings() -> super::GatewayArgs {
    super::GatewayArgs { rate_limit: 0.0, request_timeout_secs: 5, ..Default::default() }
}

/// The gateway over `fixture` with `settings`. Its client points at no cluster: a handler
/// that calls the API server answers 503.
pub async fn app_of(fixture: Fixture, settings: &super::GatewayArgs) -> Router {
    super::app(state_of(fixture, settings).await)
}

/// The state of a gateway over `fixture` (for [`super::app`] and [`super::metrics_app`]).
pub async fn state_of(fixture: Fixture, settings: &super::GatewayArgs) -> AppState {
    let (caches, feeds) = Caches::new();
    feeds.load(fixture);
    let nowhere = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(nowhere).unwrap();
    let state = AppState::new(client, caches, settings);
    tokio::time::timeout(Duration::from_secs(5), state.caches.wait_ready()).await.expect("the fixture is loaded");
    state
}

/// The gateway over [`fixture`] with [`settings`].
pub async fn app(servers: Vec<VpsServer>, keys: Vec<VpsSshKey>) -> Router {
    app_of(fixture(servers, keys), &settings()).await
}

/// A token Secret for `token` of `account`, bound to the account's UID `uid-ACCOUNT`.
pub fn token(token: &str, account: &str) -> Secret {
    token_secret(token, account)
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

/// Sends raw bytes with extra headers, as the original's samples do
/// (`Content-Type: application/json` always).
pub async fn raw(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.example.com")
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Answer { status, headers, body }
}

/// Sends a request with an optional JSON body.
pub async fn call(app: &Router, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    raw(app, method, path, token, bytes, &[]).await
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}
