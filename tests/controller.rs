//! `kudonet run`, the controller loop, against a real kernel: one scenario per test, each in
//! its own sandbox (see `common::sandboxed`), with the controller running as a child process
//! (`common::controller::Controller`). Tests wait until the node, the status file or the
//! metrics show what is expected, with a generous limit, and fail with the controller's
//! status document and log; they assert on elapsed time only where time is the requirement
//! (a probe answering within a second, a change applied long before the resync, attempts
//! bounded by the backoff). Every test stops the controller with SIGTERM and checks that it
//! exits 0 and leaves the network in place.
//!
//! The sandbox's own namespace is the node. Where packets must leave it, "outside" is a
//! namespace behind the node's uplink `eth0` (203.0.113.1/24; outside is 203.0.113.254 and
//! the node's default gateway).

mod common;

use common::controller::{Controller, LIMIT, metric, phases};
use common::state::write_file;
use common::{
    KUDONET, StateDir, addr, addresses, firewall, is_up, link, namespaces, netns, seen_tcp as seen,
    setup_outside,
};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kudonet::probe::{self, Place};
use kudonet::spec::Protocol::Tcp;
use nix::sys::signal::Signal;
use serde_json::Value;

/// web publishes 8080 -> 80; db publishes nothing.
const NODE: &str = "\
kind: Node
name: node-a
cidr: 10.0.0.1/24
---
kind: Instance
name: web
address: 10.0.0.2/24
ports:
  - hostPort: 8080
    instancePort: 80
---
kind: Instance
name: db
address: 10.0.0.3/24
";

/// Host ends of the veths of web and db (pinned by `names::host_interface_name`).
const WEB_VETH: &str = "kv0e11948721ef1";
const DB_VETH: &str = "kv14e07b53ba1e3";

fn cache(address: &str) -> String {
    format!("kind: Instance\nname: cache\naddress: {address}\n")
}

/// An instance of the last valid state while DIR is invalid.
fn in_force(name: &str, veth: &str, address: &str) -> Value {
    let mut entry = instance(name, veth, address);
    entry["message"] = "desired state invalid: the last valid state stays in force".into();
    entry
}

/// A Ready instance of `NODE` as the status document shows it.
fn instance(name: &str, veth: &str, address: &str) -> Value {
    serde_json::json!({
        "name": name, "phase": "Ready", "address": address, "addresses": [address],
        "netns": format!("/run/netns/kudo-{name}"), "hostInterface": veth, "message": "",
    })
}

/// Everything kudonet could change on the node, as text: links, addresses, routes, the
/// namespaces and what is inside them, the firewall.
fn kernel_state() -> String {
    // IPv4 only: IPv6 link-local addresses change state by themselves (duplicate detection).
    let mut state = common::sh("ip -o link show; ip -4 -o addr show; ip -4 route show table all");
    for netns in namespaces() {
        state += &format!("== {netns}\n");
        state += &common::sh(&format!(
            "ip -n {netns} -o link show; ip -n {netns} -4 -o addr show; ip -n {netns} -4 route show"
        ));
    }
    state + &firewall()
}

/// Whether `kudonet plan` finds nothing to do (it only reads, so it may run beside `run`).
fn plan_is_empty(state: &StateDir) -> bool {
    let output = common::run(KUDONET, &["plan", state.path()]);
    output.status.success() && output.stdout == b"No changes.\n"
}

/// web and db as built: veths up on the bridge, eth0 addressed with a default route.
fn instance_built(name: &str, veth: &str, address: &str) -> bool {
    let netns = format!("kudo-{name}");
    link(None, veth).is_some_and(|veth| is_up(&veth) && veth["master"] == "kudo0")
        && link(Some(&netns), "eth0").is_some_and(|eth0| is_up(&eth0))
        && addresses(Some(&netns), "eth0") == [address]
        && common::run_ok("ip", &["-n", &netns, "route", "show", "default"])
            .starts_with("default via 10.0.0.1 dev eth0")
}

/// db reaches web directly, and the node reaches web through its published port.
#[track_caller]
fn web_answers() {
    let _web80 = probe::serve(&netns("kudo-web"), Tcp, addr("0.0.0.0:80")).unwrap();
    assert_eq!(seen(&netns("kudo-db"), "10.0.0.2:80"), "10.0.0.3");
    assert_eq!(seen(&Place::Here, "10.0.0.1:8080"), "10.0.0.1");
}

/// `web_answers`, retried: the first packets after a repair may meet a neighbour entry
/// being revalidated.
#[track_caller]
fn web_answers_again(kudonet: &Controller) {
    let _web80 = probe::serve(&netns("kudo-web"), Tcp, addr("0.0.0.0:80")).unwrap();
    let answers = |from: &Place, target: &str, source: &str| {
        probe::ask(from, Tcp, addr(target)).is_ok_and(|seen| seen.ip().to_string() == source)
    };
    kudonet.wait_until("packets flow again", || {
        answers(&netns("kudo-db"), "10.0.0.2:80", "10.0.0.3")
            && answers(&Place::Here, "10.0.0.1:8080", "10.0.0.1")
    });
}

/// The node still stands after the controller stopped.
#[track_caller]
fn network_left_in_place(instances: &[&str]) {
    let expected: Vec<String> = instances
        .iter()
        .map(|name| format!("kudo-{name}"))
        .collect();
    let present: Vec<String> = namespaces()
        .into_iter()
        .filter(|netns| netns.starts_with("kudo-"))
        .collect();
    assert_eq!(present, expected);
    assert!(link(None, "kudo0").is_some_and(|bridge| is_up(&bridge)));
    assert!(firewall().contains("-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD"));
}

