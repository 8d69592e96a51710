//! Prometheus beside the control plane (tests and `vps-operator local`): built from its Go
//! module by `scripts/build-control-plane.sh`, scraping static targets (the node simulator's
//! virt-handler metrics) every [`SCRAPE_INTERVAL`], as a cluster's Prometheus scrapes
//! virt-handler. It keeps its data under the control plane's folder, a day at most.

use anyhow::{Context, Result};

use super::ControlPlane;
use super::process::{Supervised, free_port, wait_for_port};

/// How often Prometheus scrapes (a cluster's is usually 30 s; the tests want data soon).
pub const SCRAPE_INTERVAL: &str = "5s";

/// Its configuration: one job, `kubevirt`, scraping `targets` (`host:port`).
pub fn config(targets: &[String]) -> String {
    let targets = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n  - job_name: kubevirt\n    static_configs:\n      - targets: [{targets}]\n"
    )
}

impl ControlPlane {
    /// Starts Prometheus scraping `targets`, supervised with the control plane; returns its
    /// URL (`http://127.0.0.1:PORT`) once it is ready. Fails when it was not built.
    pub async fn start_prometheus(&mut self, targets: &[String]) -> Result<String> {
        let program = self
            .binaries()
            .prometheus()
            .context("Prometheus was not built (scripts/build-control-plane.sh builds it)")?;
        let dir = self.dir().join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config(targets))?;
        let port = free_port()?;
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            "--storage.tsdb.retention.time=1d".into(),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".into(),
        ];
        let log = self.dir().join("prometheus.log");
        self.adopt_supervised(Supervised::spawn("prometheus", &program, &args, &log)?);
        wait_for_port(port).await.context("Prometheus did not listen")?;
        Ok(format!("http://127.0.0.1:{port}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_scrapes_each_target() {
        let c = super::config(&["127.0.0.1:9001".into(), "127.0.0.1:9002".into()]);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&c).unwrap();
        let targets = &parsed["scrape_configs"][0]["static_configs"][0]["targets"];
        assert_eq!(targets.as_sequence().unwrap().len(), 2);
        assert_eq!(parsed["global"]["scrape_interval"].as_str(), Some("5s"));
    }
}
