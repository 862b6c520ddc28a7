//! `cloudterm workspace …` and `cloudterm marketplace …`: the Agent Workspace API and the
//! worker marketplace from the command line. Ids go to stdout, tables to stdout, notes to
//! stderr; `exec` and `run` exit with the command's exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;

/// What `cloudterm workspace` does.
#[derive(Subcommand)]
pub enum WorkspaceAction {
    /// Create a named workspace and print its id.
    Create {
        /// 1 to 64 of A-Z a-z 0-9 . _ -.
        name: String,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// A description.
        #[arg(long)]
        description: Option<String>,
    },
    /// List your workspaces (with --shared, also those shared with you).
    Ls {
        /// Only those carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Also the workspaces shared with you, with your permission.
        #[arg(long)]
        shared: bool,
    },
    /// Share a workspace: PERMISSION is read, write or admin.
    Share {
        /// The workspace id.
        workspace: String,
        /// Who to share with (a principal: a person or an agent).
        agent: String,
        /// read, write or admin.
        permission: String,
    },
    /// Revoke a collaborator.
    Revoke {
        /// The workspace id.
        workspace: String,
        /// The collaborator.
        agent: String,
    },
    /// Run a command in the workspace's sandbox (started on demand); exits with its exit code.
    Exec {
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// The workspace id.
        workspace: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Delete a workspace, its snapshots and its files.
    Rm {
        /// The workspace id.
        workspace: String,
    },
}

/// What `cloudterm marketplace` does.
#[derive(Subcommand)]
pub enum MarketplaceAction {
    /// Publish a worker version and print the worker's id.
    // `--version` names the worker's version here, not cloudterm's.
    #[command(disable_version_flag = true)]
    Publish {
        /// The worker's name (a-z 0-9 . _ -).
        #[arg(long)]
        name: String,
        /// Its semantic version (1.2.0).
        #[arg(long)]
        version: String,
        /// What it does (searched).
        #[arg(long, default_value = "")]
        description: String,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The shell command it runs, from the workspace root; its files are in
        /// $CLOUDTERM_WORKER_DIR.
        #[arg(long)]
        command: String,
        /// A directory whose files the worker installs (relative paths kept).
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
    },
    /// Search workers by text and tag, best first.
    Search {
        /// Words to look for in names, tags and descriptions.
        query: Option<String>,
        /// Only workers with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show a worker and every version.
    Show {
        /// The worker id.
        worker: String,
    },
    /// Install a worker into a workspace and run it there; exits with its exit code.
    #[command(disable_version_flag = true)]
    Run {
        /// The worker id.
        worker: String,
        /// The workspace to run it in.
        #[arg(long, value_name = "ID")]
        workspace: String,
        /// A version other than the latest.
        #[arg(long)]
        version: Option<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
}

/// Runs a `workspace` subcommand.
pub fn workspace(client: &Client, action: WorkspaceAction) -> anyhow::Result<ExitCode> {
    match action {
        WorkspaceAction::Create { name, tags, description } => {
            let body = json!({ "name": name, "tags": tags, "description": description });
            let created = client.call_url(Method::POST, client.endpoint(&["workspaces"], &[])?, Some(body))?;
            println!("{}", created["id"].as_str().unwrap_or_default());
        }
        WorkspaceAction::Ls { tag, shared } => {
            let query = [("tag", tag.as_deref()), ("include_shared", shared.then_some("true"))];
            let listed = client.call_url(Method::GET, client.endpoint(&["workspaces"], &query)?, None)?;
            println!("{:<26} {:<20} {:<10} {:<16} TAGS", "ID", "NAME", "PERMISSION", "OWNER");
            for ws in listed["workspaces"].as_array().into_iter().flatten() {
                let tags: Vec<&str> = ws["tags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:<26} {:<20} {:<10} {:<16} {}",
                    text(&ws["id"]),
                    text(&ws["name"]),
                    text(&ws["permission"]),
                    text(&ws["owner"]),
                    tags.join(",")
                );
            }
        }
        WorkspaceAction::Share { workspace, agent, permission } => {
            let url = client.endpoint(&["workspaces", &workspace, "share"], &[])?;
            let body = json!({ "agent_id": agent, "permission": permission });
            let granted = client.call_url(Method::POST, url, Some(body))?;
            eprintln!("{} now has {} on {workspace}", text(&granted["agent_id"]), text(&granted["permission"]));
        }
        WorkspaceAction::Revoke { workspace, agent } => {
            let url = client.endpoint(&["workspaces", &workspace, "share", &agent], &[])?;
            client.call_url(Method::DELETE, url, None)?;
            eprintln!("{agent} no longer has access to {workspace}");
        }
        WorkspaceAction::Exec { timeout, workspace, argv } => {
            let mut body = json!({ "argv": argv });
            if let Some(timeout) = timeout {
                body["timeout_seconds"] = json!(timeout);
            }
            let url = client.endpoint(&["workspaces", &workspace, "exec"], &[])?;
            return Ok(print_result(&client.call_url(Method::POST, url, Some(body))?));
        }
        WorkspaceAction::Rm { workspace } => {
            client.call_url(Method::DELETE, client.endpoint(&["workspaces", &workspace], &[])?, None)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a `marketplace` subcommand.
pub fn marketplace(client: &Client, action: MarketplaceAction) -> anyhow::Result<ExitCode> {
    match action {
        MarketplaceAction::Publish { name, version, description, tags, command, files } => {
            let files = match files {
                Some(dir) => read_files(&dir)?,
                None => Vec::new(),
            };
            let body = json!({
                "name": name, "version": version, "description": description,
                "tags": tags, "command": command, "files": files,
            });
            let url = client.endpoint(&["marketplace", "publish"], &[])?;
            let published = client.call_url(Method::POST, url, Some(body))?;
            eprintln!("published {} {}", text(&published["name"]), text(&published["version"]));
            println!("{}", text(&published["worker_id"]));
        }
        MarketplaceAction::Search { query, tag, limit } => {
            let limit = limit.map(|l| l.to_string());
            let params = [("q", query.as_deref()), ("tag", tag.as_deref()), ("limit", limit.as_deref())];
            let found = client.call_url(Method::GET, client.endpoint(&["marketplace", "search"], &params)?, None)?;
            println!("{:<26} {:<20} {:<10} {:<12} DESCRIPTION", "ID", "NAME", "VERSION", "AUTHOR");
            for worker in found["workers"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<20} {:<10} {:<12} {}",
                    text(&worker["worker_id"]),
                    text(&worker["name"]),
                    text(&worker["version"]),
                    text(&worker["author"]),
                    text(&worker["description"]).lines().next().unwrap_or_default()
                );
            }
        }
        MarketplaceAction::Show { worker } => {
            let shown = client.call_url(Method::GET, client.endpoint(&["marketplace", &worker], &[])?, None)?;
            println!("{} ({}) by {}", text(&shown["name"]), text(&shown["worker_id"]), text(&shown["author"]));
            for version in shown["versions"].as_array().into_iter().flatten() {
                let files = if version["has_files"] == true { " [files]" } else { "" };
                println!("  {:<12} {}{files}", text(&version["version"]), text(&version["created_at"]));
                println!("    command: {}", text(&version["command"]));
                if !text(&version["description"]).is_empty() {
                    println!("    {}", text(&version["description"]));
                }
            }
        }
        MarketplaceAction::Run { worker, workspace, version, timeout } => {
            let mut body = json!({});
            if let Some(version) = version {
                body["version"] = json!(version);
            }
            if let Some(timeout) = timeout {
                body["timeout_seconds"] = json!(timeout);
            }
            let url = client.endpoint(&["workspaces", &workspace, "workers", &worker, "run"], &[])?;
            let run = client.call_url(Method::POST, url, Some(body))?;
            eprintln!("ran {} {} in {}", text(&run["name"]), text(&run["version"]), text(&run["sandbox_id"]));
            return Ok(print_result(&run));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Prints an exec result's output and returns its exit code as ours.
fn print_result(result: &Value) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text(&result["stdout"]).as_bytes());
    let _ = std::io::stderr().write_all(text(&result["stderr"]).as_bytes());
    if result["timed_out"] == true {
        eprintln!("cloudterm: the command timed out and was killed");
    }
    let code = result["exit_code"].as_i64().unwrap_or(1);
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

/// Every regular file below `dir` as a publish body's `files` entry (symlinks and other
/// special files are skipped, as the server would refuse them).
fn read_files(dir: &Path) -> anyhow::Result<Vec<Value>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).with_context(|| format!("cannot read {}", current.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let relative = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let mode = entry.metadata()?.permissions().mode() & 0o777;
                out.push(json!({ "path": relative, "content_base64": B64.encode(data), "mode": mode }));
            }
        }
    }
    Ok(out)
}
