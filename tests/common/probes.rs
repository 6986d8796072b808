//! Probes: places to send packets from, and what a server saw.

use std::net::SocketAddrV4;
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

/// The source address the echo server at `target` saw, asked from `from`.
#[track_caller]
pub fn seen(from: &Place, protocol: Protocol, target: &str) -> String {
    match probe::ask(from, protocol, addr(target)) {
        Ok(source) => source.ip().to_string(),
        Err(error) => panic!("{protocol} {target} from {from:?}: {error}"),
    }
}

/// `seen` over TCP.
#[track_caller]
pub fn seen_tcp(from: &Place, target: &str) -> String {
    seen(from, Protocol::Tcp, target)
}
