//! Sandbox networking in the helper: with `nat`, each sandbox gets a veth pair (host side
//! `ctv<12 hex digits of the id's SHA-256>`, `eth0` inside) on a /30 of the configured range, a
//! default route and a `resolv.conf`, and the host masquerades what the `inet cloudterm`
//! nftables table lets out (see [`nft::ruleset`]); [`Network::detach`] takes it all away
//! again. Links are made with iproute2's `ip -batch`, rules with `nft -f`: each step is one
//! process, and what they do is what an operator reads back with the same tools.

mod lease;
mod nft;

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};
use sha2::Digest;

use crate::network::{NetworkConfig, NetworkMode};
use lease::Leases;

pub use nft::VETH_PREFIX;

/// Hex SHA-256 of a sandbox id: names derived from it fit the kernel's 15-byte interface names
/// whatever the id looks like, and stay the same for every helper.
fn digest(id: &str) -> String {
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

/// The host-side veth of sandbox `id` (also its quota object's name).
pub fn veth_name(id: &str) -> String {
    format!("{VETH_PREFIX}{}", &digest(id)[..12])
}

/// The sandbox side's name until it is renamed `eth0` inside.
fn peer_name(id: &str) -> String {
    format!("ctp{}", &digest(id)[..12])
}

/// The helper's network setup: the configuration, and whether the table is in place yet.
pub struct Network {
    config: NetworkConfig,
    /// Name servers for sandboxes: the configured ones, else the host's non-loopback ones.
    dns: Vec<Ipv4Addr>,
    ready: bool,
    leases: Leases,
}

impl Network {
    /// The network as configured; nothing on the host changes until the first sandbox.
    pub fn new(config: NetworkConfig) -> Self {
        let dns = if config.dns.is_empty() { host_nameservers() } else { config.dns.clone() };
        Network { config, dns, ready: false, leases: Leases::host() }
    }

    /// Whether sandboxes get an outbound network.
    pub fn enabled(&self) -> bool {
        self.config.mode == NetworkMode::Nat
    }

    /// The sandbox's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        if !self.enabled() {
            return "# this cloudterm server gives sandboxes no network egress\nnameserver 127.0.0.1\n".to_owned();
        }
        let mut text = String::from("# written by cloudterm (sandboxes.network_dns)\n");
        for server in &self.dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if self.dns.is_empty() {
            text.push_str("# no name server: the host has none but loopback ones; set sandboxes.network_dns\n");
        }
        text
    }

    /// Declares the table and its rules (once per helper process) and turns on IPv4
    /// forwarding, which NAT needs.
    fn ensure_ready(&mut self) -> anyhow::Result<()> {
        if self.ready {
            return Ok(());
        }
        nft::run(&nft::ruleset(self.config.range, &self.config.deny, &self.dns))
            .context("cannot install the cloudterm nftables table")?;
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        if std::fs::read_to_string(forward).map(|v| v.trim() != "1").unwrap_or(true) {
            std::fs::write(forward, "1").context("cannot turn on net.ipv4.ip_forward")?;
            eprintln!("cloudterm-linux-helper: turned on net.ipv4.ip_forward for sandbox NAT");
        }
        self.ready = true;
        Ok(())
    }

    /// Gives a just-created sandbox (init `pid`, not started yet) its network. On failure
    /// whatever was made is left for [`detach`](Self::detach), which start's clean-up runs.
    pub fn attach(&mut self, id: &str, pid: i32, root_dir: &Path) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        self.ensure_ready()?;
        let lease = self.leases.acquire(self.config.range, id, root_dir)?;
        let veth = veth_name(id);
        // The rules first: the veth is refused everything until it has its elements anyway
        // (the wildcard rules), and this way no packet passes before its quota exists.
        nft::run(&nft::add_sandbox(&veth, lease.address())).context("cannot add the sandbox's nftables entries")?;
        let peer = peer_name(id);
        let prefix = lease.block.prefix_len();
        ip_batch(
            None,
            &format!(
                "link add {veth} type veth peer name {peer} netns {pid}\n\
                 addr add {}/{prefix} dev {veth}\n\
                 link set {veth} up\n",
                lease.gateway()
            ),
        )
        .context("cannot create the sandbox's veth pair")?;
        ip_batch(
            Some(pid),
            &format!(
                "link set {peer} name eth0\n\
                 addr add {}/{prefix} dev eth0\n\
                 link set eth0 up\n\
                 route add default via {}\n",
                lease.address(),
                lease.gateway()
            ),
        )
        .context("cannot configure eth0 inside the sandbox")?;
        Ok(())
    }

    /// Removes a sandbox's veth, nftables entries and address lease (idempotent; also after a
    /// crash, and whatever the current mode: a sandbox started under `nat` keeps its lease).
    pub fn detach(&mut self, id: &str, root_dir: &Path) -> anyhow::Result<()> {
        let veth = veth_name(id);
        let lease = self.leases.find(id, root_dir);
        let mut problems = Vec::new();
        // The veth goes with the sandbox's network namespace, but the kernel dismantles a
        // namespace asynchronously: delete it here so it is gone when stop returns, and take
        // "no such device" (the kernel was first) as done.
        if Path::new("/sys/class/net").join(&veth).exists() {
            match ip_batch(None, &format!("link del {veth}\n")) {
                Err(err) if !format!("{err:#}").contains("Cannot find device") => problems.push(format!("{err:#}")),
                _ => {}
            }
        }
        if let Some(lease) = lease {
            if let Err(err) = nft::run(&nft::remove_sandbox(&veth, lease.address())) {
                problems.push(format!("cannot remove the sandbox's nftables entries: {err:#}"));
            } else if let Err(err) = self.leases.release(lease) {
                problems.push(format!("{err:#}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    /// Sets how many bytes the sandbox may send out; past it, its traffic is refused.
    pub fn set_limit(&mut self, id: &str, root_dir: &Path, limit_bytes: Option<u64>) -> anyhow::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if self.leases.find(id, root_dir).is_none() {
            bail!("sandbox {id} has no network");
        }
        nft::run(&nft::set_limit(&veth_name(id), limit_bytes))
    }

    /// Bytes the sandbox has sent towards the outside (what its quota counts), or `None`
    /// without a network.
    pub fn egress_bytes(&self, id: &str) -> anyhow::Result<Option<u64>> {
        if !self.enabled() {
            return Ok(None);
        }
        nft::quota_used(&veth_name(id))
    }
}

/// Runs `ip -batch -` on the host, or in the network namespace of `pid` (through `nsenter`, so
/// the helper itself never leaves the host's namespace).
fn ip_batch(pid: Option<i32>, commands: &str) -> anyhow::Result<()> {
    let mut command = match pid {
        Some(pid) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/proc/{pid}/ns/net")).arg("ip");
            command
        }
        None => Command::new("ip"),
    };
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip (install iproute2)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("ip has no stdin"))?
        .write_all(commands.as_bytes())
        .context("cannot write to ip")?;
    let output = child.wait_with_output().context("cannot wait for ip")?;
    if !output.status.success() {
        bail!("ip failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The host's IPv4 name servers that a sandbox can use (not loopback ones such as
/// systemd-resolved's 127.0.0.53, which are the sandbox's own loopback inside).
fn host_nameservers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_differ() {
        let a = veth_name("sbx_aaaaaaaaaaaaaaaaaaaa");
        let b = veth_name("sbx_aaaaaaaaaaaaaaaaaaab");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(VETH_PREFIX));
        assert_ne!(a, b);
        assert_eq!(peer_name("x").len(), 15);
        assert_ne!(veth_name("x"), peer_name("x"));
    }
}
