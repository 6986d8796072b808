//! What kudonet cannot own but must see and say, and what it must never touch, on a real
//! kernel in a sandbox: node-wide conditions (a FORWARD policy of DROP in the other iptables
//! backend, an nftables forward chain that drops or rejects, a missing uplink, a subnet the
//! uplink uses), kudonet's chains left in the other iptables backend, and per-interface
//! sysctls written only for kudonet's own bridge.

mod common;

use common::cli::{kudonet_output as kudonet, text};

use std::path::Path;
use std::process::Output;

use common::state::StateDir;
use common::{run_ok, sandboxed, setup_outside, sh};
use kudonet::kernel::KernelDataplane;
use kudonet::reconcile::{self, NoProgress};
use serde_json::Value;

const NODE: &str = "kind: Node
name: node-a
cidr: 10.0.0.1/24
---
kind: Instance
name: web
address: 10.0.0.2/24
ports:
  - hostPort: 8080
    instancePort: 80
";

fn status_json(dir: &str) -> Value {
    let output = kudonet(&["status", dir, "--output", "json"]);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("status json: {error}: {}", text(&output.stderr)))
}

/// The conditions of the status document, as `TYPE: message`.
fn conditions(status: &Value) -> Vec<String> {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c["type"].as_str().unwrap(),
                c["message"].as_str().unwrap()
            )
        })
        .collect()
}

fn apply_ok(dir: &str) -> Output {
    let apply = kudonet(&["apply", dir]);
    assert!(
        apply.status.success(),
        "apply failed: {}{}",
        text(&apply.stdout),
        text(&apply.stderr)
    );
    apply
}

