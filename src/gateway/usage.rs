//! A server's `resource_usage`, from Prometheus (`--prometheus-url`) over KubeVirt's metrics
//! of its instance (virt-handler's `kubevirt_vmi_*`, labelled `namespace` and `name`):
//!
//! - `cpu_percent`: CPU time over the last 5 minutes (or since the instance's first sample,
//!   when it is younger: Prometheus' `rate` would divide by the whole 5 minutes), as a
//!   percentage of the plan's vCPUs;
//! - `memory_used` (MiB): `available - usable`, KubeVirt's `kubevirt_vmi_memory_used_bytes`;
//! - `disk_used` (GiB): the guest's filesystems' used bytes;
//! - `bandwidth_used` (GiB): received and transmitted bytes since the month began (UTC).
//!
//! Each query has [`QUERY_TIMEOUT`]; an answer (or its absence) is kept [`KEPT`] per server.
//! `null` when Prometheus is not configured, does not answer in time, or lacks any of the four
//! (a server whose instance has not run long enough): never invented numbers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use kube::ResourceExt;

use super::view::ResourceUsage;
use crate::api::VpsServer;

/// The longest the four queries of one server may take together.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(800);
/// The longest the range queries of one history request may take together.
pub const HISTORY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer is reused.
pub const KEPT: Duration = Duration::from_secs(5);
/// Answers kept at most (older ones go first when it is reached).
const MAX_KEPT: usize = 10_000;

const MIB: f64 = 1048576.0;
const GIB: f64 = 1073741824.0;

/// An instance (namespace, name) and when its usage was asked for, with the answer.
type Kept = HashMap<(String, String), (Instant, Option<ResourceUsage>)>;

/// Prometheus' HTTP API, and the answers of the last seconds.
pub struct Usage {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
    kept: Mutex<Kept>,
}

