//! A real Kubernetes node joined to the control plane, for the project's own pods (the
//! operator and the gateway installed as users install them): containerd and runc (the
//! machine's packages), kubelet and kube-proxy (built from `k8s.io/kubernetes` at the control
//! plane's version), CNI's bridge and host-local plugins with the pods on [`BRIDGE`] in
//! [`POD_SUBNET`], and the sandbox image built here. KubeVirt's hosts stay simulated: the
//! node carries no `kubevirt.io/schedulable` label, so no launcher pod lands on it.
//!
//! Everything is outside the private ranges and on this machine: pods and the bridge in
//! 198.18.192.0/24, Services in [`super::SERVICE_RANGE`]. The API server stays on loopback;
//! pods reach it through a forwarder on the bridge's address (the address it advertises).
//! A fence ([`FENCE_CHAIN`]) rejects what kube-proxy did not translate: a packet for a Service
//! address without its rule (yet, or any more) is refused here instead of leaving the machine
//! (where an intercepting proxy answered it with a 404 once).
//!
//! [`Node::stop`] (also on drop) deletes nothing in the cluster but takes down the sandboxes,
//! then removes what the node leaves behind: its mounts, kube-proxy's and kubelet's iptables
//! chains, the bridge, the pods' network namespaces and the CNI state.

mod cleanup;
mod config;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::binaries::Binaries;
use super::process::{Process, free_port};

use self::cleanup::{clean_stale, stop_sandboxes};
pub use self::cleanup::{clean_up, leftovers};
use self::config::{cni_config, containerd_config, kubelet_config};

/// The node's name.
pub const NODE_NAME: &str = "vps-node-0";
/// A label on the node: the project's pods select it (`nodeSelector`), simulated nodes lack it.
pub const NODE_LABEL: (&str, &str) = ("vps.org/node", "real");
/// The pods' bridge.
pub const BRIDGE: &str = "vpsbr0";
/// The pods' subnet and the bridge's own address in it (the node's address).
pub const POD_SUBNET: &str = "198.18.192.0/24";
pub const NODE_IP: &str = "198.18.192.1";
/// The filter chain, jumped to from `OUTPUT` and `FORWARD`, that rejects packets still
/// addressed to [`super::SERVICE_RANGE`] after kube-proxy's DNAT (the filter table sees the
/// translated address): such a packet has no Service behind it and must not leave the machine.
pub const FENCE_CHAIN: &str = "VPS-NODE-FENCE";
/// The sandbox image every pod starts with, built from `tests/node/pause`.
pub const PAUSE_IMAGE: &str = "vps.local/pause:3.10";

/// What a real node needs from the machine, and how to get it.
pub fn check_prerequisites() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("a real node needs root (bridges, iptables, mounts)");
    }
    for program in ["containerd", "runc", "ctr", "iptables", "ip"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            bail!(
                "a real node needs {program}: apt-get install -y containerd runc iptables iproute2 (Debian's \
                 packages; scripts/test.sh installs them)"
            );
        }
    }
    Ok(())
}

