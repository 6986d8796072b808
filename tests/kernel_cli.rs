//! The `kudonet` binary against a real kernel, one scenario per test, each in its own
//! sandbox (see `common::sandboxed`): foreign objects in kudonet's way, missing tools and
//! privileges, drift, status, MTU, crash leftovers, the uplink, teardown and rebuild.
//! Every test asserts the exact output and exit code, and the kernel state it leaves.
//!
//! The sandbox's own namespace is the node. Where packets must leave it, "outside" is a
//! namespace behind the node's uplink `eth0` (203.0.113.1/24; outside is 203.0.113.254 and
//! the node's default gateway).

mod common;

use common::cli::{kudonet, run_command};
use common::{
    KUDONET, StateDir, addr, addresses, firewall, is_up, link, link_names, namespaces, netns,
    seen_tcp as seen, setup_outside,
};

use std::process::Command;

use kudonet::probe::{self, Place};
use kudonet::spec::Protocol::Tcp;
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

/// The filter table of a fresh node with bridge kudo0, as `plan` and `apply` print it.
const FILTER_ADDED: &str = "\
~ iptables table filter
    + -N KUDO-FORWARD
    + -A KUDO-FORWARD -i kudo0 -j ACCEPT
    + -A KUDO-FORWARD -o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    + -A KUDO-FORWARD -o kudo0 -m conntrack --ctstate DNAT -j ACCEPT
    + -A FORWARD -m comment --comment kudonet -j KUDO-FORWARD
";

/// The nat table of a fresh node for `NODE`, with `masquerade` as the uplink rule.
fn nat_added(masquerade: &str) -> String {
    format!(
        "\
~ iptables table nat
    + -N KUDO-OUTPUT
    + -A KUDO-OUTPUT -m addrtype --dst-type LOCAL -j KUDO-PORTS
    + -N KUDO-PORTS
    + -A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80
    + -N KUDO-POSTROUTING
    + -A KUDO-POSTROUTING -s 10.0.0.0/24 -o kudo0 -m conntrack --ctstate DNAT -j MASQUERADE
    + -A KUDO-POSTROUTING -o kudo0 -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE
    + -A KUDO-POSTROUTING -s 10.0.0.0/24 -d 10.0.0.0/24 -j RETURN
    + -A KUDO-POSTROUTING {masquerade}
    + -N KUDO-PREROUTING
    + -A KUDO-PREROUTING -m addrtype --dst-type LOCAL -j KUDO-PORTS
    + -A OUTPUT -m comment --comment kudonet -j KUDO-OUTPUT
    + -A POSTROUTING -m comment --comment kudonet -j KUDO-POSTROUTING
    + -A PREROUTING -m comment --comment kudonet -j KUDO-PREROUTING
"
    )
}

/// The actions that build instance `name` (with `veth`, address `address`) from nothing.
fn instance_added(name: &str, veth: &str, address: &str) -> String {
    format!(
        "\
+ namespace kudo-{name}
+ veth {veth} <-> kudo-{name}/eth0 for instance {name}
~ link {veth}: attach to bridge kudo0
~ link {veth}: hairpin on
~ link {veth}: up
~ link kudo-{name}/lo: up
+ address {address} on kudo-{name}/eth0
~ link kudo-{name}/eth0: up
~ route default via 10.0.0.1 in kudo-{name}
"
    )
}

/// What `apply` prints building `NODE` on a node without kudonet objects; `ip_forward`:
/// whether the sysctl still has to be set.
fn fresh_apply(ip_forward: bool, masquerade: &str) -> String {
    let forward = if ip_forward {
        "~ sysctl net.ipv4.ip_forward = 1\n"
    } else {
        ""
    };
    format!(
        "+ bridge kudo0\n+ address 10.0.0.1/24 on kudo0\n~ link kudo0: up\n{forward}\
         ~ sysctl net.ipv4.conf.kudo0.route_localnet = 1\n{}{}{FILTER_ADDED}{}",
        instance_added("db", DB_VETH, "10.0.0.3/24"),
        instance_added("web", WEB_VETH, "10.0.0.2/24"),
        nat_added(masquerade),
    )
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .unwrap()
        .trim()
        .to_string()
}

/// The DNAT rule of web's published port, left out while web is held back.
const WEB_DNAT: &str = "    + -A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80\n";

const APPLY_INCOMPLETE: &str = "the node does not match the desired state.\n";

