//! The operator's flags ([`OperatorConfig`]): its tunables, and the billing clock that
//! `--billing-clock-scale` and `--billing-clock-epoch` give.

use std::time::Duration;

/// Tunables of the operator. [`Default`] is what the command line gives with no flags.
#[derive(Clone, Debug, clap::Args)]
pub struct OperatorConfig {
    /// Namespace of the id counters (shared with the gateway).
    #[arg(long, env = "VPS_SYSTEM_NAMESPACE", default_value = "vps-system")]
    pub system_namespace: String,
    /// Time between scheduled backups.
    #[arg(long, value_parser = crate::flags::duration, default_value = "24h")]
    pub backup_interval: Duration,
    /// How long KubeVirt may take for one backup snapshot before it counts as failed.
    #[arg(long, value_parser = crate::flags::duration, default_value = "5m")]
    pub backup_deadline: Duration,
    /// Backups kept per server.
    #[arg(long, default_value_t = 7)]
    pub backup_keep: usize,
    /// How soon to look again at a server whose plan, image, location or key is missing.
    #[arg(long, value_parser = crate::flags::duration, default_value = "10s")]
    pub reference_retry: Duration,
    /// Servers reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// How long a deleted server's addresses are kept from other servers.
    #[arg(long, value_parser = crate::flags::duration, default_value = "1h")]
    pub address_cooldown: Duration,
    /// How often claims of servers gone without releasing them are looked for and released.
    #[arg(long, value_parser = crate::flags::duration, default_value = "10m")]
    pub address_sweep: Duration,
    /// How long finished actions (`VpsAction`) are kept.
    #[arg(long, value_parser = crate::flags::duration, default_value = "7d")]
    pub action_retention: Duration,
    /// Timeout of every API call the reconciler makes.
    #[arg(long, value_parser = crate::flags::duration, default_value = "15s")]
    pub api_timeout: Duration,
    /// The first wait of a failing reconcile; it doubles with each failure in a row.
    #[arg(long, value_parser = crate::flags::duration, default_value = "500ms")]
    pub retry_base: Duration,
    /// The longest wait of a failing reconcile.
    #[arg(long, value_parser = crate::flags::duration, default_value = "60s")]
    pub retry_cap: Duration,
    /// Copy the servers' failure-injection annotations onto their VMs (only where the node
    /// simulator plays the hosts).
    #[arg(long)]
    pub simulator_annotations: bool,
    /// Elect a leader among replicas (the Lease `vps-operator` in the system namespace): only
    /// the leader reconciles.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// This replica's name in the lease (the pod's name in a Deployment); the host name and
    /// a random suffix when unset.
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
    /// Billing time runs this many times faster than real time (tests: an hour of billing in
    /// seconds); 1 is real time.
    #[arg(long, default_value_t = 1, hide = true)]
    pub billing_clock_scale: u32,
    /// From when billing time runs faster (every replica must be given the same).
    #[arg(long, hide = true)]
    pub billing_clock_epoch: Option<jiff::Timestamp>,
}

impl OperatorConfig {
    /// The billing clock these flags give.
    pub fn billing_clock(&self) -> crate::billing::Clock {
        match self.billing_clock_epoch {
            Some(epoch) if self.billing_clock_scale > 1 => {
                crate::billing::Clock { epoch, scale: self.billing_clock_scale }
            }
            _ => crate::billing::Clock::real(),
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        crate::flags::defaults()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_flags_defaults() {
        let config = OperatorConfig::default();
        assert_eq!((config.backup_interval, config.backup_keep), (Duration::from_secs(86_400), 7));
        assert_eq!((config.retry_base, config.retry_cap), (Duration::from_millis(500), Duration::from_secs(60)));
        assert_eq!(config.system_namespace, "vps-system");
        assert!(config.leader_elect);
    }
}
