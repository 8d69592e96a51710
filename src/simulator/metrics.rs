//! virt-handler's metrics of the instances it runs, as KubeVirt v1.7 names and labels them
//! (`pkg/monitoring/metrics/virt-handler/domainstats`): per running instance on a simulated
//! node, the CPU time (`kubevirt_vmi_cpu_usage_seconds_total`), the memory the guest sees and
//! can reclaim (`kubevirt_vmi_memory_available_bytes`, `..._usable_bytes`, `..._domain_bytes`:
//! KubeVirt's own recording rule makes `kubevirt_vmi_memory_used_bytes` their difference), the
//! root filesystem (`kubevirt_vmi_filesystem_capacity_bytes`, `..._used_bytes`) and the traffic
//! of each interface (`kubevirt_vmi_network_receive_bytes_total`, `..._transmit_bytes_total`),
//! labelled `node`, `namespace`, `name` and `kubernetes_vmi_label_*` for the instance's labels.
//! Served at `http://127.0.0.1:PORT/metrics` for Prometheus to scrape.
//!
//! The load is plausible and steerable: annotations on the VM (the operator copies the
//! server's `simulator.vps.org/` ones) set the CPU busy fraction of its vCPUs
//! ([`CPU_LOAD`], default 0.05), the fraction of memory in use ([`MEMORY_LOAD`], 0.25), of the
//! disk ([`DISK_LOAD`], 0.1), and the traffic each way in bytes per second ([`NETWORK_RATE`],
//! 1000). Counters grow from the instance's first scrape by load × time, so a changed load
//! changes their rate, never makes them go back.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;

use super::Sim;
use super::handler::text;

pub const CPU_LOAD: &str = "simulator.vps.org/cpu-load";
pub const MEMORY_LOAD: &str = "simulator.vps.org/memory-load";
pub const DISK_LOAD: &str = "simulator.vps.org/disk-load";
pub const NETWORK_RATE: &str = "simulator.vps.org/network-bytes-per-second";

/// The counters of one instance since its first scrape.
struct Counters {
    at: Instant,
    cpu_seconds: f64,
    network_bytes: f64,
}

/// Every instance's counters, by uid.
#[derive(Default)]
pub struct Meters(Mutex<HashMap<String, Counters>>);

/// What one instance reports.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: String,
    interface: String,
    cpu_seconds: f64,
    memory: f64,
    usable: f64,
    disk_capacity: f64,
    disk_used: f64,
    network_bytes: f64,
}

