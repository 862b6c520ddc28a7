//! The writable layer of a running linux sandbox, found from the server process: the overlay
//! upper directories under its state directory and, for the default image, its plain root
//! directory seen through a non-recursive clone of its mount (so the workspace, the agent and
//! the overlays mounted on top of it are not read twice, or at all).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use cloudterm_runtime::{LayerTree, SandboxRuntimeError, WritableLayer};

use crate::config::LinuxRuntimeConfig;
use crate::helper::sys;
use crate::protocol::{Record, ROOTFS_LAYER};

/// The writable layer of sandbox `id`, or `NotRunning` when the runtime holds no such sandbox.
pub(crate) fn writable_layer(config: &LinuxRuntimeConfig, id: &str) -> Result<WritableLayer, SandboxRuntimeError> {
    let text = fs::read(config.root_dir.join(id).join("record.json"))
        .map_err(|_| SandboxRuntimeError::NotRunning(id.to_string()))?;
    let record: Record = serde_json::from_slice(&text)
        .map_err(|err| SandboxRuntimeError::Failed(format!("unreadable record of {id}: {err}")))?;
    let layers = record.state_dir.join("layers");
    let upper =
        |name: &str| LayerTree { name: name.to_string(), path: layers.join(name).join("upper"), overlay_upper: true };
    let (owner_base, owner_count) =
        if record.userns { (config.userns_base, config.userns_size) } else { (0, config.userns_size) };
    if layers.join("root").join("upper").is_dir() {
        // A configured image: one overlay over the whole root.
        return Ok(WritableLayer { trees: vec![upper("root")], owner_base, owner_count, hold: None });
    }
    let rootfs = record.state_dir.join("rootfs");
    let view: OwnedFd = sys::open_tree_clone(&rootfs, false)
        .map_err(|err| SandboxRuntimeError::Failed(format!("cannot open the root of {id}: {err}")))?;
    // `/.` after the descriptor's magic link: the archive opens its sources without following
    // a final symlink, and the mount's root is what it should read.
    let view_path = PathBuf::from(format!("/proc/self/fd/{}/.", view.as_raw_fd()));
    let mut trees = vec![LayerTree { name: ROOTFS_LAYER.to_string(), path: view_path, overlay_upper: false }];
    let mut names: Vec<String> = fs::read_dir(&layers)
        .map_err(|err| SandboxRuntimeError::Failed(format!("cannot list the layers of {id}: {err}")))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| layers.join(name).join("upper").is_dir())
        .collect();
    names.sort();
    trees.extend(names.iter().map(|name| upper(name)));
    Ok(WritableLayer { trees, owner_base, owner_count, hold: Some(Box::new(view)) })
}
