//! Runs the e2fsprogs and util-linux tools a volume needs (`mkfs.ext4`, `tune2fs`,
//! `dumpe2fs`, `resize2fs`, `mount`, `umount`, `losetup`), with their output captured and a
//! failure turned into a [`VolumeError::Command`] that quotes what the tool said.

use std::ffi::OsStr;

use tokio::process::Command;

use crate::error::VolumeError;

/// Runs `program args…` to completion; its stdout on success.
pub async fn run<I, S>(program: &str, args: I) -> Result<String, VolumeError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(locate(program).unwrap_or_else(|| program.into()))
        .args(args)
        .stdin(std::process::Stdio::null())
        // The tools print locale-dependent text; `dumpe2fs -h` is parsed.
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|err| VolumeError::io(format!("cannot run {program}"), err))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr.trim().chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
    Err(VolumeError::Command { program: program.to_string(), status: output.status.to_string(), stderr: tail })
}

/// Where `program` is: on `PATH`, or in the sbin directories, where Debian puts e2fsprogs
/// and which a non-login `PATH` may lack.
pub fn locate(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
