//! A node with more instances than one bridge takes, on a real kernel, in a sandbox: 1,030
//! instances on a /20 spread over the node's bridge (500), `kudo-seg1` (500) and
//! `kudo-seg2` (30), and real packets prove every promise across them: instance <->
//! instance with source addresses kept, the gateway, the node, egress masqueraded, a
//! published port of an instance on a segment from outside, from the node through
//! 127.0.0.1, and by hairpin from the instance itself, from its segment, from another
//! segment and from the node's bridge. A second apply changes nothing; removing the
//! instances of a segment removes it, removing some of them their routes; teardown leaves
//! nothing.
//!
//! The sandbox's own namespace is the node, with a FORWARD policy of DROP; "outside" is a
//! namespace behind its uplink `eth0` (203.0.113.1/24; outside is 203.0.113.254).
//!
//! A dual-stack node of 1,010 instances over the same bridges proves the same over IPv6,
//! where a segment's instances have no route to their subnet and the node answers for them
//! on its bridge by proxy neighbour discovery (one entry each, marked as kudonet's).
//!
//! With the nftables backend, a node of 5 instances, converged through the library with 3
//! instances a bridge (the planner's knob for tests), has a segment of 2: the table's set
//! `bridges` holds it beside the node's bridge, and real packets prove the segment's paths
//! (a published port of its instance from outside and by hairpin from the node's bridge).

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use std::path::Path;

use common::cli::kudonet;
use common::{StateDir, addr, firewall, kudo_lines, netns, nft_kudonet, seen, setup_outside, sh};

use kudonet::dataplane::Dataplane;
use kudonet::kernel::KernelDataplane;
use kudonet::plan::{Action, plan_with_bridge_instances};
use kudonet::probe::{self, Place};
use kudonet::reconcile::{self, NoProgress};
use kudonet::spec::Protocol::Tcp;
use kudonet::spec::{Desired, FirewallBackend};

const INSTANCES: u32 = 1030;

/// Instance `i`'s name, `i0001` to `i1030`: in name order, the first 500 go to the node's
/// bridge, the next 500 to `kudo-seg1`, the last 30 to `kudo-seg2`.
fn name(i: u32) -> String {
    format!("i{i:04}")
}

/// Instance `i`'s address: 10.0.0.1 + i (i0001 is 10.0.0.2, i1030 10.0.4.7).
fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 1)) + i)
}

/// The node and instances 1 to `count`; instance `i` of `published` publishes port 8000 + i.
fn node(count: u32, published: &[u32]) -> String {
    let mut yaml = String::from("kind: Node\nname: node-a\ncidr: 10.0.0.1/20\n");
    for i in 1..=count {
        yaml.push_str(&format!(
            "---\nkind: Instance\nname: {}\naddress: {}\n",
            name(i),
            address(i)
        ));
        if published.contains(&i) {
            yaml.push_str(&format!(
                "ports:\n  - hostPort: {}\n    instancePort: 80\n",
                8000 + i
            ));
        }
    }
    yaml
}

/// How many ports `bridge` has.
fn ports(bridge: &str) -> usize {
    sh(&format!("ip -o link show master {bridge} | wc -l"))
        .trim()
        .parse()
        .unwrap()
}

/// The instance's namespace, as a place to send from.
fn from(i: u32) -> Place {
    netns(&format!("kudo-{}", name(i)))
}

fn at(i: u32, port: u16) -> String {
    format!("{}:{port}", address(i))
}

