//! RBAC test support: the ServiceAccounts and roles of `deploy/` applied to the test control
//! plane for real, tokens for them from the TokenRequest API, kubeconfigs holding those tokens,
//! and a gateway served with such a kubeconfig (no admin rights anywhere in it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;
use vps_operator::controlplane;
use vps_operator::gateway::{self, AppState};

pub const SYSTEM_NAMESPACE: &str = "vps-system";

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    controlplane::source_root().join("deploy")
}

/// The files of `deploy/` that hold the namespaces, ServiceAccounts and roles.
pub const RBAC_FILES: [&str; 4] =
    ["00-namespace.yaml", "10-rbac-operator.yaml", "11-rbac-gateway.yaml", "12-rbac-users.yaml"];

/// Applies the namespaces, ServiceAccounts and roles of `deploy/` (server-side, idempotent).
pub async fn apply_deploy_rbac(client: &Client) {
    for file in RBAC_FILES {
        let yaml = std::fs::read_to_string(deploy_dir().join(file)).expect("read deploy file");
        controlplane::apply_yaml(client, &yaml, SYSTEM_NAMESPACE)
            .await
            .unwrap_or_else(|e| panic!("apply {file}: {e:?}"));
    }
}

/// A token for ServiceAccount `name` in the system namespace, from the TokenRequest API.
pub async fn service_account_token(client: &Client, name: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(6 * 3600), bound_object_ref: None },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let answer =
        api.create_token_request(name, &PostParams::default(), &request).await.expect("TokenRequest for the account");
    answer.status.expect("TokenRequest status").token
}

/// Writes a kubeconfig for the admin kubeconfig's cluster that authenticates with `token`,
/// next to it, as `kubeconfig-NAME`.
pub fn kubeconfig_with_token(admin_kubeconfig: &Path, name: &str, token: &str) -> PathBuf {
    let admin = kube::config::Kubeconfig::read_from(admin_kubeconfig).expect("read the admin kubeconfig");
    let cluster = admin.clusters[0].cluster.as_ref().expect("a cluster");
    let server = cluster.server.as_deref().expect("a server URL");
    let ca = cluster.certificate_authority.as_deref().expect("a CA file");
    let path = admin_kubeconfig.with_file_name(format!("kubeconfig-{name}"));
    std::fs::write(&path, controlplane::kubeconfig_yaml(server, Path::new(ca), token)).expect("write kubeconfig");
    path
}

/// Applies the roles and returns a kubeconfig for the ServiceAccount `name` (`vps-operator`
/// or `vps-gateway`).
pub async fn service_account_kubeconfig(client: &Client, name: &str) -> PathBuf {
    apply_deploy_rbac(client).await;
    let token = service_account_token(client, name).await;
    kubeconfig_with_token(&super::current().kubeconfig, name, &token)
}

/// Whether a call was refused by authorization (403).
pub fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    match result {
        Err(kube::Error::Api(e)) => e.code == 403,
        other => {
            eprintln!("expected 403, got {other:?}");
            false
        }
    }
}

/// A gateway served in this test's runtime with the given client (the gateway's own
/// credentials); stops when dropped.
pub struct Gateway {
    pub url: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a gateway on 127.0.0.1:0 with `client`; returns once its caches have synced.
pub async fn start_gateway(client: Client) -> Gateway {
    let state = AppState::new(client, SYSTEM_NAMESPACE, Duration::from_secs(30));
    tokio::time::timeout(Duration::from_secs(30), state.caches.wait_ready())
        .await
        .expect("the gateway's caches sync with its ServiceAccount's rights");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = gateway::app(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    Gateway { url, http, task }
}

impl Gateway {
    /// Sends a request with an optional JSON body; returns status and body (`Null` when empty).
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .header("Authorization", format!("Bearer {token}"));
        if let Some(body) = body {
            req = req.body(serde_json::to_vec(&body).unwrap());
        }
        let res = req.send().await.expect("send request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }
}
