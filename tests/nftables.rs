//! The nftables backend on a real kernel, each test in its own node sandbox: kudonet's
//! table `inet kudonet` written over netlink, as `nft` (the oracle) lists it, read back as
//! written, changed by elements alone when only instances change, repaired after others'
//! damage, and nobody else's table ever touched.

mod common;

use std::path::Path;

use kudonet::dataplane::Dataplane;
use kudonet::kernel::KernelDataplane;
use kudonet::kernel::firewall::nftables_generation;
use kudonet::reconcile::{self, NoProgress, Outcome};
use kudonet::spec::{Desired, FirewallBackend};

const NODE: &str = r#"
kind: Node
name: node-a
cidr: [10.0.0.1/24, "fd00:10::1/64"]
---
kind: Instance
name: web
address: [10.0.0.2/24, "fd00:10::2/64"]
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

/// `nft list table inet kudonet` for [`NODE`] (nft 1.0.6: it prints `ip daddr . …` maps
/// without the family check kudonet writes, which that match implies).
const LISTED: &str = r#"table inet kudonet {
	comment "kudonet"
	set bridges {
		type ifname
		elements = { "kudo0" }
	}

	map ports4 {
		type inet_proto . inet_service : ipv4_addr . inet_service
		elements = { tcp . 8080 comment "web" : 10.0.0.2 . 80,
			     udp . 5353 comment "web" : 10.0.0.2 . 53 }
	}

	map ports4_host {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
		elements = { 203.0.113.1 . tcp . 9443 comment "web" : 10.0.0.2 . 443 }
	}

	map ports6 {
		type inet_proto . inet_service : ipv6_addr . inet_service
		elements = { tcp . 8080 comment "web" : fd00:10::2 . 80,
			     udp . 5353 comment "web" : fd00:10::2 . 53 }
	}

	map ports6_host {
		type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @bridges accept
		oifname @bridges ct state established,related accept
		oifname @bridges ct status dnat accept
	}

	chain output {
		type nat hook output priority -100; policy accept;
		meta nfproto ipv4 fib daddr type local jump ports
		ip6 daddr != ::1 fib daddr type local jump ports
	}

	chain ports {
		dnat ip to ip daddr . meta l4proto . th dport map @ports4_host
		meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports6_host
		meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname @bridges ip saddr 10.0.0.0/24 ct status dnat masquerade
		oifname @bridges ip6 saddr fd00:10::/64 ct status dnat masquerade
		oifname @bridges fib saddr type local ct status dnat masquerade
		ip saddr 10.0.0.0/24 ip daddr 10.0.0.0/24 return
		ip saddr 10.0.0.0/24 oifname != "kudo0" masquerade
		ip6 saddr fd00:10::/64 ip6 daddr fd00:10::/64 return
		ip6 saddr fd00:10::/64 oifname != "kudo0" masquerade
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump ports
	}
}
"#;

/// A table of someone else's, with base chains on the hooks kudonet uses.
const FOREIGN: &str = r#"table inet foreign {
	set admins {
		type ipv4_addr
		elements = { 192.0.2.1 }
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr @admins counter packets 0 bytes 0 accept
		ct state invalid drop
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth9" masquerade
	}
}
"#;

fn desired(state: &common::state::StateDir) -> Desired {
    let (_, mut desired) = reconcile::load_desired(Path::new(state.path()), None).unwrap();
    desired.firewall = FirewallBackend::Nftables;
    desired
}

fn dataplane() -> KernelDataplane {
    KernelDataplane::for_backend(Path::new("/run/netns"), FirewallBackend::Nftables).unwrap()
}

fn converge(dataplane: &mut KernelDataplane, desired: &Desired) -> Outcome {
    reconcile::converge(dataplane, desired, &Default::default(), &mut NoProgress).unwrap()
}

fn teardown(dataplane: &mut KernelDataplane) -> Outcome {
    reconcile::teardown(dataplane, &mut NoProgress).unwrap()
}

fn nft(args: &[&str]) -> String {
    common::run_ok("nft", args)
}

fn listed() -> String {
    nft(&["list", "table", "inet", "kudonet"])
}

fn generation() -> u32 {
    nftables_generation().unwrap()
}

