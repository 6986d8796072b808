//! Named network namespaces, the way `ip netns` keeps them: a namespace is bind-mounted on a
//! file of the netns directory (`/run/netns/kudo-web`), which keeps it alive and lets
//! `ip netns exec` find it.
//!
//! Nothing here forks: a namespace is created on a short-lived thread that unshares its
//! network namespace, marks the new namespace's loopback as kudonet's, and bind-mounts
//! `/proc/thread-self/ns/net` onto the file. The mark is set before the namespace becomes
//! visible, so a namespace kudonet created is never mistaken for a foreign one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::netlink::Netlink;

use crate::names::NAMESPACE_MARK;

/// Makes `dir` a mount point with shared propagation, as `ip netns add` does, so that
/// namespaces mounted on its files show in every mount namespace of the machine (and a
/// namespace mounted by kudonet is visible to the orchestrator's agent).
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            shared().map_err(io::Error::from)
        }
        Err(error) => Err(error.into()),
    }
}

/// Creates the namespace `name` in `dir`, with its loopback marked as kudonet's.
pub fn create(dir: &Path, name: &str) -> io::Result<()> {
    prepare_dir(dir)?;
    let path = dir.join(name);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        // An empty file that is not a mounted namespace is what an interrupted
        // `ip netns add` (or kudonet) leaves behind: nothing lives there; reuse it.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && is_leftover(&path) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && !is_namespace(&path) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a namespace: remove it",
                    path.display()
                ),
            ));
        }
        Err(error) => return Err(error),
    }
    let created = std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                let mut netlink = Netlink::open()?;
                netlink
                    .set_alias(1, "lo", NAMESPACE_MARK)
                    .map_err(|error| error.source)?;
                // IPv6 stays on, quiet: eth0 makes no link-local address and runs no
                // duplicate address detection or router solicitation, so a new instance
                // sends nothing for the bridge to copy to every port (a cost that grows
                // with the square of the instances); kudonet gives it its addresses.
                ipv6_quiet_defaults()?;
                crate::faults::crash_point();
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace worker thread panicked")))
    });
    if created.is_err() {
        let _ = fs::remove_file(&path);
    }
    created
}

/// Turns IPv6 off on `devices` (or `all`, `default`) of the calling thread's network
/// namespace; nothing to do on a kernel without IPv6.
pub fn disable_ipv6(devices: &[&str]) -> io::Result<()> {
    for device in devices {
        match fs::write(
            format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6"),
            "1",
        ) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// The IPv6 settings of a new instance namespace, for the links made in it: no link-local
/// address, no duplicate address detection, no router advertisements. Nothing to do on a
/// kernel without IPv6.
fn ipv6_quiet_defaults() -> io::Result<()> {
    for (key, value) in [
        ("addr_gen_mode", "1"),
        ("accept_dad", "0"),
        ("accept_ra", "0"),
    ] {
        match fs::write(format!("/proc/sys/net/ipv6/conf/default/{key}"), value) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Turns duplicate address detection off for `device` of the node's namespace; nothing to
/// do on a kernel without IPv6.
pub fn skip_ipv6_dad(device: &str) -> io::Result<()> {
    match fs::write(format!("/proc/sys/net/ipv6/conf/{device}/accept_dad"), "0") {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Turns IPv6 on for `link`, which had it off (a namespace or segment made by an older
/// kudonet, for IPv4 only), without duplicate address detection. Inside an instance
/// namespace, without a link-local address either (instances send from their own address);
/// a bridge of the node keeps its link-local one, which the node needs to solicit its
/// neighbours for traffic it forwards.
pub fn enable_ipv6(dir: &Path, link: &crate::observed::LinkRef) -> io::Result<()> {
    let conf = format!("/proc/sys/net/ipv6/conf/{}", link.name);
    let Some(netns) = &link.netns else {
        fs::write(format!("{conf}/accept_dad"), "0")?;
        return fs::write(format!("{conf}/disable_ipv6"), "0");
    };
    let write = || -> io::Result<()> {
        fs::write(format!("{conf}/addr_gen_mode"), "1")?;
        fs::write(format!("{conf}/accept_dad"), "0")?;
        fs::write(format!("{conf}/accept_ra"), "0")?;
        fs::write(format!("{conf}/disable_ipv6"), "0")
    };
    // /proc/sys/net shows the network namespace of the thread that opens it.
    super::netlink::in_namespace(&open(dir, netns)?, write)?
}

/// Deletes the namespace `name`: unmounts and removes its file. The kernel frees the
/// namespace (and the veth ends in it) once no process uses it any more.
pub fn delete(dir: &Path, name: &str) -> io::Result<()> {
    let path = dir.join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(error) => return Err(error.into()),
    }
    fs::remove_file(&path)
}

/// The names of the entries of `dir` that are mounted network namespaces, sorted. A missing
/// directory has none.
pub fn list(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| is_namespace(&entry.path()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Whether `path` is an empty regular file that is not a namespace: the mount point an
/// interrupted `ip netns add` leaves behind.
fn is_leftover(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == 0)
        && !is_namespace(path)
}

/// Whether `path` is a network namespace (a bind mount of one), not a plain file.
pub fn is_namespace(path: &Path) -> bool {
    use nix::sys::statfs::{NSFS_MAGIC, statfs};
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == NSFS_MAGIC)
}

/// Runs `work` on each item, the items split among short-lived threads, one per core.
/// `work` may enter other namespaces: its threads end with it. Fails if one panicked.
pub fn on_every_core<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> R + Sync,
) -> io::Result<Vec<R>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(items.len());
    let chunk = items.len().div_ceil(workers);
    let mut parts = Vec::new();
    let mut items = items.into_iter();
    loop {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(work).collect::<Vec<R>>()))
            .collect();
        let mut results = Vec::new();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| io::Error::other("a namespace worker thread panicked"))?;
            results.extend(part);
        }
        Ok(results)
    })
}

