//! One node over IPv6 on a real kernel, in a sandbox: a dual-stack node and an IPv6-only
//! node keep every connectivity promise over IPv6 with real packets (instance to instance
//! keeping the source, to the gateway, egress masqueraded, published TCP and UDP ports from
//! outside, from the node and by hairpin), from the first packet after `apply`; a second
//! apply changes nothing to the byte; foreign ip6tables rules survive apply and teardown;
//! teardown takes every IPv6 object of kudonet; a node moves from IPv4-only to dual stack
//! and back; drift over IPv6 is repaired; status shows both families. The end-to-end
//! promises are proved with either firewall: kudonet's chains in iptables and ip6tables, or
//! its nftables table `inet kudonet`.
//!
//! The sandbox's own namespace is the node. "outside" is a namespace behind the node's
//! uplink `eth0` (192.0.2.10/24 and 2001:db8::10/64; outside is 192.0.2.254 and
//! 2001:db8::fe, the node's default gateway of each family).

mod common;

use common::cli::{Run, kudonet};
use common::controller::Controller;
use common::kernel::KUDO_FORWARD_ONLY;
use common::probes::{seen, serve};
use common::{Firewall, StateDir, kudo_lines, netns, nft_kudonet, setup_outside_dual_stack, sh};

use std::net::SocketAddr;

use kudonet::probe::{self, EchoServer, Place};
use kudonet::spec::Protocol::{Tcp, Udp};
use serde_json::Value;

/// The dual-stack node of the kernel tests (`common::DUAL_STACK`).
const DUAL: &str = common::DUAL_STACK;

/// `DUAL` without IPv4.
const IPV6_ONLY: &str = r#"
kind: Node
name: node-a
cidr: "fd00:10::1/64"
---
kind: Instance
name: web
address: "fd00:10::2/64"
ports:
  - hostPort: 8080
    instancePort: 80
  - hostPort: 5353
    instancePort: 53
    protocol: udp
---
kind: Instance
name: db
address: "fd00:10::3/64"
"#;

/// `DUAL` without IPv6.
const IPV4_ONLY: &str = r#"
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
  - hostPort: 5353
    instancePort: 53
    protocol: udp
---
kind: Instance
name: db
address: 10.0.0.3/24
"#;

/// Foreign ip6tables state a real host has: a DROP forward policy, a Docker-like chain and
/// its jump, an admin's rules. kudonet must work with them and leave them byte for byte.
const FOREIGN_IP6_RULES: &str = "
ip6tables -w -P FORWARD DROP
ip6tables -w -N DOCKER-USER
ip6tables -w -A DOCKER-USER -j RETURN
ip6tables -w -A FORWARD -j DOCKER-USER
ip6tables -w -A FORWARD -i eth9 -j DROP
ip6tables -w -t nat -A POSTROUTING -s fd00:17::/64 ! -o docker0 -j MASQUERADE
ip6tables -w -t nat -A PREROUTING -d 2001:db8:7::7/128 -j RETURN
";

/// `iptables-save` (`ip6tables-save` with `ipv6`) of every table, without its comment lines
/// (they hold the time of the dump).
fn save(ipv6: bool) -> String {
    let save = if ipv6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    sh(&format!("{save} | grep -v '^#' || true"))
}

/// `save(true)` without the packet counters of the built-in chains, which traffic moves.
fn ipv6_rules() -> String {
    sh("ip6tables-save | grep -v '^#' | sed 's/ \\[[0-9]*:[0-9]*\\]$//'")
}

/// The lines of `save` that are not kudonet's, without the packet counters of the built-in
/// chains (traffic moves them: an instance's first packets are bridged through FORWARD
/// before kudonet's rules are in place).
fn foreign(save: &str) -> Vec<String> {
    save.lines()
        .filter(|line| !line.contains("KUDO-") && !line.contains("--comment kudonet"))
        .map(|line| match line.rsplit_once(" [") {
            Some((chain, _)) if line.starts_with(':') => chain.to_string(),
            _ => line.to_string(),
        })
        .collect()
}

/// `ip -6 -o addr show` of namespace `netns` (the node with None), each line as
/// `DEVICE ADDRESS/PREFIX FLAGS...`.
fn ipv6_addresses(netns: Option<&str>) -> String {
    let prefix = netns.map_or(String::new(), |netns| format!("-n {netns} "));
    sh(&format!(
        r#"ip {prefix}-6 -o addr show | awk '{{$1=""; $3=""; print}}' \
          | sed -e 's/ *\\ *valid_lft.*//' -e 's/^ *//' -e 's/  */ /g'"#
    ))
}