#[test]
fn a_node_is_written_in_one_transaction_and_reads_back_as_desired() {
    common::sandboxed(
        "a_node_is_written_in_one_transaction_and_reads_back_as_desired",
        || {
            let state = common::state::StateDir::new(NODE);
            let desired = desired(&state);
            let mut dataplane = dataplane();
            let before = generation();
            let outcome = converge(&mut dataplane, &desired);
            assert!(outcome.converged(), "{:?}", outcome.remaining);
            assert_eq!(listed(), LISTED);
            assert_eq!(generation(), before.wrapping_add(1), "one transaction");
            // Read back from the kernel (a fresh dataplane: nothing cached), it is the
            // table the planner wants.
            let observed =
                KernelDataplane::for_backend(Path::new("/run/netns"), FirewallBackend::Nftables)
                    .unwrap()
                    .observe()
                    .unwrap();
            let wanted = kudonet::plan::nftables::desired_ruleset(&desired, &|_| None, &[]);
            assert_eq!(observed.nftables, Some(wanted));
            assert!(!observed.foreign_nftables);

            // Nothing changed: no write at all.
            let at = generation();
            let outcome = converge(&mut dataplane, &desired);
            assert!(outcome.applied.is_empty(), "{:?}", outcome.applied);
            assert_eq!(generation(), at, "no transaction");

            // Switching to iptables deletes the table; tearing down leaves nothing.
            let mut iptables = desired.clone();
            iptables.firewall = FirewallBackend::Iptables;
            let mut iptables_plane = KernelDataplane::new(Path::new("/run/netns")).unwrap();
            assert!(converge(&mut iptables_plane, &iptables).converged());
            assert!(!nft(&["list", "tables"]).contains("kudonet"));
            assert!(converge(&mut dataplane, &desired).converged());
            assert_eq!(listed(), LISTED);
            teardown(&mut dataplane);
            assert!(!nft(&["list", "tables"]).contains("inet kudonet"));
        },
    );
}

/// The rules of every chain, with their handles: what an element change must not touch.
fn chains_with_handles() -> String {
    ["forward", "output", "ports", "postrouting", "prerouting"]
        .iter()
        .map(|chain| nft(&["-a", "list", "chain", "inet", "kudonet", chain]))
        .collect()
}

#[test]
fn instances_coming_and_going_change_elements_only() {
    common::sandboxed("instances_coming_and_going_change_elements_only", || {
        let state = common::state::StateDir::new(NODE);
        let mut dataplane = dataplane();
        assert!(converge(&mut dataplane, &desired(&state)).converged());
        let chains = chains_with_handles();
        let sets = nft(&["-a", "list", "set", "inet", "kudonet", "bridges"]);

        // db publishes a port, web drops one.
        let changed = NODE
            .replace(
                "address: 10.0.0.3/24",
                "address: 10.0.0.3/24\nports:\n  - hostPort: 2222\n    instancePort: 22",
            )
            .replace(
                "  - hostPort: 5353\n    instancePort: 53\n    protocol: udp\n",
                "",
            );
        state.write("node.yaml", &changed);
        let before = generation();
        let outcome = converge(&mut dataplane, &desired(&state));
        assert!(outcome.converged(), "{:?}", outcome.remaining);
        assert_eq!(generation(), before.wrapping_add(1), "one transaction");
        assert_eq!(chains_with_handles(), chains, "no rule was replaced");
        assert_eq!(
            nft(&["-a", "list", "set", "inet", "kudonet", "bridges"]),
            sets
        );
        let listed = listed();
        assert!(
            listed.contains("elements = { tcp . 8080 comment \"web\" : 10.0.0.2 . 80,\n\t\t\t     tcp . 2222 comment \"db\" : 10.0.0.3 . 22 }"),
            "{listed}"
        );
        assert!(!listed.contains("5353"), "{listed}");
    });
}

