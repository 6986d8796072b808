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
//! Either underlay may also be dual stack: each node's `eth0` then has an IPv6 address too
//! (segment: 2001:db8::11-13/64, "outside" 2001:db8::1; router: node-a 2001:db8:a::11,
//! node-b 2001:db8:b::12, node-c 2001:db8:c::13, the router ::1 in each), and the directory
//! becomes dual stack: Cluster cidr [10.0.0.0/16, fd00:10::/48], node-X's subnet
//! fd00:10:0:N::/64 beside 10.0.N.0/24, each instance fd00:10:0:N::H beside 10.0.N.H.
//!
//! The example's instances: web (node-a, 10.0.0.2, publishes 8080 -> 80), worker (node-a,
//! 10.0.0.3), api (node-b, 10.0.1.2, publishes <node-b>:8443 -> 443), db (node-c, 10.0.2.2),
//! dns (node-c, 10.0.2.53, publishes udp 5353 -> 53). Every instance also runs a TCP echo
//! server on port 7000, which answers with the source address it saw; in a dual-stack
//! cluster the representative instances and "outside" also answer over IPv6 (port 7006,
//! 9006).
//!
//! Every node runs kudonet with iptables, its default, except in the tests named
//! `..._with_nftables`, which run the same scenario with `--firewall nftables` on every node.

mod common;

use common::{Firewall, KUDONET, addr, seen};

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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

/// The IPv6 address of the representative instance of `node` (see `representative`).
fn representative6(node: &str) -> &'static str {
    match node {
        "node-a" => "fd00:10::2",
        "node-b" => "fd00:10:0:1::2",
        "node-c" => "fd00:10:0:2::2",
        other => panic!("no node {other}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Underlay {
    /// One layer-2 segment: a bridge, "outside" at 192.0.2.1.
    Segment,
    /// A router ("outside") between three subnets.
    Router,
    /// `Segment` with IPv6 too ("outside" at 2001:db8::1), and a dual-stack directory.
    DualSegment,
    /// `Router` with IPv6 too, and a dual-stack directory.
    DualRouter,
}

impl Underlay {
    fn routed_by(self) -> bool {
        matches!(self, Underlay::Router | Underlay::DualRouter)
    }

    fn dual_stack(self) -> bool {
        matches!(self, Underlay::DualSegment | Underlay::DualRouter)
    }
}

/// Which externalIps the Nodes of a dual-stack directory give.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Externals {
    /// IPv4 only (the example's).
    Ipv4,
    /// Both families: `externalIp: [192.0.2.11, "2001:db8::11"]`.
    Both,
    /// IPv6 only: `externalIp: "2001:db8::11"`.
    Ipv6,
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
    kudonet_routes(node, "ip route")
}

/// kudonet's IPv6 routes on `node`, one per line as `ip -6 route` prints them.
fn routes6(node: &str) -> Vec<String> {
    kudonet_routes(node, "ip -6 route")
}

fn kudonet_routes(node: &str, command: &str) -> Vec<String> {
    on(node, command)
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
    /// The externalIps the Nodes give (IPv4 only unless the underlay is dual stack).
    externals: Cell<Externals>,
    /// The firewall every node's kudonet is run with.
    firewall: Firewall,
}

impl Cluster {
    /// Builds the underlay for `nodes` and a directory describing exactly them; the nodes
    /// run kudonet with its default firewall, iptables.
    fn new(underlay: Underlay, nodes: &[&str]) -> Cluster {
        Cluster::with_firewall(underlay, Firewall::Iptables, nodes)
    }

    /// `new`, with every node's kudonet run with `--firewall FIREWALL`.
    fn with_firewall(underlay: Underlay, firewall: Firewall, nodes: &[&str]) -> Cluster {
        build_underlay(underlay, nodes);
        let externals = match underlay.dual_stack() {
            true => Externals::Both,
            false => Externals::Ipv4,
        };
        let cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            underlay,
            externals: Cell::new(externals),
            firewall,
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

    /// `node`'s IPv6 address on a dual-stack underlay.
    fn ip6(&self, node: &str) -> &'static str {
        external_ip6(self.underlay, node)
    }