impl Usage {
    /// Prometheus at `url` (`http://host:port`, with an optional path prefix).
    pub fn new(url: &str) -> Result<Usage> {
        let uri: http::Uri = url.parse().with_context(|| format!("--prometheus-url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            bail!("--prometheus-url must be http://HOST:PORT (Prometheus' own listener), not {url:?}");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(QUERY_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Usage { base: url.trim_end_matches('/').to_string(), client, kept: Mutex::new(HashMap::new()) })
    }

    /// The usage of the instance `name` in `namespace`, whose plan has `vcpus`.
    pub async fn of(&self, namespace: &str, name: &str, vcpus: i32) -> Option<ResourceUsage> {
        let key = (namespace.to_string(), name.to_string());
        if let Some((at, usage)) = self.kept.lock().unwrap().get(&key)
            && at.elapsed() < KEPT
        {
            return usage.clone();
        }
        let usage = match tokio::time::timeout(QUERY_TIMEOUT, self.query_all(namespace, name, vcpus)).await {
            Ok(Ok(usage)) => usage,
            Ok(Err(e)) => {
                tracing::debug!(namespace, name, "No resource usage: {e:#}");
                None
            }
            Err(_) => {
                tracing::debug!(namespace, name, "No resource usage: Prometheus did not answer in time");
                None
            }
        };
        let mut kept = self.kept.lock().unwrap();
        if kept.len() >= MAX_KEPT {
            kept.retain(|_, (at, _)| at.elapsed() < KEPT);
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        kept.insert(key, (Instant::now(), usage.clone()));
        usage
    }

    async fn query_all(&self, namespace: &str, name: &str, vcpus: i32) -> Result<Option<ResourceUsage>> {
        let [cpu, memory, disk, bandwidth] = queries(namespace, name, month_seconds(jiff::Timestamp::now()));
        let (cpu, memory, disk, bandwidth) =
            futures::try_join!(self.query(&cpu), self.query(&memory), self.query(&disk), self.query(&bandwidth))?;
        let (Some(cpu), Some(memory), Some(disk), Some(bandwidth)) =
            (per_second(&cpu)?, sample(&memory)?, sample(&disk)?, sample(&bandwidth)?)
        else {
            return Ok(None);
        };
        Ok(Some(ResourceUsage {
            cpu_percent: (100.0 * cpu / f64::from(vcpus.max(1)) * 10.0).round() / 10.0,
            memory_used: (memory / MIB).round() as i64,
            disk_used: (disk / GIB).round() as i64,
            bandwidth_used: (bandwidth / GIB).round() as i64,
        }))
    }

    /// The time series of one kind of metric of the instance `name` in `namespace`, from
    /// `start` to `end` every `step` seconds (Prometheus' range queries, [`HISTORY_TIMEOUT`]
    /// together): by series name, the `[timestamp, "value"]` points.
    pub async fn history(
        &self,
        namespace: &str,
        name: &str,
        vcpus: i32,
        kind: &str,
        (start, end, step): (i64, i64, i64),
    ) -> Result<Vec<(String, Vec<serde_json::Value>)>> {
        let m = selector(namespace, name);
        let window = step.max(60);
        let rate = |metric: &str| format!("sum(rate({metric}{{{m}}}[{window}s]))");
        let series: Vec<(&str, String)> = match kind {
            "cpu" => {
                vec![("cpu", format!("100 * {} / {}", rate("kubevirt_vmi_cpu_usage_seconds_total"), vcpus.max(1)))]
            }
            "memory" => vec![(
                "memory.used",
                format!("sum(kubevirt_vmi_memory_available_bytes{{{m}}} - kubevirt_vmi_memory_usable_bytes{{{m}}})"),
            )],
            "disk" => vec![("disk.used", format!("sum(kubevirt_vmi_filesystem_used_bytes{{{m}}})"))],
            "network" => vec![
                ("network.in", rate("kubevirt_vmi_network_receive_bytes_total")),
                ("network.out", rate("kubevirt_vmi_network_transmit_bytes_total")),
            ],
            other => bail!("no metrics of type {other:?}"),
        };
        let range = |query: String| async move {
            let params =
                [("query", query), ("start", start.to_string()), ("end", end.to_string()), ("step", step.to_string())];
            let answer = self.get("query_range", &serde_urlencoded::to_string(params)?).await?;
            let points = result(&answer)?.first().and_then(|s| s["values"].as_array().cloned()).unwrap_or_default();
            anyhow::Ok(points)
        };
        let answers = tokio::time::timeout(
            HISTORY_TIMEOUT,
            futures::future::try_join_all(series.iter().map(|(_, q)| range(q.clone()))),
        )
        .await
        .context("Prometheus did not answer in time")??;
        Ok(series.into_iter().map(|(n, _)| n.to_string()).zip(answers).collect())
    }

    /// The answer of an instant query.
    async fn query(&self, query: &str) -> Result<serde_json::Value> {
        self.get("query", &serde_urlencoded::to_string([("query", query)])?).await
    }

    /// `GET /api/v1/{endpoint}?{encoded}` of Prometheus' HTTP API.
    async fn get(&self, endpoint: &str, encoded: &str) -> Result<serde_json::Value> {
        let uri: http::Uri = format!("{}/api/v1/{endpoint}?{encoded}", self.base).parse()?;
        let response = self.client.get(uri).await.context("Prometheus did not answer")?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("Prometheus answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// The instance of server `s` (namespace, name) and its plan's vCPUs, as the metrics name it.
pub fn instance_of(state: &super::AppState, s: &VpsServer) -> (String, String, i32) {
    let vcpus = state.caches.plan_by_name(&s.spec.plan).map(|p| p.spec.vcpus).unwrap_or(1);
    let name = s.status.as_ref().and_then(|st| st.vm_name.clone()).unwrap_or_else(|| s.name_any());
    (s.namespace().unwrap_or_default(), name, vcpus)
}

/// The resource usage of server `s`; `None` without Prometheus or its data.
pub async fn of_server(state: &super::AppState, s: &VpsServer) -> Option<ResourceUsage> {
    let usage = state.usage.as_ref()?;
    let (namespace, name, vcpus) = instance_of(state, s);
    usage.of(&namespace, &name, vcpus).await
}

/// A rendered detail with its `resource_usage` set. The key is found as the serializer wrote
/// it: inside a JSON string a quote is escaped, so the key cannot be mistaken for a value.
pub fn spliced(detail: &[u8], usage: &ResourceUsage) -> Vec<u8> {
    const NULL: &[u8] = b"\"resource_usage\":null";
    let Some(at) = detail.windows(NULL.len()).position(|w| w == NULL) else { return detail.to_vec() };
    let value = serde_json::to_vec(usage).expect("usage serializes");
    let mut out = Vec::with_capacity(detail.len() + value.len());
    out.extend_from_slice(&detail[..at]);
    out.extend_from_slice(b"\"resource_usage\":");
    out.extend_from_slice(&value);
    out.extend_from_slice(&detail[at + NULL.len()..]);
    out
}

/// The four PromQL queries of an instance: its CPU seconds' samples of the last 5 minutes,
/// its memory in use and disk used (bytes), and its traffic over the `month` seconds the month
/// has lasted (bytes).
fn queries(namespace: &str, name: &str, month: u64) -> [String; 4] {
    let m = selector(namespace, name);
    [
        format!("kubevirt_vmi_cpu_usage_seconds_total{{{m}}}[5m]"),
        format!("sum(kubevirt_vmi_memory_available_bytes{{{m}}} - kubevirt_vmi_memory_usable_bytes{{{m}}})"),
        format!("sum(kubevirt_vmi_filesystem_used_bytes{{{m}}})"),
        format!(
            "sum(increase(kubevirt_vmi_network_receive_bytes_total{{{m}}}[{month}s])) + sum(increase(kubevirt_vmi_network_transmit_bytes_total{{{m}}}[{month}s]))"
        ),
    ]
}

/// The label matchers of an instance's series.
fn selector(namespace: &str, name: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("namespace=\"{}\",name=\"{}\"", quote(namespace), quote(name))
}

/// Seconds since the month of `now` began (UTC), a minute at least.
fn month_seconds(now: jiff::Timestamp) -> u64 {
    let date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let start = date.first_of_month().to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(now);
    now.duration_since(start).as_secs().max(60) as u64
}

/// The result of a successful answer.
fn result(answer: &serde_json::Value) -> Result<&Vec<serde_json::Value>> {
    if answer["status"] != "success" {
        bail!("Prometheus refused the query: {}", answer["error"]);
    }
    answer["data"]["result"].as_array().context("no result")
}

/// The one sample of a vector answer.
fn sample(answer: &serde_json::Value) -> Result<Option<f64>> {
    let result = result(answer)?;
    let Some(first) = result.first() else { return Ok(None) };
    let value = first["value"][1].as_str().context("no value")?.parse::<f64>()?;
    Ok(value.is_finite().then_some(value))
}

/// How fast the counters of a matrix answer grew, per second, summed over its series: each
/// series' increase (a drop is a reset: the counter started again from zero) over the time its
/// samples span. `None` without a series of two samples.
fn per_second(answer: &serde_json::Value) -> Result<Option<f64>> {
    let mut total = None;
    for series in result(answer)? {
        let samples: Vec<(f64, f64)> = series["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
            .collect();
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else { continue };
        if last.0 <= first.0 {
            continue;
        }
        let increase: f64 = samples.windows(2).map(|w| if w[1].1 >= w[0].1 { w[1].1 - w[0].1 } else { w[1].1 }).sum();
        *total.get_or_insert(0.0) += increase / (last.0 - first.0);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn the_queries_select_the_instance_and_quote_its_labels() {
        let [cpu, memory, disk, bandwidth] = queries("t1", "vps\"x", 3600);
        assert_eq!(cpu, "kubevirt_vmi_cpu_usage_seconds_total{namespace=\"t1\",name=\"vps\\\"x\"}[5m]");
        assert!(
            memory.contains("kubevirt_vmi_memory_available_bytes{")
                && memory.contains("- kubevirt_vmi_memory_usable_bytes{")
        );
        assert!(disk.starts_with("sum(kubevirt_vmi_filesystem_used_bytes{"));
        assert!(bandwidth.contains("receive_bytes_total{namespace=\"t1\",name=\"vps\\\"x\"}[3600s]"));
        assert!(bandwidth.contains("transmit_bytes_total"));
    }

    #[test]
    fn the_month_begins_on_its_first_day() {
        let now: jiff::Timestamp = "2026-12-02T01:00:00Z".parse().unwrap();
        assert_eq!(month_seconds(now), 25 * 3600);
        let first: jiff::Timestamp = "2026-12-01T00:00:10Z".parse().unwrap();
        assert_eq!(month_seconds(first), 60);
    }

    #[test]
    fn an_answer_has_one_sample_or_none() {
        let one = json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "12.5"]}]}});
        assert_eq!(sample(&one).unwrap(), Some(12.5));
        let none = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(sample(&none).unwrap(), None);
        let nan = json!({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1.0, "NaN"]}]}});
        assert_eq!(sample(&nan).unwrap(), None);
        assert!(sample(&json!({"status": "error", "error": "bad"})).is_err());
    }

    #[test]
    fn counters_grow_per_second_over_the_time_their_samples_span_and_survive_resets() {
        let matrix = |values: Value| json!({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}});
        let steady = matrix(json!([[100.0, "0"], [105.0, "5"], [110.0, "10"]]));
        assert_eq!(per_second(&steady).unwrap(), Some(1.0));
        // A reboot: the counter started again at zero and reached 4.
        let reset = matrix(json!([[100.0, "0"], [105.0, "5"], [110.0, "4"]]));
        assert_eq!(per_second(&reset).unwrap(), Some(0.9));
        assert_eq!(per_second(&matrix(json!([[100.0, "3"]]))).unwrap(), None);
        let empty = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert_eq!(per_second(&empty).unwrap(), None);
    }

    #[test]
    fn usage_takes_the_place_of_the_null_and_nothing_else() {
        let usage = ResourceUsage { cpu_percent: 12.5, memory_used: 2048, disk_used: 20, bandwidth_used: 3 };
        let detail = br#"{"name":"a\"resource_usage\":null","resource_usage":null,"id":1}"#;
        let out: Value = serde_json::from_slice(&spliced(detail, &usage)).unwrap();
        assert_eq!(out["name"], "a\"resource_usage\":null");
        assert_eq!(
            out["resource_usage"],
            json!({"cpu_percent": 12.5, "memory_used": 2048, "disk_used": 20, "bandwidth_used": 3})
        );
        assert_eq!(out["id"], 1);
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert!(Usage::new("http://127.0.0.1:9090").is_ok());
        assert!(Usage::new("https://prometheus:9090").is_err());
        assert!(Usage::new("prometheus:9090").is_err());
    }
}
