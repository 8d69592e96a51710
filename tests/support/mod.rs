//! Test support: one real control plane per test binary, shared by its tests, each test in a
//! namespace of its own.
//!
//! With `VPS_TEST_CLUSTER=existing` the suites use the cluster of `KUBECONFIG` instead (kind
//! with KubeVirt, say): its KubeVirt and CDI must be installed, and no operator of this
//! project may run there (the suites run their own); the project's CRDs and the demo catalog
//! are applied. No node simulator is started, and the tests that need one (failure
//! injection, timings, addresses from its pools) skip with a printed reason
//! ([`skip_on_existing_cluster`]).
//!
//! The control plane is started on first use from a thread of its own, with its own runtime,
//! so that it outlives the runtime of the test that happened to start it. Its processes die
//! with the test binary (see `vps_operator::controlplane::Process`), also after a panic.
#![allow(dead_code)]

pub mod gateway;
pub mod rbac;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use vps_operator::controlplane::{self, Binaries, ControlPlane, Options};
use vps_operator::operator::OperatorConfig;
use vps_operator::simulator::SimulatorConfig;

/// What tests need to reach the shared control plane.
pub struct Shared {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub binaries: Binaries,
    /// Present when started with [`system`].
    pub system: Option<System>,
    /// Present when started with [`real_node`].
    pub real_node: Option<RealNode>,
}

/// The control plane of [`real_node`]: with a real node joined and the node simulator (in a
/// runtime of its own) playing KubeVirt's hosts; no operator or gateway in this process.
pub struct RealNode {
    pub runtime: tokio::runtime::Runtime,
    pub plane: std::sync::Mutex<ControlPlane>,
}

/// Whether the suites run on an existing cluster (`VPS_TEST_CLUSTER=existing`).
pub fn existing_cluster() -> bool {
    std::env::var("VPS_TEST_CLUSTER").is_ok_and(|v| v == "existing")
}

/// On an existing cluster, prints why the calling test does not run there and returns true.
pub fn skip_on_existing_cluster(reason: &str) -> bool {
    if existing_cluster() {
        eprintln!("skipped on an existing cluster: {reason}");
    }
    existing_cluster()
}

/// What a test binary starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Shared,
    System,
    RealNode,
}

/// Starts the control plane on first call (building the binaries if the cache is cold) and
/// installs every CRD.
pub fn shared() -> &'static Shared {
    init(Mode::Shared)
}

/// Like [`shared`], plus KubeVirt's virt-api and virt-controller, the demo catalog, the
/// operator and the node simulator (in a runtime of their own). `VPS_SIM_DELAY` (e.g.
/// `300ms`) sets every simulated step's delay.
pub fn system() -> &'static Shared {
    init(Mode::System)
}

/// Like [`shared`], plus KubeVirt's controllers, the demo catalog, the node simulator and a
/// real node (containerd, kubelet, kube-proxy) for the project's own pods.
pub fn real_node() -> &'static Shared {
    init(Mode::RealNode)
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// Whatever this binary started ([`shared`] unless [`system`] came first).
pub fn current() -> &'static Shared {
    match SHARED.get() {
        Some(Ok(shared)) => shared,
        _ => shared(),
    }
}

fn init(mode: Mode) -> &'static Shared {
    let started = SHARED.get_or_init(|| match std::thread::spawn(move || start(mode)).join() {
        Ok(Ok(shared)) => Ok(shared),
        Ok(Err(e)) => Err(format!("could not start the control plane: {e:?}")),
        Err(_) => Err("starting the control plane panicked".into()),
    });
    match started {
        Ok(shared) => {
            let started = match (&shared.system, &shared.real_node) {
                (Some(_), _) => Mode::System,
                (_, Some(_)) => Mode::RealNode,
                _ => Mode::Shared,
            };
            assert_eq!(started, mode, "one test binary uses one of shared(), system() and real_node()");
            shared
        }
        Err(e) => panic!("{e}"),
    }
}

/// The operator and simulator of [`system`], running in a runtime that outlives every test.
pub struct System {
    pub runtime: tokio::runtime::Runtime,
    pub operator: std::sync::Mutex<tokio::task::JoinHandle<()>>,
    pub operator_config: OperatorConfig,
    /// The control plane this binary started (none on an existing cluster).
    pub plane: Option<std::sync::Mutex<ControlPlane>>,
    /// Where the operator serves /metrics, /healthz and /readyz.
    pub metrics_addr: std::net::SocketAddr,
    /// The Prometheus scraping the simulator's virt-handler metrics (none on an existing
    /// cluster).
    pub prometheus_url: Option<String>,
}