    /// `node`'s default gateway, which is "outside".
    fn gateway(&self, node: &str) -> String {
        gateway(self.underlay, node)
    }

    /// `node`'s IPv6 default gateway, "outside" too.
    fn gateway6(&self, node: &str) -> String {
        gateway6(self.underlay, node)
    }

    /// Copies a file of the example into the directory, with this underlay's addresses
    /// (and families).
    fn install(&self, file: &str) {
        let mut text = std::fs::read_to_string(Path::new(EXAMPLE).join(file)).unwrap();
        if self.underlay.routed_by() {
            text = text
                .replace("192.0.2.11", "198.51.100.11")
                .replace("192.0.2.12", "203.0.113.12");
        }
        if self.underlay.dual_stack() {
            text = text
                .lines()
                .map(|line| self.dual_stack_line(line) + "\n")
                .collect();
        }
        let target = self.dir.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, text).unwrap();
    }

    /// A line of the example, dual stack: every subnet and address gets its IPv6 twin
    /// (10.0.N.H -> fd00:10:0:N::H), externalIps follow `externals`.
    fn dual_stack_line(&self, line: &str) -> String {
        let twin = |v4: &str| -> String {
            let (address, prefix) = v4.split_once('/').unwrap_or((v4, ""));
            let octets: Vec<u16> = address.split('.').map(|o| o.parse().unwrap()).collect();
            assert_eq!(octets[..2], [10, 0], "{line}");
            let v6 = Ipv6Addr::new(0xfd00, 0x10, 0, octets[2], 0, 0, 0, octets[3]);
            match prefix {
                "" => format!("\"{v6}\""),
                _ => format!("\"{v6}/64\""),
            }
        };
        if line == "cidr: 10.0.0.0/16" {
            return "cidr: [10.0.0.0/16, \"fd00:10::/48\"]".to_string();
        }
        for key in ["cidr: ", "address: "] {
            if let Some(v4) = line.strip_prefix(key) {
                return format!("{key}[{v4}, {}]", twin(v4));
            }
        }
        if let Some(v4) = line.strip_prefix("externalIp: ") {
            let node = ALL
                .into_iter()
                .find(|node| self.ip(node) == v4)
                .unwrap_or_else(|| panic!("{line}"));
            let v6 = self.ip6(node);
            return match self.externals.get() {
                Externals::Ipv4 => line.to_string(),
                Externals::Both => format!("externalIp: [{v4}, \"{v6}\"]"),
                Externals::Ipv6 => format!("externalIp: \"{v6}\""),
            };
        }
        line.to_string()
    }

    /// Rewrites the Node files of `nodes` with `externals`.
    fn set_externals(&self, externals: Externals, nodes: &[&str]) {
        self.externals.set(externals);
        for node in nodes {
            self.install(&format!("nodes/{node}.yaml"));
        }
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

    /// Runs kudonet `command` on `node`, with the cluster's firewall; returns exit code,
    /// stdout and stderr.
    fn kudonet(&self, node: &str, command: &[&str]) -> (i32, String, String) {
        let netns = format!("--net=/run/netns/{node}");
        let netns_dir = format!("/run/netns-{}", letter(node));
        let mut args = vec![netns.as_str(), KUDONET];
        args.extend(self.firewall.args(command));
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

    /// `converge` for a change that may leave some of `nodes` as they are: applies on each,
    /// then checks that a second apply and a plan change nothing.
    fn settle(&self, nodes: &[&str]) {
        for node in nodes {
            self.apply(node);
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

    /// IPv6 echo servers: TCP 7006 in the representative instance of each of `nodes`,
    /// TCP 9006 outside.
    fn serve6(&self, nodes: &[&str]) -> Vec<Echo6> {
        let mut servers = vec![Echo6::start("/run/netns/outside".to_string(), 9006)];
        for node in nodes {
            let (name, _) = representative(node);
            servers.push(Echo6::start(instance_path(node, name), 7006));
        }
        servers
    }

    /// Instance <-> instance over IPv6 across every pair of `nodes`, sources preserved.
    fn check_instances6(&self, nodes: &[&str]) {
        for from in nodes {
            for to in nodes {
                if from == to {
                    continue;
                }
                let (name, _) = representative(from);
                let target = SocketAddrV6::new(representative6(to).parse().unwrap(), 7006, 0, 0);
                assert_eq!(
                    seen6(&instance_path(from, name), target),
                    representative6(from),
                    "{name} on {from} -> {target} on {to}"
                );
            }
        }
    }

    /// Instance -> outside over IPv6, masqueraded behind the node's IPv6 address.
    fn check_outside6(&self, nodes: &[&str]) {
        for node in nodes {
            let (name, _) = representative(node);
            let target = SocketAddrV6::new(self.gateway6(node).parse().unwrap(), 9006, 0, 0);
            assert_eq!(
                seen6(&instance_path(node, name), target),
                self.ip6(node),
                "{name} on {node} -> outside over IPv6"
            );
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

/// `node`'s (IPv4) externalIp on `underlay`.
fn external_ip(underlay: Underlay, node: &str) -> &'static str {
    match (underlay.routed_by(), node) {
        (false, "node-a") => "192.0.2.11",
        (false, "node-b") => "192.0.2.12",
        (true, "node-a") => "198.51.100.11",
        (true, "node-b") => "203.0.113.12",
        (_, "node-c") => "192.0.2.13",
        (_, other) => panic!("no node {other}"),
    }
}

/// `node`'s IPv6 address on a dual-stack `underlay`.
fn external_ip6(underlay: Underlay, node: &str) -> &'static str {
    match (underlay, node) {
        (Underlay::DualSegment, "node-a") => "2001:db8::11",
        (Underlay::DualSegment, "node-b") => "2001:db8::12",
        (Underlay::DualSegment, "node-c") => "2001:db8::13",
        (Underlay::DualRouter, "node-a") => "2001:db8:a::11",
        (Underlay::DualRouter, "node-b") => "2001:db8:b::12",
        (Underlay::DualRouter, "node-c") => "2001:db8:c::13",
        (_, other) => panic!("no IPv6 address for {other} on {underlay:?}"),
    }
}

/// `node`'s IPv6 default gateway on a dual-stack `underlay`: "outside", ::1 of its /64.
fn gateway6(underlay: Underlay, node: &str) -> String {
    let ip = external_ip6(underlay, node);
    format!("{}1", &ip[..ip.rfind(':').unwrap() + 1])
}

/// `node`'s default gateway on `underlay`: "outside", .1 of the node's /24.
fn gateway(underlay: Underlay, node: &str) -> String {
    let ip = external_ip(underlay, node);
    format!("{}.1", &ip[..ip.rfind('.').unwrap()])
}

/// Creates node namespaces `nodes` (eth0 up with their address, lo up, default route via
/// "outside") joined by `underlay`.
fn build_underlay(underlay: Underlay, nodes: &[&str]) {
    // Addresses without duplicate address detection, and links whose link-local address
    // is usable at once (the node solicits neighbours from it when it forwards): no wait.
    common::sh(
        "ip netns add outside
         ip -n outside link set lo up
         ip netns exec outside sysctl -qw net.ipv6.conf.default.accept_dad=0",
    );
    match underlay {
        Underlay::Segment | Underlay::DualSegment => common::sh(
            "ip link add under type bridge && ip link set under up
             ip link add u-out type veth peer name eth0 netns outside
             ip link set u-out master under up
             ip netns exec outside sysctl -qw net.ipv6.conf.eth0.accept_dad=0
             ip -n outside addr add 192.0.2.1/24 dev eth0 && ip -n outside link set eth0 up",
        ),
        Underlay::Router | Underlay::DualRouter => common::sh(
            "ip netns exec outside sysctl -qw net.ipv4.ip_forward=1
             ip netns exec outside sysctl -qw net.ipv6.conf.all.forwarding=1",
        ),
    };
    if underlay == Underlay::DualSegment {
        common::sh("ip -n outside addr add 2001:db8::1/64 dev eth0 nodad");
    }
    for node in nodes {
        let ip = external_ip(underlay, node);
        let gateway = gateway(underlay, node);
        let l = letter(node);
        common::sh(&format!("ip netns add {node}"));
        match underlay {
            Underlay::Segment | Underlay::DualSegment => common::sh(&format!(
                "ip link add u-{l} type veth peer name eth0 netns {node}
                 ip link set u-{l} master under up"
            )),
            Underlay::Router | Underlay::DualRouter => common::sh(&format!(
                "ip link add r-{l} netns outside type veth peer name eth0 netns {node}
                 ip -n outside addr add {gateway}/24 dev r-{l}
                 ip -n outside link set r-{l} up"
            )),
        };
        common::sh(&format!(
            "ip netns exec {node} sysctl -qw net.ipv6.conf.eth0.accept_dad=0
             ip -n {node} addr add {ip}/24 dev eth0
             ip -n {node} link set eth0 up && ip -n {node} link set lo up
             ip -n {node} route add default via {gateway}"
        ));
        if underlay.dual_stack() {
            let ip6 = external_ip6(underlay, node);
            let gateway6 = gateway6(underlay, node);
            if underlay == Underlay::DualRouter {
                common::sh(&format!(
                    "ip -n outside addr add {gateway6}/64 dev r-{l} nodad"
                ));
            }
            common::sh(&format!(
                "ip -n {node} addr add {ip6}/64 dev eth0 nodad
                 ip -n {node} -6 route add default via {gateway6}"
            ));
        }
    }
}

/// An instance's namespace path, in its node's netns directory.
fn instance_path(node: &str, name: &str) -> String {
    format!("/run/netns-{}/kudo-{name}", letter(node))
}

/// A TCP echo server on `[::]:port` in a namespace, answering each client with the address
/// it saw (`kudonet::probe` speaks IPv4 only); stops when dropped.
struct Echo6 {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo6 {
    fn start(netns: String, port: u16) -> Echo6 {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let (ready, listening) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let namespace = File::open(&netns).expect(&netns);
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(format!("{peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        listening.recv().expect("IPv6 echo server failed to start");
        Echo6 {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo6 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The source address the IPv6 echo server at `target` saw, asked from namespace `from`.
#[track_caller]
fn seen6(from: &str, target: SocketAddrV6) -> String {
    let namespace = File::open(from).expect(from);
    let answer = kudonet::kernel::netlink::in_namespace(&namespace, || {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::V6(target), probe::TIMEOUT)?;
        stream.set_read_timeout(Some(probe::TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        std::io::Result::Ok(answer)
    })
    .and_then(|answer| answer);
    match answer {
        Ok(answer) => {
            let peer: SocketAddr = answer.trim().parse().expect(&answer);
            peer.ip().to_string()
        }
        Err(error) => panic!("TCP {target} from {from}: {error}"),
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

/// `nft list table inet kudonet` on node-a of the dual-stack routed cluster: beside what a
/// single node has, the cluster exemption of each family (its subnet to the Cluster cidr
/// returns before the masquerade) and the forward accept of the other nodes' instances.
const NODE_A_DUAL_STACK_TABLE: &str = include_str!("nft/cluster-node-a.nft");

/// kudonet's rules on `node` for traffic across the cluster, in the cluster's firewall and
/// nowhere else, for each family of the cluster: the node's instances keep their address
/// towards the Cluster cidr (a return before the masquerade), and the instances of every
/// other node are forwarded to the node's bridges.
fn check_cluster_rules(cluster: &Cluster, node: &str) {
    let n: u16 = match node {
        "node-a" => 0,
        "node-b" => 1,
        "node-c" => 2,
        other => panic!("no node {other}"),
    };
    let mut families = vec![("ip", format!("10.0.{n}.0/24"), "10.0.0.0/16")];
    if cluster.underlay.dual_stack() {
        let subnet = Ipv6Addr::new(0xfd00, 0x10, 0, n, 0, 0, 0, 0);
        families.push(("ip6", format!("{subnet}/64"), "fd00:10::/48"));
    }
    let iptables = on(
        node,
        "iptables-save | grep -e KUDO- || true; echo ---; ip6tables-save | grep -e KUDO- || true",
    );
    let table = on(node, "nft list table inet kudonet 2>/dev/null || true");
    match cluster.firewall {
        Firewall::Nftables => {
            assert_eq!(
                iptables, "---\n",
                "{node}: no rule of kudonet's in iptables"
            );
            let rules: Vec<&str> = table.lines().map(str::trim).collect();
            for (family, subnet, cidr) in &families {
                let exemption = format!("{family} saddr {subnet} {family} daddr {cidr} return");
                let masquerade = format!("{family} saddr {subnet} oifname \"eth0\" masquerade");
                let accept = format!("oifname @bridges {family} saddr {cidr} accept");
                let at = |rule: &str| {
                    rules
                        .iter()
                        .position(|line| *line == rule)
                        .unwrap_or_else(|| panic!("{node}: no {rule:?} in\n{table}"))
                };
                assert!(at(&exemption) < at(&masquerade), "{node}:\n{table}");
                at(&accept);
            }
        }
        Firewall::Iptables => {
            assert_eq!(table, "", "{node}: no nftables table");
            let (ipv4, ipv6) = iptables.split_once("---\n").unwrap();
            for (family, subnet, cidr) in &families {
                let save = if *family == "ip" { ipv4 } else { ipv6 };
                let rules: Vec<&str> = save.lines().collect();
                let exemption = format!("-A KUDO-POSTROUTING -s {subnet} -d {cidr} -j RETURN");
                let masquerade = format!("-A KUDO-POSTROUTING -s {subnet} -o eth0 -j MASQUERADE");
                let accept = format!("-A KUDO-FORWARD -s {cidr} -o kudo0 -j ACCEPT");
                let at = |rule: &str| {
                    rules
                        .iter()
                        .position(|line| *line == rule)
                        .unwrap_or_else(|| panic!("{node}: no {rule:?} in\n{save}"))
                };
                assert!(at(&exemption) < at(&masquerade), "{node}:\n{save}");
                at(&accept);
            }
        }
    }
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
fn vxlan_cluster_across_a_router_with_iptables() {
    common::sandboxed("vxlan_cluster_across_a_router_with_iptables", || {
        vxlan_cluster_across_a_router(Firewall::Iptables)
    });
}

#[test]
fn vxlan_cluster_across_a_router_with_nftables() {
    common::sandboxed("vxlan_cluster_across_a_router_with_nftables", || {
        vxlan_cluster_across_a_router(Firewall::Nftables)
    });
}

fn vxlan_cluster_across_a_router(firewall: Firewall) {
    let cluster = Cluster::with_firewall(Underlay::Router, firewall, &ALL);
    cluster.set_mode(Mode::Vxlan);
    cluster.converge(&ALL);
    for node in ALL {
        check_cluster_rules(&cluster, node);
    }

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

/// IPv6 beside IPv4, routed: each peer subnet via the peer's externalIp of its family.
#[test]
fn routed_dual_stack_cluster_with_iptables() {
    common::sandboxed("routed_dual_stack_cluster_with_iptables", || {
        routed_dual_stack_cluster(Firewall::Iptables)
    });
}

#[test]
fn routed_dual_stack_cluster_with_nftables() {
    common::sandboxed("routed_dual_stack_cluster_with_nftables", || {
        routed_dual_stack_cluster(Firewall::Nftables)
    });
}

fn routed_dual_stack_cluster(firewall: Firewall) {
    let cluster = Cluster::with_firewall(Underlay::DualSegment, firewall, &ALL);
    cluster.converge(&ALL);
    for node in ALL {
        check_cluster_rules(&cluster, node);
    }
    if firewall == Firewall::Nftables {
        assert_eq!(
            on("node-a", "nft list table inet kudonet"),
            NODE_A_DUAL_STACK_TABLE
        );
    }

    assert_eq!(
        routes("node-a"),
        [
            "10.0.1.0/24 via 192.0.2.12 dev eth0 proto 75",
            "10.0.2.0/24 via 192.0.2.13 dev eth0 proto 75",
        ]
    );
    assert_eq!(
        routes6("node-a"),
        [
            "fd00:10:0:1::/64 via 2001:db8::12 dev eth0 proto 75 metric 1024 pref medium",
            "fd00:10:0:2::/64 via 2001:db8::13 dev eth0 proto 75 metric 1024 pref medium",
        ]
    );
    assert_eq!(
        routes6("node-c"),
        [
            "fd00:10::/64 via 2001:db8::11 dev eth0 proto 75 metric 1024 pref medium",
            "fd00:10:0:1::/64 via 2001:db8::12 dev eth0 proto 75 metric 1024 pref medium",
        ]
    );
    assert!(ALL.iter().all(|node| !has_vxlan(node)));

    {
        let _servers = cluster.serve(&ALL);
        let _servers6 = cluster.serve6(&ALL);
        cluster.check_instances(&ALL);
        cluster.check_instances6(&ALL);
        cluster.check_outside(&ALL);
        cluster.check_outside6(&ALL);
        check_published(&cluster);
    }

    // node-c leaves the directory: a and b drop its route of each family.
    cluster.leave("node-c");
    for node in ["node-a", "node-b"] {
        assert_eq!(
            cluster.plan(node),
            "- route 10.0.2.0/24\n- route fd00:10:0:2::/64\n\
             Plan: 0 to add, 0 to change, 2 to destroy.\n",
            "plan on {node}"
        );
    }
    cluster.converge(&["node-a", "node-b"]);
    assert_eq!(
        routes6("node-a"),
        ["fd00:10:0:1::/64 via 2001:db8::12 dev eth0 proto 75 metric 1024 pref medium"]
    );
    assert_eq!(
        routes6("node-b"),
        ["fd00:10::/64 via 2001:db8::11 dev eth0 proto 75 metric 1024 pref medium"]
    );
    let _servers6 = cluster.serve6(&["node-a", "node-b"]);
    cluster.check_instances6(&["node-a", "node-b"]);
}

/// The vxlan overlay over either family: IPv4 while every Node has an IPv4 externalIp, IPv6
/// once they give IPv6 only; the device carries both inner families either way.
#[test]
fn vxlan_cluster_over_an_ipv6_underlay() {
    common::sandboxed("vxlan_cluster_over_an_ipv6_underlay", || {
        let cluster = Cluster::new(Underlay::DualRouter, &ALL);
        cluster.set_mode(Mode::Vxlan);
        let check_packets = || {
            let _servers = cluster.serve(&ALL);
            let _servers6 = cluster.serve6(&ALL);
            cluster.check_instances(&ALL);
            cluster.check_instances6(&ALL);
            cluster.check_outside(&ALL);
            cluster.check_outside6(&ALL);
        };
        // Every link of the overlay's layer 2 has `mtu`: the bridge, its ports (the vxlan
        // and two veths) and the instances' eth0; the uplink keeps 1500.
        let check_mtu = |mtu: u32| {
            assert!(on("node-a", "ip -o link show eth0").contains(" mtu 1500 "));
            let mtus = on(
                "node-a",
                "ip -o link show kudo0; ip -o link show master kudo0; \
                 nsenter --net=/run/netns-a/kudo-web ip -o link show eth0",
            );
            assert_eq!(mtus.lines().count(), 5, "{mtus}");
            let expected = format!(" mtu {mtu} ");
            assert!(mtus.lines().all(|line| line.contains(&expected)), "{mtus}");
            // A packet of that size, not fragmented, crosses to node-b in either family.
            let (ipv4_payload, ipv6_payload) = (mtu - 28, mtu - 48);
            on(
                "node-a",
                &format!(
                    "nsenter --net=/run/netns-a/kudo-web ping -q -c 1 -W 2 -M do -s {ipv4_payload} 10.0.1.2
                     nsenter --net=/run/netns-a/kudo-web ping -q -c 1 -W 2 -M do -s {ipv6_payload} fd00:10:0:1::2"
                ),
            );
        };

        // Every Node has an IPv4 externalIp (and an IPv6 one): the underlay is IPv4.
        cluster.converge(&ALL);
        let vxlan = on("node-a", "ip -d link show kudo-vxlan");
        assert!(
            vxlan.contains("vxlan id 75 local 198.51.100.11 dev eth0 "),
            "{vxlan}"
        );
        assert_eq!(
            floods("node-a"),
            [
                "00:00:00:00:00:00 dst 192.0.2.13 self permanent",
                "00:00:00:00:00:00 dst 203.0.113.12 self permanent",
            ]
        );
        check_mtu(1450);
        check_packets();

        // IPv6 externalIps only: every node rebuilds its device over IPv6.
        cluster.set_externals(Externals::Ipv6, &ALL);
        let plan = cluster.plan("node-a");
        for expected in [
            "~ link kudo0: mtu 1430\n- link kudo-vxlan\n\
             + vxlan kudo-vxlan id 75 local 2001:db8:a::11 dev eth0 (mtu 1430)\n",
            "+ flood kudo-vxlan to 2001:db8:b::12\n+ flood kudo-vxlan to 2001:db8:c::13\n",
        ] {
            assert!(plan.contains(expected), "{expected:?} in\n{plan}");
        }
        cluster.converge(&ALL);
        let vxlan = on("node-a", "ip -d link show kudo-vxlan");
        for expected in [
            "mtu 1430 ",
            "master kudo0 ",
            "vxlan id 75 local 2001:db8:a::11 dev eth0 ",
            "dstport 4789 ",
        ] {
            assert!(vxlan.contains(expected), "{expected:?} in\n{vxlan}");
        }
        assert_eq!(
            floods("node-a"),
            [
                "00:00:00:00:00:00 dst 2001:db8:b::12 self permanent",
                "00:00:00:00:00:00 dst 2001:db8:c::13 self permanent",
            ]
        );
        assert_eq!(
            floods("node-c"),
            [
                "00:00:00:00:00:00 dst 2001:db8:a::11 self permanent",
                "00:00:00:00:00:00 dst 2001:db8:b::12 self permanent",
            ]
        );
        assert_eq!(
            routes("node-a"),
            [
                "10.0.1.0/24 via 10.0.1.1 dev kudo0 proto 75 onlink",
                "10.0.2.0/24 via 10.0.2.1 dev kudo0 proto 75 onlink",
            ]
        );
        assert_eq!(
            routes6("node-a"),
            [
                "fd00:10:0:1::/64 via fd00:10:0:1::1 dev kudo0 proto 75 metric 1024 onlink pref medium",
                "fd00:10:0:2::/64 via fd00:10:0:2::1 dev kudo0 proto 75 metric 1024 onlink pref medium",
            ]
        );
        check_mtu(1430);
        check_packets();

        // Mixed: node-a and node-b give both families again, node-c IPv6 only. The
        // underlay stays IPv6 (not every Node has an IPv4 externalIp): no device changes.
        cluster.set_externals(Externals::Both, &["node-a", "node-b"]);
        for node in ALL {
            let plan = cluster.plan(node);
            assert!(
                !plan.contains("kudo-vxlan") && !plan.contains("mtu"),
                "{node}:\n{plan}"
            );
        }
        cluster.settle(&ALL);
        assert!(on("node-b", "ip -d link show kudo-vxlan").contains("local 2001:db8:b::12 "));
        assert_eq!(
            floods("node-b"),
            [
                "00:00:00:00:00:00 dst 2001:db8:a::11 self permanent",
                "00:00:00:00:00:00 dst 2001:db8:c::13 self permanent",
            ]
        );
        check_mtu(1430);
        check_packets();

        // node-c gives both too: back to IPv4, each device rebuilt again.
        cluster.set_externals(Externals::Both, &["node-c"]);
        cluster.converge(&ALL);
        assert!(on("node-a", "ip -d link show kudo-vxlan").contains("local 198.51.100.11 "));
        assert_eq!(
            floods("node-a"),
            [
                "00:00:00:00:00:00 dst 192.0.2.13 self permanent",
                "00:00:00:00:00:00 dst 203.0.113.12 self permanent",
            ]
        );
        check_mtu(1450);
        check_packets();
    });
}