/// `ip -6 route show` of namespace `netns` (the node with None).
fn ipv6_routes(netns: Option<&str>) -> String {
    let prefix = netns.map_or(String::new(), |netns| format!("-n {netns} "));
    sh(&format!("ip {prefix}-6 route show"))
}

/// `kudonet ARGS...`, which must succeed.
#[track_caller]
fn kudonet_ok(args: &[&str]) -> Run {
    let run = kudonet(args);
    run.expect_success();
    run
}

/// Echo servers: web TCP 80 and UDP 53, db TCP 80, the node TCP 7000, outside TCP 9000.
fn start_servers() -> Vec<EchoServer> {
    vec![
        serve(&netns("kudo-web"), Tcp, 80),
        serve(&netns("kudo-web"), Udp, 53),
        serve(&netns("kudo-db"), Tcp, 80),
        serve(&Place::Here, Tcp, 7000),
        serve(&netns("outside"), Tcp, 9000),
    ]
}

/// Every promise of a node over IPv6 (the servers of `start_servers` must be running).
/// The first of them is the first packet an instance sends after apply.
#[track_caller]
fn assert_ipv6_promises() {
    let (web, db, outside) = (netns("kudo-web"), netns("kudo-db"), netns("outside"));
    // Instance <-> instance on the node, sources preserved.
    assert_eq!(seen(&db, Tcp, "[fd00:10::2]:80"), "fd00:10::3");
    assert_eq!(seen(&web, Tcp, "[fd00:10::3]:80"), "fd00:10::2");
    // Instance -> node (its gateway); node -> instance.
    assert_eq!(seen(&web, Tcp, "[fd00:10::1]:7000"), "fd00:10::2");
    assert_eq!(seen(&Place::Here, Tcp, "[fd00:10::2]:80"), "fd00:10::1");
    // Instance -> outside, masqueraded behind the node's uplink address.
    assert_eq!(seen(&web, Tcp, "[2001:db8::fe]:9000"), "2001:db8::10");
    assert_eq!(seen(&db, Tcp, "[2001:db8::fe]:9000"), "2001:db8::10");
    // Outside -> published ports, TCP and UDP; the instance sees the real client.
    assert_eq!(seen(&outside, Tcp, "[2001:db8::10]:8080"), "2001:db8::fe");
    assert_eq!(seen(&outside, Udp, "[2001:db8::10]:5353"), "2001:db8::fe");
    // The node itself, via its own IPv6 addresses (uplink and bridge).
    assert_eq!(seen(&Place::Here, Tcp, "[2001:db8::10]:8080"), "fd00:10::1");
    assert_eq!(seen(&Place::Here, Udp, "[2001:db8::10]:5353"), "fd00:10::1");
    assert_eq!(seen(&Place::Here, Tcp, "[fd00:10::1]:8080"), "fd00:10::1");
    assert_eq!(seen(&Place::Here, Udp, "[fd00:10::1]:5353"), "fd00:10::1");
    // Hairpin: an instance to the node's address, to a port of another instance and of
    // itself.
    assert_eq!(seen(&db, Tcp, "[2001:db8::10]:8080"), "fd00:10::1");
    assert_eq!(seen(&db, Udp, "[2001:db8::10]:5353"), "fd00:10::1");
    assert_eq!(seen(&web, Tcp, "[2001:db8::10]:8080"), "fd00:10::1");
    assert_eq!(seen(&web, Udp, "[2001:db8::10]:5353"), "fd00:10::1");
    assert_eq!(seen(&db, Tcp, "[fd00:10::1]:8080"), "fd00:10::1");
    assert_eq!(seen(&web, Tcp, "[fd00:10::1]:8080"), "fd00:10::1");
    // [::1] is not a published path (IPv6 has no route_localnet): nothing answers there,
    // and a service of the node's own on [::1] and a published port keeps it.
    let refused = probe::ask(
        &Place::Here,
        Tcp,
        "[::1]:8080".parse::<SocketAddr>().unwrap(),
    );
    assert!(refused.is_err(), "{refused:?}");
    let own = "[::1]:8080".parse::<SocketAddr>().unwrap();
    let _own = probe::serve(&Place::Here, Tcp, own).unwrap();
    assert_eq!(seen(&Place::Here, Tcp, "[::1]:8080"), "::1");
}

