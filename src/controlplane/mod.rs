//! A real Kubernetes control plane on loopback, built from source: etcd, kube-apiserver,
//! kube-controller-manager and (optionally) kube-scheduler, as child processes that die with
//! us. Used by the integration tests (one per test binary) and by the local run.

mod binaries;
mod certs;
mod data_dir;
mod install;
mod kubevirt;
pub mod node;
mod process;
mod prometheus;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use binaries::{Binaries, KUBERNETES_VERSION, KUBEVIRT_VERSION, PROMETHEUS_VERSION, source_root};
pub use certs::{Authority, Pem};
pub use data_dir::kubeconfig_yaml;
pub use install::{apply_crds, apply_yaml, ensure_namespace, wait_for_default_service_account};
pub use kubevirt::KUBEVIRT_NAMESPACE;
pub use process::{Process, Supervised, free_port};

use data_dir::{LAYOUT_FILE, Layout, new_temp_dir, prepare};

/// How to start a control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep state here (etcd data, certificates, ports) so a restart finds it again;
    /// a fresh temporary folder when unset.
    pub data_dir: Option<PathBuf>,
    /// Also run kube-scheduler.
    pub scheduler: bool,
    /// A real node joins ([`ControlPlane::start_node`]): the API server advertises the node's
    /// bridge address, where the pods reach it.
    pub real_node: bool,
}

/// The Service range of test and local control planes: outside the private ranges (10/8,
/// 172.16/12, 192.168/16), in the range RFC 2544 sets aside for tests (198.18.0.0/15).
pub const SERVICE_RANGE: &str = "198.18.128.0/24";
/// The `kubernetes` Service's address in [`SERVICE_RANGE`] (a SAN of the serving certificate).
pub const KUBERNETES_SERVICE_IP: &str = "198.18.128.1";

/// A running control plane. Dropping it stops every process, newest first.
pub struct ControlPlane {
    dir: PathBuf,
    temporary: bool,
    layout: Layout,
    binaries: Binaries,
    scheduler: bool,
    real_node: bool,
    node: Option<node::Node>,
    processes: Vec<Process>,
    supervised: Vec<Supervised>,
    /// virt-api's `--console-server-port`, once KubeVirt runs.
    virt_handler_port: Option<u16>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager (and kube-scheduler when asked)
    /// and returns once `/readyz` answers and the `default` namespace has its service account.
    pub async fn start(binaries: Binaries, options: Options) -> Result<ControlPlane> {
        let mut plane = Self::start_api(binaries, options).await?;
        plane.start_controllers().await?;
        Ok(plane)
    }

