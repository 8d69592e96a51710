//! `vps-operator local`: the whole system on one machine, for trying it out and for demos.
//!
//! Builds (first run only) and starts a control plane (the same binaries and starter the
//! tests use) with KubeVirt's virt-api and virt-controller, installs the CRDs, the demo
//! catalog and two demo accounts with a token each, and runs the operator, the node
//! simulator and the gateway as tasks of this process. Ctrl-C or SIGTERM stops everything;
//! the control plane's processes also die with this one (`PR_SET_PDEATHSIG`).
//!
//! With `--kubeconfig` it runs the operator and the gateway against an existing cluster
//! instead (no control plane, no simulator unless `--simulator`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::task::JoinSet;

use crate::controlplane::{self, Binaries, ControlPlane, Options};
use crate::operator::OperatorConfig;
use crate::simulator::SimulatorConfig;
use crate::tokens::{self, TOKEN_LABEL};

/// The demo accounts: (account and namespace name, monthly credit in cents). Each is also
/// prepaid a month of its credit (`fundsCents`, set once: a top-up is not undone).
pub const DEMO_ACCOUNTS: [(&str, i64); 2] = [("demo", 10_000), ("demo-2", 5_000)];

/// Flags of `vps-operator local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Keep the cluster's state here (etcd data, certificates, ports, the demo tokens); a
    /// restart with the same folder finds its servers and tokens again.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Once everything is ready, write KUBECONFIG, VPS_API_URL, VPS_API_TOKEN and
    /// VPS_API_TOKEN_2 (shell lines) to this file.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Port of the REST gateway (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address the gateway binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Run the operator and the gateway against this existing cluster instead of starting a
    /// control plane (its CRDs and KubeVirt must be installed).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: also run the node simulator (never on a cluster with real hosts).
    #[arg(long)]
    pub simulator: bool,
    /// With --kubeconfig: also load the demo catalog and create the demo accounts and tokens
    /// (always done on the local control plane).
    #[arg(long)]
    pub demo: bool,
    /// Also join a real node (containerd, kubelet, kube-proxy, CNI; needs root and the
    /// packages containerd, runc and iptables), where the project's own image can run as pods.
    /// KubeVirt's hosts stay simulated.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub real_node: bool,
    /// Only the cluster: the control plane, KubeVirt's controllers, the node simulator (and
    /// the real node when asked), without the operator, the gateway or the demo accounts
    /// (for `VPS_TEST_CLUSTER=existing` suites, or an operator installed with the chart).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub cluster_only: bool,
    /// Namespace of the token Secrets and id counters.
    #[arg(long, default_value = tokens::DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
    /// Do not build the real Debian 12 disk (`scripts/build-guest-image.sh`: Debian's
    /// packages, about a minute the first time) whose servers boot in qemu.
    #[arg(long)]
    pub no_real_guests: bool,
}

