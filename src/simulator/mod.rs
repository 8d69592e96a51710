//! The node simulator: plays what real hosts do for KubeVirt, so KubeVirt's own controllers
//! can run without machines (as kwok does for kubelets). It starts no virtual machine, except
//! for an instance of a real image ([`guest`]).
//!
//! - [`nodes`]: simulated Nodes with kubelet's Lease and Ready heartbeat and virt-handler's
//!   labels, heartbeat and device resources.
//! - [`pods`]: kubelet's part for launcher Pods; [`kubelet`]: its endpoint, for containers' logs.
//! - [`metrics`]: virt-handler's metrics of the running instances, with a steerable load.
//! - [`serial`]: a guest's serial port: its boot and what its consoles showed, the log of its
//!   launcher's `guest-console-log` container.
//! - [`vmis`]: virt-handler's part for VirtualMachineInstances.
//! - [`handler`]: virt-handler's endpoint that virt-api calls (soft reboot, reset), and its
//!   serial and VNC consoles ([`console`]); [`tls`]: the TLS of both endpoints.
//! - [`volumes`]: CDI's importer for DataVolumes (a bound PVC, then Succeeded), and a CSI
//!   snapshotter's part for VolumeSnapshots.
//!
//! - [`guest`]: real guests (qemu) for instances of a real image.
//!
//! It never writes what virt-controller owns. Failures are injected per VM with the
//! annotation [`FAILURE_ANNOTATION`] (the operator copies it from the server).

pub mod addresses;
pub mod console;
pub mod guest;
pub mod handler;
pub mod kubelet;
pub mod metrics;
pub mod nodes;
pub mod pods;
pub mod serial;
pub mod tls;
pub mod vmis;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

pub use crate::api::FAILURE_ANNOTATION;
use crate::flags::duration;
use crate::kubevirt::VirtualMachine;
/// The CSI driver name of simulated volumes (StorageClass provisioner and snapshot class).
pub const DRIVER: &str = "simulator.vps.org";
/// The simulated StorageClass (the cluster default).
pub const STORAGE_CLASS: &str = "simulated";

/// An injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    ImagePull,
    DataVolume,
    Snapshot,
    Crash,
    /// The guest ignores the shutdown request: the instance stops when its grace period ends.
    ShutdownHang,
    /// virt-handler cannot reach the instance's launcher: a soft reboot or reset fails.
    RebootFails,
}

impl Failure {
    pub fn parse(s: &str) -> Option<Failure> {
        match s {
            "image-pull" => Some(Failure::ImagePull),
            "data-volume" => Some(Failure::DataVolume),
            "snapshot" => Some(Failure::Snapshot),
            "crash" => Some(Failure::Crash),
            "shutdown-hang" => Some(Failure::ShutdownHang),
            "reboot-fails" => Some(Failure::RebootFails),
            _ => None,
        }
    }
}

/// Flags of `vps-operator simulator`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulatorConfig {
    /// Simulated nodes as `NAME:label=value,label=value` (repeatable).
    #[arg(long = "node", default_values_t = [
        "sim-us-west-0:topology.kubernetes.io/region=us-west".to_string(),
        "sim-us-east-0:topology.kubernetes.io/region=us-east".to_string(),
        "sim-eu-central-0:topology.kubernetes.io/region=eu-central".to_string(),
    ])]
    pub nodes: Vec<String>,
    /// IPv4 pool the guests' addresses come from.
    #[arg(long, default_value = "198.18.0.0/17")]
    pub ipv4_pool: String,
    /// IPv6 pool the guests' addresses come from.
    #[arg(long, default_value = "2001:db8:200::/64")]
    pub ipv6_pool: String,
    /// kubelet: from a bound launcher Pod to Running.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub pod_start_delay: Duration,
    /// virt-handler: from a Scheduled instance to Running.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub boot_delay: Duration,
    /// virt-handler: from an instance being deleted to Succeeded (guest shutdown).
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub shutdown_delay: Duration,
    /// CDI: from a DataVolume to Succeeded (image import).
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub import_delay: Duration,
    /// CSI snapshotter: from a VolumeSnapshot to ready.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub snapshot_delay: Duration,
    /// The kubelet version the simulated nodes report; that of the API server when unset.
    #[arg(long)]
    pub kubelet_version: Option<String>,
    /// virt-handler: serve its endpoint (soft reboot, reset) on 127.0.0.1 at this port, the
    /// `--console-server-port` of virt-api, with the certificates of the KubeVirt CA in
    /// KubeVirt's namespace; and register a virt-handler Pod per node. Unset: no endpoint.
    #[arg(long)]
    pub virt_handler_port: Option<u16>,
    /// kubelet: serve each node's endpoint (containers' logs) on the node's InternalIP at this
    /// port (0: a free one), published in the Node's status for the API server.
    #[arg(long, default_value_t = 0)]
    pub kubelet_port: u16,
    /// virt-handler: serve the instances' metrics (KubeVirt's names) at
    /// `http://127.0.0.1:PORT/metrics`, for Prometheus. Unset: none.
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// Real guests at most at once (qemu, for instances of a real image: [`guest`]); the others
    /// stay simulated.
    #[arg(long, default_value_t = 2)]
    pub real_guests: usize,
    /// The most memory a real guest gets, in MiB, whatever its plan.
    #[arg(long, default_value_t = 1024)]
    pub guest_memory_cap: u64,
    /// Where real guests keep their disks (copy-on-write overlays), seeds and serial logs; a
    /// folder of this process's own under the temporary directory when unset.
    #[arg(long)]
    pub guest_dir: Option<std::path::PathBuf>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Shared by the simulator's loops.
