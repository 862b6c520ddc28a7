//! The nftables side of sandbox networking: one table, `inet cloudterm`, owned by cloudterm.
//!
//! Everything per sandbox is data in that table (an element of `sandbox_addrs`, a quota object
//! and its `egress` map entry), keyed by the host-side veth name; the chains never change
//! while sandboxes come and go. [`ruleset`] (re)declares the table and rewrites its chains in
//! one transaction, so it is idempotent, safe while sandboxes run, and safe for several helpers
//! (servers, tests) sharing the table: they write the same rules, and each adds its range to
//! `sandbox_nets`.
//!
//! Scripts are fed to `nft -f -`: each one is a single atomic transaction, and the text is what
//! an operator reads with `nft list table inet cloudterm`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};
use ipnet::Ipv4Net;

use crate::network::{parse_net, ALWAYS_DENIED};

/// The table's family and name.
pub const TABLE: &str = "inet cloudterm";

/// Prefix of every host-side sandbox veth; the rules match it with a wildcard, so even a
/// sandbox whose elements are missing is refused the host and other sandboxes.
pub const VETH_PREFIX: &str = "ctv";

/// The `over` value of a sandbox without an egress limit (4 EiB: never reached).
pub const UNLIMITED: u64 = 1 << 62;

/// The declarations (idempotent `add`s) every script starts from, so any script works on a
/// host where the table does not exist yet.
fn declarations() -> String {
    format!(
        "add table {TABLE}\n\
         add set {TABLE} sandbox_nets {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         add set {TABLE} deny4 {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         add set {TABLE} dns4 {{ type ipv4_addr; }}\n\
         add set {TABLE} sandbox_addrs {{ type ifname . ipv4_addr; }}\n\
         add map {TABLE} egress {{ type ifname : quota; }}\n\
         add chain {TABLE} input {{ type filter hook input priority filter - 10; policy accept; }}\n\
         add chain {TABLE} forward {{ type filter hook forward priority filter - 10; policy accept; }}\n\
         add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat - 10; policy accept; }}\n\
         add chain {TABLE} from_sandbox\n\
         add chain {TABLE} account\n"
    )
}

/// The whole table: what a sandbox may send where.
///
/// * `input`: nothing from a sandbox veth reaches the host itself (its services on any
///   address, the gateway address included, IPv4 or IPv6).
/// * `forward`: traffic from a sandbox goes through `from_sandbox`; traffic to a sandbox only
///   as a reply (nothing outside can open a connection to one).
/// * `from_sandbox`: IPv4 only, from the sandbox's own address only (it has `CAP_NET_RAW`
///   and could forge another's), never to another sandbox, nor to a denied range except a
///   name server on port 53; everything else is counted in `account`.
/// * `account`: the sandbox's quota object; once it is over its limit, traffic is refused.
/// * `postrouting`: masquerade out of the host.
///
/// Refusals answer `admin-prohibited`, so a client inside fails at once instead of timing out.
pub fn ruleset(range: Ipv4Net, deny: &[Ipv4Net], dns: &[Ipv4Addr]) -> String {
    let reject = "reject with icmpx admin-prohibited";
    let veths = format!("\"{VETH_PREFIX}*\"");
    let mut denied: Vec<Ipv4Net> = ALWAYS_DENIED.iter().filter_map(|net| parse_net(net).ok()).collect();
    denied.extend(deny.iter().copied());
    let mut script = declarations();
    for chain in ["input", "forward", "postrouting", "from_sandbox", "account"] {
        let _ = writeln!(script, "flush chain {TABLE} {chain}");
    }
    let _ = writeln!(script, "flush set {TABLE} deny4");
    let _ = writeln!(script, "flush set {TABLE} dns4");
    let _ = writeln!(script, "add element {TABLE} sandbox_nets {{ {range} }}");
    let _ = writeln!(script, "add element {TABLE} deny4 {{ {} }}", join(&denied));
    if !dns.is_empty() {
        let _ = writeln!(script, "add element {TABLE} dns4 {{ {} }}", join(dns));
    }
    let rules = [
        format!("input iifname {veths} {reject}"),
        format!("forward iifname {veths} jump from_sandbox"),
        format!("forward oifname {veths} ct state established,related accept"),
        format!("forward oifname {veths} drop"),
        "from_sandbox meta nfproto != ipv4 drop".to_string(),
        "from_sandbox iifname . ip saddr != @sandbox_addrs drop".to_string(),
        format!("from_sandbox oifname {veths} {reject}"),
        format!("from_sandbox ip daddr @sandbox_nets {reject}"),
        "from_sandbox ip daddr @dns4 udp dport 53 goto account".to_string(),
        "from_sandbox ip daddr @dns4 tcp dport 53 goto account".to_string(),
        format!("from_sandbox ip daddr @deny4 {reject}"),
        "from_sandbox goto account".to_string(),
        format!("account quota name iifname map @egress {reject}"),
        "account accept".to_string(),
        format!("postrouting ip saddr @sandbox_nets oifname != {veths} masquerade"),
    ];
    for rule in rules {
        let _ = writeln!(script, "add rule {TABLE} {rule}");
    }
    script
}