#[test]
fn damage_by_others_is_repaired() {
    common::sandboxed("damage_by_others_is_repaired", || {
        let state = common::state::StateDir::new(NODE);
        let desired = desired(&state);
        let mut dataplane = dataplane();
        assert!(converge(&mut dataplane, &desired).converged());
        let damages: [&[&str]; 5] = [
            &["flush", "chain", "inet", "kudonet", "postrouting"],
            &[
                "delete",
                "element",
                "inet",
                "kudonet",
                "ports4",
                "{ tcp . 8080 }",
            ],
            &["add", "rule", "inet", "kudonet", "forward", "drop"],
            &[
                "add",
                "chain",
                "inet",
                "kudonet",
                "forward",
                "{ type filter hook forward priority 0; policy drop; }",
            ],
            &["delete", "table", "inet", "kudonet"],
        ];
        for damage in damages {
            nft(damage);
            assert_ne!(listed_or_nothing(), LISTED, "{damage:?} changed nothing");
            let outcome = converge(&mut dataplane, &desired);
            assert!(outcome.converged(), "{damage:?}: {:?}", outcome.remaining);
            assert_eq!(listed(), LISTED, "after {damage:?}");
        }
    });
}

fn listed_or_nothing() -> String {
    let output = common::run("nft", &["list", "table", "inet", "kudonet"]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_inet_kudonet_table_without_the_comment_is_someone_elses() {
    common::sandboxed(
        "an_inet_kudonet_table_without_the_comment_is_someone_elses",
        || {
            nft(&["add", "table", "inet", "kudonet"]);
            nft(&[
                "add",
                "chain",
                "inet",
                "kudonet",
                "mine",
                "{ type filter hook forward priority 0; policy accept; }",
            ]);
            nft(&[
                "add",
                "rule",
                "inet",
                "kudonet",
                "mine",
                "ip saddr 192.0.2.1 accept",
            ]);
            let before = listed();
            let state = common::state::StateDir::new(NODE);
            let mut dataplane = dataplane();
            let outcome = converge(&mut dataplane, &desired(&state));
            assert!(outcome.observed.foreign_nftables);
            assert_eq!(outcome.observed.nftables, None);
            let conflicts: Vec<String> = outcome
                .remaining
                .conflicts
                .iter()
                .map(|conflict| conflict.message.clone())
                .collect();
            assert_eq!(
                conflicts,
                [
                    "nftables table inet kudonet exists without kudonet's comment: it is someone \
                  else's, so kudonet keeps its rules in iptables (rename or delete that table)"
                ]
            );
            assert_eq!(listed(), before);
            // Meanwhile kudonet's rules are in iptables.
            assert!(common::run_ok("iptables-save", &[]).contains("-A KUDO-PORTS"));
            teardown(&mut dataplane);
            assert_eq!(listed(), before);
        },
    );
}

#[test]
fn someone_elses_table_is_left_exactly_as_it_is() {
    common::sandboxed("someone_elses_table_is_left_exactly_as_it_is", || {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), FOREIGN).unwrap();
        nft(&["-f", &file.path().display().to_string()]);
        let foreign = || nft(&["list", "table", "inet", "foreign"]);
        assert_eq!(foreign(), FOREIGN);
        let state = common::state::StateDir::new(NODE);
        let mut dataplane = dataplane();
        assert!(converge(&mut dataplane, &desired(&state)).converged());
        assert_eq!(listed(), LISTED);
        assert_eq!(foreign(), FOREIGN);
        teardown(&mut dataplane);
        assert_eq!(foreign(), FOREIGN);
        assert_eq!(nft(&["list", "tables"]), "table inet foreign\n");
    });
}

/// A program that logs its name to `log`, then runs the real one (named as the
/// nf_tables one, which kudonet tells by the name when a ruleset is empty).
fn recording(program: &str, log: &str) -> String {
    let real = common::sh(&format!("command -v {program}"));
    let wrapper = format!("/run/recording-nft-{program}");
    let script = format!(
        "#!/bin/sh\necho {program} >> {log}\nexec {} \"$@\"\n",
        real.trim()
    );
    std::fs::write(&wrapper, script).unwrap();
    common::run_ok("chmod", &["+x", &wrapper]);
    wrapper
}