    /// Starts etcd and kube-apiserver only, and returns once `/readyz` answers. CRDs installed
    /// before [`ControlPlane::start_controllers`] are known to the garbage collector from its
    /// start (it rediscovers resources only every 30 s).
    ///
    /// A new control plane (a temporary one, or a first start in its data folder) that fails
    /// to come up (a port taken between choosing and binding it, say) is thrown away and
    /// started afresh, with new ports, up to three times.
    pub async fn start_api(binaries: Binaries, options: Options) -> Result<ControlPlane> {
        let new = options.data_dir.as_ref().is_none_or(|dir| !dir.join(LAYOUT_FILE).exists());
        let attempts = if new { 3 } else { 1 };
        let mut attempt = 1;
        loop {
            match Self::try_start_api(binaries.clone(), &options).await {
                Ok(plane) => return Ok(plane),
                Err(e) if attempt < attempts => {
                    tracing::warn!("The control plane did not start (attempt {attempt} of {attempts}): {e:#}");
                    if let Some(dir) = &options.data_dir {
                        // Everything the failed first start made there, so the next draws anew.
                        for made in [LAYOUT_FILE, "kubeconfig", "pki", "etcd"] {
                            let path = dir.join(made);
                            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                        }
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start_api(binaries: Binaries, options: &Options) -> Result<ControlPlane> {
        let (dir, temporary) = match &options.data_dir {
            Some(dir) => (dir.clone(), false),
            None => (new_temp_dir()?, true),
        };
        std::fs::create_dir_all(dir.join("pki"))?;
        let layout = prepare(&dir)?;
        let mut plane = ControlPlane {
            dir,
            temporary,
            layout,
            binaries,
            scheduler: options.scheduler,
            real_node: options.real_node,
            node: None,
            processes: Vec::new(),
            supervised: Vec::new(),
            virt_handler_port: None,
        };
        if plane.real_node {
            node::check_prerequisites()?;
            node::create_bridge()?;
        }
        plane.spawn_etcd()?;
        plane.spawn_apiserver()?;
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// Starts kube-controller-manager (and kube-scheduler when asked) and waits until the
    /// `default` namespace has its service account.
    pub async fn start_controllers(&mut self) -> Result<()> {
        self.spawn_controller_manager()?;
        if self.scheduler {
            self.spawn_scheduler()?;
        }
        let client = self.client().await?;
        wait_for_default_service_account(&client, "default").await?;
        self.check_running()
    }

    /// The folder holding certificates, logs, the kubeconfig and etcd's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.layout.apiserver)
    }

    /// A kubeconfig with cluster-admin rights.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The cluster CA (signs the API server's serving certificate and client certificates).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The binaries this control plane runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The cluster CA and its key, to issue further certificates (for virt-api, say).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// A cluster-admin client.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig_path()).await
    }

    /// Runs kubectl against this control plane and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = std::process::Command::new(self.binaries.kube("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args)
            .output()
            .context("run kubectl")?;
        if !output.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Adds a process that stops together with the control plane (before it).
    pub fn adopt(&mut self, process: Process) {
        self.processes.push(process);
    }

    /// Adds a supervised process (stopped first, together with the control plane).
    pub fn adopt_supervised(&mut self, process: Supervised) {
        self.supervised.push(process);
    }

    /// Kills the named supervised process once; its supervisor starts it again.
    pub fn kill_supervised(&self, name: &str) {
        self.supervised.iter().filter(|s| s.name() == name).for_each(Supervised::kill_current);
    }

    /// Stops the named supervised processes for good (a benchmark freezing KubeVirt's
    /// controllers while it stages objects they would otherwise act on).
    pub fn stop_supervised(&mut self, name: &str) {
        self.supervised.retain_mut(|s| {
            if s.name() == name {
                s.stop();
            }
            s.name() != name
        });
    }

    /// Fails if any of the processes has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.processes.iter_mut().try_for_each(Process::check_running)
    }

    /// Joins a real node (the plane must have been started with [`Options::real_node`]);
    /// returns once it is Ready.
    pub async fn start_node(&mut self) -> Result<&node::Node> {
        anyhow::ensure!(self.real_node, "the control plane was started without Options::real_node");
        let client = self.client().await?;
        let node =
            node::Node::start(&self.binaries, &self.dir, &self.kubeconfig_path(), &client, self.layout.apiserver)
                .await?;
        Ok(self.node.insert(node))
    }

    /// The real node, when one joined.
    pub fn node(&self) -> Option<&node::Node> {
        self.node.as_ref()
    }

    /// Stops every process, newest first, each with SIGTERM and then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        while let Some(mut supervised) = self.supervised.pop() {
            supervised.stop();
        }
        while let Some(mut process) = self.processes.pop() {
            process.stop(Duration::from_secs(15));
        }
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let process = Process::spawn(name, &self.binaries.kube(name), &args, &log)?;
        self.processes.push(process);
        Ok(())
    }

    fn spawn_etcd(&mut self) -> Result<()> {
        let l = &self.layout;
        let client = format!("http://127.0.0.1:{}", l.etcd_client);
        let peer = format!("http://127.0.0.1:{}", l.etcd_peer);
        let args = vec![
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--unsafe-no-fsync".into(),
            "--quota-backend-bytes=8589934592".into(),
            "--log-level=warn".into(),
        ];
        self.spawn("etcd", args)
    }

    fn spawn_apiserver(&mut self) -> Result<()> {
        let l = &self.layout;
        let pki = self.dir.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", l.etcd_client),
            format!("--secure-port={}", l.apiserver),
            "--bind-address=127.0.0.1".into(),
            format!("--advertise-address={}", if self.real_node { node::NODE_IP } else { "127.0.0.1" }),
            format!("--cert-dir={}", p("apiserver-generated")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            // Outside the private ranges: tests and local runs touch only loopback and their own hosts.
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--enable-priority-and-fairness=false".into(),
            // /debug/pprof for admins (the benchmark profiles provisioning with it).
            "--profiling=true".into(),
            "--v=1".into(),
        ];
        self.spawn("kube-apiserver", args)
    }

    fn spawn_controller_manager(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig_path().display().to_string();
        let pki = self.dir.join("pki");
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.layout.controller_manager),
            format!("--service-account-private-key-file={}", pki.join("sa.key").display()),
            format!("--root-ca-file={}", pki.join("ca.crt").display()),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--concurrent-gc-syncs=10".into(),
            "--v=1".into(),
        ];
        self.spawn("kube-controller-manager", args)
    }

    fn spawn_scheduler(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig_path().display().to_string();
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.layout.scheduler),
            "--leader-elect=false".into(),
            "--kube-api-qps=200".into(),
            "--kube-api-burst=400".into(),
            "--v=1".into(),
        ];
        self.spawn("kube-scheduler", args)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // Fail fast if our own apiserver or etcd died (a port taken by another process
            // would otherwise let some other server answer /readyz).
            self.check_running()?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
                Ok(body) => bail!("kube-apiserver is not ready after 120 s: {body}"),
                Err(e) => bail!("kube-apiserver is not ready after 120 s: {e}"),
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("read {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