pub struct Sim {
    pub client: Client,
    pub config: SimulatorConfig,
    pub node_names: Vec<String>,
    pub vms: Store<VirtualMachine>,
    pub pools: addresses::Pools,
    /// What each instance's serial console showed.
    pub serial: serial::Transcripts,
    /// The instances' counters, for their metrics.
    pub meters: metrics::Meters,
    /// The real guests (qemu) running.
    pub guests: guest::Guests,
}

impl Sim {
    /// The failure injected into the VM named `name` in `ns`, if any.
    pub fn failure(&self, ns: &str, vm_name: &str) -> Option<Failure> {
        self.vms
            .get(&ObjectRef::new(vm_name).within(ns))
            .and_then(|vm| vm.annotations().get(FAILURE_ANNOTATION).and_then(|v| Failure::parse(v)))
    }

    /// The InternalIP of the simulated node `node`.
    pub fn node_address(&self, node: Option<&str>) -> Option<String> {
        self.node_names.iter().position(|n| Some(n.as_str()) == node).map(nodes::address)
    }

    pub fn is_our_node(&self, node: Option<&str>) -> bool {
        node.is_some_and(|n| self.node_names.iter().any(|m| m == n))
    }
}

/// Runs the simulator until the future is dropped.
pub async fn run(client: Client, config: SimulatorConfig) -> anyhow::Result<()> {
    tracing::info!(
        "The node simulator starts no virtual machine: it plays kubelet, virt-handler, CDI's importer and a CSI snapshotter for KubeVirt's controllers"
    );
    let specs = config.nodes.iter().map(|s| nodes::NodeSpec::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let pools = addresses::Pools::parse(&config.ipv4_pool, &config.ipv6_pool)?;
    volumes::ensure_storage_classes(&client).await?;
    let kubelet_version = match &config.kubelet_version {
        Some(v) => v.clone(),
        None => client.apiserver_version().await?.git_version,
    };
    let addresses: Vec<String> = (0..specs.len()).map(nodes::address).collect();
    let kubelet_listeners = kubelet::bind(&addresses, config.kubelet_port).await?;
    nodes::register(&client, &specs, &kubelet_version, kubelet_listeners.port).await?;

    let (vms, vm_writer) = kube::runtime::reflector::store();
    let vm_watch = {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        kube::runtime::watcher(Api::<VirtualMachine>::all(client.clone()), Default::default())
            .default_backoff()
            .modify(|vm| vm.metadata.managed_fields = None)
            .reflect(vm_writer)
            .for_each(|_| async {})
    };
    let handler_port = config.virt_handler_port;
    let metrics_port = config.metrics_port;
    let guest_dir = config
        .guest_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("vps-operator-guests-{}", std::process::id())));
    let guests = guest::Guests::new(guest_dir, config.real_guests, config.guest_memory_cap);
    let sim = Arc::new(Sim {
        client: client.clone(),
        node_names: specs.iter().map(|s| s.name.clone()).collect(),
        guests,
        config,
        vms,
        pools,
        serial: Default::default(),
        meters: Default::default(),
    });
    let handler = async {
        match handler_port {
            Some(port) => handler::run(sim.clone(), port).await,
            None => std::future::pending().await,
        }
    };
    let metrics = async {
        match metrics_port {
            Some(port) => metrics::run(sim.clone(), port).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = handler => r?,
        r = metrics => r?,
        r = kubelet::serve(sim.clone(), kubelet_listeners) => r?,
        _ = vm_watch => {}
        r = nodes::heartbeat(client.clone(), specs) => r?,
        r = pods::run(sim.clone()) => r?,
        r = vmis::run(sim.clone()) => r?,
        r = volumes::run_data_volumes(sim.clone()) => r?,
        r = volumes::run_volumes(sim.clone()) => r?,
        r = volumes::run_expansion(sim.clone()) => r?,
        r = volumes::run_snapshots(sim.clone()) => r?,
        () = sim.guests.collect_overlays(client.clone()) => {}
    }
    Ok(())
}

/// Now, as Kubernetes' `metav1.Time` serializes it (whole seconds). KubeVirt guards its
/// patches with JSON-patch `test` operations on values it re-serialized: a stored timestamp
/// with fractions would never compare equal.
pub fn k8s_now() -> String {
    crate::timestamps::now()
}

/// How long is left of `delay` since `since` (zero when passed).
pub fn remaining(delay: Duration, since: Option<jiff::Timestamp>) -> Duration {
    let Some(since) = since else { return Duration::ZERO };
    let elapsed = jiff::Timestamp::now().duration_since(since).unsigned_abs();
    delay.saturating_sub(elapsed)
}