#[test]
fn a_forward_drop_policy_gets_kudonets_chain_and_its_own_writes_are_not_read_again() {
    common::sandboxed(
        "a_forward_drop_policy_gets_kudonets_chain_and_its_own_writes_are_not_read_again",
        || {
            use kudonet::kernel::firewall::iptables::Iptables;
            use kudonet::kernel::firewall::{IptablesFirewall, NftablesFirewall};

            // Docker's policy, IPv4 only.
            common::run_ok("iptables", &["-P", "FORWARD", "DROP"]);
            let log = "/run/saves.log";
            let iptables = IptablesFirewall::with(
                Iptables::with_programs(
                    recording("iptables-save", log),
                    common::sh("command -v iptables-restore").trim(),
                ),
                Iptables::with_programs(
                    recording("ip6tables-save", log),
                    common::sh("command -v ip6tables-restore").trim(),
                ),
            );
            let mut dataplane = KernelDataplane::with_firewall(
                Path::new("/run/netns"),
                Box::new(NftablesFirewall::with(iptables)),
            )
            .unwrap();
            let state = common::state::StateDir::new(NODE);
            let outcome = converge(&mut dataplane, &desired(&state));
            assert!(outcome.converged(), "{:?}", outcome.remaining);
            assert_eq!(
                outcome.observed.iptables_forward_drops,
                [kudonet::spec::Family::Ipv4].into()
            );
            let filter = common::run_ok("iptables-save", &["-t", "filter"]);
            assert!(
                filter.contains("-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD\n"),
                "{filter}"
            );
            assert!(!common::run_ok("ip6tables-save", &[]).contains("KUDO"));
            assert_eq!(listed(), LISTED);
            // Read once, at the first observation: kudonet's own iptables-restore and nft
            // batch each moved the generation by one, and were taken as read.
            let read = std::fs::read_to_string(log).unwrap();
            assert_eq!(read, "iptables-save\nip6tables-save\n");
            let outcome = converge(&mut dataplane, &desired(&state));
            assert!(outcome.applied.is_empty(), "{:?}", outcome.applied);
            assert_eq!(std::fs::read_to_string(log).unwrap(), read);

            // The policy back to accept: kudonet's chain goes.
            common::run_ok("iptables", &["-P", "FORWARD", "ACCEPT"]);
            assert!(converge(&mut dataplane, &desired(&state)).converged());
            assert!(!common::run_ok("iptables-save", &[]).contains("KUDO"));
            assert_eq!(listed(), LISTED);
        },
    );
}

#[test]
fn without_iptables_the_nftables_backend_runs_alone() {
    common::sandboxed("without_iptables_the_nftables_backend_runs_alone", || {
        use kudonet::kernel::firewall::iptables::Iptables;
        use kudonet::kernel::firewall::{IptablesFirewall, NftablesFirewall};

        let missing = || Iptables::with_programs("/nonexistent/save", "/nonexistent/restore");
        let mut dataplane = KernelDataplane::with_firewall(
            Path::new("/run/netns"),
            Box::new(NftablesFirewall::with(IptablesFirewall::with(
                missing(),
                missing(),
            ))),
        )
        .unwrap();
        let state = common::state::StateDir::new(NODE);
        let outcome = converge(&mut dataplane, &desired(&state));
        assert!(outcome.converged(), "{:?}", outcome.remaining);
        assert_eq!(listed(), LISTED);
        teardown(&mut dataplane);
        assert_eq!(nft(&["list", "ruleset"]), "");
    });
}

#[test]
fn the_controller_repairs_others_changes_from_their_events() {
    common::sandboxed(
        "the_controller_repairs_others_changes_from_their_events",
        || {
            let state = common::state::StateDir::new(NODE);
            // No resync for an hour: a repair comes from the nf_tables event.
            let kudonet = common::controller::Controller::start(
                &state,
                &["--firewall", "nftables", "--resync", "3600"],
            );
            kudonet.wait_until("the table is written", || listed_or_nothing() == LISTED);
            let damages: [&[&str]; 3] = [
                &["flush", "chain", "inet", "kudonet", "postrouting"],
                &[
                    "delete",
                    "element",
                    "inet",
                    "kudonet",
                    "ports4",
                    "{ tcp . 8080 }",
                ],
                &["delete", "table", "inet", "kudonet"],
            ];
            for damage in damages {
                nft(damage);
                kudonet.wait_until(&format!("{damage:?} is repaired"), || {
                    listed_or_nothing() == LISTED
                });
            }
            kudonet.stop();
            assert_eq!(listed(), LISTED, "left in place when the controller stops");
        },
    );
}

