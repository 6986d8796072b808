//! Crash consistency: `kill -9` at every crash point of an apply (and of a teardown), then
//! the next run converges to exactly the state a clean run gives, with nothing left over and
//! nothing duplicated. And concurrent applies serialise on the node lock.

mod common;

use common::KUDONET;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

const NODE: &str = "
kind: Node
name: node-a
cidr: 10.0.0.1/24
mtu: 1400
---
kind: Instance
name: web
address: 10.0.0.2/24
ports: [{hostPort: 8080, instancePort: 80}, {hostPort: 5353, instancePort: 53, protocol: udp}]
---
kind: Instance
name: db
address: 10.0.0.3/24
";

fn kudonet(args: &[&str], crash_at: Option<usize>) -> Output {
    let mut command = Command::new(KUDONET);
    command.args(args);
    if let Some(point) = crash_at {
        command.env(kudonet::faults::CRASH_AT, point.to_string());
    }
    command.output().expect("kudonet runs")
}

/// Everything kudonet could have made or left, normalised (no indexes, counters or MACs of
/// host links): links with kind, alias, master, MTU, state and addresses, per namespace;
/// routes; sysctls; iptables.
fn node_state() -> String {
    common::sh(
        r#"
        links() { ip -d -o link show | sed -E 's/^[0-9]+: //; s/@[^:]*//; s/link\/ether [0-9a-f:]+//; s/ (promiscuity|addrgenmode|numtxqueues|gso_max_size|tso_max_size|gro_max_size|parentbus|allmulti|minmtu).*//'; ip -o -4 addr show | awk '{print $2, $4}'; ip route show; }
        echo "== node"; links
        for ns in $(ls /run/netns | sort); do echo "== $ns"; ip netns exec "$ns" sh -c "$(declare -f links); links"; done
        echo "== sysctl"; sysctl net.ipv4.ip_forward net.ipv4.conf.kudo0.route_localnet 2>/dev/null || true
        echo "== iptables"; iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
        "#,
    )
}

fn write_state(dir: &Path, text: &str) {
    std::fs::write(dir.join("node.yaml"), text).unwrap();
}

/// Crashes `args` at crash point 1, 2, 3... (with `prepare` run before each attempt) until a
/// run gets through; returns how many points there were.
fn crash_everywhere(
    args: &[&str],
    mut prepare: impl FnMut(),
    mut after_crash: impl FnMut(usize),
) -> usize {
    for point in 1.. {
        prepare();
        let crashed = kudonet(args, Some(point));
        if crashed.status.success() {
            return point - 1;
        }
        assert_eq!(
            crashed.status.signal(),
            Some(nix::sys::signal::Signal::SIGKILL as i32),
            "crash point {point}: expected a SIGKILL, got {:?}: {}",
            crashed.status,
            String::from_utf8_lossy(&crashed.stderr)
        );
        after_crash(point);
    }
    unreachable!()
}

#[test]
fn an_apply_killed_anywhere_converges_on_the_next() {
    common::sandboxed("an_apply_killed_anywhere_converges_on_the_next", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        write_state(dir.path(), NODE);
        assert!(kudonet(&["apply", path], None).status.success());
        let reference = node_state();
        assert!(kudonet(&["teardown"], None).status.success());

        // Building from nothing, killed at each point.
        let points = crash_everywhere(
            &["apply", path],
            || assert!(kudonet(&["teardown"], None).status.success()),
            |point| {
                let again = kudonet(&["apply", path], None);
                assert!(
                    again.status.success(),
                    "apply after a crash at point {point}: {again:?}"
                );
                assert_eq!(
                    node_state(),
                    reference,
                    "state after a crash at point {point}"
                );
            },
        );
        assert!(
            points > 40,
            "only {points} crash points: are they wired in?"
        );

        // Changing a converged node (one instance removed, the MTU changed), killed at each point.
        let changed = NODE
            .replace("mtu: 1400", "mtu: 1300")
            .replace("---\nkind: Instance\nname: db\naddress: 10.0.0.3/24\n", "");
        write_state(dir.path(), &changed);
        assert!(kudonet(&["apply", path], None).status.success());
        let changed_reference = node_state();
        crash_everywhere(
            &["apply", path],
            || {
                write_state(dir.path(), NODE);
                assert!(kudonet(&["apply", path], None).status.success());
                write_state(dir.path(), &changed);
            },
            |point| {
                assert!(kudonet(&["apply", path], None).status.success());
                assert_eq!(
                    node_state(),
                    changed_reference,
                    "state after a crash at point {point}"
                );
            },
        );

        // Teardown, killed at each point: the next teardown leaves nothing of kudonet's.
        let empty = {
            assert!(kudonet(&["teardown"], None).status.success());
            node_state()
        };
        crash_everywhere(
            &["teardown"],
            || assert!(kudonet(&["apply", path], None).status.success()),
            |point| {
                assert!(kudonet(&["teardown"], None).status.success());
                assert_eq!(
                    node_state(),
                    empty,
                    "state after a teardown killed at point {point}"
                );
            },
        );
    });
}

#[test]
fn concurrent_applies_serialise() {
    common::sandboxed("concurrent_applies_serialise", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        write_state(dir.path(), NODE);
        // Four applies on an empty node at once: each waits for the node lock, so exactly one
        // builds the node and the others find it converged; none trips over another.
        let racers: Vec<_> = (0..4)
            .map(|_| Command::new(KUDONET).args(["apply", path]).spawn().unwrap())
            .collect();
        let outputs: Vec<Output> = racers
            .into_iter()
            .map(|racer| racer.wait_with_output().unwrap())
            .collect();
        for output in &outputs {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let state = node_state();
        assert!(kudonet(&["apply", path], None).status.success());
        assert_eq!(
            String::from_utf8_lossy(&kudonet(&["plan", path], None).stdout),
            "No changes.\n"
        );
        assert_eq!(node_state(), state);
    });
}