#[test]
fn a_node_past_one_bridge() {
    common::sandboxed("a_node_past_one_bridge", || {
        setup_outside();
        sh("iptables -w -P FORWARD DROP");
        let published = [1, 600, 1030];
        let state = StateDir::new(&node(INSTANCES, &published));
        kudonet(&["apply", state.path()]).expect_success();

        // The bridges, their ports, and a route per instance of a segment.
        assert_eq!(
            [ports("kudo0"), ports("kudo-seg1"), ports("kudo-seg2")],
            [500, 500, 30]
        );
        let mac = |link: &str| common::link(None, link).unwrap()["address"].clone();
        for segment in ["kudo-seg1", "kudo-seg2"] {
            // One gateway: its address, and the node's bridge's MAC address.
            assert_eq!(mac(segment), mac("kudo0"));
            assert_eq!(
                sh(&format!(
                    "ip -o -4 addr show dev {segment} | awk '{{print $4}}'"
                )),
                "10.0.0.1/32\n"
            );
            assert!(
                sh(&format!("ip -d link show {segment}")).contains("alias kudonet:segment"),
                "{segment} is marked"
            );
        }
        assert_eq!(sh("ip route show proto 75 | wc -l").trim(), "530");
        assert_eq!(
            sh("ip route show proto 75 | grep '^10.0.4.7 '"),
            "10.0.4.7 dev kudo-seg2 scope link \n"
        );

        // 1 and 250 on the node's bridge, 600 on kudo-seg1, 1029 and 1030 on kudo-seg2.
        let _servers: Vec<_> = published
            .iter()
            .map(|i| probe::serve(&from(*i), Tcp, addr("0.0.0.0:80")).unwrap())
            .collect();
        let _node = probe::serve(&Place::Here, Tcp, addr("0.0.0.0:7000")).unwrap();
        let _outside = probe::serve(&netns("outside"), Tcp, addr("0.0.0.0:9000")).unwrap();
        let (i1, i600, i1029, i1030) = (address(1), address(600), address(1029), address(1030));

        // Instance <-> instance across bridges and within one, sources preserved.
        assert_eq!(seen(&from(1030), Tcp, &at(1, 80)), i1030.to_string());
        assert_eq!(seen(&from(1), Tcp, &at(1030, 80)), i1.to_string());
        assert_eq!(seen(&from(600), Tcp, &at(1030, 80)), i600.to_string());
        assert_eq!(seen(&from(1030), Tcp, &at(600, 80)), i1030.to_string());
        assert_eq!(seen(&from(1029), Tcp, &at(1030, 80)), i1029.to_string());
        // Instance -> its gateway, on each bridge; node -> instance.
        for i in [250, 700, 1030] {
            assert_eq!(seen(&from(i), Tcp, "10.0.0.1:7000"), address(i).to_string());
        }
        assert_eq!(seen(&Place::Here, Tcp, &at(1030, 80)), "10.0.0.1");
        // Instance -> outside, masqueraded behind the node's uplink address.
        assert_eq!(seen(&from(1030), Tcp, "203.0.113.254:9000"), "203.0.113.1");
        // A published port of an instance of a segment: from outside, from the node itself.
        assert_eq!(
            seen(&netns("outside"), Tcp, "203.0.113.1:9030"),
            "203.0.113.254"
        );
        assert_eq!(seen(&Place::Here, Tcp, "127.0.0.1:9030"), "10.0.0.1");
        // Hairpin: the instance itself, its segment, another segment, the node's bridge.
        for i in [1030, 1029, 600, 1] {
            assert_eq!(
                seen(&from(i), Tcp, "203.0.113.1:9030"),
                "10.0.0.1",
                "from {i}"
            );
        }
        assert_eq!(seen(&from(1030), Tcp, "10.0.0.1:9030"), "10.0.0.1");
        // And from a segment to published ports on the node's bridge and another segment.
        assert_eq!(seen(&from(1030), Tcp, "203.0.113.1:8001"), "10.0.0.1");
        assert_eq!(seen(&from(1030), Tcp, "203.0.113.1:8600"), "10.0.0.1");

        // A second apply changes nothing.
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");

        // Without the instances of kudo-seg2, it goes, with its routes and rules; those of
        // kudo-seg1 stay where they are.
        state.write("node.yaml", &node(1000, &[1, 600]));
        kudonet(&["apply", state.path()]).expect_success();
        assert!(common::link(None, "kudo-seg2").is_none());
        assert_eq!([ports("kudo0"), ports("kudo-seg1")], [500, 500]);
        assert_eq!(sh("ip route show proto 75 | wc -l").trim(), "500");
        assert!(!firewall().contains("kudo-seg2"), "{}", firewall());
        assert_eq!(seen(&from(1), Tcp, &at(600, 80)), i1.to_string());
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // Some instances of kudo-seg1 go: their routes (scope link) go with them, and
        // the segment stays for the others.
        state.write("node.yaml", &node(900, &[1, 600]));
        kudonet(&["apply", state.path()]).expect(
            0,
            "Apply complete: 0 added, 0 changed, 200 destroyed.\n",
            "",
        );
        assert_eq!([ports("kudo0"), ports("kudo-seg1")], [500, 400]);
        assert_eq!(sh("ip route show proto 75 | wc -l").trim(), "400");
        assert_eq!(sh(&format!("ip route show {}", address(901))), "");
        assert_eq!(seen(&from(1), Tcp, &at(600, 80)), i1.to_string());
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // Teardown leaves nothing of kudonet's.
        kudonet(&["teardown"]).expect_success();
        assert_eq!(sh("ls /run/netns"), "outside\n");
        assert_eq!(
            sh("ip -o link show | cut -d: -f2 | tr -d ' ' | sed 's/@.*//'"),
            "lo\neth0\n"
        );
        assert_eq!(sh("ip route show proto 75"), "");
        assert!(!firewall().contains("KUDO"), "{}", firewall());
    });
}

