//! The REST gateway over HTTP against the real control plane: what needs the API server —
//! writes and the cache reading them back, kubectl interplay, credit reservations, idempotency
//! records, token watches and the subcommands. The pure rules (validation, error shapes,
//! 405s, trailing slashes, pagination, the action state rules) are unit tests beside the
//! handlers (`src/gateway/`), over caches filled from a fixture. The operator does not run
//! here: where a test needs a phase, it writes the status itself.

#[path = "../support/mod.rs"]
mod support;

mod client;
mod credit;
mod idempotency;
mod kubectl;
mod servers;
mod ssh_keys;
mod tokens;

/// What the modules of this suite use.
mod prelude {
    pub(crate) use super::support::gateway::{self as gw, Answer, eventually};
    pub(crate) use super::support::{self};
    pub(crate) use super::{create, is_rfc3339_z, keys, sample_create, set_status, setup, wait_status};
    pub(crate) use kube::ResourceExt;
    pub(crate) use kube::api::{Api, ListParams, Patch, PatchParams};
    pub(crate) use serde_json::{Value, json};
    pub(crate) use std::collections::BTreeSet;
    pub(crate) use vps_operator::api::{PowerState, VpsServer};
}

use std::collections::BTreeSet;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::gateway::{self as gw, Gateway, Tenant, eventually};
use vps_operator::api::VpsServer;

fn sample_create(name: &str) -> Value {
    json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west",
           "hostname": "web02.example.com", "backups_enabled": true})
}

async fn setup(test: &str, credit: i64) -> (Client, Gateway, Tenant) {
    let client = support::client().await;
    let tenant = gw::tenant(&client, test, credit).await;
    let gateway = gw::start(&client).await;
    gateway.wait_token(&tenant.token).await;
    (client, gateway, tenant)
}

async fn create(g: &Gateway, t: &Tenant, body: Value) -> i64 {
    let a = g.call("POST", "/api/v1/servers/", Some(&t.token), Some(body)).await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["id"].as_i64().expect("id")
}

async fn set_status(client: &Client, ns: &str, id: i64, status: Value) {
    let api: Api<VpsServer> = Api::namespaced(client.clone(), ns);
    api.patch_status(&format!("srv-{id}"), &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
        .await
        .expect("patch status");
}

async fn wait_status(g: &Gateway, t: &Tenant, id: i64, status: &str) {
    eventually(&format!("server {id} shows {status}"), || async {
        g.call("GET", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.body["status"] == status
    })
    .await;
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn is_rfc3339_z(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.ends_with('Z') && s.parse::<jiff::Timestamp>().is_ok())
}
