//! Named network namespaces, the way `ip netns` keeps them: a namespace is bind-mounted on a
//! file of the netns directory (`/run/netns/kudo-web`), which keeps it alive and lets
//! `ip netns exec` find it.
//!
//! Nothing here forks: a namespace is created on a short-lived thread that unshares its
//! network namespace, marks the new namespace's loopback as kudonet's, and bind-mounts
//! `/proc/thread-self/ns/net` onto the file. The mark is set before the namespace becomes
//! visible, so a namespace kudonet created is never mistaken for a foreign one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::netlink::Netlink;

/// The alias of the loopback of every namespace kudonet creates.
pub const NAMESPACE_MARK: &str = "kudonet";

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

/// The path of namespace `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Opens namespace `name` of `dir`, for `setns` or as the target of a new veth's peer.
pub fn open(dir: &Path, name: &str) -> io::Result<File> {
    File::open(dir.join(name))
}
