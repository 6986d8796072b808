//! One node on a real kernel, in a sandbox: `kudonet apply` builds it, real packets prove
//! every connectivity case kudonet promises (instance to instance, node to instance,
//! published ports, outbound masquerade), a second apply changes nothing, removal and
//! teardown take exactly kudonet's objects, and foreign firewall rules survive untouched.
//! Each promise is proved with either firewall: kudonet's `KUDO-*` chains in iptables, or
//! its nftables table `inet kudonet`.
//!
//! The sandbox's own namespace is the node. "outside" is a namespace behind the node's
//! uplink `eth0` (203.0.113.1/24; outside is 203.0.113.254 and the default gateway).

mod common;

use common::cli::{kudonet_output as kudonet, stdout};
use common::kernel::KUDO_FORWARD_ONLY;
use common::{Firewall, addr, firewall, kudo_lines, netns, nft_kudonet, seen, setup_outside};

use std::path::Path;

use kudonet::probe::{self, Place};
use kudonet::spec::Protocol::{Tcp, Udp};

const NODE: &str = r#"
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
  - hostPort: 9443
    instancePort: 443
    hostIp: 203.0.113.1
---
kind: Instance
name: db
address: 10.0.0.3/24
"#;

/// Foreign firewall state a real host has: a DROP forward policy, Docker-like chains, an
/// admin's rules. kudonet must work with them and leave them exactly as they are.
const FOREIGN_RULES: &str = "
iptables -w -P FORWARD DROP
iptables -w -N DOCKER-USER
iptables -w -A DOCKER-USER -j RETURN
iptables -w -A FORWARD -j DOCKER-USER
iptables -w -A FORWARD -i eth9 -j DROP
iptables -w -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
iptables -w -t nat -A PREROUTING -d 198.51.100.7/32 -j RETURN
";

fn foreign_rules(firewall: &str) -> Vec<String> {
    firewall
        .lines()
        .filter(|line| !line.contains("KUDO-"))
        .map(str::to_string)
        .collect()
}

/// kudonet's iptables rules for `NODE` (`iptables-save`'s lines naming a `KUDO-` chain:
/// filter, then nat).
const IPTABLES_RULES: &str = "\
:KUDO-FORWARD - [0:0]
-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-A KUDO-FORWARD -i kudo0 -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate DNAT -j ACCEPT
:KUDO-OUTPUT - [0:0]
:KUDO-PORTS - [0:0]
:KUDO-POSTROUTING - [0:0]
:KUDO-PREROUTING - [0:0]
-A PREROUTING -m comment --comment kudonet -j KUDO-PREROUTING
-A OUTPUT -m comment --comment kudonet -j KUDO-OUTPUT
-A POSTROUTING -m comment --comment kudonet -j KUDO-POSTROUTING
-A KUDO-OUTPUT -m addrtype --dst-type LOCAL -j KUDO-PORTS
-A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80
-A KUDO-PORTS -p udp -m udp --dport 5353 -m comment --comment web -j DNAT --to-destination 10.0.0.2:53
-A KUDO-PORTS -d 203.0.113.1/32 -p tcp -m tcp --dport 9443 -m comment --comment web -j DNAT --to-destination 10.0.0.2:443
-A KUDO-POSTROUTING -s 10.0.0.0/24 -o kudo0 -m conntrack --ctstate DNAT -j MASQUERADE
-A KUDO-POSTROUTING -o kudo0 -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE
-A KUDO-POSTROUTING -s 10.0.0.0/24 -d 10.0.0.0/24 -j RETURN
-A KUDO-POSTROUTING -s 10.0.0.0/24 -o eth0 -j MASQUERADE
-A KUDO-PREROUTING -m addrtype --dst-type LOCAL -j KUDO-PORTS
";

/// `nft list table inet kudonet` for `NODE`.
const NFTABLES_TABLE: &str = include_str!("nft/node-ipv4.nft");

/// What the firewall of `firewall` holds of kudonet's while `NODE` is applied, exactly:
/// iptables' `KUDO-` lines and `inet kudonet`.
#[track_caller]
fn assert_kudonets_rules(firewall: Firewall) {
    match firewall {
        Firewall::Iptables => {
            assert_eq!(kudo_lines(false), IPTABLES_RULES);
            assert_eq!(nft_kudonet(), None, "no nftables table of kudonet's");
        }
        Firewall::Nftables => {
            assert_eq!(kudo_lines(false), KUDO_FORWARD_ONLY);
            assert_eq!(nft_kudonet().as_deref(), Some(NFTABLES_TABLE));
        }
    }
    assert_eq!(kudo_lines(true), "", "an IPv4 node: nothing in ip6tables");
}

#[test]
fn one_node_end_to_end_with_iptables() {
    common::sandboxed("one_node_end_to_end_with_iptables", || {
        one_node_end_to_end(Firewall::Iptables)
    });
}

#[test]
fn one_node_end_to_end_with_nftables() {
    common::sandboxed("one_node_end_to_end_with_nftables", || {
        one_node_end_to_end(Firewall::Nftables)
    });
}

