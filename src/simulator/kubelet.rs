//! kubelet's endpoint on each simulated node, for what the API server asks of a node's
//! kubelet: a container's log (`GET /containerLogs/NS/POD/CONTAINER`, which the `pods/log`
//! subresource and `kubectl logs` reach). Each node listens on its own InternalIP (127.0.1.N)
//! at one port, published as the node's `daemonEndpoints.kubeletEndpoint.Port`, over TLS: a
//! self-signed serving certificate (the API server checks a kubelet's only when given
//! `--kubelet-certificate-authority`), and only clients the cluster CA signed (the ConfigMap
//! `kube-root-ca.crt`, which also signs the API server's kubelet client certificate).
//!
//! A launcher Pod's `guest-console-log` container logs its instance's serial port (the boot and
//! what consoles showed since, [`super::serial`]), as KubeVirt's `virt-tail` does; its other
//! containers log one line. `tailLines` and `limitBytes` are honoured; `follow` answers what is
//! there and ends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;

use super::Sim;
use super::handler::text;

/// The container KubeVirt adds to a launcher Pod to log the guest's serial console.
pub const CONSOLE_LOG_CONTAINER: &str = "guest-console-log";

/// The listeners of all nodes, on one port.
pub struct Listeners {
    pub port: u16,
    listeners: Vec<TcpListener>,
}

/// Listens on each of `addresses` at `port` (any free port with 0: the first address's).
pub async fn bind(addresses: &[String], port: u16) -> Result<Listeners> {
    let mut port = port;
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listener = TcpListener::bind((address.as_str(), port))
            .await
            .with_context(|| format!("simulated kubelet: listen on {address}:{port}"))?;
        port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(Listeners { port, listeners })
}

/// Serves the nodes' kubelet endpoint until the future is dropped. Without the cluster CA it
/// serves nothing (and says so): logs are then unavailable, the rest of the simulator is not.
pub async fn serve(sim: Arc<Sim>, listeners: Listeners) -> Result<()> {
    let tls = match tls_config(&sim.client, &listeners).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!("Simulated kubelet: no endpoint, so no container logs: {e:#}");
            return std::future::pending().await;
        }
    };
    let tls = Arc::new(tls);
    let serve = listeners.listeners.into_iter().map(|listener| {
        let sim = sim.clone();
        super::tls::serve(listener, tls.clone(), "kubelet", move |req| {
            let sim = sim.clone();
            async move { answer(&sim, req).await }
        })
    });
    futures::future::try_join_all(serve).await?;
    Ok(())
}

/// A self-signed certificate for the nodes' addresses; clients signed by the cluster CA.
async fn tls_config(client: &kube::Client, listeners: &Listeners) -> Result<rustls::ServerConfig> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let mut ca = None;
    for _ in 0..30 {
        ca = config_maps.get_opt("kube-root-ca.crt").await?.and_then(|m| m.data?.get("ca.crt").cloned());
        if ca.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ca = ca.context("the ConfigMap kube-system/kube-root-ca.crt (the cluster CA) did not appear")?;
    let mut names = vec!["localhost".to_string()];
    for l in &listeners.listeners {
        names.push(l.local_addr()?.ip().to_string());
    }
    let serving = rcgen::generate_simple_self_signed(names)?;
    let certs = vec![serving.cert.der().clone()];
    let key = PrivateKeyDer::from_pem_slice(serving.signing_key.serialize_pem().as_bytes())?;
    super::tls::server_config(certs, key, ca.as_bytes())
}

/// A log request: the Pod's namespace and name, the container, `tailLines` and `limitBytes`.
#[derive(Debug, PartialEq, Eq)]
struct LogRequest {
    namespace: String,
    pod: String,
    container: String,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn parse(method: &Method, path: &str, query: Option<&str>) -> Option<LogRequest> {
    if method != Method::GET {
        return None;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else { return None };
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).ok()?;
    let number = |name: &str| query.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.parse().ok());
    Some(LogRequest {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        tail_lines: number("tailLines"),
        limit_bytes: number("limitBytes"),
    })
}

async fn answer(sim: &Sim, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some(request) = parse(req.method(), req.uri().path(), req.uri().query()) else {
        return text(StatusCode::NOT_FOUND, "404 page not found");
    };
    match log(sim, &request).await {
        Ok(Some(body)) => {
            let mut body = super::serial::tail(&body, request.tail_lines).to_vec();
            if let Some(limit) = request.limit_bytes {
                body.truncate(limit);
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
            response
        }
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            &format!("container {:?} in pod {:?} is not available", request.container, request.pod),
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The whole log of a container of a Pod on a simulated node, if there is one.
async fn log(sim: &Sim, request: &LogRequest) -> Result<Option<Vec<u8>>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), &request.namespace);
    let Some(pod) = pods.get_opt(&request.pod).await? else { return Ok(None) };
    let spec = pod.spec.clone().unwrap_or_default();
    let known =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == request.container);
    if !known || !sim.is_our_node(spec.node_name.as_deref()) {
        return Ok(None);
    }
    if request.container != CONSOLE_LOG_CONTAINER {
        let line = format!(
            "{{\"component\":\"virt-launcher\",\"level\":\"info\",\"msg\":\"simulated: container {} runs no process\"}}\n",
            request.container
        );
        return Ok(Some(line.into_bytes()));
    }
    let vmi_uid = pod.labels().get("kubevirt.io/created-by").cloned().unwrap_or_default();
    let vmi_name = pod.annotations().get("kubevirt.io/domain").or_else(|| pod.labels().get("vm.kubevirt.io/name"));
    // A real guest's log is what its serial port printed.
    if let Some(guest) = vmi_name.and_then(|n| sim.guests.get(&format!("{}/{n}", request.namespace))) {
        return Ok(Some(guest.serial().await.into_bytes()));
    }
    let vmis: Api<DynamicObject> =
        Api::namespaced_with(sim.client.clone(), &request.namespace, &super::vmis::resource());
    let vmi = match vmi_name {
        Some(name) => vmis.get_opt(name).await?.filter(|v| v.metadata.uid.as_deref() == Some(vmi_uid.as_str())),
        None => None,
    };
    let mut body = vmi.map(|v| super::serial::boot_of(&v).into_bytes()).unwrap_or_default();
    body.extend_from_slice(&sim.serial.of(&vmi_uid));
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_container_logs_are_served() {
        let r =
            parse(&Method::GET, "/containerLogs/t1/virt-launcher-vps-1-abcde/guest-console-log", Some("tailLines=5"))
                .unwrap();
        assert_eq!(r.namespace, "t1");
        assert_eq!(r.pod, "virt-launcher-vps-1-abcde");
        assert_eq!(r.container, CONSOLE_LOG_CONTAINER);
        assert_eq!((r.tail_lines, r.limit_bytes), (Some(5), None));
        let r = parse(&Method::GET, "/containerLogs/t1/p/c", Some("limitBytes=100&follow=true")).unwrap();
        assert_eq!((r.tail_lines, r.limit_bytes), (None, Some(100)));
        assert!(parse(&Method::POST, "/containerLogs/t1/p/c", None).is_none());
        assert!(parse(&Method::GET, "/exec/t1/p/c", None).is_none());
        assert!(parse(&Method::GET, "/containerLogs/t1/p", None).is_none());
    }

    #[tokio::test]
    async fn every_address_listens_on_one_port() {
        let l = bind(&["127.0.1.1".into(), "127.0.1.2".into()], 0).await.unwrap();
        assert_ne!(l.port, 0);
        let ports: Vec<u16> = l.listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports, vec![l.port, l.port]);
    }
}
