//! Sandbox networking, for real: sandboxes with `nat` reach a "remote host" (a network
//! namespace standing in for the internet) through the host's NAT, their bytes are counted and
//! cut at the limit; sandboxes with `none` reach nothing; and the attacks a sandbox with a
//! network would try (the host's services on every address, other sandboxes, private and
//! link-local destinations, a forged source address) fail. Every test checks that stopping
//! leaves no veth, nftables entry or address lease behind.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cloudterm_runtime::{Runtime, SandboxHandle};
use cloudterm_runtime_linux::network::parse_net;
use cloudterm_runtime_linux::{NetworkConfig, NetworkMode};

use crate::remote::RemoteHost;
use crate::support::*;

/// The sandbox range of these tests (leases are host-wide, so parallel tests never collide).
const RANGE: &str = "10.213.0.0/22";

fn nat() -> NetworkConfig {
    NetworkConfig {
        mode: NetworkMode::Nat,
        range: parse_net(RANGE).expect("range"),
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        ..NetworkConfig::default()
    }
}

/// True when the tests can run: root (as every runtime test) plus `nft` and `ip`.
fn can_run_network(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    for tool in ["nft", "ip", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            let why = format!("{test}: needs {tool} (apt-get install nftables iproute2 util-linux)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "cannot run under CI=true: {why}");
            eprintln!("SKIPPED {why}");
            return false;
        }
    }
    true
}

/// Sends `bytes` bytes over TCP to `to:port` from inside; prints `CONNECTED` once the
/// connection is up, then `SENT n` once the peer has read everything and closed, or
/// `FAILED <error>`.
async fn send(h: &SandboxHandle, to: Ipv4Addr, port: u16, bytes: usize) -> String {
    let script = format!(
        "import socket\n\
         try:\n    s = socket.create_connection(('{to}', {port}), timeout=5)\n    print('CONNECTED')\n    \
         s.settimeout(5)\n    s.sendall(b'x' * {bytes})\n    s.shutdown(socket.SHUT_WR)\n    \
         s.recv(1)\n    s.close()\n    print('SENT', {bytes})\n\
         except Exception as e:\n    print('FAILED', repr(e))\n"
    );
    let out = exec(h, serde_json::json!({"argv": ["python3", "-c", script], "timeout_ms": 30000})).await;
    format!("{}{}", out.stdout, out.stderr)
}

/// What the sink got from connections to `to`, once they are over.
async fn received_by(remote: &RemoteHost, to: Ipv4Addr, expected: u64) -> u64 {
    for _ in 0..100 {
        if remote.bytes_to(to) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remote.bytes_to(to)
}

/// The host-side veth of a sandbox, as the runtime names it.
fn veth_of(id: &str) -> String {
    use sha2::Digest;
    format!("ctv{}", &hex::encode(sha2::Sha256::digest(id.as_bytes()))[..12])
}

/// Nothing of the sandbox's network is left on the host: no veth, no nftables entry, no lease.
fn assert_no_network_leftovers(id: &str, root_dir: &Path) {
    let veth = veth_of(id);
    assert!(!Path::new("/sys/class/net").join(&veth).exists(), "veth {veth} of {id} is left");
    let table = Command::new("nft").args(["list", "table", "inet", "cloudterm"]).output().expect("nft");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains(&veth), "nftables entries of {id} are left:\n{table}");
    let root = root_dir.display().to_string();
    for entry in std::fs::read_dir("/run/cloudterm/network").into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        assert!(!(text.contains(&format!("\"{id}\"")) && text.contains(&root)), "the lease of {id} is left: {text}");
    }
}

#[tokio::test]
async fn nat_reaches_the_outside_counts_egress_and_none_reaches_nothing() {
    if !can_run_network("nat_reaches_the_outside_counts_egress_and_none_reaches_nothing") {
        return;
    }
    let (remote, links) = RemoteHost::new("out", &["203.0.113.0"]);
    let outside = links[0];

    let t = TestRuntime::with_network(nat());
    let spec = t.spec("natout");
    let h = t.runtime.start(&spec).await.expect("start");
    let config = sh(&h, "cat /etc/resolv.conf; ip -4 -o addr show dev eth0 2>/dev/null || cat /proc/net/route").await;
    assert!(config.stdout.contains("nameserver 192.0.2.53"), "{config:?}");
    let before = t.runtime.egress(&spec.id).await.expect("egress").expect("a nat sandbox has a count");
    let out = send(&h, outside.remote, remote.port, 300_000).await;
    assert!(out.contains("SENT 300000"), "{out}");
    assert_eq!(received_by(&remote, outside.remote, 300_000).await, 300_000);
    let seen: Vec<_> = remote.received().iter().map(|r| r.from).collect();
    assert!(seen.iter().all(|from| *from == outside.host), "not masqueraded as the host: {seen:?}");
    let after = t.runtime.egress(&spec.id).await.expect("egress").expect("count");
    let counted = after - before;
    // Payload plus TCP/IP headers and the handshake: a few percent more, never less.
    assert!((300_000..=330_000).contains(&counted), "counted {counted} bytes for 300000 sent");

    let off = TestRuntime::new();
    let spec_off = off.spec("natnone");
    let h_off = off.runtime.start(&spec_off).await.expect("start");
    let out = send(&h_off, outside.remote, remote.port, 1000).await;
    assert!(out.contains("FAILED") && out.contains("unreachable") && !out.contains("CONNECTED"), "{out}");
    assert_eq!(off.runtime.egress(&spec_off.id).await.expect("egress"), None);
    assert_eq!(remote.received().len(), 1, "only the nat sandbox's connection arrived");

    t.runtime.stop(&spec.id).await.expect("stop");
    off.runtime.stop(&spec_off.id).await.expect("stop");
    assert_no_network_leftovers(&spec.id, &t.root_dir());
}

