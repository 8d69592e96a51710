//! What every part shares of logs and metrics: log lines as human text or one JSON object
//! per line (colour only on a terminal: a file or a pod log gets none; the level from
//! `RUST_LOG`), the build-info metric, the count of the process's writes to the Kubernetes
//! API ([`counting_client`]) and the content type of OpenMetrics text.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-01T10:00:00Z  INFO span{field=..}: message key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`, `span`, `spans`.
    Json,
}

/// Installs the process's log subscriber, writing to standard error. `default_filter` applies
/// when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

/// The content type of the OpenMetrics text that `prometheus_client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers `build_info{version="..."} 1` (prefixed by the registry's prefix).
pub fn register_build_info(registry: &mut prometheus_client::registry::Registry) {
    let info =
        prometheus_client::metrics::family::Family::<BuildLabels, prometheus_client::metrics::gauge::Gauge>::default();
    info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
    registry.register("build_info", "The running build: its version", info);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct WriteLabels {
    method: String,
    /// `group/resource[/subresource]` (`pods` for the core group): names from this code, so a
    /// bounded set.
    resource: String,
}

type WriteFamily =
    prometheus_client::metrics::family::Family<WriteLabels, prometheus_client::metrics::counter::Counter>;

/// The process's write requests to the Kubernetes API through [`counting_client`]s.
static KUBE_WRITES: std::sync::LazyLock<WriteFamily> = std::sync::LazyLock::new(WriteFamily::default);

/// A client of `config` that counts its write requests (every method but GET, HEAD and
/// OPTIONS) by method and resource, for [`register_kube_writes`].
pub fn counting_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(|req: http::Request<kube::client::Body>| {
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
            let labels = WriteLabels { method: req.method().to_string(), resource: resource_of(req.uri().path()) };
            KUBE_WRITES.get_or_create(&labels).inc();
        }
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&count).build())
}

/// Registers `kube_write_requests_total{method, resource}` (prefixed by the registry's
/// prefix): what this process's [`counting_client`]s wrote.
pub fn register_kube_writes(registry: &mut prometheus_client::registry::Registry) {
    registry.register(
        "kube_write_requests",
        "Write requests to the Kubernetes API by method and resource",
        KUBE_WRITES.clone(),
    );
}

/// `group/resource[/subresource]` of an API path (`pods/status` for the core group).
fn resource_of(path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return "other".into(),
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [r] | [r, _] => r.to_string(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
        [] => return "other".into(),
    };
    if group.is_empty() { resource } else { format!("{group}/{resource}") }
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn writes_are_counted_by_their_resource() {
        assert_eq!(resource_of("/api/v1/namespaces/acme/pods"), "pods");
        assert_eq!(resource_of("/api/v1/namespaces/acme/pods/p/status"), "pods/status");
        assert_eq!(resource_of("/api/v1/namespaces"), "namespaces");
        assert_eq!(resource_of("/api/v1/namespaces/acme"), "namespaces");
        assert_eq!(
            resource_of("/apis/vps.org/v1alpha1/namespaces/acme/vpsservers/srv-1/status"),
            "vps.org/vpsservers/status"
        );
        assert_eq!(resource_of("/apis/events.k8s.io/v1/namespaces/acme/events"), "events.k8s.io/events");
        assert_eq!(
            resource_of("/apis/rbac.authorization.k8s.io/v1/clusterroles/x"),
            "rbac.authorization.k8s.io/clusterroles"
        );
        assert_eq!(resource_of("/metrics"), "other");
    }
}
