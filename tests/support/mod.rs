//! Test support: one real control plane per test binary, shared by its tests, each test in a
//! namespace of its own.
//!
//! The control plane is started on first use from a thread of its own, with its own runtime,
//! so that it outlives the runtime of the test that happened to start it. Its processes die
//! with the test binary (see `vps_operator::controlplane::Process`), also after a panic.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use vps_operator::controlplane::{self, Binaries, ControlPlane, Options};

/// What tests need to reach the shared control plane.
pub struct Shared {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub binaries: Binaries,
}

/// Starts the control plane on first call (building the binaries if the cache is cold) and
/// installs every CRD.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| match std::thread::spawn(start).join() {
        Ok(Ok(shared)) => Ok(shared),
        Ok(Err(e)) => Err(format!("could not start the control plane: {e:?}")),
        Err(_) => Err("starting the control plane panicked".into()),
    });
    match started {
        Ok(shared) => shared,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> anyhow::Result<Shared> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let binaries = Binaries::ensure(&controlplane::source_root())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let plane = runtime.block_on(async {
        let mut plane =
            ControlPlane::start_api(binaries.clone(), Options { scheduler: true, ..Options::default() }).await?;
        let client = plane.client().await?;
        vps_operator::testbed::install_crds(&client, &binaries).await?;
        plane.start_controllers().await?;
        anyhow::Ok(plane)
    })?;
    let shared = Shared { kubeconfig: plane.kubeconfig_path(), kubectl: binaries.kube("kubectl"), binaries };
    // Lives until the test binary exits; its processes die with it.
    std::mem::forget(plane);
    Ok(shared)
}

/// A cluster-admin client, bound to the calling test's runtime.
pub async fn client() -> Client {
    controlplane::client_from_kubeconfig(&shared().kubeconfig).await.expect("client for the shared control plane")
}

/// A fresh namespace for one test, named after it.
pub async fn namespace(client: &Client, test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{}-{}-{}",
        test.replace('_', "-").chars().take(40).collect::<String>().trim_end_matches('-'),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    controlplane::wait_for_default_service_account(client, &name).await.expect("default service account");
    name
}

/// Runs kubectl against the shared control plane; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let s = shared();
    let out = std::process::Command::new(&s.kubectl)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
