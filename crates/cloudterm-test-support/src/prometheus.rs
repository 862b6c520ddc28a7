//! `PrometheusServer`: a real Prometheus on loopback that scrapes one target every second, for
//! the test that proves cloudterm's `/metrics` is something Prometheus ingests and can query.
//!
//! The binary is found through `CLOUDTERM_PROMETHEUS_BIN`, else `PATH` (Debian's `prometheus`
//! package, which `.ci/run` installs). Without it, [`PrometheusServer::start`] skips through
//! [`crate::skip_unless`], which fails under `CI=true`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;

/// How long Prometheus may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Prometheus scraping one target.
pub struct PrometheusServer {
    child: Child,
    _dir: TempDir,
    url: String,
}

impl PrometheusServer {
    /// The `prometheus` binary, if this machine has one.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("CLOUDTERM_PROMETHEUS_BIN").filter(|value| !value.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|p| p.is_file())
    }

    /// Starts Prometheus scraping `http://{target}/metrics` every second and waits until it is
    /// ready. `None` when there is no binary and the test should stop (a panic under `CI=true`).
    pub async fn start(target: SocketAddr) -> Option<PrometheusServer> {
        let binary = Self::binary();
        if crate::skip_unless(binary.is_some(), "no prometheus binary (apt-get install prometheus)") {
            return None;
        }
        let binary = binary?;
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&binary, target).await {
                Ok(server) => return Some(server),
                Err(err) => last_error = err,
            }
        }
        panic!("prometheus did not start: {last_error}");
    }

    async fn try_start(binary: &std::path::Path, target: SocketAddr) -> Result<PrometheusServer, String> {
        let dir = tempfile::tempdir().map_err(|err| format!("tempdir: {err}"))?;
        let port = free_port()?;
        let config = dir.path().join("prometheus.yml");
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: cloudterm\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(&config, text).map_err(|err| format!("write config: {err}"))?;
        let log = std::fs::File::create(dir.path().join("prometheus.log")).map_err(|err| format!("log: {err}"))?;
        let log_err = log.try_clone().map_err(|err| format!("clone log: {err}"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
        let mut server = PrometheusServer { child, _dir: dir, url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server._dir.path().join("prometheus.log")).unwrap_or_default();
                return Err(format!("prometheus exited with {status}: {log}"));
            }
            let ready = client.get(format!("{}/-/ready", server.url)).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err("not ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its HTTP API base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs an instant PromQL query until it returns at least one series or `timeout` passes;
    /// returns the `data.result` array (empty on timeout).
    pub async fn query_until_found(&self, promql: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let answer = client.get(format!("{}/api/v1/query", self.url)).query(&[("query", promql)]).send().await;
            if let Ok(response) = answer {
                if let Ok(body) = response.json::<serde_json::Value>().await {
                    if let Some(result) = body["data"]["result"].as_array().filter(|r| !r.is_empty()) {
                        return result.clone();
                    }
                }
            }
            if Instant::now() > deadline {
                return Vec::new();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
