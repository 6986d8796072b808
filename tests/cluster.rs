//! A simulated cluster on a real kernel, in a sandbox (see `common::sandboxed`): node
//! namespaces `node-a`, `node-b`, `node-c`, each running `kudonet apply` on the worked example
//! `examples/cluster` with its own netns directory (`/run/netns-a`, ...), and real packets
//! between them. kudonet runs through `nsenter --net` (not `ip netns exec`), so that the
//! namespaces it mounts stay visible to the test.
//!
//! Two underlays:
//! - a shared segment: one bridge joins every node's `eth0` (192.0.2.11-13/24) and an
//!   "outside" namespace (192.0.2.1), the nodes' default gateway;
//! - a router: "outside" is a router with one leg per node, each node in its own subnet
//!   (node-a 198.51.100.11, node-b 203.0.113.12, node-c 192.0.2.13; the router is .1 in
//!   each): only IP reachability between the nodes, as vxlan mode needs.
//!
//! The example's instances: web (node-a, 10.0.0.2, publishes 8080 -> 80), worker (node-a,
//! 10.0.0.3), api (node-b, 10.0.1.2, publishes <node-b>:8443 -> 443), db (node-c, 10.0.2.2),
//! dns (node-c, 10.0.2.53, publishes udp 5353 -> 53). Every instance also runs a TCP echo
//! server on port 7000, which answers with the source address it saw.

mod common;

use common::{KUDONET, addr, seen};

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::Path;

use kudonet::probe::{self, EchoServer, Place};
use kudonet::spec::Protocol::{self, Tcp, Udp};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

const ALL: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The files of the example that belong to each node.
fn files(node: &str) -> &'static [&'static str] {
    match node {
        "node-a" => &[
            "nodes/node-a.yaml",
            "instances/web.yaml",
            "instances/worker.yaml",
        ],
        "node-b" => &["nodes/node-b.yaml", "instances/api.yaml"],
        "node-c" => &[
            "nodes/node-c.yaml",
            "instances/db.yaml",
            "instances/dns.yaml",
        ],
        other => panic!("no node {other}"),
    }
}