/// The IPv4 promises of `DUAL` (the servers of `start_servers` must be running).
#[track_caller]
fn assert_ipv4_promises() {
    let (web, db, outside) = (netns("kudo-web"), netns("kudo-db"), netns("outside"));
    assert_eq!(seen(&db, Tcp, "10.0.0.2:80"), "10.0.0.3");
    assert_eq!(seen(&web, Tcp, "10.0.0.1:7000"), "10.0.0.2");
    assert_eq!(seen(&web, Tcp, "192.0.2.254:9000"), "192.0.2.10");
    assert_eq!(seen(&outside, Tcp, "192.0.2.10:8080"), "192.0.2.254");
    assert_eq!(seen(&outside, Udp, "192.0.2.10:5353"), "192.0.2.254");
    assert_eq!(seen(&Place::Here, Tcp, "127.0.0.1:8080"), "10.0.0.1");
    assert_eq!(seen(&db, Tcp, "192.0.2.10:8080"), "10.0.0.1");
    assert_eq!(seen(&web, Tcp, "192.0.2.10:8080"), "10.0.0.1");
}

fn sysctl(key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn dual_stack_node_end_to_end_with_iptables() {
    common::sandboxed("dual_stack_node_end_to_end_with_iptables", || {
        dual_stack_node_end_to_end(Firewall::Iptables)
    });
}

#[test]
fn dual_stack_node_end_to_end_with_nftables() {
    common::sandboxed("dual_stack_node_end_to_end_with_nftables", || {
        dual_stack_node_end_to_end(Firewall::Nftables)
    });
}

/// `DUAL` applied with kudonet's rules in `backend`, on a node whose ip6tables FORWARD
/// chain drops by policy: both families' promises, idempotence, teardown.
fn dual_stack_node_end_to_end(backend: Firewall) {
    setup_outside_dual_stack();
    sh(FOREIGN_IP6_RULES);
    let foreign_before = foreign(&save(true));
    let node_addresses_before = ipv6_addresses(None);
    let node_routes_before = ipv6_routes(None);
    let state = StateDir::new(DUAL);

    kudonet_ok(&backend.args(&["apply", state.path()]));
    // Usable at once: no tentative address anywhere, no link-local address inside.
    for instance in ["kudo-web", "kudo-db"] {
        let addresses = ipv6_addresses(Some(instance));
        assert!(!addresses.contains("tentative"), "{addresses}");
        assert!(!addresses.contains("fe80"), "{addresses}");
    }
    assert_eq!(
        ipv6_addresses(Some("kudo-web")),
        "lo ::1/128 scope host\neth0 fd00:10::2/64 scope global nodad\n"
    );
    assert_eq!(
        ipv6_routes(Some("kudo-web")),
        "fd00:10::/64 dev eth0 proto kernel metric 256 pref medium\n\
         default via fd00:10::1 dev eth0 proto 75 metric 1024 pref medium\n"
    );
    assert!(!ipv6_addresses(None).contains("tentative"));
    assert_dual_stack_rules(backend);

    let _servers = start_servers();
    assert_ipv6_promises();
    assert_ipv4_promises();
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl("net.ipv4.ip_forward"), "1");

    // Idempotent to the byte: no change, the same rules of both families.
    let (ipv4_rules, ipv6_rules) = (save(false), save(true));
    kudonet(&backend.args(&["apply", state.path()])).expect(0, "No changes.\n", "");
    assert_eq!(save(false), ipv4_rules);
    assert_eq!(save(true), ipv6_rules);
    assert_dual_stack_rules(backend);
    assert_eq!(
        foreign(&ipv6_rules),
        foreign_before,
        "foreign rules in order"
    );

    // Teardown: no ip6tables chain or jump, nftables table, address or route of kudonet;
    // every foreign rule as it was.
    kudonet_ok(&backend.args(&["teardown"]));
    let after = save(true);
    assert!(
        !after.contains("KUDO") && !after.contains("kudonet"),
        "{after}"
    );
    assert_eq!(foreign(&after), foreign_before);
    assert_eq!(nft_kudonet(), None);
    assert_eq!(ipv6_addresses(None), node_addresses_before);
    assert_eq!(ipv6_routes(None), node_routes_before);
}

/// kudonet's rules for `DUAL` in `backend`, exactly; ip6tables' FORWARD drops by policy.
#[track_caller]
fn assert_dual_stack_rules(backend: Firewall) {
    match backend {
        Firewall::Iptables => assert_eq!(nft_kudonet(), None, "no nftables table of kudonet's"),
        Firewall::Nftables => {
            // iptables' FORWARD accepts: nothing of kudonet's there; ip6tables' drops: the
            // owned KUDO-FORWARD chain alone.
            assert_eq!(kudo_lines(false), "");
            assert_eq!(kudo_lines(true), KUDO_FORWARD_ONLY);
            assert_eq!(
                nft_kudonet().as_deref(),
                Some(include_str!("nft/dual-stack.nft"))
            );
        }
    }
}

