//! `vps-operator local`: the whole system on one machine, for trying it out and for demos.
//! Starts a control plane built from source (the same starter the tests use), installs the
//! CRDs, and keeps running until Ctrl-C or SIGTERM, then stops everything it started.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::controlplane::{self, Binaries, ControlPlane, Options};

/// Flags of `vps-operator local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Keep the cluster's state here; a restart with the same folder finds it again.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Once everything is ready, write `KUBECONFIG=...` (shell lines) to this file.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> Result<()> {
    tracing::info!("Building (first run only) or finding the control-plane binaries");
    let binaries = tokio::task::spawn_blocking(|| Binaries::ensure(&controlplane::source_root())).await??;
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir)?;
    }
    let data_dir = args.data_dir.as_ref().map(|d| d.canonicalize()).transpose()?;
    let mut plane = ControlPlane::start_api(binaries, Options { data_dir, scheduler: true }).await?;
    let client = plane.client().await?;
    crate::testbed::install_crds(&client, plane.binaries()).await?;
    plane.start_controllers().await?;

    let kubeconfig = plane.kubeconfig_path();
    if let Some(path) = &args.env_file {
        let mut file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        writeln!(file, "KUBECONFIG={}", kubeconfig.display())?;
    }
    println!("The control plane is ready (Kubernetes {}).", controlplane::KUBERNETES_VERSION);
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get vps -A");
    println!("Press Ctrl-C to stop.");

    wait_for_shutdown_signal().await;
    tracing::info!("Stopping");
    plane.stop();
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