/// One instance of each node, with its address: the ends of the cross-node checks.
fn representative(node: &str) -> (&'static str, &'static str) {
    match node {
        "node-a" => ("web", "10.0.0.2"),
        "node-b" => ("api", "10.0.1.2"),
        "node-c" => ("db", "10.0.2.2"),
        other => panic!("no node {other}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Underlay {
    /// One layer-2 segment: a bridge, "outside" at 192.0.2.1.
    Segment,
    /// A router ("outside") between three subnets.
    Router,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Routed,
    Vxlan,
}

/// The node's letter: `node-a` -> `a`.
fn letter(node: &str) -> &str {
    node.strip_prefix("node-").expect("node-X")
}

/// An instance of `node`, in the node's own netns directory.
fn instance(node: &str, name: &str) -> Place {
    Place::netns(format!("/run/netns-{}/kudo-{name}", letter(node)))
}

fn outside() -> Place {
    Place::netns("/run/netns/outside")
}

/// Runs a bash script in `node`'s network namespace; returns its stdout.
fn on(node: &str, script: &str) -> String {
    common::run_ok(
        "nsenter",
        &[
            &format!("--net=/run/netns/{node}"),
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
        ],
    )
}

/// kudonet's routes on `node`, one per line as `ip route` prints them.
fn routes(node: &str) -> Vec<String> {
    on(node, "ip route")
        .lines()
        .filter(|line| line.contains("proto 75"))
        .map(|line| line.trim().to_string())
        .collect()
}

/// The flood entries of `node`'s overlay device (empty without one).
fn floods(node: &str) -> Vec<String> {
    on(
        node,
        "bridge fdb show dev kudo-vxlan 2>/dev/null | grep '^00:00:00:00:00:00' | sort || true",
    )
    .lines()
    .map(|line| line.trim().to_string())
    .collect()
}

fn has_vxlan(node: &str) -> bool {
    !on(node, "ip -o link show kudo-vxlan 2>/dev/null || true").is_empty()
}

/// What a node looks like, apart from routes and flood entries: links (without their
/// operational state, which a bridge changes on its own), addresses and all rules.
fn state(node: &str) -> String {
    on(
        node,
        "ip -o link show | sed 's/ state [A-Z]*//; s/ qlen.*//'; ip -o addr show | awk '{print $2, $4}'; \
         iptables -w -t nat -S; iptables -w -t filter -S",
    )
}

/// A cluster directory (a copy of the example, adapted to the underlay) and its nodes.
struct Cluster {
    dir: tempfile::TempDir,
    underlay: Underlay,
}

impl Cluster {
    /// Builds the underlay for `nodes` and a directory describing exactly them.
    fn new(underlay: Underlay, nodes: &[&str]) -> Cluster {
        build_underlay(underlay, nodes);
        let cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            underlay,
        };
        cluster.install("cluster.yaml");
        for node in nodes {
            cluster.join(node);
        }
        cluster
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// `node`'s externalIp.
    fn ip(&self, node: &str) -> &'static str {
        external_ip(self.underlay, node)
    }

    /// `node`'s default gateway, which is "outside".
    fn gateway(&self, node: &str) -> String {
        gateway(self.underlay, node)
    }

    /// Copies a file of the example into the directory, with this underlay's addresses.
    fn install(&self, file: &str) {
        let mut text = std::fs::read_to_string(Path::new(EXAMPLE).join(file)).unwrap();
        if self.underlay == Underlay::Router {
            text = text
                .replace("192.0.2.11", "198.51.100.11")
                .replace("192.0.2.12", "203.0.113.12");
        }
        let target = self.dir.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, text).unwrap();
    }

    /// Adds `node` and its instances to the directory.
    fn join(&self, node: &str) {
        for file in files(node) {
            self.install(file);
        }
    }

    /// Removes `node` and its instances from the directory.
    fn leave(&self, node: &str) {
        for file in files(node) {
            std::fs::remove_file(self.dir.path().join(file)).unwrap();
        }
    }

    fn set_mode(&self, mode: Mode) {
        let path = self.dir.path().join("cluster.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let (from, to) = match mode {
            Mode::Routed => ("\nmode: vxlan\n", "\nmode: routed\n"),
            Mode::Vxlan => ("\nmode: routed\n", "\nmode: vxlan\n"),
        };
        assert!(text.contains(from) || text.contains(to), "{text}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }

    /// Runs kudonet `command` on `node`; returns exit code, stdout and stderr.
    fn kudonet(&self, node: &str, command: &[&str]) -> (i32, String, String) {
        let netns = format!("--net=/run/netns/{node}");
        let netns_dir = format!("/run/netns-{}", letter(node));
        let mut args = vec![netns.as_str(), KUDONET];
        args.extend(command);
        args.extend(["--netns-dir", &netns_dir]);
        let output = common::run("nsenter", &args);
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `kudonet apply` on `node`, which must converge it; returns its stdout.
    fn apply(&self, node: &str) -> String {
        let (code, stdout, stderr) = self.kudonet(node, &["apply", self.path(), "--node", node]);
        assert_eq!(code, 0, "apply on {node}:\n{stdout}{stderr}");
        stdout
    }

    fn plan(&self, node: &str) -> String {
        let (code, stdout, stderr) = self.kudonet(node, &["plan", self.path(), "--node", node]);
        assert_eq!(code, 0, "plan on {node}:\n{stdout}{stderr}");
        stdout
    }

    /// Applies on every node in `nodes`, then checks that each is converged: a second
    /// apply changes nothing.
    fn converge(&self, nodes: &[&str]) {
        for node in nodes {
            let first = self.apply(node);
            assert!(first.contains("Apply complete: "), "{node}:\n{first}");
        }
        for node in nodes {
            assert_eq!(self.apply(node), "No changes.\n", "second apply on {node}");
            assert_eq!(self.plan(node), "No changes.\n", "plan on {node}");
        }
    }

    /// Echo servers: TCP 7000 in every instance of `nodes`, the published services (web
    /// 80, api 443, dns udp 53) and TCP 9000 outside.
    fn serve(&self, nodes: &[&str]) -> Vec<EchoServer> {
        let mut servers = vec![probe::serve(&outside(), Tcp, addr("0.0.0.0:9000")).unwrap()];
        let services: [(&str, &str, Protocol, u16); 8] = [
            ("node-a", "web", Tcp, 7000),
            ("node-a", "web", Tcp, 80),
            ("node-a", "worker", Tcp, 7000),
            ("node-b", "api", Tcp, 7000),
            ("node-b", "api", Tcp, 443),
            ("node-c", "db", Tcp, 7000),
            ("node-c", "dns", Tcp, 7000),
            ("node-c", "dns", Udp, 53),
        ];
        for (node, name, protocol, port) in services {
            if nodes.contains(&node) {
                let place = instance(node, name);
                let listen = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port);
                servers.push(probe::serve(&place, protocol, listen).unwrap());
            }
        }
        servers
    }

    /// Instance <-> instance across every pair of `nodes`, sources preserved.
    fn check_instances(&self, nodes: &[&str]) {
        for from in nodes {
            for to in nodes {
                if from == to {
                    continue;
                }
                let (name, source) = representative(from);
                let (_, target) = representative(to);
                assert_eq!(
                    seen(&instance(from, name), Tcp, &format!("{target}:7000")),
                    source,
                    "{name} on {from} -> {target} on {to}"
                );
            }
        }
    }

    /// Instance -> outside, masqueraded behind the node's externalIp.
    fn check_outside(&self, nodes: &[&str]) {
        for node in nodes {
            let (name, _) = representative(node);
            let target = format!("{}:9000", self.gateway(node));
            assert_eq!(
                seen(&instance(node, name), Tcp, &target),
                self.ip(node),
                "{name} on {node} -> outside"
            );
        }
    }
}

/// `node`'s externalIp on `underlay`.
fn external_ip(underlay: Underlay, node: &str) -> &'static str {
    match (underlay, node) {
        (Underlay::Segment, "node-a") => "192.0.2.11",
        (Underlay::Segment, "node-b") => "192.0.2.12",
        (Underlay::Router, "node-a") => "198.51.100.11",
        (Underlay::Router, "node-b") => "203.0.113.12",
        (_, "node-c") => "192.0.2.13",
        (_, other) => panic!("no node {other}"),
    }
}

/// `node`'s default gateway on `underlay`: "outside", .1 of the node's /24.
fn gateway(underlay: Underlay, node: &str) -> String {
    let ip = external_ip(underlay, node);
    format!("{}.1", &ip[..ip.rfind('.').unwrap()])
}

/// Creates node namespaces `nodes` (eth0 up with their address, lo up, default route via
/// "outside") joined by `underlay`.
fn build_underlay(underlay: Underlay, nodes: &[&str]) {
    common::sh(
        "ip netns add outside
         ip -n outside link set lo up",
    );
    match underlay {
        Underlay::Segment => common::sh(
            "ip link add under type bridge && ip link set under up
             ip link add u-out type veth peer name eth0 netns outside
             ip link set u-out master under up
             ip -n outside addr add 192.0.2.1/24 dev eth0 && ip -n outside link set eth0 up",
        ),
        Underlay::Router => common::sh("ip netns exec outside sysctl -qw net.ipv4.ip_forward=1"),
    };
    for node in nodes {
        let ip = external_ip(underlay, node);
        let gateway = gateway(underlay, node);
        let l = letter(node);
        common::sh(&format!("ip netns add {node}"));
        match underlay {
            Underlay::Segment => common::sh(&format!(
                "ip link add u-{l} type veth peer name eth0 netns {node}
                 ip link set u-{l} master under up"
            )),
            Underlay::Router => common::sh(&format!(
                "ip link add r-{l} netns outside type veth peer name eth0 netns {node}
                 ip -n outside addr add {gateway}/24 dev r-{l}
                 ip -n outside link set r-{l} up"
            )),
        };
        common::sh(&format!(
            "ip -n {node} addr add {ip}/24 dev eth0
             ip -n {node} link set eth0 up && ip -n {node} link set lo up
             ip -n {node} route add default via {gateway}"
        ));
    }
}

/// The published ports of the example, from outside and from an instance on another node
/// (which leaves the cluster to reach a node address, so is masqueraded behind its node).
fn check_published(cluster: &Cluster) {
    let (a, b, c) = (
        cluster.ip("node-a"),
        cluster.ip("node-b"),
        cluster.ip("node-c"),
    );
    // Outside -> each node's published port; the instance sees the real client.
    assert_eq!(
        seen(&outside(), Tcp, &format!("{a}:8080")),
        cluster.gateway("node-a")
    );
    assert_eq!(
        seen(&outside(), Tcp, &format!("{b}:8443")),
        cluster.gateway("node-b")
    );
    assert_eq!(
        seen(&outside(), Udp, &format!("{c}:5353")),
        cluster.gateway("node-c")
    );
    // An instance on node-b -> node-a's published port, and node-c -> node-b's.
    assert_eq!(
        seen(&instance("node-b", "api"), Tcp, &format!("{a}:8080")),
        b
    );
    assert_eq!(
        seen(&instance("node-c", "db"), Tcp, &format!("{b}:8443")),
        c
    );
    // api publishes on node-b's externalIp only (hostIp).
    assert!(probe::ask(&outside(), Tcp, addr(&format!("{a}:8443"))).is_err());
}

#[test]
fn routed_cluster_of_three_nodes() {
    common::sandboxed("routed_cluster_of_three_nodes", || {
        let cluster = Cluster::new(Underlay::Segment, &ALL);
        cluster.converge(&ALL);

        assert_eq!(
            routes("node-a"),
            [
                "10.0.1.0/24 via 192.0.2.12 dev eth0 proto 75",
                "10.0.2.0/24 via 192.0.2.13 dev eth0 proto 75",
            ]
        );
        assert_eq!(
            routes("node-b"),
            [
                "10.0.0.0/24 via 192.0.2.11 dev eth0 proto 75",
                "10.0.2.0/24 via 192.0.2.13 dev eth0 proto 75",
            ]
        );
        assert_eq!(
            routes("node-c"),
            [
                "10.0.0.0/24 via 192.0.2.11 dev eth0 proto 75",
                "10.0.1.0/24 via 192.0.2.12 dev eth0 proto 75",
            ]
        );
        assert!(ALL.iter().all(|node| !has_vxlan(node)));

        let _servers = cluster.serve(&ALL);
        cluster.check_instances(&ALL);
        // A second instance of node-a, and UDP across nodes.
        assert_eq!(
            seen(&instance("node-a", "worker"), Tcp, "10.0.2.53:7000"),
            "10.0.0.3"
        );
        assert_eq!(
            seen(&instance("node-a", "worker"), Udp, "10.0.2.53:53"),
            "10.0.0.3"
        );
        cluster.check_outside(&ALL);
        check_published(&cluster);
    });
}

#[test]
fn vxlan_cluster_across_a_router() {
    common::sandboxed("vxlan_cluster_across_a_router", || {
        let cluster = Cluster::new(Underlay::Router, &ALL);
        cluster.set_mode(Mode::Vxlan);
        cluster.converge(&ALL);

        assert_eq!(
            routes("node-a"),
            [
                "10.0.1.0/24 via 10.0.1.1 dev kudo0 proto 75 onlink",
                "10.0.2.0/24 via 10.0.2.1 dev kudo0 proto 75 onlink",
            ]
        );
        assert_eq!(
            floods("node-a"),
            [
                "00:00:00:00:00:00 dst 192.0.2.13 self permanent",
                "00:00:00:00:00:00 dst 203.0.113.12 self permanent",
            ]
        );
        assert_eq!(
            floods("node-c"),
            [
                "00:00:00:00:00:00 dst 198.51.100.11 self permanent",
                "00:00:00:00:00:00 dst 203.0.113.12 self permanent",
            ]
        );
        let vxlan = on("node-a", "ip -d link show kudo-vxlan");
        for expected in [
            "mtu 1450 ",
            "master kudo0 ",
            "vxlan id 75 local 198.51.100.11 dev eth0 ",
            "dstport 4789 ",
        ] {
            assert!(vxlan.contains(expected), "{expected:?} in\n{vxlan}");
        }
        // The uplink keeps 1500; the bridge, its ports and the instances' eth0 get 1450.
        assert!(on("node-a", "ip -o link show eth0").contains(" mtu 1500 "));
        let mtus = on(
            "node-a",
            "ip -o link show kudo0; ip -o link show master kudo0; \
             nsenter --net=/run/netns-a/kudo-web ip -o link show eth0",
        );
        assert_eq!(mtus.lines().count(), 5, "{mtus}");
        assert!(
            mtus.lines().all(|line| line.contains(" mtu 1450 ")),
            "{mtus}"
        );

        let _servers = cluster.serve(&ALL);
        cluster.check_instances(&ALL);
        assert_eq!(
            seen(&instance("node-a", "worker"), Udp, "10.0.2.53:53"),
            "10.0.0.3"
        );
        cluster.check_outside(&ALL);
        check_published(&cluster);
    });
}

/// node-c leaves (its Node and instances removed from the directory, then torn down), and
/// comes back: a and b drop exactly what led to c, and take it back.
fn node_leaves_and_returns(mode: Mode) {
    let underlay = match mode {
        Mode::Routed => Underlay::Segment,
        Mode::Vxlan => Underlay::Router,
    };
    let cluster = Cluster::new(underlay, &ALL);
    cluster.set_mode(mode);
    cluster.converge(&ALL);
    let c = cluster.ip("node-c");
    let before: BTreeMap<&str, (String, Vec<String>, Vec<String>)> = ["node-a", "node-b"]
        .into_iter()
        .map(|node| (node, (state(node), routes(node), floods(node))))
        .collect();

    cluster.leave("node-c");
    for node in ["node-a", "node-b"] {
        let expected = match mode {
            Mode::Routed => {
                "- route 10.0.2.0/24\nPlan: 0 to add, 0 to change, 1 to destroy.\n".to_string()
            }
            Mode::Vxlan => format!(
                "- route 10.0.2.0/24\n- flood kudo-vxlan to {c}\nPlan: 0 to add, 0 to change, 2 to destroy.\n"
            ),
        };
        assert_eq!(cluster.plan(node), expected, "plan on {node}");
    }
    cluster.converge(&["node-a", "node-b"]);
    let (code, stdout, stderr) = cluster.kudonet("node-c", &["teardown"]);
    assert_eq!(code, 0, "teardown on node-c:\n{stdout}{stderr}");
    assert!(on("node-c", "ip -o link show kudo0 2>/dev/null || true").is_empty());

    for (node, (state_before, routes_before, floods_before)) in &before {
        assert_eq!(&state(node), state_before, "{node}: nothing else changes");
        let without_c = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|line| !line.contains("10.0.2.0/24") && !line.contains(c))
                .cloned()
                .collect()
        };
        assert_eq!(routes(node), without_c(routes_before), "{node}");
        assert_eq!(floods(node), without_c(floods_before), "{node}");
        assert_ne!(&routes(node), routes_before, "{node}: c's route was there");
    }
    {
        let _servers = cluster.serve(&["node-a", "node-b"]);
        cluster.check_instances(&["node-a", "node-b"]);
    }

    cluster.join("node-c");
    cluster.converge(&ALL);
    for (node, (state_before, routes_before, floods_before)) in &before {
        assert_eq!(&state(node), state_before, "{node}");
        assert_eq!(&routes(node), routes_before, "{node}");
        assert_eq!(&floods(node), floods_before, "{node}");
    }
    let _servers = cluster.serve(&ALL);
    cluster.check_instances(&ALL);
    cluster.check_outside(&["node-c"]);
}