#[test]
fn thousands_of_elements_are_written_and_read_back() {
    common::sandboxed("thousands_of_elements_are_written_and_read_back", || {
        use kudonet::nftables::{Element, Ruleset, Set, Type, Value};
        use kudonet::plan::Action;
        use kudonet::spec::Protocol;

        // 4000 IPv6 ports with long comments: many messages, a batch beyond the default
        // socket buffer.
        let elements = (0..4000u16)
            .map(|index| {
                (
                    vec![Value::Proto(Protocol::Tcp), Value::Port(10000 + index)],
                    Element {
                        data: vec![
                            Value::Address(format!("fd00:10::{index:x}").parse().unwrap()),
                            Value::Port(80),
                        ],
                        comment: Some(format!("{:0>60}", index)),
                    },
                )
            })
            .collect();
        let ruleset = Ruleset {
            sets: [(
                "ports6".to_string(),
                Set {
                    key: vec![Type::InetProto, Type::InetService],
                    data: vec![Type::Ipv6Addr, Type::InetService],
                    elements,
                },
            )]
            .into(),
            chains: Default::default(),
        };
        let mut dataplane = dataplane();
        let before = generation();
        dataplane
            .apply(&Action::SyncNftables {
                ruleset: ruleset.clone(),
                create: true,
                diff: Vec::new(),
            })
            .unwrap();
        assert_eq!(generation(), before.wrapping_add(1));
        assert_eq!(dataplane.observe().unwrap().nftables, Some(ruleset));
    });
}

#[test]
fn a_refused_transaction_names_the_object_and_changes_nothing() {
    common::sandboxed(
        "a_refused_transaction_names_the_object_and_changes_nothing",
        || {
            use kudonet::nftables::{Chain, Match, Rule, Ruleset, Verdict};
            use kudonet::plan::Action;

            // A rule looking up a set the table does not have.
            let ruleset = Ruleset {
                sets: Default::default(),
                chains: [(
                    "forward".to_string(),
                    Chain {
                        hook: None,
                        rules: vec![Rule {
                            matches: vec![Match::IifnameIn("nosuch".into())],
                            verdict: Verdict::Accept,
                        }],
                    },
                )]
                .into(),
            };
            let mut dataplane = dataplane();
            let before = generation();
            let error = dataplane
                .apply(&Action::SyncNftables {
                    ruleset,
                    create: true,
                    diff: Vec::new(),
                })
                .unwrap_err()
                .to_string();
            assert!(
                error.ends_with(
                    "nftables: add rule to chain forward: No such file or directory (os error 2)"
                ),
                "{error}"
            );
            assert_eq!(generation(), before, "the transaction was aborted");
            assert_eq!(nft(&["list", "ruleset"]), "");
        },
    );
}

/// A ruleset of one regular chain with `rules` accept rules: small, and different for each
/// count.
fn accepting(rules: usize) -> kudonet::nftables::Ruleset {
    use kudonet::nftables::{Chain, Rule, Ruleset, Verdict};
    Ruleset {
        sets: Default::default(),
        chains: [(
            "accepting".to_string(),
            Chain {
                hook: None,
                rules: vec![
                    Rule {
                        matches: Vec::new(),
                        verdict: Verdict::Accept,
                    };
                    rules
                ],
            },
        )]
        .into(),
    }
}