#[test]
fn ipv6_only_node_end_to_end_with_iptables() {
    common::sandboxed("ipv6_only_node_end_to_end_with_iptables", || {
        ipv6_only_node_end_to_end(Firewall::Iptables)
    });
}

#[test]
fn ipv6_only_node_end_to_end_with_nftables() {
    common::sandboxed("ipv6_only_node_end_to_end_with_nftables", || {
        ipv6_only_node_end_to_end(Firewall::Nftables)
    });
}

/// `IPV6_ONLY` applied with kudonet's rules in `backend`: nothing of IPv4 is touched.
fn ipv6_only_node_end_to_end(backend: Firewall) {
    setup_outside_dual_stack();
    let ipv4_before = save(false);
    let state = StateDir::new(IPV6_ONLY);

    kudonet_ok(&backend.args(&["apply", state.path()]));
    assert_eq!(
        ipv6_addresses(Some("kudo-db")),
        "lo ::1/128 scope host\neth0 fd00:10::3/64 scope global nodad\n"
    );
    let _servers = start_servers();
    assert_ipv6_promises();

    // Nothing of IPv4: no iptables chain, ip_forward untouched, no IPv4 address.
    assert_eq!(save(false), ipv4_before);
    assert_eq!(sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(
        common::addresses(Some("kudo-web"), "eth0"),
        Vec::<String>::new()
    );
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    match backend {
        Firewall::Iptables => assert_eq!(nft_kudonet(), None),
        Firewall::Nftables => {
            assert_eq!(kudo_lines(true), "");
            assert_eq!(
                nft_kudonet().as_deref(),
                Some(include_str!("nft/ipv6-only.nft"))
            );
        }
    }

    let ipv6_rules = save(true);
    kudonet(&backend.args(&["apply", state.path()])).expect(0, "No changes.\n", "");
    assert_eq!(save(true), ipv6_rules);
    assert_eq!(save(false), ipv4_before);

    kudonet_ok(&backend.args(&["teardown"]));
    assert!(!save(true).contains("KUDO"));
    assert_eq!(save(false), ipv4_before);
    assert_eq!(nft_kudonet(), None);
}

#[test]
fn ipv4_node_goes_dual_stack_and_back() {
    common::sandboxed("ipv4_node_goes_dual_stack_and_back", || {
        setup_outside_dual_stack();
        let state = StateDir::new(IPV4_ONLY);
        kudonet_ok(&["apply", state.path()]);
        assert_eq!(save(true), "", "no ip6tables table at all");
        // db as an older kudonet made it: IPv6 off in its namespace.
        sh(
            "ip netns exec kudo-db sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
            net.ipv6.conf.default.disable_ipv6=1",
        );
        assert_eq!(ipv6_addresses(Some("kudo-db")), "");

        // Dual stack: instances made while the node was IPv4-only get their IPv6 address;
        // kudonet turns IPv6 back on in db's namespace.
        state.write("node.yaml", DUAL);
        kudonet_ok(&["apply", state.path()]);
        assert_eq!(
            ipv6_addresses(Some("kudo-web")),
            "lo ::1/128 scope host\neth0 fd00:10::2/64 scope global nodad\n"
        );
        assert_eq!(
            sh("ip -n kudo-db -6 -o addr show dev eth0 | awk '{print $4}'"),
            "fd00:10::3/64\n"
        );
        assert_eq!(
            sh("ip netns exec kudo-db sysctl -n net.ipv6.conf.eth0.disable_ipv6"),
            "0\n"
        );
        {
            let _servers = start_servers();
            assert_ipv6_promises();
            assert_ipv4_promises();
        }
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");

        // Back to IPv4-only: no IPv6 address, route or ip6tables chain of kudonet is left.
        state.write("node.yaml", IPV4_ONLY);
        kudonet_ok(&["apply", state.path()]);
        for instance in ["kudo-web", "kudo-db"] {
            assert_eq!(
                sh(&format!("ip -n {instance} -6 -o addr show dev eth0")),
                "",
                "{instance}"
            );
            assert_eq!(ipv6_routes(Some(instance)), "", "{instance}");
        }
        assert!(!ipv6_addresses(None).contains("fd00:10"));
        assert!(!ipv6_routes(None).contains("fd00:10"));
        // The tables stay, empty: no chain or rule of kudonet.
        assert_eq!(
            save(true),
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
             *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
        );
        {
            let _servers = start_servers();
            assert_ipv4_promises();
        }
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
    });
}

#[test]
fn ipv6_drift_is_repaired() {
    common::sandboxed("ipv6_drift_is_repaired", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);
        kudonet_ok(&["apply", state.path()]);
        let _servers = start_servers();

        // An instance's IPv6 address, gone (its subnet route and default route go with it).
        sh("ip -n kudo-web addr del fd00:10::2/64 dev eth0");
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            "+ address fd00:10::2/64 on kudo-web/eth0\n\
             ~ route default via fd00:10::1 in kudo-web\n\
             Apply complete: 1 added, 1 changed, 0 destroyed.\n",
            "",
        );
        assert_eq!(
            seen(&netns("kudo-web"), Tcp, "[fd00:10::3]:80"),
            "fd00:10::2"
        );

        // Its IPv6 default route alone.
        sh("ip -n kudo-db -6 route del default");
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            "~ route default via fd00:10::1 in kudo-db\n\
             Apply complete: 0 added, 1 changed, 0 destroyed.\n",
            "",
        );
        assert_eq!(
            seen(&netns("kudo-db"), Tcp, "[2001:db8::fe]:9000"),
            "2001:db8::10"
        );

        // ip6tables nat flushed: published ports and masquerade come back.
        sh("ip6tables -w -t nat -F");
        let apply = kudonet_ok(&["apply", state.path()]);
        assert_eq!(
            apply.stdout,
            "Apply complete: 0 added, 1 changed, 0 destroyed.\n"
        );
        assert_eq!(
            seen(&netns("outside"), Tcp, "[2001:db8::10]:8080"),
            "2001:db8::fe"
        );
        assert_eq!(
            seen(&netns("kudo-db"), Tcp, "[2001:db8::fe]:9000"),
            "2001:db8::10"
        );
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
    });
}