#[test]
fn foreign_link_on_the_bridge_name_is_left_alone() {
    common::sandboxed("foreign_link_on_the_bridge_name_is_left_alone", || {
        let state = StateDir::new(NODE);
        let firewall_before = firewall();
        for (create, description) in [
            (
                "ip link add kudo0 type bridge",
                "a bridge without kudonet's mark",
            ),
            (
                "ip link add kudo0 type bridge && ip link set kudo0 alias docker",
                "a bridge with alias \"docker\"",
            ),
            (
                "ip link add kudo0 type veth peer name kudo0p",
                "a veth without kudonet's mark",
            ),
        ] {
            common::sh(create);
            let before = link(None, "kudo0").unwrap();
            let conflict = format!(
                "conflict: link kudo0 exists and is not kudonet's bridge ({description}): \
                 kudonet leaves it alone; delete or rename it, or set `bridge:` on Node \
                 \"node-a\" to a free name\n"
            );

            kudonet(&["apply", state.path()]).expect(
                1,
                "",
                &format!("{conflict}Apply incomplete: 0 added, 0 changed, 0 destroyed; {APPLY_INCOMPLETE}"),
            );
            kudonet(&["plan", state.path()]).expect(
                0,
                &format!("Plan: 0 to add, 0 to change, 0 to destroy.\n{conflict}"),
                "",
            );

            // Untouched: the same link, down, without address or master; nothing else built.
            let after = link(None, "kudo0").unwrap();
            assert_eq!(after, before, "the foreign link is exactly as it was");
            assert!(!is_up(&after));
            assert_eq!(addresses(None, "kudo0"), Vec::<String>::new());
            assert_eq!(namespaces(), Vec::<String>::new());
            assert_eq!(firewall(), firewall_before, "no KUDO chain, no jump");
            assert!(!firewall().contains("KUDO"));
            assert_eq!(ip_forward(), "0");
            // And teardown does not take it either.
            kudonet(&["teardown"]).expect(0, "No changes.\n", "");
            assert_eq!(link(None, "kudo0").unwrap(), before);

            common::sh("ip link del kudo0");
        }

        // With the name free, the node builds.
        let apply = kudonet(&["apply", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        assert_eq!(
            link(None, "kudo0").unwrap()["ifalias"],
            Value::from("kudonet:bridge")
        );
    });
}

#[test]
fn foreign_namespace_holds_back_only_its_instance() {
    common::sandboxed("foreign_namespace_holds_back_only_its_instance", || {
        setup_outside();
        common::sh("ip netns add kudo-web");
        let foreign_lo = link(Some("kudo-web"), "lo").unwrap();
        let state = StateDir::new(NODE);
        let conflict = "conflict: namespace kudo-web exists and was not created by kudonet: \
                        kudonet leaves it alone; delete it (ip netns delete kudo-web) if nothing \
                        uses it\n";

        let expected = format!(
            "+ bridge kudo0\n+ address 10.0.0.1/24 on kudo0\n~ link kudo0: up\n\
             ~ sysctl net.ipv4.ip_forward = 1\n~ sysctl net.ipv4.conf.kudo0.route_localnet = 1\n\
             {}{FILTER_ADDED}{}",
            instance_added("db", DB_VETH, "10.0.0.3/24"),
            nat_added("-s 10.0.0.0/24 -o eth0 -j MASQUERADE").replace(WEB_DNAT, ""),
        );
        kudonet(&["apply", "-v", state.path()]).expect(
            1,
            &expected,
            &format!(
                "{conflict}Apply incomplete: 5 added, 11 changed, 0 destroyed; {APPLY_INCOMPLETE}"
            ),
        );
        kudonet(&["plan", state.path()]).expect(
            0,
            &format!("Plan: 0 to add, 0 to change, 0 to destroy.\n{conflict}"),
            "",
        );
        // A second apply changes nothing more and still names the conflict.
        kudonet(&["apply", state.path()]).expect(
            1,
            "",
            &format!(
                "{conflict}Apply incomplete: 0 added, 0 changed, 0 destroyed; {APPLY_INCOMPLETE}"
            ),
        );

        // web's namespace is untouched: only its own loopback, as it was.
        assert_eq!(link_names(Some("kudo-web")), ["lo"]);
        assert_eq!(link(Some("kudo-web"), "lo").unwrap(), foreign_lo);
        assert_eq!(link(None, WEB_VETH), None);

        // db is converged and reachable, and reaches out.
        let db = netns("kudo-db");
        let _db80 = probe::serve(&db, Tcp, addr("0.0.0.0:80")).unwrap();
        let _outside = probe::serve(&netns("outside"), Tcp, addr("0.0.0.0:9000")).unwrap();
        assert_eq!(seen(&Place::Here, "10.0.0.3:80"), "10.0.0.1");
        assert_eq!(seen(&db, "203.0.113.254:9000"), "203.0.113.1");

        let status = kudonet(&["status", state.path()]);
        status.expect(
            0,
            &format!(
                "NAME  PHASE   ADDRESS      NETNS                MESSAGE\n\
                 db    Ready   10.0.0.3/24  /run/netns/kudo-db\n\
                 web   Failed  10.0.0.2/24  /run/netns/kudo-web  {}",
                conflict.strip_prefix("conflict: ").unwrap()
            ),
            "",
        );

        // Teardown takes db and leaves the foreign namespace.
        let teardown = kudonet(&["teardown"]);
        assert_eq!(teardown.code, 0, "{teardown:?}");
        assert_eq!(namespaces(), ["kudo-web", "outside"]);
        assert_eq!(link_names(Some("kudo-web")), ["lo"]);
        assert_eq!(link(Some("kudo-web"), "lo").unwrap(), foreign_lo);
        assert_eq!(link_names(None), ["lo", "eth0"]);
    });
}

#[test]
fn missing_iptables_changes_nothing() {
    common::sandboxed("missing_iptables_changes_nothing", || {
        let state = StateDir::new(NODE);
        let firewall_before = firewall();
        // kudonet also looks in the sbin directories, whatever PATH says: hide the binaries
        // (both are links to one multi-call binary) in a mount namespace of kudonet's own.
        let binary = std::fs::canonicalize(
            common::sh("command -v iptables-save || echo /usr/sbin/iptables-save").trim(),
        )
        .unwrap();
        let binary = binary.to_str().unwrap();
        for command in ["apply", "plan", "status"] {
            let script = format!(
                "mount --bind /dev/null {binary} && PATH=/nonexistent exec {KUDONET} {command} {}",
                state.path()
            );
            run_command(Command::new("unshare").args(["--mount", "--", "sh", "-c", &script]))
                .expect(
                    1,
                    "",
                    "kudonet: iptables-save not found: install the iptables package (apt-get \
                     install iptables)\n",
                );
        }
        assert_eq!(link_names(None), ["lo"], "no bridge, no veth");
        assert_eq!(namespaces(), Vec::<String>::new());
        assert_eq!(ip_forward(), "0");
        assert_eq!(firewall(), firewall_before);

        // Only iptables-restore missing: refused before anything changes, so a node is
        // never left half built. The netns directory is shared first, as `ip netns` makes it.
        common::sh(
            "mkdir -p /run/netns && mount --bind /run/netns /run/netns && mount --make-shared /run/netns",
        );
        let bin = tempfile::tempdir().unwrap();
        let save = bin.path().join("iptables-save");
        std::fs::copy(binary, &save).unwrap();
        let script = format!(
            "mount --bind /dev/null {binary} && PATH={} exec {KUDONET} apply {}",
            bin.path().display(),
            state.path()
        );
        run_command(Command::new("unshare").args([
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "sh",
            "-c",
            &script,
        ]))
        .expect(
            1,
            "",
            "kudonet: iptables-restore not found: install the iptables package (apt-get install \
             iptables)\n",
        );
        assert_eq!(link_names(None), ["lo"], "no bridge, no veth");
        assert_eq!(namespaces(), Vec::<String>::new());
        assert!(!firewall().contains("KUDO"));
        // With iptables back, the node is built as on a fresh machine.
        let apply = kudonet(&["apply", "-v", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        assert_eq!(
            apply.stdout,
            format!(
                "{}Apply complete: 8 added, 17 changed, 0 destroyed.\n",
                fresh_apply(true, "-s 10.0.0.0/24 ! -o kudo0 -j MASQUERADE")
            )
        );
    });
}

#[test]
fn missing_privileges_are_named() {
    common::sandboxed("missing_privileges_are_named", || {
        let state = StateDir::new(NODE);
        let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
        let as_nobody = |args: &[&str]| {
            run_command(Command::new("setpriv").args(nobody).arg(KUDONET).args(args))
        };
        for command in ["apply", "plan", "status"] {
            as_nobody(&[command, state.path()]).expect(
                1,
                "",
                &format!(
                    "kudonet: {command} needs root (missing CAP_NET_ADMIN and \
                     CAP_SYS_ADMIN): run it as root\n"
                ),
            );
        }
        as_nobody(&["teardown"]).expect(
            1,
            "",
            "kudonet: teardown needs root (missing CAP_NET_ADMIN and CAP_SYS_ADMIN): \
             run it as root\n",
        );
        as_nobody(&["validate", state.path()]).expect(
            0,
            &format!("{}: valid (1 node, 2 instances)\n", state.path()),
            "",
        );

        // Root without one capability: the message names it.
        for (drop, missing) in [
            ("-net_admin", "CAP_NET_ADMIN"),
            ("-sys_admin", "CAP_SYS_ADMIN"),
        ] {
            run_command(
                Command::new("setpriv")
                    .args(["--inh-caps=-all", &format!("--bounding-set={drop}")])
                    .args([KUDONET, "apply", state.path()]),
            )
            .expect(
                1,
                "",
                &format!(
                    "kudonet: apply needs {missing}, which this root process lacks: grant it (e.g. in the container or systemd unit)\n"
                ),
            );
        }
        assert_eq!(link_names(None), ["lo"]);
        assert_eq!(namespaces(), Vec::<String>::new());
        assert!(!firewall().contains("KUDO"));
    });
}

#[test]
fn apply_repairs_drift() {
    common::sandboxed("apply_repairs_drift", || {
        setup_outside();
        let state = StateDir::new(NODE);
        let first = kudonet(&["apply", state.path()]);
        assert_eq!(first.code, 0, "{first:?}");
        let rules = firewall();

        common::sh(&format!(
            "ip link del {DB_VETH}
             ip link set kudo0 down
             iptables -t nat -F KUDO-PORTS
             ip -n kudo-web route del default
             echo 0 > /proc/sys/net/ipv4/ip_forward"
        ));
        let repairs = format!(
            "~ link kudo0: up\n\
             ~ sysctl net.ipv4.ip_forward = 1\n\
             + veth {DB_VETH} <-> kudo-db/eth0 for instance db\n\
             ~ link {DB_VETH}: attach to bridge kudo0\n\
             ~ link {DB_VETH}: hairpin on\n\
             ~ link {DB_VETH}: up\n\
             + address 10.0.0.3/24 on kudo-db/eth0\n\
             ~ link kudo-db/eth0: up\n\
             ~ route default via 10.0.0.1 in kudo-db\n\
             ~ route default via 10.0.0.1 in kudo-web\n\
             ~ iptables table nat\n    \
             + -A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80\n"
        );
        kudonet(&["plan", state.path()]).expect(
            0,
            &format!("{repairs}Plan: 2 to add, 9 to change, 0 to destroy.\n"),
            "",
        );
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!("{repairs}Apply complete: 2 added, 9 changed, 0 destroyed.\n"),
            "",
        );
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");
        assert_eq!(firewall(), rules);
        assert_eq!(ip_forward(), "1");

        let web = netns("kudo-web");
        let db = netns("kudo-db");
        let outside = netns("outside");
        let _web80 = probe::serve(&web, Tcp, addr("0.0.0.0:80")).unwrap();
        let _db80 = probe::serve(&db, Tcp, addr("0.0.0.0:80")).unwrap();
        let _outside = probe::serve(&outside, Tcp, addr("0.0.0.0:9000")).unwrap();
        assert_eq!(seen(&outside, "203.0.113.1:8080"), "203.0.113.254");
        assert_eq!(seen(&db, "10.0.0.2:80"), "10.0.0.3");
        assert_eq!(seen(&web, "10.0.0.3:80"), "10.0.0.2");
        assert_eq!(seen(&web, "203.0.113.254:9000"), "203.0.113.1");
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
    });
}

/// kudonet's nftables table for `NODE` built from nothing, as `plan` and `apply -v` print
/// it (the lines of `nftables::diff`), with the uplink `eth0`.
const NFTABLES_ADDED: &str = "\
+ nftables table inet kudonet
    + set bridges { type ifname }
    + element bridges \"kudo0\"
    + map ports4 { type inet_proto . inet_service : ipv4_addr . inet_service }
    + element ports4 tcp . 8080 : 10.0.0.2 . 80  # web
    + map ports4_host { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
    + chain forward { type filter hook forward priority 0; policy accept; }
    + rule forward iifname @bridges accept
    + rule forward oifname @bridges ct state established,related accept
    + rule forward oifname @bridges ct status dnat accept
    + chain output { type nat hook output priority -100; policy accept; }
    + rule output meta nfproto ipv4 fib daddr type local jump ports
    + chain ports
    + rule ports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @ports4_host
    + rule ports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4
    + chain postrouting { type nat hook postrouting priority 100; policy accept; }
    + rule postrouting oifname @bridges ip saddr 10.0.0.0/24 ct status dnat masquerade
    + rule postrouting oifname @bridges fib saddr type local ct status dnat masquerade
    + rule postrouting ip saddr 10.0.0.0/24 ip daddr 10.0.0.0/24 return
    + rule postrouting ip saddr 10.0.0.0/24 oifname \"eth0\" masquerade
    + chain prerouting { type nat hook prerouting priority -100; policy accept; }
    + rule prerouting fib daddr type local jump ports
";

#[test]
fn plan_and_apply_with_nftables_print_the_table_s_changes() {
    common::sandboxed(
        "plan_and_apply_with_nftables_print_the_table_s_changes",
        || {
            setup_outside();
            let state = StateDir::new(NODE);
            let nftables = |args: &[&str]| {
                let mut all = args.to_vec();
                all.extend(["--firewall", "nftables"]);
                kudonet(&all)
            };
            let fresh = format!(
                "+ bridge kudo0\n+ address 10.0.0.1/24 on kudo0\n~ link kudo0: up\n\
                 ~ sysctl net.ipv4.ip_forward = 1\n\
                 ~ sysctl net.ipv4.conf.kudo0.route_localnet = 1\n{}{}{NFTABLES_ADDED}",
                instance_added("db", DB_VETH, "10.0.0.3/24"),
                instance_added("web", WEB_VETH, "10.0.0.2/24"),
            );
            nftables(&["plan", state.path()]).expect(
                0,
                &format!("{fresh}Plan: 9 to add, 15 to change, 0 to destroy.\n"),
                "",
            );
            nftables(&["apply", "-v", state.path()]).expect(
                0,
                &format!("{fresh}Apply complete: 9 added, 15 changed, 0 destroyed.\n"),
                "",
            );
            nftables(&["plan", state.path()]).expect(0, "No changes.\n", "");
            assert!(!firewall().contains("KUDO-"), "{}", firewall());

            // A port moves: only the map's elements change, one line each.
            state.write(
                "node.yaml",
                &NODE.replace("hostPort: 8080", "hostPort: 8081"),
            );
            let moved = "\
~ nftables table inet kudonet
    - element ports4 tcp . 8080 : 10.0.0.2 . 80  # web
    + element ports4 tcp . 8081 : 10.0.0.2 . 80  # web
";
            nftables(&["plan", state.path()]).expect(
                0,
                &format!("{moved}Plan: 0 to add, 1 to change, 0 to destroy.\n"),
                "",
            );
            nftables(&["apply", "-v", state.path()]).expect(
                0,
                &format!("{moved}Apply complete: 0 added, 1 changed, 0 destroyed.\n"),
                "",
            );
            nftables(&["plan", state.path()]).expect(0, "No changes.\n", "");
            let _web80 = probe::serve(&netns("kudo-web"), Tcp, addr("0.0.0.0:80")).unwrap();
            assert_eq!(seen(&netns("outside"), "203.0.113.1:8081"), "203.0.113.254");
            assert!(probe::ask(&netns("outside"), Tcp, addr("203.0.113.1:8080")).is_err());
        },
    );
}

/// The JSON status document, checked for what every document has; returns it.
#[track_caller]
fn status_json(state: &StateDir, code: i32) -> Value {
    let run = kudonet(&["status", state.path(), "--output", "json"]);
    assert_eq!((run.code, run.stderr.as_str()), (code, ""), "{run:?}");
    let document: Value = serde_json::from_str(&run.stdout).unwrap();
    let observed_at = document["observedAt"].as_str().unwrap();
    let parsed = humantime::parse_rfc3339(observed_at)
        .unwrap_or_else(|error| panic!("observedAt {observed_at:?}: {error}"));
    let age = std::time::SystemTime::now()
        .duration_since(parsed)
        .expect("observedAt is not in the future");
    assert!(age.as_secs() < 60, "observedAt {observed_at} is now");
    let mut keys: Vec<&String> = document.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "conditions",
            "errors",
            "instances",
            "node",
            "observedAt",
            "valid"
        ],
        "{document}"
    );
    document
}

/// An IPv4-only instance of the status document: `addresses` holds its one address, or
/// none when `address` is empty.
fn instance(name: &str, phase: &str, address: &str, veth: &str, message: &str) -> Value {
    let addresses: Vec<&str> = Some(address)
        .filter(|a| !a.is_empty())
        .into_iter()
        .collect();
    serde_json::json!({
        "name": name,
        "phase": phase,
        "address": address,
        "addresses": addresses,
        "netns": format!("/run/netns/kudo-{name}"),
        "hostInterface": veth,
        "message": message,
    })
}

#[test]
fn status_reports_each_instance() {
    common::sandboxed("status_reports_each_instance", || {
        let state = StateDir::new(NODE);
        let header = "NAME  PHASE    ADDRESS      NETNS                MESSAGE\n";

        // Before apply: Pending.
        kudonet(&["status", state.path()]).expect(
            0,
            "NAME  PHASE    ADDRESS      NETNS                MESSAGE\n\
             db    Pending  10.0.0.3/24  /run/netns/kudo-db   not created yet\n\
             web   Pending  10.0.0.2/24  /run/netns/kudo-web  not created yet\n",
            "",
        );
        let document = status_json(&state, 0);
        assert_eq!(document["node"], "node-a");
        assert_eq!(document["valid"], true);
        assert_eq!(document["errors"], serde_json::json!([]));
        assert_eq!(
            document["instances"],
            serde_json::json!([
                instance("db", "Pending", "10.0.0.3/24", DB_VETH, "not created yet"),
                instance("web", "Pending", "10.0.0.2/24", WEB_VETH, "not created yet"),
            ])
        );

        // After apply: Ready.
        let apply = kudonet(&["apply", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        kudonet(&["status", state.path()]).expect(
            0,
            "NAME  PHASE  ADDRESS      NETNS                MESSAGE\n\
             db    Ready  10.0.0.3/24  /run/netns/kudo-db\n\
             web   Ready  10.0.0.2/24  /run/netns/kudo-web\n",
            "",
        );
        let document = status_json(&state, 0);
        assert_eq!(
            (&document["node"], &document["valid"], &document["errors"]),
            (
                &Value::from("node-a"),
                &Value::from(true),
                &serde_json::json!([])
            )
        );
        assert_eq!(
            document["instances"],
            serde_json::json!([
                instance("db", "Ready", "10.0.0.3/24", DB_VETH, ""),
                instance("web", "Ready", "10.0.0.2/24", WEB_VETH, ""),
            ])
        );

        // A veth deleted behind kudonet's back: that instance is Drifted, the other Ready.
        common::run_ok("ip", &["link", "del", WEB_VETH]);
        let drift = format!(
            "7 pending: + veth {WEB_VETH} <-> kudo-web/eth0 for instance web; \
             ~ link {WEB_VETH}: attach to bridge kudo0; ~ link {WEB_VETH}: hairpin on; \
             ~ link {WEB_VETH}: up; + address 10.0.0.2/24 on kudo-web/eth0; \
             ~ link kudo-web/eth0: up; ~ route default via 10.0.0.1 in kudo-web"
        );
        kudonet(&["status", state.path()]).expect(
            0,
            &format!(
                "{header}\
                 db    Ready    10.0.0.3/24  /run/netns/kudo-db\n\
                 web   Drifted  10.0.0.2/24  /run/netns/kudo-web  {drift}\n"
            ),
            "",
        );
        assert_eq!(
            status_json(&state, 0)["instances"],
            serde_json::json!([
                instance("db", "Ready", "10.0.0.3/24", DB_VETH, ""),
                instance("web", "Drifted", "10.0.0.2/24", WEB_VETH, &drift),
            ])
        );

        // An invalid directory: valid false, the errors as FILE:LINE:COLUMN lines, exit 1;
        // the instances show what is still in force.
        state.write(
            "broken.yaml",
            "kind: Instance\nname: cache\nadress: 10.0.0.4\n---\n\
             kind: Instance\nname: cache2\naddress: 10.0.9.5\n",
        );
        let broken = state.file("broken.yaml").display().to_string();
        let errors = [
            format!(
                "{broken}:3:1: unknown field `adress` in an Instance, expected one of apiVersion, \
                 kind, name, node, address, ports, id, netns, interface (did you mean `address`?)"
            ),
            format!(
                "{broken}:7:10: address 10.0.9.5 is outside Node \"node-a\"'s subnet 10.0.0.0/24"
            ),
        ];
        let document = status_json(&state, 1);
        assert_eq!(document["valid"], false);
        assert_eq!(document["errors"], serde_json::json!(errors));
        let in_force = "desired state unreadable: showing what is in force";
        assert_eq!(
            document["instances"],
            serde_json::json!([
                instance("db", "Ready", "10.0.0.3/24", DB_VETH, in_force),
                // Its eth0 went with the host veth: no address is in force.
                instance("web", "Drifted", "", WEB_VETH, in_force),
            ])
        );
        let text = kudonet(&["status", state.path()]);
        assert_eq!(text.code, 1);
        assert_eq!(text.stderr, format!("{}\n", errors.join("\n")));
        assert_eq!(
            text.stdout,
            format!(
                "NAME  PHASE    ADDRESS      NETNS                MESSAGE\n\
                 db    Ready    10.0.0.3/24  /run/netns/kudo-db   {in_force}\n\
                 web   Drifted               /run/netns/kudo-web  {in_force}\n"
            )
        );
    });
}

#[test]
fn mtu_reaches_bridge_veths_and_instances() {
    common::sandboxed("mtu_reaches_bridge_veths_and_instances", || {
        let state =
            StateDir::new(&NODE.replace("cidr: 10.0.0.1/24\n", "cidr: 10.0.0.1/24\nmtu: 1400\n"));
        let apply = kudonet(&["apply", "-v", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        assert!(
            apply.stdout.starts_with("+ bridge kudo0 (mtu 1400)\n"),
            "{}",
            apply.stdout
        );
        assert!(apply.stdout.contains(&format!(
            "+ veth {WEB_VETH} <-> kudo-web/eth0 for instance web (mtu 1400)\n"
        )));
        let mtus = || {
            [
                link(None, "kudo0"),
                link(None, WEB_VETH),
                link(None, DB_VETH),
                link(Some("kudo-web"), "eth0"),
                link(Some("kudo-db"), "eth0"),
            ]
            .map(|link| link.unwrap()["mtu"].as_u64().unwrap())
        };
        assert_eq!(mtus(), [1400; 5]);
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");

        // A changed MTU is changed in place, up or down.
        for mtu in [1300, 9000] {
            let yaml = NODE.replace(
                "cidr: 10.0.0.1/24\n",
                &format!("cidr: 10.0.0.1/24\nmtu: {mtu}\n"),
            );
            state.write("node.yaml", &yaml);
            kudonet(&["apply", "-v", state.path()]).expect(
                0,
                &format!(
                    "~ link kudo0: mtu {mtu}\n\
                     ~ link {DB_VETH}: mtu {mtu}\n\
                     ~ link kudo-db/eth0: mtu {mtu}\n\
                     ~ link {WEB_VETH}: mtu {mtu}\n\
                     ~ link kudo-web/eth0: mtu {mtu}\n\
                     Apply complete: 0 added, 5 changed, 0 destroyed.\n"
                ),
                "",
            );
            assert_eq!(mtus(), [mtu; 5]);
            kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
        }

        // Without `mtu:` again, the kernel's default comes back.
        state.write("node.yaml", NODE);
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "~ link kudo0: mtu 1500\n\
                 ~ link {DB_VETH}: mtu 1500\n\
                 ~ link kudo-db/eth0: mtu 1500\n\
                 ~ link {WEB_VETH}: mtu 1500\n\
                 ~ link kudo-web/eth0: mtu 1500\n\
                 Apply complete: 0 added, 5 changed, 0 destroyed.\n"
            ),
            "",
        );
        assert_eq!(mtus(), [1500; 5]);
    });
}

#[test]
fn crash_leftovers_are_cleaned_up() {
    common::sandboxed("crash_leftovers_are_cleaned_up", || {
        let state = StateDir::new(NODE);
        // A bridge left between creation and marking, and a look-alike that is not one.
        common::sh(
            "ip link add kudonet-abc1234 type bridge
             ip link add kudonet-web type bridge",
        );
        let plan = kudonet(&["plan", state.path()]);
        assert_eq!(plan.code, 0, "{plan:?}");
        assert!(
            plan.stdout
                .starts_with("- link kudonet-abc1234\n+ bridge kudo0\n"),
            "{}",
            plan.stdout
        );
        let apply = kudonet(&["apply", "-v", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        assert_eq!(
            apply.stdout,
            format!(
                "- link kudonet-abc1234\n{}Apply complete: 8 added, 17 changed, 1 destroyed.\n",
                fresh_apply(true, "-s 10.0.0.0/24 ! -o kudo0 -j MASQUERADE")
            )
        );
        assert_eq!(link(None, "kudonet-abc1234"), None);
        assert!(
            link(None, "kudonet-web").is_some(),
            "not a scratch name: not kudonet's"
        );

        // A veth left by a crash between its creation and its rename: it holds web's eth0.
        common::sh(&format!(
            "ip link del {WEB_VETH}
             ip link add kudonet-0f0f0f0 type veth peer name eth0 netns kudo-web"
        ));
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "- link kudonet-0f0f0f0\n\
                 + veth {WEB_VETH} <-> kudo-web/eth0 for instance web\n\
                 ~ link {WEB_VETH}: attach to bridge kudo0\n\
                 ~ link {WEB_VETH}: hairpin on\n\
                 ~ link {WEB_VETH}: up\n\
                 + address 10.0.0.2/24 on kudo-web/eth0\n\
                 ~ link kudo-web/eth0: up\n\
                 ~ route default via 10.0.0.1 in kudo-web\n\
                 Apply complete: 2 added, 5 changed, 1 destroyed.\n"
            ),
            "",
        );
        assert_eq!(link(None, "kudonet-0f0f0f0"), None);
        assert_eq!(
            link(None, WEB_VETH).unwrap()["ifalias"],
            Value::from("kudonet:instance:web")
        );
        kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");
    });
}

/// kudonet's MASQUERADE rule towards the uplink, from iptables-save.
fn uplink_rule() -> String {
    let rules: Vec<String> = common::sh("iptables-save -t nat")
        .lines()
        .filter(|line| {
            line.starts_with("-A KUDO-POSTROUTING -s 10.0.0.0/24 ")
                && line.ends_with("-j MASQUERADE")
                && !line.contains("--ctstate")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(rules.len(), 1, "{rules:?}");
    rules[0].clone()
}

#[test]
fn masquerade_names_the_uplink() {
    common::sandboxed("masquerade_names_the_uplink", || {
        // No default route and no uplink: everything not for the bridge.
        let state = StateDir::new(NODE);
        let apply = kudonet(&["apply", state.path()]);
        assert_eq!(apply.code, 0, "{apply:?}");
        assert_eq!(
            uplink_rule(),
            "-A KUDO-POSTROUTING -s 10.0.0.0/24 ! -o kudo0 -j MASQUERADE"
        );

        // The default route's interface.
        setup_outside();
        let masquerade = |from: &str, to: &str| {
            format!(
                "~ iptables table nat\n    \
                 - -A KUDO-POSTROUTING -s 10.0.0.0/24 {from} -j MASQUERADE\n    \
                 + -A KUDO-POSTROUTING -s 10.0.0.0/24 {to} -j MASQUERADE\n"
            )
        };
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "{}Apply complete: 0 added, 1 changed, 0 destroyed.\n",
                masquerade("! -o kudo0", "-o eth0")
            ),
            "",
        );
        assert_eq!(
            uplink_rule(),
            "-A KUDO-POSTROUTING -s 10.0.0.0/24 -o eth0 -j MASQUERADE"
        );
        let web = netns("kudo-web");
        let _outside = probe::serve(&netns("outside"), Tcp, addr("0.0.0.0:9000")).unwrap();
        assert_eq!(seen(&web, "203.0.113.254:9000"), "203.0.113.1");

        // An explicit uplink wins over the default route.
        state.write(
            "node.yaml",
            &NODE.replace("cidr: 10.0.0.1/24\n", "cidr: 10.0.0.1/24\nuplink: wan1\n"),
        );
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "{}Apply complete: 0 added, 1 changed, 0 destroyed.\n",
                masquerade("-o eth0", "-o wan1")
            ),
            "warning: UplinkMissing: uplink wan1 of Node \"node-a\" does not exist: instances \
             cannot reach the outside and ports published on it are unreachable\n",
        );
        assert_eq!(
            uplink_rule(),
            "-A KUDO-POSTROUTING -s 10.0.0.0/24 -o wan1 -j MASQUERADE"
        );
        // Traffic leaving through eth0 is then not masqueraded (outside routes it back).
        common::sh("ip -n outside route add 10.0.0.0/24 via 203.0.113.1");
        assert_eq!(seen(&web, "203.0.113.254:9000"), "10.0.0.2");
        kudonet(&["plan", state.path()]).expect(
            0,
            "No changes.\n",
            "warning: UplinkMissing: uplink wan1 of Node \"node-a\" does not exist: instances \
             cannot reach the outside and ports published on it are unreachable\n",
        );
    });
}

#[test]
fn teardown_then_apply_rebuilds() {
    common::sandboxed("teardown_then_apply_rebuilds", || {
        // Nothing of kudonet's: nothing to do.
        kudonet(&["teardown"]).expect(0, "No changes.\n", "");
        let state = StateDir::new(NODE);
        kudonet(&["teardown", state.path()]).expect(0, "No changes.\n", "");

        setup_outside();
        let masquerade = "-s 10.0.0.0/24 -o eth0 -j MASQUERADE";
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "{}Apply complete: 8 added, 17 changed, 0 destroyed.\n",
                fresh_apply(true, masquerade)
            ),
            "",
        );
        let rules = firewall();
        kudonet(&["teardown", state.path()]).expect(
            0,
            "Teardown complete: 0 added, 2 changed, 3 destroyed.\n",
            "",
        );
        assert_eq!(link_names(None), ["lo", "eth0"]);
        assert_eq!(namespaces(), ["outside"]);
        assert!(!firewall().contains("KUDO"));
        kudonet(&["teardown"]).expect(0, "No changes.\n", "");

        // As after a reboot: ip_forward is back to 0 as well.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        kudonet(&["apply", "-v", state.path()]).expect(
            0,
            &format!(
                "{}Apply complete: 8 added, 17 changed, 0 destroyed.\n",
                fresh_apply(true, masquerade)
            ),
            "",
        );
        assert_eq!(firewall(), rules);
        kudonet(&["apply", state.path()]).expect(0, "No changes.\n", "");
        let web = netns("kudo-web");
        let _web80 = probe::serve(&web, Tcp, addr("0.0.0.0:80")).unwrap();
        assert_eq!(seen(&netns("outside"), "203.0.113.1:8080"), "203.0.113.254");
        assert_eq!(seen(&netns("kudo-db"), "10.0.0.2:80"), "10.0.0.3");
    });
}

