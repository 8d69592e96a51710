//! `cargo bench --bench vps [-- --servers N --create C ...]`: the benchmarks of issue 6 in one
//! run, printed as one table.
//!
//! Starts the local control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, KubeVirt's virt-api and virt-controller), then the node simulator (zero
//! delays), the operator and the gateway as child processes of the release `vps-operator`
//! binary, and a bare axum handler as a child process of this bench. Then:
//!
//! 1. creates `--create` servers through the REST API with `--clients` parallel clients and
//!    times them until all are `active`, counting kube-apiserver's write requests; then applies
//!    as many bare KubeVirt VMs (the VM the operator builds, without the operator) and times
//!    them until Running, for the operator's overhead against KubeVirt's own; the project's own
//!    writes are what the operator and the gateway count of theirs;
//! 2. creates more until `--servers` exist, and waits (at most `--fill-timeout`) for them;
//! 3. counts kube-apiserver writes to the operator's resources over `--settle` seconds;
//! 4. reads the operator's and the gateway's resident memory;
//! 5. drives `GET /api/v1/servers/{id}/` on the gateway, the bare handler and kube-apiserver,
//!    and the list endpoint, each with the same load generator (`--concurrency` connections,
//!    `--duration` seconds after a one-second warm-up).
//!
//! `--smoke` is a short run (200 servers, 20 created, 2 s per load run) that `scripts/test.sh`
//! runs so the bench keeps working: it fails when something does not work (a create refused,
//! a server not active, a load run with errors), never on a timing.
//!
//! Load goes to loopback only and every loop is bounded in time.

mod cluster;
mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use cluster::{ACCOUNT, Cluster, Writes, say};
use load::{Outcome, Target, ms};

/// The statuses of the API (`shared/API.md`).
const STATUSES: [&str; 8] =
    ["provisioning", "active", "starting", "stopping", "stopped", "rebooting", "suspended", "error"];

#[derive(Clone, Debug)]
struct Args {
    servers: usize,
    create: usize,
    clients: usize,
    concurrency: usize,
    duration: Duration,
    settle: Duration,
    fill_timeout: Duration,
    create_timeout: Duration,
    /// Fill up to `servers` through the REST API and wait until all are active (instead of
    /// through the kube API with the operator stopped).
    fill_rest: bool,
    /// Record `perf` profiles of the gateway during its load runs (into the log folder).
    perf: bool,
    /// Record a 60 s CPU profile of kube-apiserver while the servers are created.
    profile_apiserver: bool,
    /// A short run that fails on what does not work, not on timings.
    smoke: bool,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        servers: 10_000,
        create: 1_000,
        clients: 32,
        concurrency: 16,
        duration: Duration::from_secs(10),
        settle: Duration::from_secs(60),
        fill_timeout: Duration::from_secs(900),
        create_timeout: Duration::from_secs(600),
        perf: false,
        profile_apiserver: false,
        fill_rest: false,
        smoke: false,
    };
    let mut bench = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || -> Result<u64> {
            let v = inline.clone().or_else(|| it.next()).with_context(|| format!("{name} needs a value"))?;
            v.parse().with_context(|| format!("{name}: not a number: {v}"))
        };
        match name.as_str() {
            "--bench" => bench = true,
            "--perf" => args.perf = true,
            "--profile-apiserver" => args.profile_apiserver = true,
            "--fill-rest" => args.fill_rest = true,
            "--smoke" => {
                args = Args {
                    servers: 200,
                    create: 20,
                    duration: Duration::from_secs(2),
                    settle: Duration::from_secs(5),
                    fill_timeout: Duration::from_secs(180),
                    create_timeout: Duration::from_secs(180),
                    smoke: true,
                    ..args
                }
            }
            "--servers" => args.servers = value()? as usize,
            "--create" => args.create = value()? as usize,
            "--clients" => args.clients = value()? as usize,
            "--concurrency" => args.concurrency = value()? as usize,
            "--duration" => args.duration = Duration::from_secs(value()?),
            "--settle" => args.settle = Duration::from_secs(value()?),
            "--fill-timeout" => args.fill_timeout = Duration::from_secs(value()?),
            "--create-timeout" => args.create_timeout = Duration::from_secs(value()?),
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench vps -- [--servers 10000] [--create 1000] [--clients 32] [--concurrency 16] \
                     [--duration 10] [--settle 60] [--fill-timeout 900] [--create-timeout 600] [--fill-rest] [--perf] [--profile-apiserver] [--smoke]"
                );
                return Ok(None);
            }
            _ => bail!("unknown argument {a:?} (try --help)"),
        }
    }
    if !bench {
        // `cargo test --all-targets` runs bench targets too: start nothing then.
        eprintln!("vps bench: run it with `cargo bench --bench vps`; doing nothing");
        return Ok(None);
    }
    args.create = args.create.min(args.servers);
    Ok(Some(args))
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("bare-server") {
        return bare_server(&argv[2], &argv[3]);
    }
    let Some(args) = parse_args()? else { return Ok(()) };
    // This runtime is the load generator (and the bench's own bookkeeping).
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

