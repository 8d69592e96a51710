//! The system under test: the local control plane with KubeVirt, and the simulator, the
//! operator and the gateway as child processes of the release `vps-operator` binary (so each
//! has its own /proc/PID/status). Every child dies with the bench (`PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Client;

use vps_operator::controlplane::{self, Binaries, ControlPlane, Options, Process, free_port};

pub const SYSTEM_NAMESPACE: &str = "vps-system";
/// The account (and namespace) every benchmark server belongs to.
pub const ACCOUNT: &str = "bench";

/// The running system. The operator and the gateway stop first (fields drop in order).
pub struct Cluster {
    operator: Option<Process>,
    gateway: Process,
    pub plane: ControlPlane,
    pub client: Client,
    pub gateway_url: String,
    pub gateway_addr: SocketAddr,
    pub gateway_pid: u32,
    pub operator_pid: u32,
    pub operator_metrics: SocketAddr,
    pub gateway_metrics: SocketAddr,
    pub token: String,
    pub logs: PathBuf,
    exe: PathBuf,
}

/// Prints a progress line with the time since the bench started.
pub fn say(msg: impl std::fmt::Display) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:7.1}s] {msg}");
}

/// Starts a child through `env` (which execs, so the PID is the program's) with
/// `KUBECONFIG` set and its output in `logs/NAME.log`.
fn spawn(name: &str, logs: &Path, kubeconfig: &Path, program: &Path, args: &[String]) -> Result<Process> {
    let mut all = vec![
        format!("KUBECONFIG={}", kubeconfig.display()),
        format!("RUST_LOG={}", std::env::var("VPS_BENCH_LOG").unwrap_or_else(|_| "info".into())),
        program.display().to_string(),
    ];
    all.extend_from_slice(args);
    Process::spawn(name, Path::new("/usr/bin/env"), &all, &logs.join(format!("{name}.log")))
}

async fn wait_http_ok(url: &str, what: &str, process: &mut Process) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        process.check_running()?;
        if let Ok(res) = http.get(url).send().await
            && res.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after 300 s ({url})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Simulated nodes: enough per region for `servers` standard-plan VMs (4 GiB each; a
/// simulated node offers 4 TiB).
pub fn node_flags(servers: usize) -> Vec<String> {
    let per_region = servers.div_ceil(2).div_ceil(500).max(1);
    let mut flags = Vec::new();
    for region in ["us-west", "us-east"] {
        for i in 0..per_region {
            flags.push(format!("--node=sim-{region}-{i}:topology.kubernetes.io/region={region}"));
        }
    }
    flags
}

/// Starts everything and returns once the operator and the gateway are ready.
pub async fn start(servers: usize, logs: &Path) -> Result<Cluster> {
    std::fs::create_dir_all(logs)?;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_vps-operator"));
    say(format!("system under test: {}", exe.display()));
    let binaries = tokio::task::spawn_blocking(|| Binaries::ensure(&controlplane::source_root())).await??;
    say("starting etcd, kube-apiserver");
    let mut plane = ControlPlane::start_api(binaries, Options { scheduler: true, ..Options::default() }).await?;
    let client = plane.client().await?;
    say("installing CRDs");
    vps_operator::testbed::install_crds(&client, plane.binaries()).await?;
    say("starting kube-controller-manager, kube-scheduler, virt-api, virt-controller");
    plane.start_controllers().await?;
    plane.start_kubevirt().await?;
    vps_operator::testbed::install_demo_catalog(&client).await?;
    controlplane::ensure_namespace(&client, SYSTEM_NAMESPACE).await?;
    vps_operator::testbed::ensure_account(&client, ACCOUNT, 1_000_000_000_000).await?;
    let token = vps_operator::tokens::create(&client, SYSTEM_NAMESPACE, ACCOUNT, None).await?;

    let kubeconfig = plane.kubeconfig_path();
    let mut args = vec!["simulator".to_string()];
    args.extend(node_flags(servers));
    args.extend(plane.virt_handler_port().map(|p| format!("--virt-handler-port={p}")));
    say(format!("starting the simulator ({} nodes, zero delays)", node_flags(servers).len()));
    let simulator = spawn("simulator", logs, &kubeconfig, &exe, &args)?;
    plane.adopt(simulator);

    let operator_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    say("starting the operator");
    let operator = start_operator("operator", logs, &kubeconfig, &exe, operator_metrics).await?;
    let operator_pid = operator.pid();

    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let gateway_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    say("starting the gateway");
    let mut gateway = spawn(
        "gateway",
        logs,
        &kubeconfig,
        &exe,
        // The load generator is one token at many thousand requests a second: no rate limit.
        &[
            "gateway".into(),
            format!("--listen={gateway_addr}"),
            format!("--metrics-listen={gateway_metrics}"),
            format!("--system-namespace={SYSTEM_NAMESPACE}"),
            "--rate-limit=0".into(),
        ],
    )?;
    let gateway_url = format!("http://{gateway_addr}");
    wait_http_ok(&format!("{gateway_url}/readyz"), "gateway", &mut gateway).await?;
    let gateway_pid = gateway.pid();
    say(format!("ready: gateway pid {gateway_pid}, operator pid {operator_pid}, logs in {}", logs.display()));
    Ok(Cluster {
        operator: Some(operator),
        gateway,
        plane,
        client,
        gateway_url,
        gateway_addr,
        gateway_pid,
        operator_pid,
        operator_metrics,
        gateway_metrics,
        token,
        logs: logs.to_path_buf(),
        exe,
    })
}

/// Starts the operator. With `VPS_BENCH_HEAPTRACK` set, a restarted operator runs under
/// `heaptrack` (its record lands in `logs/operator.heaptrack.*`; its RSS is then heaptrack's).
async fn start_operator(
    name: &str,
    logs: &Path,
    kubeconfig: &Path,
    exe: &Path,
    metrics: SocketAddr,
) -> Result<Process> {
    let flags =
        ["operator".into(), format!("--metrics-listen={metrics}"), format!("--system-namespace={SYSTEM_NAMESPACE}")];
    let heaptrack = std::env::var_os("VPS_BENCH_HEAPTRACK").is_some() && name != "operator";
    let mut operator = if heaptrack {
        let record = logs.join("operator.heaptrack").display().to_string();
        let args = [vec!["-o".into(), record, exe.display().to_string()], flags.to_vec()].concat();
        spawn(name, logs, kubeconfig, Path::new("/usr/bin/heaptrack"), &args)?
    } else {
        spawn(name, logs, kubeconfig, exe, &flags)?
    };
    wait_http_ok(&format!("http://{metrics}/readyz"), "operator", &mut operator).await?;
    Ok(operator)
}

impl Cluster {
    /// Stops the operator (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_operator(&mut self) {
        if let Some(mut p) = self.operator.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Starts the operator again (after [`Cluster::stop_operator`]), logging to
    /// `operator-restarted.log`.
    pub async fn restart_operator(&mut self) -> Result<()> {
        self.stop_operator();
        let (logs, kubeconfig) = (&self.logs, self.plane.kubeconfig_path());
        let operator =
            start_operator("operator-restarted", logs, &kubeconfig, &self.exe, self.operator_metrics).await?;
        self.operator_pid = operator.pid();
        self.operator = Some(operator);
        Ok(())
    }

    /// Fails if the gateway has exited.
    pub fn check_gateway(&mut self) -> Result<()> {
        self.gateway.check_running()
    }
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// One series of `apiserver_request_total` that is a write.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteKey {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub verb: String,
}

impl std::fmt::Display for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

pub type Writes = BTreeMap<WriteKey, u64>;

const WRITE_VERBS: [&str; 6] = ["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];

/// kube-apiserver's write requests so far (every code), from its `/metrics`.
pub async fn apiserver_writes(client: &Client) -> Result<Writes> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    let mut out = Writes::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line["apiserver_request_total{".len()..].rsplit_once("} ") else { continue };
        let mut map = BTreeMap::new();
        // Label values here never contain `",`.
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k, v.trim_end_matches('"'));
            }
        }
        let verb = map.get("verb").copied().unwrap_or_default();
        if !WRITE_VERBS.contains(&verb) {
            continue;
        }
        let key = WriteKey {
            group: map.get("group").copied().unwrap_or_default().to_string(),
            resource: map.get("resource").copied().unwrap_or_default().to_string(),
            subresource: map.get("subresource").copied().unwrap_or_default().to_string(),
            verb: verb.to_string(),
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0) as u64;
    }
    Ok(out)
}