/// A removed instance's namespace goes with its veth; one a process still uses stays alive
/// (and its veth with it) after kudonet lets it go: kudonet then deletes the veth itself.
#[test]
fn removed_instance_leaves_nothing_even_while_its_namespace_is_in_use() {
    common::sandboxed(
        "removed_instance_leaves_nothing_even_while_its_namespace_is_in_use",
        || {
            let state = StateDir::new(NODE);
            assert_eq!(kudonet(&["apply", state.path()]).code, 0);
            // As a process inside it would: an open descriptor keeps the namespace alive.
            let db = std::fs::File::open("/run/netns/kudo-db").unwrap();
            state.replace(
                "node.yaml",
                NODE.split("---\nkind: Instance\nname: db").next().unwrap(),
            );
            let apply = kudonet(&["apply", "-v", state.path()]);
            assert_eq!(
                (apply.code, apply.stdout.as_str()),
                (
                    0,
                    "- namespace kudo-db\nApply complete: 0 added, 0 changed, 1 destroyed.\n"
                ),
                "{apply:?}"
            );
            // Said once, as a warning log line.
            assert_eq!(apply.stderr.lines().count(), 1, "{apply:?}");
            assert!(
                apply.stderr.contains(" WARN ")
                    && apply.stderr.ends_with(
                        "the namespace of a removed instance is still in use (a process in it?): \
                         deleting its veth link=kv14e07b53ba1e3\n"
                    ),
                "{apply:?}"
            );
            assert_eq!(link_names(None), ["lo", "kudo0", WEB_VETH]);
            assert_eq!(namespaces(), ["kudo-web"]);
            assert!(!firewall().contains("10.0.0.3"));
            kudonet(&["plan", state.path()]).expect(0, "No changes.\n", "");
            // The namespace lives on, without kudonet's eth0.
            use std::os::fd::AsRawFd;
            let held = format!("/proc/{}/fd/{}", std::process::id(), db.as_raw_fd());
            let inside = common::run_ok("nsenter", &[&format!("--net={held}"), "ip", "-o", "link"]);
            assert_eq!(inside.lines().count(), 1, "{inside}");
            assert!(inside.starts_with("1: lo:"), "{inside}");
        },
    );
}

