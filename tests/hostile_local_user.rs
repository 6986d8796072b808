//! What a local user without privileges can do against kudonet, each in its own sandbox
//! (see `common::sandboxed`; the sandbox's `/run` is a private tmpfs, so `/run/kudonet` is
//! the real lock folder of the kudonet under test): freeze it through its lock files, make
//! it write through a planted link, or slip desired state past the ownership check with a
//! read-only mount. The user is `nobody` (uid 65534), through `setpriv`.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::kudonet;
use common::{KUDONET, link, sh};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NODE: &str = "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n";

/// A pid no process can have (pid_max is at most 2^22).
const DEAD_PID: &str = "4194304";

const LOCK_DIR: &str = "/run/kudonet";

/// Runs a command as nobody, without supplementary groups.
fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    command
}

fn network() -> u64 {
    fs::metadata("/proc/self/ns/net").unwrap().ino()
}

fn change_lock() -> String {
    format!("{LOCK_DIR}/net-{}.lock", network())
}

fn controller_lock() -> String {
    format!("{LOCK_DIR}/net-{}.controller.lock", network())
}

/// A desired-state directory at `/run/state`, root's and readable by all.
fn state_dir() -> &'static str {
    sh("install -d -m 0755 /run/state && install -m 0644 /dev/null /run/state/node.yaml");
    fs::write("/run/state/node.yaml", NODE).unwrap();
    "/run/state"
}

