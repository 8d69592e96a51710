//! Where the control-plane binaries come from: `scripts/build-control-plane.sh` builds them
//! from their Go modules into a cache keyed by the pinned versions, and prints the folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The pinned Kubernetes version (also the k8s-openapi feature in Cargo.toml).
pub const KUBERNETES_VERSION: &str = "v1.35.4";
/// The pinned KubeVirt version.
pub const KUBEVIRT_VERSION: &str = "v1.7.0";
/// The Prometheus `scripts/build-control-plane.sh` builds.
pub const PROMETHEUS_VERSION: &str = "v0.316.0";

/// Folders holding the built binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kubernetes: PathBuf,
    pub kubevirt: Option<PathBuf>,
}

impl Binaries {
    /// Builds what is missing (a no-op when the cache is warm) and returns the folders.
    /// `source_root` is the repository root holding `scripts/` and `tests/`.
    pub fn ensure(source_root: &Path) -> Result<Binaries> {
        let script = source_root.join("scripts/build-control-plane.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !output.status.success() {
            bail!("{} failed ({}); see its output above", script.display(), output.status);
        }
        let stdout = String::from_utf8(output.stdout)?;
        let kubernetes = PathBuf::from(stdout.lines().last().context("the build script printed no folder")?.trim());
        let kubevirt = kubernetes.parent().map(|cache| cache.join("kubevirt-current")).filter(|p| p.exists());
        Ok(Binaries { kubernetes, kubevirt })
    }

    /// The path of a Kubernetes binary (`kube-apiserver`, `etcd`, `kubectl`, ...).
    pub fn kube(&self, name: &str) -> PathBuf {
        self.kubernetes.join(name)
    }

    /// The path of `helm` (built from its Go module by the same script, for the deploy
    /// tests), when it was built.
    pub fn helm(&self) -> Option<PathBuf> {
        let helm = self.kubernetes.parent()?.join("helm-current/helm");
        helm.exists().then_some(helm)
    }

    /// The path of `prometheus` (built by the same script), when it was built.
    pub fn prometheus(&self) -> Option<PathBuf> {
        let prometheus = self.kubernetes.parent()?.join("prometheus-current/prometheus");
        prometheus.exists().then_some(prometheus)
    }

    /// The path of a real node's binary (`kubelet`, `kube-proxy`, `pause`, the CNI plugins
    /// `bridge`, `host-local`, `loopback`, `portmap`).
    pub fn node(&self, name: &str) -> Result<PathBuf> {
        let path = self.kubernetes.parent().context("the cache folder")?.join("node-current").join(name);
        anyhow::ensure!(path.exists(), "{} was not built (scripts/build-control-plane.sh builds it)", path.display());
        Ok(path)
    }

    /// The path of a KubeVirt binary (`virt-controller`, `virt-api`, `kubevirt-crds`).
    pub fn kubevirt(&self, name: &str) -> Result<PathBuf> {
        Ok(self.kubevirt.as_ref().context("KubeVirt binaries were not built")?.join(name))
    }
}

/// The repository root when running from a checkout (tests, `cargo run`).
pub fn source_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
