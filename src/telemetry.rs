//! What every part shares of logs and metrics: log lines as human text or one JSON object
//! per line (colour only on a terminal: a file or a pod log gets none; the level from
//! `RUST_LOG`), the build-info metric and the content type of OpenMetrics text.

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
