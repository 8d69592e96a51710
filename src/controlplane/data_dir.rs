//! A control plane's data folder: the ports and token that stay the same across restarts
//! ([`Layout`]), the certificates, keys, token file and kubeconfig written there on first use,
//! and the temporary folder of a plane that keeps nothing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Authority, KUBERNETES_SERVICE_IP, certs, free_port, node};

/// Where a control plane's data folder records its [`Layout`].
pub(super) const LAYOUT_FILE: &str = "layout.json";

/// Ports and secrets that stay the same across restarts of a persistent control plane.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct Layout {
    pub(super) etcd_client: u16,
    pub(super) etcd_peer: u16,
    pub(super) apiserver: u16,
    pub(super) controller_manager: u16,
    pub(super) scheduler: u16,
    pub(super) token: String,
}

/// Writes certificates, keys, the token file and the kubeconfig on first use; reads the
/// saved layout afterwards.
pub(super) fn prepare(dir: &Path) -> Result<Layout> {
    let saved = dir.join(LAYOUT_FILE);
    if saved.exists() {
        return Ok(serde_json::from_slice(&std::fs::read(&saved)?)?);
    }
    let layout = Layout {
        etcd_client: free_port()?,
        etcd_peer: free_port()?,
        apiserver: free_port()?,
        controller_manager: free_port()?,
        scheduler: free_port()?,
        token: random_token(),
    };
    let pki = dir.join("pki");
    let write = |name: &str, contents: &str| std::fs::write(pki.join(name), contents);
    let ca = Authority::new("vps-local-ca")?;
    write("ca.crt", &ca.cert)?;
    let serving = ca.serving(
        "kube-apiserver",
        &[
            "127.0.0.1",
            "localhost",
            node::NODE_IP,
            KUBERNETES_SERVICE_IP,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ],
    )?;
    write("apiserver.crt", &serving.cert)?;
    write("apiserver.key", &serving.key)?;
    let front = Authority::new("vps-front-proxy-ca")?;
    write("front-proxy-ca.crt", &front.cert)?;
    let proxy = front.client("front-proxy-client", None)?;
    write("front-proxy-client.crt", &proxy.cert)?;
    write("front-proxy-client.key", &proxy.key)?;
    // The API server's credentials towards kubelets (logs, exec) of real nodes.
    let kubelet_client = ca.client("kube-apiserver-kubelet-client", Some("system:masters"))?;
    write("kubelet-client.crt", &kubelet_client.cert)?;
    write("kubelet-client.key", &kubelet_client.key)?;
    let (sa_key, sa_pub) = certs::service_account_key()?;
    write("sa.key", &sa_key)?;
    write("sa.pub", &sa_pub)?;
    write("tokens.csv", &format!("{},admin,admin-uid,\"system:masters\"\n", layout.token))?;
    std::fs::write(
        dir.join("kubeconfig"),
        kubeconfig_yaml(&format!("https://127.0.0.1:{}", layout.apiserver), &pki.join("ca.crt"), &layout.token),
    )?;
    std::fs::write(&saved, serde_json::to_vec_pretty(&layout)?)?;
    Ok(layout)
}

/// A kubeconfig for one cluster and one bearer-token user.
pub fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\n\
         current-context: local\n",
        ca = ca.display()
    )
}

fn random_token() -> String {
    use rand::RngExt as _;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new folder under the system temp dir; folders left by dead processes are removed.
pub(super) fn new_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("vps-cp-").and_then(|rest| rest.split('-').next())
                && let Ok(pid) = pid.parse::<u32>()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(tempfile::Builder::new().prefix(&format!("vps-cp-{}-", std::process::id())).tempdir_in(&base)?.keep())
}