/// A kudonet started in the background, its stderr in a file.
struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    fn start(args: &[&str]) -> Background {
        let log = PathBuf::from(format!("/run/kudonet-{}.log", args[0]));
        let child = Command::new(KUDONET)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_stderr(&mut self, text: &str) {
        wait_until(&format!("kudonet logs {text:?}"), || {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "kudonet exited: {}",
                self.stderr()
            );
            self.stderr().contains(text)
        });
    }

    /// Sends SIGTERM; the exit code and how long it took to exit.
    fn terminate(mut self) -> (i32, Duration, String) {
        let sent = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (
                    status.code().expect("exited"),
                    sent.elapsed(),
                    self.stderr(),
                );
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "still running 10 s after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process holding an exclusive flock on `path` (`flock -x PATH sleep 60`), run by
/// `command`; returns once the kernel lists it as the holder.
struct Holder(Child);

impl Holder {
    fn start(mut command: Command, path: &str) -> Holder {
        // Its own process group, so that dropping it also ends the `sleep`, which would
        // keep the sandbox's output open.
        let child = command
            .args(["flock", "-x", path, "sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let holder = Holder(child);
        wait_until(&format!("{pid} holds {path}"), || holds(pid, path));
        holder
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Whether `/proc/locks` lists `pid` holding a flock on `path`.
fn holds(pid: u32, path: &str) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    let (major, minor) = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
    );
    let wanted = format!("{pid} {major:02x}:{minor:02x}:{}", meta.ino());
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|line| !line.contains("->") && line.contains(" FLOCK ") && line.contains(&wanted))
}

fn mode(path: &str) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// The lock folder as an older kudonet left it: 0755, files 0644 naming a dead kudonet.
fn old_lock_files() {
    sh("install -d -m 0755 /run/kudonet");
    for path in [change_lock(), controller_lock()] {
        fs::write(&path, format!("{DEAD_PID} node-a\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
fn nobody_else_can_open_the_lock_files() {
    common::sandboxed("nobody_else_can_open_the_lock_files", || {
        let dir = state_dir();
        let applied = kudonet(&["apply", dir]);
        assert_eq!(applied.code, 0, "{}", applied.stderr);
        assert_eq!(mode(LOCK_DIR), 0o700);
        assert_eq!(mode(&change_lock()), 0o600);
        for path in [LOCK_DIR.to_string(), change_lock()] {
            let output = as_nobody()
                .args(["flock", "-n", &path, "true"])
                .output()
                .unwrap();
            assert!(!output.status.success(), "nobody locked {path}");
            assert!(
                String::from_utf8_lossy(&output.stderr).contains("Permission denied"),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    });
}

#[test]
fn a_lock_held_through_an_old_descriptor_of_another_user_is_broken() {
    common::sandboxed(
        "a_lock_held_through_an_old_descriptor_of_another_user_is_broken",
        || {
            let dir = state_dir();
            old_lock_files();
            // nobody opened the 0644 files before the upgrade and holds them.
            let change_inode = fs::metadata(change_lock()).unwrap().ino();
            let _change = Holder::start(as_nobody(), &change_lock());
            let _controller = Holder::start(as_nobody(), &controller_lock());

            let started = Instant::now();
            let applied = kudonet(&["apply", dir]);
            assert_eq!(applied.code, 0, "{}", applied.stderr);
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(link(None, "kudo0").is_some(), "applied");
            assert_eq!(mode(LOCK_DIR), 0o700);
            assert_eq!(mode(&change_lock()), 0o600);
            assert_ne!(fs::metadata(change_lock()).unwrap().ino(), change_inode);

            // A restart of the controller is not refused either.
            let mut controller = Background::start(&["run", dir, "--resync", "60"]);
            controller.wait_for_stderr("a lock file was held by a user other than root");
            let pid = controller.child.id();
            wait_until("the controller holds its lock", || {
                holds(pid, &controller_lock())
            });
            assert_eq!(mode(&controller_lock()), 0o600);
            let (code, _, stderr) = controller.terminate();
            assert_eq!(code, 0, "{stderr}");
        },
    );
}

#[test]
fn a_lock_of_an_old_file_whose_holder_is_out_of_sight_is_broken() {
    common::sandboxed(
        "a_lock_of_an_old_file_whose_holder_is_out_of_sight_is_broken",
        || {
            let dir = state_dir();
            old_lock_files();
            // nobody locks the 0644 file through a descriptor a background process keeps,
            // taken by a `flock` process that exits at once: /proc/locks names a dead pid.
            let script = format!(
                "exec 9<{}; flock -s 9; sleep 60 >/dev/null 2>&1 </dev/null & echo $!",
                change_lock()
            );
            let output = as_nobody().args(["bash", "-c", &script]).output().unwrap();
            assert!(output.status.success());
            let sleeper: i32 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap();
            let change_inode = fs::metadata(change_lock()).unwrap().ino();
            assert_eq!(kudonet(&["apply", "--help"]).code, 0);
            let started = Instant::now();
            let applied = kudonet(&["apply", dir]);
            let _ = nix::sys::signal::kill(Pid::from_raw(sleeper), Signal::SIGKILL);
            assert_eq!(applied.code, 0, "{}", applied.stderr);
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_ne!(fs::metadata(change_lock()).unwrap().ino(), change_inode);
            assert_eq!(mode(&change_lock()), 0o600);
        },
    );
}

#[test]
fn a_restart_never_names_a_dead_pid() {
    common::sandboxed("a_restart_never_names_a_dead_pid", || {
        let dir = state_dir();
        old_lock_files();
        // A root process holds the controller lock; the file names a dead kudonet.
        let holder = Holder::start(Command::new("env"), &controller_lock());
        let refused = kudonet(&["run", dir]);
        assert_eq!(refused.code, 1);
        assert_eq!(
            refused.stderr,
            format!(
                "kudonet: the controller lock {} is held by another process (pid {}); stop it first\n",
                controller_lock(),
                holder.pid()
            )
        );
    });
}

#[test]
fn a_planted_link_at_a_lock_path_is_refused_and_its_target_untouched() {
    common::sandboxed(
        "a_planted_link_at_a_lock_path_is_refused_and_its_target_untouched",
        || {
            let dir = state_dir();
            sh("install -d -m 0700 /run/kudonet && echo precious > /run/victim");
            for (path, args) in [
                (change_lock(), ["apply", dir]),
                (controller_lock(), ["run", dir]),
            ] {
                std::os::unix::fs::symlink("/run/victim", &path).unwrap();
                let refused = kudonet(&args);
                assert_eq!(refused.code, 1, "{}", refused.stdout);
                assert_eq!(
                    refused.stderr,
                    format!(
                        "kudonet: refusing lock file {path}: it is a symbolic link; remove it and kudonet makes it anew\n"
                    )
                );
                assert_eq!(fs::read_to_string("/run/victim").unwrap(), "precious\n");
                assert!(link(None, "kudo0").is_none(), "nothing was changed");
                fs::remove_file(&path).unwrap();
            }
        },
    );
}

#[test]
fn a_lock_folder_others_own_or_can_write_is_refused() {
    common::sandboxed("a_lock_folder_others_own_or_can_write_is_refused", || {
        let dir = state_dir();
        let expected = |reason: &str| {
            format!(
                "kudonet: refusing lock folder {LOCK_DIR}: {reason}; remove it and kudonet makes it anew\n"
            )
        };
        sh("install -d -m 0700 -o 65534 /run/kudonet");
        let refused = kudonet(&["apply", dir]);
        assert_eq!(
            (refused.code, refused.stderr),
            (1, expected("owned by uid 65534, not by root"))
        );
        sh("chown 0 /run/kudonet && chmod 1777 /run/kudonet");
        let refused = kudonet(&["apply", dir]);
        assert_eq!(
            (refused.code, refused.stderr),
            (1, expected("writable by other users (mode 1777)"))
        );
        let refused = kudonet(&["run", dir]);
        assert_eq!(
            (refused.code, refused.stderr),
            (1, expected("writable by other users (mode 1777)"))
        );
        assert!(link(None, "kudo0").is_none(), "nothing was changed");
        sh("chmod 0755 /run/kudonet");
        let applied = kudonet(&["apply", dir]);
        assert_eq!(applied.code, 0, "{}", applied.stderr);
        assert_eq!(mode(LOCK_DIR), 0o700, "kudonet's own folder, closed");
    });
}

#[test]
fn an_apply_waiting_for_the_lock_stops_on_sigterm() {
    common::sandboxed("an_apply_waiting_for_the_lock_stops_on_sigterm", || {
        let dir = state_dir();
        sh("install -d -m 0700 /run/kudonet");
        // A root process holds the lock: a kudonet must wait for it.
        let holder = Holder::start(Command::new("env"), &change_lock());
        let mut apply = Background::start(&["apply", dir]);
        apply.wait_for_stderr("waiting for the lock");
        std::thread::sleep(Duration::from_millis(300));
        let (code, took, stderr) = apply.terminate();
        let held = format!(
            "lock {} is held by another process (pid {})",
            change_lock(),
            holder.pid()
        );
        assert_eq!(
            stderr,
            format!(
                "kudonet: waiting for the lock: {held}\n\
                 kudonet: interrupted while waiting for lock {}, held by another process (pid {}); nothing was changed\n",
                change_lock(),
                holder.pid()
            )
        );
        assert_eq!(code, 1);
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(link(None, "kudo0").is_none(), "nothing was changed");
    });
}

#[test]
fn a_controller_waiting_for_the_lock_stops_on_sigterm() {
    common::sandboxed("a_controller_waiting_for_the_lock_stops_on_sigterm", || {
        let dir = state_dir();
        sh("install -d -m 0700 /run/kudonet");
        let _holder = Holder::start(Command::new("env"), &change_lock());
        let mut controller = Background::start(&["run", dir, "--resync", "60"]);
        controller.wait_for_stderr("waiting for the change lock");
        let (code, took, stderr) = controller.terminate();
        assert_eq!(code, 0, "{stderr}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            stderr.contains("stopping; the network stays as it is"),
            "{stderr}"
        );
        assert!(link(None, "kudo0").is_none(), "nothing was changed");
    });
}

#[test]
fn a_read_only_bind_mount_does_not_pass_the_ownership_check() {
    common::sandboxed(
        "a_read_only_bind_mount_does_not_pass_the_ownership_check",
        || {
            let dir = state_dir();
            // nobody's folder inside DIR, made read-only by a bind mount onto itself.
            sh("install -d -m 0755 -o 65534 /run/state/mine
                echo 'kind: Instance
name: web
address: 10.0.0.2/24
ports: [{hostPort: 8080, instancePort: 80}]' > /run/state/mine/web.yaml
                chown 65534 /run/state/mine/web.yaml
                mount --bind /run/state/mine /run/state/mine
                mount -o remount,bind,ro /run/state/mine");
            let refused = kudonet(&["apply", dir]);
            assert_eq!(
                refused.stderr,
                "kudonet: /run/state/mine: is owned by uid 65534, who can change it; make root its owner (refusing to use it)\n\
                 /run/state/mine/web.yaml: is owned by uid 65534, who can change it; make root its owner (refusing to use it)\n"
            );
            assert_eq!(refused.code, 1);
            assert!(link(None, "kudo0").is_none(), "nothing was changed");

            // A world-writable folder of root's, bound read-only from a path where it is not.
            sh("umount /run/state/mine && rm -r /run/state/mine
                install -d -m 0777 /run/shared /run/state/shared
                mount --bind /run/shared /run/state/shared
                mount -o remount,bind,ro /run/state/shared");
            let refused = kudonet(&["apply", dir]);
            assert_eq!(
                refused.stderr,
                "kudonet: /run/state/shared: is writable by every user (mode 0777), read-only here \
                 but writable as /run/shared; run chmod o-w on it (refusing to use it)\n"
            );
            assert_eq!(refused.code, 1);
            // And nobody can indeed add desired state through it.
            let written = as_nobody()
                .args(["touch", "/run/shared/web.yaml"])
                .status()
                .unwrap();
            assert!(written.success());
        },
    );
}

#[test]
fn a_configmap_volume_is_accepted() {
    common::sandboxed("a_configmap_volume_is_accepted", || {
        // As the kubelet lays it out: a 0777 root folder, a timestamped hidden folder, a
        // `..data` link to it, and links to the files; bound read-only at DIR.
        sh("mkdir /run/volume
            mount -t tmpfs -o mode=0777 configmap /run/volume
            install -d -m 0755 /run/volume/..2026_12_01_12_00_00.1
            install -m 0644 /dev/null /run/volume/..2026_12_01_12_00_00.1/node.yaml
            ln -s ..2026_12_01_12_00_00.1 /run/volume/..data
            ln -s ..data/node.yaml /run/volume/node.yaml
            install -d -m 0755 /run/state
            mount --bind /run/volume /run/state
            mount -o remount,bind,ro /run/state");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open("/run/volume/..2026_12_01_12_00_00.1/node.yaml")
            .unwrap();
        file.write_all(NODE.as_bytes()).unwrap();
        drop(file);
        // While its source is mounted writable in sight, anyone could add a file.
        let refused = kudonet(&["apply", "/run/state"]);
        assert_eq!(
            refused.stderr,
            "kudonet: /run/state: is writable by every user (mode 0777), read-only here but \
             writable as /run/volume; run chmod o-w on it (refusing to use it)\n"
        );
        // In a pod the source lies in the host's kubelet folders, out of sight.
        sh("umount /run/volume");
        let applied = kudonet(&["apply", "/run/state"]);
        assert_eq!(applied.code, 0, "{}", applied.stderr);
        assert!(link(None, "kudo0").is_some(), "applied");
        assert_eq!(mode("/run/state"), 0o777);
    });
}
