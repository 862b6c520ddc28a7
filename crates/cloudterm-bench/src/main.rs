//! `cloudterm-bench`: measures a running cloudterm server beside its peers, and prints one
//! Markdown table row per measurement.

mod pause;
mod terminal;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "cloudterm-bench")]
struct Cli {
    /// Server base URL.
    #[arg(long, env = "CLOUDTERM_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Bearer token.
    #[arg(long, env = "CLOUDTERM_TOKEN", default_value = "")]
    token: String,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Sandbox create → first exec of `true` completes, beside `unshare` and `bwrap`.
    Create {
        /// Iterations.
        #[arg(long, default_value_t = 50)]
        n: usize,
        /// Pause between iterations, milliseconds (0: back to back, which outruns a warm pool
        /// that refills one sandbox at a time).
        #[arg(long, default_value_t = 0)]
        pace_ms: u64,
        /// Name of the cloudterm row.
        #[arg(long, default_value = "cloudterm sandbox")]
        label: String,
        /// Skip the `unshare` and `bwrap` rows.
        #[arg(long)]
        no_peers: bool,
    },
    /// Round trip of `POST /sandboxes/{id}/exec` running `true`, sequentially.
    ExecRtt {
        /// Iterations.
        #[arg(long, default_value_t = 2000)]
        n: usize,
    },
    /// Terminal over WebSocket: connect → first prompt, keystroke echo round trip, output flood
    /// (`yes | head -c MB`), on cloudterm (a sandbox created on --url) or ttyd (--ws-url). Prints
    /// one table row; bench/terminal.sh prints the header.
    Terminal {
        /// Whose protocol to speak.
        #[arg(long, value_enum)]
        protocol: terminal::Protocol,
        /// ttyd's WebSocket URL (ws://HOST:PORT/ws). Unused for cloudterm.
        #[arg(long)]
        ws_url: Option<String>,
        /// Connects (each a new shell) for connect → first prompt.
        #[arg(long, default_value_t = 50)]
        connects: usize,
        /// Keystrokes for the echo round trip.
        #[arg(long, default_value_t = 2000)]
        keys: usize,
        /// MiB of `yes` output per flood.
        #[arg(long, default_value_t = 50)]
        flood_mb: usize,
        /// Floods (the median is reported).
        #[arg(long, default_value_t = 3)]
        floods: usize,
        /// Name of the row.
        #[arg(long)]
        label: String,
    },
    /// Pause, resume and the first exec on a paused sandbox, beside a bare cgroup freezer.
    Pause {
        /// Rounds.
        #[arg(long, default_value_t = 200)]
        n: usize,
    },
    /// Host memory per idle sandbox with COUNT running.
    IdleMemory {
        /// Sandboxes to start.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// The server's pid, to count its own growth.
        #[arg(long)]
        server_pid: u32,
    },
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn row(name: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.50);
    let p99 = percentile(samples, 0.99);
    println!("| {name} | {} | {:.2} ms | {:.2} ms |", samples.len(), p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
}

struct Client {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    async fn create(&self) -> anyhow::Result<String> {
        let sandbox = self.call(reqwest::Method::POST, "/sandboxes", Some(json!({}))).await?;
        Ok(sandbox["id"].as_str().context("no id")?.to_string())
    }

