//! Probes: places to send packets from, and what a server saw.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;

use kudonet::probe::{self, Place};
use kudonet::spec::Protocol;

/// A namespace of the default netns directory, as a place to send packets from.
pub fn netns(name: &str) -> Place {
    Place::netns(Path::new("/run/netns").join(name))
}

pub fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

/// The source address the echo server at `target` (`10.0.0.2:80`, `[fd00::2]:80`) saw,
/// asked from `from`.
#[track_caller]
pub fn seen(from: &Place, protocol: Protocol, target: &str) -> String {
    let target: SocketAddr = target.parse().unwrap();
    match probe::ask(from, protocol, target) {
        Ok(source) => source.ip().to_string(),
        Err(error) => panic!("{protocol} {target} from {from:?}: {error}"),
    }
}

/// `seen` over TCP.
#[track_caller]
pub fn seen_tcp(from: &Place, target: &str) -> String {
    seen(from, Protocol::Tcp, target)
}

/// An echo server on `[::]:port` (both families) at `place`.
pub fn serve(place: &Place, protocol: Protocol, port: u16) -> probe::EchoServer {
    let any: SocketAddr = format!("[::]:{port}").parse().unwrap();
    probe::serve(place, protocol, any).unwrap()
}