/// Serves `/metrics` on 127.0.0.1 at `port` until the future is dropped.
pub async fn run(sim: Arc<Sim>, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("virt-handler metrics: listen on 127.0.0.1:{port}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let sim = sim.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let sim = sim.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        return Ok::<_, std::convert::Infallible>(text(StatusCode::NOT_FOUND, "not found"));
                    }
                    Ok(match scrape(&sim).await {
                        Ok(body) => {
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            r
                        }
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                    })
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The exposition of every running instance on a simulated node.
async fn scrape(sim: &Sim) -> Result<String> {
    let api: Api<DynamicObject> = Api::all_with(sim.client.clone(), &super::vmis::resource());
    let vmis = api.list(&ListParams::default()).await?;
    let now = Instant::now();
    let mut samples = Vec::new();
    let mut meters = sim.meters.0.lock().unwrap();
    let mut seen = std::collections::HashSet::new();
    for vmi in &vmis.items {
        let status = &vmi.data["status"];
        if status["phase"] != "Running" || !sim.is_our_node(status["nodeName"].as_str()) {
            continue;
        }
        let (Some(uid), Some(ns)) = (vmi.uid(), vmi.namespace()) else { continue };
        let name = vmi.name_any();
        let vm = sim.vms.get(&ObjectRef::new(&name).within(&ns));
        let load = |key: &str, default: f64| {
            vm.as_ref()
                .and_then(|vm| vm.annotations().get(key).and_then(|v| v.parse::<f64>().ok()))
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(default)
        };
        let vcpus = vmi.data["spec"]["domain"]["cpu"]["cores"].as_f64().unwrap_or(1.0);
        let memory = quantity(vmi.data["spec"]["domain"]["memory"]["guest"].as_str()).unwrap_or(1024.0 * 1048576.0);
        let disk_capacity = vm
            .as_ref()
            .and_then(|vm| {
                let templates = serde_json::to_value(&vm.spec).ok()?;
                let size = templates["dataVolumeTemplates"][0]["spec"]["storage"]["resources"]["requests"]["storage"]
                    .as_str()
                    .map(String::from);
                quantity(size.as_deref())
            })
            .unwrap_or(10.0 * 1073741824.0);
        let counters = meters.entry(uid.clone()).or_insert(Counters { at: now, cpu_seconds: 0.0, network_bytes: 0.0 });
        let elapsed = now.duration_since(counters.at).as_secs_f64();
        counters.cpu_seconds += load(CPU_LOAD, 0.05).min(1.0) * vcpus * elapsed;
        counters.network_bytes += load(NETWORK_RATE, 1000.0) * elapsed;
        counters.at = now;
        seen.insert(uid);
        let interface = vmi.data["spec"]["domain"]["devices"]["interfaces"][0]["name"].as_str().unwrap_or("default");
        samples.push(Sample {
            labels: labels(vmi, status["nodeName"].as_str().unwrap_or_default()),
            interface: interface.to_string(),
            cpu_seconds: counters.cpu_seconds,
            memory,
            usable: memory * (1.0 - load(MEMORY_LOAD, 0.25).min(1.0)),
            disk_capacity,
            disk_used: disk_capacity * load(DISK_LOAD, 0.1).min(1.0),
            network_bytes: counters.network_bytes,
        });
    }
    meters.retain(|uid, _| seen.contains(uid));
    Ok(exposition(&samples))
}

/// `node`, `namespace`, `name` and the instance's labels, as virt-handler labels its series.
fn labels(vmi: &DynamicObject, node: &str) -> String {
    let mut pairs = vec![
        ("node".to_string(), node.to_string()),
        ("namespace".to_string(), vmi.namespace().unwrap_or_default()),
        ("name".to_string(), vmi.name_any()),
    ];
    for (k, v) in vmi.labels() {
        let key: String = k.chars().map(|c| if matches!(c, '.' | '/' | '-') { '_' } else { c }).collect();
        pairs.push((format!("kubernetes_vmi_label_{key}"), v.clone()));
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect::<Vec<_>>()
        .join(",")
}

fn exposition(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&Sample) -> (String, f64)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in samples {
            let (extra, v) = value(s);
            let _ = writeln!(out, "{name}{{{}{extra}}} {v}", s.labels);
        }
    };
    family(
        "kubevirt_vmi_cpu_usage_seconds_total",
        "counter",
        "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).",
        &|s| (String::new(), s.cpu_seconds),
    );
    family(
        "kubevirt_vmi_memory_domain_bytes",
        "gauge",
        "The amount of memory in bytes allocated to the domain.",
        &|s| (String::new(), s.memory),
    );
    family("kubevirt_vmi_memory_available_bytes", "gauge", "Amount of usable memory as seen by the domain.", &|s| {
        (String::new(), s.memory)
    });
    family(
        "kubevirt_vmi_memory_usable_bytes",
        "gauge",
        "The amount of memory which can be reclaimed by balloon without pushing the guest system to swap.",
        &|s| (String::new(), s.usable),
    );
    let fs = ",disk_name=\"vda1\",mount_point=\"/\",file_system_type=\"ext4\"".to_string();
    family("kubevirt_vmi_filesystem_capacity_bytes", "gauge", "Total disk capacity of the filesystem.", &|s| {
        (fs.clone(), s.disk_capacity)
    });
    family("kubevirt_vmi_filesystem_used_bytes", "gauge", "Used disk space of the filesystem.", &|s| {
        (fs.clone(), s.disk_used)
    });
    family("kubevirt_vmi_network_receive_bytes_total", "counter", "Total network traffic received in bytes.", &|s| {
        (format!(",interface=\"{}\"", s.interface), s.network_bytes)
    });
    family(
        "kubevirt_vmi_network_transmit_bytes_total",
        "counter",
        "Total network traffic transmitted in bytes.",
        &|s| (format!(",interface=\"{}\"", s.interface), s.network_bytes),
    );
    out
}

/// A quantity in bytes, as the operator writes sizes (`4096Mi`, `80Gi`).
fn quantity(q: Option<&str>) -> Option<f64> {
    crate::kubevirt::quantity_bytes(q?.trim()).map(|b| b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_kubevirts_names_and_labels() {
        let s = Sample {
            labels: "node=\"sim-1\",namespace=\"t1\",name=\"vps-1\"".into(),
            interface: "default".into(),
            cpu_seconds: 1.5,
            memory: 100.0,
            usable: 75.0,
            disk_capacity: 1000.0,
            disk_used: 100.0,
            network_bytes: 42.0,
        };
        let text = exposition(&[s]);
        assert!(text.contains("# TYPE kubevirt_vmi_cpu_usage_seconds_total counter\n"));
        assert!(
            text.contains("kubevirt_vmi_cpu_usage_seconds_total{node=\"sim-1\",namespace=\"t1\",name=\"vps-1\"} 1.5\n")
        );
        assert!(text.contains("kubevirt_vmi_memory_usable_bytes{node=\"sim-1\",namespace=\"t1\",name=\"vps-1\"} 75\n"));
        assert!(text.contains("kubevirt_vmi_network_transmit_bytes_total{node=\"sim-1\",namespace=\"t1\",name=\"vps-1\",interface=\"default\"} 42\n"));
        assert!(text.contains("mount_point=\"/\""));
    }
}