#[test]
fn status_shows_both_families() {
    common::sandboxed("status_shows_both_families", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);
        kudonet_ok(&["apply", state.path()]);

        let json = kudonet_ok(&["status", state.path(), "--output", "json"]);
        let document: Value = serde_json::from_str(&json.stdout).unwrap();
        let web = &document["instances"][1];
        assert_eq!(web["name"], "web");
        assert_eq!(web["phase"], "Ready");
        assert_eq!(web["address"], "10.0.0.2/24");
        assert_eq!(
            web["addresses"],
            serde_json::json!(["10.0.0.2/24", "fd00:10::2/64"])
        );

        kudonet(&["status", state.path()]).expect(
            0,
            "NAME  PHASE  ADDRESS                    NETNS                MESSAGE\n\
             db    Ready  10.0.0.3/24,fd00:10::3/64  /run/netns/kudo-db\n\
             web   Ready  10.0.0.2/24,fd00:10::2/64  /run/netns/kudo-web\n",
            "",
        );
    });
}

/// Whether `kudonet plan` finds nothing to do (it only reads, so it may run beside `run`).
fn plan_is_empty(state: &StateDir) -> bool {
    let plan = kudonet(&["plan", state.path()]);
    plan.code == 0 && plan.stdout == "No changes.\n"
}

#[test]
fn ipv6_drift_is_repaired_by_the_controller() {
    common::sandboxed("ipv6_drift_is_repaired_by_the_controller", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);
        let controller = Controller::start(&state, &["--resync", "1"]);
        controller.wait_ready(&["db", "web"]);
        controller.wait_until("the node is converged", || plan_is_empty(&state));
        let rules = ipv6_rules();
        let _servers = start_servers();
        assert_eq!(
            seen(&netns("kudo-db"), Tcp, "[fd00:10::2]:80"),
            "fd00:10::3"
        );

        sh("ip -n kudo-web addr del fd00:10::2/64 dev eth0");
        controller.wait_until("web's IPv6 address and route are back", || {
            plan_is_empty(&state)
                && ipv6_routes(Some("kudo-web")).contains("default via fd00:10::1")
        });
        assert_eq!(
            seen(&netns("kudo-db"), Tcp, "[fd00:10::2]:80"),
            "fd00:10::3"
        );

        sh("ip6tables -w -t nat -F");
        controller.wait_until("the ip6tables nat table is back", || {
            plan_is_empty(&state) && ipv6_rules() == rules
        });
        assert_eq!(
            seen(&netns("outside"), Tcp, "[2001:db8::10]:8080"),
            "2001:db8::fe"
        );
        assert_eq!(
            seen(&netns("kudo-web"), Tcp, "[2001:db8::fe]:9000"),
            "2001:db8::10"
        );
        controller.stop();
    });
}
