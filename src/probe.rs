//! Real packets between namespaces: a TCP/UDP echo server that answers each client with the
//! address it saw the client at, and the client that asks. The answer makes masquerading
//! (or its absence) visible. Used by `kudonet demo` and by the kernel tests.
//!
//! Sockets belong to the network namespace of the thread that creates them, so servers and
//! clients run on threads that have entered the namespace they speak from.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::kernel::netlink::in_namespace;
use crate::spec::{Family, Protocol};

/// Where a socket lives: the calling thread's namespace (the node), or a named namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Here,
    Netns(PathBuf),
}

impl Place {
    pub fn netns(path: impl AsRef<Path>) -> Place {
        Place::Netns(path.as_ref().to_path_buf())
    }

    /// Runs `work` on a thread inside this place.
    fn run<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match self {
            Place::Here => std::thread::scope(|scope| {
                scope
                    .spawn(work)
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("probe thread panicked")))
            }),
            Place::Netns(path) => in_namespace(&File::open(path)?, work)?,
        }
    }
}

/// How long a client waits for an answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// An echo server; stops when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts an echo server in `place`, listening on `address` for `protocol`. It answers every
/// client with the client's address as it saw it (`10.0.0.2:41234`, `[fd00:10::2]:41234`).
/// A server on `[::]` serves both families (unless the namespace has
/// `net.ipv6.bindv6only`); it answers an IPv4 client with its IPv4 address, not the
/// IPv4-mapped IPv6 one.
pub fn serve(
    place: &Place,
    protocol: Protocol,
    address: impl Into<SocketAddr>,
) -> io::Result<EchoServer> {
    let address = address.into();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let place = place.clone();
    let stop_flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let namespace = match &place {
            Place::Here => None,
            Place::Netns(path) => match File::open(path) {
                Ok(file) => Some(file),
                Err(error) => return drop(ready_tx.send(Err(error))),
            },
        };
        if let Some(namespace) = &namespace
            && let Err(error) = nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        {
            return drop(ready_tx.send(Err(error.into())));
        }
        match protocol {
            Protocol::Tcp => serve_tcp(address, &stop_flag, &ready_tx),
            Protocol::Udp => serve_udp(address, &stop_flag, &ready_tx),
        }
    });
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("echo server thread ended"))??;
    Ok(EchoServer {
        stop,
        thread: Some(thread),
    })
}

const POLL: Duration = Duration::from_millis(20);

/// How a server writes the address it saw a client at: IPv4 clients of a `[::]` socket as
/// IPv4.
fn answer(peer: SocketAddr) -> String {
    format!(
        "{}\n",
        SocketAddr::new(peer.ip().to_canonical(), peer.port())
    )
}

fn serve_tcp(
    address: SocketAddr,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<io::Result<()>>,
) {
    let listener =
        match TcpListener::bind(address).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => listener,
            Err(error) => return drop(ready.send(Err(error))),
        };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.write_all(answer(peer).as_bytes());
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn serve_udp(
    address: SocketAddr,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<io::Result<()>>,
) {
    let socket =
        match UdpSocket::bind(address).and_then(|s| s.set_read_timeout(Some(POLL)).map(|()| s)) {
            Ok(socket) => socket,
            Err(error) => return drop(ready.send(Err(error))),
        };
    let _ = ready.send(Ok(()));
    let mut buffer = [0; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(answer(peer).as_bytes(), peer);
        }
    }
}

/// Asks the echo server at `target` from `place`; returns the address the server saw this
/// client at.
pub fn ask(
    place: &Place,
    protocol: Protocol,
    target: impl Into<SocketAddr>,
) -> io::Result<SocketAddr> {
    let target = target.into();
    let answer = place.run(move || match protocol {
        Protocol::Tcp => {
            let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        }
        Protocol::Udp => {
            let any = SocketAddr::new(Family::of(target.ip()).unspecified(), 0);
            let socket = UdpSocket::bind(any)?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send_to(b"?", target)?;
            let mut buffer = [0; 512];
            let (length, _) = socket.recv_from(&mut buffer)?;
            Ok(String::from_utf8_lossy(&buffer[..length]).into_owned())
        }
    })?;
    answer.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {answer:?}"),
        )
    })
}
