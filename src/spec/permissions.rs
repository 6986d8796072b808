//! Refusing desired state that someone other than root can change: these files decide which
//! ports a node opens, so, like sshd with its keys, kudonet trusts them only when only root
//! (or the user running kudonet) can write them.
//!
//! The check reads owners and mode bits, never `access(2)` and never a mount's flags alone:
//! a read-only mount of a folder does not stop its owner, or anyone its mode lets in, from
//! writing it through another path (the folder it was bound from). A read-only mount excuses
//! write bits only when no writable mount of this mount namespace shows the same files: the
//! case of a Kubernetes ConfigMap volume, whose root folder is 0777 but whose source lies in
//! the kubelet's root-only directories of the host, outside the pod.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, Origin};
use super::load::state_tree;

/// Every folder and file a load of `root` reads (`root` included, what symbolic links lead
/// to and the folders holding that) that a user other than root or the current user owns
/// or can write, each with the reason and the fix.
pub fn unsafe_permissions(root: &Path) -> Vec<Diagnostic> {
    let mut ignored = Vec::new();
    let tree = state_tree(root, &mut ignored);
    let me = nix::unistd::geteuid().as_raw();
    let mounts = Mounts::read();
    let mut seen = HashSet::new();
    let mut diagnostics = Vec::new();
    let mut check = |path: &Path, metadata: &fs::Metadata, real: &Path| {
        let kind = metadata.file_type().is_symlink();
        if seen.insert((metadata.dev(), metadata.ino(), kind))
            && let Some(problem) = problem(metadata, real, me, &mounts)
        {
            diagnostics.push(Diagnostic::new(Origin::path(path), problem));
        }
    };
    for path in tree.folders.iter().chain(&tree.files) {
        if let Ok(link) = fs::symlink_metadata(path)
            && link.file_type().is_symlink()
        {
            check(path, &link, path);
        }
        let Ok(real) = fs::canonicalize(path) else {
            continue;
        };
        let Ok(metadata) = fs::metadata(&real) else {
            continue;
        };
        check(path, &metadata, &real);
        // Reached through a link: the folder really holding it was not walked, yet whoever
        // can write that folder can replace it.
        if real != *path
            && let Some(parent) = real.parent()
            && let Ok(parent_metadata) = fs::metadata(parent)
        {
            check(parent, &parent_metadata, parent);
        }
    }
    diagnostics
}

/// Why `metadata` (of `real`, canonical) lets someone other than root or `me` change it.
fn problem(metadata: &fs::Metadata, real: &Path, me: u32, mounts: &Mounts) -> Option<String> {
    if metadata.file_type().is_symlink() {
        // A link cannot be rewritten, but its owner may replace it in a sticky folder.
        let uid = metadata.uid();
        return (uid != 0 && uid != me)
            .then(|| format!("is owned by uid {uid}, who can change it; make root its owner"));
    }
    match writable_by_others(metadata.uid(), metadata.gid(), metadata.mode(), me)? {
        Problem::Owner(text) => Some(text),
        Problem::Mode { why, fix } => match mounts.writable_elsewhere(real) {
            Exposure::Sealed => None,
            Exposure::At(other) if other != real => Some(format!(
                "{why}, read-only here but writable as {}; {fix}",
                other.display()
            )),
            Exposure::At(_) => Some(format!("{why}; {fix}")),
        },
    }
}