#[test]
fn a_transaction_based_on_a_read_the_ruleset_has_moved_past_is_refused_whole() {
    common::sandboxed(
        "a_transaction_based_on_a_read_the_ruleset_has_moved_past_is_refused_whole",
        || {
            use kudonet::kernel::netlink::{NfTables, TableState};

            let mut socket = NfTables::open().unwrap();
            let (state, at) = socket.read_kudonet().unwrap();
            assert_eq!(state, TableState::Absent);
            let at = socket
                .sync_kudonet(None, at, &accepting(1))
                .unwrap()
                .unwrap();
            let (state, read_at) = socket.read_kudonet().unwrap();
            assert_eq!(read_at, at);
            assert_eq!(state, TableState::Ours(accepting(1)));
            // Meanwhile, someone replaces it with a table of their own of that name.
            nft(&["delete", "table", "inet", "kudonet"]);
            nft(&["add", "table", "inet", "kudonet"]);
            let theirs = nft(&["list", "ruleset"]);
            let moved = generation();

            let error = socket
                .sync_kudonet(state.ruleset(), at, &accepting(2))
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "nftables: the ruleset changed meanwhile (it is past generation {at}, where \
                     kudonet read it), so the transaction was refused and nothing written; the \
                     next pass reads it again: Interrupted system call should be restarted (os \
                     error 85)"
                )
            );
            assert!(error.can_retry());
            assert_eq!(generation(), moved, "nothing was committed");
            assert_eq!(nft(&["list", "ruleset"]), theirs);
            let error = socket.delete_kudonet(at).unwrap_err();
            assert_eq!(error.errno(), Some(85));
            assert_eq!(nft(&["list", "ruleset"]), theirs);
            // Read again, it is someone else's.
            assert_eq!(socket.read_kudonet().unwrap(), (TableState::Foreign, moved));
        },
    );
}

#[test]
fn a_table_created_meanwhile_where_none_was_read_fails_the_creation() {
    common::sandboxed(
        "a_table_created_meanwhile_where_none_was_read_fails_the_creation",
        || {
            use kudonet::kernel::netlink::NfTables;

            let mut socket = NfTables::open().unwrap();
            nft(&["add", "table", "inet", "kudonet"]);
            let theirs = nft(&["list", "ruleset"]);
            // Based on the current generation, as if the table had been read absent at it:
            // the exclusive creation is what refuses it.
            let error = socket
                .sync_kudonet(None, generation(), &accepting(1))
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                "nftables: add table inet kudonet: File exists (os error 17)"
            );
            assert_eq!(nft(&["list", "ruleset"]), theirs);
        },
    );
}

#[test]
fn a_large_refused_transaction_still_names_the_kernels_errno() {
    common::sandboxed(
        "a_large_refused_transaction_still_names_the_kernels_errno",
        || {
            use kudonet::kernel::netlink::NfTables;
            use kudonet::nftables::{Match, Rule, Verdict};

            // Thousands of messages, the last one refused: thousands of acknowledgements.
            let mut ruleset = accepting(5000);
            let rules = &mut ruleset.chains.get_mut("accepting").unwrap().rules;
            rules.push(Rule {
                matches: vec![Match::IifnameIn("nosuch".into())],
                verdict: Verdict::Accept,
            });
            let mut socket = NfTables::open().unwrap();
            let before = generation();
            let error = socket.sync_kudonet(None, before, &ruleset).unwrap_err();
            assert_eq!(
                error.to_string(),
                "nftables: add rule to chain accepting: No such file or directory (os error 2)"
            );
            assert_eq!(generation(), before, "the transaction was aborted");
            assert_eq!(nft(&["list", "ruleset"]), "");
        },
    );
}

#[test]
fn a_dormant_table_reads_as_not_kudonets_and_says_why() {
    common::sandboxed("a_dormant_table_reads_as_not_kudonets_and_says_why", || {
        use kudonet::kernel::netlink::{NfTables, TableState};

        let mut socket = NfTables::open().unwrap();
        let (_, at) = socket.read_kudonet().unwrap();
        socket.sync_kudonet(None, at, &accepting(1)).unwrap();
        nft(&["add", "table", "inet", "kudonet", "{ flags dormant; }"]);
        let (state, at) = socket.read_kudonet().unwrap();
        let TableState::Ours(read) = &state else {
            panic!("{state:?}")
        };
        assert_eq!(
            kudonet::nftables::diff(Some(read), &accepting(1)),
            ["- chain (table flags 0x1: dormant)"]
        );
        // Replaced: the new table is not dormant.
        socket
            .sync_kudonet(state.ruleset(), at, &accepting(1))
            .unwrap();
        assert_eq!(
            socket.read_kudonet().unwrap().0,
            TableState::Ours(accepting(1))
        );
    });
}