/// `kudonet ARGS...` with its output piped, as in CI, a log or the controller's unit, and
/// TERM naming a terminal that could draw.
fn piped(args: &[&str]) -> common::cli::Run {
    run_command(Command::new(KUDONET).args(args).env("TERM", "xterm"))
}

#[test]
fn apply_and_teardown_print_each_action_only_with_v() {
    common::sandboxed("apply_and_teardown_print_each_action_only_with_v", || {
        let state = StateDir::new(NODE);
        // Every output below is compared whole: no progress line, no control sequence, no
        // carriage return reaches a pipe.
        piped(&["apply", state.path()]).expect(
            0,
            "Apply complete: 8 added, 17 changed, 0 destroyed.\n",
            "",
        );
        common::sh(&format!("ip link set kudo0 down && ip link del {DB_VETH}"));
        let repairs = format!(
            "~ link kudo0: up\n\
             + veth {DB_VETH} <-> kudo-db/eth0 for instance db\n\
             ~ link {DB_VETH}: attach to bridge kudo0\n\
             ~ link {DB_VETH}: hairpin on\n\
             ~ link {DB_VETH}: up\n\
             + address 10.0.0.3/24 on kudo-db/eth0\n\
             ~ link kudo-db/eth0: up\n\
             ~ route default via 10.0.0.1 in kudo-db\n"
        );
        kudonet(&["plan", state.path()]).expect(
            0,
            &format!("{repairs}Plan: 2 to add, 6 to change, 0 to destroy.\n"),
            "",
        );
        // -v: each action as it is applied, as `plan` listed it, then the summary.
        piped(&["apply", "-v", state.path()]).expect(
            0,
            &format!("{repairs}Apply complete: 2 added, 6 changed, 0 destroyed.\n"),
            "",
        );
        piped(&["apply", "-v", state.path()]).expect(0, "No changes.\n", "");

        common::sh("ip link set kudo0 down");
        piped(&["apply", "-q", state.path()]).expect(
            0,
            "Apply complete: 0 added, 1 changed, 0 destroyed.\n",
            "",
        );

        // Teardown likewise: each removal with -v, the summary alone without.
        let teardown = piped(&["teardown", "-v"]);
        assert_eq!((teardown.code, teardown.stderr.as_str()), (0, ""));
        let (actions, summary) = teardown
            .stdout
            .trim_end()
            .rsplit_once('\n')
            .expect("actions, then the summary");
        assert_eq!(
            summary,
            "Teardown complete: 0 added, 2 changed, 3 destroyed."
        );
        // The veths go with their namespaces.
        for removed in [
            "- namespace kudo-web".to_string(),
            "- namespace kudo-db".to_string(),
            "- link kudo0".to_string(),
            "~ iptables table filter".to_string(),
            "~ iptables table nat".to_string(),
        ] {
            assert!(
                actions.lines().any(|line| line == removed),
                "{removed} missing:\n{actions}"
            );
        }
        assert!(
            actions.lines().all(|line| ["- ", "~ ", "    - "]
                .iter()
                .any(|mark| line.starts_with(mark))),
            "{actions}"
        );
        // ip_forward stays 1 after a teardown: one change fewer than the first time.
        piped(&["apply", state.path()]).expect(
            0,
            "Apply complete: 8 added, 16 changed, 0 destroyed.\n",
            "",
        );
        piped(&["teardown"]).expect(
            0,
            "Teardown complete: 0 added, 2 changed, 3 destroyed.\n",
            "",
        );
    });
}