enum Problem {
    /// Another user owns it: no mount stops them (they write it wherever it is mounted
    /// writable, or change its mode there).
    Owner(String),
    /// Its mode lets others write it: why, and the fix.
    Mode { why: String, fix: &'static str },
}

/// Why a file with this owner, group and mode can be written by someone other than root or
/// `me`, or `None` when it cannot.
fn writable_by_others(uid: u32, gid: u32, mode: u32, me: u32) -> Option<Problem> {
    let mode_text = format!("mode {:04o}", mode & 0o7777);
    if uid != 0 && uid != me {
        return Some(Problem::Owner(format!(
            "is owned by uid {uid}, who can change it; make root its owner"
        )));
    }
    if mode & 0o002 != 0 {
        return Some(Problem::Mode {
            why: format!("is writable by every user ({mode_text})"),
            fix: "run chmod o-w on it",
        });
    }
    if mode & 0o020 != 0 && gid != 0 {
        return Some(Problem::Mode {
            why: format!("is writable by group {gid} ({mode_text})"),
            fix: "run chmod g-w on it",
        });
    }
    None
}

/// Whether the write bits of a path count.
#[derive(Debug, PartialEq, Eq)]
enum Exposure {
    /// On a read-only mount, and no writable mount in sight shows the same files.
    Sealed,
    /// Writable: here, or through the mount at this path.
    At(PathBuf),
}

/// The mounts of this mount namespace, from `/proc/self/mountinfo`.
struct Mounts(Vec<Mount>);

#[derive(Debug)]
struct Mount {
    /// The filesystem's device, `major:minor` as the kernel writes it.
    device: String,
    /// The folder of the filesystem this mount shows (`/` unless a bind mount).
    root: PathBuf,
    /// Where it is mounted.
    point: PathBuf,
    read_only: bool,
}

impl Mounts {
    fn read() -> Mounts {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Mounts(text.lines().filter_map(parse_mountinfo_line).collect())
    }

    /// Where `path` (canonical) can be written, as far as mounts go.
    fn writable_elsewhere(&self, path: &Path) -> Exposure {
        // The mount `path` is on: the deepest mount point above it (the last when several
        // are stacked on one point). Chosen by path, not by the file's `st_dev`, which
        // differs from mountinfo's device on btrfs subvolumes and overlayfs files.
        let Some(here) = self
            .0
            .iter()
            .filter(|mount| path.starts_with(&mount.point))
            .fold(None::<&Mount>, |best, mount| match best {
                Some(best)
                    if best.point.components().count() > mount.point.components().count() =>
                {
                    Some(best)
                }
                _ => Some(mount),
            })
        else {
            return Exposure::At(path.to_path_buf());
        };
        let same_fs = || self.0.iter().filter(|mount| mount.device == here.device);
        if !here.read_only {
            return Exposure::At(path.to_path_buf());
        }
        let inside = below(
            &here.root,
            path.strip_prefix(&here.point).unwrap_or(Path::new("")),
        );
        match same_fs().find(|mount| !mount.read_only && inside.starts_with(&mount.root)) {
            Some(writable) => Exposure::At(below(
                &writable.point,
                inside.strip_prefix(&writable.root).unwrap_or(Path::new("")),
            )),
            None => Exposure::Sealed,
        }
    }
}

/// `base` joined with `relative`, without the trailing `/` of joining an empty path.
fn below(base: &Path, relative: &Path) -> PathBuf {
    if relative.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(relative)
    }
}

