//! Node sandboxes: run a test body in a throwaway network + mount namespace, so that tests
//! create interfaces, namespaces and firewall rules without touching the machine.
//!
//! `sandboxed("name", || body)` re-runs the current test binary, filtered to test `name`,
//! under `unshare --net --mount --propagation private`; there it mounts a private tmpfs on
//! `/run` (the netns directory lives there) and runs `body`. Without root the test is skipped
//! with a printed reason, except in CI (`CI=true`), where missing privileges fail the run.
//! `sandboxed_with_pids` adds a PID namespace, for tests whose programs leave daemons behind.

use std::process::{Command, Output};

const SANDBOX_ENV: &str = "KUDONET_TEST_SANDBOX";

/// Whether this process is a sandbox started by `sandboxed` (code after a `sandboxed` call
/// runs in both the sandbox and the test that started it).
pub fn inside_sandbox() -> bool {
    std::env::var_os(SANDBOX_ENV).is_some()
}

/// Runs `body` inside a fresh sandbox. `name` must be the test function's name.
pub fn sandboxed(name: &str, body: impl FnOnce()) {
    sandbox(name, &[], body);
}

/// `sandboxed`, in a PID namespace of its own too (`--pid --fork --mount-proc`): every
/// process the test starts, daemons that detach from it included (podman's conmon and the
/// containers under it), is killed by the kernel when the test ends, passed or failed.
/// The test binary is the namespace's init there, and `/proc` shows its processes only.
pub fn sandboxed_with_pids(name: &str, body: impl FnOnce()) {
    sandbox(name, &["--pid", "--fork", "--mount-proc"], body);
}

/// `unshare --net --mount --propagation private` with `more` namespaces, running `body`.
fn sandbox(name: &str, more: &[&str], body: impl FnOnce()) {
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
        .args(["--net", "--mount", "--propagation", "private"])
        .args(more)
        .arg("--")
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
    // A new namespace inherits the machine's IPv4 settings (net.core.devconf_inherit_init_net):
    // start every sandbox from the kernel's default, so that what a test expects kudonet to
    // change does not depend on the machine. This is the sandbox's own namespace.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").expect("set the sandbox's ip_forward");
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

/// The node's uplink `eth0` to "outside", both families (192.0.2.10/24 and 2001:db8::10/64;
/// outside is 192.0.2.254 and 2001:db8::fe), and a default route of each.
/// Addresses skip duplicate address detection, and link-local ones are valid at once, so
/// that the outside is reachable from the first packet.
pub fn setup_outside_dual_stack() {
    sh("ip netns add outside
        ip link add eth0 type veth peer name up0 netns outside
        sysctl -qw net.ipv6.conf.eth0.accept_dad=0
        ip netns exec outside sysctl -qw net.ipv6.conf.up0.accept_dad=0
        ip addr add 192.0.2.10/24 dev eth0
        ip addr add 2001:db8::10/64 dev eth0 nodad
        ip link set eth0 up
        ip -n outside addr add 192.0.2.254/24 dev up0
        ip -n outside addr add 2001:db8::fe/64 dev up0 nodad
        ip -n outside link set up0 up && ip -n outside link set lo up
        ip route add default via 192.0.2.254
        ip -6 route add default via 2001:db8::fe");
}