#[test]
fn start_up_builds_the_node_and_follows_file_changes() {
    common::sandboxed("start_up_builds_the_node_and_follows_file_changes", || {
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(&state, &["--resync", "60"]);
        kudonet.wait_ready(&["db", "web"]);
        let status = kudonet.status().unwrap();
        assert_eq!(status["node"], "node-a");
        assert_eq!(status["errors"], serde_json::json!([]));
        assert_eq!(
            status["instances"],
            serde_json::json!([
                instance("db", DB_VETH, "10.0.0.3/24"),
                instance("web", WEB_VETH, "10.0.0.2/24"),
            ])
        );
        assert_eq!(namespaces(), ["kudo-db", "kudo-web"]);
        assert!(instance_built("web", WEB_VETH, "10.0.0.2/24"));
        assert!(instance_built("db", DB_VETH, "10.0.0.3/24"));
        assert!(plan_is_empty(&state));
        web_answers();
        let links_before = common::sh("ip -o link show");

        // A new file, written to a hidden name and renamed: a new instance.
        state.replace("cache.yaml", &cache("10.0.0.4/24"));
        kudonet.wait_ready(&["cache", "db", "web"]);
        let veth = kudonet.instance("cache").unwrap()["hostInterface"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(namespaces(), ["kudo-cache", "kudo-db", "kudo-web"]);
        assert!(instance_built("cache", &veth, "10.0.0.4/24"));

        // Modified: the new address replaces the old one.
        state.replace("cache.yaml", &cache("10.0.0.5/24"));
        kudonet.wait_until("cache has its new address", || {
            instance_built("cache", &veth, "10.0.0.5/24")
                && kudonet
                    .instance("cache")
                    .is_some_and(|cache| cache["address"] == "10.0.0.5/24")
        });
        kudonet.wait_ready(&["cache", "db", "web"]);
        let cache80 = probe::serve(&netns("kudo-cache"), Tcp, addr("0.0.0.0:80")).unwrap();
        assert_eq!(seen(&netns("kudo-web"), "10.0.0.5:80"), "10.0.0.2");
        drop(cache80);

        // Renamed to a hidden name: exactly its namespace and veth go.
        std::fs::rename(state.file("cache.yaml"), state.file(".cache.yaml.old")).unwrap();
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("cache's namespace and veth are gone", || {
            namespaces() == ["kudo-db", "kudo-web"] && link(None, &veth).is_none()
        });
        assert_eq!(common::sh("ip -o link show"), links_before);

        // Back, then deleted.
        std::fs::rename(state.file(".cache.yaml.old"), state.file("cache.yaml")).unwrap();
        kudonet.wait_ready(&["cache", "db", "web"]);
        kudonet.wait_until("cache is rebuilt", || {
            instance_built("cache", &veth, "10.0.0.5/24")
        });
        std::fs::remove_file(state.file("cache.yaml")).unwrap();
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("cache's namespace and veth are gone", || {
            namespaces() == ["kudo-db", "kudo-web"] && link(None, &veth).is_none()
        });
        assert!(instance_built("web", WEB_VETH, "10.0.0.2/24"));
        assert!(instance_built("db", DB_VETH, "10.0.0.3/24"));
        assert!(plan_is_empty(&state));
        web_answers();

        kudonet.stop();
        network_left_in_place(&["db", "web"]);
        web_answers();
    });
}

/// Lays out `files` as a ConfigMap volume version: a timestamped hidden folder.
fn configmap_version(state: &StateDir, version: &str, files: &[(&str, &str)]) -> String {
    let folder = format!("..2026_11_28_10_00_0{version}.00000000{version}");
    let path = state.file(&folder);
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (file, content) in files {
        write_file(&path.join(file), content);
    }
    folder
}

/// Points `..data` at `folder` atomically, as the kubelet does.
fn configmap_swap(state: &StateDir, folder: &str) {
    std::os::unix::fs::symlink(folder, state.file("..data_tmp")).unwrap();
    std::fs::rename(state.file("..data_tmp"), state.file("..data")).unwrap();
}

#[test]
fn configmap_swap_is_picked_up() {
    common::sandboxed("configmap_swap_is_picked_up", || {
        let state = StateDir::empty();
        let first = configmap_version(&state, "1", &[("node.yaml", NODE)]);
        configmap_swap(&state, &first);
        std::os::unix::fs::symlink("..data/node.yaml", state.file("node.yaml")).unwrap();

        let kudonet = Controller::start(&state, &["--resync", "60"]);
        kudonet.wait_ready(&["db", "web"]);
        assert_eq!(namespaces(), ["kudo-db", "kudo-web"]);

        // A new version with one more instance.
        let with_cache = format!("{NODE}---\n{}", cache("10.0.0.4/24"));
        let second = configmap_version(&state, "2", &[("node.yaml", &with_cache)]);
        configmap_swap(&state, &second);
        kudonet.wait_ready(&["cache", "db", "web"]);
        kudonet.wait_until("cache is built", || {
            namespaces() == ["kudo-cache", "kudo-db", "kudo-web"]
        });
        // The kubelet then removes the old version: nothing changes.
        std::fs::remove_dir_all(state.file(&first)).unwrap();

        // And one without it again.
        let third = configmap_version(&state, "3", &[("node.yaml", NODE)]);
        configmap_swap(&state, &third);
        std::fs::remove_dir_all(state.file(&second)).unwrap();
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("cache is gone", || namespaces() == ["kudo-db", "kudo-web"]);
        assert!(plan_is_empty(&state));
        web_answers();

        kudonet.stop();
        network_left_in_place(&["db", "web"]);
    });
}

#[test]
fn kernel_drift_is_repaired_from_events() {
    common::sandboxed("kernel_drift_is_repaired_from_events", || {
        let state = StateDir::new(NODE);
        // No resync within the test: only kernel events explain a repair.
        let kudonet = Controller::start(&state, &["--resync", "60"]);
        kudonet.wait_ready(&["db", "web"]);
        web_answers();

        // A rebuilt eth0 keeps its MAC address, so neighbours' ARP caches stay right.
        let web_mac = kudonet::names::instance_mac("web")
            .map(|byte| format!("{byte:02x}"))
            .join(":");
        let repaired = |what: &str| {
            kudonet.wait_until(&format!("{what} is repaired"), || {
                link(None, "kudo0").is_some_and(|bridge| is_up(&bridge))
                    && addresses(None, "kudo0") == ["10.0.0.1/24"]
                    && instance_built("web", WEB_VETH, "10.0.0.2/24")
                    && instance_built("db", DB_VETH, "10.0.0.3/24")
                    && plan_is_empty(&state)
            });
            let eth0 = common::sh("ip -n kudo-web -br link show eth0");
            assert!(
                eth0.contains(&web_mac),
                "web's eth0 keeps {web_mac}: {eth0}"
            );
            web_answers_again(&kudonet);
        };

        common::run_ok("ip", &["link", "del", WEB_VETH]);
        repaired("web's deleted host veth");

        common::run_ok("ip", &["link", "set", "kudo0", "down"]);
        repaired("the bridge set down");

        common::run_ok(
            "ip",
            &[
                "-n",
                "kudo-web",
                "addr",
                "del",
                "10.0.0.2/24",
                "dev",
                "eth0",
            ],
        );
        repaired("web's deleted address");

        common::run_ok("ip", &["netns", "delete", "kudo-web"]);
        repaired("web's deleted namespace");
        assert_eq!(namespaces(), ["kudo-db", "kudo-web"]);
        kudonet.wait_ready(&["db", "web"]);

        let log = kudonet.stop();
        assert!(
            log.contains("repaired changes made behind kudonet's back"),
            "{log}"
        );
        network_left_in_place(&["db", "web"]);
    });
}

/// Passes started by kernel events read only what the events named: every kind of change
/// must still be seen and repaired, with no resync to fall back on.
#[test]
fn event_driven_passes_see_every_kind_of_drift() {
    common::sandboxed("event_driven_passes_see_every_kind_of_drift", || {
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(
            &state,
            &["--resync", "60", "--metrics-addr", "127.0.0.1:9101"],
        );
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        let rules = firewall();
        let repairs = || kudonet.metric("kudonet_drift_repairs_total").unwrap_or(0.0);
        let drifts: &[(&str, &str)] = &[
            (
                "a host veth renamed",
                "ip link set dev kv0e11948721ef1 down; ip link set dev kv0e11948721ef1 name stolen",
            ),
            (
                "a host veth off the bridge",
                "ip link set dev kv14e07b53ba1e3 nomaster",
            ),
            (
                "hairpin turned off",
                "bridge link set dev kv14e07b53ba1e3 hairpin off",
            ),
            (
                "the bridge's address deleted",
                "ip addr del 10.0.0.1/24 dev kudo0",
            ),
            (
                "a default route deleted",
                "ip -n kudo-web route del default",
            ),
            (
                "eth0 deleted inside the namespace",
                "ip -n kudo-db link del eth0",
            ),
            ("a chain flushed", "iptables -w -t nat -F KUDO-PORTS"),
            (
                "a jump rule deleted",
                "iptables -w -D FORWARD -m comment --comment kudonet -j KUDO-FORWARD",
            ),
            (
                "IP forwarding turned off and the bridge set down",
                "sysctl -qw net.ipv4.ip_forward=0; ip link set dev kudo0 down",
            ),
        ];
        for (what, command) in drifts {
            let before = repairs();
            common::sh(command);
            kudonet.wait_until(&format!("{what} is repaired"), || {
                repairs() > before
                    && plan_is_empty(&state)
                    && instance_built("web", WEB_VETH, "10.0.0.2/24")
                    && instance_built("db", DB_VETH, "10.0.0.3/24")
                    && firewall() == rules
            });
            web_answers_again(&kudonet);
        }
        assert!(
            link(None, "stolen").is_none(),
            "kudonet's renamed veth is gone"
        );
        assert_eq!(namespaces(), ["kudo-db", "kudo-web"]);
        kudonet.stop();
        network_left_in_place(&["db", "web"]);
    });
}

#[test]
fn iptables_drift_is_repaired() {
    common::sandboxed("iptables_drift_is_repaired", || {
        setup_outside();
        // A foreign DROP policy: without kudonet's FORWARD jump, instances cannot get out.
        common::run_ok("iptables", &["-w", "-P", "FORWARD", "DROP"]);
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(
            &state,
            &["--resync", "1", "--metrics-addr", "127.0.0.1:9101"],
        );
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        let rules = firewall();
        assert!(rules.contains("-A KUDO-PORTS "), "{rules}");
        let _outside = probe::serve(&netns("outside"), Tcp, addr("0.0.0.0:9000")).unwrap();
        assert_eq!(
            seen(&netns("kudo-web"), "203.0.113.254:9000"),
            "203.0.113.1"
        );
        web_answers();

        // Repaired from the nf_tables event at once, or at the latest by the resync: the
        // repair counter says it happened, whichever came first.
        let repairs = || kudonet.metric("kudonet_drift_repairs_total").unwrap_or(0.0);
        let before = repairs();
        common::run_ok("iptables", &["-w", "-t", "nat", "-F", "KUDO-PORTS"]);
        kudonet.wait_until("KUDO-PORTS is refilled", || {
            repairs() > before && firewall() == rules
        });
        web_answers();

        let before = repairs();
        common::run_ok(
            "iptables",
            &[
                "-w",
                "-D",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "kudonet",
                "-j",
                "KUDO-FORWARD",
            ],
        );
        kudonet.wait_until("the FORWARD jump is back", || {
            repairs() > before && firewall() == rules
        });
        assert_eq!(
            seen(&netns("kudo-web"), "203.0.113.254:9000"),
            "203.0.113.1"
        );

        kudonet.stop();
        network_left_in_place(&["db", "web"]);
        assert_eq!(firewall(), rules);
    });
}

#[test]
fn invalid_desired_state_changes_nothing() {
    common::sandboxed("invalid_desired_state_changes_nothing", || {
        // The Node and the instances in separate files, so that the Node can go alone.
        let (node, instances) = NODE.split_at(NODE.find("---\n").unwrap() + 4);
        let state = StateDir::new(node);
        state.write("instances.yaml", instances);
        let kudonet = Controller::start(&state, &["--resync", "60"]);
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        let before = kernel_state();

        let invalid_with = |errors: &[String]| {
            kudonet.wait_until(&format!("the status shows errors {errors:?}"), || {
                kudonet.status().is_some_and(|status| {
                    status["valid"] == false && status["errors"] == serde_json::json!(errors)
                })
            });
            let status = kudonet.status().unwrap();
            assert_eq!(status["node"], "node-a");
            // The last valid desired state, which stays in force, and says so.
            let in_force = |name, veth, address| {
                let mut entry = instance(name, veth, address);
                entry["message"] =
                    "desired state invalid: the last valid state stays in force".into();
                entry
            };
            assert_eq!(
                status["instances"],
                serde_json::json!([
                    in_force("db", DB_VETH, "10.0.0.3/24"),
                    in_force("web", WEB_VETH, "10.0.0.2/24"),
                ])
            );
            assert_eq!(kernel_state(), before, "an invalid DIR changes nothing");
        };

        // A typo in db's document, in the same write that drops web: db and web stay.
        state.replace(
            "instances.yaml",
            "kind: Instance\nname: db\nadress: 10.0.0.3/24\n",
        );
        let file = state.file("instances.yaml").display().to_string();
        invalid_with(&[format!(
            "{file}:3:1: unknown field `adress` in an Instance, expected one of apiVersion, \
             kind, name, node, address, ports, id, netns, interface (did you mean `address`?)"
        )]);
        // Fixed: the change is applied (web goes).
        state.replace(
            "instances.yaml",
            "kind: Instance\nname: db\naddress: 10.0.0.3/24\n",
        );
        kudonet.wait_ready(&["db"]);
        kudonet.wait_until("web is gone", || namespaces() == ["kudo-db"]);
        state.replace("instances.yaml", instances);
        kudonet.wait_ready(&["db", "web"]);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        let before = kernel_state();
        let invalid_with = |errors: &[String]| {
            kudonet.wait_until(&format!("the status shows errors {errors:?}"), || {
                kudonet.status().is_some_and(|status| {
                    status["valid"] == false && status["errors"] == serde_json::json!(errors)
                })
            });
            let status = kudonet.status().unwrap();
            assert_eq!(status["node"], "node-a");
            assert_eq!(
                status["instances"],
                serde_json::json!([
                    in_force("db", DB_VETH, "10.0.0.3/24"),
                    in_force("web", WEB_VETH, "10.0.0.2/24"),
                ])
            );
            assert_eq!(kernel_state(), before, "an invalid DIR changes nothing");
        };

        // No Node.
        std::fs::remove_file(state.file("node.yaml")).unwrap();
        invalid_with(&[format!(
            "{}: no Node: at least one document of kind Node is required",
            state.path()
        )]);
        state.replace("node.yaml", node);
        kudonet.wait_ready(&["db", "web"]);

        // No DIR at all; then DIR again.
        std::fs::remove_dir_all(state.dir()).unwrap();
        invalid_with(&[format!(
            "{}: cannot read desired-state directory: No such file or directory (os error 2)",
            state.path()
        )]);
        let staging = state.beside("staging");
        std::fs::create_dir(&staging).unwrap();
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
        write_file(&staging.join("node.yaml"), node);
        write_file(
            &staging.join("instances.yaml"),
            &format!("{instances}---\n{}", cache("10.0.0.4/24")),
        );
        std::fs::rename(&staging, state.dir()).unwrap();
        kudonet.wait_ready(&["cache", "db", "web"]);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        web_answers();

        kudonet.stop();
        network_left_in_place(&["cache", "db", "web"]);
    });
}

#[test]
fn sighup_reloads() {
    common::sandboxed("sighup_reloads", || {
        // node.yaml links to a file outside DIR: editing it raises no event below DIR.
        let state = StateDir::empty();
        std::fs::create_dir(state.outside()).unwrap();
        std::fs::set_permissions(state.outside(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = state.outside().join("node.yaml");
        write_file(&target, NODE);
        std::os::unix::fs::symlink(&target, state.file("node.yaml")).unwrap();

        let kudonet = Controller::start(&state, &["--resync", "60"]);
        kudonet.wait_ready(&["db", "web"]);

        write_file(&target, &format!("{NODE}---\n{}", cache("10.0.0.4/24")));
        // The premise: nothing reloads DIR by itself within well over the debounce.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            namespaces(),
            ["kudo-db", "kudo-web"],
            "a change outside DIR was noticed without SIGHUP: this test needs another way \
             to hide a change from the watcher"
        );

        kudonet.signal(Signal::SIGHUP);
        kudonet.wait_ready(&["cache", "db", "web"]);
        kudonet.wait_until("cache is built", || {
            namespaces() == ["kudo-cache", "kudo-db", "kudo-web"]
        });

        // Another SIGHUP with nothing changed: still up, still converged.
        kudonet.signal(Signal::SIGHUP);
        kudonet.signal(Signal::SIGHUP);
        kudonet.wait_until("the node is converged", || plan_is_empty(&state));
        kudonet.wait_ready(&["cache", "db", "web"]);
        web_answers();

        kudonet.stop();
        network_left_in_place(&["cache", "db", "web"]);
    });
}

#[test]
fn a_second_controller_for_the_node_refuses_to_run() {
    common::sandboxed("a_second_controller_for_the_node_refuses_to_run", || {
        let state = StateDir::new(NODE);
        let first = Controller::start(&state, &["--node", "node-a", "--resync", "60"]);
        first.wait_ready(&["db", "web"]);
        let before = kernel_state();
        // Locks are keyed on the network namespace the controllers would share.
        let network =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/ns/net").unwrap());
        let message = format!(
            "kudonet: another kudonet controller is running for node node-a (pid {}, lock \
             /run/kudonet/net-{network}.controller.lock); stop it first\n",
            first.pid()
        );
        // Named with --node, or found in DIR.
        for args in [&["--node", "node-a"][..], &[]] {
            let second = Command::new(KUDONET)
                .args(["run", state.path(), "--status-file", "/run/second.json"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // A Controller only for its bounded wait and its kill on failure; its output
            // is piped, not logged.
            let second = Controller::adopt(second);
            let exit = second.wait_exit();
            let mut child = second.child.borrow_mut();
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            let mut stdout = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            assert_eq!(
                (exit.code(), stdout.as_str(), stderr.as_str()),
                (Some(1), "", message.as_str()),
                "second kudonet run {args:?}"
            );
        }
        assert!(!Path::new("/run/second.json").exists());
        assert_eq!(kernel_state(), before);
        first.wait_ready(&["db", "web"]);
        first.stop();

        // Once the first has stopped, another may take over.
        let next = Controller::start(&state, &["--node", "node-a", "--resync", "60"]);
        next.wait_ready(&["db", "web"]);
        next.stop();
        network_left_in_place(&["db", "web"]);
    });
}

#[test]
fn a_failing_instance_does_not_hold_back_the_others() {
    common::sandboxed("a_failing_instance_does_not_hold_back_the_others", || {
        // A directory squats the mount point of bad's namespace.
        std::fs::create_dir_all("/run/netns/kudo-bad").unwrap();
        let state = StateDir::new(&format!(
            "{NODE}---\nkind: Instance\nname: bad\naddress: 10.0.0.5/24\n"
        ));
        let kudonet = Controller::start(
            &state,
            &["--resync", "60", "--metrics-addr", "127.0.0.1:9101"],
        );
        let failed = "+ namespace kudo-bad: create namespace: /run/netns/kudo-bad exists and is not a namespace: remove it";
        kudonet.wait_until("bad is Failed and the others Ready", || {
            kudonet.status().is_some_and(|status| {
                phases(&status)
                    == [("bad", "Failed"), ("db", "Ready"), ("web", "Ready")]
                        .map(|(name, phase)| (name.to_string(), phase.to_string()))
            })
        });
        assert_eq!(kudonet.instance("bad").unwrap()["message"], failed);
        assert!(instance_built("web", WEB_VETH, "10.0.0.2/24"));
        assert!(instance_built("db", DB_VETH, "10.0.0.3/24"));
        web_answers();
        // It is retried, and stays Failed while the obstacle is there.
        kudonet.wait_until("bad is retried", || {
            kudonet.log().matches(failed).count() >= 2
        });
        assert_eq!(kudonet.instance("bad").unwrap()["phase"], "Failed");
        assert_eq!(
            kudonet.metric("kudonet_instances{phase=\"Failed\"}"),
            Some(1.0)
        );
        assert_eq!(
            kudonet.metric("kudonet_instances{phase=\"Ready\"}"),
            Some(2.0)
        );
        assert_eq!(kudonet.get("/healthz").unwrap().0, 200);
        // Ready: the node itself is in place; one broken instance shows as Failed instead
        // of holding back a rolling update of every node.
        assert_eq!(kudonet.get("/readyz").unwrap().0, 200);

        std::fs::remove_dir("/run/netns/kudo-bad").unwrap();
        // The backoff doubles from 1 s: the retry may take a while.
        kudonet.wait_for("bad converges on a retry", Duration::from_secs(40), || {
            kudonet.status().is_some_and(|status| {
                phases(&status)
                    == [("bad", "Ready"), ("db", "Ready"), ("web", "Ready")]
                        .map(|(name, phase)| (name.to_string(), phase.to_string()))
            })
        });
        assert_eq!(kudonet.instance("bad").unwrap()["message"], "");
        kudonet.wait_until("/readyz answers 200", || {
            kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
        assert_eq!(
            kudonet.metric("kudonet_instances{phase=\"Failed\"}"),
            Some(0.0)
        );
        let veth = kudonet.instance("bad").unwrap()["hostInterface"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(instance_built("bad", &veth, "10.0.0.5/24"));
        assert!(plan_is_empty(&state));

        let log = kudonet.stop();
        assert!(log.contains("recovered"), "{log}");
        network_left_in_place(&["bad", "db", "web"]);
    });
}

#[test]
fn metrics_health_and_readiness() {
    common::sandboxed("metrics_health_and_readiness", || {
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(
            &state,
            &["--resync", "60", "--metrics-addr", "127.0.0.1:9101"],
        );
        kudonet.wait_until("/readyz answers 200", || {
            kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
        kudonet.wait_ready(&["db", "web"]);
        assert_eq!(kudonet.get("/healthz"), Some((200, "ok\n".to_string())));
        assert_eq!(kudonet.get("/readyz"), Some((200, "ok\n".to_string())));
        assert_eq!(kudonet.get("/nothing").unwrap().0, 404);

        let (code, text) = kudonet.get("/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            metric(&text, "kudonet_reconciles_total{result=\"converged\"}")
                .is_some_and(|count| count >= 1.0),
            "{text}"
        );
        for kind in [
            "create_bridge",
            "create_namespace",
            "create_veth",
            "sync_table",
        ] {
            assert!(
                metric(&text, &format!("kudonet_actions_total{{kind=\"{kind}\"}}"))
                    .is_some_and(|count| count >= 1.0),
                "{kind}: {text}"
            );
        }
        assert_eq!(
            metric(&text, "kudonet_actions_total{kind=\"create_veth\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "kudonet_drift_repairs_total"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "kudonet_instances{phase=\"Ready\"}"),
            Some(2.0)
        );
        assert_eq!(
            metric(&text, "kudonet_instances{phase=\"Failed\"}"),
            Some(0.0)
        );
        assert_eq!(metric(&text, "kudonet_desired_state_valid"), Some(1.0));
        assert!(
            text.contains("kudonet_reconcile_duration_seconds"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        // A repair counts.
        common::run_ok("ip", &["link", "set", "kudo0", "down"]);
        kudonet.wait_until("the repair is counted", || {
            kudonet
                .metric("kudonet_drift_repairs_total")
                .is_some_and(|count| count >= 1.0)
        });
        kudonet.wait_until("the bridge is up", || {
            link(None, "kudo0").is_some_and(|bridge| is_up(&bridge))
        });
        assert!(
            kudonet
                .metric("kudonet_actions_total{kind=\"set_up\"}")
                .is_some_and(|count| count >= 4.0)
        );

        // Removing an instance is no repair: its veth goes with its namespace, and the
        // kernel's events about it are kudonet's own doing.
        let repairs = kudonet.metric("kudonet_drift_repairs_total").unwrap();
        state.replace(
            "node.yaml",
            NODE.split("---\nkind: Instance\nname: db").next().unwrap(),
        );
        kudonet.wait_until("db is gone", || {
            namespaces() == ["kudo-web"] && link(None, DB_VETH).is_none()
        });
        kudonet.wait_ready(&["web"]);
        kudonet.wait_until("the removal is accounted", || {
            kudonet.metric("kudonet_actions_total{kind=\"delete_namespace\"}") == Some(1.0)
        });
        let passes = || {
            kudonet
                .metric("kudonet_reconciles_total{result=\"converged\"}")
                .unwrap_or(0.0)
        };
        let before = passes();
        kudonet.signal(Signal::SIGHUP);
        kudonet.wait_until("a pass after the removal", || passes() > before);
        assert_eq!(kudonet.metric("kudonet_drift_repairs_total"), Some(repairs));
        assert_eq!(
            kudonet.metric("kudonet_actions_total{kind=\"delete_namespace\"}"),
            Some(1.0)
        );
        assert_eq!(
            kudonet.metric("kudonet_actions_total{kind=\"delete_link\"}"),
            None
        );
        // The kernel destroyed it: kudonet let go of its sockets inside the namespace and
        // did not have to delete the veth itself.
        assert!(!kudonet.log().contains("still in use"), "{}", kudonet.log());

        // An invalid DIR shows.
        state.write(
            "broken.yaml",
            "kind: Instance\nname: cache\nadress: 10.0.0.4\n",
        );
        kudonet.wait_until("the invalid DIR shows", || {
            kudonet.metric("kudonet_desired_state_valid") == Some(0.0)
        });
        assert_eq!(kudonet.get("/healthz").unwrap().0, 200);
        // Ready again once the pass that read it is over: the last valid state stays in
        // force, converged (the status document and the metric say DIR is invalid).
        kudonet.wait_until("/readyz answers 200 with DIR invalid", || {
            kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            kudonet
                .metric("kudonet_reconciles_total{result=\"invalid\"}")
                .is_none_or(|count| count == 0.0),
            "passes keep converging what is in force"
        );
        std::fs::remove_file(state.file("broken.yaml")).unwrap();
        kudonet.wait_until("the valid DIR shows", || {
            kudonet.metric("kudonet_desired_state_valid") == Some(1.0)
        });

        kudonet.stop();
        network_left_in_place(&["web"]);
    });
}

/// `count` instances `big-0`… from 10.0.0.10 on, as one file.
fn big_change(count: usize) -> String {
    (0..count)
        .map(|at| {
            format!(
                "---\nkind: Instance\nname: big-{at}\naddress: 10.0.0.{}/24\n",
                10 + at
            )
        })
        .collect()
}

#[test]
fn a_file_change_during_a_long_pass_is_applied_right_after() {
    common::sandboxed(
        "a_file_change_during_a_long_pass_is_applied_right_after",
        || {
            const BIG: usize = 200;
            let state = StateDir::new(NODE);
            let kudonet = Controller::start(
                &state,
                &["--resync", "600", "--metrics-addr", "127.0.0.1:9101"],
            );
            kudonet.wait_ready(&["db", "web"]);
            kudonet.wait_until("/readyz answers 200", || {
                kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
            });
            let started = Instant::now();
            state.write("big.yaml", &big_change(BIG));
            // One more instance, written while the pass applying the big change runs (its
            // own kernel events flooding in meanwhile).
            kudonet.wait_for("the big change is being applied", LIMIT, || {
                namespaces()
                    .iter()
                    .any(|name| name.starts_with("kudo-big-"))
            });
            state.replace("cache.yaml", &cache("10.0.0.250/24"));
            let built = namespaces().len();
            assert!(
                built < BIG + 2,
                "the pass was still running when cache was written ({built} namespaces)"
            );
            // Until cache is in place, neither /readyz nor the status file may say the node
            // converged: the status file keeps the document from before the big change or
            // shows both changes; /readyz answers 503.
            kudonet.wait_for("cache is Ready", Duration::from_secs(60), || {
                let ready = kudonet.get("/readyz").is_some_and(|(code, _)| code == 200);
                let cache_built = namespaces().contains(&"kudo-cache".to_string());
                assert!(
                    !ready || cache_built,
                    "/readyz said ready before cache was built\nlog:\n{}",
                    kudonet.log()
                );
                let status = kudonet.status().unwrap();
                let names: Vec<String> =
                    phases(&status).into_iter().map(|(name, _)| name).collect();
                let has_big = names.iter().any(|name| name.starts_with("big-"));
                let has_cache = names.contains(&"cache".to_string());
                assert!(
                    !has_big || has_cache,
                    "the status file shows the big change without cache: {status}"
                );
                has_cache
                    && status["valid"] == true
                    && phases(&status).iter().all(|(_, phase)| phase == "Ready")
            });
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "long before the resync"
            );
            assert_eq!(phases(&kudonet.status().unwrap()).len(), BIG + 3);
            assert!(instance_built(
                "cache",
                kudonet.instance("cache").unwrap()["hostInterface"]
                    .as_str()
                    .unwrap(),
                "10.0.0.250/24"
            ));
            kudonet.wait_until("/readyz answers 200", || {
                kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
            });
            kudonet.stop();
        },
    );
}

#[test]
fn node_wide_failures_back_off_and_the_node_is_not_ready() {
    common::sandboxed(
        "node_wide_failures_back_off_and_the_node_is_not_ready",
        || {
            let state = StateDir::new(NODE);
            let kudonet = Controller::start(
                &state,
                &["--resync", "600", "--metrics-addr", "127.0.0.1:9101"],
            );
            kudonet.wait_ready(&["db", "web"]);
            kudonet.wait_until("/readyz answers 200", || {
                kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
            });
            // /proc/sys read-only (as in a container), and the bridge set down: every pass
            // fails for the node as a whole.
            common::sh(
                "mount --bind /proc/sys /proc/sys
                 mount -o remount,bind,ro /proc/sys
                 ip link set kudo0 down",
            );
            let failed = || {
                kudonet
                    .metric("kudonet_reconciles_total{result=\"failed\"}")
                    .unwrap_or(0.0)
            };
            // Kernel events on a link of someone else's keep waking the controller.
            common::run_ok(
                "ip",
                &[
                    "link", "add", "noise0", "type", "veth", "peer", "name", "noise1",
                ],
            );
            let noise = |seconds: u64| {
                let until = Instant::now() + Duration::from_secs(seconds);
                let mut up = false;
                while Instant::now() < until {
                    up = !up;
                    common::run_ok(
                        "ip",
                        &["link", "set", "noise0", if up { "up" } else { "down" }],
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            noise(1);
            kudonet.wait_until("a pass failed", || failed() >= 1.0);
            let first = failed();
            assert_eq!(kudonet.get("/readyz").unwrap().0, 503);
            assert_eq!(kudonet.get("/healthz").unwrap().0, 200);
            noise(8);
            // Backoff from 1 s, doubling: attempts after 1, 3 and 7 s (one more at most,
            // for timing); without it, every event made a pass.
            let attempts = failed() - first;
            assert!(
                (2.0..=4.0).contains(&attempts),
                "{attempts} attempts in 8 s\nlog:\n{}",
                kudonet.log()
            );
            assert_eq!(kudonet.get("/readyz").unwrap().0, 503);
            // Nor does the status file call any instance Ready.
            let message = "the node as a whole failed: cannot change sysctls: /proc/sys/net/ipv4/ip_forward: Read-only file system (os error 30) (kudonet needs a writable /proc/sys/net)";
            for name in ["db", "web"] {
                let instance = kudonet.instance(name).unwrap();
                assert_eq!(
                    (instance["phase"].as_str(), instance["message"].as_str()),
                    (Some("Failed"), Some(message)),
                    "{instance}"
                );
            }
            let log = kudonet.log();
            assert!(
                log.contains("cannot converge the node: cannot change sysctls: /proc/sys/net/ipv4/ip_forward: Read-only file system (os error 30) (kudonet needs a writable /proc/sys/net)"),
                "{log}"
            );
            // Writable again: the next retry converges, and the node is ready.
            common::run_ok("umount", &["/proc/sys"]);
            kudonet.wait_for("/readyz answers 200", Duration::from_secs(40), || {
                kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
            });
            assert!(link(None, "kudo0").is_some_and(|bridge| is_up(&bridge)));
            assert!(kudonet.log().contains("recovered"));
            kudonet.wait_ready(&["db", "web"]);
            kudonet.stop();
            network_left_in_place(&["db", "web"]);
        },
    );
}

#[test]
fn probes_answer_at_once_whatever_else_is_connected() {
    common::sandboxed("probes_answer_at_once_whatever_else_is_connected", || {
        let state = StateDir::new(NODE);
        let kudonet = Controller::start(
            &state,
            &["--resync", "60", "--metrics-addr", "127.0.0.1:9101"],
        );
        kudonet.wait_until("/readyz answers 200", || {
            kudonet.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
        let descriptors = || {
            let pid = kudonet.child.borrow().id();
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        };
        let before = descriptors();
        // 300 connections: half send nothing, half a request one byte at a time.
        let mut idle = Vec::new();
        let mut slow = Vec::new();
        for at in 0..300 {
            let stream = TcpStream::connect("127.0.0.1:9101").unwrap();
            if at % 2 == 0 {
                idle.push(stream);
            } else {
                slow.push(stream);
            }
        }
        let request = b"GET /metrics HTTP/1.1\r\nHost: node\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
        for byte in request.iter().take(40) {
            for stream in &mut slow {
                // Closed by the controller (over the limit, say): nothing to do.
                let _ = stream.write_all(&[*byte]);
            }
            let asked = Instant::now();
            assert_eq!(kudonet.get("/healthz"), Some((200, "ok\n".to_string())));
            let took = asked.elapsed();
            assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
            assert!(
                descriptors() <= before + 128 + 1,
                "{} descriptors open",
                descriptors()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(kudonet.get("/readyz").unwrap().0, 200);
        // None of them ever sends a whole request head: all are closed within seconds.
        kudonet.wait_until("the slow connections are closed", || {
            descriptors() <= before
        });
        drop((idle, slow));
        kudonet.stop();
        network_left_in_place(&["db", "web"]);
    });
}

#[test]
fn node_conditions_and_a_subnet_the_uplink_uses_reach_status_and_metrics() {
    common::sandboxed(
        "node_conditions_and_a_subnet_the_uplink_uses_reach_status_and_metrics",
        || {
            setup_outside();
            common::sh("iptables-legacy -w -P FORWARD DROP");
            let overlapping = "kind: Node\nname: node-a\ncidr: 203.0.113.2/24\n";
            let state = StateDir::new(overlapping);
            let kudonet = Controller::start(
                &state,
                &["--resync", "60", "--metrics-addr", "127.0.0.1:9101"],
            );
            kudonet.wait_until("the status file reports the overlap", || {
                kudonet
                    .status()
                    .is_some_and(|status| status["valid"] == false)
            });
            let status = kudonet.status().unwrap();
            assert_eq!(
                status["errors"],
                serde_json::json!([format!(
                    "{}:3:7: subnet 203.0.113.0/24 of Node \"node-a\" overlaps 203.0.113.1/24 of \
                     its uplink eth0: the node would lose its own network; choose a subnet the \
                     uplink does not use",
                    state.file("node.yaml").display()
                )])
            );
            let kinds: Vec<&str> = status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|condition| condition["type"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, ["UplinkOverlap", "ForwardBlocked"], "{status}");
            assert_eq!(
                kudonet.metric("kudonet_node_conditions{condition=\"UplinkOverlap\"}"),
                Some(1.0)
            );
            assert_eq!(
                kudonet.metric("kudonet_node_conditions{condition=\"ForwardBlocked\"}"),
                Some(1.0)
            );
            assert_eq!(kudonet.metric("kudonet_desired_state_valid"), Some(0.0));
            // Nothing was built on the node.
            assert!(link(None, "kudo0").is_none());
            assert!(!firewall().contains("KUDO-"));

            state.replace("node.yaml", NODE);
            kudonet.wait_ready(&["db", "web"]);
            assert_eq!(kudonet.metric("kudonet_desired_state_valid"), Some(1.0));
            assert_eq!(
                kudonet.metric("kudonet_node_conditions{condition=\"UplinkOverlap\"}"),
                Some(0.0)
            );
            let status = kudonet.status().unwrap();
            assert_eq!(status["valid"], true);
            assert_eq!(status["errors"], serde_json::json!([]));
            kudonet.stop();
        },
    );
}

/// A pass that had to wait for the change lock converges DIR as its holder left it: a
/// library call or an `apply` changes DIR and the node under the lock, and the pass must not
/// undo that with what it read before (here: build again an instance just removed).
#[test]
fn a_pass_that_waited_for_the_lock_converges_dir_as_its_holder_left_it() {
    common::sandboxed(
        "a_pass_that_waited_for_the_lock_converges_dir_as_its_holder_left_it",
        || {
            let state = StateDir::new(NODE);
            let kudonet = Controller::start(
                &state,
                &["--resync", "3600", "--metrics-addr", "127.0.0.1:9101"],
            );
            kudonet.wait_ready(&["db", "web"]);
            let namespaces_created =
                || kudonet.metric("kudonet_actions_total{kind=\"create_namespace\"}");
            assert_eq!(namespaces_created(), Some(2.0));

            // The holder of the change lock (a library call, say)...
            let wait = kudonet::lock::Wait {
                until: None,
                stop: &|| false,
            };
            let lock_dir = std::path::Path::new(kudonet::lock::LOCK_DIR);
            let held = kudonet::lock::wait_lock(lock_dir, "node-a", wait, |_| {}).unwrap();
            // ...while drift starts a pass, with DIR read as it is now: it waits.
            common::run_ok("ip", &["link", "delete", WEB_VETH]);
            kudonet.wait_until("the pass waits for the change lock", || {
                kudonet.log().contains("waiting for the change lock")
            });
            // The holder removes db from DIR and from the node, then lets go.
            state.replace(
                "node.yaml",
                NODE.split("---")
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("---")
                    .as_str(),
            );
            common::run_ok("ip", &["netns", "delete", "kudo-db"]);
            drop(held);

            kudonet.wait_ready(&["web"]);
            assert!(
                common::link(None, WEB_VETH).is_some(),
                "web's veth repaired"
            );
            assert!(!common::namespaces().contains(&"kudo-db".to_string()));
            // db was never built again, not even for a moment.
            assert_eq!(namespaces_created(), Some(2.0), "{}", kudonet.log());
            kudonet.stop();
        },
    );
}
