//! `Idempotency-Key` on `POST /api/v1/servers/`: the first successful response for an
//! account and key is kept for 24 hours in a ConfigMap in the system namespace, and replayed
//! for every later request with the same key, by any gateway replica, also after restarts.
//!
//! Creating the ConfigMap is the lock: the request that creates it (state `pending`) does the
//! work; concurrent requests with the same key wait for it to finish and replay its answer.
//! A failed request releases the key (so a corrected retry can use it). A pending record
//! older than [`STALE_AFTER`] belongs to a gateway that died: it is taken over, and the
//! server label [`IDEMPOTENCY_LABEL`] lets the new owner find a server the dead one created.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::api::ACCOUNT_LABEL;

/// Label on idempotency records.
pub const RECORD_LABEL: &str = "vps.org/idempotency";
/// Label on a server naming (a hash of) the idempotency key that created it.
pub const IDEMPOTENCY_LABEL: &str = "vps.org/idempotency-key";
/// How long a completed answer is replayed.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A pending record older than this is abandoned.
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// How long a request waits for a concurrent one with the same key.
const WAIT: Duration = Duration::from_secs(20);

/// A stored answer.
pub struct Stored {
    pub status: StatusCode,
    pub body: String,
    pub location: Option<String>,
}

impl IntoResponse for Stored {
    fn into_response(self) -> Response {
        let mut res = (self.status, [(header::CONTENT_TYPE, "application/json")], self.body).into_response();
        if let Some(loc) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            res.headers_mut().insert(header::LOCATION, loc);
        }
        res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        res
    }
}

/// The right to do the work for a key.
pub struct Lock {
    api: Api<ConfigMap>,
    name: String,
    /// Hash of account and key, 40 hex digits: the server label value.
    pub key_hash: String,
}

/// What a request with a key must do.
pub enum Claim {
    Fresh(Box<Lock>),
    Replay(Stored),
}

/// Checks the header's value: 1–255 visible ASCII characters.
pub fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()) => Ok(v.to_string()),
        _ => Err(ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters.".into())),
    }
}

/// SHA-256 hex of the request body, for detecting a key reused with another request.
pub fn request_hash(body: &[u8]) -> String {
    // The same JSON in another layout is the same request.
    let canonical = serde_json::from_slice::<serde_json::Value>(body).map(|v| v.to_string());
    let bytes = canonical.as_ref().map(|s| s.as_bytes()).unwrap_or(body);
    hex::encode(Sha256::digest(bytes))
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn age(cm: &ConfigMap) -> Duration {
    let created = cm
        .data
        .as_ref()
        .and_then(|d| d.get("created-at"))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Duration::try_from(now().duration_since(created)).unwrap_or_default()
}

async fn delete_exact(api: &Api<ConfigMap>, cm: &ConfigMap) -> Result<(), ApiError> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: cm.uid(), resource_version: cm.resource_version() }),
        ..Default::default()
    };
    match api.delete(&cm.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Takes the key for this request, or finds the answer to replay.
pub async fn claim(
    client: &Client,
    system_namespace: &str,
    account: &str,
    key: &str,
    request: &str,
) -> Result<Claim, ApiError> {
    let key_hash = hex::encode(Sha256::digest(format!("{account}\n{key}").as_bytes()))[..40].to_string();
    let name = format!("idem-{key_hash}");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    let record = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (RECORD_LABEL.to_string(), "true".to_string()),
                (ACCOUNT_LABEL.to_string(), account.to_string()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("state".to_string(), "pending".to_string()),
            ("request-sha256".to_string(), request.to_string()),
            ("created-at".to_string(), now().to_string()),
        ])),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match api.create(&PostParams::default(), &record).await {
            Ok(_) => return Ok(Claim::Fresh(Box::new(Lock { api, name, key_hash }))),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = api.get_opt(&name).await? else { continue };
        let data = existing.data.clone().unwrap_or_default();
        let state = data.get("state").map(String::as_str);
        if age(&existing) > RETENTION || (state == Some("pending") && age(&existing) > STALE_AFTER) {
            delete_exact(&api, &existing).await?;
            continue;
        }
        if data.get("request-sha256").map(String::as_str) != Some(request) {
            return Err(ApiError::BadRequest(
                "This Idempotency-Key was already used with a different request body.".into(),
            ));
        }
        if state == Some("done") {
            let status = data
                .get("status")
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            return Ok(Claim::Replay(Stored {
                status,
                body: data.get("body").cloned().unwrap_or_default(),
                location: data.get("location").cloned(),
            }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Conflict(
                "A request with this Idempotency-Key is still being processed; retry later.".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Lock {
    /// Records the answer for replay.
    pub async fn complete(self, stored: &Stored) {
        let mut patch = serde_json::json!({"data": {
            "state": "done",
            "status": stored.status.as_u16().to_string(),
            "body": stored.body,
        }});
        if let Some(location) = &stored.location {
            patch["data"]["location"] = serde_json::Value::String(location.clone());
        }
        let pp = kube::api::PatchParams::default();
        if let Err(e) = self.api.patch(&self.name, &pp, &kube::api::Patch::Merge(&patch)).await {
            // A retry still finds the server by its label; it will not create a second one.
            tracing::warn!(error = %e, record = self.name, "Could not record an idempotent answer");
        }
    }

    /// Gives the key back, for a request that failed.
    pub async fn release(self) {
        if let Err(e) = self.api.delete(&self.name, &DeleteParams::default()).await {
            tracing::warn!(error = %e, record = self.name, "Could not release an idempotency key");
        }
    }
}

/// Deletes records past their retention.
pub async fn sweep(client: &Client, system_namespace: &str) -> Result<usize, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    let mut deleted = 0;
    for cm in api.list(&ListParams::default().labels(&format!("{RECORD_LABEL}=true"))).await?.items {
        if age(&cm) > RETENTION && delete_exact(&api, &cm).await.is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Sweeps every ten minutes, forever.
pub async fn sweep_forever(client: Client, system_namespace: String) {
    loop {
        match sweep(&client, &system_namespace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "Expired idempotency records deleted"),
            Err(e) => tracing::warn!(error = %e, "Sweeping idempotency records failed"),
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}