/// Runs `kudonet ARGS` on a pseudo-terminal of its own (`script` makes it and copies what
/// the terminal shows, stdout and stderr as one, to its own stdout); what was shown.
fn on_a_terminal(args: &str) -> String {
    let run = run_command(
        Command::new("script")
            .args(["--quiet", "--return", "--command"])
            .arg(format!("{KUDONET} {args}"))
            .arg("/dev/null")
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null()),
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    run.stdout
}

/// How a terminal line is cleared before what replaces it: carriage return, erase line.
const CLEARED: &str = "\r\x1b[2K";

#[test]
fn a_terminal_shows_progress_then_only_the_summary() {
    common::sandboxed("a_terminal_shows_progress_then_only_the_summary", || {
        let state = StateDir::new(NODE);
        let shown = on_a_terminal(&format!("apply {}", state.path()));
        // The stage first, then the count of the pass (the terminal turns \n into \r\n).
        let observing = shown.find("| observing the node (").expect(&shown);
        let applying = shown.find("applying 0/25 actions [").expect(&shown);
        assert!(observing < applying, "{shown:?}");
        // Cleared at the end: what stays on the screen is the summary.
        let (_, last) = shown.rsplit_once(CLEARED).expect(&shown);
        assert_eq!(
            last, "Apply complete: 8 added, 17 changed, 0 destroyed.\r\n",
            "{shown:?}"
        );

        // -v: each action printed above the line, which is drawn again below it.
        common::sh("ip link set kudo0 down");
        let shown = on_a_terminal(&format!("apply -v {}", state.path()));
        assert!(
            shown.contains(&format!("{CLEARED}~ link kudo0: up\r\n")),
            "{shown:?}"
        );
        let (_, last) = shown.rsplit_once(CLEARED).expect(&shown);
        assert_eq!(
            last, "Apply complete: 0 added, 1 changed, 0 destroyed.\r\n",
            "{shown:?}"
        );

        // Teardown shows its progress the same way.
        let shown = on_a_terminal("teardown");
        assert!(shown.contains("applying 0/"), "{shown:?}");
        let (_, last) = shown.rsplit_once(CLEARED).expect(&shown);
        assert_eq!(
            last, "Teardown complete: 0 added, 2 changed, 3 destroyed.\r\n",
            "{shown:?}"
        );

        // -q draws nothing, even on a terminal (ip_forward stayed 1 after the teardown).
        let shown = on_a_terminal(&format!("apply -q {}", state.path()));
        assert_eq!(
            shown,
            "Apply complete: 8 added, 16 changed, 0 destroyed.\r\n"
        );
    });
}