/// The bare handler: the server-sized JSON body of a real `GET /api/v1/servers/{id}/`,
/// served by axum with nothing else (no auth, no cache lookup, no middleware).
fn bare_server(listen: &str, body_file: &str) -> Result<()> {
    let body: Value = serde_json::from_slice(&std::fs::read(body_file)?)?;
    let body = Arc::new(body);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let app = axum::Router::new().route(
            "/api/v1/servers/{id}/",
            axum::routing::get(move |axum::extract::Path(_id): axum::extract::Path<String>| {
                let body = body.clone();
                async move { axum::Json((*body).clone()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen).await?;
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// A line of the final table.
struct Row {
    id: &'static str,
    what: String,
    measured: String,
    target: String,
    pass: Option<bool>,
}

fn row(
    id: &'static str,
    what: impl Into<String>,
    measured: impl Into<String>,
    target: &str,
    pass: Option<bool>,
) -> Row {
    Row { id, what: what.into(), measured: measured.into(), target: target.into(), pass }
}

struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    fn new(c: &Cluster) -> Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            base: c.gateway_url.clone(),
            auth: format!("Bearer {}", c.token),
        })
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let res = self.http.get(format!("{}{path}", self.base)).header("Authorization", &self.auth).send().await?;
        let status = res.status();
        let body = res.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// How many of the account's servers have `status`.
    async fn count(&self, status: &str) -> Result<usize> {
        let page = self.get(&format!("/api/v1/servers/?status={status}&page_size=1")).await?;
        page["count"].as_u64().map(|n| n as usize).context("count")
    }

    async fn counts(&self) -> Result<BTreeMap<&'static str, usize>> {
        let mut out = BTreeMap::new();
        for s in STATUSES {
            let n = self.count(s).await?;
            if n > 0 {
                out.insert(s, n);
            }
        }
        Ok(out)
    }
}

fn counts_text(counts: &BTreeMap<&'static str, usize>) -> String {
    counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// Creates servers `from..to` through the REST API with `clients` parallel clients; returns
/// their ids and the number of failed creates.
async fn create_servers(api: &Arc<Api>, from: usize, to: usize, clients: usize) -> Result<(Vec<i64>, usize)> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let body = json!({"name": format!("bench-{i}"), "plan_id": 1, "os_id": 5,
                    "location": if i % 2 == 0 { "us-west" } else { "us-east" },
                    "hostname": format!("bench-{i}.example.com")});
                let res = api
                    .http
                    .post(format!("{}/api/v1/servers/", api.base))
                    .header("Authorization", &api.auth)
                    .json(&body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let v: Value = r.json().await.unwrap_or_default();
                        match v["id"].as_i64() {
                            Some(id) => ids.push(id),
                            None => failed += 1,
                        }
                    }
                    Ok(r) => {
                        failed += 1;
                        if failed <= 3 {
                            let status = r.status();
                            say(format!("create failed: {status} {}", r.text().await.unwrap_or_default()));
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            say(format!("create failed: {e}"));
                        }
                    }
                }
            }
            (ids, failed)
        }));
    }
    let mut ids = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (i, f) = t.await?;
        ids.extend(i);
        failed += f;
    }
    Ok((ids, failed))
}