/// Admits one sandbox: its veth with its address, and its quota (unlimited until
/// [`set_limit`] says otherwise).
pub fn add_sandbox(veth: &str, address: Ipv4Addr) -> String {
    format!(
        "{}add quota {TABLE} {veth} {{ over {UNLIMITED} bytes }}\n\
         add element {TABLE} egress {{ \"{veth}\" : \"{veth}\" }}\n\
         add element {TABLE} sandbox_addrs {{ \"{veth}\" . {address} }}\n",
        declarations()
    )
}

/// Removes everything of one sandbox. Each element is added before it is deleted (an `add`
/// of an existing element or object changes nothing), so the script succeeds whether the
/// sandbox's entries are all there, partly there (a crash during start) or gone already.
pub fn remove_sandbox(veth: &str, address: Ipv4Addr) -> String {
    format!(
        "{}add quota {TABLE} {veth} {{ over 1 bytes }}\n\
         add element {TABLE} egress {{ \"{veth}\" : \"{veth}\" }}\n\
         add element {TABLE} sandbox_addrs {{ \"{veth}\" . {address} }}\n\
         delete element {TABLE} egress {{ \"{veth}\" }}\n\
         delete element {TABLE} sandbox_addrs {{ \"{veth}\" . {address} }}\n\
         delete quota {TABLE} {veth}\n",
        declarations()
    )
}

/// Sets a sandbox's egress limit. Updating a quota object keeps the bytes it has counted.
pub fn set_limit(veth: &str, limit_bytes: Option<u64>) -> String {
    let over = limit_bytes.unwrap_or(UNLIMITED).min(UNLIMITED);
    format!("add quota {TABLE} {veth} {{ over {over} bytes }}\n")
}

/// Runs a script as one transaction.
pub fn run(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft has no stdin"))?
        .write_all(script.as_bytes())
        .context("cannot write to nft")?;
    let output = child.wait_with_output().context("cannot wait for nft")?;
    if !output.status.success() {
        bail!("nft failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The bytes a sandbox's quota has counted, or `None` when it has none (no network, or gone).
pub fn quota_used(veth: &str) -> anyhow::Result<Option<u64>> {
    let output = Command::new("nft")
        .args(["-j", "list", "quota"])
        .args(TABLE.split(' '))
        .arg(veth)
        .stdin(Stdio::null())
        .output()
        .context("cannot run nft (install nftables)")?;
    if !output.status.success() {
        return Ok(None);
    }
    parse_quota_used(&output.stdout)
}

/// `used` of the one quota in `nft -j list quota …` output.
fn parse_quota_used(json: &[u8]) -> anyhow::Result<Option<u64>> {
    let value: serde_json::Value = serde_json::from_slice(json).context("nft printed no JSON")?;
    let items = value.get("nftables").and_then(|v| v.as_array()).ok_or_else(|| anyhow!("unexpected nft JSON"))?;
    Ok(items.iter().find_map(|item| item.get("quota")?.get("used")?.as_u64()))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_denies_the_fixed_ranges_and_the_configured_ones() {
        let range = parse_net("10.88.0.0/16").expect("net");
        let script = ruleset(range, &[parse_net("192.168.0.0/16").expect("net")], &["10.0.0.2".parse().expect("ip")]);
        assert!(script.contains("add element inet cloudterm sandbox_nets { 10.88.0.0/16 }"), "{script}");
        assert!(script.contains("169.254.0.0/16") && script.contains("127.0.0.0/8"), "{script}");
        assert!(script.contains("192.168.0.0/16"), "{script}");
        assert!(script.contains("add element inet cloudterm dns4 { 10.0.0.2 }"), "{script}");
        // Rewriting the chains makes the script idempotent: every chain is flushed first.
        for chain in ["input", "forward", "postrouting", "from_sandbox", "account"] {
            let flush = script.find(&format!("flush chain inet cloudterm {chain}\n")).expect("flushed");
            let first_rule = script.find(&format!("add rule inet cloudterm {chain} ")).expect("has rules");
            assert!(flush < first_rule, "{chain} is flushed before its rules");
        }
        assert!(!ruleset(range, &[], &[]).contains("dns4 {  }"), "an empty element list is a syntax error");
    }

    #[test]
    fn removal_adds_before_it_deletes() {
        let script = remove_sandbox("ctv0123456789ab", "10.88.0.2".parse().expect("ip"));
        let add = script.find("add element inet cloudterm egress").expect("add");
        let delete = script.find("delete element inet cloudterm egress").expect("delete");
        assert!(add < delete);
        assert!(script.ends_with("delete quota inet cloudterm ctv0123456789ab\n"));
    }

    #[test]
    fn limits_and_readings() {
        assert_eq!(set_limit("ctvx", Some(5)), "add quota inet cloudterm ctvx { over 5 bytes }\n");
        assert!(set_limit("ctvx", None).contains(&UNLIMITED.to_string()));
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"quota": {"family": "inet", "name": "ctvx", "table": "cloudterm", "handle": 4, "bytes": 100, "used": 42, "inv": true}}]}"#;
        assert_eq!(parse_quota_used(json).expect("parse"), Some(42));
        assert!(parse_quota_used(b"nope").is_err());
    }
}