impl System {
    /// Stops the operator (as a crash would: in the middle of whatever it does).
    pub fn kill_operator(&self) {
        self.operator.lock().unwrap().abort();
    }

    /// Starts the operator again.
    pub fn start_operator(&self, kubeconfig: &std::path::Path) {
        let handle =
            self.runtime.spawn(run_operator(kubeconfig.to_path_buf(), self.operator_config.clone(), self.metrics_addr));
        *self.operator.lock().unwrap() = handle;
    }

    /// Starts a second replica of the operator under another name in the leader lease (it
    /// waits as a standby while the first holds the lease); returns its task.
    pub fn start_replica(&self, identity: &str) -> tokio::task::JoinHandle<()> {
        let config = OperatorConfig { leader_identity: Some(identity.into()), ..self.operator_config.clone() };
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], controlplane::free_port().expect("a free port")));
        self.runtime.spawn(run_operator(current().kubeconfig.clone(), config, metrics))
    }

    /// Makes `task` the operator that [`System::kill_operator`] stops.
    pub fn adopt_operator(&self, task: tokio::task::JoinHandle<()>) {
        *self.operator.lock().unwrap() = task;
    }
}

async fn run_operator(kubeconfig: PathBuf, config: OperatorConfig, metrics: std::net::SocketAddr) {
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let kube_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    if let Err(e) = vps_operator::operator::run(kube_config, config, Some(metrics), std::future::pending()).await {
        panic!("the operator stopped: {e:?}");
    }
}

/// The simulator configuration of the test run (`VPS_SIM_DELAY` for every step), with
/// virt-handler's endpoint where virt-api calls it.
pub fn simulator_config(virt_handler_port: Option<u16>) -> SimulatorConfig {
    // One real guest at most (a server of the real image: `api_lifecycle::real_guest`).
    let mut config = SimulatorConfig { virt_handler_port, real_guests: 1, ..SimulatorConfig::default() };
    if let Ok(delay) = std::env::var("VPS_SIM_DELAY") {
        let d = vps_operator::flags::duration(&delay).expect("VPS_SIM_DELAY is a duration");
        config.pod_start_delay = d;
        config.boot_delay = d;
        config.shutdown_delay = d;
        config.import_delay = d;
        config.snapshot_delay = d;
    }
    config
}

/// An existing cluster (`KUBECONFIG`), with the project's CRDs, and for [`system`] the demo
/// catalog, the system namespace and the operator of the tests.
fn start_existing(mode: Mode) -> anyhow::Result<Shared> {
    use anyhow::Context;
    anyhow::ensure!(mode != Mode::RealNode, "the real-node suite starts a node of its own");
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").context("VPS_TEST_CLUSTER=existing needs KUBECONFIG")?);
    let binaries = Binaries::ensure(&controlplane::source_root())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let client = controlplane::client_from_kubeconfig(&kubeconfig).await?;
        controlplane::apply_crds(&client, &vps_operator::api::crds()).await?;
        if mode == Mode::System {
            vps_operator::testbed::install_demo_catalog(&client).await?;
            controlplane::ensure_namespace(&client, "vps-system").await?;
        }
        anyhow::Ok(())
    })?;
    let system = if mode == Mode::System {
        let operator_config = operator_config();
        let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], controlplane::free_port()?));
        let operator = runtime.spawn(run_operator(kubeconfig.clone(), operator_config.clone(), metrics_addr));
        Some(System {
            runtime,
            operator: std::sync::Mutex::new(operator),
            operator_config,
            plane: None,
            metrics_addr,
            prometheus_url: None,
        })
    } else {
        std::mem::forget(runtime);
        None
    };
    Ok(Shared { kubeconfig, kubectl: binaries.kube("kubectl"), binaries, system, real_node: None })
}

/// How much faster billing time runs in the tests: an hour every 2 s.
pub const BILLING_CLOCK_SCALE: u32 = 1800;

