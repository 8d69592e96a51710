//! The project installed as users install it, on a real node: its own OCI image (built
//! without Docker) imported into the node's containerd, the Helm chart and `deploy/`
//! (`kubectl apply -k`) installed, the operator and the gateway running as pods under the
//! real runtime, with the ServiceAccount tokens kubelet mounts; the customer is the one the
//! chart's onboarding Job made, with the token it left in a Secret. KubeVirt's controllers run on
//! the host and its hosts are simulated (in this process), as in the other suites.
//!
//! Needs root and containerd, runc and iptables (Debian's packages: scripts/test.sh installs
//! them); skipped with a printed reason without them.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use vps_operator::controlplane::node::{self, NODE_NAME};

const NAMESPACE: &str = "vps-system";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Runs a command; its stdout, or a panic with its output.
fn run(program: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", &support::current().kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {} failed:\n{stdout}\n{stderr}", program.display(), args.join(" "));
    stdout.into_owned()
}

fn helm(args: &[&str]) -> String {
    run(&support::current().binaries.helm().expect("helm is built by scripts/build-control-plane.sh"), args)
}

fn kubectl(args: &[&str]) -> String {
    run(&support::current().kubectl, args)
}

/// The project's image built from the tests' binary under `tag`, imported into the node.
fn import_image(tag: &str) {
    let out = Command::new("bash")
        .arg(root().join("scripts/build-image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_vps-operator"), "--tag", tag, "vps-operator"])
        .output()
        .expect("run scripts/build-image.sh");
    assert!(out.status.success(), "build-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let plane = support::current().real_node.as_ref().unwrap().plane.lock().unwrap();
    plane.node().expect("the node").import_image(&root().join(archive)).expect("import the image");
}

/// The gateway's Service as the host reaches it (through kube-proxy): `http://IP:PORT`.
fn gateway_url() -> String {
    let ip = kubectl(&[
        "get",
        "svc",
        "vps-gateway",
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}",
    ]);
    format!("http://{ip}")
}