/// Instances of the dual-stack node: i0001 to i0500 on the node's bridge, i0501 to i1000 on
/// `kudo-seg1`, i1001 to i1010 on `kudo-seg2`.
const DUAL_INSTANCES: u32 = 1010;

/// Instance `i`'s IPv6 address: fd00:10::1 + i (i0001 is fd00:10::2, i1010 fd00:10::3f3).
fn address6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1)) + u128::from(i))
}

/// The dual-stack node and instances 1 to `count`, each with an address of each family;
/// instance `i` of `published` publishes port 8000 + i.
fn dual_node(count: u32, published: &[u32]) -> String {
    let mut yaml =
        String::from("kind: Node\nname: node-a\ncidr: [10.0.0.1/20, \"fd00:10::1/64\"]\n");
    for i in 1..=count {
        yaml.push_str(&format!(
            "---\nkind: Instance\nname: {}\naddress: [{}, \"{}\"]\n",
            name(i),
            address(i),
            address6(i)
        ));
        if published.contains(&i) {
            yaml.push_str(&format!(
                "ports:\n  - hostPort: {}\n    instancePort: 80\n",
                8000 + i
            ));
        }
    }
    yaml
}

fn at6(i: u32, port: u16) -> String {
    format!("[{}]:{port}", address6(i))
}

/// The source address the echo server at `target` (IPv4 or IPv6) saw, asked from `from`.
#[track_caller]
fn seen6(from: &Place, target: &str) -> String {
    let target: SocketAddr = target.parse().unwrap();
    match probe::ask(from, Tcp, target) {
        Ok(source) => source.ip().to_string(),
        Err(error) => panic!("tcp {target} from {from:?}: {error}"),
    }
}

/// How many IPv6 proxy neighbour entries the node has on `link` with kudonet's mark, and
/// without.
fn proxies(link: &str) -> (usize, usize) {
    let all = sh(&format!("ip -6 neigh show proxy dev {link}"));
    let ours = all.lines().filter(|l| l.ends_with("proto 75 ")).count();
    (ours, all.lines().count() - ours)
}