#[tokio::test]
async fn a_sandbox_reaches_neither_the_host_nor_other_sandboxes_nor_denied_ranges() {
    if !can_run_network("a_sandbox_reaches_neither_the_host_nor_other_sandboxes_nor_denied_ranges") {
        return;
    }
    // One public link, one in a private (denied) range, one link-local.
    let (remote, links) = RemoteHost::new("atk", &["203.0.113.4", "192.168.213.0", "169.254.213.0"]);
    let host_listener = TcpListener::bind("0.0.0.0:0").expect("host listener");
    let host_port = host_listener.local_addr().expect("addr").port();
    host_listener.set_nonblocking(true).expect("nonblocking");

    let t = TestRuntime::with_network(nat());
    let spec_a = t.spec("atka");
    let spec_b = t.spec("atkb");
    let a = t.runtime.start(&spec_a).await.expect("start a");
    let b = t.runtime.start(&spec_b).await.expect("start b");
    let addr_of = |out: &str| -> Ipv4Addr {
        out.split_whitespace()
            .find_map(|word| word.split('/').next()?.parse::<Ipv4Addr>().ok().filter(|ip| !ip.is_loopback()))
            .unwrap_or_else(|| panic!("no address in {out:?}"))
    };
    let b_addr = addr_of(&sh(&b, "ip -4 -o addr show dev eth0").await.stdout);
    let b_gateway = Ipv4Addr::from(u32::from(b_addr) - 1);
    let a_gateway = Ipv4Addr::from(u32::from(addr_of(&sh(&a, "ip -4 -o addr show dev eth0").await.stdout)) - 1);
    // B listens on every address; A must not get through.
    let b_listener = sh(
        &b,
        &format!(
            "nohup python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0', {host_port})); s.listen(); \
             c, _ = s.accept(); open('/tmp/b-reached', 'w').write('yes')\" >/dev/null 2>&1 & sleep 0.3; echo up"
        ),
    )
    .await;
    assert!(b_listener.stdout.contains("up"), "{b_listener:?}");

    let host_addrs: Vec<Ipv4Addr> = String::from_utf8_lossy(
        &Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().expect("ip").stdout,
    )
    .lines()
    .filter_map(|line| line.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
    .collect();
    // 127.0.0.1 is the sandbox's own loopback: the host's stays out of reach with a network too.
    let mut targets = vec![Ipv4Addr::LOCALHOST, a_gateway, b_gateway, b_addr, links[0].host];
    targets.extend(host_addrs.iter().copied());
    for target in targets {
        let out = send(&a, target, host_port, 100).await;
        assert!(out.contains("FAILED") && !out.contains("CONNECTED"), "sandbox a reached {target}:{host_port}: {out}");
    }
    assert!(host_listener.accept().is_err(), "a host listener got a connection from a sandbox");
    let reached = sh(&b, "cat /tmp/b-reached 2>/dev/null || echo no").await;
    assert_eq!(reached.stdout.trim(), "no", "sandbox a reached sandbox b");

    // The outside is reachable, private and link-local destinations are not.
    assert!(send(&a, links[0].remote, remote.port, 10).await.contains("SENT"), "the public link works");
    for denied in [links[1].remote, links[2].remote] {
        let out = send(&a, denied, remote.port, 10).await;
        assert!(out.contains("FAILED") && !out.contains("CONNECTED"), "reached the denied {denied}: {out}");
    }
    let _ = received_by(&remote, links[0].remote, 10).await;
    let to: Vec<_> = remote.received().iter().map(|r| r.to).collect();
    assert_eq!(to, vec![links[0].remote], "only the public destination got anything");

    // A forged source address (the sandbox has CAP_NET_RAW): B's address, from A.
    let forged = format!(
        "import socket, struct\n\
         def csum(b):\n    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n    \
         s = (s >> 16) + (s & 0xffff); s += s >> 16\n    return ~s & 0xffff\n\
         src, dst = socket.inet_aton('{b_addr}'), socket.inet_aton('{}')\n\
         tcp = struct.pack('!HHIIBBHHH', 40000, {}, 1, 0, 5 << 4, 2, 65535, 0, 0)\n\
         tcp = tcp[:16] + struct.pack('!H', csum(src + dst + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]\n\
         ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 1, 0, 64, 6, 0, src, dst)\n\
         ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
         for _ in range(20): s.sendto(ip + tcp, ('{}', 0))\n\
         print('FORGED')\n",
        links[0].remote, remote.port, links[0].remote
    );
    let before = t.runtime.egress(&spec_a.id).await.expect("egress").expect("count");
    let out = exec(&a, serde_json::json!({"argv": ["python3", "-c", forged], "timeout_ms": 10000})).await;
    assert!(out.stdout.contains("FORGED"), "raw sockets work inside, so the rule is what stops it: {out:?}");
    let after = t.runtime.egress(&spec_a.id).await.expect("egress").expect("count");
    assert_eq!(after, before, "forged packets must be dropped before they count or leave");

    t.runtime.stop(&spec_a.id).await.expect("stop");
    t.runtime.stop(&spec_b.id).await.expect("stop");
    assert_no_network_leftovers(&spec_a.id, &t.root_dir());
    assert_no_network_leftovers(&spec_b.id, &t.root_dir());
}

#[tokio::test]
async fn past_the_egress_limit_sends_fail_and_everything_else_works() {
    if !can_run_network("past_the_egress_limit_sends_fail_and_everything_else_works") {
        return;
    }
    let (remote, links) = RemoteHost::new("lim", &["203.0.113.8"]);
    let outside = links[0];
    let t = TestRuntime::with_network(nat());
    let spec = t.spec("limit");
    let h = t.runtime.start(&spec).await.expect("start");
    t.runtime.limit_egress(&spec.id, Some(200_000)).await.expect("limit");

    assert!(send(&h, outside.remote, remote.port, 100_000).await.contains("SENT 100000"));
    assert_eq!(received_by(&remote, outside.remote, 100_000).await, 100_000);
    let used = t.runtime.egress(&spec.id).await.expect("egress").expect("count");
    assert!(used < 200_000, "{used}");

    let out = send(&h, outside.remote, remote.port, 300_000).await;
    assert!(out.contains("FAILED"), "a send past the limit must fail: {out}");
    let used = t.runtime.egress(&spec.id).await.expect("egress").expect("count");
    assert!(used >= 200_000, "the count reached the limit: {used}");
    assert!(remote.bytes_to(outside.remote) < 200_000, "no more than the limit left the host");
    let out = send(&h, outside.remote, remote.port, 10).await;
    assert!(out.contains("FAILED") && !out.contains("CONNECTED"), "still cut: {out}");

    // The sandbox itself keeps working: exec, files, its own loopback.
    let out = sh(&h, "echo alive > /workspace/f && cat /workspace/f").await;
    assert_eq!(out.stdout.trim(), "alive", "{out:?}");
    let lo = sh(
        &h,
        "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
         socket.create_connection(s.getsockname(), timeout=2); print('LO OK')\"",
    )
    .await;
    assert!(lo.stdout.contains("LO OK"), "{lo:?}");

    // Raising the limit lets it out again, with the count kept.
    t.runtime.limit_egress(&spec.id, None).await.expect("lift");
    assert!(send(&h, outside.remote, remote.port, 1000).await.contains("SENT 1000"));
    assert!(t.runtime.egress(&spec.id).await.expect("egress").expect("count") >= used);

    t.runtime.stop(&spec.id).await.expect("stop");
    assert_no_network_leftovers(&spec.id, &t.root_dir());
}

#[tokio::test]
async fn addresses_do_not_collide_across_a_restart_and_a_leftover_is_cleaned_up() {
    if !can_run_network("addresses_do_not_collide_across_a_restart_and_a_leftover_is_cleaned_up") {
        return;
    }
    let t = TestRuntime::with_network(nat());
    let first = t.spec("restart1");
    let h1 = t.runtime.start(&first).await.expect("start");
    // "The server restarts": a new runtime (new helpers) over the same root starts another.
    let again = t.restarted();
    let second = t.spec("restart2");
    let h2 = again.start(&second).await.expect("start after the restart");
    let a1 = sh(&h1, "ip -4 -o addr show dev eth0").await.stdout;
    let a2 = sh(&h2, "ip -4 -o addr show dev eth0").await.stdout;
    let addr = |text: &str| text.split_whitespace().nth(3).map(str::to_owned).unwrap_or_default();
    assert!(!addr(&a1).is_empty() && addr(&a1) != addr(&a2), "{a1} / {a2}");
    // The first sandbox is a leftover for the new runtime: stopping it removes its network too.
    again.stop(&first.id).await.expect("stop the leftover");
    again.stop(&second.id).await.expect("stop");
    again.stop(&second.id).await.expect("stop is idempotent");
    assert_no_network_leftovers(&first.id, &t.root_dir());
    assert_no_network_leftovers(&second.id, &t.root_dir());
}
