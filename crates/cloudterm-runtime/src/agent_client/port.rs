//! Byte streams to a port inside a sandbox ([`PortStream`]), and the receiving end of the
//! socket hand-over (`GET /v1/connect` with `Upgrade: cloudterm-tcp-fd`).
//!
//! Why hand the socket over: piped through the agent, every byte of a preview crosses the
//! sandbox's loopback, the agent (read, write), a Unix socket and the server; a bulk download
//! then costs two more user-space copies and two more wake-ups per chunk than the app served
//! directly. With the agent's connected socket in hand, the server reads the app's answer
//! straight from the sandbox's loopback. The socket still lives in the sandbox's network
//! namespace: no host port is opened and nothing else of the sandbox's network is reachable.
//!
//! What the agent sends is not trusted: exactly one descriptor on exactly one byte, and it
//! must be a connected IPv4/IPv6 stream socket, or the connection is refused.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::sys::socket::{self, sockopt, AddressFamily, ControlMessageOwned, MsgFlags, SockType, SockaddrLike};
use nix::sys::stat::{fstat, SFlag};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::{AgentError, UpgradedStream};

/// A byte stream to `127.0.0.1:port` inside a sandbox.
#[derive(Debug)]
pub enum PortStream {
    /// The sandbox's own connected socket, handed over by the agent (Unix-socket agents of
    /// protocol 2): bytes go straight between the server and the app.
    Socket(TcpStream),
    /// Bytes piped through the agent (vsock agents, and agents of protocol 1).
    Piped(UpgradedStream),
}

impl PortStream {
    /// Whether the agent handed over the socket (it is not on the data path).
    pub fn is_handed_over(&self) -> bool {
        matches!(self, PortStream::Socket(_))
    }
}

impl AsyncRead for PortStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PortStream::Socket(s) => Pin::new(s).poll_read(cx, buf),
            PortStream::Piped(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PortStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PortStream::Socket(s) => Pin::new(s).poll_write(cx, buf),
            PortStream::Piped(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PortStream::Socket(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PortStream::Piped(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PortStream::Socket(s) => s.is_write_vectored(),
            PortStream::Piped(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PortStream::Socket(s) => Pin::new(s).poll_flush(cx),
            PortStream::Piped(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PortStream::Socket(s) => Pin::new(s).poll_shutdown(cx),
            PortStream::Piped(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Asks the agent for the socket on the upgraded control connection and receives it.
pub(super) async fn receive_socket(mut unix: UnixStream) -> Result<TcpStream, AgentError> {
    let refused = |why: String| AgentError::Protocol(format!("socket hand-over: {why}"));
    unix.write_all(b"?").await.map_err(|e| refused(format!("asking: {e}")))?;
    let fd = loop {
        unix.readable().await.map_err(|e| refused(e.to_string()))?;
        match unix.try_io(Interest::READABLE, || receive_fd(unix.as_raw_fd())) {
            Ok(fd) => break fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(refused(e.to_string())),
        }
    };
    check_socket(&fd).map_err(refused)?;
    let socket = std::net::TcpStream::from(fd);
    socket.set_nonblocking(true).map_err(|e| refused(e.to_string()))?;
    let socket = TcpStream::from_std(socket).map_err(|e| refused(e.to_string()))?;
    // The agent set it on its side already; a hostile one might not have.
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// Most descriptors one message can carry (Linux's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// One `recvmsg`: exactly one byte carrying exactly one descriptor. The control buffer has
/// room for the most one message can carry, so the kernel never truncates it (truncated
/// descriptors that were installed could not be found to close), and every descriptor that
/// arrives is owned at once, so a refused message leaks none.
fn receive_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let message = socket::recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for this
            // message; nothing else refers to them, so each is owned exactly once here.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    match (message.bytes, received.len()) {
        (0, 0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the agent closed the connection")),
        (1, 1) => Ok(received.remove(0)),
        (bytes, fds) => Err(io::Error::other(format!(
            "expected one byte with one descriptor, got {bytes} byte(s), {fds} descriptor(s)"
        ))),
    }
}

/// Refuses anything but an IPv4/IPv6 stream socket (a hostile agent could send a file, a
/// pipe or a listening socket).
fn check_socket(fd: &OwnedFd) -> Result<(), String> {
    let stat = fstat(fd.as_raw_fd()).map_err(|e| format!("fstat: {e}"))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err("the descriptor is not a socket".into());
    }
    let kind = socket::getsockopt(fd, sockopt::SockType).map_err(|e| format!("SO_TYPE: {e}"))?;
    if kind != SockType::Stream {
        return Err(format!("the socket is {kind:?}, not a stream"));
    }
    let local: socket::SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(|e| e.to_string())?;
    if !matches!(local.family(), Some(AddressFamily::Inet | AddressFamily::Inet6)) {
        return Err(format!("the socket is {:?}, not TCP", local.family()));
    }
    socket::getpeername::<socket::SockaddrStorage>(fd.as_raw_fd())
        .map_err(|e| format!("the socket is not connected: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};

    /// Plays a (possibly hostile) agent: `payload` carrying `fds`, already waiting when the
    /// host asks.
    async fn agent_sends(fds: Vec<RawFd>, payload: &'static [u8]) -> Result<TcpStream, AgentError> {
        let (host, agent) = std::os::unix::net::UnixStream::pair().expect("pair");
        let iov = [io::IoSlice::new(payload)];
        let cmsgs = if fds.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&fds)] };
        sendmsg::<()>(agent.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).expect("sendmsg");
        host.set_nonblocking(true).expect("nonblocking");
        let got = receive_socket(UnixStream::from_std(host).expect("tokio")).await;
        drop(agent);
        got
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").expect("fds").count()
    }

    #[tokio::test]
    async fn a_connected_tcp_socket_is_accepted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let got = agent_sends(vec![client.as_raw_fd()], b"F").await.expect("accepted");
        assert_eq!(got.peer_addr().expect("peer"), listener.local_addr().expect("addr"));
    }

    #[tokio::test]
    async fn files_pipes_listeners_and_extra_descriptors_are_refused() {
        let file = std::fs::File::open("/proc/self/status").expect("file");
        let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (unix_a, _unix_b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let cases: Vec<(&str, Vec<RawFd>, &'static [u8])> = vec![
            ("a file", vec![file.as_raw_fd()], b"F"),
            ("a pipe", vec![pipe_r.as_raw_fd()], b"F"),
            ("a listening socket", vec![listener.as_raw_fd()], b"F"),
            ("a unix socket", vec![unix_a.as_raw_fd()], b"F"),
            ("a udp socket", vec![udp.as_raw_fd()], b"F"),
            ("two descriptors", vec![client.as_raw_fd(), client.as_raw_fd()], b"F"),
            ("no descriptor", vec![], b"F"),
        ];
        for (what, fds, payload) in cases {
            match agent_sends(fds, payload).await {
                Err(AgentError::Protocol(why)) => assert!(why.contains("hand-over"), "{what}: {why}"),
                other => panic!("{what} was accepted: {other:?}"),
            }
        }
        // Refused descriptors are closed (other tests may open a few meanwhile, not 100).
        let before = open_fds();
        for _ in 0..100 {
            let refused = agent_sends(vec![file.as_raw_fd(), client.as_raw_fd()], b"F").await;
            assert!(refused.is_err());
        }
        assert!(open_fds() < before + 50, "refused descriptors stayed open: {before} -> {}", open_fds());
    }
}