/// The scenario of the file, with kudonet's rules in `backend`.
fn one_node_end_to_end(backend: Firewall) {
    setup_outside();
    common::sh(FOREIGN_RULES);
    let foreign_before = foreign_rules(&firewall());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node.yaml"), NODE).unwrap();
    let dir = dir.path().to_str().unwrap();

    let apply = kudonet(&backend.args(&["apply", dir]));
    assert!(
        apply.status.success(),
        "apply failed: {}{}",
        stdout(&apply),
        String::from_utf8_lossy(&apply.stderr)
    );
    // Without -v, the summary alone.
    let summary = match backend {
        Firewall::Iptables => "Apply complete: 8 added, 17 changed, 0 destroyed.\n",
        Firewall::Nftables => "Apply complete: 9 added, 16 changed, 0 destroyed.\n",
    };
    assert_eq!(stdout(&apply), summary);
    assert_kudonets_rules(backend);

    let web = netns("kudo-web");
    let db = netns("kudo-db");
    let outside = netns("outside");
    let _web80 = probe::serve(&web, Tcp, addr("0.0.0.0:80")).unwrap();
    let _web53 = probe::serve(&web, Udp, addr("0.0.0.0:53")).unwrap();
    let _web443 = probe::serve(&web, Tcp, addr("0.0.0.0:443")).unwrap();
    let _db80 = probe::serve(&db, Tcp, addr("0.0.0.0:80")).unwrap();
    let _node = probe::serve(&Place::Here, Tcp, addr("0.0.0.0:7000")).unwrap();
    let _outside = probe::serve(&outside, Tcp, addr("0.0.0.0:9000")).unwrap();

    // Instance <-> instance on the node, sources preserved.
    assert_eq!(seen(&db, Tcp, "10.0.0.2:80"), "10.0.0.3");
    assert_eq!(seen(&web, Tcp, "10.0.0.3:80"), "10.0.0.2");
    // Instance -> node (its gateway).
    assert_eq!(seen(&web, Tcp, "10.0.0.1:7000"), "10.0.0.2");
    // Node -> instance.
    assert_eq!(seen(&Place::Here, Tcp, "10.0.0.2:80"), "10.0.0.1");
    // Instance -> outside, masqueraded behind the node's uplink address.
    assert_eq!(seen(&web, Tcp, "203.0.113.254:9000"), "203.0.113.1");
    // Outside -> published ports, TCP and UDP; the instance sees the real client.
    assert_eq!(seen(&outside, Tcp, "203.0.113.1:8080"), "203.0.113.254");
    assert_eq!(seen(&outside, Udp, "203.0.113.1:5353"), "203.0.113.254");
    assert_eq!(seen(&outside, Tcp, "203.0.113.1:9443"), "203.0.113.254");
    // The node itself, via localhost and via its own addresses.
    assert_eq!(seen(&Place::Here, Tcp, "127.0.0.1:8080"), "10.0.0.1");
    assert_eq!(seen(&Place::Here, Udp, "127.0.0.1:5353"), "10.0.0.1");
    assert_eq!(seen(&Place::Here, Tcp, "203.0.113.1:8080"), "10.0.0.1");
    // Hairpin: instances reaching a published port of their own node, the target itself too.
    assert_eq!(seen(&db, Tcp, "203.0.113.1:8080"), "10.0.0.1");
    assert_eq!(seen(&web, Tcp, "203.0.113.1:8080"), "10.0.0.1");
    assert_eq!(seen(&web, Tcp, "10.0.0.1:8080"), "10.0.0.1");
    // hostIp is honoured: 9443 is published on 203.0.113.1 only.
    assert!(probe::ask(&Place::Here, Tcp, addr("127.0.0.1:9443")).is_err());

    // Idempotent to the byte: no change, same rules, same links.
    let rules = firewall();
    let links = common::sh("ip -d -o link show | sed 's/ promiscuity.*//'");
    let again = kudonet(&backend.args(&["apply", dir]));
    assert!(again.status.success());
    assert_eq!(stdout(&again), "No changes.\n");
    assert_eq!(firewall(), rules);
    assert_kudonets_rules(backend);
    assert_eq!(
        common::sh("ip -d -o link show | sed 's/ promiscuity.*//'"),
        links
    );
    assert_eq!(
        stdout(&kudonet(&backend.args(&["plan", dir]))),
        "No changes.\n"
    );
    assert_eq!(
        foreign_rules(&rules),
        foreign_before,
        "foreign rules unchanged and in order"
    );

    // Removing an instance removes exactly its objects.
    std::fs::write(
        Path::new(dir).join("node.yaml"),
        NODE.split("---\nkind: Instance\nname: db").next().unwrap(),
    )
    .unwrap();
    let remove = kudonet(&backend.args(&["apply", "-v", dir]));
    assert!(
        remove.status.success(),
        "{}",
        String::from_utf8_lossy(&remove.stderr)
    );
    assert_eq!(
        stdout(&remove),
        "- namespace kudo-db\nApply complete: 0 added, 0 changed, 1 destroyed.\n"
    );
    assert_eq!(seen(&outside, Tcp, "203.0.113.1:8080"), "203.0.113.254");
    // The namespace took its veth with it: nothing of db is left on the node.
    assert!(common::link(None, "kv14e07b53ba1e3").is_none());
    assert!(!common::sh("cat /proc/self/mountinfo").contains("kudo-db"));
    assert!(!firewall().contains("10.0.0.3"));
    assert!(!nft_kudonet().unwrap_or_default().contains("10.0.0.3"));
    assert_eq!(
        stdout(&kudonet(&backend.args(&["plan", dir]))),
        "No changes.\n"
    );

    // Teardown leaves no kudonet object and every foreign one.
    let teardown = kudonet(&backend.args(&["teardown"]));
    assert!(
        teardown.status.success(),
        "{}",
        String::from_utf8_lossy(&teardown.stderr)
    );
    assert_eq!(common::sh("ls /run/netns"), "outside\n");
    assert_eq!(
        common::sh("ip -o link show | cut -d: -f2 | tr -d ' ' | sed 's/@.*//'"),
        "lo\neth0\n"
    );
    let after = firewall();
    assert!(!after.contains("KUDO"), "{after}");
    assert_eq!(foreign_rules(&after), foreign_before);
    assert_eq!(nft_kudonet(), None);
}
