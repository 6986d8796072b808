//! Podman 4 with its CNI backend, inside a sandbox: containers on a CNI network whose
//! plugin is the kudonet binary under test.
//!
//! `Podman::new(conflist)` needs a sandbox with a PID namespace (`sandboxed_with_pids`):
//! podman's conmon detaches from the test, and only the end of the PID namespace is sure to
//! take it and the containers along. Everything podman keeps is private to the sandbox:
//! its configuration, storage (vfs), run state and events log live in a folder of the
//! sandbox's `/run` (a tmpfs), and tmpfs are mounted on `/dev/shm` (podman's locks) and
//! `/var/lib` (libcni's cache of results, `/var/lib/cni`, a path podman 4 does not let us
//! move). Nothing is read from or written to the machine's `/etc/containers` or
//! `/etc/cni/net.d`.
//!
//! Containers run a busybox root filesystem (`--rootfs`, no image, no registry): busybox's
//! `httpd`, `wget`, `nc`, `ping` and `ip` are there as commands. (Debian's busybox 1.35
//! `wget -T` crashes, timeout or not: leave `-T` out.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
use serde_json::Value;

use super::KUDONET;
use super::sandbox::{inside_sandbox, run_ok};

/// Podman configured in a private folder, with one CNI network.
pub struct Podman {
    dir: tempfile::TempDir,
    network: String,
}

impl Podman {
    /// Podman whose one CNI network is `conflist` (a network configuration list, JSON), with
    /// the kudonet binary under test as the plugin of type `kudonet`.
    pub fn new(conflist: &str) -> Podman {
        Podman::with_plugin_dirs(conflist, &[])
    }