#[test]
fn route_localnet_is_never_written_for_an_interface_that_is_not_kudonets_bridge() {
    sandboxed(
        "route_localnet_is_never_written_for_an_interface_that_is_not_kudonets_bridge",
        || {
            // Validation refuses `bridge: all`; a desired state made in code bypasses it, and
            // the dataplane must still refuse the node-wide pseudo-device.
            let dir = StateDir::new("kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n");
            let (_, mut desired) = reconcile::load_desired(&dir.dir(), None).unwrap();
            desired.node.bridge = "all".to_string();
            let all = "/proc/sys/net/ipv4/conf/all/route_localnet";
            assert_eq!(std::fs::read_to_string(all).unwrap().trim(), "0");
            let mut dataplane = KernelDataplane::new(Path::new("/run/netns")).unwrap();
            let outcome = reconcile::converge(
                &mut dataplane,
                &desired,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap();
            let errors: Vec<String> = outcome.failures.iter().map(|f| f.to_string()).collect();
            assert!(
                errors.iter().any(|error| error.contains(
                    "refusing to set net.ipv4.conf.all.route_localnet: all is not kudonet's bridge"
                )),
                "{errors:?}"
            );
            assert_eq!(std::fs::read_to_string(all).unwrap().trim(), "0");

            // A foreign bridge of that name is not kudonet's either.
            sh("ip link add br-x type bridge");
            desired.node.bridge = "br-x".to_string();
            let outcome = reconcile::converge(
                &mut dataplane,
                &desired,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap();
            assert!(outcome.remaining.blocked);
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv4/conf/br-x/route_localnet")
                    .unwrap()
                    .trim(),
                "0"
            );
        },
    );
}

#[test]
fn kudonets_chains_in_the_other_iptables_backend_are_removed_by_apply_and_teardown() {
    sandboxed(
        "kudonets_chains_in_the_other_iptables_backend_are_removed_by_apply_and_teardown",
        || {
            setup_outside();
            // What a kudonet using the legacy backend left: a published port of an instance
            // that no longer exists. And a rule of someone else's, which must stay.
            let legacy_leftovers = "
                iptables-legacy -w -t nat -N KUDO-PORTS
                iptables-legacy -w -t nat -A KUDO-PORTS -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.9:80
                iptables-legacy -w -t nat -I PREROUTING -m comment --comment kudonet -j KUDO-PORTS
                iptables-legacy -w -N KUDO-FORWARD
                iptables-legacy -w -I FORWARD -m comment --comment kudonet -j KUDO-FORWARD
                iptables-legacy -w -t nat -A PREROUTING -d 198.51.100.7/32 -j RETURN
            ";
            sh(legacy_leftovers);
            let dir = StateDir::new(NODE);
            let plan = kudonet(&["plan", dir.path()]);
            assert!(
                text(&plan.stdout)
                    .contains("- kudonet's chains in table nat of the other iptables backend\n"),
                "{}",
                text(&plan.stdout)
            );
            apply_ok(dir.path());
            let legacy = || sh("iptables-legacy-save | grep -v '^#'");
            assert!(!legacy().contains("KUDO"), "{}", legacy());
            assert!(legacy().contains("-A PREROUTING -d 198.51.100.7/32 -j RETURN"));
            // kudonet's own backend has its chains, and a second apply changes nothing.
            assert!(common::firewall().contains("KUDO-"));
            assert_eq!(text(&apply_ok(dir.path()).stdout), "No changes.\n");

            // The other backend's tools failing leaves the chains and says so, but the node
            // and its instances still work.
            sh(legacy_leftovers);
            sh(
                "mkdir -p /run/broken && printf '#!/bin/sh\\necho cannot >&2\\nexit 1\\n' \
                > /run/broken/iptables-legacy-restore && chmod 0755 /run/broken/iptables-legacy-restore",
            );
            let path = format!("/run/broken:{}", std::env::var("PATH").unwrap_or_default());
            let broken = |args: &[&str]| {
                std::process::Command::new(common::KUDONET)
                    .args(args)
                    .env("PATH", &path)
                    .output()
                    .unwrap()
            };
            let dir_arg = dir.path();
            let apply = broken(&["apply", dir_arg]);
            assert_eq!(apply.status.code(), Some(1), "{}", text(&apply.stderr));
            assert!(
                text(&apply.stderr).contains("iptables-legacy-restore failed"),
                "{}",
                text(&apply.stderr)
            );
            let output = broken(&["status", dir_arg, "--output", "json"]);
            let status: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(status["instances"][0]["phase"], "Ready", "{status}");
            assert!(
                conditions(&status).iter().any(|condition| {
                    condition.starts_with(
                    "StaleOtherBackend: kudonet's chains in table nat of the other iptables backend"
                )
                }),
                "{status}"
            );
            assert!(legacy().contains("KUDO"));

            let teardown = kudonet(&["teardown", dir.path()]);
            assert!(teardown.status.success(), "{}", text(&teardown.stderr));
            assert!(!legacy().contains("KUDO"), "{}", legacy());
            assert!(legacy().contains("-A PREROUTING -d 198.51.100.7/32 -j RETURN"));
            assert!(!common::firewall().contains("KUDO-"));
        },
    );
}

#[test]
fn drops_by_other_firewalls_are_node_conditions_not_failed_instances() {
    sandboxed(
        "drops_by_other_firewalls_are_node_conditions_not_failed_instances",
        || {
            setup_outside();
            let dir = StateDir::new(NODE);
            apply_ok(dir.path());
            assert_eq!(conditions(&status_json(dir.path())), Vec::<String>::new());

            sh("iptables-legacy -w -P FORWARD DROP
                nft add table inet fw
                nft add chain inet fw forward '{ type filter hook forward priority 0; policy drop; }'
                nft add chain inet fw screen '{ type filter hook forward priority 10; }'
                nft add rule inet fw screen ip saddr 10.0.0.0/8 reject
                nft add table ip6 fw6
                nft add chain ip6 fw6 forward '{ type filter hook forward priority 0; policy drop; }'");
            let status = status_json(dir.path());
            assert_eq!(
                conditions(&status),
                [
                    "ForwardBlocked: nftables chain `inet fw forward` drops forwarded packets by policy: \
                     instance traffic it does not accept is dropped",
                    "ForwardBlocked: nftables chain `inet fw screen` has 1 reject rule(s) on forwarded \
                     packets: instance traffic they match is refused",
                    "ForwardBlocked: nftables chain `ip6 fw6 forward` drops forwarded packets by \
                     policy: instance traffic it does not accept is dropped",
                    "ForwardBlocked: iptables-legacy FORWARD policy is DROP: forwarded instance traffic \
                     is dropped there, whatever kudonet's chains accept",
                ]
            );
            // The instance itself is as it should be.
            assert_eq!(status["instances"][0]["phase"], "Ready");
            let plan = kudonet(&["plan", dir.path()]);
            assert_eq!(text(&plan.stdout), "No changes.\n");
            assert_eq!(
                text(&plan.stderr)
                    .lines()
                    .filter(|line| line.starts_with("warning: ForwardBlocked: "))
                    .count(),
                4,
                "{}",
                text(&plan.stderr)
            );
            let table = kudonet(&["status", dir.path()]);
            assert!(
                text(&table.stdout).starts_with(
                    "Node condition ForwardBlocked: nftables chain `inet fw forward` drops"
                ),
                "{}",
                text(&table.stdout)
            );
        },
    );
}

#[test]
fn a_missing_uplink_and_a_foreign_peer_route_are_node_conditions() {
    sandboxed(
        "a_missing_uplink_and_a_foreign_peer_route_are_node_conditions",
        || {
            setup_outside();
            let dir = StateDir::new(
                "kind: Node
name: node-a
cidr: 10.0.0.1/24
externalIp: 203.0.113.1
uplink: eth9
---
kind: Node
name: node-b
cidr: 10.0.1.1/24
externalIp: 203.0.113.2
---
kind: Instance
name: web
node: node-a
address: 10.0.0.2/24
",
            );
            // Someone else's route to node-b's subnet: kudonet leaves it alone.
            sh("ip route add 10.0.1.0/24 via 203.0.113.254");
            let dir_arg = dir.path();
            let apply = kudonet(&["apply", dir_arg, "--node", "node-a"]);
            assert!(!apply.status.success());
            assert!(
                text(&apply.stderr).contains(
                    "warning: UplinkMissing: uplink eth9 of Node \"node-a\" does not exist: instances \
                     cannot reach the outside and ports published on it are unreachable\n"
                ),
                "{}",
                text(&apply.stderr)
            );
            let output = kudonet(&["status", dir_arg, "--node", "node-a", "--output", "json"]);
            let status: Value = serde_json::from_slice(&output.stdout).unwrap();
            let found = conditions(&status);
            assert_eq!(found.len(), 2, "{found:?}");
            assert!(
                found[0]
                    .starts_with("Conflict: a route to 10.0.1.0/24 exists and is not kudonet's")
            );
            assert!(found[1].starts_with("UplinkMissing: uplink eth9"));
            // The instance works: a route to a peer is no reason to call it Failed.
            assert_eq!(status["instances"][0]["phase"], "Ready", "{status}");
            assert_eq!(status["instances"][0]["message"], "");
        },
    );
}

#[test]
fn a_node_subnet_the_uplink_uses_is_refused_at_its_cidr_before_any_change() {
    sandboxed(
        "a_node_subnet_the_uplink_uses_is_refused_at_its_cidr_before_any_change",
        || {
            setup_outside();
            let dir = StateDir::new("kind: Node\nname: node-a\ncidr: 203.0.113.2/24\n");
            let path = dir.file("node.yaml");
            let expected = format!(
                "kudonet: {}:3:7: subnet 203.0.113.0/24 of Node \"node-a\" overlaps 203.0.113.1/24 \
                 of its uplink eth0: the node would lose its own network; choose a subnet the uplink \
                 does not use\n",
                path.display()
            );
            let links_before = common::link_names(None);
            for command in ["plan", "apply"] {
                let output = kudonet(&[command, dir.path()]);
                assert_eq!(output.status.code(), Some(1), "{command}");
                assert_eq!(text(&output.stderr), expected, "{command}");
            }
            assert_eq!(common::link_names(None), links_before);
            assert!(!common::firewall().contains("KUDO-"));
            let status = status_json(dir.path());
            assert_eq!(status["valid"], false, "{status}");
            assert_eq!(
                status["errors"][0],
                expected.trim_start_matches("kudonet: ").trim_end()
            );
            assert!(
                conditions(&status)[0].starts_with("UplinkOverlap: subnet 203.0.113.0/24"),
                "{status}"
            );
            // A subnet inside the uplink's wider network, holding neither its address nor its
            // gateway, works: a warning.
            std::fs::write(&path, "kind: Node\nname: node-a\ncidr: 203.0.113.129/25\n").unwrap();
            let apply = apply_ok(dir.path());
            assert_eq!(
                text(&apply.stderr),
                "warning: UplinkShadowed: subnet 203.0.113.128/25 of Node \"node-a\" lies inside \
                 203.0.113.0/24 of its uplink eth0: hosts of that network in 203.0.113.128/25 are \
                 unreachable from the node\n"
            );
            // Without an uplink holding the subnet, the same file is fine.
            run_ok("ip", &["addr", "flush", "dev", "eth0"]);
            run_ok("ip", &["addr", "add", "198.51.100.1/24", "dev", "eth0"]);
            apply_ok(dir.path());
        },
    );
}
