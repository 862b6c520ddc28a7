//! A stand-in for the outside world: a network namespace (`ip netns add`) joined to the host
//! by veth pairs, one per kind of destination, with a TCP sink listening on all of them that
//! records who sent how many bytes to which address. This machine has no internet; a sandbox
//! reaching the sink through the host's NAT is what reaching the internet looks like.
//!
//! `cloudterm-runtime-linux`'s tests include this file by path (`#[path]`): they cannot depend
//! on this crate, which depends on the server and so on them.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// What the sink received on one connection.
#[derive(Debug, Clone)]
pub struct Received {
    /// The address the connection came from (after NAT: the host's side of the link).
    pub from: Ipv4Addr,
    /// The address it was made to.
    pub to: Ipv4Addr,
    /// Bytes until the sender closed.
    pub bytes: u64,
}

/// One link of the remote namespace: the host's address and the remote's.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The host's address on the link (what the remote sees NAT'd traffic come from).
    pub host: Ipv4Addr,
    /// The remote namespace's address.
    pub remote: Ipv4Addr,
}

/// The remote namespace, its links and its sink; removed on drop.
pub struct RemoteHost {
    netns: String,
    host_ifs: Vec<String>,
    /// The sink's TCP port (on every address of the namespace).
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run a command");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl RemoteHost {
    /// A namespace named after `tag` with one link per `/30` in `blocks` (`a.b.c.d`, the
    /// block's network address: the host gets `.1`, the remote `.2`).
    pub fn new(tag: &str, blocks: &[&str]) -> (RemoteHost, Vec<Link>) {
        let netns = format!("ctremote-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run(&["ip", "netns", "add", &netns]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let mut remote = RemoteHost { netns: netns.clone(), host_ifs: Vec::new(), port: 0, received: Arc::default() };
        let mut links = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let base = u32::from(block.parse::<Ipv4Addr>().expect("block address"));
            let link = Link { host: Ipv4Addr::from(base + 1), remote: Ipv4Addr::from(base + 2) };
            // Not `ctv…`: the runtime's rules treat those as sandboxes.
            let host_if = format!("ctr{}{tag}{i}", std::process::id() % 10_000);
            let host_if: String = host_if.chars().take(15).collect();
            let _ = Command::new("ip").args(["link", "del", &host_if]).output();
            run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0x", "netns", &netns]);
            remote.host_ifs.push(host_if.clone());
            let peer = format!("r{i}");
            run(&["ip", "-n", &netns, "link", "set", "eth0x", "name", &peer]);
            run(&["ip", "addr", "add", &format!("{}/30", link.host), "dev", &host_if]);
            run(&["ip", "link", "set", &host_if, "up"]);
            run(&["ip", "-n", &netns, "addr", "add", &format!("{}/30", link.remote), "dev", &peer]);
            run(&["ip", "-n", &netns, "link", "set", &peer, "up"]);
            links.push(link);
        }
        remote.port = remote.start_sink();
        (remote, links)
    }

    /// Binds the sink inside the namespace (from a thread that joins it: a socket stays in
    /// the namespace it was made in) and accepts on a background thread.
    fn start_sink(&self) -> u16 {
        let path = format!("/run/netns/{}", self.netns);
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the remote namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("join the remote namespace");
            TcpListener::bind("0.0.0.0:0").expect("bind the sink")
        })
        .join()
        .expect("sink thread");
        let port = listener.local_addr().expect("sink address").port();
        let received = Arc::clone(&self.received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let received = Arc::clone(&received);
                std::thread::spawn(move || {
                    let (Ok(SocketAddr::V4(from)), Ok(SocketAddr::V4(to))) = (stream.peer_addr(), stream.local_addr())
                    else {
                        return;
                    };
                    let mut bytes = 0u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        bytes += n as u64;
                    }
                    if let Ok(mut list) = received.lock() {
                        list.push(Received { from: *from.ip(), to: *to.ip(), bytes });
                    }
                });
            }
        });
        port
    }

    /// Every connection that ended so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|list| list.clone()).unwrap_or_default()
    }

    /// Bytes received on connections made to `to`.
    pub fn bytes_to(&self, to: Ipv4Addr) -> u64 {
        self.received().iter().filter(|r| r.to == to).map(|r| r.bytes).sum()
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        for host_if in &self.host_ifs {
            let _ = Command::new("ip").args(["link", "del", host_if]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}
