//! What others do to a node, and the environment kudonet finds: a desired state others can
//! write, a read-only /proc/sys, a netns directory that is not a mount point. Each is either
//! handled or refused with one clear line, and a refusal leaves the node as it was.

mod common;

use common::KUDONET;
use common::cli::{kudonet_output as kudonet, text};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NODE: &str = "
kind: Node
name: node-a
cidr: 10.0.0.1/24
---
kind: Instance
name: web
address: 10.0.0.2/24
ports: [{hostPort: 8080, instancePort: 80}]
";

/// Links, namespaces and kudonet's rules: what a refused command must leave alone.
fn node_state() -> String {
    common::sh(
        "ip -o link show | cut -d: -f2; ls /run/netns 2>/dev/null || true; iptables-save | grep -c KUDO || true",
    )
}

fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.yaml"), NODE).unwrap();
    dir
}

#[test]
fn a_desired_state_others_can_write_is_refused() {
    common::sandboxed("a_desired_state_others_can_write_is_refused", || {
        let dir = state_dir();
        let file = dir.path().join("node.yaml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let path = dir.path().to_str().unwrap();
        let before = node_state();
        let expected = format!(
            "kudonet: {}: is writable by every user (mode 0666); run chmod o-w on it (refusing to use it)\n",
            file.display()
        );
        for command in ["apply", "plan"] {
            let output = kudonet(&[command, path]);
            assert_eq!(
                (output.status.code(), text(&output.stderr)),
                (Some(1), expected.clone()),
                "{command}"
            );
        }
        // The controller refuses too, and keeps refusing without changing anything.
        let status_file = dir.path().join("status.json");
        let mut run = std::process::Command::new(KUDONET)
            .args(["run", path, "--resync", "1", "--status-file"])
            .arg(&status_file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !status_file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
        assert_eq!(status["valid"], false);
        assert_eq!(
            status["errors"],
            serde_json::json!([expected.trim_start_matches("kudonet: ").trim_end()])
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(run.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(run.wait().unwrap().success());
        assert_eq!(node_state(), before, "nothing changed");

        // validate only warns.
        let validate = kudonet(&["validate", path]);
        assert!(validate.status.success());
        assert_eq!(
            text(&validate.stderr),
            format!(
                "warning: {}",
                expected
                    .trim_start_matches("kudonet: ")
                    .replace(" (refusing to use it)", "")
            )
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(kudonet(&["apply", path]).status.success());
    });
}

#[test]
fn a_read_only_proc_sys_is_refused_before_any_change() {
    common::sandboxed("a_read_only_proc_sys_is_refused_before_any_change", || {
        let dir = state_dir();
        let path = dir.path().to_str().unwrap();
        common::sh("mount --bind -o ro /proc/sys /proc/sys");
        let before = node_state();
        let apply = kudonet(&["apply", path]);
        assert_eq!(
            (apply.status.code(), text(&apply.stdout), text(&apply.stderr)),
            (
                Some(1),
                String::new(),
                "kudonet: cannot change sysctls: /proc/sys/net/ipv4/ip_forward: Read-only file system (os error 30) \
                 (kudonet needs a writable /proc/sys/net)\n"
                    .to_string()
            )
        );
        assert_eq!(node_state(), before, "nothing changed");
        // Reading still works: plan says what it would do.
        let plan = kudonet(&["plan", path]);
        assert!(plan.status.success());
        assert!(
            text(&plan.stdout).ends_with("Plan: 5 to add, 11 to change, 0 to destroy.\n"),
            "{}",
            text(&plan.stdout)
        );
        common::sh("umount /proc/sys");
        assert!(kudonet(&["apply", path]).status.success());
    });
}

#[test]
fn a_netns_directory_that_is_not_a_mount_point_is_made_one() {
    common::sandboxed(
        "a_netns_directory_that_is_not_a_mount_point_is_made_one",
        || {
            let dir = state_dir();
            let path = dir.path().to_str().unwrap();
            std::fs::create_dir_all("/run/netns").unwrap();
            assert!(!common::sh("findmnt -n /run/netns || true").contains("/run/netns"));
            let apply = kudonet(&["apply", path]);
            assert!(apply.status.success(), "{}", text(&apply.stderr));
            // Made a shared mount point as `ip netns add` does, so `ip netns` tools see the
            // namespaces kudonet mounts there.
            assert!(common::sh("findmnt -n -o PROPAGATION /run/netns").contains("shared"));
            assert_eq!(common::sh("ip netns list | cut -d' ' -f1"), "kudo-web\n");
            assert_eq!(
                common::sh("ip netns exec kudo-web ip -br -4 addr show eth0")
                    .split_whitespace()
                    .nth(2),
                Some("10.0.0.2/24")
            );
            assert!(Path::new("/run/netns/kudo-web").exists());
        },
    );
}
