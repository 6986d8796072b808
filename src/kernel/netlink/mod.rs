//! The netlink socket layer: a socket opened in a network namespace, requests with their
//! acknowledgement or dump, and the errno-typed [`NetlinkError`]. Each family has its
//! module: `route` (rtnetlink: links, addresses, routes, forwarding entries), `netfilter`
//! (nf_tables: the generation, forward chains and rules) and `nftables` (kudonet's own
//! table `inet kudonet`: encoded, written in one batch per change, read back).
//!
//! Synchronous on purpose: the library API is synchronous, a request is a few microseconds,
//! and no async runtime has to be entered to change a link. A netlink socket talks to the
//! namespace it was created in.

pub(crate) mod netfilter;
pub(crate) mod nftables;
pub(crate) mod route;

use std::fmt;
use std::fs::File;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

/// The nf_tables socket, also for the benchmark (which counts the ruleset's commits).
pub use netfilter::NfTables;
pub use nftables::TableState;
pub use route::Netlink;

/// A failed netlink request: what was asked, and the kernel's answer.
#[derive(Debug)]
pub struct NetlinkError {
    pub operation: String,
    pub source: io::Error,
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operation, self.source)
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl NetlinkError {
    pub(crate) fn new(operation: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError {
            operation: operation.into(),
            source,
        }
    }

    /// The errno the kernel answered, if any.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// Whether asking again later can succeed: as [`errno_can_retry`] says for the kernel's
    /// errno (no for `EPERM`, `EACCES`, `EINVAL`, `ENAMETOOLONG`…; yes for `EBUSY`,
    /// `EAGAIN`, `ENOBUFS`, `EEXIST` or `ENODEV` after a race…), and yes without one (a
    /// reply cut short or a dump interrupted too often).
    ///
    /// [`errno_can_retry`]: crate::dataplane::errno_can_retry
    pub fn can_retry(&self) -> bool {
        self.errno().is_none_or(crate::dataplane::errno_can_retry)
    }
}

impl From<NetlinkError> for crate::dataplane::Cause {
    fn from(error: NetlinkError) -> Self {
        let can_retry = error.can_retry();
        crate::dataplane::Cause::new(error, can_retry)
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// A netlink socket of `protocol` in the calling thread's network namespace, talking to
/// the kernel.
pub fn connected(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// A connected socket and the sequence number of its last request.
pub(crate) struct Connection {
    socket: Socket,
    sequence: u32,
}

impl Connection {
    /// A socket of `protocol` in the calling thread's network namespace.
    pub(crate) fn open(protocol: isize) -> io::Result<Connection> {
        Ok(Connection {
            socket: connected(protocol)?,
            sequence: 0,
        })
    }

    /// Sends `message` and returns what `map` makes of each reply, as it arrives: a dump
    /// of a thousand links is never held parsed all at once (a parsed link is kilobytes).
    pub fn request_map<M, T>(
        &mut self,
        message: M,
        flags: u16,
        map: &mut impl FnMut(M) -> Option<T>,
    ) -> io::Result<Vec<T>>
    where
        M: NetlinkSerializable + NetlinkDeserializable + fmt::Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply =
                    NetlinkMessage::<M>::deserialize(&bytes[offset..]).map_err(|error| {
                        io::Error::new(io::ErrorKind::InvalidData, error.to_string())
                    })?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    // The dump raced a change: read it to its end (a socket runs one dump at
                    // a time), then let the caller dump again.
                    interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                    match reply.payload {
                        NetlinkPayload::Done(_) if interrupted => {
                            return Err(io::Error::from(io::ErrorKind::Interrupted));
                        }
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(error) => {
                            return match error.code {
                                Some(_) => Err(error.to_io()),
                                None => Ok(replies),
                            };
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            replies.extend(map(inner));
                            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                                return Ok(replies);
                            }
                        }
                        NetlinkPayload::Overrun(_) => {
                            return Err(io::Error::other("netlink overrun"));
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// Runs `work` on a thread that has entered the network namespace `namespace`: namespaces
/// are per thread, and the caller's own thread must stay where it is.
pub fn in_namespace<T: Send>(namespace: &File, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace worker thread panicked")))
    })
}