/// Opens namespace `name` of `dir`, for `setns` or as the target of a new veth's peer.
/// The network namespace of the process: the node's.
pub const OWN_NAMESPACE: &str = "/proc/self/ns/net";

/// The nsfs inode of the namespace at `path` (a bind mount of it, or a `/proc` link):
/// equal inodes are one namespace.
pub fn inode(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

pub fn open(dir: &Path, name: &str) -> io::Result<File> {
    File::open(dir.join(name))
}

/// Netlink sockets inside the namespaces of a netns directory, opened once and reused: a
/// socket stays in its namespace, and opening one costs a thread that enters it.
///
/// A socket is only reused while the name still leads to the same namespace (same nsfs
/// inode): a namespace deleted and made anew under the same name gets a fresh socket. A
/// cached socket keeps its namespace alive, so sockets of names that left the directory
/// must be let go: [`NamespaceSockets::refresh`] does. The node's own namespace, under
/// whatever name (a bind mount of it someone names as an instance's `netns`), is never
/// an instance's: it reads as no namespace there.
pub struct NamespaceSockets {
    dir: PathBuf,
    sockets: std::collections::HashMap<String, (u64, Netlink)>,
    /// The node's own namespace (the process's), by device and inode.
    node: Option<(u64, u64)>,
}

impl NamespaceSockets {
    pub fn new(dir: &Path) -> NamespaceSockets {
        NamespaceSockets {
            dir: dir.to_path_buf(),
            sockets: Default::default(),
            node: inode(Path::new(OWN_NAMESPACE)).ok(),
        }
    }

    /// The socket inside namespace `name`.
    pub fn get(&mut self, name: &str) -> io::Result<&mut Netlink> {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join(name);
        let inode = fs::metadata(&path)?.ino();
        let fresh = !matches!(self.sockets.get(name), Some((cached, _)) if *cached == inode);
        if fresh {
            self.sockets
                .insert(name.to_string(), (inode, Netlink::open_in(&path)?));
        }
        Ok(&mut self.sockets.get_mut(name).expect("inserted above").1)
    }

    /// Makes sure each namespace of `names` has a socket: keeps the cached ones still in the
    /// same namespace (same nsfs inode) and opens the others, spread over the cores (each
    /// thread enters one namespace after another, instead of a thread per namespace).
    /// Sockets of other names are let go. Returns the names that got a new socket; a name
    /// that cannot be opened (deleted meanwhile) gets none.
    pub fn refresh(&mut self, names: &[String]) -> io::Result<BTreeSet<String>> {
        use std::os::unix::fs::MetadataExt;
        let listed: std::collections::HashSet<&String> = names.iter().collect();
        self.sockets.retain(|name, _| listed.contains(name));
        let mut to_open = Vec::new();
        for name in names {
            let path = self.dir.join(name);
            let Ok(metadata) = fs::metadata(&path) else {
                self.sockets.remove(name);
                continue;
            };
            if Some((metadata.dev(), metadata.ino())) == self.node {
                self.sockets.remove(name);
                continue;
            }
            let inode = metadata.ino();
            if !matches!(self.sockets.get(name), Some((cached, _)) if *cached == inode) {
                self.sockets.remove(name);
                to_open.push((name.clone(), path, inode));
            }
        }
        let opened = on_every_core(to_open, |(name, path, inode)| {
            let namespace = File::open(&path).ok()?;
            nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).ok()?;
            Some((name, inode, Netlink::open().ok()?))
        })?;
        let mut fresh = BTreeSet::new();
        for (name, inode, socket) in opened.into_iter().flatten() {
            fresh.insert(name.clone());
            self.sockets.insert(name, (inode, socket));
        }
        Ok(fresh)
    }

    /// Every cached socket, by namespace name.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Netlink)> {
        self.sockets
            .iter_mut()
            .map(|(name, (_, socket))| (name, socket))
    }

    /// Forgets the socket of `name` (its namespace was deleted).
    pub fn forget(&mut self, name: &str) {
        self.sockets.remove(name);
    }

    /// Whether namespace `name` has a socket.
    pub fn contains(&self, name: &str) -> bool {
        self.sockets.contains_key(name)
    }
}
