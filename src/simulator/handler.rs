//! virt-handler's own endpoint on each simulated node: what virt-api calls for an instance's
//! soft reboot and reset, and its consoles ([`console`]). virt-api finds a node's virt-handler as a Pod labelled
//! `kubevirt.io=virt-handler` on that node in KubeVirt's namespace and calls it at the Pod's
//! address on its `--console-server-port`, over TLS with certificates of the KubeVirt CA (the
//! ConfigMap `kubevirt-ca`; virt-handler's serving certificate is the Secret
//! `kubevirt-virt-handler-server-certs`), each side checking the other's.
//!
//! Here every node's virt-handler Pod has the address 127.0.0.1 and one server plays them all.
//! Like virt-handler, it answers 202 and records an Event on the instance (`SoftRebooted`,
//! `Reset`); the instance stays the same (no new VMI, pod or address). The injected failure
//! [`Failure::RebootFails`] makes it answer 500, as a launcher that cannot be reached does.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use super::{Failure, Sim, console};
use crate::api::SIMULATOR_MANAGER;
use crate::kubevirt::{CA_CONFIG_MAP, HANDLER_SERVER_SECRET, KUBEVIRT_NAMESPACE};

/// The address every simulated virt-handler Pod reports.
const ADDRESS: &str = "127.0.0.1";

/// Registers a virt-handler Pod on each simulated node and serves their endpoint on `port`
/// until the future is dropped.
pub async fn run(sim: Arc<Sim>, port: u16) -> Result<()> {
    let tls = tls_config(&sim.client).await?;
    let listener = tokio::net::TcpListener::bind((ADDRESS, port))
        .await
        .with_context(|| format!("virt-handler: listen on {ADDRESS}:{port}"))?;
    register_pods(&sim).await?;
    super::tls::serve(listener, Arc::new(tls), "virt-handler", move |req| answer(sim.clone(), req)).await
}

/// virt-handler's TLS: its serving certificate, and only clients the KubeVirt CA signed.
async fn tls_config(client: &kube::Client) -> Result<rustls::ServerConfig> {
    let missing = || format!("virt-handler's certificates (ConfigMap and Secret in namespace {KUBEVIRT_NAMESPACE})");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), KUBEVIRT_NAMESPACE);
    let ca = config_maps.get(CA_CONFIG_MAP).await.with_context(missing)?;
    let ca = ca.data.and_then(|d| d.get("ca-bundle").cloned()).context("kubevirt-ca has no ca-bundle")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), KUBEVIRT_NAMESPACE);
    let secret = secrets.get(HANDLER_SERVER_SECRET).await.with_context(missing)?;
    let field = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .with_context(|| format!("no {k} in {HANDLER_SERVER_SECRET}"))
    };
    let certs = CertificateDer::pem_slice_iter(&field("tls.crt")?).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key")?)?;
    super::tls::server_config(certs, key, ca.as_bytes())
}

/// One Running virt-handler Pod per simulated node, at [`ADDRESS`].
async fn register_pods(sim: &Sim) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), KUBEVIRT_NAMESPACE);
    let params = PatchParams::apply(SIMULATOR_MANAGER).force();
    let register = |node: String| {
        let (pods, params) = (pods.clone(), params.clone());
        async move {
            let name = format!("virt-handler-{node}");
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": KUBEVIRT_NAMESPACE, "labels": {"kubevirt.io": "virt-handler"}},
                "spec": {
                    "nodeName": node,
                    "hostNetwork": true,
                    "containers": [{"name": "virt-handler", "image": "quay.io/kubevirt/virt-handler:v1.7.0"}],
                },
            });
            pods.patch(&name, &params, &Patch::Apply(&pod)).await?;
            let status = json!({
                "apiVersion": "v1", "kind": "Pod",
                "status": {
                    "phase": "Running",
                    "podIP": ADDRESS, "podIPs": [{"ip": ADDRESS}], "hostIP": ADDRESS, "hostIPs": [{"ip": ADDRESS}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            });
            pods.patch_status(&name, &params, &Patch::Apply(&status)).await?;
            anyhow::Ok(())
        }
    };
    futures::stream::iter(sim.node_names.iter().cloned().map(register))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .context("register the virt-handler Pods")?;
    Ok(())
}