#[test]
fn routed_node_leaves_and_returns() {
    common::sandboxed("routed_node_leaves_and_returns", || {
        node_leaves_and_returns(Mode::Routed)
    });
}

#[test]
fn vxlan_node_leaves_and_returns() {
    common::sandboxed("vxlan_node_leaves_and_returns", || {
        node_leaves_and_returns(Mode::Vxlan)
    });
}

#[test]
fn switching_mode_converges_both_ways() {
    common::sandboxed("switching_mode_converges_both_ways", || {
        let nodes = ["node-a", "node-b"];
        let cluster = Cluster::new(Underlay::Segment, &nodes);

        let check_routed = || {
            assert_eq!(
                routes("node-a"),
                ["10.0.1.0/24 via 192.0.2.12 dev eth0 proto 75"]
            );
            assert_eq!(
                routes("node-b"),
                ["10.0.0.0/24 via 192.0.2.11 dev eth0 proto 75"]
            );
            assert!(nodes.iter().all(|node| !has_vxlan(node)));
        };
        let check_packets = || {
            let _servers = cluster.serve(&nodes);
            cluster.check_instances(&nodes);
            cluster.check_outside(&nodes);
            assert_eq!(
                seen(&instance("node-b", "api"), Tcp, "192.0.2.11:8080"),
                "192.0.2.12"
            );
        };

        cluster.converge(&nodes);
        check_routed();
        check_packets();
        // The gateway's MAC address, which instances cache: kudo-vxlan joining and leaving
        // the bridge must not change it.
        let bridge_macs = || {
            nodes
                .iter()
                .map(|node| {
                    on(
                        node,
                        "ip -o link show kudo0 | grep -o 'link/ether [0-9a-f:]*'",
                    )
                })
                .collect::<Vec<_>>()
        };
        let macs = bridge_macs();

        cluster.set_mode(Mode::Vxlan);
        cluster.converge(&nodes);
        assert_eq!(bridge_macs(), macs);
        assert_eq!(
            routes("node-a"),
            ["10.0.1.0/24 via 10.0.1.1 dev kudo0 proto 75 onlink"]
        );
        assert_eq!(
            routes("node-b"),
            ["10.0.0.0/24 via 10.0.0.1 dev kudo0 proto 75 onlink"]
        );
        assert_eq!(
            floods("node-a"),
            ["00:00:00:00:00:00 dst 192.0.2.12 self permanent"]
        );
        assert!(on("node-a", "ip -d link show kudo-vxlan").contains("master kudo0 "));
        check_packets();

        cluster.set_mode(Mode::Routed);
        cluster.converge(&nodes);
        assert_eq!(bridge_macs(), macs);
        check_routed();
        check_packets();
    });
}