#[test]
fn a_dual_stack_node_past_one_bridge() {
    common::sandboxed("a_dual_stack_node_past_one_bridge", || {
        setup_outside();
        // The uplink over IPv6 too: the node 2001:db8::1, outside 2001:db8::fe.
        sh("ip addr add 2001:db8::1/64 dev eth0 nodad
            ip -n outside addr add 2001:db8::fe/64 dev up0 nodad
            ip -6 route add default via 2001:db8::fe");
        sh("iptables -w -P FORWARD DROP; ip6tables -w -P FORWARD DROP");
        // Someone else's proxy entry on what becomes kudonet's bridge stays.
        let published = [1, 600, 1010];
        let state = StateDir::new(&dual_node(DUAL_INSTANCES, &published));
        kudonet(&["apply", state.path()]).expect_success();
        sh("ip -6 neigh add proxy fd00:10::ffff dev kudo0");

        assert_eq!(
            [ports("kudo0"), ports("kudo-seg1"), ports("kudo-seg2")],
            [500, 500, 10]
        );
        for segment in ["kudo-seg1", "kudo-seg2"] {
            // The gateway's IPv6 address as a /128, and a link-local address in use (the
            // node solicits the segment's instances from it).
            assert_eq!(
                sh(&format!(
                    "ip -o -6 addr show dev {segment} scope global | awk '{{print $4}}'"
                )),
                "fd00:10::1/128\n"
            );
            let link_local = sh(&format!("ip -6 addr show dev {segment} scope link"));
            assert!(
                link_local.contains("fe80::") && !link_local.contains("tentative"),
                "{link_local}"
            );
        }
        // A route and a proxy entry on the node's bridge per IPv6 instance of a segment.
        assert_eq!(sh("ip -6 route show proto 75 | wc -l").trim(), "510");
        assert_eq!(
            sh("ip -6 route show proto 75 fd00:10::3f3"),
            "fd00:10::3f3 dev kudo-seg2 metric 1024 pref medium\n"
        );
        assert_eq!(proxies("kudo0"), (510, 1));
        assert_eq!(
            sh("sysctl -n net.ipv6.conf.kudo0.proxy_ndp net.ipv6.neigh.kudo0.proxy_delay"),
            "1\n0\n"
        );
        // On a segment, the instance keeps its prefix without its route, and its gateway
        // is on-link; on the node's bridge, as usual.
        assert_eq!(
            sh("ip -n kudo-i1010 -o -6 addr show dev eth0 | awk '{print $4, $7, $8}'"),
            "fd00:10::3f3/64 nodad noprefixroute\n"
        );
        assert_eq!(
            sh("ip -n kudo-i1010 -6 route show"),
            "default via fd00:10::1 dev eth0 proto 75 metric 1024 onlink pref medium\n"
        );
        assert_eq!(
            sh("ip -n kudo-i0001 -6 route show"),
            "fd00:10::/64 dev eth0 proto kernel metric 256 pref medium\n\
             default via fd00:10::1 dev eth0 proto 75 metric 1024 pref medium\n"
        );

        let servers: Vec<_> = published
            .iter()
            .chain(&[1009])
            .map(|i| {
                let address = SocketAddr::new(address6(*i).into(), 80);
                probe::serve(&from(*i), Tcp, address).unwrap()
            })
            .collect();
        let _node = probe::serve(
            &Place::Here,
            Tcp,
            "[::]:7000".parse::<SocketAddr>().unwrap(),
        )
        .unwrap();
        let outside: SocketAddr = "[2001:db8::fe]:9000".parse().unwrap();
        let _outside = probe::serve(&netns("outside"), Tcp, outside).unwrap();
        let v6 = |i: u32| address6(i).to_string();

        // Segment <-> node's bridge, segment <-> segment, within a segment, sources kept.
        assert_eq!(seen6(&from(1010), &at6(1, 80)), v6(1010));
        assert_eq!(seen6(&from(1), &at6(1010, 80)), v6(1));
        assert_eq!(seen6(&from(1), &at6(600, 80)), v6(1));
        assert_eq!(seen6(&from(600), &at6(1010, 80)), v6(600));
        assert_eq!(seen6(&from(1010), &at6(600, 80)), v6(1010));
        assert_eq!(seen6(&from(1009), &at6(1010, 80)), v6(1009));
        assert_eq!(seen6(&from(1010), &at6(1009, 80)), v6(1010));
        // Instance -> its gateway, on each bridge; node -> instance on a segment.
        for i in [250, 700, 1010] {
            assert_eq!(seen6(&from(i), "[fd00:10::1]:7000"), v6(i));
        }
        assert_eq!(seen6(&Place::Here, &at6(1010, 80)), "fd00:10::1");
        // Instance on a segment -> outside, masqueraded behind the uplink's address.
        assert_eq!(seen6(&from(1010), "[2001:db8::fe]:9000"), "2001:db8::1");
        // A published port of an instance of a segment, from outside and by hairpin.
        assert_eq!(
            seen6(&netns("outside"), "[2001:db8::1]:9010"),
            "2001:db8::fe"
        );
        for i in [1010, 600, 1] {
            assert_eq!(
                seen6(&from(i), "[2001:db8::1]:9010"),
                "fd00:10::1",
                "from {i}"
            );
        }
        drop(servers);

        // A second apply changes nothing.
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");

        // Without the instances of kudo-seg2, it goes with their routes and proxy entries.
        state.write("node.yaml", &dual_node(1000, &[1, 600]));
        kudonet(&["apply", state.path()]).expect_success();
        assert!(common::link(None, "kudo-seg2").is_none());
        assert_eq!(sh("ip -6 route show proto 75 | wc -l").trim(), "500");
        assert_eq!(proxies("kudo0"), (500, 1));
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // Some instances of kudo-seg1 go: their routes and proxy entries too.
        state.write("node.yaml", &dual_node(900, &[1, 600]));
        kudonet(&["apply", state.path()]).expect_success();
        assert_eq!([ports("kudo0"), ports("kudo-seg1")], [500, 400]);
        assert_eq!(sh("ip -6 route show proto 75 | wc -l").trim(), "400");
        assert_eq!(sh(&format!("ip -6 route show {}", address6(901))), "");
        assert_eq!(proxies("kudo0"), (400, 1));
        assert_eq!(sh(&format!("ip -6 neigh show proxy {}", address6(901))), "");
        assert_eq!(
            sh("ip -6 neigh show proxy fd00:10::ffff"),
            "fd00:10::ffff dev kudo0 proxy \n"
        );
        let _server = probe::serve(&from(600), Tcp, SocketAddr::new(address6(600).into(), 80));
        assert_eq!(seen6(&from(1), &at6(600, 80)), v6(1));
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // Teardown leaves nothing of kudonet's.
        kudonet(&["teardown"]).expect_success();
        assert_eq!(sh("ip -6 route show proto 75"), "");
        assert_eq!(sh("ip -6 neigh show proxy"), "");
    });
}

/// Instances a bridge in the nftables test: its 5 instances fill the node's bridge (i0001 to
/// i0003) and put i0004 and i0005 on `kudo-seg1`.
const SMALL_BRIDGES: usize = 3;

/// `state`'s desired state, with the nftables backend.
fn nftables_desired(state: &StateDir) -> Desired {
    let (_, mut desired) = reconcile::load_desired(Path::new(state.path()), None).unwrap();
    desired.firewall = FirewallBackend::Nftables;
    desired
}

/// One pass of what `kudonet apply` does, with [`SMALL_BRIDGES`] instances a bridge:
/// observe, plan, apply every action. The node must then be converged: a new plan is empty.
fn apply_with_small_bridges(dataplane: &mut KernelDataplane, desired: &Desired) {
    let observed = dataplane.observe().unwrap();
    let planned = plan_with_bridge_instances(desired, &observed, SMALL_BRIDGES);
    assert!(planned.conflicts.is_empty(), "{:?}", planned.conflicts);
    let actions: Vec<Action> = planned.actions().cloned().collect();
    dataplane.apply_all(&actions).unwrap();
    let observed = dataplane.observe().unwrap();
    let remaining = plan_with_bridge_instances(desired, &observed, SMALL_BRIDGES);
    assert!(remaining.is_empty(), "{:?}", remaining.steps);
}

/// `nft list set inet kudonet bridges` for the set holding `elements` (as nft prints them).
fn bridges_set(elements: &str) -> String {
    format!(
        "table inet kudonet {{\n\tset bridges {{\n\t\ttype ifname\n\t\telements = {{ {elements} }}\n\t}}\n}}\n"
    )
}

#[test]
fn a_segment_with_nftables() {
    common::sandboxed("a_segment_with_nftables", || {
        setup_outside();
        // Docker's policy: kudonet's KUDO-FORWARD chain in iptables covers the segment too.
        sh("iptables -w -P FORWARD DROP");
        // i0005, on the segment, publishes 8005 -> 80.
        let state = StateDir::new(&node(5, &[5]));
        let mut dataplane =
            KernelDataplane::for_backend(Path::new("/run/netns"), FirewallBackend::Nftables)
                .unwrap();
        apply_with_small_bridges(&mut dataplane, &nftables_desired(&state));

        assert_eq!([ports("kudo0"), ports("kudo-seg1")], [3, 2]);
        assert_eq!(
            sh("nft list set inet kudonet bridges"),
            bridges_set("\"kudo0\",\n\t\t\t     \"kudo-seg1\"")
        );
        let table = nft_kudonet().unwrap();
        assert!(
            table.contains("\t\telements = { tcp . 8005 comment \"i0005\" : 10.0.0.6 . 80 }\n"),
            "{table}"
        );
        assert_eq!(
            kudo_lines(false),
            ":KUDO-FORWARD - [0:0]
-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-A KUDO-FORWARD -i kudo0 -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate DNAT -j ACCEPT
-A KUDO-FORWARD -i kudo-seg1 -j ACCEPT
-A KUDO-FORWARD -o kudo-seg1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUDO-FORWARD -o kudo-seg1 -m conntrack --ctstate DNAT -j ACCEPT
"
        );

        let _servers = [
            probe::serve(&from(1), Tcp, addr("0.0.0.0:80")).unwrap(),
            probe::serve(&from(5), Tcp, addr("0.0.0.0:80")).unwrap(),
            probe::serve(&netns("outside"), Tcp, addr("0.0.0.0:9000")).unwrap(),
        ];
        let (i1, i4, i5) = (address(1), address(4), address(5));
        // Across the bridges, sources kept; the segment's instance out, masqueraded.
        assert_eq!(seen(&from(1), Tcp, &at(5, 80)), i1.to_string());
        assert_eq!(seen(&from(5), Tcp, &at(1, 80)), i5.to_string());
        assert_eq!(seen(&from(4), Tcp, &at(5, 80)), i4.to_string());
        assert_eq!(seen(&from(5), Tcp, "203.0.113.254:9000"), "203.0.113.1");
        // The published port of the segment's instance: from outside, the client is seen;
        // by hairpin from the node's bridge, the segment and the instance itself, the
        // gateway is.
        assert_eq!(
            seen(&netns("outside"), Tcp, "203.0.113.1:8005"),
            "203.0.113.254"
        );
        for i in [1, 4, 5] {
            assert_eq!(
                seen(&from(i), Tcp, "203.0.113.1:8005"),
                "10.0.0.1",
                "from {i}"
            );
        }
        assert_eq!(seen(&Place::Here, Tcp, "127.0.0.1:8005"), "10.0.0.1");

        // Without the segment's instances, the segment leaves the set and the chain.
        state.write("node.yaml", &node(3, &[]));
        apply_with_small_bridges(&mut dataplane, &nftables_desired(&state));
        assert!(common::link(None, "kudo-seg1").is_none());
        assert_eq!(
            sh("nft list set inet kudonet bridges"),
            bridges_set("\"kudo0\"")
        );
        assert!(!kudo_lines(false).contains("kudo-seg1"));
        assert_eq!(seen(&from(2), Tcp, &at(1, 80)), address(2).to_string());

        reconcile::teardown(&mut dataplane, &mut NoProgress).unwrap();
        assert_eq!(nft_kudonet(), None);
        assert_eq!(kudo_lines(false), "");
    });
}
