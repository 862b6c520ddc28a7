//! The `cloudterm` command: `serve` runs the platform, `token` mints a dev token, and client
//! commands (`sandbox`, `exec`, `attach`, `snapshot`, `workspace`, `marketplace`) drive a running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloudterm_identity::DevIssuer;
use cloudterm_server::config::settings_help;
use cloudterm_server::{Config, Overrides};

mod attach;
mod client;
mod image;
mod snapshot_cli;
mod workspace_cli;

/// Self-hosted cloud terminals: isolated sandboxes, workspaces and snapshots over HTTP.
#[derive(Parser)]
#[command(name = "cloudterm", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every cloudterm service. With no configuration: SQLite, local snapshots and a dev
    /// token issuer under the data directory, on 127.0.0.1:8000.
    #[command(after_long_help = settings_help())]
    Serve {
        /// TOML config file with any of the settings below.
        #[arg(long, env = "CLOUDTERM_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (overrides data_dir and CLOUDTERM_DATA_DIR).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address of the main listener (overrides listen and CLOUDTERM_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a JWT for PRINCIPAL from the data directory's dev issuer (and nothing else on stdout).
    Token {
        /// Who the token names: a person or an AI agent.
        principal: String,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// TOML config file (only data_dir is used).
        #[arg(long, env = "CLOUDTERM_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory of the server the token is for.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Create, list and delete sandboxes on a running server (CLOUDTERM_URL, CLOUDTERM_TOKEN).
    Sandbox {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: SandboxAction,
    },
    /// Run a command in a sandbox; prints its output and exits with its exit code.
    Exec {
        #[command(flatten)]
        server: ServerArgs,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// The sandbox id.
        sandbox: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Attach this terminal to a shell in a sandbox (a terminal session that outlives attach).
    /// Ctrl-] detaches and leaves the shell running (`--detach-keys` to change it); exits with
    /// the shell's exit code when it exits, 0 on detach, 2 on an error.
    Attach {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: attach::AttachArgs,
    },
    /// Take, restore, list, pin, delete, download and import workspace snapshots on a running
    /// server (CLOUDTERM_URL, CLOUDTERM_TOKEN).
    Snapshot {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: snapshot_cli::SnapshotAction,
    },
    /// Create, list, share, revoke, delete workspaces and run commands in them (CLOUDTERM_URL,
    /// CLOUDTERM_TOKEN).
    Workspace {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: workspace_cli::WorkspaceAction,
    },
    /// Publish, search, show and run marketplace workers (CLOUDTERM_URL, CLOUDTERM_TOKEN).
    Marketplace {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: workspace_cli::MarketplaceAction,
    },
    /// How to make a sandbox image (a root file system directory), and `check DIR`.
    Image {
        #[command(subcommand)]
        action: Option<ImageAction>,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "CLOUDTERM_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Bearer token (`cloudterm token NAME` mints one for a dev server).
    #[arg(long, env = "CLOUDTERM_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum SandboxAction {
    /// Create a sandbox and print its id.
    Create {
        /// Idle TTL in seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Environment variable NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Start from this snapshot: its workspace files and (linux runtime) the installed
        /// packages and other changes of the sandbox it was taken from.
        #[arg(long, value_name = "SNAPSHOT")]
        snapshot: Option<String>,
    },
    /// List your sandboxes.
    Ls,
    /// Delete a sandbox.
    Rm {
        /// The sandbox id.
        sandbox: String,
    },
    /// Freeze every process of a sandbox; the next command (or `resume`) thaws it.
    Pause {
        /// The sandbox id.
        sandbox: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        /// The sandbox id.
        sandbox: String,
    },
}

#[derive(Subcommand)]
enum ImageAction {
    /// Check that DIR can serve as a sandbox image.
    Check {
        /// The image directory.
        dir: PathBuf,
    },
    /// Make the firecracker runtime's root image of DIR: an ext4 file (default DIR.ext4) with
    /// the tree, the static agent at /.cloudterm/agent and a /workspace mount point.
    Build {
        /// The image directory.
        dir: PathBuf,
        /// The static cloudterm-agent to put in (default: beside this binary).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Where to write the image (default: DIR.ext4, where the runtime looks for it).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Image size in MiB (default: the tree's size plus a quarter and 64 MiB).
        #[arg(long)]
        size_mb: Option<u64>,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("expected a duration like 90s, 30m, 1h or 7d, got {text:?}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use s, m, h or d")),
    };
    if seconds == 0 || seconds > 366 * 86_400 {
        return Err(format!("{text:?} is out of range: between 1s and 366d"));
    }
    Ok(Duration::from_secs(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve { config, data_dir, listen } => serve(config, Overrides { data_dir, listen }),
        Command::Token { principal, ttl, config, data_dir } => token(&principal, ttl, config, data_dir),
        Command::Sandbox { server, action } => sandbox(server, action),
        Command::Exec { server, timeout, sandbox, argv } => return exec(server, &sandbox, &argv, timeout),
        Command::Attach { server, args } => {
            return match client::Client::new(server.url, server.token) {
                Ok(client) => attach::run(&client, args),
                Err(err) => {
                    eprintln!("cloudterm: {err:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Snapshot { server, action } => {
            client::Client::new(server.url, server.token).and_then(|client| snapshot_cli::run(&client, action))
        }
        Command::Workspace { server, action } => {
            return client_exit(
                client::Client::new(server.url, server.token).and_then(|c| workspace_cli::workspace(&c, action)),
            )
        }
        Command::Marketplace { server, action } => {
            return client_exit(
                client::Client::new(server.url, server.token).and_then(|c| workspace_cli::marketplace(&c, action)),
            )
        }
        Command::Image { action: None } => {
            print!("{}", image::GUIDE);
            Ok(())
        }
        Command::Image { action: Some(ImageAction::Build { dir, agent, output, size_mb }) } => {
            image::build(&dir, agent, output, size_mb).map(|summary| println!("{summary}"))
        }
        Command::Image { action: Some(ImageAction::Check { dir }) } => match image::check(&dir) {
            Ok(seen) => {
                println!("{} can serve as an image:\n  {}", dir.display(), seen.join("\n  "));
                Ok(())
            }
            Err(problems) => {
                Err(anyhow::anyhow!("{} is not a usable image:\n  {}", dir.display(), problems.join("\n  ")))
            }
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cloudterm: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The exit code of a client command that may pass on a remote command's, or 2 on failure.
fn client_exit(outcome: anyhow::Result<ExitCode>) -> ExitCode {
    outcome.unwrap_or_else(|err| {
        eprintln!("cloudterm: {err:#}");
        ExitCode::from(2)
    })
}

fn serve(config_file: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let config = Config::load_from_env(config_file.as_deref(), &overrides)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(cloudterm_server::run(config))
}

fn sandbox(server: ServerArgs, action: SandboxAction) -> anyhow::Result<()> {
    let client = client::Client::new(server.url, server.token)?;
    match action {
        SandboxAction::Create { timeout, memory, env, snapshot } => {
            let mut vars = serde_json::Map::new();
            for pair in env {
                let (name, value) =
                    pair.split_once('=').with_context(|| format!("--env {pair:?} is not NAME=VALUE"))?;
                vars.insert(name.to_string(), serde_json::Value::String(value.to_string()));
            }
            let mut body = serde_json::json!({ "env": vars });
            if let Some(timeout) = timeout {
                body["timeout_seconds"] = timeout.into();
            }
            if let Some(memory) = memory {
                body["limits"] = serde_json::json!({ "memory_mb": memory });
            }
            if let Some(snapshot) = snapshot {
                body["snapshot_id"] = snapshot.into();
            }
            let sandbox = client.create(body)?;
            println!("{}", sandbox["id"].as_str().unwrap_or_default());
        }
        SandboxAction::Ls => {
            println!("{:<26} {:<9} {:<8} {:<26} EXPIRES", "ID", "STATE", "RUNTIME", "WORKSPACE");
            for sandbox in client.list()? {
                println!(
                    "{:<26} {:<9} {:<8} {:<26} {}",
                    sandbox["id"].as_str().unwrap_or_default(),
                    sandbox["state"].as_str().unwrap_or_default(),
                    sandbox["runtime"].as_str().unwrap_or_default(),
                    sandbox["workspace_id"].as_str().unwrap_or_default(),
                    sandbox["expires_at"].as_str().unwrap_or_default()
                );
            }
        }
        SandboxAction::Rm { sandbox } => client.delete(&sandbox)?,
        SandboxAction::Pause { sandbox } => {
            println!("{}", client.pause_or_resume(&sandbox, "pause")?["state"].as_str().unwrap_or_default())
        }
        SandboxAction::Resume { sandbox } => {
            println!("{}", client.pause_or_resume(&sandbox, "resume")?["state"].as_str().unwrap_or_default())
        }
    }
    Ok(())
}

/// Prints the command's output and returns its exit code as ours.
fn exec(server: ServerArgs, sandbox: &str, argv: &[String], timeout: Option<f64>) -> ExitCode {
    let outcome = client::Client::new(server.url, server.token).and_then(|client| client.exec(sandbox, argv, timeout));
    match outcome {
        Ok(result) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(result["stdout"].as_str().unwrap_or_default().as_bytes());
            let _ = std::io::stderr().write_all(result["stderr"].as_str().unwrap_or_default().as_bytes());
            if result["timed_out"] == true {
                eprintln!("cloudterm: the command timed out and was killed");
            }
            let code = result["exit_code"].as_i64().unwrap_or(1);
            ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
        }
        Err(err) => {
            eprintln!("cloudterm: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn token(
    principal: &str,
    ttl: Duration,
    config_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = Config::load_from_env(config_file.as_deref(), &Overrides { data_dir, listen: None })?;
    if config.uses_external_idp() {
        eprintln!("cloudterm: warning: an identity provider is configured (auth.issuer / auth.jwks_url), so the server will not accept dev tokens");
    }
    let issuer = DevIssuer::load_or_create(&config.data_dir)
        .with_context(|| format!("cannot load the dev issuer key under {}", config.data_dir.display()))?;
    let token = issuer.mint(principal, ttl)?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("15"), Ok(Duration::from_secs(15)));
    }

    #[test]
    fn bad_ttls_are_refused() {
        for text in ["", "h", "1w", "0s", "-5m", "400d", "1.5h"] {
            assert!(parse_ttl(text).is_err(), "{text:?} was accepted");
        }
    }
}