/// What [`run`] started.
struct Running {
    plane: Option<ControlPlane>,
    tasks: JoinSet<Result<()>>,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> Result<()> {
    let mut signal = std::pin::pin!(crate::shutdown::signal());
    // A signal while starting drops what was started so far (the control plane stops).
    let mut running = tokio::select! {
        running = start(&args) => running?,
        _ = &mut signal => {
            tracing::info!("Stopped before everything was ready");
            return Ok(());
        }
    };
    let result = tokio::select! {
        _ = &mut signal => Ok(()),
        Some(result) = running.tasks.join_next() => match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("a component stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
    };
    tracing::info!("Stopping");
    running.tasks.shutdown().await;
    if let Some(mut plane) = running.plane.take() {
        plane.stop();
    }
    tracing::info!("Stopped");
    result
}

async fn start(args: &LocalArgs) -> Result<Running> {
    let mut plane = None;
    let (kubeconfig, state_dir) = match &args.kubeconfig {
        Some(path) => {
            let path = path.canonicalize().with_context(|| format!("kubeconfig {}", path.display()))?;
            (path, args.data_dir.clone())
        }
        None => {
            let p = start_control_plane(args).await?;
            let paths = (p.kubeconfig_path(), Some(p.dir().to_path_buf()));
            plane = Some(p);
            paths
        }
    };
    // Its own control plane: a Prometheus scraping the simulated virt-handler's metrics, for
    // servers' resource usage.
    let mut prometheus = None;
    if let Some(p) = plane.as_mut()
        && p.binaries().prometheus().is_some()
    {
        let port = controlplane::free_port()?;
        println!(
            "Starting Prometheus {} (scraping the simulated virt-handler's metrics)...",
            controlplane::PROMETHEUS_VERSION
        );
        prometheus = Some((p.start_prometheus(&[format!("127.0.0.1:{port}")]).await?, port));
    }
    let kube_config = kube_config(&kubeconfig).await?;
    let client = Client::try_from(kube_config.clone())?;
    let demo = plane.is_some() || args.demo;
    let simulator = plane.is_some() || args.simulator;
    let system_namespace = args.system_namespace.clone();

    controlplane::ensure_namespace(&client, &system_namespace).await.context("create the system namespace")?;
    let mut tasks = JoinSet::new();
    if simulator {
        let c = client.clone();
        let config = SimulatorConfig {
            virt_handler_port: plane.as_ref().and_then(|p| p.virt_handler_port()),
            metrics_port: prometheus.as_ref().map(|(_, port)| *port),
            ..Default::default()
        };
        tasks.spawn(async move { crate::simulator::run(c, config).await.context("simulator") });
    }
    if demo {
        crate::testbed::install_demo_catalog(&client).await.context("load the demo catalog")?;
    }
    if demo && plane.is_some() && !args.cluster_only && !args.no_real_guests {
        // A real image: its servers boot in qemu (the simulator's real guests).
        match tokio::task::spawn_blocking(|| crate::testbed::build_guest_image(&controlplane::source_root())).await? {
            Ok(image) => {
                crate::testbed::install_guest_image(&client, &image).await.context("install the guest image")?
            }
            Err(e) => eprintln!("No real guests (every server stays simulated): {e:#}"),
        }
    }
    if plane.is_some() {
        // Its own control plane has Multus' CRD: a location on a provider network too.
        crate::controlplane::apply_yaml(&client, crate::testbed::PROVIDER_NETWORK_SAMPLE, &system_namespace)
            .await
            .context("load the provider network sample")?;
    }
    if args.cluster_only {
        if let Some(path) = &args.env_file {
            write_private(path, format!("KUBECONFIG={}\n", kubeconfig.display()).as_bytes())?;
        }
        println!("\nThe cluster is running (no operator, no gateway).\n  KUBECONFIG:  {}\n", kubeconfig.display());
        return Ok(Running { plane, tasks });
    }
    // Before the gateway starts, so that its first list of tokens has them.
    let tokens = if demo { demo_tokens(&client, &system_namespace, state_dir.as_deref()).await? } else { vec![] };
    let config = OperatorConfig {
        system_namespace: system_namespace.clone(),
        simulator_annotations: simulator,
        ..OperatorConfig::default()
    };
    // Every task stops when the JoinSet is shut down.
    let forever = std::future::pending::<()>;
    tasks.spawn(async move { crate::operator::run(kube_config, config, None, forever()).await.context("operator") });

    let settings = crate::gateway::GatewayArgs {
        system_namespace: system_namespace.clone(),
        prometheus_url: prometheus.as_ref().map(|(url, _)| url.clone()),
        ..Default::default()
    };
    let state = crate::gateway::start(client.clone(), &settings).await?.synced().await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .await
        .with_context(|| format!("listen on {}:{} (choose another with --port)", args.bind, args.port))?;
    let address = listener.local_addr()?;
    tasks.spawn(async move { crate::gateway::serve(listener, state, forever()).await.context("gateway") });

    let url = format!("http://{}", display_address(address));
    if let Some(path) = &args.env_file {
        write_env_file(path, &kubeconfig, &url, &tokens)?;
    }
    print_banner(&kubeconfig, &url, &tokens, plane.is_some(), prometheus.as_ref().map(|(url, _)| url.as_str()));
    Ok(Running { plane, tasks })
}

async fn start_control_plane(args: &LocalArgs) -> Result<ControlPlane> {
    println!(
        "Finding or building the control-plane binaries (the first run builds them: 15 to 20 minutes on 2 cores, each step printed)..."
    );
    let binaries = tokio::task::spawn_blocking(|| Binaries::ensure(&controlplane::source_root())).await??;
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let data_dir = args.data_dir.as_ref().map(|d| d.canonicalize()).transpose()?;
    println!("Starting etcd and kube-apiserver (Kubernetes {})...", controlplane::KUBERNETES_VERSION);
    let options = Options { data_dir, scheduler: true, real_node: args.real_node };
    let mut plane = ControlPlane::start_api(binaries, options).await?;
    let client = plane.client().await?;
    println!("Installing the CRDs (vps.org, KubeVirt, CDI, snapshots)...");
    crate::testbed::install_crds(&client, plane.binaries()).await?;
    println!(
        "Starting kube-controller-manager, kube-scheduler and KubeVirt {} (virt-api, virt-controller)...",
        controlplane::KUBEVIRT_VERSION
    );
    plane.start_controllers().await?;
    plane.start_kubevirt().await?;
    if args.real_node {
        println!("Starting a real node ({}: containerd, kubelet, kube-proxy)...", controlplane::node::NODE_NAME);
        plane.start_node().await?;
    }
    Ok(plane)
}

async fn kube_config(kubeconfig: &Path) -> Result<kube::Config> {
    let file =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
    Ok(kube::Config::from_custom_kubeconfig(file, &Default::default()).await?)
}

/// The demo accounts and a token for each, in [`DEMO_ACCOUNTS`] order. Tokens saved in
/// `state_dir` (`demo-tokens.json`) are reused while their Secret still exists, so that a
/// restart keeps them working; otherwise new ones are created and saved.
pub async fn demo_tokens(
    client: &Client,
    system_namespace: &str,
    state_dir: Option<&Path>,
) -> Result<Vec<(String, String)>> {
    let saved_path = state_dir.map(|d| d.join("demo-tokens.json"));
    let mut saved: BTreeMap<String, String> = saved_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(client.clone(), system_namespace)
        .list(&ListParams::default().labels(&format!("{TOKEN_LABEL}=true")))
        .await?;
    let accounts = Api::<crate::api::VpsAccount>::all(client.clone());
    let mut out = Vec::new();
    for (account, credit) in DEMO_ACCOUNTS {
        crate::testbed::ensure_account(client, account, credit).await?;
        if accounts.get_opt(account).await?.is_some_and(|a| a.spec.funds_cents.is_none()) {
            let patch = serde_json::json!({"spec": {"fundsCents": credit}});
            accounts.patch(account, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        }
        let still_valid = saved
            .get(account)
            .and_then(|t| tokens::record_for_token(t, &secrets.items))
            .zip(accounts.get_opt(account).await?)
            .is_some_and(|(record, a)| record.valid_for(a.metadata.uid.as_deref(), jiff::Timestamp::now()));
        if !still_valid {
            let token = tokens::create(client, system_namespace, account, None).await?;
            saved.insert(account.to_string(), token);
        }
        out.push((account.to_string(), saved[account].clone()));
    }
    if let Some(path) = saved_path {
        write_private(&path, &serde_json::to_vec_pretty(&saved)?)?;
    }
    Ok(out)
}

fn display_address(address: SocketAddr) -> String {
    if address.ip().is_unspecified() { format!("127.0.0.1:{}", address.port()) } else { address.to_string() }
}

/// Writes a file only its owner can read (it holds tokens).
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(contents)?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn write_env_file(path: &Path, kubeconfig: &Path, url: &str, tokens: &[(String, String)]) -> Result<()> {
    let mut text = format!("KUBECONFIG={}\nVPS_API_URL={url}\n", kubeconfig.display());
    for (i, (_, token)) in tokens.iter().enumerate() {
        let suffix = if i == 0 { String::new() } else { format!("_{}", i + 1) };
        text.push_str(&format!("VPS_API_TOKEN{suffix}={token}\n"));
    }
    write_private(path, text.as_bytes())
}

fn print_banner(kubeconfig: &Path, url: &str, tokens: &[(String, String)], local: bool, prometheus: Option<&str>) {
    println!();
    println!("Everything is running{}.", if local { " (simulated hosts: no real VM is started)" } else { "" });
    println!("  VPS API:     {url}/api/v1/   (OpenAPI: {url}/api/v1/openapi.json)");
    println!("  KUBECONFIG:  {}", kubeconfig.display());
    if let Some(prometheus) = prometheus {
        println!("  Prometheus:  {prometheus}   (servers' resource_usage comes from it)");
    }
    for (account, token) in tokens {
        println!("  token of account {account:<7} {token}");
    }
    if let Some((_, token)) = tokens.first() {
        println!();
        println!("Try:");
        println!(
            "  curl -s -X POST {url}/api/v1/servers/ -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n    -d '{{\"name\": \"web-server-01\", \"plan_id\": 1, \"os_id\": 5, \"location\": \"us-west\", \"hostname\": \"web01.example.com\"}}'"
        );
        println!("  curl -s {url}/api/v1/servers/ -H 'Authorization: Bearer {token}'");
        println!("  curl -s {url}/api/v1/account/ -H 'Authorization: Bearer {token}'   (balance, burn, charges)");
        println!(
            "  A server with \"os_id\": {} (Debian 12, a real guest) boots in qemu: the simulator logs \"A real guest is up\" with its ssh command.",
            crate::testbed::GUEST_IMAGE_ID
        );
        println!(
            "  KUBECONFIG={} kubectl patch vpsaccount demo --type merge -p '{{\"spec\": {{\"fundsCents\": 20000}}}}'   (a top-up)",
            kubeconfig.display()
        );
        println!("  KUBECONFIG={} kubectl get vps -A", kubeconfig.display());
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
