//! `cloudterm snapshot …`: take, restore, list, pin, delete, download and import workspace
//! snapshots through the Snapshot API of a running server.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use cloudterm_api_types::{RestoreSnapshotResponse, SnapshotList, SnapshotResponse};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio_util::io::ReaderStream;

use crate::client::Client;

/// Chunk size of downloads and uploads: large enough that syscalls and progress updates cost
/// nothing next to the network, small enough to be nothing in memory.
const CHUNK: usize = 256 << 10;

/// What `cloudterm snapshot` does.
#[derive(Subcommand)]
pub enum SnapshotAction {
    /// Snapshot a workspace (your home one unless --sandbox or --workspace) and print its id on
    /// stdout; a one-line summary goes to stderr, so `SNAP=$(cloudterm snapshot create)` works.
    Create {
        /// Snapshot this sandbox's workspace (the sandbox is frozen while it is read).
        #[arg(long, value_name = "ID", conflicts_with = "workspace")]
        sandbox: Option<String>,
        /// Snapshot this workspace.
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
        /// A label for people (at most 200 bytes).
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// Keep it regardless of retention.
        #[arg(long)]
        pin: bool,
        /// Print the server's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a workspace (the snapshot's own unless --sandbox or --workspace);
    /// running sandboxes on it see the restored files at once.
    Restore {
        /// The snapshot id.
        snapshot: String,
        /// Restore into this sandbox's workspace.
        #[arg(long, value_name = "ID", conflicts_with = "workspace")]
        sandbox: Option<String>,
        /// Restore into this workspace.
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
    },
    /// List your snapshots, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// Only this workspace's snapshots.
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot from storage and from the list.
    Rm {
        /// The snapshot id.
        snapshot: String,
    },
    /// Pin a snapshot (exempt from retention), or unpin it with --off.
    Pin {
        /// The snapshot id.
        snapshot: String,
        /// Unpin instead.
        #[arg(long)]
        off: bool,
    },
    /// Download a snapshot's archive (a .tar.zst unless storage encrypts it) and check its
    /// SHA-256. The file appears under its name only once complete and verified.
    Download {
        /// The snapshot id.
        snapshot: String,
        /// Where to write it (default: SNAPSHOT.tar.zst, or SNAPSHOT.tar.zst.sealed if encrypted, in the
        /// current directory; `-`: stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Turn a .tar.zst archive into a snapshot (checked as strictly as a restore) and print its id.
    Import {
        /// The archive (`-`: stdin).
        file: PathBuf,
        /// The workspace it belongs to (default: your home workspace).
        #[arg(long, value_name = "ID")]
        workspace: Option<String>,
        /// A label for people.
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// Print the server's JSON instead.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `cloudterm snapshot` action against `client`'s server.
pub fn run(client: &Client, action: SnapshotAction) -> anyhow::Result<()> {
    match action {
        SnapshotAction::Create { sandbox, workspace, label, pin, json } => {
            let body = json!({ "sandbox_id": sandbox, "workspace_id": workspace, "label": label, "pinned": pin });
            let waiting = spinner("creating snapshot");
            let value = client.call_url(Method::POST, client.endpoint(&["snapshot", "create"], &[])?, Some(body));
            waiting.finish_and_clear();
            print_created(value?, json)
        }
        SnapshotAction::Restore { snapshot, sandbox, workspace } => {
            let body = json!({ "snapshot_id": snapshot, "sandbox_id": sandbox, "workspace_id": workspace });
            let waiting = spinner("restoring snapshot");
            let value = client.call_url(Method::POST, client.endpoint(&["snapshot", "restore"], &[])?, Some(body));
            waiting.finish_and_clear();
            let restored: RestoreSnapshotResponse = typed(value?)?;
            println!(
                "restored {} files from {} into {}",
                restored.restored_files, restored.snapshot_id, restored.workspace_id
            );
            Ok(())
        }
        SnapshotAction::List { workspace, json } => {
            let url = client.endpoint(&["snapshot", "list"], &[("workspace_id", workspace.as_deref())])?;
            let value = client.call_url(Method::GET, url, None)?;
            if json {
                return print_json(&value);
            }
            print_table(&typed::<SnapshotList>(value)?.snapshots);
            Ok(())
        }
        SnapshotAction::Rm { snapshot } => {
            client.call_url(Method::DELETE, client.endpoint(&["snapshot", &snapshot], &[])?, None).map(|_| ())
        }
        SnapshotAction::Pin { snapshot, off } => {
            let url = client.endpoint(&["snapshot", &snapshot, "pin"], &[])?;
            let pinned: SnapshotResponse =
                typed(client.call_url(Method::POST, url, Some(json!({ "pinned": !off })))?)?;
            println!("{} {}", pinned.snapshot_id, if pinned.pinned { "pinned" } else { "unpinned" });
            Ok(())
        }
        SnapshotAction::Download { snapshot, output } => download(client, &snapshot, output),
        SnapshotAction::Import { file, workspace, label, json } => {
            let url = client.endpoint(
                &["snapshot", "import"],
                &[("workspace_id", workspace.as_deref()), ("label", label.as_deref())],
            )?;
            // A runtime of its own, entered only here: the rest of the CLI is blocking.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let value = runtime.block_on(import(client, url, &file))?;
            print_created(value, json)
        }
    }
}

/// The id on stdout (what a script captures), the summary on stderr; or the JSON.
fn print_created(value: Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&value);
    }
    let snapshot: SnapshotResponse = typed(value)?;
    println!("{}", snapshot.snapshot_id);
    eprintln!("{}", summary(&snapshot));
    Ok(())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An answer as its API type; a mismatch means a server of another version.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("the server's answer is not what this cloudterm expects (another version?)")
}

/// One line for people: what is in it and what it costs in storage.
fn summary(snapshot: &SnapshotResponse) -> String {
    let mut line = format!(
        "{}: {} files, {} ({} stored), workspace {}",
        snapshot.snapshot_id,
        snapshot.file_count,
        HumanBytes(snapshot.size_bytes),
        HumanBytes(snapshot.stored_bytes),
        snapshot.workspace_id
    );
    if let Some(layer) = &snapshot.layer {
        line.push_str(&format!(
            ", writable layer {} files, {} ({} stored)",
            layer.file_count,
            HumanBytes(layer.size_bytes),
            HumanBytes(layer.stored_bytes)
        ));
    }
    if snapshot.pinned {
        line.push_str(", pinned");
    }
    if snapshot.encrypted {
        line.push_str(", encrypted");
    }
    if let Some(label) = &snapshot.label {
        line.push_str(&format!(", label {label:?}"));
    }
    line
}

fn print_table(snapshots: &[SnapshotResponse]) {
    println!(
        "{:<25} {:<23} {:<20} {:<6} {:>7} {:>10} {:>10} {:<3} LABEL",
        "ID", "WORKSPACE", "CREATED", "KIND", "FILES", "SIZE", "STORED", "PIN"
    );
    for snapshot in snapshots {
        println!(
            "{:<25} {:<23} {:<20} {:<6} {:>7} {:>10} {:>10} {:<3} {}",
            snapshot.snapshot_id,
            snapshot.workspace_id,
            snapshot.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            snapshot.kind,
            snapshot.file_count,
            HumanBytes(snapshot.size_bytes).to_string(),
            HumanBytes(snapshot.stored_bytes).to_string(),
            if snapshot.pinned { "yes" } else { "" },
            snapshot.label.as_deref().unwrap_or_default()
        );
    }
}

/// A byte-counting progress bar on stderr, or a hidden one when stderr is not a terminal (a
/// script's log should not fill with redraws).
fn progress(total: Option<u64>, message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {binary_bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.with_message(message.to_string())
}

/// A spinner with the time spent, on a terminal only, for the one request a create or restore
/// is: the server streams the archive itself and reports nothing until it is done, so elapsed
/// time is the honest progress to show (a multi-second wait with no sign of life looks hung).
fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {msg}… {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_message(message.to_string());
    bar.tick();
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// Streams the archive to `output` while hashing it, then checks the hash against the record.
/// A file is written as a temp file beside its final name and renamed only once verified, so an
/// interrupted or corrupt download never sits under the real name.
fn download(client: &Client, id: &str, output: Option<PathBuf>) -> anyhow::Result<()> {
    let snapshot: SnapshotResponse =
        typed(client.call_url(Method::GET, client.endpoint(&["snapshot", id], &[])?, None)?)?;
    let mut response = client.get_stream(client.endpoint(&["snapshot", id, "download"], &[])?)?;
    let total = response.content_length().unwrap_or(snapshot.stored_bytes);
    let bar = progress(Some(total), &format!("downloading {id}"));

    if output.as_deref() == Some(Path::new("-")) {
        let mut stdout = std::io::stdout().lock();
        let copied = copy_hashing(&mut response, &mut stdout, &bar);
        bar.finish_and_clear();
        let (bytes, sha256) = copied?;
        stdout.flush().context("cannot write to stdout")?;
        return verify(&snapshot, bytes, &sha256).context("the bytes written to stdout are not the snapshot");
    }

    // Encrypted archives keep the server's `.sealed` suffix: they are not a plain .tar.zst.
    let extension = if snapshot.encrypted { "tar.zst.sealed" } else { "tar.zst" };
    let path = output.unwrap_or_else(|| PathBuf::from(format!("{}.{extension}", snapshot.snapshot_id)));
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?.to_string_lossy();
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    let copied = copy_hashing(&mut response, temp.as_file_mut(), &bar);
    bar.finish_and_clear();
    let (bytes, sha256) = copied?;
    // On failure `temp` is dropped, which removes it.
    verify(&snapshot, bytes, &sha256)?;
    temp.as_file().sync_all().with_context(|| format!("cannot write {}", temp.path().display()))?;
    temp.persist(&path).with_context(|| format!("cannot rename the download to {}", path.display()))?;
    eprintln!("{}: {} written to {}", snapshot.snapshot_id, HumanBytes(bytes), path.display());
    Ok(())
}

/// Copies `from` to `to` in chunks, hashing and counting on the way; returns bytes and hex SHA-256.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write, bar: &ProgressBar) -> anyhow::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("the download broke off"),
        };
        let chunk = &buffer[..read];
        hasher.update(chunk);
        to.write_all(chunk).context("cannot write the download")?;
        bytes += read as u64;
        bar.inc(read as u64);
    }
    to.flush().context("cannot write the download")?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Fails loudly unless the bytes received are exactly the ones the snapshot recorded.
fn verify(snapshot: &SnapshotResponse, bytes: u64, sha256: &str) -> anyhow::Result<()> {
    if !sha256.eq_ignore_ascii_case(&snapshot.sha256) {
        bail!(
            "SHA-256 mismatch for {}: received {bytes} bytes hashing to {sha256}, but the snapshot records {} bytes \
             hashing to {}; the download is corrupt and was not kept",
            snapshot.snapshot_id,
            snapshot.stored_bytes,
            snapshot.sha256
        );
    }
    Ok(())
}

/// Streams `file` (or stdin for `-`) as the request body, never holding it in memory.
async fn import(client: &Client, url: reqwest::Url, file: &Path) -> anyhow::Result<Value> {
    let (reader, total, name): (Box<dyn AsyncRead + Send + Unpin>, Option<u64>, String) = if file == Path::new("-") {
        (Box::new(tokio::io::stdin()), None, "stdin".to_string())
    } else {
        let opened = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
        let metadata = opened.metadata().await.with_context(|| format!("cannot read {}", file.display()))?;
        if !metadata.is_file() {
            bail!("{} is not a file", file.display());
        }
        (Box::new(opened), Some(metadata.len()), file.display().to_string())
    };
    let bar = progress(total, &format!("importing {name}"));
    let stream = ReaderStream::with_capacity(bar.wrap_async_read(reader), CHUNK);
    let result = client.post_stream(url, reqwest::Body::wrap_stream(stream), "application/zstd").await;
    bar.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(sha256: &str) -> SnapshotResponse {
        typed(json!({
            "snapshot_id": "snap_x",
            "workspace_id": "ws_x",
            "label": "before upgrade",
            "size_bytes": 3 << 20,
            "stored_bytes": 2048,
            "file_count": 12,
            "sha256": sha256,
            "kind": "manual",
            "pinned": true,
            "encrypted": false,
            "created_at": "2026-01-02T03:04:05.678Z",
        }))
        .expect("a valid snapshot answer")
    }

    #[test]
    fn copy_hashing_counts_and_hashes_what_it_copies() {
        let data = vec![7u8; CHUNK * 2 + 5];
        let mut out = Vec::new();
        let (bytes, sha256) = copy_hashing(&mut data.as_slice(), &mut out, &ProgressBar::hidden()).expect("copy");
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(out, data);
        assert_eq!(sha256, hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn a_hash_mismatch_is_an_error_naming_both_hashes() {
        let expected = hex::encode(Sha256::digest(b"right"));
        let got = hex::encode(Sha256::digest(b"wrong"));
        assert!(verify(&snapshot(&expected), 5, &expected).is_ok());
        assert!(verify(&snapshot(&expected.to_uppercase()), 5, &expected).is_ok());
        let message = verify(&snapshot(&expected), 5, &got).expect_err("mismatch").to_string();
        assert!(message.contains(&expected) && message.contains(&got), "{message}");
    }

    #[test]
    fn the_summary_says_files_sizes_and_flags() {
        let line = summary(&snapshot("00"));
        assert_eq!(
            line,
            "snap_x: 12 files, 3.00 MiB (2.00 KiB stored), workspace ws_x, pinned, label \"before upgrade\""
        );
        let mut with_layer = snapshot("00");
        with_layer.label = None;
        with_layer.layer =
            typed(json!({"size_bytes": 5 << 20, "stored_bytes": 1 << 20, "file_count": 40, "sha256": "ab"})).ok();
        assert_eq!(
            summary(&with_layer),
            "snap_x: 12 files, 3.00 MiB (2.00 KiB stored), workspace ws_x, writable layer 40 files, 5.00 MiB \
             (1.00 MiB stored), pinned"
        );
    }
}
