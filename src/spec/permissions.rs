//! Refusing desired state that someone other than root can change: these files decide which
//! ports a node opens, so, like sshd with its keys, kudonet trusts them only when only root
//! (or the user running kudonet) can write them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::diagnostic::{Diagnostic, Origin};
use super::load::state_tree;

/// Every folder and file a load of `root` reads (`root` included) that a user other than
/// root or the current user can write, each with the reason and the fix.
pub fn unsafe_permissions(root: &Path) -> Vec<Diagnostic> {
    let mut ignored = Vec::new();
    let tree = state_tree(root, &mut ignored);
    let me = nix::unistd::geteuid().as_raw();
    tree.folders
        .iter()
        .chain(&tree.files)
        .filter(|path| !on_read_only_mount(path))
        .filter_map(|path| {
            let metadata = fs::metadata(path).ok()?;
            let problem = writable_by_others(metadata.uid(), metadata.gid(), metadata.mode(), me)?;
            Some(Diagnostic::new(Origin::path(path), problem))
        })
        .collect()
}

/// Whether `path` lies on a read-only mount, which nobody can write whatever its mode says:
/// the kubelet mounts a ConfigMap volume read-only, with its root directory mode 1777.
fn on_read_only_mount(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .is_ok_and(|stat| stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Why a file with this owner, group and mode can be written by someone other than root or
/// `me`, or `None` when it cannot.
fn writable_by_others(uid: u32, gid: u32, mode: u32, me: u32) -> Option<String> {
    let mode_text = format!("mode {:04o}", mode & 0o7777);
    if mode & 0o002 != 0 {
        return Some(format!(
            "is writable by every user ({mode_text}); run chmod o-w on it"
        ));
    }
    if mode & 0o020 != 0 && gid != 0 {
        return Some(format!(
            "is writable by group {gid} ({mode_text}); run chmod g-w on it"
        ));
    }
    if uid != 0 && uid != me {
        return Some(format!(
            "is owned by uid {uid}, who can change it; make root its owner"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::writable_by_others;

    #[test]
    fn only_root_or_the_current_user_may_write() {
        assert_eq!(writable_by_others(0, 0, 0o100644, 0), None);
        assert_eq!(
            writable_by_others(0, 0, 0o100664, 0),
            None,
            "group root is root"
        );
        assert_eq!(
            writable_by_others(1000, 1000, 0o100644, 1000),
            None,
            "the user running kudonet"
        );
        assert_eq!(
            writable_by_others(0, 0, 0o100666, 0).as_deref(),
            Some("is writable by every user (mode 0666); run chmod o-w on it")
        );
        assert_eq!(
            writable_by_others(0, 1000, 0o40775, 0).as_deref(),
            Some("is writable by group 1000 (mode 0775); run chmod g-w on it")
        );
        assert_eq!(
            writable_by_others(1000, 0, 0o100644, 0).as_deref(),
            Some("is owned by uid 1000, who can change it; make root its owner")
        );
    }
}