    async fn exec_true(&self, id: &str) -> anyhow::Result<()> {
        let result =
            self.call(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"), Some(json!({"argv": ["true"]}))).await?;
        if result["exit_code"] != 0 {
            bail!("true failed: {result}");
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None).await.map(|_| ())
    }
}

fn time_command(program: &str, args: &[&str], n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let status = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if !status.success() {
            bail!("{program} failed: {status}");
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// MemAvailable from /proc/meminfo, KiB.
fn mem_available_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:")).context("no MemAvailable")?;
    Ok(line.split_whitespace().nth(1).context("bad line")?.parse()?)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad line")?.parse()?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client =
        Client { url: cli.url.trim_end_matches('/').to_string(), token: cli.token, http: reqwest::Client::new() };
    match cli.command {
        Bench::Create { n, pace_ms, label, no_peers } => {
            println!("| create → first exec | n | p50 | p99 |\n|---|---|---|---|");
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                tokio::time::sleep(Duration::from_millis(pace_ms)).await;
                let started = Instant::now();
                let id = client.create().await?;
                client.exec_true(&id).await?;
                samples.push(started.elapsed());
                client.delete(&id).await?;
            }
            row(&label, &mut samples);
            if no_peers {
                return Ok(());
            }
            let mut unshare =
                time_command("unshare", &["--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "true"], n)?;
            row("unshare --mount --pid --net --uts --ipc --fork true", &mut unshare);
            match time_command(
                "bwrap",
                &[
                    "--ro-bind",
                    "/",
                    "/",
                    "--dev",
                    "/dev",
                    "--proc",
                    "/proc",
                    "--unshare-all",
                    "--die-with-parent",
                    "true",
                ],
                n,
            ) {
                Ok(mut bwrap) => row("bwrap --unshare-all true", &mut bwrap),
                Err(err) => println!("| bwrap | not run: {err} | | |"),
            }
        }
        Bench::ExecRtt { n } => {
            let id = client.create().await?;
            for _ in 0..20 {
                client.exec_true(&id).await?;
            }
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                client.exec_true(&id).await?;
                samples.push(started.elapsed());
            }
            println!("| exec round trip | n | p50 | p99 |\n|---|---|---|---|");
            row("POST /sandboxes/{id}/exec `true`", &mut samples);
            client.delete(&id).await?;
        }
        Bench::Terminal { protocol, ws_url, connects, keys, flood_mb, floods, label } => {
            let (url, sandbox) = match protocol {
                terminal::Protocol::Ttyd => (ws_url.context("--ws-url is needed for ttyd")?, None),
                terminal::Protocol::Cloudterm => {
                    let id = client.create().await?;
                    let base = client.url.replacen("http", "ws", 1);
                    (format!("{base}/sandboxes/{id}/terminal?cols=80&rows=24"), Some(id))
                }
            };
            let mut connect = terminal::connect_to_prompt(protocol, &url, &client.token, connects).await?;
            let mut term = terminal::Term::connect(protocol, &url, &client.token).await?;
            terminal::first_prompt(&mut term).await?;
            term.drain(Duration::from_millis(200)).await;
            let mut echo = terminal::echo_round_trip(&mut term, keys).await?;
            // MB/s = 10⁶ bytes of the program's output a second, to one decimal: at a few MB/s
            // a whole number hides differences of 20%.
            let mut rates = Vec::with_capacity(floods);
            let mut last = None;
            for _ in 0..floods {
                let flood = terminal::flood(&mut term, flood_mb).await?;
                rates.push((flood_mb << 20) as f64 / flood.elapsed.as_secs_f64() / 1e6);
                last = Some(flood);
            }
            rates.sort_by(f64::total_cmp);
            term.close().await;
            let ms = |samples: &mut [Duration], p| percentile(samples, p).as_secs_f64() * 1e3;
            let (delivered, repaints) = last.map_or((0, 0), |flood| (flood.delivered, flood.repaints));
            println!(
                "| {label} | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms | {:.1} MB/s ({:.1}–{:.1}) | {:.1} MB, {repaints} repaints |",
                ms(&mut connect, 0.5),
                ms(&mut connect, 0.99),
                ms(&mut echo, 0.5),
                ms(&mut echo, 0.99),
                rates.get(rates.len() / 2).copied().unwrap_or(0.0),
                rates.first().copied().unwrap_or(0.0),
                rates.last().copied().unwrap_or(0.0),
                delivered as f64 / 1e6
            );
            if let Some(id) = sandbox {
                client.delete(&id).await?;
            }
        }
        Bench::Pause { n } => pause::run(&client, n).await?,
        Bench::IdleMemory { count, server_pid } => {
            let available_before = mem_available_kib()?;
            let server_before = rss_kib(server_pid)?;
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(client.create().await?);
            }
            for id in &ids {
                client.exec_true(id).await?;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let available_after = mem_available_kib()?;
            let server_after = rss_kib(server_pid)?;
            let total = available_before.saturating_sub(available_after);
            println!("| idle sandboxes | host memory used (MemAvailable drop) | per sandbox | server RSS growth |\n|---|---|---|---|");
            println!(
                "| {count} | {:.1} MiB | {:.2} MiB | {:.1} MiB |",
                total as f64 / 1024.0,
                total as f64 / 1024.0 / count as f64,
                server_after.saturating_sub(server_before) as f64 / 1024.0
            );
            for id in &ids {
                client.delete(id).await?;
            }
        }
    }
    Ok(())
}