/// One line of `/proc/self/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().position(|field| *field == "-")?;
    let read_only = |options: &str| options.split(',').any(|option| option == "ro");
    Some(Mount {
        device: fields.get(2)?.to_string(),
        root: PathBuf::from(unescape(fields.get(3)?)),
        point: PathBuf::from(unescape(fields.get(4)?)),
        // The mount's flags, or the filesystem's (a read-only superblock is read-only
        // through every mount).
        read_only: read_only(fields.get(5)?) || read_only(fields.get(separator + 3)?),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(problem: Option<Problem>) -> Option<String> {
        problem.map(|problem| match problem {
            Problem::Owner(text) => text,
            Problem::Mode { why, fix } => format!("{why}; {fix}"),
        })
    }

    #[test]
    fn only_root_or_the_current_user_may_write() {
        assert_eq!(text(writable_by_others(0, 0, 0o100644, 0)), None);
        assert_eq!(
            text(writable_by_others(0, 0, 0o100664, 0)),
            None,
            "group root is root"
        );
        assert_eq!(
            text(writable_by_others(1000, 1000, 0o100644, 1000)),
            None,
            "the user running kudonet"
        );
        assert_eq!(
            text(writable_by_others(0, 0, 0o100666, 0)).as_deref(),
            Some("is writable by every user (mode 0666); run chmod o-w on it")
        );
        assert_eq!(
            text(writable_by_others(0, 1000, 0o40775, 0)).as_deref(),
            Some("is writable by group 1000 (mode 0775); run chmod g-w on it")
        );
        assert!(matches!(
            writable_by_others(1000, 0, 0o100444, 0),
            Some(Problem::Owner(text)) if text == "is owned by uid 1000, who can change it; make root its owner"
        ));
    }

    fn mount_table(lines: &[&str]) -> Mounts {
        Mounts(
            lines
                .iter()
                .map(|line| parse_mountinfo_line(line).unwrap())
                .collect(),
        )
    }

    const ROOT_FS: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw";

    #[test]
    fn a_read_only_bind_of_a_folder_still_writable_elsewhere_is_not_sealed() {
        let mounts = mount_table(&[
            ROOT_FS,
            "40 22 8:1 /srv/state/sub /srv/state/sub ro,relatime shared:1 - ext4 /dev/sda1 rw",
        ]);
        assert_eq!(
            mounts.writable_elsewhere(Path::new("/srv/state/sub/x")),
            Exposure::At(PathBuf::from("/srv/state/sub/x"))
        );
        assert_eq!(
            mounts.writable_elsewhere(Path::new("/srv/state")),
            Exposure::At(PathBuf::from("/srv/state"))
        );
    }

    #[test]
    fn a_configmap_volume_is_sealed() {
        // As in a pod: the volume is bound read-only from the kubelet's folder of the host,
        // whose other mounts in the pod show other folders of the same disk.
        let mounts = mount_table(&[
            "500 400 0:50 / / rw,relatime - overlay overlay rw",
            "510 500 8:1 /var/lib/kubelet/pods/u1/volumes/kubernetes.io~configmap/state /etc/kudonet ro,relatime - ext4 /dev/sda1 rw",
            "511 500 8:1 /var/lib/kubelet/pods/u1/etc-hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw",
            "512 500 0:23 /kudonet /run/kudonet rw,nosuid - tmpfs tmpfs rw",
        ]);
        assert_eq!(
            mounts.writable_elsewhere(Path::new("/etc/kudonet")),
            Exposure::Sealed
        );
        assert_eq!(
            mounts.writable_elsewhere(Path::new("/etc/kudonet/..2026_11_28/node.yaml")),
            Exposure::Sealed
        );
        // The same volume with the host's disk also mounted writable in sight: not sealed.
        let exposed = mount_table(&[
            "510 500 8:1 /var/lib/kubelet/pods/u1/volumes/kubernetes.io~configmap/state /etc/kudonet ro,relatime - ext4 /dev/sda1 rw",
            "513 500 8:1 /var/lib /host/var/lib rw,relatime - ext4 /dev/sda1 rw",
        ]);
        assert_eq!(
            exposed.writable_elsewhere(Path::new("/etc/kudonet")),
            Exposure::At(PathBuf::from(
                "/host/var/lib/kubelet/pods/u1/volumes/kubernetes.io~configmap/state"
            ))
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let mount =
            parse_mountinfo_line("40 22 0:5 /a\\040b /mnt/x\\134y ro - tmpfs none rw").unwrap();
        assert_eq!(mount.root, PathBuf::from("/a b"));
        assert_eq!(mount.point, PathBuf::from("/mnt/x\\y"));
        assert!(mount.read_only);
        let mount = parse_mountinfo_line("41 22 0:6 / /mnt/y rw - tmpfs none ro").unwrap();
        assert!(mount.read_only, "a read-only filesystem");
    }
}
