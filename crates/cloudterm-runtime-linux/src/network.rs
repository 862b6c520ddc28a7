//! Outbound network of linux sandboxes, as the operator configures it: none at all (only `lo`,
//! the default), or NAT through the host from a private range, minus the destinations no
//! sandbox may reach. The helper does the work (`helper/net/`); this is the shared vocabulary.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// Whether sandboxes get a route out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A network namespace with only `lo`: no egress at all.
    #[default]
    None,
    /// A veth pair per sandbox, a /30 from [`NetworkConfig::range`], masqueraded out of the host.
    Nat,
}

impl NetworkMode {
    /// The name used in config files and helper arguments.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Nat => "nat",
        }
    }
}

impl FromStr for NetworkMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "none" => Ok(NetworkMode::None),
            "nat" => Ok(NetworkMode::Nat),
            other => Err(format!("unknown network mode {other:?} (expected none or nat)")),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Destinations a sandbox never reaches, whatever the configuration says: "this network",
/// loopback, link-local (cloud metadata services live at 169.254.169.254) and multicast,
/// reserved and broadcast. The sandboxes' own range and the host's addresses are refused by
/// separate rules.
pub const ALWAYS_DENIED: &[&str] = &["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"];

/// The default of [`NetworkConfig::deny`]: private and shared address space, where a host's
/// LAN, its cloud VPC and the services on them live. An operator who wants sandboxes to reach
/// some of it sets the list explicitly.
pub const DEFAULT_DENY: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"];

/// The default of [`NetworkConfig::range`].
pub const DEFAULT_RANGE: &str = "10.88.0.0/16";

/// How linux sandboxes reach the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// None or NAT.
    pub mode: NetworkMode,
    /// The private range sandbox addresses come from, one /30 per sandbox (gateway on the host
    /// side, the sandbox's address on the other). Between a /12 and a /30, in private space.
    pub range: Ipv4Net,
    /// Destinations refused besides [`ALWAYS_DENIED`] (default [`DEFAULT_DENY`]).
    pub deny: Vec<Ipv4Net>,
    /// Name servers written to the sandbox's `/etc/resolv.conf`; reachable on port 53 even
    /// inside a denied range (a VPC resolver). Empty: the host's own non-loopback ones.
    pub dns: Vec<Ipv4Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::None,
            range: parse_net(DEFAULT_RANGE).unwrap_or_default(),
            deny: DEFAULT_DENY.iter().filter_map(|net| parse_net(net).ok()).collect(),
            dns: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// Checks what parsing alone cannot: the range must hold at least one /30 and be private
    /// enough not to shadow real destinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.range.prefix_len() > 30 {
            return Err(format!("network range {} is smaller than one /30", self.range));
        }
        if self.range.prefix_len() < 12 {
            return Err(format!("network range {} is larger than a /12", self.range));
        }
        if !self.range.addr().is_private() && !Ipv4Net::from_str("100.64.0.0/10").is_ok_and(|n| n.contains(&self.range))
        {
            return Err(format!(
                "network range {} is not private (10/8, 172.16/12, 192.168/16 or 100.64/10)",
                self.range
            ));
        }
        Ok(())
    }
}

/// Parses `a.b.c.d/n` (or a bare address, as a /32) into its network.
pub fn parse_net(text: &str) -> Result<Ipv4Net, String> {
    let text = text.trim();
    let net = match text.parse::<Ipv4Net>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<Ipv4Addr>()
            .map(Ipv4Net::from)
            .map_err(|_| format!("{text:?} is not an IPv4 network (a.b.c.d/n)"))?,
    };
    Ok(net.trunc())
}

/// Parses a comma-separated list of networks (empty items are skipped).
pub fn parse_nets(text: &str) -> Result<Vec<Ipv4Net>, String> {
    text.split(',').filter(|item| !item.trim().is_empty()).map(parse_net).collect()
}

/// Parses a comma-separated list of IPv4 addresses (empty items are skipped).
pub fn parse_addrs(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().map_err(|_| format!("{item:?} is not an IPv4 address")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_validate() {
        assert_eq!(parse_net("10.88.1.7/16"), Ok(parse_net("10.88.0.0/16").expect("net")));
        assert_eq!(parse_net("1.2.3.4").map(|n| n.prefix_len()), Ok(32));
        assert!(parse_net("10.88.0.0/33").is_err());
        assert!(parse_net("fe80::/10").is_err());
        assert_eq!(parse_nets("10.0.0.0/8, ,192.168.0.0/16").map(|v| v.len()), Ok(2));
        assert!(parse_addrs("1.1.1.1,x").is_err());

        let mut config = NetworkConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.range = parse_net("8.8.0.0/16").expect("net");
        assert!(config.validate().is_err(), "a public range would shadow real destinations");
        config.range = parse_net("10.0.0.0/8").expect("net");
        assert!(config.validate().is_err(), "too large");
        config.range = parse_net("10.1.2.0/31").expect("net");
        assert!(config.validate().is_err(), "too small");
        config.range = parse_net("100.100.0.0/24").expect("net");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn modes_round_trip() {
        for mode in [NetworkMode::None, NetworkMode::Nat] {
            assert_eq!(mode.as_str().parse::<NetworkMode>(), Ok(mode));
        }
        assert!("bridge".parse::<NetworkMode>().is_err());
    }
}