/// Waits until `want` servers are active or `timeout` passes; returns whether they are.
async fn wait_active(api: &Api, want: usize, started: Instant, timeout: Duration) -> Result<bool> {
    let mut last_report = Instant::now();
    loop {
        let active = api.count("active").await?;
        if active >= want {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            say(format!("{} / {want} active ({})", active, counts_text(&api.counts().await?)));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn total(w: &Writes) -> u64 {
    w.values().sum()
}

fn breakdown(w: &Writes, limit: usize) -> String {
    let mut v: Vec<_> = w.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter().take(limit).map(|(k, n)| format!("    {n:>8}  {k}")).collect::<Vec<_>>().join("\n")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The table being built, the notes under it, and what did not work (a smoke run fails on it).
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    broken: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        id: &'static str,
        what: impl Into<String>,
        measured: impl Into<String>,
        target: &str,
        pass: Option<bool>,
    ) {
        self.rows.push(row(id, what, measured, target, pass));
    }
}

async fn bench(args: Args) -> Result<()> {
    say(format!("{args:?}"));
    let logs = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("vps-bench");
    let _ = std::fs::remove_dir_all(&logs);
    let mut c = cluster::start(args.servers, &logs).await?;
    let api = Arc::new(Api::new(&c)?);
    let mut report = Report::default();

    let (mut ids, rest) = provisioning(&args, &c, &api, &mut report).await?;
    bare_vms(&args, &c, ids[0], rest, &mut report).await?;
    if args.fill_rest && args.servers > ids.len() {
        fill_through_rest(&args, &api, &mut ids, &mut report).await?;
    }
    let counts = api.counts().await?;
    let operator_state = format!("{} servers: {}", ids.len(), counts_text(&counts));
    say(format!("state: {operator_state}"));
    settled_writes(&args, &c, &counts, &mut report).await?;
    let operator_rss = cluster::rss_kib(c.operator_pid)?;
    report.add(
        "4",
        format!("operator RSS ({})", counts_text(&counts)),
        format!("{:.1} MiB (peak {:.1} MiB)", mib(operator_rss.0), mib(operator_rss.1)),
        "< 64 MiB",
        Some(mib(operator_rss.0) < 64.0),
    );
    let state = if !args.fill_rest && args.servers > ids.len() {
        fill_through_kube(&args, &mut c, &api, &mut ids, &counts).await?
    } else {
        operator_state
    };
    let rss_settled = cluster::rss_kib(c.gateway_pid)?;
    get_one_server(&args, &c, &api, &ids, &mut report).await?;
    lists(&args, &c, ids.len(), &mut report).await?;
    c.check_gateway()?;
    let rss_loaded = cluster::rss_kib(c.gateway_pid)?;
    report.add(
        "4",
        format!("gateway RSS, {} servers in its cache", ids.len()),
        format!(
            "{:.1} MiB idle, {:.1} MiB after the read load (peak {:.1} MiB)",
            mib(rss_settled.0),
            mib(rss_loaded.0),
            mib(rss_loaded.1)
        ),
        "< 128 MiB",
        Some(mib(rss_settled.0.max(rss_loaded.0)) < 128.0),
    );
    if !args.fill_rest && ids.len() > args.create {
        operator_at_n(&args, &mut c, &api, &ids, &mut report).await?;
    }
    print_table(&report.rows, &args, &state, &report.notes);
    if !report.broken.is_empty() {
        bail!("what did not work:\n  {}", report.broken.join("\n  "));
    }
    Ok(())
}

/// Benchmark 3: `--create` servers through the REST API until all are active; their ids and
/// what it took.
async fn provisioning(args: &Args, c: &Cluster, api: &Arc<Api>, report: &mut Report) -> Result<(Vec<i64>, Duration)> {
    say(format!("creating {} servers through the REST API with {} clients", args.create, args.clients));
    let before = cluster::apiserver_writes(&c.client).await?;
    let own_before = (cluster::own_writes(c.operator_metrics).await?, cluster::own_writes(c.gateway_metrics).await?);
    let cpu_before = cluster::child_cpu_seconds();
    let started = Instant::now();
    let profile = args.profile_apiserver.then(|| profile_apiserver(c));
    let (ids, failed) = create_servers(api, 0, args.create, args.clients).await?;
    let posted = started.elapsed();
    say(format!("{} created ({failed} failed) in {:.1} s; waiting until active", ids.len(), posted.as_secs_f64()));
    let all_active = wait_active(api, ids.len(), started, args.create_timeout).await?;
    let wall = started.elapsed();
    let writes = cluster::diff(&before, &cluster::apiserver_writes(&c.client).await?);
    let own = (
        own_diff(&own_before.0, &cluster::own_writes(c.operator_metrics).await?),
        own_diff(&own_before.1, &cluster::own_writes(c.gateway_metrics).await?),
    );
    let per_server = total(&writes) as f64 / ids.len().max(1) as f64;
    let vps_writes: u64 = writes.iter().filter(|(k, _)| k.group == "vps.org").map(|(_, v)| v).sum();
    say(format!(
        "{} servers active: {:.1} s (POSTs done after {:.1} s); {} apiserver writes ({per_server:.1} per server):\n{}",
        ids.len(),
        wall.as_secs_f64(),
        posted.as_secs_f64(),
        total(&writes),
        breakdown(&writes, 40)
    ));
    let cpu = cluster::cpu_text(&cpu_before, &cluster::child_cpu_seconds(), wall);
    say(format!("what the cluster spent its CPU on:\n{cpu}"));
    if let Some(profile) = profile {
        match profile.await? {
            Ok(top) => say(format!("kube-apiserver's CPU profile while provisioning:\n{top}")),
            Err(e) => say(format!("no kube-apiserver profile: {e:#}")),
        }
    }
    let created_ok = all_active && failed == 0 && ids.len() == args.create;
    if !created_ok {
        report.broken.push(format!("{} of {} creates answered 201, all active: {all_active}", ids.len(), args.create));
    }
    report.add(
        "3",
        format!("create {} servers via REST ({} clients) until all active", args.create, args.clients),
        if all_active {
            format!("{:.1} s (POSTs {:.1} s)", wall.as_secs_f64(), posted.as_secs_f64())
        } else {
            format!("not all active after {:.0} s: {}", wall.as_secs_f64(), counts_text(&api.counts().await?))
        },
        "< 60 s",
        Some(created_ok && wall < Duration::from_secs(60)),
    );
    report.add(
        "3",
        "kube-apiserver writes per server (all components)",
        format!(
            "{per_server:.1} ({} total; {:.1}/server to vps.org objects)",
            total(&writes),
            vps_writes as f64 / ids.len().max(1) as f64
        ),
        "(reported)",
        None,
    );
    let n = ids.len().max(1) as f64;
    let (operator, gateway) = (own.0.values().sum::<u64>() as f64 / n, own.1.values().sum::<u64>() as f64 / n);
    let listing = |w: &BTreeMap<String, u64>| {
        w.iter().map(|(k, v)| format!("    {:>6.2}  {k}", *v as f64 / n)).collect::<Vec<_>>().join("\n")
    };
    say(format!(
        "the project's own writes per server: operator {operator:.2}, gateway {gateway:.2}:\n  operator\n{}\n  gateway\n{}",
        listing(&own.0),
        listing(&own.1)
    ));
    report.add(
        "3",
        "the project's own API writes per server (counted by the operator and the gateway)",
        format!("{:.1} (operator {operator:.1}, gateway {gateway:.1})", operator + gateway),
        "≤ 5",
        Some(operator + gateway <= 5.0),
    );
    Ok((ids, wall))
}

/// What was written between two counts of [`cluster::own_writes`].
fn own_diff(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

/// The operator's overhead against KubeVirt itself: as many bare KubeVirt VMs as servers were
/// created, each the VM the operator builds (its own `build_vm`, without the operator's labels
/// and owner) server-side applied by the bench and started, with the same simulator, timed
/// until every one is Running; then deleted (waiting until they are gone, so that the later
/// stages see the cluster as before). `rest` is how long the REST creates took to `active`.
async fn bare_vms(args: &Args, c: &Cluster, template_id: i64, rest: Duration, report: &mut Report) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use kube::Api;
    use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
    use vps_operator::api::VpsServer;
    use vps_operator::kubevirt::VirtualMachine;
    use vps_operator::operator::vm::{VmInputs, build_vm};

    const LABEL: &str = "bench.vps.org/bare";
    let n = args.create;
    let servers: Api<VpsServer> = Api::namespaced(c.client.clone(), ACCOUNT);
    let template = servers.get(&format!("srv-{template_id}")).await?;
    let resolved = template.status.as_ref().and_then(|s| s.resolved.clone()).context("the template is resolved")?;
    let vm_resource = ApiResource::erase::<VirtualMachine>(&());
    let vms: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), ACCOUNT, &vm_resource);
    say(format!(
        "applying {n} bare KubeVirt VMs (the operator's VM, without the operator) with {} clients",
        args.clients
    ));
    let before = cluster::apiserver_writes(&c.client).await?;
    let started = Instant::now();
    let (template, resolved) = (&template, &resolved);
    futures::stream::iter(0..n)
        .map(|i| {
            let vms = vms.clone();
            async move {
                let name = format!("bare-{i}");
                let mut server = template.clone();
                server.metadata.name = Some(name.clone());
                let inputs = VmInputs {
                    server: &server,
                    id: i as i64,
                    resolved,
                    halted: false,
                    simulator_annotations: false,
                    attached: None,
                };
                let mut vm = build_vm(&inputs);
                let labels = json!({LABEL: "true"});
                vm["metadata"]["labels"] = labels.clone();
                vm["metadata"]["ownerReferences"] = json!([]);
                vm["spec"]["dataVolumeTemplates"][0]["metadata"]["labels"] = labels.clone();
                vm["spec"]["template"]["metadata"]["labels"] = labels;
                vms.patch(&name, &PatchParams::apply("vps-bench-bare").force(), &Patch::Apply(&vm)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.clients)
        .try_collect::<()>()
        .await?;
    let applied = started.elapsed();
    let selector = ListParams::default().labels(&format!("{LABEL}=true"));
    let running =
        |vm: &DynamicObject| vm.data["status"]["printableStatus"] == "Running" && vm.data["status"]["ready"] == true;
    let all_running = loop {
        let list = vms.list(&selector).await?;
        if list.items.iter().filter(|vm| running(vm)).count() >= n {
            break true;
        }
        if started.elapsed() > args.create_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wall = started.elapsed();
    let writes = cluster::diff(&before, &cluster::apiserver_writes(&c.client).await?);
    say(format!(
        "{n} bare VMs Running: {all_running} after {:.1} s (applied in {:.1} s); {} apiserver writes ({:.1} per VM)",
        wall.as_secs_f64(),
        applied.as_secs_f64(),
        total(&writes),
        total(&writes) as f64 / n.max(1) as f64
    ));
    if !all_running {
        report.broken.push(format!("not all {n} bare VMs were Running after {:.0} s", wall.as_secs_f64()));
    }
    report.add(
        "3",
        format!("{n} bare KubeVirt VMs applied and started until Running (no operator)"),
        format!("{:.1} s ({:.1} apiserver writes per VM)", wall.as_secs_f64(), total(&writes) as f64 / n.max(1) as f64),
        "(reported)",
        None,
    );
    let ratio = rest.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    report.add(
        "3",
        format!("REST-to-active ÷ bare-VM-to-Running, {n} each"),
        format!("{ratio:.2}×"),
        "≤ 1.15× at 300",
        (n == 300 && all_running).then_some(ratio <= 1.15),
    );
    say("deleting the bare VMs");
    futures::stream::iter(0..n)
        .map(|i| {
            let vms = vms.clone();
            async move {
                // A loaded API server may drop a connection: each delete is tried thrice.
                let mut tries = 0;
                loop {
                    match vms.delete(&format!("bare-{i}"), &DeleteParams::foreground()).await {
                        Ok(_) => return anyhow::Ok(()),
                        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                        Err(_) if tries < 2 => tries += 1,
                        Err(e) => return Err(e.into()),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
        .buffer_unordered(args.clients)
        .try_collect::<()>()
        .await?;
    let gone = Instant::now();
    while !vms.list(&selector).await?.items.is_empty() {
        if gone.elapsed() > args.fill_timeout {
            bail!("the bare VMs were not gone after {:.0} s", gone.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Fills up to `--servers` through the REST API (when the cluster can provision that many).
async fn fill_through_rest(args: &Args, api: &Arc<Api>, ids: &mut Vec<i64>, report: &mut Report) -> Result<()> {
    let n = args.servers;
    say(format!("creating {} more servers (to {n}) through the REST API", n - ids.len()));
    let fill_started = Instant::now();
    let (more, failed) = create_servers(api, args.create, n, args.clients).await?;
    ids.extend(more);
    say(format!(
        "{} servers exist ({failed} creates failed) after {:.1} s; waiting until active (at most {:.0} s)",
        ids.len(),
        fill_started.elapsed().as_secs_f64(),
        args.fill_timeout.as_secs_f64()
    ));
    let ok = wait_active(api, ids.len(), fill_started, args.fill_timeout).await?;
    say(format!("fill: all active = {ok} after {:.1} s", fill_started.elapsed().as_secs_f64()));
    report.notes.push(format!(
        "filling {} → {} servers through the REST API took {:.0} s until {}",
        args.create,
        ids.len(),
        fill_started.elapsed().as_secs_f64(),
        if ok { "all were active" } else { "the fill timeout" }
    ));
    Ok(())
}

/// Benchmark 5: writes to the operator's resources over `--settle` once the cluster is quiet.
async fn settled_writes(
    args: &Args,
    c: &Cluster,
    counts: &BTreeMap<&'static str, usize>,
    report: &mut Report,
) -> Result<()> {
    let grace = Duration::from_secs(if args.smoke { 2 } else { 20 });
    say(format!("settling {:.0} s, then counting writes for {:.0} s", grace.as_secs_f64(), args.settle.as_secs_f64()));
    tokio::time::sleep(grace).await;
    let before = cluster::apiserver_writes(&c.client).await?;
    let reconciles_before = cluster::operator_reconciles(c.operator_metrics).await?;
    tokio::time::sleep(args.settle).await;
    let writes = cluster::diff(&before, &cluster::apiserver_writes(&c.client).await?);
    let reconciles = cluster::operator_reconciles(c.operator_metrics).await? - reconciles_before;
    let op_writes: Writes =
        writes.iter().filter(|(k, _)| cluster::operator_resource(k)).map(|(k, v)| (k.clone(), *v)).collect();
    let minutes = args.settle.as_secs_f64() / 60.0;
    say(format!(
        "settled: {} writes in {:.0} s, {} to the operator's resources, {reconciles} reconciles:\n{}",
        total(&writes),
        args.settle.as_secs_f64(),
        total(&op_writes),
        breakdown(&writes, 40)
    ));
    report.add(
        "5",
        format!("settled cluster ({}): writes/min to the operator's resources", counts_text(counts)),
        format!(
            "{:.1}/min over {:.0} s ({reconciles} reconciles; all components: {:.1}/min)",
            total(&op_writes) as f64 / minutes,
            args.settle.as_secs_f64(),
            total(&writes) as f64 / minutes
        ),
        "0",
        Some(total(&op_writes) == 0),
    );
    Ok(())
}

/// Fills up to `--servers` through the kube API with the operator stopped: the gateway's
/// cache holds N servers, the cluster need not provision them. Returns the state's text.
async fn fill_through_kube(
    args: &Args,
    c: &mut Cluster,
    api: &Arc<Api>,
    ids: &mut Vec<i64>,
    counts: &BTreeMap<&'static str, usize>,
) -> Result<String> {
    let n = args.servers;
    say(format!("stopping the operator; creating {} VpsServers through the kube API", n - ids.len()));
    c.stop_operator();
    let fill_started = Instant::now();
    let more = fill_direct(c, ids[0], ids.len(), n, args.clients).await?;
    ids.extend(more);
    // The copies are active once the gateway has seen their status writes too.
    let active_wanted = counts.get("active").copied().unwrap_or(0) + (ids.len() - args.create);
    loop {
        let page = api.get("/api/v1/servers/?page_size=1").await?;
        if page["count"].as_u64() == Some(ids.len() as u64) && api.count("active").await? >= active_wanted {
            break;
        }
        if fill_started.elapsed() > args.fill_timeout {
            bail!("the gateway's cache did not reach {} servers", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let filled = ids.len() - args.create;
    say(format!("fill: {filled} servers in {:.1} s", fill_started.elapsed().as_secs_f64()));
    Ok(format!(
        "{} servers: {} made through the REST API and reconciled by the operator ({}); {filled} made through \
         the kube API with the operator stopped, status copied from an active server ({})",
        ids.len(),
        args.create,
        counts_text(counts),
        counts_text(&api.counts().await?)
    ))
}

/// A load run of `paths` on `target` with the bench's connections and duration.
fn load_run(args: &Args, target: Target, paths: Vec<String>, authorization: Option<String>) -> load::Run {
    load::Run {
        target,
        paths: Arc::new(paths),
        authorization,
        concurrency: args.concurrency,
        warmup: Duration::from_secs(1),
        duration: args.duration,
    }
}

fn describe(o: &Outcome) -> String {
    let errors = if o.errors > 0 { format!(" ({} errors)", o.errors) } else { String::new() };
    format!("{:.0} req/s, p50 {}, p99 {}{errors}", o.rps, ms(o.p50), ms(o.p99))
}

/// Benchmark 1: GET one server on the gateway, a bare axum handler serving the same body,
/// and kube-apiserver.
async fn get_one_server(args: &Args, c: &Cluster, api: &Arc<Api>, ids: &[i64], report: &mut Report) -> Result<()> {
    let sample: Vec<i64> = ids.iter().copied().step_by((ids.len() / 1000).max(1)).collect();
    let first = api.get(&format!("/api/v1/servers/{}/", sample[0])).await?;
    let body_file = c.logs.join("server-detail.json");
    std::fs::write(&body_file, serde_json::to_vec(&first)?)?;
    let bare_addr: SocketAddr = format!("127.0.0.1:{}", vps_operator::controlplane::free_port()?).parse()?;
    let bare = vps_operator::controlplane::Process::spawn(
        "bare-axum",
        &std::env::current_exe()?,
        &["bare-server".into(), bare_addr.to_string(), body_file.display().to_string()],
        &c.logs.join("bare-axum.log"),
    )?;
    wait_tcp(bare_addr).await?;
    let apiserver_addr: SocketAddr = c.plane.server_url().trim_start_matches("https://").parse()?;
    let admin_token = admin_token(&c.plane.kubeconfig_path())?;
    let gateway_paths: Vec<String> = sample.iter().map(|id| format!("/api/v1/servers/{id}/")).collect();
    let apiserver_paths: Vec<String> =
        sample.iter().map(|id| format!("/apis/vps.org/v1alpha1/namespaces/{ACCOUNT}/vpsservers/srv-{id}")).collect();
    let gw_auth = Some(format!("Bearer {}", c.token));
    say("load: gateway GET /api/v1/servers/{id}/");
    let run = load_run(args, Target::Http(c.gateway_addr), gateway_paths.clone(), gw_auth);
    let gw = profiled(args, c, "get", load::run(run)).await?;
    say(format!("  {gw}"));
    say("load: bare axum handler");
    let bare_out = load::run(load_run(args, Target::Http(bare_addr), gateway_paths, None)).await;
    say(format!("  {bare_out}"));
    drop(bare);
    say("load: kube-apiserver GET vpsservers/srv-{id}");
    let target = Target::https(apiserver_addr, &c.plane.ca_path())?;
    let kube = load::run(load_run(args, target, apiserver_paths, Some(format!("Bearer {admin_token}")))).await;
    say(format!("  {kube}"));

    let conc = args.concurrency;
    report.add(
        "1",
        format!("gateway GET /servers/{{id}}/, {} in cache, {conc} conns", ids.len()),
        describe(&gw),
        "",
        None,
    );
    report.add(
        "1",
        format!("bare axum handler, same {} B body, {conc} conns", bare_out.body_bytes),
        describe(&bare_out),
        "",
        None,
    );
    report.add("1", format!("kube-apiserver GET of the same VpsServer, {conc} conns"), describe(&kube), "", None);
    for (what, o) in [("gateway", &gw), ("bare handler", &bare_out), ("kube-apiserver", &kube)] {
        if o.errors > 0 || o.ok == 0 {
            report.broken.push(format!("GET one server on the {what}: {} errors, {} answers", o.errors, o.ok));
        }
    }
    let vs_bare = gw.rps / bare_out.rps.max(1e-9);
    let vs_kube = gw.rps / kube.rps.max(1e-9);
    let ok = gw.errors == 0;
    report.add(
        "1",
        "gateway req/s ÷ bare handler req/s",
        format!("{:.0}%", vs_bare * 100.0),
        "≥ 50%",
        Some(vs_bare >= 0.5 && ok),
    );
    report.add(
        "1",
        "gateway req/s ÷ kube-apiserver req/s",
        format!("{vs_kube:.1}×"),
        "≥ 10×",
        Some(vs_kube >= 10.0 && ok),
    );
    Ok(())
}

/// Benchmark 2: a page of 100, plain and filtered by status.
async fn lists(args: &Args, c: &Cluster, servers: usize, report: &mut Report) -> Result<()> {
    let gw_auth = Some(format!("Bearer {}", c.token));
    for (name, label, path) in [
        ("list", "GET /servers/?page_size=100", "/api/v1/servers/?page_size=100"),
        ("list-active", "GET /servers/?status=active&page_size=100", "/api/v1/servers/?status=active&page_size=100"),
    ] {
        say(format!("load: gateway {label}"));
        let run = load_run(args, Target::Http(c.gateway_addr), vec![path.to_string()], gw_auth.clone());
        let o = profiled(args, c, name, load::run(run)).await?;
        say(format!("  {o}"));
        let errors = if o.errors > 0 { format!(" ({} errors)", o.errors) } else { String::new() };
        if o.errors > 0 || o.ok == 0 {
            report.broken.push(format!("{label}: {} errors, {} answers", o.errors, o.ok));
        }
        report.add(
            "2",
            format!("gateway {label}, {servers} servers, {} conns", args.concurrency),
            format!("p99 {} (p50 {}, {:.0} req/s){errors}", ms(o.p99), ms(o.p50), o.rps),
            "p99 < 10 ms",
            Some(o.p99 < Duration::from_millis(10) && o.errors == 0 && o.ok > 0),
        );
    }
    Ok(())
}

/// Benchmarks 4 and 5 again with the operator holding every server: the filled servers get
/// the VM and VM instance the operator would have made, with the status of the real ones,
/// and the operator starts on the whole cluster.
async fn operator_at_n(args: &Args, c: &mut Cluster, api: &Arc<Api>, ids: &[i64], report: &mut Report) -> Result<()> {
    say("stopping virt-controller; giving each filled server the VM and VM instance of an active one");
    c.plane.stop_supervised("virt-controller");
    let staged = Instant::now();
    stage_vms(c, ids[0], &ids[args.create..], args.clients).await?;
    say(format!("staged {} VMs and instances in {:.1} s", ids.len() - args.create, staged.elapsed().as_secs_f64()));
    c.restart_operator().await?;
    let settled = wait_quiet(c, args.fill_timeout).await?;
    say(format!("the operator went quiet after {:.1} s", settled.as_secs_f64()));
    let before = cluster::apiserver_writes(&c.client).await?;
    let reconciles_before = cluster::operator_reconciles(c.operator_metrics).await?;
    tokio::time::sleep(args.settle).await;
    let writes = cluster::diff(&before, &cluster::apiserver_writes(&c.client).await?);
    let reconciles = cluster::operator_reconciles(c.operator_metrics).await? - reconciles_before;
    let op_writes: u64 = writes.iter().filter(|(k, _)| cluster::operator_resource(k)).map(|(_, v)| v).sum();
    let counts = api.counts().await?;
    report.add(
        "5",
        format!("settled, {} (virt-controller stopped): writes/min to the operator's resources", counts_text(&counts)),
        format!(
            "{:.1}/min over {:.0} s ({reconciles} reconciles)",
            op_writes as f64 / (args.settle.as_secs_f64() / 60.0),
            args.settle.as_secs_f64()
        ),
        "0",
        Some(op_writes == 0),
    );
    let rss = cluster::rss_kib(c.operator_pid)?;
    report.add(
        "4",
        format!("operator RSS, {} servers with their VMs and instances", ids.len()),
        format!("{:.1} MiB (peak {:.1} MiB)", mib(rss.0), mib(rss.1)),
        "< 64 MiB",
        Some(mib(rss.0) < 64.0),
    );
    Ok(())
}

/// Creates VpsServers `from..to` directly through the kube API (`srv-{id}` with ids from
/// 1,000,000 on, which the id counter never reaches here), each a copy of the active server
/// `template_id` with its status; returns their ids.
async fn fill_direct(c: &Cluster, template_id: i64, from: usize, to: usize, clients: usize) -> Result<Vec<i64>> {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{Patch, PatchParams, PostParams};
    use vps_operator::api::VpsServer;
    let servers: kube::Api<VpsServer> = kube::Api::namespaced(c.client.clone(), ACCOUNT);
    let template = servers.get(&format!("srv-{template_id}")).await?;
    let template_status = serde_json::to_value(&template.status)?;
    futures::stream::iter(from..to)
        .map(|i| {
            let (servers, template, mut status) = (servers.clone(), template.clone(), template_status.clone());
            async move {
                let id = 1_000_000 + i as i64;
                let name = format!("srv-{id}");
                let mut s = VpsServer::new(&name, template.spec.clone());
                s.spec.name = format!("bench-{i}");
                s.spec.hostname = Some(format!("bench-{i}.example.com"));
                s.metadata.labels = template.metadata.labels.clone();
                s.metadata.annotations = template.metadata.annotations.clone();
                let labels = s.metadata.labels.get_or_insert_default();
                labels.insert(vps_operator::api::SERVER_ID_LABEL.into(), id.to_string());
                servers.create(&PostParams::default(), &s).await?;
                status["id"] = json!(id);
                status["ipAddress"] = json!(format!("198.19.{}.{}", (i / 250) % 250, i % 250 + 1));
                status["vmName"] = json!(name);
                // Not the template's VM and disk: the VM is staged later (`stage_vms`).
                status["vmUid"] = Value::Null;
                status["rootVolumeUid"] = Value::Null;
                servers.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
                anyhow::Ok(id)
            }
        })
        .buffer_unordered(clients)
        .try_collect()
        .await
}

/// Gives each server of `ids` what the operator would have made for it: its VirtualMachine
/// (built by the operator's own `build_vm`, so the spec hash matches) with the status of the
/// VM of server `template_id`, and a VirtualMachineInstance copied from that server's.
/// virt-controller must be stopped first, or it would act on them.
async fn stage_vms(c: &Cluster, template_id: i64, ids: &[i64], clients: usize) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
    use kube::{Api, Resource, ResourceExt};
    use vps_operator::api::VpsServer;
    use vps_operator::kubevirt::{VirtualMachine, VirtualMachineInstance};
    use vps_operator::operator::vm::{VmInputs, build_vm};

    let client = &c.client;
    let servers: Api<VpsServer> = Api::namespaced(client.clone(), ACCOUNT);
    let vm_resource = ApiResource::erase::<VirtualMachine>(&());
    let vmi_resource = ApiResource::erase::<VirtualMachineInstance>(&());
    let vms: Api<DynamicObject> = Api::namespaced_with(client.clone(), ACCOUNT, &vm_resource);
    let vmis: Api<DynamicObject> = Api::namespaced_with(client.clone(), ACCOUNT, &vmi_resource);
    let template_name = format!("srv-{template_id}");
    let template = servers.get(&template_name).await?;
    let resolved = template.status.as_ref().and_then(|s| s.resolved.clone()).context("the template is resolved")?;
    let vm_status = vms.get(&template_name).await?.data["status"].clone();
    let template_vmi = vmis.get(&template_name).await?;
    let vmi_status = template_vmi.data["status"].clone();
    let template_id = template_id.to_string();
    let resolved = &resolved;
    let (vm_status, vmi_status, template_vmi) = (&vm_status, &vmi_status, &template_vmi);
    let (template_name, template_id, vm_resource) = (&template_name, &template_id, &vm_resource);
    futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let (servers, vms, vmis, vmi_resource) = (servers.clone(), vms.clone(), vmis.clone(), vmi_resource.clone());
            async move {
                let name = format!("srv-{id}");
                let server = servers.get(&name).await?;
                let inputs = VmInputs {
                    server: &server,
                    id,
                    resolved,
                    halted: false,
                    simulator_annotations: false,
                    attached: None,
                };
                let apply = PatchParams::apply(vps_operator::api::OPERATOR_MANAGER).force();
                let vm = vms.patch(&name, &apply, &Patch::Apply(&build_vm(&inputs))).await?;
                vms.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": vm_status}))).await?;
                // The server knows its VM, as the operator would have recorded it.
                let recorded = json!({"status": {"vmUid": vm.uid()}});
                servers.patch_status(&name, &PatchParams::default(), &Patch::Merge(&recorded)).await?;
                let rename = |v: &String| {
                    if v == template_name {
                        name.clone()
                    } else if v == template_id {
                        id.to_string()
                    } else {
                        v.clone()
                    }
                };
                let mut vmi = DynamicObject::new(&name, &vmi_resource).within(ACCOUNT);
                vmi.metadata = ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ACCOUNT.into()),
                    // Labels under kubevirt.io/ are KubeVirt's own: its admission refuses them from anyone else.
                    labels: Some(
                        template_vmi
                            .labels()
                            .iter()
                            .filter(|(k, _)| !k.starts_with("kubevirt.io/"))
                            .map(|(k, v)| (k.clone(), rename(v)))
                            .collect(),
                    ),
                    annotations: Some(template_vmi.annotations().clone()),
                    owner_references: Some(vec![vm.controller_owner_ref(vm_resource).context("VM owner ref")?]),
                    ..Default::default()
                };
                vmi.data = json!({"spec": template_vmi.data["spec"].clone()});
                vmis.create(&PostParams::default(), &vmi).await?;
                vmis.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": vmi_status}))).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(clients)
        .try_collect::<()>()
        .await
}

/// Waits until the operator has neither reconciled nor written for 15 s in a row; returns how
/// long that took.
async fn wait_quiet(c: &Cluster, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut last = (cluster::operator_reconciles(c.operator_metrics).await?, operator_writes(c).await?);
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = (cluster::operator_reconciles(c.operator_metrics).await?, operator_writes(c).await?);
        if now != last {
            quiet_since = Instant::now();
            last = now;
        } else if quiet_since.elapsed() >= Duration::from_secs(15) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("the operator did not go quiet within {:.0} s", limit.as_secs_f64());
        }
    }
}

async fn operator_writes(c: &Cluster) -> Result<u64> {
    let writes = cluster::apiserver_writes(&c.client).await?;
    Ok(writes.iter().filter(|(k, _)| cluster::operator_resource(k)).map(|(_, v)| v).sum())
}

/// Records 60 s of kube-apiserver's CPU profile (`/debug/pprof/profile`) into the log folder;
/// resolves to `go tool pprof -top` of it, or where it lies when Go's pprof cannot be run.
fn profile_apiserver(c: &Cluster) -> tokio::task::JoinHandle<Result<String>> {
    let kubectl = c.plane.binaries().kube("kubectl");
    let kubeconfig = c.plane.kubeconfig_path();
    let out = c.logs.join("apiserver-cpu.pprof");
    tokio::task::spawn_blocking(move || {
        let raw = std::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["get", "--raw", "/debug/pprof/profile?seconds=60"])
            .output()
            .context("run kubectl")?;
        if !raw.status.success() {
            bail!("profile kube-apiserver: {}", String::from_utf8_lossy(&raw.stderr));
        }
        std::fs::write(&out, raw.stdout)?;
        let top = std::process::Command::new("go")
            .args(["tool", "pprof", "-top", "-nodecount=25"])
            .arg(&out)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        Ok(top.unwrap_or_else(|| format!("saved to {}; read it with `go tool pprof -top`", out.display())))
    })
}

/// Runs `load`, with `perf record` on the gateway meanwhile when `--perf` was given.
async fn profiled(args: &Args, c: &Cluster, name: &str, load: impl Future<Output = Outcome>) -> Result<Outcome> {
    if !args.perf {
        return Ok(load.await);
    }
    let out = c.logs.join(format!("perf-{name}.data"));
    let secs = (args.duration + Duration::from_secs(1)).as_secs().to_string();
    let pid = c.gateway_pid.to_string();
    let mut perf = tokio::process::Command::new("perf")
        .args(["record", "-F", "1999", "-g", "-p", &pid, "-o"])
        .arg(&out)
        .args(["--", "sleep", &secs])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start perf")?;
    let outcome = load.await;
    perf.wait().await?;
    say(format!("  profile: perf report -i {}", out.display()));
    Ok(outcome)
}

async fn wait_tcp(addr: SocketAddr) -> Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listens on {addr}")
}

/// The bearer token of the control plane's admin kubeconfig.
fn admin_token(kubeconfig: &std::path::Path) -> Result<String> {
    let v: serde_yaml::Value = serde_yaml::from_slice(&std::fs::read(kubeconfig)?)?;
    v["users"][0]["user"]["token"].as_str().map(str::to_string).context("no token in the kubeconfig")
}

fn print_table(rows: &[Row], args: &Args, state: &str, notes: &[String]) {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!();
    println!(
        "vps-operator benchmarks — {cores} cores ({machine}); N = {} servers requested; load: {} connections, {} s per run after 1 s warm-up",
        args.servers,
        args.concurrency,
        args.duration.as_secs()
    );
    println!("servers at measurement: {state}");
    for n in notes {
        println!("note: {n}");
    }
    println!();
    let w_what = rows.iter().map(|r| r.what.chars().count()).max().unwrap_or(0);
    let w_meas = rows.iter().map(|r| r.measured.chars().count()).max().unwrap_or(0);
    let w_tgt = rows.iter().map(|r| r.target.chars().count()).max().unwrap_or(0).max(6);
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    println!("| # | {} | {} | {} | result |", pad("benchmark", w_what), pad("measured", w_meas), pad("target", w_tgt));
    println!("|---|{}|{}|{}|--------|", "-".repeat(w_what + 2), "-".repeat(w_meas + 2), "-".repeat(w_tgt + 2));
    for r in rows {
        let result = match r.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.id,
            pad(&r.what, w_what),
            pad(&r.measured, w_meas),
            pad(&r.target, w_tgt),
            pad(result, 6)
        );
    }
}