/// What a request asks of an instance: `PUT /v1/namespaces/NS/virtualmachineinstances/NAME/VERB`
/// for a soft reboot or reset, `GET .../console` or `.../vnc` for a console.
fn parse(method: &Method, path: &str) -> Option<(String, String, Verb)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["v1", "namespaces", ns, "virtualmachineinstances", name, verb] = parts.as_slice() else { return None };
    let verb = match (method, *verb) {
        (&Method::PUT, "softreboot") => Verb::SoftReboot,
        (&Method::PUT, "reset") => Verb::Reset,
        (&Method::GET, "console") => Verb::Console(console::Kind::Serial),
        (&Method::GET, "vnc") => Verb::Console(console::Kind::Vnc),
        _ => return None,
    };
    Some((ns.to_string(), name.to_string(), verb))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    SoftReboot,
    Reset,
    Console(console::Kind),
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn answer(sim: Arc<Sim>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some((ns, name, verb)) = parse(req.method(), req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if let Verb::Console(kind) = verb {
        return console::accept(sim, req, ns, name, kind).await;
    }
    match act(&sim, &ns, &name, verb).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn act(sim: &Sim, ns: &str, name: &str, verb: Verb) -> Result<Response<Full<Bytes>>> {
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client.clone(), ns, &super::vmis::resource());
    let Some(vmi) = api.get_opt(name).await? else {
        return Ok(text(StatusCode::NOT_FOUND, "no such VirtualMachineInstance"));
    };
    let status = &vmi.data["status"];
    let node = status["nodeName"].as_str();
    if !sim.is_our_node(node) || status["phase"] != "Running" {
        return Ok(text(StatusCode::BAD_REQUEST, "the VirtualMachineInstance does not run on this node"));
    }
    let vm_name = vmi.labels().get("vm.kubevirt.io/name").cloned().unwrap_or_else(|| name.to_string());
    if sim.failure(ns, &vm_name) == Some(Failure::RebootFails) {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to connect to the launcher of the VirtualMachineInstance",
        ));
    }
    // A real guest is rebooted for real: Ctrl-Alt-Delete (systemd reboots), or a reset.
    if let Some(guest) = sim.guests.get(&format!("{ns}/{name}")) {
        let done = match verb {
            Verb::SoftReboot => guest.soft_reboot().await,
            Verb::Reset => guest.reset().await,
            Verb::Console(_) => Ok(()),
        };
        if let Err(e) = done {
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, &format!("the guest did not take it: {e:#}")));
        }
    }
    let (reason, note) = match verb {
        Verb::SoftReboot => ("SoftRebooted", "VirtualMachineInstance soft rebooted"),
        Verb::Reset => ("Reset", "VirtualMachineInstance reset"),
        Verb::Console(_) => return Ok(text(StatusCode::NOT_FOUND, "not found")), // served by console::accept
    };
    let reporter = Reporter { controller: "virt-handler".into(), instance: node.map(String::from) };
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: reason.into(),
        secondary: None,
    };
    let reference = vmi.object_ref(&super::vmis::resource());
    Recorder::new(sim.client.clone(), reporter).publish(&event, &reference).await?;
    Ok(text(StatusCode::ACCEPTED, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_verbs_of_an_instance_are_served() {
        let path = "/v1/namespaces/t1/virtualmachineinstances/vps-1/softreboot";
        assert_eq!(parse(&Method::PUT, path), Some(("t1".into(), "vps-1".into(), Verb::SoftReboot)));
        let reset = "/v1/namespaces/t1/virtualmachineinstances/vps-1/reset";
        assert_eq!(parse(&Method::PUT, reset).map(|p| p.2), Some(Verb::Reset));
        assert_eq!(parse(&Method::GET, path), None);
        let console = "/v1/namespaces/t1/virtualmachineinstances/vps-1/console";
        assert_eq!(parse(&Method::GET, console).map(|p| p.2), Some(Verb::Console(console::Kind::Serial)));
        let vnc = "/v1/namespaces/t1/virtualmachineinstances/vps-1/vnc";
        assert_eq!(parse(&Method::GET, vnc).map(|p| p.2), Some(Verb::Console(console::Kind::Vnc)));
        assert_eq!(parse(&Method::PUT, console), None);
        assert_eq!(parse(&Method::PUT, "/v1/namespaces/t1/virtualmachineinstances/vps-1/pause"), None);
        assert_eq!(parse(&Method::PUT, "/v1/namespaces/t1/virtualmachineinstances/vps-1/softreboot/x"), None);
    }
}
