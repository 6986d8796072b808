//! One writer per node. Whoever changes a node (an apply, a teardown, a library call, each
//! pass of the controller) holds `/run/kudonet/net-<inode>.lock` meanwhile, so changes never
//! interleave; a second writer waits its turn. `kudonet run` also holds
//! `/run/kudonet/net-<inode>.controller.lock` for its whole life: a second controller refuses
//! to start. Locks are keyed on the network namespace (its inode), whatever node name each
//! kudonet was given: it is the kernel state they would fight over.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where lock files live. On tmpfs: a reboot clears them, as it clears what they protect.
pub const LOCK_DIR: &str = "/run/kudonet";

/// The held lock; released when dropped (or when the process dies, however it dies).
pub struct NodeLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another kudonet is changing node {node} (pid {holder}, lock {path})")]
    Held {
        node: String,
        holder: String,
        path: String,
    },
    #[error(
        "another kudonet controller is running for node {node} (pid {holder}, lock {path}); stop it first"
    )]
    ControllerRunning {
        node: String,
        holder: String,
        path: String,
    },
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// What a lock is keyed on: the network namespace being changed (its nsfs inode), not the
/// node's name. Two kudonets given different node names on one machine would otherwise both
/// run, each deleting what the other built.
fn network_key() -> String {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata("/proc/thread-self/ns/net")
        .map(|meta| meta.ino())
        .unwrap_or(0);
    format!("net-{inode}")
}

/// The change lock file of this network namespace in `dir`.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(format!("{}.lock", network_key()))
}

/// Takes the change lock for `node`, failing at once if someone holds it.
pub fn try_lock(dir: &Path, node: &str) -> Result<NodeLock, LockError> {
    lock(dir, node, &lock_path(dir), false)
}

/// Takes the controller lock for `node` for the life of a controller, failing at once if
/// another controller holds it.
pub fn controller_lock(dir: &Path, node: &str) -> Result<NodeLock, LockError> {
    let path = dir.join(format!("{}.controller.lock", network_key()));
    lock(dir, node, &path, false).map_err(|error| match error {
        LockError::Held { node, holder, path } => {
            LockError::ControllerRunning { node, holder, path }
        }
        other => other,
    })
}

/// Takes the change lock for `node`, waiting for its holder to finish.
pub fn wait_lock(dir: &Path, node: &str) -> Result<NodeLock, LockError> {
    lock(dir, node, &lock_path(dir), true)
}

fn lock(dir: &Path, node: &str, path: &Path, wait: bool) -> Result<NodeLock, LockError> {
    let path = path.to_path_buf();
    let io_error = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    let mode = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let mut lock = match Flock::lock(file, mode) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            // The holder wrote "PID NODE": name its node, which may differ from ours.
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let mut words = holder.split_whitespace();
            let pid = words.next().unwrap_or("unknown").to_string();
            return Err(LockError::Held {
                node: words.next().unwrap_or(node).to_string(),
                holder: pid,
                path: path.display().to_string(),
            });
        }
        Err((_, errno)) => return Err(io_error(errno.into())),
    };
    // Who holds it, for the message another kudonet prints.
    let write_holder = |file: &mut File| -> io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{} {node}", std::process::id())
    };
    write_holder(&mut lock).map_err(io_error)?;
    Ok(NodeLock { _lock: lock, path })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