/// Creates the pods' bridge with the node's address (before the API server starts: it
/// advertises that address), first removing one a dead run left.
pub fn create_bridge() -> Result<()> {
    let _ = run("ip", &["link", "delete", BRIDGE]);
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Installs [`FENCE_CHAIN`], first removing one a dead run left.
fn fence_services() -> Result<()> {
    let service_range = super::SERVICE_RANGE;
    for hook in ["OUTPUT", "FORWARD"] {
        while run("iptables", &["-D", hook, "-j", FENCE_CHAIN]).is_ok() {}
    }
    let _ = run("iptables", &["-F", FENCE_CHAIN]);
    let _ = run("iptables", &["-X", FENCE_CHAIN]);
    run("iptables", &["-N", FENCE_CHAIN])?;
    run(
        "iptables",
        &["-A", FENCE_CHAIN, "-d", service_range, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    )?;
    run("iptables", &["-A", FENCE_CHAIN, "-d", service_range, "-j", "REJECT"])?;
    for hook in ["OUTPUT", "FORWARD"] {
        run("iptables", &["-I", hook, "1", "-j", FENCE_CHAIN])?;
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running node.
pub struct Node {
    dir: PathBuf,
    kube_proxy: PathBuf,
    processes: Vec<Process>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    stopped: bool,
}

impl Node {
    /// Starts containerd, imports the pause image, starts kubelet and kube-proxy against the
    /// API server of `kubeconfig` (on loopback port `apiserver_port`, forwarded from the
    /// bridge's address for the pods), and returns once the node is Ready. `dir` holds their
    /// state and logs. The bridge must exist ([`create_bridge`]).
    pub async fn start(
        binaries: &Binaries,
        dir: &Path,
        kubeconfig: &Path,
        client: &kube::Client,
        apiserver_port: u16,
    ) -> Result<Node> {
        check_prerequisites()?;
        clean_stale();
        let plane_dir = dir;
        let dir = dir.join("node");
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["containerd/root", "containerd/state", "cni/bin", "cni/conf", "cni/ipam", "kubelet", "pause"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for plugin in ["bridge", "host-local", "loopback", "portmap"] {
            std::fs::copy(binaries.node(plugin)?, dir.join("cni/bin").join(plugin))?;
        }
        let socket = dir.join("containerd/containerd.sock");
        std::fs::write(dir.join("containerd/config.toml"), containerd_config(&dir, &socket))?;
        std::fs::write(dir.join("cni/conf/10-vps.conflist"), cni_config(&dir))?;
        fence_services()?;
        let forwarder = forward(NODE_IP, apiserver_port).await?;
        let mut node = Node {
            dir: dir.clone(),
            kube_proxy: binaries.node("kube-proxy")?,
            processes: Vec::new(),
            forwarder: Some(forwarder),
            stopped: false,
        };
        let containerd = Process::spawn(
            "containerd",
            Path::new("containerd"),
            &["--config".into(), dir.join("containerd/config.toml").display().to_string()],
            &dir.join("containerd.log"),
        )?;
        node.processes.push(containerd);
        wait_for_socket(&socket, Duration::from_secs(30)).await?;
        node.import_image(&node.pause_archive(binaries)?)?;

        let kubelet_port = free_port()?;
        let healthz_port = free_port()?;
        let ca = plane_dir.join("pki/ca.crt");
        std::fs::write(dir.join("kubelet.yaml"), kubelet_config(&socket, &ca, kubelet_port, healthz_port))?;
        let kubelet = Process::spawn(
            "kubelet",
            &binaries.node("kubelet")?,
            &[
                format!("--config={}", dir.join("kubelet.yaml").display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", dir.join("kubelet").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                format!("--node-labels={}={}", NODE_LABEL.0, NODE_LABEL.1),
                "--v=1".into(),
            ],
            &dir.join("kubelet.log"),
        )?;
        node.processes.push(kubelet);
        let kube_proxy = Process::spawn(
            "kube-proxy",
            &node.kube_proxy,
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--hostname-override={NODE_NAME}"),
                "--proxy-mode=iptables".into(),
                format!("--cluster-cidr={POD_SUBNET}"),
                "--bind-address=127.0.0.1".into(),
                format!("--metrics-bind-address=127.0.0.1:{}", free_port()?),
                format!("--healthz-bind-address=127.0.0.1:{}", free_port()?),
                // No sysctl writes: the sandbox refuses them, and the defaults do here.
                "--conntrack-max-per-core=0".into(),
                "--v=1".into(),
            ],
            &dir.join("kube-proxy.log"),
        )?;
        node.processes.push(kube_proxy);
        node.wait_ready(client, Duration::from_secs(120)).await?;
        register_for_exit(&node);
        Ok(node)
    }

    /// The folder of the node's state and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an OCI image archive into the node's containerd (the `k8s.io` namespace, where
    /// kubelet looks for images).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let socket = self.dir.join("containerd/containerd.sock");
        run(
            "ctr",
            &[
                "--address",
                &socket.display().to_string(),
                "-n",
                "k8s.io",
                "images",
                "import",
                &archive.display().to_string(),
            ],
        )?;
        Ok(())
    }

    /// The pause image as an OCI archive (built by `scripts/oci-image.sh` from the pause
    /// program).
    fn pause_archive(&self, binaries: &Binaries) -> Result<PathBuf> {
        let rootfs = self.dir.join("pause/rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::copy(binaries.node("pause")?, rootfs.join("pause"))?;
        let archive = self.dir.join("pause/pause.tar");
        let script = super::source_root().join("scripts/oci-image.sh");
        run(
            "bash",
            &[
                &script.display().to_string(),
                PAUSE_IMAGE,
                &rootfs.display().to_string(),
                &archive.display().to_string(),
                "/pause",
                "65535:65535",
            ],
        )?;
        Ok(archive)
    }

    async fn wait_ready(&mut self, client: &kube::Client, limit: Duration) -> Result<()> {
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        let deadline = Instant::now() + limit;
        loop {
            for p in &mut self.processes {
                p.check_running()?;
            }
            let ready = nodes.get_opt(NODE_NAME).await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {NODE_NAME} not Ready after {limit:?}; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the node and removes what it leaves on the machine. Idempotent.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        AT_EXIT.lock().expect("node registry").retain(|n| n.dir != self.dir);
        // kubelet first (it would start the sandboxes again), then the sandboxes, containerd.
        while let Some(mut process) = self.processes.pop() {
            if process.name() == "containerd" {
                stop_sandboxes(&self.dir.join("containerd/containerd.sock"));
            }
            process.stop(Duration::from_secs(10));
        }
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        clean_up(&self.dir, &self.kube_proxy);
    }
}

/// Forwards connections to `address:port` to the API server on `127.0.0.1:port`: the
/// address pods reach it at (it advertises that address in the `kubernetes` Service).
async fn forward(address: &str, port: u16) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind((address, port))
        .await
        .with_context(|| format!("listen on {address}:{port} for the pods"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the exit handler needs to take a node down.
struct AtExit {
    dir: PathBuf,
    kube_proxy: PathBuf,
    pids: Vec<u32>,
}

/// The nodes running in this process, for [`at_exit`].
static AT_EXIT: std::sync::Mutex<Vec<AtExit>> = std::sync::Mutex::new(Vec::new());

/// Makes sure the node is taken down when this process exits without dropping it (a test
/// binary exits with its statics alive, also after a panicking test): its processes die
/// with it anyway (`PR_SET_PDEATHSIG`), but not the containers' shims, mounts, chains, bridge.
fn register_for_exit(node: &Node) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registers a plain function with no preconditions.
        unsafe {
            libc::atexit(at_exit);
        }
    });
    AT_EXIT.lock().expect("node registry").push(AtExit {
        dir: node.dir.clone(),
        kube_proxy: node.kube_proxy.clone(),
        pids: node.processes.iter().map(Process::pid).collect(),
    });
}

extern "C" fn at_exit() {
    let nodes = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for node in nodes {
        stop_sandboxes(&node.dir.join("containerd/containerd.sock"));
        for pid in node.pids.iter().rev() {
            // SAFETY: signalling a child process this process started.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        clean_up(&node.dir, &node.kube_proxy);
    }
}

async fn wait_for_socket(socket: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("containerd did not open {} within {limit:?}", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