/// `after - before`, without zero entries.
pub fn diff(before: &Writes, after: &Writes) -> Writes {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Whether a write is to a resource the operator writes: vps.org's objects, VMs (not their
/// status, which virt-controller owns), VM snapshots, the clone RoleBindings, Events
/// (events.k8s.io, as kube-runtime's recorder sends them) and the id counter ConfigMap.
pub fn operator_resource(k: &WriteKey) -> bool {
    k.group == "vps.org"
        || (k.group == "kubevirt.io" && k.resource == "virtualmachines" && k.subresource.is_empty())
        || k.group == "snapshot.kubevirt.io"
        || (k.group == "rbac.authorization.k8s.io" && k.resource == "rolebindings")
        || (k.group == "events.k8s.io" && k.resource == "events")
        || (k.group.is_empty() && k.resource == "configmaps")
}

/// A process's own writes to the Kubernetes API so far (`*_kube_write_requests_total`, by
/// method and resource), from its `/metrics`.
pub async fn own_writes(addr: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("_kube_write_requests_total{")) {
        let Some((labels, value)) = line.split_once('{').and_then(|(_, rest)| rest.rsplit_once("} ")) else { continue };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        out.insert(labels.replace('"', ""), value as u64);
    }
    Ok(out)
}

/// The operator's reconcile count (all results), from its `/metrics`.
pub async fn operator_reconciles(addr: SocketAddr) -> Result<u64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("vps_operator_reconciles_total"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64)
}

/// CPU seconds used so far by each child process of this bench (the control plane, KubeVirt,
/// the simulator, the operator, the gateway), by name.
pub fn child_cpu_seconds() -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let me = std::process::id().to_string();
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) != Some(&me.as_str()) {
            continue;
        }
        let comm = head.split_once(" (").map(|(_, c)| c.to_string()).unwrap_or_default();
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let name = if comm == "vps-operator" || comm.starts_with("vps-") {
            format!("vps-operator {}", args.get(1).map(String::as_str).unwrap_or("?"))
        } else {
            comm
        };
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(name).or_default() += (utime + stime) / ticks;
    }
    out
}

/// `after - before` of [`child_cpu_seconds`], largest first, one line each.
pub fn cpu_text(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, wall: Duration) -> String {
    let mut v: Vec<(String, f64)> =
        after.iter().map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0))).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = v.iter().map(|(_, s)| s).sum();
    let mut text = format!(
        "    CPU seconds of the children over {:.0} s (machine: {} cores): {total:.0} s in all",
        wall.as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    for (name, secs) in v.iter().filter(|(_, s)| *s >= 0.5) {
        text.push_str(&format!("\n    {secs:>8.1}  {name}"));
    }
    text
}