    /// `new`, with the plugins of `plugin_dirs` too, searched after kudonet's (a network of
    /// the reference plugins, `/usr/lib/cni` on Debian, checks the kit itself).
    pub fn with_plugin_dirs(conflist: &str, plugin_dirs: &[&str]) -> Podman {
        assert!(
            inside_sandbox() && std::process::id() == 1,
            "Podman mounts tmpfs on /dev/shm and /var/lib: only inside sandboxed_with_pids"
        );
        let network =
            serde_json::from_str::<Value>(conflist).expect("the conflist is JSON")["name"]
                .as_str()
                .expect("the conflist has a name")
                .to_string();
        run_ok("mount", &["-t", "tmpfs", "podman-shm", "/dev/shm"]);
        run_ok("mount", &["-t", "tmpfs", "podman-var-lib", "/var/lib"]);
        std::fs::create_dir("/var/lib/cni").unwrap();

        let dir = tempfile::Builder::new()
            .prefix("podman-")
            .tempdir_in("/run")
            .unwrap();
        let path = dir.path();
        // The plugin is found by its type, as an executable of that name in the first of
        // `cni_plugin_dirs` that has one.
        let plugins = path.join("cni-bin");
        std::fs::create_dir(&plugins).unwrap();
        std::os::unix::fs::symlink(KUDONET, plugins.join("kudonet")).unwrap();
        let networks = path.join("net.d");
        std::fs::create_dir(&networks).unwrap();
        std::fs::write(networks.join(format!("{network}.conflist")), conflist).unwrap();

        let plugin_dirs = std::iter::once(plugins.display().to_string())
            .chain(plugin_dirs.iter().map(|dir| dir.to_string()))
            .map(|dir| format!("{dir:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let state = path.join("state");
        std::fs::write(
            path.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = [{ulimits}]
log_driver = "k8s-file"
[network]
network_backend = "cni"
cni_plugin_dirs = [{plugin_dirs}]
network_config_dir = "{networks}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{state}/events.log"
runtime = "runc"
tmp_dir = "{state}/tmp"
"#,
                ulimits = ulimits(),
                networks = networks.display(),
                state = state.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            path.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{state}/storage\"\nrunroot = \"{state}/runroot\"\n",
                state = state.display()
            ),
        )
        .unwrap();
        busybox_rootfs(&path.join("rootfs"));
        Podman { dir, network }
    }

    /// The containers' root filesystem (busybox).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// `podman ARGS...` with this configuration, whatever its outcome.
    pub fn output(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            // conmon fails in a working directory that no longer exists.
            .current_dir("/")
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run podman: {error} (on Debian: apt-get install \
                     --no-install-recommends podman runc busybox-static, as scripts/install-deps does)"
                )
            })
    }

    /// `podman ARGS...`, which must succeed; its stdout.
    #[track_caller]
    pub fn podman(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "podman {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts container `name` on the network running `command`, with `publish` (`-p`
    /// values: `8080:80`).
    #[track_caller]
    pub fn run(&self, name: &str, publish: &[&str], command: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.network];
        for port in publish {
            args.extend(["-p", port]);
        }
        // `--rootfs` is a switch: the path is the first argument after the options.
        let rootfs = self.rootfs().display().to_string();
        args.extend(["--rootfs", &rootfs]);
        args.extend(command);
        self.podman(&args);
    }

    /// `podman exec NAME COMMAND...`, which must succeed; its stdout.
    #[track_caller]
    pub fn exec(&self, name: &str, command: &[&str]) -> String {
        let mut args = vec!["exec", name];
        args.extend(command);
        self.podman(&args)
    }

    /// Removes the containers at once (`-t 0`: busybox as PID 1 ignores SIGTERM, and podman
    /// would wait 10 s before killing it).
    #[track_caller]
    pub fn rm(&self, names: &[&str]) {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(names);
        self.podman(&args);
    }

    /// The source address the echo server at `target` (`10.77.0.3:7777`, see
    /// `probes::serve`) saw, asked by busybox's `nc` in container `name`.
    #[track_caller]
    pub fn seen(&self, name: &str, target: &str) -> String {
        let (host, port) = target.rsplit_once(':').unwrap();
        let answer = self.exec(name, &["nc", "-w", "3", host, port]);
        match answer.trim().rsplit_once(':') {
            Some((address, _port)) => address.to_string(),
            None => panic!("{target} from container {name}: unexpected answer {answer:?}"),
        }
    }

    /// What `podman inspect` says of container `name` at `format` (a Go template).
    #[track_caller]
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.podman(&["inspect", name, "--format", format])
            .trim()
            .to_string()
    }

    /// The address (with its prefix) podman reports for container `name` on the network:
    /// what the plugin's ADD result gave it.
    #[track_caller]
    pub fn address(&self, name: &str) -> String {
        let networks: Value =
            serde_json::from_str(&self.inspect(name, "{{json .NetworkSettings.Networks}}"))
                .unwrap();
        let network = &networks[&self.network];
        format!("{}/{}", network["IPAddress"], network["IPPrefixLen"]).replace('"', "")
    }

    /// The network namespace of container `name` (`/run/netns/netns-…`), the `CNI_NETNS`
    /// the plugin was given.
    #[track_caller]
    pub fn sandbox_key(&self, name: &str) -> String {
        self.inspect(name, "{{.NetworkSettings.SandboxKey}}")
    }
}

impl Drop for Podman {
    /// Removes what is left, so that the plugin's DELs run before the sandbox ends (the end
    /// of its PID namespace would kill the containers without them).
    fn drop(&mut self) {
        let _ = self.output(&["rm", "--all", "-f", "-t", "0"]);
    }
}

/// Containers' `ulimit`s within this machine's hard limits: as root, podman raises the
/// number of open files and of processes to values the OCI runtime may not be allowed to
/// set (`error setting rlimit type 6: operation not permitted`).
fn ulimits() -> String {
    [
        ("nofile", Resource::RLIMIT_NOFILE),
        ("nproc", Resource::RLIMIT_NPROC),
    ]
    .into_iter()
    .map(|(name, resource)| {
        let (_, hard) = getrlimit(resource).unwrap();
        let limit = if hard == RLIM_INFINITY {
            "-1".to_string()
        } else {
            hard.to_string()
        };
        format!("\"{name}={limit}:{limit}\"")
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// A root filesystem of busybox (static: the container has no libraries) and its applets.
fn busybox_rootfs(rootfs: &Path) {
    for dir in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "www",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    let busybox = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("busybox"))
        .find(|path| path.is_file())
        .expect("busybox is installed (Debian: busybox-static)");
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in run_ok(&busybox.display().to_string(), &["--list"]).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
}
