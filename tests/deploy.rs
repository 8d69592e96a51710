//! Installing on a real cluster: `deploy/` and the Helm chart are accepted by the real API
//! server, `helm lint` is clean, and the operator and the gateway work with nothing but
//! the rights their ServiceAccounts get from `deploy/` (tokens from the TokenRequest API),
//! while the gateway cannot read Secrets elsewhere nor touch VirtualMachines, and the
//! operator cannot read Secrets at all. The chart's values land where they should (pod
//! annotations, extra env and args, the Ingress, the PodDisruptionBudgets), its schema refuses
//! what it does not know, and its onboarding Job's command works with its own roles only.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::rbac::{self, SYSTEM_NAMESPACE, forbidden};
use tokio::sync::OnceCell;
use vps_operator::api::VpsServer;
use vps_operator::kubevirt::{VirtualMachine, VirtualMachineInstance};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/vps-operator")
}

fn helm(args: &[&str]) -> (bool, String, String) {
    let helm = support::current().binaries.helm().expect("helm was built by scripts/build-control-plane.sh");
    let out = Command::new(helm).args(args).output().expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl apply --dry-run=server -f` of a file, a folder or `-` (stdin).
fn dry_run(what: &str, stdin: Option<&str>) -> String {
    dry_run_with("-f", what, stdin)
}

/// `kubectl apply --dry-run=server FLAG WHAT` (`-f` or `-k`).
fn dry_run_with(flag: &str, what: &str, stdin: Option<&str>) -> String {
    let s = support::current();
    let mut child = Command::new(&s.kubectl)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(["apply", "--dry-run=server", flag, what])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl apply --dry-run=server {flag} {what} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

#[tokio::test]
async fn deploy_manifests_are_accepted_by_the_api_server() {
    let _ = support::system();
    // deploy/ is a kustomization (its image can be set): `kubectl apply -k deploy/`.
    let out = dry_run_with("-k", root().join("deploy").to_str().unwrap(), None);
    for object in [
        "namespace/vps-system",
        "customresourcedefinition.apiextensions.k8s.io/vpsservers.vps.org",
        "serviceaccount/vps-operator",
        "serviceaccount/vps-gateway",
        "clusterrole.rbac.authorization.k8s.io/vps-datavolume-cloner",
        "deployment.apps/vps-operator",
        "deployment.apps/vps-gateway",
        "service/vps-gateway",
        "poddisruptionbudget.policy/vps-operator",
        "poddisruptionbudget.policy/vps-gateway",
        "validatingadmissionpolicy.admissionregistration.k8s.io/vps-platform-fields",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/vps-platform-fields",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
    // The samples: the account (its namespace for real, so the server can be dry-run into it).
    let (ok, _, err) = support::kubectl(&["apply", "-f", root().join("deploy/samples/account.yaml").to_str().unwrap()]);
    assert!(ok, "{err}");
    let out = dry_run(root().join("deploy/samples").to_str().unwrap(), None);
    assert!(out.contains("vpsserver.vps.org/web-server-01"), "{out}");
    assert!(out.contains("vpsplan.vps.org/standard"), "{out}");
    // The provider network sample, where Multus is installed.
    let (multus, _, _) = support::kubectl(&["get", "crd", "network-attachment-definitions.k8s.cni.cncf.io"]);
    if multus {
        let out = dry_run(root().join("deploy/samples/provider-network").to_str().unwrap(), None);
        assert!(out.contains("vpslocation.vps.org/eu-central"), "{out}");
        assert!(out.contains("networkattachmentdefinition.k8s.cni.cncf.io/public-eu-central"), "{out}");
    }
}

#[test]
fn helm_lint_is_clean() {
    let _ = support::system();
    let (ok, out, err) = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(ok, "helm lint failed:\n{out}\n{err}");
    assert!(out.contains("0 chart(s) failed"), "{out}");
    assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "{out}");
    let (ok, out, err) = helm(&["lint", "--strict", chart().to_str().unwrap(), "--set", "simulator.enabled=true"]);
    assert!(ok, "helm lint with the simulator failed:\n{out}\n{err}");
    // As a subchart (a parent's global values), with a ServiceMonitor and JSON logs.
    let (ok, out, err) = helm(&[
        "lint",
        "--strict",
        chart().to_str().unwrap(),
        "--set",
        "global.imageRegistry=example.com,metrics.serviceMonitor.enabled=true,logFormat=json",
    ]);
    assert!(ok, "helm lint with global values and a ServiceMonitor failed:\n{out}\n{err}");
    // The Ingress with TLS, pod annotations, extra env and args, no onboarding.
    let (ok, out, err) = helm(&[
        "lint",
        "--strict",
        chart().to_str().unwrap(),
        "--set",
        "gateway.ingress.enabled=true,gateway.ingress.className=nginx,gateway.ingress.tls[0].secretName=vps-tls",
        "--set",
        "gateway.ingress.tls[0].hosts[0]=vps.example.com,podAnnotations.a=b,operator.podAnnotations.c=d",
        "--set",
        "gateway.extraEnv[0].name=X,gateway.extraEnv[0].value=y,gateway.extraArgs[0]=--rate-limit=50",
        "--set",
        "onboarding.enabled=false,gateway.pdb.minAvailable=50%",
    ]);
    assert!(ok, "helm lint with the Ingress and extra values failed:\n{out}\n{err}");
    // The schema refuses what the chart does not know.
    for (set, complaint) in [
        ("operator.replicas=-1", "/operator/replicas"),
        ("gateway.ingres.enabled=true", "ingres"),
        ("gateway.ingress.hosts[0].paths[0].path=/,gateway.ingress.hosts[0].paths[0].backend=x", "backend"),
        ("podAnotations.a=b", "podAnotations"),
        ("operator.extraEnv[0].name=X,operator.extraEnv[0].valu=y", "valu"),
        ("gateway.extraArgs.x=y", "/gateway/extraArgs"),
        ("gateway.pdb.minAvailable=half", "/gateway/pdb/minAvailable"),
        ("onboarding.acount=demo", "acount"),
        ("onboarding.account=Not_A_Name", "/onboarding/account"),
        ("onboarding.creditCents=-1", "/onboarding/creditCents"),
        ("onboarding.expiresIn=soon", "/onboarding/expiresIn"),
    ] {
        let (ok, out, err) = helm(&["lint", "--strict", chart().to_str().unwrap(), "--set", set]);
        assert!(!ok && format!("{out}{err}").contains(complaint), "--set {set}:\n{out}{err}");
    }
}

/// The documents `helm template` renders (release `vps` in the system namespace) with `extra`
/// arguments, hooks included.
fn render(extra: &[&str]) -> Vec<Value> {
    render_release("vps", extra)
}

/// [`render`] for a release of another name.
fn render_release(release: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", SYSTEM_NAMESPACE];
    args.extend_from_slice(extra);
    let (ok, rendered, err) = helm(&args);
    assert!(ok, "helm template {extra:?} failed: {err}");
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The rendered object of `kind` named `name`, if there is one.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The first container of a Deployment's, a Job's or a Pod's pod, and that pod's annotations.
fn container_of(o: &Value) -> (&Value, &Value) {
    let pod = if o["kind"] == "Pod" { o } else { &o["spec"]["template"] };
    (&pod["spec"]["containers"][0], &pod["metadata"]["annotations"])
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
}

#[test]
fn chart_values_land_in_the_pods() {
    let _ = support::system();
    // Off by default: no Ingress, no annotations, only the chart's own env and args.
    let plain = render(&[]);
    assert!(!plain.iter().any(|o| o["kind"] == "Ingress"));
    let gateway = object(&plain, "Deployment", "vps-gateway").unwrap();
    let (container, annotations) = container_of(gateway);
    assert!(annotations.is_null(), "{annotations}");
    assert_eq!(strings(&container["args"]), ["gateway", "--listen=0.0.0.0:8080", "--metrics-listen=0.0.0.0:9090"]);
    // Two replicas: a PodDisruptionBudget for each Deployment.
    let pdb = object(&plain, "PodDisruptionBudget", "vps-gateway").expect("the gateway's PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["selector"]["matchLabels"]);
    assert!(object(&plain, "PodDisruptionBudget", "vps-operator").is_some());
    let one = render(&["--set", "gateway.replicas=1"]);
    assert!(object(&one, "PodDisruptionBudget", "vps-gateway").is_none(), "one replica: no PDB");
    let off = render(&["--set", "gateway.pdb.enabled=false"]);
    assert!(object(&off, "PodDisruptionBudget", "vps-gateway").is_none());

    let objects = render(&[
        "--set",
        "podAnnotations.team=vps,podAnnotations.shared=global,gateway.podAnnotations.shared=gateway",
        "--set",
        "operator.podAnnotations.only=operator,simulator.enabled=true",
        "--set",
        "operator.extraEnv[0].name=EXTRA,operator.extraEnv[0].value=yes,operator.extraArgs[0]=--concurrency=4",
        "--set",
        "gateway.extraEnv[0].name=FROM,gateway.extraEnv[0].valueFrom.fieldRef.fieldPath=spec.nodeName",
        "--set",
        "gateway.extraArgs[0]=--rate-limit=50,gateway.extraArgs[1]=--access-log=false",
    ]);
    let (operator, annotations) = container_of(object(&objects, "Deployment", "vps-operator").unwrap());
    assert_eq!(annotations, &json!({"team": "vps", "shared": "global", "only": "operator"}));
    let args = strings(&operator["args"]);
    assert_eq!((args[0], *args.last().unwrap()), ("operator", "--concurrency=4"), "{args:?}");
    let env = operator["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAME"), "the chart's own stay: {env:?}");
    assert_eq!(env.last().unwrap(), &json!({"name": "EXTRA", "value": "yes"}));

    let (gateway, annotations) = container_of(object(&objects, "Deployment", "vps-gateway").unwrap());
    assert_eq!(annotations, &json!({"team": "vps", "shared": "gateway"}), "a component's own win");
    assert_eq!(
        strings(&gateway["args"]),
        ["gateway", "--listen=0.0.0.0:8080", "--metrics-listen=0.0.0.0:9090", "--rate-limit=50", "--access-log=false"]
    );
    assert_eq!(
        gateway["env"].as_array().unwrap().last().unwrap(),
        &json!({"name": "FROM", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    // The global annotations reach every pod of the chart; the test keeps its hook's own.
    for (kind, name) in [("Deployment", "vps-simulator"), ("Job", "vps-onboarding"), ("Pod", "vps-gateway-test")] {
        let (_, annotations) = container_of(object(&objects, kind, name).unwrap_or_else(|| panic!("{kind} {name}")));
        assert_eq!((&annotations["team"], &annotations["shared"]), (&json!("vps"), &json!("global")), "{kind} {name}");
    }
    let (_, test) = container_of(object(&objects, "Pod", "vps-gateway-test").unwrap());
    assert_eq!(test["helm.sh/hook"], "test");

    // Prometheus for resource usage: an env var only when set.
    let env_of =
        |objects: &[Value]| container_of(object(objects, "Deployment", "vps-gateway").unwrap()).0["env"].clone();
    let plain_env = env_of(&plain);
    assert!(!plain_env.as_array().unwrap().iter().any(|e| e["name"] == "VPS_PROMETHEUS_URL"), "{plain_env}");
    let with = render(&["--set", "gateway.prometheusUrl=http://prometheus.monitoring:9090"]);
    let env = env_of(&with);
    let url = env.as_array().unwrap().iter().find(|e| e["name"] == "VPS_PROMETHEUS_URL").cloned();
    assert_eq!(url, Some(json!({"name": "VPS_PROMETHEUS_URL", "value": "http://prometheus.monitoring:9090"})));

    // The Ingress: its class, TLS and hosts, every path to the gateway's Service.
    let objects = render(&[
        "--set",
        "gateway.ingress.enabled=true,gateway.ingress.className=nginx,gateway.ingress.annotations.a=b",
        "--set",
        "gateway.ingress.hosts[0].host=api.example.com,gateway.ingress.hosts[0].paths[0].path=/",
        "--set",
        "gateway.ingress.hosts[1].paths[0].path=/api,gateway.ingress.hosts[1].paths[0].pathType=Exact",
        "--set",
        "gateway.ingress.tls[0].secretName=api-tls,gateway.ingress.tls[0].hosts[0]=api.example.com",
    ]);
    let ingress = object(&objects, "Ingress", "vps-gateway").expect("the Ingress");
    assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(ingress["metadata"]["annotations"], json!({"a": "b"}));
    let spec = &ingress["spec"];
    assert_eq!(spec["ingressClassName"], "nginx");
    assert_eq!(spec["tls"], json!([{"secretName": "api-tls", "hosts": ["api.example.com"]}]));
    let backend = json!({"service": {"name": "vps-gateway", "port": {"name": "http"}}});
    assert_eq!(
        spec["rules"],
        json!([
            {"host": "api.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}},
            {"http": {"paths": [{"path": "/api", "pathType": "Exact", "backend": backend}]}},
        ])
    );
    let service = object(&objects, "Service", "vps-gateway").unwrap();
    assert_eq!(service["spec"]["ports"][0]["name"], "http", "the port the Ingress names");
}

#[test]
fn the_onboarding_job_runs_token_create_under_roles_of_its_own() {
    let _ = support::system();
    let objects = render(&["--set", "onboarding.account=first,onboarding.creditCents=2500000"]);
    let hook = |o: &Value| {
        let a = &o["metadata"]["annotations"];
        assert_eq!(a["helm.sh/hook"], "post-install", "{o}");
        assert_eq!(a["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded", "{o}");
        a["helm.sh/hook-weight"].as_str().unwrap().parse::<i32>().unwrap()
    };
    let job = object(&objects, "Job", "vps-onboarding").expect("the onboarding Job");
    let job_weight = hook(job);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "vps-onboarding");
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        strings(&container["args"]),
        [
            "token",
            "create",
            "--account=first",
            "--create-account",
            "--credit-cents=2500000",
            "--output-secret=vps-initial-token"
        ]
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "VPS_SYSTEM_NAMESPACE", "value": SYSTEM_NAMESPACE}))
    );
    // Its ServiceAccount and roles are hooks too, made before it.
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        let o = object(&objects, kind, "vps-onboarding").unwrap_or_else(|| panic!("{kind} vps-onboarding"));
        assert!(hook(o) < job_weight, "{kind} comes before the Job");
    }
    let rules = |kind: &str| object(&objects, kind, "vps-onboarding").unwrap()["rules"].clone();
    assert_eq!(
        rules("ClusterRole"),
        json!([
            {"apiGroups": ["vps.org"], "resources": ["vpsaccounts"], "resourceNames": ["first"], "verbs": ["get"]},
            {"apiGroups": ["vps.org"], "resources": ["vpsaccounts"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["first"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create"]},
        ])
    );
    assert_eq!(
        rules("Role"),
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["vps-initial-token"], "verbs": ["get"]},
        ])
    );
    let off = render(&["--set", "onboarding.enabled=false"]);
    assert!(!off.iter().any(|o| o["metadata"]["name"] == "vps-onboarding"), "onboarding off: none of it");
}

#[tokio::test]
async fn helm_template_output_is_accepted_by_the_api_server() {
    let _ = support::system();
    let chart = chart();
    let ingress = "gateway.ingress.enabled=true,gateway.ingress.tls[0].secretName=t,gateway.ingress.tls[0].hosts[0]=vps.example.com";
    let extras = "podAnnotations.a=b,gateway.extraEnv[0].name=X,gateway.extraEnv[0].value=y,operator.extraArgs[0]=--concurrency=4";
    for extra in [
        &[][..],
        &["--set", "simulator.enabled=true", "--set", "catalog.enabled=true"][..],
        &["--set", ingress, "--set", extras, "--set", "onboarding.enabled=false,gateway.replicas=1"][..],
    ] {
        let mut args =
            vec!["template", "vps", chart.to_str().unwrap(), "--namespace", SYSTEM_NAMESPACE, "--include-crds"];
        args.extend_from_slice(extra);
        let (ok, rendered, err) = helm(&args);
        assert!(ok, "helm template failed: {err}");
        let out = dry_run("-", Some(&rendered));
        assert!(out.contains("deployment.apps/vps-operator"), "{out}");
        assert!(out.contains("deployment.apps/vps-gateway"), "{out}");
        assert!(out.contains("service/vps-gateway "), "{out}");
        assert!(out.contains("service/vps-gateway-metrics"), "{out}");
        assert!(out.contains("service/vps-operator-metrics"), "{out}");
        assert!(out.contains("validatingadmissionpolicy.admissionregistration.k8s.io/vps-platform-fields"), "{out}");
        let with_ingress = extra.contains(&ingress);
        assert_eq!(out.contains("ingress.networking.k8s.io/vps-gateway"), with_ingress, "{out}");
        // The onboarding Job and its roles (hooks: `helm template` renders them too).
        for object in [
            "job.batch/vps-onboarding",
            "serviceaccount/vps-onboarding",
            "clusterrole.rbac.authorization.k8s.io/vps-onboarding",
            "clusterrolebinding.rbac.authorization.k8s.io/vps-onboarding",
            "role.rbac.authorization.k8s.io/vps-onboarding",
            "rolebinding.rbac.authorization.k8s.io/vps-onboarding",
            "poddisruptionbudget.policy/vps-gateway",
        ] {
            assert_eq!(out.contains(object), !with_ingress, "{object}:\n{out}");
        }
        if extra.is_empty() {
            assert!(!out.contains("vpsimage.vps.org/"), "the demo catalog is off by default:\n{out}");
            assert!(!out.contains("vps-simulator"), "the simulator is off by default:\n{out}");
        } else if !with_ingress {
            assert!(out.contains("vpsimage.vps.org/ubuntu-22-04"), "{out}");
            assert!(out.contains("deployment.apps/vps-simulator"), "{out}");
        }
    }
}

/// The chart's catalog file is deploy/'s sample; the chart's Deployments and roles match deploy/'s.
#[test]
fn chart_and_deploy_agree() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    assert_eq!(read("charts/vps-operator/files/catalog.yaml"), read("deploy/samples/catalog.yaml"));
}

/// What the onboarding Job runs, `vps-operator token create --create-account --output-secret`,
/// run here with nothing but the rights the chart gives the Job's ServiceAccount (applied to
/// the API server for real): it makes the account, its namespace and a token that the gateway
/// takes; a second run does nothing; the ServiceAccount can do nothing else.
#[tokio::test]
async fn onboarding_works_with_its_own_roles_only() {
    let _ = support::system();
    let admin = support::client().await;
    support::gateway::ensure_system_namespace(&admin).await;
    let account = format!("onboarding-{}", std::process::id());
    let objects =
        render_release("onb", &["--set", &format!("onboarding.account={account},onboarding.creditCents=2500")]);
    let job = object(&objects, "Job", "onb-onboarding").unwrap();
    let rbac_yaml: String = objects
        .iter()
        .filter(|o| o["metadata"]["name"] == "onb-onboarding" && o["kind"] != "Job")
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    vps_operator::controlplane::apply_yaml(&admin, &rbac_yaml, SYSTEM_NAMESPACE).await.unwrap();
    let token = rbac::service_account_token(&admin, "onb-onboarding").await;
    let kubeconfig = rbac::kubeconfig_with_token(&support::current().kubeconfig, "onb-onboarding", &token);

    // The Job's own command line, as the ServiceAccount.
    let args: Vec<String> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_vps-operator"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("VPS_SYSTEM_NAMESPACE", SYSTEM_NAMESPACE)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), stdout.into_owned(), stderr.into_owned())
    };
    // The API server's authorizer knows the new roles once its informers have them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (stdout, stderr) = loop {
        let (ok, stdout, stderr) = run();
        if ok {
            break (stdout, stderr);
        }
        assert!(Instant::now() < deadline && stderr.contains("forbidden"), "token create failed:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(stdout.is_empty(), "the token is written, not printed: {stdout}");
    assert!(stderr.contains(&format!("Created the account {account}")), "{stderr}");
    assert!(stderr.contains("into the Secret vps-system/onb-initial-token"), "{stderr}");

    let created = Api::<vps_operator::api::VpsAccount>::all(admin.clone()).get(&account).await.unwrap();
    assert_eq!((created.spec.namespace.as_str(), created.spec.credit_cents), (account.as_str(), 2500));
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()).get(&account).await.expect("its namespace");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let written = secrets.get("onb-initial-token").await.unwrap();
    let data = written.data.clone().unwrap();
    assert_eq!(data["account"].0, account.as_bytes());
    let plaintext = String::from_utf8(data["token"].0.clone()).unwrap();
    assert!(plaintext.starts_with("vps_"), "{plaintext}");
    assert_eq!(written.metadata.owner_references.as_ref().unwrap()[0].uid, created.uid().unwrap());
    let tokens = secrets.list(&ListParams::default().labels("vps.org/api-token=true")).await.unwrap();
    let record = vps_operator::tokens::record_for_token(&plaintext, &tokens.items).expect("its token Secret");
    assert!(record.valid_for(created.uid().as_deref(), jiff::Timestamp::now()));

    // The gateway takes it.
    let gw = rbac::start_gateway(admin.clone()).await;
    let (status, body) = gw.call("GET", "/api/v1/servers/", &plaintext, None).await;
    assert_eq!((status, &body["count"]), (200, &json!(0)), "{body}");

    // A second run (the hook again, a reinstall) leaves everything as it is.
    let (ok, stdout, stderr) = run();
    assert!(ok && stdout.is_empty() && stderr.contains("exists already"), "{stdout}{stderr}");
    let again = secrets.get("onb-initial-token").await.unwrap();
    assert_eq!(again.data.unwrap()["token"].0, plaintext.as_bytes());
    let count = secrets.list(&ListParams::default().labels("vps.org/api-token=true")).await.unwrap().items.len();
    assert_eq!(count, tokens.items.len(), "no second token");

    // Nothing else: other Secrets, other accounts and namespaces, servers, changes.
    let sa = client_of(&kubeconfig).await;
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), SYSTEM_NAMESPACE);
    assert!(forbidden(sa_secrets.list(&ListParams::default()).await));
    let token_secret = tokens.items.iter().find(|s| vps_operator::tokens::read_token_secret(s) == Some(record.clone()));
    assert!(forbidden(sa_secrets.get(&token_secret.unwrap().name_any()).await), "read a token's Secret");
    assert!(forbidden(sa_secrets.delete("onb-initial-token", &Default::default()).await));
    assert!(forbidden(Api::<Secret>::namespaced(sa.clone(), &account).list(&ListParams::default()).await));
    let sa_accounts = Api::<vps_operator::api::VpsAccount>::all(sa.clone());
    assert!(forbidden(sa_accounts.list(&ListParams::default()).await));
    assert!(forbidden(sa_accounts.get("someone-else").await));
    assert!(forbidden(
        sa_accounts.patch(&account, &PatchParams::default(), &Patch::Merge(json!({"spec": {"creditCents": 1}}))).await
    ));
    assert!(forbidden(sa_accounts.delete(&account, &Default::default()).await));
    assert!(forbidden(Api::<k8s_openapi::api::core::v1::Namespace>::all(sa.clone()).get("default").await));
    assert!(forbidden(Api::<VpsServer>::namespaced(sa.clone(), &account).list(&ListParams::default()).await));
}

/// Kubeconfigs of the two ServiceAccounts; the admin operator of `support::system()` is
/// replaced (once) by one running with the operator's ServiceAccount.
struct Accounts {
    operator: PathBuf,
    gateway: PathBuf,
}

static ACCOUNTS: OnceCell<Accounts> = OnceCell::const_new();

async fn accounts() -> &'static Accounts {
    ACCOUNTS
        .get_or_init(|| async {
            let shared = support::system();
            let client = support::client().await;
            let operator = rbac::service_account_kubeconfig(&client, "vps-operator").await;
            let gateway = rbac::service_account_kubeconfig(&client, "vps-gateway").await;
            let system = shared.system.as_ref().unwrap();
            system.kill_operator();
            system.start_operator(&operator);
            Accounts { operator, gateway }
        })
        .await
}

async fn client_of(kubeconfig: &std::path::Path) -> Client {
    vps_operator::controlplane::client_from_kubeconfig(kubeconfig).await.unwrap()
}

/// Polls the server over REST until `pred` holds (90 s at most).
async fn wait_rest(gw: &rbac::Gateway, token: &str, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = gw.call("GET", &format!("/api/v1/servers/{id}/"), token, None).await;
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "server {id} not {what} after 90 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn lifecycle_with_service_account_credentials_only() {
    let accounts = accounts().await;
    let admin = support::client().await;
    let tenant = support::gateway::tenant(&admin, "rbac-lifecycle", 100_000).await;
    let gw = rbac::start_gateway(client_of(&accounts.gateway).await).await;
    let token = tenant.token.as_str();

    let (status, created) = gw
        .call(
            "POST",
            "/api/v1/servers/",
            token,
            Some(json!({"name": "web-server-01", "plan_id": 1, "os_id": 5, "location": "us-west", "hostname": "web01.example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let active = |b: &Value| b["status"] == "active" && b["ip_address"].is_string();
    let server = wait_rest(&gw, token, id, "active with an IP", active).await;
    assert!(support::existing_cluster() || server["ip_address"].as_str().unwrap().starts_with("198.18."), "{server}");
    // The operator bound the clone permission in the image namespace (bind, not escalate).
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "vps-images");
    assert!(bindings.get_opt(&format!("vps-clone-{}", tenant.namespace)).await.unwrap().is_some());

    let (status, body) = gw.call("POST", &format!("/api/v1/servers/{id}/stop/"), token, None).await;
    assert_eq!(status, 200, "{body}");
    wait_rest(&gw, token, id, "stopped", |b| b["status"] == "stopped").await;
    let (status, body) = gw.call("POST", &format!("/api/v1/servers/{id}/start/"), token, None).await;
    assert_eq!(status, 200, "{body}");
    wait_rest(&gw, token, id, "active again", active).await;

    // Reboot, in place: the operator asks virt-api for the instance's softreboot (its
    // grant); a refusal would restart the instance instead.
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &tenant.namespace);
    let servers: Api<VpsServer> = Api::namespaced(admin.clone(), &tenant.namespace);
    let vm_name = servers.list(&ListParams::default()).await.unwrap().items[0]
        .status
        .as_ref()
        .and_then(|s| s.vm_name.clone())
        .expect("the server names its VM");
    let before = vmis.get(&vm_name).await.unwrap().uid();
    let (status, body) = gw.call("POST", &format!("/api/v1/servers/{id}/reboot/"), token, None).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let server = servers.get(&vm_name).await.unwrap();
        let asked = server.spec.reboot_requested_at.clone();
        if asked.is_some() && server.status.as_ref().and_then(|s| s.observed_reboot_request.clone()) == asked {
            break;
        }
        assert!(Instant::now() < deadline, "the reboot was never acted on");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(vmis.get(&vm_name).await.unwrap().uid(), before, "the instance stayed");
    assert!(!support::warning_event(&admin, &tenant.namespace, "RebootFallback").await);

    // A backup, and its size from its volume snapshots (the operator's grants to read them).
    let backups = format!("/api/v1/servers/{id}/backups/");
    let (status, body) = gw.call("POST", &backups, token, None).await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, list) = gw.call("GET", &backups, token, None).await;
        if list["results"][0]["size"].is_i64() {
            break;
        }
        assert!(Instant::now() < deadline, "the backup never showed its size: {list}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_rest(&gw, token, id, "active after the reboot", active).await;

    // The console, with the gateway's two console grants only: its login prompt comes through.
    let (status, body) = gw.call("POST", &format!("/api/v1/servers/{id}/console/"), token, None).await;
    assert_eq!(status, 200, "{body}");
    let (mut console, _) = tokio_tungstenite::connect_async(body["wss_url"].as_str().unwrap())
        .await
        .expect("the console opens with the gateway's grants");
    let prompt = tokio::time::timeout(Duration::from_secs(30), async {
        use futures::StreamExt;
        let mut seen = Vec::new();
        while let Some(Ok(frame)) = console.next().await {
            seen.extend_from_slice(&frame.into_data());
            if seen.windows(7).any(|w| w == b"login: ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(prompt, Ok(true), "no login prompt through the console");
    drop(console);

    // The boot log, with the gateway's grants of Pods (list) and their logs.
    let (status, body) = gw.call("GET", &format!("/api/v1/servers/{id}/console-output/?lines=1"), token, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["output"].as_str().unwrap().ends_with("login: "), "{body}");

    let (status, body) = gw.call("DELETE", &format!("/api/v1/servers/{id}/"), token, None).await;
    assert_eq!(status, 204, "{body}");
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &tenant.namespace);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let gone = servers.list(&ListParams::default()).await.unwrap().items.is_empty()
            && vms.get_opt(&vm_name).await.unwrap().is_none();
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the server and its VM were never torn down");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = gw.call("GET", &format!("/api/v1/servers/{id}/"), token, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_gateway_cannot_read_other_secrets_nor_touch_virtual_machines() {
    let accounts = accounts().await;
    let admin = support::client().await;
    let ns = support::namespace(&admin, "rbac-gateway").await;
    let secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "private"}, "stringData": {"k": "v"}});
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &serde_json::from_value(secret).unwrap())
        .await
        .unwrap();
    let gw = client_of(&accounts.gateway).await;

    // Its own namespace's token Secrets: listed (its cache), nothing more.
    Api::<Secret>::namespaced(gw.clone(), SYSTEM_NAMESPACE).list(&ListParams::default()).await.unwrap();
    assert!(forbidden(Api::<Secret>::namespaced(gw.clone(), &ns).get("private").await));
    assert!(forbidden(Api::<Secret>::namespaced(gw.clone(), &ns).list(&ListParams::default()).await));
    assert!(forbidden(Api::<Secret>::namespaced(gw.clone(), "default").list(&ListParams::default()).await));
    assert!(forbidden(Api::<Secret>::all(gw.clone()).list(&ListParams::default()).await));

    let vms: Api<VirtualMachine> = Api::namespaced(gw.clone(), &ns);
    assert!(forbidden(vms.get("any").await));
    assert!(forbidden(vms.list(&ListParams::default()).await));
    assert!(forbidden(Api::<VirtualMachine>::all(gw.clone()).list(&ListParams::default()).await));
    let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "x"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}});
    assert!(forbidden(vms.create(&PostParams::default(), &serde_json::from_value(vm.clone()).unwrap()).await));
    assert!(forbidden(vms.patch("x", &PatchParams::apply("test"), &Patch::Apply(&vm)).await));
    assert!(forbidden(
        vms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"spec": {"runStrategy": "Always"}}))).await
    ));
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(gw.clone(), &ns);
    assert!(forbidden(vmis.list(&ListParams::default()).await));
    assert!(forbidden(vmis.delete("x", &Default::default()).await));
}

#[tokio::test]
async fn the_operator_cannot_read_secrets_nor_bind_other_roles() {
    let accounts = accounts().await;
    let admin = support::client().await;
    let ns = support::namespace(&admin, "rbac-operator").await;
    let op = client_of(&accounts.operator).await;
    for namespace in [SYSTEM_NAMESPACE, ns.as_str(), "default"] {
        let secrets: Api<Secret> = Api::namespaced(op.clone(), namespace);
        assert!(forbidden(secrets.list(&ListParams::default()).await), "list Secrets in {namespace}");
        assert!(forbidden(secrets.get("any").await), "get a Secret in {namespace}");
    }
    assert!(forbidden(Api::<Secret>::all(op.clone()).list(&ListParams::default()).await));

    // It may bind the clone ClusterRole in the image namespace, and nothing else anywhere.
    let binding = |role: &str, namespace: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("test-{role}"), "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})
    };
    let images: Api<RoleBinding> = Api::namespaced(op.clone(), "vps-images");
    let pp = PatchParams::apply("rbac-test");
    assert!(forbidden(
        images.patch("test-cluster-admin", &pp, &Patch::Apply(&binding("cluster-admin", "vps-images"))).await
    ));
    assert!(forbidden(images.patch("test-edit", &pp, &Patch::Apply(&binding("edit", "vps-images"))).await));
    let elsewhere: Api<RoleBinding> = Api::namespaced(op.clone(), &ns);
    assert!(forbidden(
        elsewhere.patch("test-vps-datavolume-cloner", &pp, &Patch::Apply(&binding("vps-datavolume-cloner", &ns))).await
    ));
    images
        .patch("test-vps-datavolume-cloner", &pp, &Patch::Apply(&binding("vps-datavolume-cloner", "vps-images")))
        .await
        .expect("the operator may bind the clone role in the image namespace");
}

/// A client that acts as ServiceAccount `name` of namespace `ns` (a token from the
/// TokenRequest API).
async fn client_as(admin: &Client, ns: &str, name: &str) -> Client {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    accounts.create(&PostParams::default(), &account).await.unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), bound_object_ref: None },
        ..Default::default()
    };
    let token =
        accounts.create_token_request(name, &PostParams::default(), &request).await.unwrap().status.unwrap().token;
    let kubeconfig = rbac::kubeconfig_with_token(&support::current().kubeconfig, &format!("{ns}-{name}"), &token);
    client_of(&kubeconfig).await
}

#[tokio::test]
async fn a_tenant_cannot_set_what_belongs_to_the_platform() {
    let _ = support::system();
    let admin = support::client().await;
    rbac::apply_deploy_rbac(&admin).await;
    let policy = std::fs::read_to_string(root().join("deploy/13-admission-policy.yaml")).unwrap();
    vps_operator::controlplane::apply_yaml(&admin, &policy, SYSTEM_NAMESPACE).await.unwrap();
    let ns = support::namespace(&admin, "tenant-policy").await;
    // A namespace editor, as the built-in `edit` role (with vps-editor aggregated) makes one.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "editor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "vps-editor"},
        "subjects": [{"kind": "ServiceAccount", "name": "editor", "namespace": ns}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let tenant = client_as(&admin, &ns, "editor").await;
    let servers: Api<VpsServer> = Api::namespaced(tenant.clone(), &ns);
    let server = |name: &str, labels: Value, annotations: Value, suspended: bool| -> VpsServer {
        serde_json::from_value(json!({"apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"name": name, "plan": "standard", "os": "ubuntu-22-04", "location": "us-west", "suspended": suspended}}))
        .unwrap()
    };
    let refused = |result: Result<VpsServer, kube::Error>, what: &str| match result {
        Err(kube::Error::Api(e)) => {
            assert!(e.code == 403 || e.code == 422, "{what}: {e:?}");
            assert!(e.message.contains("vps-platform-fields"), "{what}: {}", e.message);
        }
        other => panic!("{what} was allowed: {other:?}"),
    };
    // The policy is in force once the API server has loaded it.
    let forged = server("forged", json!({"vps.org/server-id": "1"}), json!({}), false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match servers.create(&PostParams::default(), &forged).await {
            Err(kube::Error::Api(e)) if e.message.contains("vps-platform-fields") => break,
            Ok(_) => {
                servers.delete("forged", &Default::default()).await.ok();
                let _ = servers
                    .patch("forged", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
                    .await;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(Instant::now() < deadline, "the admission policy never took effect");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pp = PostParams::default();
    refused(
        servers.create(&pp, &server("s1", json!({"vps.org/account": "someone-else"}), json!({}), false)).await,
        "an account label",
    );
    refused(
        servers.create(&pp, &server("s2", json!({}), json!({"simulator.vps.org/fail": "crash"}), false)).await,
        "failure injection",
    );
    refused(servers.create(&pp, &server("s3", json!({}), json!({}), true)).await, "a suspended server");
    // What a tenant may do, it may.
    servers.create(&pp, &server("mine", json!({"team": "web"}), json!({"note": "x"}), false)).await.unwrap();
    let merge = |patch: Value| Patch::Merge(patch);
    refused(
        servers
            .patch("mine", &PatchParams::default(), &merge(json!({"metadata": {"labels": {"vps.org/server-id": "7"}}})))
            .await,
        "an id label",
    );
    refused(
        servers.patch("mine", &PatchParams::default(), &merge(json!({"spec": {"suspended": true}}))).await,
        "lifting a hold",
    );
    servers.patch("mine", &PatchParams::default(), &merge(json!({"spec": {"deleteProtection": true}}))).await.unwrap();
    match servers.delete("mine", &Default::default()).await {
        Err(kube::Error::Api(e)) => assert!(e.message.contains("protected"), "{e:?}"),
        other => panic!("a protected server was deleted: {other:?}"),
    }
    servers.patch("mine", &PatchParams::default(), &merge(json!({"spec": {"deleteProtection": false}}))).await.unwrap();
    servers.delete("mine", &Default::default()).await.unwrap();
}
