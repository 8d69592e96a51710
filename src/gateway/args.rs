//! The flags of `vps-operator gateway` ([`GatewayArgs`]), which are also the settings of a
//! gateway started in-process.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Flags of `vps-operator gateway`, and the settings of a gateway. [`Default`] is what the
/// command line gives with no flags.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "VPS_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of `/metrics` (apart from the API, which customers reach).
    #[arg(long, env = "VPS_GATEWAY_METRICS", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Log one `info` line per request (request id, method, route, status, milliseconds).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Namespace of the gateway's own objects: token Secrets, id counters, idempotency records.
    #[arg(long, env = "VPS_SYSTEM_NAMESPACE", default_value = crate::tokens::DEFAULT_SYSTEM_NAMESPACE)]
    pub system_namespace: String,
    /// Longest time one request may take, in seconds.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Requests per second one API token may make, sustained (0: no limit).
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit: f64,
    /// Requests one API token may make at once, beyond the sustained rate.
    #[arg(long, default_value_t = 100)]
    pub rate_burst: u32,
    /// A connection must deliver a whole request head within this time, whether it is new or
    /// idle between requests; it is closed otherwise.
    #[arg(long, value_parser = crate::flags::duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// SSH keys one account may have.
    #[arg(long, default_value_t = 100)]
    pub max_ssh_keys: usize,
    /// On SIGTERM, keep serving this long with /readyz failing (so Services stop sending new
    /// connections) before closing the listener: a rolling update loses no request.
    #[arg(long, value_parser = crate::flags::duration, default_value = "5s")]
    pub shutdown_delay: Duration,
    /// Prometheus (`http://HOST:PORT`) holding KubeVirt's metrics of the instances: servers'
    /// `resource_usage` comes from it ([`usage`]). Unset: `resource_usage` is `null`.
    #[arg(long, env = "VPS_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        crate::flags::defaults()
    }
}
