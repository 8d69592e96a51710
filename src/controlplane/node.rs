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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::binaries::Binaries;
use super::process::{Process, free_port};

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
/// The iptables chains a node makes (kube-proxy's and kubelet's, and the fence).
const OWN_CHAINS: [&str; 2] = ["KUBE-", "VPS-"];
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

/// What a node of a process that died without its exit handler (killed) left: containerd
/// shims whose containerd socket is gone, mounts under the folders of dead control planes,
/// the pods' network namespaces (one real node runs on a machine at a time).
fn clean_stale() {
    kill_stale_shims();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dead = |path: &str| {
        path.split('/')
            .find_map(|part| part.strip_prefix("vps-cp-")?.split('-').next()?.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut stale: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| dead(m)).collect();
    stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in stale {
        let _ = run("umount", &["-l", mount]);
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                let _ = run("ip", &["netns", "delete", &name]);
            }
        }
    }
}

/// Kills containerd shims whose containerd socket is gone.
fn kill_stale_shims() {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2")) {
            continue;
        }
        let socket = args.iter().skip_while(|a| *a != "-address").nth(1);
        if socket.is_some_and(|s| s.ends_with("node/containerd/containerd.sock") && !Path::new(s).exists()) {
            // SAFETY: SIGKILL to an orphaned shim of a dead node.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kills every container and sandbox containerd runs for kubelet.
fn stop_sandboxes(socket: &Path) {
    let address = socket.display().to_string();
    let tasks = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "list", "-q"]).unwrap_or_default();
    for task in tasks.lines().filter(|t| !t.is_empty()) {
        let _ = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task]);
    }
    std::thread::sleep(Duration::from_millis(500));
    for task in tasks.lines().filter(|t| !t.is_empty()) {
        let _ = run("ctr", &["--address", &address, "-n", "k8s.io", "tasks", "delete", "-f", task]);
    }
}

/// What a node leaves when its processes are gone, removed: mounts under its folder,
/// kube-proxy's and kubelet's iptables chains, the bridge, the pods' network namespaces.
pub fn clean_up(dir: &Path, kube_proxy: &Path) {
    // Mounts under the node's folder (kubelet's pod volumes, containerd's snapshots), deepest first.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut ours: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in ours {
        let _ = run("umount", &["-l", &mount]);
    }
    let _ = run(&kube_proxy.display().to_string(), &["--cleanup"]);
    // kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and what jumps to them.
    for table in ["filter", "nat", "mangle"] {
        let rules = run("iptables", &["-t", table, "-S"]).unwrap_or_default();
        // Rules of built-in chains that jump to a KUBE- chain (those inside go with it).
        let jumps = rules.lines().filter(|r| {
            r.starts_with("-A ") && !own_chain(&r[3..]) && OWN_CHAINS.iter().any(|c| r.contains(&format!("-j {c}")))
        });
        for rule in jumps {
            let words = shell_words(&rule[3..]);
            let mut args = vec!["-t", table, "-D"];
            args.extend(words.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
        for chain in rules.lines().filter_map(|r| r.strip_prefix("-N ")).filter(|c| own_chain(c)) {
            let _ = run("iptables", &["-t", table, "-F", chain]);
            let _ = run("iptables", &["-t", table, "-X", chain]);
        }
    }
    let _ = run("ip", &["link", "delete", BRIDGE]);
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                let _ = run("ip", &["netns", "delete", &name]);
            }
        }
    }
}

/// Whether `text` (a chain's name, or a rule from its chain's name on) is a node's chain.
fn own_chain(text: &str) -> bool {
    OWN_CHAINS.iter().any(|c| text.starts_with(c))
}

/// The words of an `iptables -S` rule, double-quoted ones (comments) kept whole.
fn shell_words(rule: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// What is left on the machine by nodes (checked by the real-node suite after its node has
/// stopped): iptables chains of kube-proxy or kubelet, the bridge, pod network namespaces,
/// mounts under `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for table in ["filter", "nat", "mangle"] {
        let rules = run("iptables", &["-t", table, "-S"]).unwrap_or_default();
        left.extend(
            rules
                .lines()
                .filter(|l| OWN_CHAINS.iter().any(|c| l.contains(c)))
                .map(|l| format!("iptables -t {table}: {l}")),
        );
    }
    if run("ip", &["link", "show", BRIDGE]).is_ok() {
        left.push(format!("the bridge {BRIDGE}"));
    }
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .map(|n| format!("netns {n}")),
        );
    }
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(|m| format!("mount {m}")),
    );
    left
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

/// containerd with its own root, state and socket; the sandbox image built here; no
/// negative OOM score adjustments (the sandbox refuses them).
fn containerd_config(dir: &Path, socket: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}/bin"
    conf_dir = "{cni}/conf"
"#,
        root = dir.join("containerd/root").display(),
        state = dir.join("containerd/state").display(),
        socket = socket.display(),
        cni = dir.join("cni").display(),
    )
}

/// The pods' network: a bridge with the node as gateway, addresses from host-local.
fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vps-test",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.join("cni/ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// kubelet for this machine: cgroup v1 allowed, no QoS cgroups or node-allocatable
/// enforcement, no eviction or image garbage collection; its API on the node's address for
/// the API server only (client certificates of the cluster CA).
fn kubelet_config(socket: &Path, ca: &Path, port: u16, healthz_port: u16) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
cgroupDriver: cgroupfs
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
containerRuntimeEndpoint: unix://{socket}
failSwapOn: false
evictionHard: {{memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
"#,
        socket = socket.display(),
        ca = ca.display(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_are_split_as_the_shell_would() {
        let rule = r#"PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#;
        assert_eq!(
            super::shell_words(rule),
            ["PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]
        );
    }
}