/// What `kudonet demo` prints on the bundled example (IPv4 only).
const DEMO_BUNDLED: &str = r#"kudonet demo: this process runs in a throwaway network and mount namespace;
the host's interfaces, namespaces and firewall are not touched.

1. The node node-a gets an uplink eth0 (203.0.113.1/24) to an "outside" namespace at 203.0.113.254.
2. kudonet apply /run/kudonet-demo/desired-state: 14 added, 29 changed, 0 destroyed.
3. Real packets (each server answers with the source address it saw):
   ok   instance api -> instance dns             10.0.0.3:7777/tcp saw 10.0.0.4
   ok   instance dns -> instance api             10.0.0.4:7777/tcp saw 10.0.0.3
   ok   instance api -> node (gateway)           10.0.0.1:7777/tcp saw 10.0.0.4
   ok   instance api -> outside, masqueraded     203.0.113.254:7777/tcp saw 203.0.113.1
   ok   outside -> :8443 -> api:443              203.0.113.1:8443/tcp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :8443 -> api:443   127.0.0.1:8443/tcp saw 10.0.0.1
   ok   dns (hairpin) -> :8443 -> api:443        203.0.113.1:8443/tcp saw 10.0.0.1
   ok   dns via 10.0.0.1 -> :9090 -> api:9090    10.0.0.1:9090/tcp saw 10.0.0.1
   ok   outside -> :5353 -> dns:53               203.0.113.1:5353/udp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :5353 -> dns:53    127.0.0.1:5353/udp saw 10.0.0.1
   ok   api (hairpin) -> :5353 -> dns:53         203.0.113.1:5353/udp saw 10.0.0.1
   ok   outside -> :8080 -> web:80               203.0.113.1:8080/tcp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :8080 -> web:80    127.0.0.1:8080/tcp saw 10.0.0.1
   ok   api (hairpin) -> :8080 -> web:80         203.0.113.1:8080/tcp saw 10.0.0.1
