//! Address leases: which /30 of the sandbox range belongs to which sandbox.
//!
//! A lease is a file named after the /30's network address in a host-wide directory (under
//! `/run`, so a reboot, which ends every sandbox, also ends every lease), created with
//! `O_EXCL`: two helpers (two servers on one host, or parallel tests) can never hand out the
//! same block, and a restarted server sees the blocks its running sandboxes hold. The file
//! names the sandbox and the runtime root it belongs to; a lease whose sandbox directory is
//! gone (a crash between start and stop) is taken over by the next allocation.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where leases live.
pub const LEASE_DIR: &str = "/run/cloudterm/network";

/// One sandbox's block: the host side of its veth has `gateway`, the sandbox `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The /30.
    pub block: Ipv4Net,
}

impl Lease {
    /// The host side's address (the sandbox's default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.block.network()) + 1)
    }

    /// The sandbox's address.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.block.network()) + 2)
    }
}

/// What a lease file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    id: String,
    root_dir: PathBuf,
}

/// The lease directory: `LEASE_DIR`, or another for unit tests.
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    /// The host-wide lease directory.
    pub fn host() -> Self {
        Leases { dir: PathBuf::from(LEASE_DIR) }
    }

    #[cfg(test)]
    fn at(dir: &Path) -> Self {
        Leases { dir: dir.to_path_buf() }
    }

    /// Takes a free /30 of `range` for sandbox `id` of the runtime rooted at `root_dir`.
    /// The search starts at a place derived from the id, so a block just freed is rarely
    /// handed out again at once (its conntrack entries may still be around).
    pub fn acquire(&self, range: Ipv4Net, id: &str, root_dir: &Path) -> anyhow::Result<Lease> {
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let blocks: Vec<Ipv4Net> = range.subnets(30).context("the network range is smaller than a /30")?.collect();
        if blocks.is_empty() {
            bail!("the network range {range} holds no /30");
        }
        let start = usize::from_str_radix(&super::digest(id)[..8], 16).unwrap_or(0) % blocks.len();
        let holder = serde_json::to_vec(&Holder { id: id.to_owned(), root_dir: root_dir.to_path_buf() })?;
        for block in blocks.iter().cycle().skip(start).take(blocks.len()) {
            let path = self.path(*block);
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(&holder).with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Lease { block: *block });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    if self.is_stale(&path) && fs::remove_file(&path).is_ok() {
                        // Taken over on the next pass through the loop would skip it: retry here.
                        if let Ok(mut file) = fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                            file.write_all(&holder).with_context(|| format!("cannot write {}", path.display()))?;
                            return Ok(Lease { block: *block });
                        }
                    }
                }
                Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        bail!("every /30 of the network range {range} is in use ({} sandboxes)", blocks.len())
    }

    /// The lease sandbox `id` of the runtime rooted at `root_dir` holds, if any.
    pub fn find(&self, id: &str, root_dir: &Path) -> Option<Lease> {
        let entries = fs::read_dir(&self.dir).ok()?;
        entries.flatten().find_map(|entry| {
            let holder: Holder = serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
            let block = entry.file_name().to_str()?.parse::<Ipv4Addr>().ok()?;
            (holder.id == id && holder.root_dir == root_dir)
                .then(|| Ipv4Net::new(block, 30).ok())
                .flatten()
                .map(|block| Lease { block })
        })
    }

    /// Gives a lease back (idempotent).
    pub fn release(&self, lease: Lease) -> anyhow::Result<()> {
        match fs::remove_file(self.path(lease.block)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err).context("cannot remove the address lease"),
            _ => Ok(()),
        }
    }

    fn path(&self, block: Ipv4Net) -> PathBuf {
        self.dir.join(block.network().to_string())
    }

    /// A lease whose sandbox no longer has a record directory (or that cannot be read, as
    /// when a crash interrupted its write) belongs to nobody.
    fn is_stale(&self, path: &Path) -> bool {
        match fs::read(path).ok().and_then(|text| serde_json::from_slice::<Holder>(&text).ok()) {
            Some(holder) => !holder.root_dir.join(&holder.id).is_dir(),
            None => fs::metadata(path)
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age.as_secs() > 60)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_unique_freed_on_release_and_taken_over_when_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = Leases::at(&dir.path().join("leases"));
        let root = dir.path().join("root");
        let range: Ipv4Net = "10.99.0.0/29".parse().expect("net");
        for id in ["a", "b"] {
            fs::create_dir_all(root.join(id)).expect("sandbox dir");
        }
        let a = leases.acquire(range, "a", &root).expect("a");
        let b = leases.acquire(range, "b", &root).expect("b");
        assert_ne!(a, b);
        assert_eq!(a.gateway(), Ipv4Addr::from(u32::from(a.block.network()) + 1));
        assert_eq!(a.address(), Ipv4Addr::from(u32::from(a.block.network()) + 2));
        fs::create_dir_all(root.join("c")).expect("sandbox dir");
        assert!(leases.acquire(range, "c", &root).is_err(), "a /29 holds two /30s");
        assert_eq!(leases.find("a", &root), Some(a));
        assert_eq!(leases.find("a", &dir.path().join("other-root")), None);

        leases.release(a).expect("release");
        leases.release(a).expect("release is idempotent");
        assert_eq!(leases.find("a", &root), None);
        assert_eq!(leases.acquire(range, "c", &root).expect("c").block, a.block);

        // b's sandbox is gone without a stop (a crash): its block goes to the next sandbox.
        fs::remove_dir(root.join("b")).expect("rm");
        fs::create_dir_all(root.join("d")).expect("sandbox dir");
        assert_eq!(leases.acquire(range, "d", &root).expect("d").block, b.block);
    }
}