/// The operator of the tests: short backup intervals, quick retries of bad references.
fn operator_config() -> OperatorConfig {
    OperatorConfig {
        backup_interval: std::time::Duration::from_secs(6),
        backup_keep: 2,
        backup_deadline: std::time::Duration::from_secs(5),
        reference_retry: std::time::Duration::from_secs(1),
        address_cooldown: std::time::Duration::from_secs(2),
        address_sweep: std::time::Duration::from_secs(2),
        simulator_annotations: !existing_cluster(),
        // One name for the operator of the tests: started again, it holds its lease at once.
        leader_identity: Some("tests-operator".into()),
        // An hour of billing every 2 s (only accounts with funds are charged).
        billing_clock_scale: BILLING_CLOCK_SCALE,
        billing_clock_epoch: Some(jiff::Timestamp::now()),
        ..OperatorConfig::default()
    }
}

fn start(mode: Mode) -> anyhow::Result<Shared> {
    if existing_cluster() {
        return start_existing(mode);
    }
    let system = mode != Mode::Shared;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let binaries = Binaries::ensure(&controlplane::source_root())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let vmi_metrics_port = controlplane::free_port()?;
    let mut prometheus_url = None;
    let plane = runtime.block_on(async {
        let options = Options { scheduler: true, real_node: mode == Mode::RealNode, ..Options::default() };
        let mut plane = ControlPlane::start_api(binaries.clone(), options).await?;
        let client = plane.client().await?;
        vps_operator::testbed::install_crds(&client, &binaries).await?;
        plane.start_controllers().await?;
        if system {
            plane.start_kubevirt().await?;
            vps_operator::testbed::install_demo_catalog(&client).await?;
            controlplane::ensure_namespace(&client, "vps-system").await?;
            prometheus_url = Some(plane.start_prometheus(&[format!("127.0.0.1:{vmi_metrics_port}")]).await?);
        }
        if mode == Mode::RealNode {
            plane.start_node().await?;
        }
        anyhow::Ok(plane)
    })?;
    let kubeconfig = plane.kubeconfig_path();
    let mut simulator = simulator_config(plane.virt_handler_port());
    if prometheus_url.is_some() {
        simulator.metrics_port = Some(vmi_metrics_port);
    }
    if mode == Mode::RealNode {
        let client = runtime.block_on(plane.client())?;
        runtime.spawn(async move {
            if let Err(e) = vps_operator::simulator::run(client, simulator).await {
                panic!("the simulator stopped: {e:?}");
            }
        });
        let real_node = RealNode { runtime, plane: std::sync::Mutex::new(plane) };
        return Ok(Shared {
            kubeconfig,
            kubectl: binaries.kube("kubectl"),
            binaries,
            system: None,
            real_node: Some(real_node),
        });
    }
    let system = if system {
        let operator_config = operator_config();
        let client = runtime.block_on(plane.client())?;
        runtime.spawn(async move {
            if let Err(e) = vps_operator::simulator::run(client, simulator).await {
                panic!("the simulator stopped: {e:?}");
            }
        });
        let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], controlplane::free_port()?));
        let operator = runtime.spawn(run_operator(kubeconfig.clone(), operator_config.clone(), metrics_addr));
        Some(System {
            runtime,
            operator: std::sync::Mutex::new(operator),
            operator_config,
            plane: Some(std::sync::Mutex::new(plane)),
            metrics_addr,
            prometheus_url,
        })
    } else {
        // Lives until the test binary exits; its processes die with it.
        std::mem::forget(plane);
        std::mem::forget(runtime);
        None
    };
    Ok(Shared { kubeconfig, kubectl: binaries.kube("kubectl"), binaries, system, real_node: None })
}

/// A cluster-admin client, bound to the calling test's runtime.
pub async fn client() -> Client {
    controlplane::client_from_kubeconfig(&current().kubeconfig).await.expect("client for the shared control plane")
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
    let s = current();
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

/// How many Events with `reason` are about the `kind` named `name` in namespace `ns` (a
/// repeated Event counted as often as it happened).
pub async fn events_about(client: &Client, ns: &str, kind: &str, name: &str, reason: &str) -> i32 {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list events");
    events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Whether a Warning Event with `reason` was published in namespace `ns`.
pub async fn warning_event(client: &Client, ns: &str, reason: &str) -> bool {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list events");
    events.items.iter().any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
}