4. kudonet status:
   api          Ready    10.0.0.4/24      /run/netns/kudo-api
   dns          Ready    10.0.0.3/24      /run/netns/kudo-dns
   web          Ready    10.0.0.2/24      /run/netns/kudo-web
   worker       Ready    10.0.0.10/24     /run/netns/kudo-worker
5. A second kudonet apply: No changes.

14 of 14 connectivity checks passed. The namespaces vanish as the demo exits.
"#;

/// What `kudonet demo examples/dual-stack` prints: every check of each family.
const DEMO_DUAL_STACK: &str = r#"kudonet demo: this process runs in a throwaway network and mount namespace;
the host's interfaces, namespaces and firewall are not touched.

1. The node node-a gets an uplink eth0 (203.0.113.1/24, 2001:db8::1/64) to an "outside" namespace at 203.0.113.254, 2001:db8::fe.
2. kudonet apply examples/dual-stack: 18 added, 35 changed, 0 destroyed.
3. Real packets (each server answers with the source address it saw):
   IPv4:
   ok   instance api -> instance dns             10.0.0.3:7777/tcp saw 10.0.0.4
   ok   instance dns -> instance api             10.0.0.4:7777/tcp saw 10.0.0.3
   ok   instance api -> node (gateway)           10.0.0.1:7777/tcp saw 10.0.0.4
   ok   instance api -> outside, masqueraded     203.0.113.254:7777/tcp saw 203.0.113.1
   ok   outside -> :8443 -> api:443              203.0.113.1:8443/tcp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :8443 -> api:443   127.0.0.1:8443/tcp saw 10.0.0.1
   ok   dns (hairpin) -> :8443 -> api:443        203.0.113.1:8443/tcp saw 10.0.0.1
   ok   outside -> :5353 -> dns:53               203.0.113.1:5353/udp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :5353 -> dns:53    127.0.0.1:5353/udp saw 10.0.0.1
   ok   api (hairpin) -> :5353 -> dns:53         203.0.113.1:5353/udp saw 10.0.0.1
   ok   outside -> :8080 -> web:80               203.0.113.1:8080/tcp saw 203.0.113.254
   ok   node via 127.0.0.1 -> :8080 -> web:80    127.0.0.1:8080/tcp saw 10.0.0.1
   ok   api (hairpin) -> :8080 -> web:80         203.0.113.1:8080/tcp saw 10.0.0.1
   IPv6:
   ok   instance api -> instance dns             [fd00:10::3]:7777/tcp saw fd00:10::4
   ok   instance dns -> instance api             [fd00:10::4]:7777/tcp saw fd00:10::3
   ok   instance api -> node (gateway)           [fd00:10::1]:7777/tcp saw fd00:10::4
   ok   instance api -> outside, masqueraded     [2001:db8::fe]:7777/tcp saw 2001:db8::1
   ok   outside -> :8443 -> api:443              [2001:db8::1]:8443/tcp saw 2001:db8::fe
   ok   node via 2001:db8::1 -> :8443 -> api:443 [2001:db8::1]:8443/tcp saw fd00:10::1
   ok   dns (hairpin) -> :8443 -> api:443        [2001:db8::1]:8443/tcp saw fd00:10::1
   ok   dns via fd00:10::1 -> :9090 -> api:9090  [fd00:10::1]:9090/tcp saw fd00:10::1
   ok   outside -> :5353 -> dns:53               [2001:db8::1]:5353/udp saw 2001:db8::fe
   ok   node via 2001:db8::1 -> :5353 -> dns:53  [2001:db8::1]:5353/udp saw fd00:10::1
   ok   api (hairpin) -> :5353 -> dns:53         [2001:db8::1]:5353/udp saw fd00:10::1
   ok   outside -> :8080 -> web:80               [2001:db8::1]:8080/tcp saw 2001:db8::fe
   ok   node via 2001:db8::1 -> :8080 -> web:80  [2001:db8::1]:8080/tcp saw fd00:10::1
   ok   api (hairpin) -> :8080 -> web:80         [2001:db8::1]:8080/tcp saw fd00:10::1
   note: [::1] is not a published path for IPv6 (the kernel has no route_localnet for it): the node reaches its ports at its own IPv6 addresses.
