//! One writer per node. Whoever changes a node (an apply, a teardown, a library call, each
//! pass of the controller) holds `/run/kudonet/net-<inode>.lock` meanwhile, so changes never
//! interleave; a second writer waits its turn. `kudonet run` also holds
//! `/run/kudonet/net-<inode>.controller.lock` for its whole life: a second controller refuses
//! to start. Locks are keyed on the network namespace (its inode), whatever node name each
//! kudonet was given: it is the kernel state they would fight over.
//!
//! `flock` needs nothing but an open descriptor, so whoever can open a lock file can stop
//! every kudonet of the machine. Hence the folder is root's alone (or the running user's:
//! 0700, refused when another user owns it or can write it), the files too (0600, opened
//! without following links, refused unless they are regular files of such an owner), and a
//! lock still held through a descriptor some other user opened before these rules (an older
//! kudonet made the files 0644) is broken by replacing the file.

use std::fs::{DirBuilder, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;

/// Where lock files live. On tmpfs: a reboot clears them, as it clears what they protect.
pub const LOCK_DIR: &str = "/run/kudonet";

/// Guards the replacement of a lock file held by another user (see [`displace`]); only
/// ever held by kudonets, for the time of an unlink.
const REPLACE_GUARD: &str = "replace.guard";

/// The longest pause between two attempts of a waiting lock.
const POLL_MAX: Duration = Duration::from_millis(50);

/// The held lock; released when dropped (or when the process dies, however it dies).
pub struct NodeLock {
    _lock: Flock<File>,
    pub path: PathBuf,
    /// Whether the last holder before this one was another process (or is unknown): what
    /// it did under the lock, this process has not seen.
    others_held_it: bool,
}

impl NodeLock {
    /// Whether someone else held the lock since this process last did (or that cannot be
    /// told): a holder may have changed the desired state and the node meanwhile.
    pub fn others_held_it(&self) -> bool {
        self.others_held_it
    }
}

/// Who holds a lock, as far as the kernel says (`/proc/locks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A live kudonet: the pid it wrote into the file is the one holding the lock.
    Kudonet { pid: u32, node: String },
    /// Anything else, with its pid when this process can see it. The file may name a pid,
    /// but one that does not hold the lock (dead, or never a kudonet) is not repeated.
    Other { pid: Option<u32> },
}

impl Holder {
    fn describe(&self) -> String {
        match self {
            Holder::Kudonet { pid, node } => format!("held by kudonet pid {pid} for node {node}"),
            Holder::Other { pid: Some(pid) } => format!("held by another process (pid {pid})"),
            Holder::Other { pid: None } => "held by another process".to_string(),
        }
    }
}

