//! KubeVirt's own control-plane components on the local control plane: virt-api (its
//! admission webhooks, registered by URL, and its aggregated API of subresources) and
//! virt-controller (restarted whenever it exits).
//! What real hosts do is left to the node simulator.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use super::process::{Supervised, free_port, wait_for_port};
use super::{Authority, ControlPlane};

pub use crate::kubevirt::KUBEVIRT_NAMESPACE;
use crate::kubevirt::{CA_CONFIG_MAP, HANDLER_SERVER_SECRET};

impl ControlPlane {
    /// Starts virt-api and virt-controller (KubeVirt's CRDs must be installed) and registers
    /// virt-api's webhooks. Returns once the webhooks answer.
    pub async fn start_kubevirt(&mut self) -> Result<()> {
        let client = self.client().await?;
        let params = PatchParams::apply("vps-testbed").force();
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                KUBEVIRT_NAMESPACE,
                &params,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUBEVIRT_NAMESPACE}}),
                ),
            )
            .await?;
        super::apply_yaml(&client, KUBEVIRT_OBJECT, KUBEVIRT_NAMESPACE).await.context("create the KubeVirt object")?;
        // virt-operator would report the install Deployed; KubeVirt's components read their
        // configuration (emulation, feature gates) only from a KubeVirt object with a phase.
        let kubevirts: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            KUBEVIRT_NAMESPACE,
            &kube::api::ApiResource {
                group: "kubevirt.io".into(),
                version: "v1".into(),
                api_version: "kubevirt.io/v1".into(),
                kind: "KubeVirt".into(),
                plural: "kubevirts".into(),
            },
        );
        let status = json!({"status": {"phase": "Deployed", "defaultArchitecture": "amd64"}});
        kubevirts.patch_status("kubevirt", &PatchParams::default(), &Patch::Merge(&status)).await?;

        let pki = self.pki_dir();
        let handler_port = free_port()?;
        let handler_client = host_certificates(&client, &pki).await?;
        let ca = Authority::new("virt-api-webhook-ca")?;
        // The webhooks call it by address; the API aggregator by its Service's name.
        let serving = ca.serving("virt-api", &["127.0.0.1", "localhost", "virt-api.kubevirt.svc"])?;
        std::fs::write(pki.join("virt-api.crt"), &serving.cert)?;
        std::fs::write(pki.join("virt-api.key"), &serving.key)?;
        let kubeconfig = self.kubeconfig_path().display().to_string();

        let api_port = free_port()?;
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            "--listen=127.0.0.1".into(),
            format!("--port={api_port}"),
            // Where virt-api calls a host's virt-handler (at its Pod's address).
            format!("--console-server-port={handler_port}"),
            format!("--tls-cert-file={}", pki.join("virt-api.crt").display()),
            format!("--tls-key-file={}", pki.join("virt-api.key").display()),
            format!("--handler-cert-file={}", handler_client.0.display()),
            format!("--handler-key-file={}", handler_client.1.display()),
        ];
        let virt_api = self.binaries().kubevirt("virt-api")?;
        let log = self.dir().join("virt-api.log");
        self.adopt_supervised(Supervised::spawn("virt-api", &virt_api, &args, &log)?);
        wait_for_port(api_port).await.context("virt-api did not listen")?;
        register_webhooks(&client, &format!("https://127.0.0.1:{api_port}"), &ca.cert).await?;
        register_subresources(&client, api_port, &ca.cert).await?;

        let controller_port = free_port()?;
        let args = vec![
            format!("--kubeconfig={kubeconfig}"),
            "--listen=127.0.0.1".into(),
            format!("--port={controller_port}"),
            "--launcher-image=quay.io/kubevirt/virt-launcher:v1.7.0".into(),
            "--vm-controller-threads=6".into(),
            "--vmi-controller-threads=6".into(),
        ];
        let virt_controller = self.binaries().kubevirt("virt-controller")?;
        let log = self.dir().join("virt-controller.log");
        self.adopt_supervised(Supervised::spawn("virt-controller", &virt_controller, &args, &log)?);
        self.virt_handler_port = Some(handler_port);
        Ok(())
    }

    /// The port virt-api calls virt-handler on (its `--console-server-port`), once KubeVirt
    /// runs: the node simulator's virt-handler listens there.
    pub fn virt_handler_port(&self) -> Option<u16> {
        self.virt_handler_port
    }
}

/// What virt-operator issues for the hosts: a KubeVirt CA (ConfigMap `kubevirt/kubevirt-ca`,
/// key `ca-bundle`), virt-handler's serving certificate (Secret
/// `kubevirt/kubevirt-virt-handler-server-certs`) and virt-api's client certificate for
/// virt-handler, with the common names each side checks. Returns the client certificate's
/// and key's paths.
async fn host_certificates(
    client: &kube::Client,
    pki: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let ca = Authority::new("kubevirt.io")?;
    let server = ca.serving("kubevirt.io:system:node:virt-handler", &[])?;
    let handler_client = ca.client("kubevirt.io:system:client:virt-handler", None)?;
    let params = PatchParams::apply("vps-testbed").force();
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CA_CONFIG_MAP, "namespace": KUBEVIRT_NAMESPACE},
        "data": {"ca-bundle": ca.cert},
    });
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), KUBEVIRT_NAMESPACE)
        .patch(CA_CONFIG_MAP, &params, &Patch::Apply(&config_map))
        .await?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": HANDLER_SERVER_SECRET, "namespace": KUBEVIRT_NAMESPACE},
        "stringData": {"tls.crt": server.cert, "tls.key": server.key},
    });
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), KUBEVIRT_NAMESPACE)
        .patch(HANDLER_SERVER_SECRET, &params, &Patch::Apply(&secret))
        .await?;
    let (cert, key) = (pki.join("virt-handler-client.crt"), pki.join("virt-handler-client.key"));
    std::fs::write(&cert, &handler_client.cert)?;
    std::fs::write(&key, &handler_client.key)?;
    Ok((cert, key))
}

