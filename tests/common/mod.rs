//! Node sandboxes: run a test body in a throwaway network + mount namespace, so that tests
//! create interfaces, namespaces and firewall rules without touching the machine.
//!
//! `sandboxed("name", || body)` re-runs the current test binary, filtered to test `name`,
//! under `unshare --net --mount --propagation private`; there it mounts a private tmpfs on
//! `/run` (the netns directory lives there) and runs `body`. Without root the test is skipped
//! with a printed reason, except in CI (`CI=true`), where missing privileges fail the run.

#![allow(dead_code)]

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::{Command, Output};

use kudonet::probe::Place;
use serde_json::Value;

const SANDBOX_ENV: &str = "KUDONET_TEST_SANDBOX";

/// Whether this process is a sandbox started by `sandboxed` (code after a `sandboxed` call
/// runs in both the sandbox and the test that started it).
pub fn inside_sandbox() -> bool {
    std::env::var_os(SANDBOX_ENV).is_some()
}

/// Runs `body` inside a fresh sandbox. `name` must be the test function's name.
pub fn sandboxed(name: &str, body: impl FnOnce()) {
    if std::env::var(SANDBOX_ENV).as_deref() == Ok(name) {
        prepare_sandbox();
        body();
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        let reason = format!("{name}: needs root to create namespaces");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason} (CI=true: kernel tests must run)");
        }
        eprintln!("skipped {reason}");
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(SANDBOX_ENV, name)
        .output()
        .expect("unshare runs (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "sandboxed test {name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

fn prepare_sandbox() {
    run_ok("mount", &["-t", "tmpfs", "kudonet-test-run", "/run"]);
    run_ok("ip", &["link", "set", "lo", "up"]);
}

/// Runs a command, returning its output whatever its status.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a shell script (bash -euo pipefail) that must succeed; returns its stdout.
pub fn sh(script: &str) -> String {
    run_ok("bash", &["-euo", "pipefail", "-c", script])
}

/// The node's uplink `eth0` (203.0.113.1/24) to an "outside" namespace (203.0.113.254), the
/// node's default gateway.
pub fn setup_outside() {
    sh("ip netns add outside
        ip link add eth0 type veth peer name up0 netns outside
        ip addr add 203.0.113.1/24 dev eth0 && ip link set eth0 up
        ip -n outside addr add 203.0.113.254/24 dev up0
        ip -n outside link set up0 up && ip -n outside link set lo up
        ip route add default via 203.0.113.254");
}

/// A namespace of the default netns directory, as a place to send packets from.
pub fn netns(name: &str) -> Place {
    Place::netns(Path::new("/run/netns").join(name))
}

pub fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

// Reading the kernel, for assertions.

/// `ip -j -d link show dev NAME` (in namespace `netns`), or None when there is no such link.
pub fn link(netns: Option<&str>, name: &str) -> Option<Value> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "-d", "link", "show", "dev", name]);
    let output = run("ip", &args);
    if !output.status.success() {
        return None;
    }
    let links: Value = serde_json::from_slice(&output.stdout).unwrap();
    Some(links[0].clone())
}

pub fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|flag| flag == "UP")
}

/// The IPv4 addresses of a link, as `ADDRESS/PREFIX` (none when there is no such link).
pub fn addresses(netns: Option<&str>, name: &str) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "-4", "addr", "show", "dev", name]);
    let output = run("ip", &args);
    if !output.status.success() {
        return Vec::new();
    }
    let links: Value = serde_json::from_slice(&output.stdout).unwrap();
    links[0]["addr_info"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .map(|info| format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of /run/netns (none when it does not exist).
pub fn namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// iptables-save of nat and filter, without comments and counters.
pub fn firewall() -> String {
    sh("iptables-save -t nat | grep -v '^#'; iptables-save -t filter | grep -v '^#'")
}

/// Names of the links of the node (or of `netns`), in ifindex order.
pub fn link_names(netns: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "link", "show"]);
    let links: Value = serde_json::from_str(&run_ok("ip", &args)).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link["ifname"].as_str().unwrap().to_string())
        .collect()
}