fn held_message(holder: &Holder, path: &str, controller: bool) -> String {
    match (holder, controller) {
        (Holder::Kudonet { pid, node }, false) => {
            format!("another kudonet is changing node {node} (pid {pid}, lock {path})")
        }
        (Holder::Kudonet { pid, node }, true) => format!(
            "another kudonet controller is running for node {node} (pid {pid}, lock {path}); stop it first"
        ),
        (Holder::Other { .. }, false) => format!("lock {path} is {}", holder.describe()),
        (Holder::Other { .. }, true) => format!(
            "the controller lock {path} is {}; stop it first",
            holder.describe()
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", held_message(holder, path, false))]
    Held { holder: Holder, path: String },
    #[error("{}", held_message(holder, path, true))]
    ControllerRunning { holder: Holder, path: String },
    #[error("interrupted while waiting for lock {path}, {}; nothing was changed", holder.describe())]
    Interrupted { holder: Holder, path: String },
    #[error("refusing {what} {path}: {reason}; remove it and kudonet makes it anew")]
    Unsafe {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// How long to wait for a held lock.
pub struct Wait<'a> {
    /// Give up (with [`LockError::Held`]) at this instant; `None` waits as long as it takes.
    pub until: Option<Instant>,
    /// Checked between attempts: when true, give up with [`LockError::Interrupted`].
    pub stop: &'a dyn Fn() -> bool,
}

/// What a lock is keyed on: the network namespace being changed (its nsfs inode), not the
/// node's name. Two kudonets given different node names on one machine would otherwise both
/// run, each deleting what the other built.
fn network_key() -> String {
    let inode = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|meta| meta.ino())
        .unwrap_or(0);
    format!("net-{inode}")
}

fn change_lock_name() -> String {
    format!("{}.lock", network_key())
}

/// The change lock file of this network namespace in `dir`.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(change_lock_name())
}

/// Takes the change lock for `node`, failing at once if someone holds it.
pub fn try_lock(dir: &Path, node: &str) -> Result<NodeLock, LockError> {
    lock(dir, node, &change_lock_name(), None, |_| {})
}

/// Takes the controller lock for `node` for the life of a controller, failing at once if
/// another controller holds it.
pub fn controller_lock(dir: &Path, node: &str) -> Result<NodeLock, LockError> {
    let name = format!("{}.controller.lock", network_key());
    lock(dir, node, &name, None, |_| {}).map_err(|error| match error {
        LockError::Held { holder, path } => LockError::ControllerRunning { holder, path },
        other => other,
    })
}

/// Takes the change lock for `node`, waiting for its holder to finish as `wait` says;
/// `waiting` is told once who holds it, when the lock is not free at once.
pub fn wait_lock(
    dir: &Path,
    node: &str,
    wait: Wait,
    waiting: impl FnMut(&LockError),
) -> Result<NodeLock, LockError> {
    lock(dir, node, &change_lock_name(), Some(wait), waiting)
}

fn lock(
    dir: &Path,
    node: &str,
    name: &str,
    wait: Option<Wait>,
    mut waiting: impl FnMut(&LockError),
) -> Result<NodeLock, LockError> {
    let path = dir.join(name);
    let shown = path.display().to_string();
    let io_error = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    let folder = open_folder(dir)?;
    let mut pause = Duration::from_millis(1);
    let mut told = false;
    // Whether the file was open to others when first seen: a descriptor of theirs from
    // then may still hold it, even through a process that is gone or out of sight.
    let mut was_open_to_others = false;
    loop {
        let (file, id, open_to_others) = open_lock_file(folder.as_fd(), name, &path)?;
        was_open_to_others |= open_to_others;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // Whoever replaced the file meanwhile (see `displace`) left this lock on a
                // file nobody else will open: take the lock of the file now there.
                if file_id(folder.as_fd(), name) != Some(id) {
                    continue;
                }
                // Who holds it, for the message another kudonet prints; and who held it
                // last (the file keeps the last holder's line after it lets go).
                let holder = format!("{} {node}\n", std::process::id());
                let mut previous = String::new();
                let mut write_holder = |file: &mut File| -> io::Result<()> {
                    file.rewind()?;
                    let _ = file.read_to_string(&mut previous);
                    file.set_len(0)?;
                    file.rewind()?;
                    file.write_all(holder.as_bytes())
                };
                write_holder(&mut lock).map_err(io_error)?;
                return Ok(NodeLock {
                    _lock: lock,
                    path,
                    others_held_it: previous != holder,
                });
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let (holder, untrusted, trusted_seen) = holder_of(&mut file, id);
                drop(file);
                // A holder of a file others could open is trusted only if seen to be root's:
                // a pid that forked and exited, or one in another pid namespace, shows none.
                if untrusted || (was_open_to_others && !trusted_seen) {
                    was_open_to_others = false;
                    displace(folder.as_fd(), dir, name, id)?;
                    continue;
                }
                let held = LockError::Held {
                    holder: holder.clone(),
                    path: shown.clone(),
                };
                let Some(wait) = &wait else {
                    return Err(held);
                };
                if (wait.stop)() {
                    return Err(LockError::Interrupted {
                        holder,
                        path: shown,
                    });
                }
                if wait.until.is_some_and(|until| Instant::now() >= until) {
                    return Err(held);
                }
                if !told {
                    waiting(&held);
                    told = true;
                }
                // Polled rather than blocked on, so that a signal or a deadline ends the
                // wait: a blocking flock cannot be cancelled.
                std::thread::sleep(pause);
                pause = (pause * 2).min(POLL_MAX);
            }
            Err((_, errno)) => return Err(io_error(errno.into())),
        }
    }
}

/// Root, or the user running kudonet: the only owners kudonet trusts.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Opens (creating it 0700 if needed) the lock folder, refusing one that another user owns
/// or can write (they could plant or replace lock files), and closing it to everyone else.
fn open_folder(dir: &Path) -> Result<File, LockError> {
    let shown = dir.display().to_string();
    let unsafe_folder = |reason: String| LockError::Unsafe {
        what: "lock folder",
        path: shown.clone(),
        reason,
    };
    let io_error = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        // A symbolic link or a file in the way: said below.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io_error(error)),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let folder = match nix::fcntl::open(dir, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ELOOP) => return Err(unsafe_folder("it is a symbolic link".into())),
        Err(Errno::ENOTDIR) => return Err(unsafe_folder("it is not a directory".into())),
        Err(errno) => return Err(io_error(errno.into())),
    };
    let meta = folder.metadata().map_err(io_error)?;
    let mode = meta.mode() & 0o7777;
    if !trusted_owner(meta.uid()) {
        return Err(unsafe_folder(format!(
            "owned by uid {}, not by root",
            meta.uid()
        )));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_folder(format!(
            "writable by other users (mode {mode:04o})"
        )));
    }
    if mode != 0o700 {
        // Ours, and nobody else could write it: an older kudonet's 0755, or a 0755 made by
        // the kubelet for a hostPath. Nobody else needs to see inside.
        folder
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(io_error)?;
    }
    Ok(folder)
}

