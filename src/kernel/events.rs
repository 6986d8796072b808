//! Kernel events: rtnetlink (links, addresses, routes) from the node's namespace and from
//! each instance namespace, and nf_tables ruleset changes, read by one thread with epoll.
//! What they name is kept as [`Changes`] for the next observation to read again
//! ([`KernelEvents::take_changes`]); a [`Listener`] (the controller) is told that something
//! changed, and nothing more.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::netlink::in_namespace;
use super::netlink::route::changed_links;
use crate::dataplane::Changes;

/// Who is told of kernel events. The reader holds it weakly: it stops once the listener is
/// gone.
pub trait Listener: Send + Sync + 'static {
    /// Something changed in a watched namespace (or events were lost): what is noted in
    /// [`KernelEvents::take_changes`] before this is called.
    fn kernel_changed(&self);
}

/// rtnetlink multicast groups: links, IPv4 addresses, IPv4 routes, IPv6 addresses, IPv6
/// routes (RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR,
/// RTMGRP_IPV6_ROUTE).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// Kernel events from the node's namespace and from each instance namespace, read by one
/// thread with epoll. Namespaces are added and removed as instances come and go: a socket
/// inside a namespace keeps it alive, so one that vanished from the netns directory must
/// be let go, and one made anew under the same name needs a new socket. Clones share it.
#[derive(Clone)]
pub struct KernelEvents {
    epoll: Arc<Epoll>,
    watched: Arc<Mutex<Watched>>,
}

/// The subscribed sockets. epoll reports a token, never a file descriptor: a descriptor
/// closed here and reused elsewhere (a dataplane socket) must never be read by the reader.
#[derive(Default)]
struct Watched {
    next_token: u64,
    sockets: HashMap<u64, netlink_sys::Socket>,
    /// Namespace path -> (nsfs inode, token).
    namespaces: HashMap<PathBuf, (u64, u64)>,
    /// Token -> the name of its namespace in the netns directory; the node's has none.
    names: HashMap<u64, String>,
    /// The token of the nf_tables socket, whose messages name nothing: iptables is read
    /// again whenever its generation moved.
    firewall: Option<u64>,
    /// What the events received since the last [`KernelEvents::take_changes`] named.
    changes: Changes,
}

impl Watched {
    fn add(&mut self, epoll: &Epoll, socket: netlink_sys::Socket) -> io::Result<u64> {
        let token = self.next_token;
        self.next_token += 1;
        epoll.add(socket.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        self.sockets.insert(token, socket);
        Ok(token)
    }

    fn remove(&mut self, epoll: &Epoll, token: u64) {
        self.names.remove(&token);
        if let Some(socket) = self.sockets.remove(&token) {
            let _ = epoll.delete(socket.as_fd());
        }
    }

    /// Notes what the messages in `buffer`, received on `token`'s socket, may have
    /// changed: a whole namespace of the netns directory, or a link of the node by index
    /// (its addresses and routes are read on every pass anyway).
    fn note(&mut self, token: u64, buffer: &[u8]) {
        if self.firewall == Some(token) {
            return;
        }
        if let Some(name) = self.names.get(&token) {
            self.changes.namespaces.insert(name.clone());
            return;
        }
        for index in changed_links(buffer) {
            self.changes.host_indexes.insert(index);
        }
    }

    /// Reads every message waiting on `token`'s socket and notes it. Returns whether there
    /// was any, and whether the kernel dropped some (the socket's buffer overflowed): then
    /// everything must be read again, except for the nf_tables socket, which names nothing.
    fn drain(&mut self, token: u64, buffer: &mut [u8]) -> (bool, bool) {
        let Some(fd) = self.sockets.get(&token).map(|socket| socket.as_raw_fd()) else {
            return (false, false);
        };
        let (mut received_any, mut overrun) = (false, false);
        loop {
            let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(fd, buffer, flags) {
                Ok(0) => break,
                Ok(received) => {
                    received_any = true;
                    self.note(token, &buffer[..received]);
                }
                Err(nix::errno::Errno::ENOBUFS) if self.firewall == Some(token) => {
                    received_any = true;
                }
                Err(nix::errno::Errno::ENOBUFS) => {
                    // Noted here, with what the pass must read, not only as a trigger.
                    self.changes.everything = true;
                    overrun = true;
                }
                Err(_) => break,
            }
        }
        (received_any, overrun)
    }
}

impl KernelEvents {
    pub fn start<L: Listener>(listener: &Arc<L>) -> io::Result<KernelEvents> {
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        let watched = Arc::new(Mutex::new(Watched::default()));
        lock(&watched).add(&epoll, subscribe()?)?;
        // iptables-nft and nft changes: a firewall reload is repaired at once, not at the
        // next resync. Without nf_tables (the legacy backend) the resync catches them.
        if let Ok(socket) = subscribe_nftables() {
            let mut watched = lock(&watched);
            let token = watched.add(&epoll, socket)?;
            watched.firewall = Some(token);
        }
        let (reader_epoll, reader_watched) = (epoll.clone(), watched.clone());
        let listener = Arc::downgrade(listener);
        std::thread::Builder::new()
            .name("kernel-events".into())
            .spawn(move || read_events(&reader_epoll, &reader_watched, &listener))?;
        Ok(KernelEvents { epoll, watched })
    }