4. kudonet status:
   api          Ready    10.0.0.4/24,fd00:10::4/64 /run/netns/kudo-api
   dns          Ready    10.0.0.3/24,fd00:10::3/64 /run/netns/kudo-dns
   web          Ready    10.0.0.2/24,fd00:10::2/64 /run/netns/kudo-web
   worker       Ready    fd00:10::10/64            /run/netns/kudo-worker
5. A second kudonet apply: No changes.

27 of 27 connectivity checks passed. The namespaces vanish as the demo exits.
"#;

#[test]
fn demo_proves_the_bundled_example() {
    common::sandboxed("demo_proves_the_bundled_example", || {
        kudonet(&["demo"]).expect(0, DEMO_BUNDLED, "");
        // The demo ran in a namespace of its own: the sandbox has nothing of it.
        assert_eq!(link_names(None), ["lo"]);
        assert!(!firewall().contains("KUDO"));
    });
}

#[test]
fn demo_proves_both_families_of_the_dual_stack_example() {
    common::sandboxed(
        "demo_proves_both_families_of_the_dual_stack_example",
        || {
            kudonet(&["demo", "examples/dual-stack"]).expect(0, DEMO_DUAL_STACK, "");
            assert_eq!(link_names(None), ["lo"]);
            assert!(!common::sh("ip6tables-save").contains("KUDO"));
        },
    );
}

#[test]
fn demo_proves_the_dual_stack_example_with_nftables() {
    common::sandboxed("demo_proves_the_dual_stack_example_with_nftables", || {
        // The same checks, passed through kudonet's nftables table: one table added where
        // iptables changes four.
        let iptables_line =
            "2. kudonet apply examples/dual-stack: 18 added, 35 changed, 0 destroyed.";
        assert!(DEMO_DUAL_STACK.contains(iptables_line));
        let expected = DEMO_DUAL_STACK.replace(
            iptables_line,
            "2. kudonet apply --firewall nftables examples/dual-stack: 19 added, 31 changed, 0 destroyed.",
        );
        kudonet(&["demo", "--firewall", "nftables", "examples/dual-stack"])
            .expect(0, &expected, "");
        assert_eq!(link_names(None), ["lo"]);
        assert_eq!(common::nft_kudonet(), None);
    });
}
