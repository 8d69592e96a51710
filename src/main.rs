//! The `vps-operator` command: one binary, a subcommand per part of the system.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vps-operator", version, about = "Turns a Kubernetes cluster running KubeVirt into a VPS provider")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of the vps.org API as YAML (what crds/ holds).
    Crdgen,
    /// Run everything locally: a control plane built from source, with the CRDs installed.
    Local(vps_operator::local::LocalArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Crdgen => {
            print!("{}", vps_operator::api::crds_yaml());
            Ok(())
        }
        Command::Local(args) => vps_operator::local::run(args).await,
    }
}