struct Rest {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Rest {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                // Who answered: the gateway always sets a request id and answers JSON.
                let headers = format!("{:?}", res.headers());
                let text = res.text().await.unwrap_or_else(|e| format!("(body not read: {e})"));
                let body =
                    serde_json::from_str(&text).unwrap_or_else(|_| json!({"not json": text, "headers": headers}));
                (status, body)
            }
            Err(e) => (0, json!(e.to_string())),
        }
    }

    async fn wait_status(&self, id: i64, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (code, body) = self.call("GET", &format!("/api/v1/servers/{id}/"), None).await;
            if code == 200 && body["status"] == want {
                return;
            }
            if Instant::now() >= deadline {
                panic!("server {id} not {want}: {code} {body}\n{}", cluster_state());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The list of servers, once the gateway knows the token (its cache follows a watch).
    async fn list(&self) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = self.call("GET", "/api/v1/servers/", None).await;
            if (code != 401 && code != 0) || Instant::now() > deadline {
                return (code, body);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn create(&self, name: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west"});
            let (code, answer) = self.call("POST", "/api/v1/servers/", Some(body)).await;
            if code == 201 {
                return answer["id"].as_i64().unwrap();
            }
            // The gateway's cache may not know the new token yet.
            if Instant::now() >= deadline {
                panic!("create: {code} {answer}\n{}", cluster_state());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What the namespace holds and what the gateways logged last, for a failure's message.
fn cluster_state() -> String {
    let mut state = String::new();
    for args in [
        &["get", "pods,services,endpointslices", "-n", NAMESPACE, "-o", "wide"][..],
        &["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "--tail=30", "--prefix"],
        &["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator", "--tail=30", "--prefix"],
    ] {
        let (_, out, err) = support::kubectl(args);
        state.push_str(&format!("$ kubectl {}\n{out}{err}\n", args.join(" ")));
    }
    state
}

/// Base64 (what `kubectl get secret -o jsonpath={.data.KEY}` prints), decoded.
fn decode(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("base64")).unwrap()
}

/// The token the onboarding Job wrote, read with kubectl as the chart's NOTES show.
fn initial_token() -> String {
    let token =
        decode(&kubectl(&["get", "secret", "vps-initial-token", "-n", NAMESPACE, "-o", "jsonpath={.data.token}"]));
    assert!(token.starts_with("vps_") && token.len() == 68, "{token}");
    token
}

/// The user ids the node's containers run as (from the host's /proc).
fn container_uids() -> Vec<u32> {
    let plane = support::current().real_node.as_ref().unwrap().plane.lock().unwrap();
    let socket = plane.node().unwrap().dir().join("containerd/containerd.sock");
    let tasks = Command::new("ctr")
        .args(["--address", &socket.display().to_string(), "-n", "k8s.io", "tasks", "list"])
        .output()
        .expect("ctr tasks list");
    String::from_utf8_lossy(&tasks.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

async fn wait_no_pods(client: &Client, selector: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&ListParams::default().labels(selector)).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "pods {selector} are still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_with_the_chart_and_deploy_on_a_real_node() {
    if support::skip_on_existing_cluster("it starts a node of its own") {
        return;
    }
    if let Err(e) = node::check_prerequisites() {
        eprintln!("skipped: {e:#}");
        return;
    }
    let _ = support::real_node();
    let client = support::client().await;
    let tag = version();
    import_image(&tag);
    let chart = root().join("charts/vps-operator");
    let chart = chart.to_str().unwrap();
    let common = [
        "--namespace",
        NAMESPACE,
        "--set",
        "image.repository=vps-operator",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "catalog.enabled=false",
        "--set",
        "createImageNamespaces=false",
        "--set-string",
        "nodeSelector.vps\\.org/node=real",
        // The customer of this test, made by the chart's onboarding Job.
        "--set",
        "onboarding.account=realnode,onboarding.creditCents=1000000",
        "--wait",
        "--timeout",
        "5m",
    ];
    let image_tag = format!("image.tag={tag}");
    let mut install = vec!["install", "vps", chart, "--set", &image_tag];
    install.extend_from_slice(&common);
    helm(&install);
    // Both run non-root under the real runtime, on the real node.
    let pods =
        kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}"]);
    assert!(pods.lines().count() >= 3 && pods.lines().all(|n| n == NODE_NAME), "{pods}");
    let uids = container_uids();
    assert!(!uids.is_empty() && uids.iter().all(|u| *u != 0), "containers run as {uids:?}");

    // The customer the onboarding Job made, with the token it left in a Secret (read as the
    // chart's NOTES say), through the gateway's Service.
    let token = initial_token();
    let account = kubectl(&["get", "secret", "vps-initial-token", "-n", NAMESPACE, "-o", "jsonpath={.data.account}"]);
    assert_eq!(decode(&account), "realnode");
    let accounts: Api<vps_operator::api::VpsAccount> = Api::all(client.clone());
    let created = accounts.get("realnode").await.expect("the onboarding Job made the account");
    assert_eq!((created.spec.namespace.as_str(), created.spec.credit_cents), ("realnode", 1_000_000));
    // Its hooks are gone once it succeeded: the Job and its ServiceAccount and roles.
    for object in ["job/vps-onboarding", "serviceaccount/vps-onboarding", "role/vps-onboarding"] {
        let (ok, _, err) = support::kubectl(&["get", object, "-n", NAMESPACE]);
        assert!(!ok && err.contains("NotFound"), "{object}: {err}");
    }
    let (ok, _, err) = support::kubectl(&["get", "clusterrole/vps-onboarding"]);
    assert!(!ok && err.contains("NotFound"), "clusterrole: {err}");
    let rest = Arc::new(Rest { http: reqwest::Client::new(), url: gateway_url(), token });
    // A Service address without a Service is refused on the machine (the node's fence), never
    // sent on to the network.
    let used = kubectl(&["get", "svc", "-A", "-o", "jsonpath={.items[*].spec.clusterIP}"]);
    let prefix = vps_operator::controlplane::SERVICE_RANGE.trim_end_matches("0/24");
    let unused = (2..255).rev().map(|n| format!("{prefix}{n}")).find(|a| !used.split(' ').any(|u| u == a)).unwrap();
    let nowhere = Rest { http: reqwest::Client::new(), url: format!("http://{unused}:80"), token: String::new() };
    let (code, answer) = nowhere.call("GET", "/", None).await;
    assert_eq!(code, 0, "{unused}:80 answered: {answer}");
    assert!(answer.as_str().is_some_and(|e| e.contains("error sending request")), "{answer}");
    let (code, list) = rest.list().await;
    assert_eq!((code, list["count"].as_i64()), (200, Some(0)), "the initial token at the gateway: {list}");
    let first = rest.create("first").await;
    rest.wait_status(first, "active").await;
    helm(&["test", "vps", "--namespace", NAMESPACE, "--timeout", "2m"]);

    // An upgrade to another image rolls the pods; every request meanwhile is answered.
    import_image("upgraded");
    let (stop, errors, answered) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (rest, stop, errors, answered) = (rest.clone(), stop.clone(), errors.clone(), answered.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                let (code, _) = rest.call("GET", &format!("/api/v1/servers/{first}/"), None).await;
                if code == 200 { &answered } else { &errors }.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut upgrade: Vec<String> = ["upgrade", "vps", chart, "--set", "image.tag=upgraded"].map(String::from).to_vec();
    upgrade.extend(common.iter().map(|a| a.to_string()));
    // Off the runtime's thread: the reader above keeps calling meanwhile.
    tokio::task::spawn_blocking(move || helm(&upgrade.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap();
    stop.store(1, Ordering::Relaxed);
    reader.await.unwrap();
    // The old pods go once they have finished their requests.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let selector = "app.kubernetes.io/component=gateway";
        let images = kubectl(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        if images.split(' ').all(|i| i.ends_with(":upgraded")) {
            break;
        }
        assert!(Instant::now() < deadline, "old gateway pods are still there: {images}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "during the upgrade: {} answered, {} not",
        answered.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    assert!(answered.load(Ordering::Relaxed) > 10, "the reader ran during the upgrade");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "requests failed during the upgrade");
    rest.wait_status(first, "active").await;

    // The operator's pods deleted: new ones take over; the two gateways serve the same servers.
    kubectl(&["delete", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator", "--wait=false"]);
    let second = rest.create("second").await;
    rest.wait_status(second, "active").await;
    let gateway_ips = kubectl(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=gateway",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let ips: Vec<&str> = gateway_ips.split(' ').filter(|i| !i.is_empty()).collect();
    assert_eq!(ips.len(), 2, "{gateway_ips}");
    for ip in ips {
        let direct = Rest { http: reqwest::Client::new(), url: format!("http://{ip}:8080"), token: rest.token.clone() };
        let (code, list) = direct.call("GET", "/api/v1/servers/", None).await;
        assert_eq!((code, list["count"].as_i64()), (200, Some(2)), "gateway {ip}: {list}");
    }

    helm(&["uninstall", "vps", "--namespace", NAMESPACE, "--wait", "--timeout", "2m"]);
    wait_no_pods(&client, "app.kubernetes.io/name=vps-operator").await;

    // The same from deploy/, with `kubectl apply -k` and an overlay that sets the image.
    let overlay = root().join("target/real-node-overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../deploy]\n\
             images: [{{name: vps-operator, newTag: \"{tag}\"}}]\n\
             patches:\n- target: {{kind: Deployment}}\n  patch: |-\n    - {{op: add, path: /spec/template/spec/nodeSelector, value: {{vps.org/node: real}}}}\n"
        ),
    )
    .unwrap();
    kubectl(&["apply", "-k", overlay.to_str().unwrap()]);
    for deployment in ["vps-operator", "vps-gateway"] {
        kubectl(&["rollout", "status", &format!("deployment/{deployment}"), "-n", NAMESPACE, "--timeout=180s"]);
    }
    // A new Service: a new address.
    let rest = Rest { http: reqwest::Client::new(), url: gateway_url(), token: rest.token.clone() };
    let third = rest.create("third").await;
    rest.wait_status(third, "active").await;
    for deployment in ["vps-operator", "vps-gateway"] {
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), NAMESPACE)
            .delete(deployment, &DeleteParams::foreground())
            .await
            .unwrap();
    }
    wait_no_pods(&client, "app.kubernetes.io/name=vps-operator").await;

    // The node stopped leaves nothing behind on the machine.
    let mut plane = support::current().real_node.as_ref().unwrap().plane.lock().unwrap();
    let dir = plane.dir().to_path_buf();
    plane.stop();
    let left = node::leftovers(&dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
