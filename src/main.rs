//! The `vps-operator` command: one binary, a subcommand per part of the system.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vps-operator", version, about = "Turns a Kubernetes cluster running KubeVirt into a VPS provider")]
struct Cli {
    /// How log lines are written to standard error (colour only on a terminal).
    #[arg(long, global = true, env = "VPS_LOG_FORMAT", value_enum, default_value_t)]
    log_format: vps_operator::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of the vps.org API as YAML (what crds/ holds).
    Crdgen,
    /// Run everything locally: a control plane built from source, KubeVirt's controllers, the
    /// operator, the node simulator and the gateway, with a demo catalog and two demo accounts.
    Local(vps_operator::local::LocalArgs),
    /// Serve the VPS REST API (the gateway).
    Gateway(vps_operator::gateway::GatewayArgs),
    /// Create or revoke API tokens of accounts.
    Token(vps_operator::tokens::TokenArgs),
    /// Run the operator: reconcile VpsServers into KubeVirt VirtualMachines.
    Operator(OperatorArgs),
    /// Play the hosts for KubeVirt (kubelet, virt-handler, CDI, snapshots); starts no VM.
    Simulator(vps_operator::simulator::SimulatorConfig),
    /// Wait until an HTTP URL answers 200 (the Helm chart's test hook).
    Check(vps_operator::probe::CheckArgs),
    /// Call the VPS REST API as a customer: servers, the catalog, SSH keys (VPS_API_URL,
    /// VPS_API_TOKEN).
    Client(vps_operator::client::ClientArgs),
}

#[derive(clap::Args)]
struct OperatorArgs {
    #[command(flatten)]
    config: vps_operator::operator::OperatorConfig,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "VPS_OPERATOR_METRICS", default_value = "0.0.0.0:9090")]
    metrics_listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // The local run polls kube-apiserver's /readyz while it starts; kube-client would log each
    // not-yet-ready answer as an error.
    let default_filter =
        if matches!(cli.command, Command::Local(_)) { "info,kube_client::client::builder=off" } else { "info" };
    vps_operator::telemetry::init(cli.log_format, default_filter);
    match cli.command {
        Command::Crdgen => {
            print!("{}", vps_operator::api::crds_yaml());
            Ok(())
        }
        Command::Local(args) => vps_operator::local::run(args).await,
        Command::Gateway(args) => vps_operator::gateway::run(args).await,
        Command::Token(args) => vps_operator::tokens::run(args).await,
        Command::Operator(args) => {
            let config = kube::Config::infer().await?;
            let shutdown = vps_operator::shutdown::signal();
            vps_operator::operator::run(config, args.config, Some(args.metrics_listen), shutdown).await
        }
        Command::Check(args) => vps_operator::probe::run(args).await,
        Command::Client(args) => std::process::exit(vps_operator::client::run(args).await),
        Command::Simulator(config) => {
            let client = kube::Client::try_default().await?;
            tokio::select! {
                r = vps_operator::simulator::run(client, config) => r,
                _ = vps_operator::shutdown::signal() => Ok(()),
            }
        }
    }
}
