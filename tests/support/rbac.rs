//! RBAC test support: the ServiceAccounts and roles of `deploy/` applied to the test control
//! plane for real, tokens for them from the TokenRequest API, kubeconfigs holding those tokens,
//! and a gateway served with such a kubeconfig (no admin rights anywhere in it).

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;
use vps_operator::controlplane;

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

/// A gateway that runs with the given client (the gateway's own credentials); stops when
/// dropped.
pub struct Gateway(super::gateway::Gateway);

/// Starts a gateway on 127.0.0.1:0 with `client`; returns once its caches have synced.
pub async fn start_gateway(client: Client) -> Gateway {
    Gateway(super::gateway::start_as(client).await)
}

impl Gateway {
    /// Sends a request with an optional JSON body; returns status and body (`Null` when empty).
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let answer = self.0.call(method, path, Some(token), body).await;
        (answer.status, answer.body)
    }
}