/// A file's identity: device and inode.
type FileId = (u64, u64);

fn file_id(folder: BorrowedFd, name: &str) -> Option<FileId> {
    nix::sys::stat::fstatat(folder, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|stat| (stat.st_dev, stat.st_ino))
}

/// Opens (creating it 0600 if needed) a lock file without following a link, refusing what is
/// not a regular file of root's with a single name, and closing it to everyone else.
/// Also says whether others could open the file until now (an older kudonet's 0644).
fn open_lock_file(
    folder: BorrowedFd,
    name: &str,
    path: &Path,
) -> Result<(File, FileId, bool), LockError> {
    let shown = path.display().to_string();
    let unsafe_file = |reason: String| LockError::Unsafe {
        what: "lock file",
        path: shown.clone(),
        reason,
    };
    let io_error = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    // O_NONBLOCK: a FIFO or device planted here must not block or wake anything on open.
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let file = match nix::fcntl::openat(folder, name, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => File::from(fd),
        Err(Errno::ELOOP) => return Err(unsafe_file("it is a symbolic link".into())),
        Err(errno) => return Err(io_error(errno.into())),
    };
    let meta = file.metadata().map_err(io_error)?;
    if !meta.file_type().is_file() {
        return Err(unsafe_file("it is not a regular file".into()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(unsafe_file(format!(
            "owned by uid {}, not by root",
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        // Another name for the same file could be anything root owns: never write into it.
        return Err(unsafe_file(format!("it has {} hard links", meta.nlink())));
    }
    let opened_by_others = meta.mode() & 0o077 != 0;
    if meta.mode() & 0o7777 != 0o600 {
        // An older kudonet's 0644: nobody else may open it from now on.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_error)?;
    }
    Ok((file, (meta.dev(), meta.ino()), opened_by_others))
}

/// Who holds the lock on `file` (whose identity is `id`), whether a holder is a process of
/// a user kudonet does not trust, and whether one is seen to be a trusted user's.
fn holder_of(file: &mut File, id: FileId) -> (Holder, bool, bool) {
    let pids = flock_holders(id);
    // The holder wrote "PID NODE": believed only if that pid really holds the lock.
    let mut text = String::new();
    let _ = file.rewind();
    let _ = Read::by_ref(file).take(256).read_to_string(&mut text);
    let mut words = text.split_whitespace();
    let claimed = words.next().and_then(|pid| pid.parse::<u32>().ok());
    let holder = match claimed {
        Some(pid) if pids.contains(&pid) => Holder::Kudonet {
            pid,
            node: words.next().unwrap_or("unknown").to_string(),
        },
        _ => Holder::Other {
            pid: pids.first().copied(),
        },
    };
    // Any holder of another user is broken off (a kudonet takes exclusive locks only, so
    // none can share the lock with one).
    let uids: Vec<u32> = pids.iter().filter_map(|pid| process_uid(*pid)).collect();
    let untrusted = uids.iter().any(|uid| !trusted_owner(*uid));
    let trusted_seen = uids.iter().any(|uid| trusted_owner(*uid));
    (holder, untrusted, trusted_seen)
}

/// The pids holding a `flock` on the file `id`, from `/proc/locks` (lines such as
/// `3: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`; waiters are marked `->` and skipped).
/// A pid from another pid namespace shows as 0 and is left out.
fn flock_holders((dev, ino): FileId) -> Vec<u32> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let held = fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str());
            held.then(|| fields.get(4)?.parse::<u32>().ok()).flatten()
        })
        .filter(|pid| *pid != 0)
        .collect()
}

/// The effective uid of process `pid`, if it is alive and visible.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Replaces the lock file `name` (identity `id`), held by a user kudonet does not trust:
/// only a descriptor opened before the file was closed to others can do that. Unlinking it
/// makes that descriptor irrelevant: the next attempt creates a fresh file nobody else can
/// open. The guard keeps two kudonets from both replacing it, the second unlinking the
/// fresh file the first may already hold; a kudonet waiting on the old file finds it
/// replaced once it gets it, and takes the new one.
fn displace(folder: BorrowedFd, dir: &Path, name: &str, id: FileId) -> Result<(), LockError> {
    let guard_path = dir.join(REPLACE_GUARD);
    let (guard, _, _) = open_lock_file(folder, REPLACE_GUARD, &guard_path)?;
    let io_error = |source: io::Error| LockError::Io {
        path: dir.join(name).display().to_string(),
        source,
    };
    let _guard =
        Flock::lock(guard, FlockArg::LockExclusive).map_err(|(_, errno)| io_error(errno.into()))?;
    if file_id(folder, name) == Some(id) {
        tracing::warn!(
            path = %dir.join(name).display(),
            "a lock file was held by a user other than root; replacing it"
        );
        nix::unistd::unlinkat(folder, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(|errno| io_error(errno.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_first_ones_pid_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path(), "node-a").unwrap();
        let pid = std::process::id();
        let path = first.path.display();
        for node in ["node-a", "node-b"] {
            // Keyed on the network namespace: another node name is no way around it.
            let error = try_lock(dir.path(), node).err().unwrap().to_string();
            assert_eq!(
                error,
                format!("another kudonet is changing node node-a (pid {pid}, lock {path})")
            );
        }
        drop(first);
        assert!(try_lock(dir.path(), "node-b").is_ok(), "released on drop");
    }

    #[test]
    fn the_controller_lock_is_separate_from_the_change_lock() {
        let dir = tempfile::tempdir().unwrap();
        let controller = controller_lock(dir.path(), "node-a").unwrap();
        let change =
            try_lock(dir.path(), "node-a").expect("changes go on under a running controller");
        drop(change);
        let error = controller_lock(dir.path(), "node-b")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            format!(
                "another kudonet controller is running for node node-a (pid {}, lock {}); stop it first",
                std::process::id(),
                controller.path.display()
            )
        );
    }

    #[test]
    fn a_pid_in_the_file_that_does_not_hold_the_lock_is_not_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path(), "node-a").unwrap();
        // As if a kudonet had died and something else held the file.
        std::fs::write(&first.path, "4194304 node-a\n").unwrap();
        let error = try_lock(dir.path(), "node-a").err().unwrap();
        assert!(
            matches!(&error, LockError::Held { holder: Holder::Other { pid: Some(pid) }, .. } if *pid == std::process::id()),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "lock {} is held by another process (pid {})",
                first.path.display(),
                std::process::id()
            )
        );
    }

    #[test]
    fn a_wait_ends_at_its_deadline_or_when_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let _first = try_lock(dir.path(), "node-a").unwrap();
        let started = Instant::now();
        let mut told = Vec::new();
        let wait = Wait {
            until: Some(started + Duration::from_millis(200)),
            stop: &never,
        };
        let error = wait_lock(dir.path(), "node-a", wait, |held| {
            told.push(held.to_string())
        });
        assert!(matches!(error, Err(LockError::Held { .. })));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(told.len(), 1, "told once: {told:?}");

        let stop = || true;
        let wait = Wait {
            until: None,
            stop: &stop,
        };
        let error = wait_lock(dir.path(), "node-a", wait, |_| {}).err().unwrap();
        assert!(
            error
                .to_string()
                .starts_with("interrupted while waiting for lock "),
            "{error}"
        );
    }

    #[test]
    fn the_folder_and_the_files_are_closed_to_everyone_else() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("locks");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An older kudonet's file, open to every reader.
        let old = lock_path(&dir);
        std::fs::write(&old, "1 node-a\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let lock = try_lock(&dir, "node-a").unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lock.path), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let error = try_lock(&dir, "node-b").err().unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "refusing lock folder {}: writable by other users (mode 1777); remove it and kudonet makes it anew",
                dir.display()
            )
        );
    }

    #[test]
    fn a_planted_link_or_second_name_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        let path = lock_path(dir.path());
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let error = try_lock(dir.path(), "node-a").err().unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "refusing lock file {}: it is a symbolic link; remove it and kudonet makes it anew",
                path.display()
            )
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&target, &path).unwrap();
        let error = try_lock(dir.path(), "node-a").err().unwrap().to_string();
        assert_eq!(
            error,
            format!(
                "refusing lock file {}: it has 2 hard links; remove it and kudonet makes it anew",
                path.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }

    #[test]
    fn flock_holders_reads_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        let lock = try_lock(dir.path(), "node-a").unwrap();
        let meta = std::fs::metadata(&lock.path).unwrap();
        assert_eq!(
            flock_holders((meta.dev(), meta.ino())),
            vec![std::process::id()]
        );
        drop(lock);
        assert_eq!(flock_holders((meta.dev(), meta.ino())), Vec::<u32>::new());
    }
}