    /// Listens inside exactly the namespaces of `namespaces` from now on, each given as
    /// observations name it (`kudo-web` in the netns directory, or the path of one someone
    /// else owns) and by its path. A namespace listened to for the first time is noted as
    /// changed: what happened in it between the pass that read it and now raised no event
    /// here. Returns whether there was any.
    pub fn watch_namespaces(&self, namespaces: &[(String, PathBuf)]) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut watched = lock(&self.watched);
        let current: HashMap<&PathBuf, (u64, &String)> = namespaces
            .iter()
            .filter_map(|(name, path)| Some((path, (std::fs::metadata(path).ok()?.ino(), name))))
            .collect();
        let stale: Vec<(PathBuf, u64)> = watched
            .namespaces
            .iter()
            .filter(|(path, (inode, _))| current.get(path).map(|(inode, _)| inode) != Some(inode))
            .map(|(path, (_, token))| (path.clone(), *token))
            .collect();
        for (path, token) in stale {
            watched.namespaces.remove(&path);
            watched.remove(&self.epoll, token);
        }
        let mut added = false;
        for (path, (inode, name)) in current {
            if watched.namespaces.contains_key(path) {
                continue;
            }
            let socket = std::fs::File::open(path)
                .and_then(|namespace| in_namespace(&namespace, subscribe)?);
            if let Ok(token) = socket.and_then(|socket| watched.add(&self.epoll, socket)) {
                watched.namespaces.insert(path.clone(), (inode, token));
                watched.changes.namespaces.insert(name.clone());
                watched.names.insert(token, name.clone());
                added = true;
            }
        }
        added
    }

    /// Stops listening inside the namespace at `path`, which kudonet is deleting: the
    /// socket would keep it, and its veths, alive.
    pub fn forget_namespace(&self, path: &std::path::Path) {
        let mut watched = lock(&self.watched);
        if let Some((_, token)) = watched.namespaces.remove(path) {
            watched.remove(&self.epoll, token);
        }
    }

    /// What the events received since the last call named, those still waiting in the
    /// sockets included: a change made before this call (by a library call that held the
    /// node's lock, say) has queued its event before it returned, so it is in.
    pub fn take_changes(&self) -> Changes {
        let mut watched = lock(&self.watched);
        let mut buffer = vec![0u8; 64 * 1024];
        let tokens: Vec<u64> = watched.sockets.keys().copied().collect();
        for token in tokens {
            watched.drain(token, &mut buffer);
        }
        std::mem::take(&mut watched.changes)
    }
}

fn lock(watched: &Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    watched
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A non-blocking socket subscribed to link, address and route events of the calling
/// thread's namespace.
fn subscribe() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    socket.bind(&netlink_sys::SocketAddr::new(0, GROUPS))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// The nf_tables multicast group (`NFNLGRP_NFTABLES`): every change of the ruleset.
const NFNLGRP_NFTABLES: u32 = 7;

/// A non-blocking socket subscribed to ruleset changes of the calling thread's namespace.
fn subscribe_nftables() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind(&netlink_sys::SocketAddr::new(
        0,
        1 << (NFNLGRP_NFTABLES - 1),
    ))?;
    socket.set_non_blocking(true)?;
    Ok(socket)
}

fn read_events<L: Listener>(epoll: &Epoll, watched: &Mutex<Watched>, listener: &Weak<L>) {
    let mut ready = [EpollEvent::empty(); 64];
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = match epoll.wait(&mut ready, EpollTimeout::from(1000u16)) {
            Ok(count) => count,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        for event in &ready[..count] {
            // A token gone since epoll reported it has nothing to read (and its descriptor
            // may be reused): `drain` finds no socket. Notes are made before the trigger is
            // sent, so the pass it starts finds them.
            // An overrun is noted in the changes (read everything), so it is a kernel
            // trigger like any other.
            let (received, overrun) = lock(watched).drain(event.data(), &mut buffer);
            if received || overrun {
                let Some(listener) = listener.upgrade() else {
                    return;
                };
                listener.kernel_changed();
            }
        }
        if listener.strong_count() == 0 {
            return;
        }
    }
}