/// The `KubeVirt` object virt-controller and virt-api read their configuration from:
/// emulation (no /dev/kvm needed) and the Snapshot feature gate.
const KUBEVIRT_OBJECT: &str = r#"
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata:
  name: kubevirt
  namespace: kubevirt
spec:
  configuration:
    developerConfiguration:
      useEmulation: true
      featureGates: [Snapshot]
"#;

/// virt-api's aggregated API, `subresources.kubevirt.io` (a VM's start, stop and restart, an
/// instance's soft reboot, ...), served through kube-apiserver as virt-operator registers it:
/// an APIService for a Service `kubevirt/virt-api`. virt-api runs on this host's loopback, so
/// the Service is an ExternalName for 127.0.0.1 (an Endpoints address may not be a loopback
/// one); the aggregator verifies virt-api's certificate for `virt-api.kubevirt.svc`. Returns
/// once the APIService is Available.
async fn register_subresources(client: &kube::Client, port: u16, ca: &str) -> Result<()> {
    use base64::Engine as _;
    let params = PatchParams::apply("vps-testbed").force();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "virt-api", "namespace": KUBEVIRT_NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
    });
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), KUBEVIRT_NAMESPACE)
        .patch("virt-api", &params, &Patch::Apply(&service))
        .await?;
    let resource = kube::api::ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let api_service = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1.subresources.kubevirt.io"},
        "spec": {
            "group": "subresources.kubevirt.io", "version": "v1",
            "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": KUBEVIRT_NAMESPACE, "name": "virt-api", "port": port},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
        },
    });
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    api.patch("v1.subresources.kubevirt.io", &params, &Patch::Apply(&api_service)).await?;
    for _ in 0..600 {
        let current = api.get("v1.subresources.kubevirt.io").await?;
        let conditions = current.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if conditions.iter().any(|c| c["type"] == "Available" && c["status"] == "True") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the APIService v1.subresources.kubevirt.io is not Available after 60 s")
}

fn rule(operations: &[&str], group: &str, resource: &str) -> RuleWithOperations {
    RuleWithOperations {
        operations: Some(operations.iter().map(|s| s.to_string()).collect()),
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec!["*".into()]),
        resources: Some(vec![resource.into()]),
        scope: None,
    }
}

fn client_config(base: &str, path: &str, ca: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        url: Some(format!("{base}{path}")),
        ca_bundle: Some(ByteString(ca.as_bytes().to_vec())),
        service: None,
    }
}

/// virt-api's admission webhooks for VirtualMachines, VirtualMachineInstances and
/// VirtualMachineSnapshots, registered by URL (virt-api runs outside the cluster here).
async fn register_webhooks(client: &kube::Client, base: &str, ca: &str) -> Result<()> {
    let params = PatchParams::apply("vps-testbed").force();
    let mutate = |name: &str, ops: &[&str], resource: &str, path: &str| MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        timeout_seconds: Some(10),
        rules: Some(vec![rule(ops, "kubevirt.io", resource)]),
        client_config: client_config(base, path, ca),
        ..Default::default()
    };
    let mutating = MutatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some("virt-api-mutator".into()), ..Default::default() },
        webhooks: Some(vec![
            mutate(
                "virtualmachines-mutator.kubevirt.io",
                &["CREATE", "UPDATE"],
                "virtualmachines",
                "/virtualmachines-mutate",
            ),
            mutate(
                "virtualmachineinstances-mutator.kubevirt.io",
                &["CREATE"],
                "virtualmachineinstances",
                "/virtualmachineinstances-mutate",
            ),
        ]),
    };
    let validate = |name: &str, ops: &[&str], group: &str, resource: &str, path: &str| ValidatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        timeout_seconds: Some(10),
        rules: Some(vec![rule(ops, group, resource)]),
        client_config: client_config(base, path, ca),
        ..Default::default()
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some("virt-api-validator".into()), ..Default::default() },
        webhooks: Some(vec![
            validate(
                "virtualmachine-validator.kubevirt.io",
                &["CREATE", "UPDATE"],
                "kubevirt.io",
                "virtualmachines",
                "/virtualmachines-validate",
            ),
            validate(
                "virtualmachineinstances-create-validator.kubevirt.io",
                &["CREATE"],
                "kubevirt.io",
                "virtualmachineinstances",
                "/virtualmachineinstances-validate-create",
            ),
            validate(
                "virtualmachinesnapshot-validator.snapshot.kubevirt.io",
                &["CREATE", "UPDATE"],
                "snapshot.kubevirt.io",
                "virtualmachinesnapshots",
                "/virtualmachinesnapshots-validate",
            ),
            validate(
                "virtualmachinerestore-validator.snapshot.kubevirt.io",
                &["CREATE", "UPDATE"],
                "snapshot.kubevirt.io",
                "virtualmachinerestores",
                "/virtualmachinerestores-validate",
            ),
        ]),
    };
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch("virt-api-mutator", &params, &Patch::Apply(&with_types(mutating)?)).await?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch("virt-api-validator", &params, &Patch::Apply(&with_types(validating)?)).await?;
    Ok(())
}

/// Server-side apply needs apiVersion and kind in the body.
fn with_types<K: kube::Resource<DynamicType = ()> + serde::Serialize>(object: K) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(&object)?;
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    Ok(value)
}
