//! iptables through iptables-save / iptables-restore on a real kernel, each test in its own
//! node sandbox (a private network namespace: its firewall is not the machine's).

mod common;

use std::collections::BTreeMap;

use kudonet::kernel::firewall::FirewallError;
use kudonet::kernel::firewall::iptables::{Iptables, parse_save, synced_table};
use kudonet::observed::Table;

type Chains = BTreeMap<String, Vec<String>>;

fn map(entries: &[(&str, &[&str])]) -> Chains {
    entries
        .iter()
        .map(|(chain, rules)| {
            let rules = rules.iter().map(|rule| rule.to_string()).collect();
            (chain.to_string(), rules)
        })
        .collect()
}

fn jump(chain: &str) -> String {
    format!("-m comment --comment kudonet -j {chain}")
}

/// Foreign rules as a Docker host with a firewall has them.
const FOREIGN: &str = r#"
iptables -P FORWARD DROP
iptables -N DOCKER-USER
iptables -A DOCKER-USER -j RETURN
iptables -A FORWARD -j DOCKER-USER
iptables -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
iptables -A INPUT -p tcp --dport 22 -m comment --comment "admin ssh" -j ACCEPT
iptables -t nat -N DOCKER
iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
"#;

/// What an older kudonet left: a chain it no longer wants, jumped to after foreign rules.
const STALE: &str = r#"
iptables -N KUDO-OLD
iptables -A KUDO-OLD -j ACCEPT
iptables -A FORWARD -m comment --comment kudonet -j KUDO-OLD
iptables -t nat -N KUDO-PORTS
iptables -t nat -A KUDO-PORTS -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.9:80
"#;

/// kudonet's filter table, as the planner writes it.
fn filter_rules() -> (Chains, Chains) {
    let chains = map(&[(
        "KUDO-FORWARD",
        &[
            "-i kudo0 -j ACCEPT",
            "-o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-o kudo0 -m conntrack --ctstate DNAT -j ACCEPT",
        ],
    )]);
    let jumps = BTreeMap::from([("FORWARD".to_string(), vec![jump("KUDO-FORWARD")])]);
    (chains, jumps)
}

/// kudonet's nat table, as the planner writes it.
fn nat_rules() -> (Chains, Chains) {
    let local = "-m addrtype --dst-type LOCAL -j KUDO-PORTS";
    let chains = map(&[
        ("KUDO-OUTPUT", &[local]),
        (
            "KUDO-PORTS",
            &[
                "-p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80",
                "-d 192.168.56.11/32 -p udp -m udp --dport 5353 -m comment --comment dns -j DNAT --to-destination 10.0.0.3:53",
            ],
        ),
        (
            "KUDO-POSTROUTING",
            &[
                "-s 10.0.0.0/24 -o kudo0 -m conntrack --ctstate DNAT -j MASQUERADE",
                "-o kudo0 -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE",
                "-s 10.0.0.0/24 -d 10.0.0.0/16 -j RETURN",
                "-s 10.0.0.0/24 ! -o kudo0 -j MASQUERADE",
            ],
        ),
        ("KUDO-PREROUTING", &[local]),
    ]);
    let jumps = ["OUTPUT", "POSTROUTING", "PREROUTING"]
        .into_iter()
        .map(|chain| (chain.to_string(), vec![jump(&format!("KUDO-{chain}"))]))
        .collect();
    (chains, jumps)
}

/// The table as `iptables-save` prints it now.
fn saved(table: &str) -> Table {
    let text = common::run_ok("iptables-save", &["-t", table]);
    parse_save(&text).unwrap().remove(table).unwrap()
}

/// An `iptables-restore` that logs each call to `log`, then does the real thing.
fn recording_restore(log: &str) -> String {
    let real = common::sh("command -v iptables-restore");
    let wrapper = "/run/recording-iptables-restore";
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {log}\nexec {} \"$@\"\n",
        real.trim()
    );
    std::fs::write(wrapper, script).unwrap();
    common::run_ok("chmod", &["+x", wrapper]);
    wrapper.to_string()
}

fn calls(log: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn sync_rewrites_only_kudonets_rules_and_teardown_leaves_the_foreign_ones() {
    common::sandboxed(
        "sync_rewrites_only_kudonets_rules_and_teardown_leaves_the_foreign_ones",
        || {
            common::sh(FOREIGN);
            let foreign_filter = saved("filter");
            let foreign_nat = saved("nat");
            common::sh(STALE);
            let log = "/run/restore-calls";
            let iptables = Iptables::with_programs("iptables-save", recording_restore(log));
            let (filter_chains, filter_jumps) = filter_rules();
            let (nat_chains, nat_jumps) = nat_rules();

            iptables
                .sync_table("filter", &filter_chains, &filter_jumps)
                .unwrap();
            iptables.sync_table("nat", &nat_chains, &nat_jumps).unwrap();
            assert_eq!(calls(log), 2, "one iptables-restore per table");

            // Exactly kudonet's chains, its jumps first, the foreign rules in their order.
            let filter_text = common::run_ok("iptables-save", &["-t", "filter"]);
            assert!(
                filter_text
                    .lines()
                    .any(|line| line == ":FORWARD DROP [0:0]"),
                "the FORWARD policy is kept:\n{filter_text}"
            );
            let expected_filter = Table {
                chains: map(&[
                    (
                        "INPUT",
                        &["-p tcp -m tcp --dport 22 -m comment --comment \"admin ssh\" -j ACCEPT"],
                    ),
                    (
                        "FORWARD",
                        &[
                            "-m comment --comment kudonet -j KUDO-FORWARD",
                            "-j DOCKER-USER",
                            "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                        ],
                    ),
                    ("OUTPUT", &[]),
                    ("DOCKER-USER", &["-j RETURN"]),
                    (
                        "KUDO-FORWARD",
                        &filter_chains["KUDO-FORWARD"]
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                    ),
                ]),
            };
            assert_eq!(parse_save(&filter_text).unwrap()["filter"], expected_filter);
            let mut expected_nat = Table {
                chains: map(&[
                    (
                        "PREROUTING",
                        &[
                            "-m comment --comment kudonet -j KUDO-PREROUTING",
                            "-m addrtype --dst-type LOCAL -j DOCKER",
                        ],
                    ),
                    ("INPUT", &[]),
                    ("OUTPUT", &["-m comment --comment kudonet -j KUDO-OUTPUT"]),
                    (
                        "POSTROUTING",
                        &[
                            "-m comment --comment kudonet -j KUDO-POSTROUTING",
                            "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                        ],
                    ),
                    ("DOCKER", &[]),
                ]),
            };
            expected_nat.chains.extend(nat_chains.clone());
            assert_eq!(saved("nat"), expected_nat);

            // Read back, the tables are what was synced: a planner would see no difference.
            assert_eq!(iptables.read_table("filter").unwrap(), expected_filter);
            assert_eq!(iptables.read_table("nat").unwrap(), expected_nat);
            assert_eq!(
                synced_table(&foreign_filter, &filter_chains, &filter_jumps),
                expected_filter
            );
            assert_eq!(
                synced_table(&foreign_nat, &nat_chains, &nat_jumps),
                expected_nat
            );

            // Converged: a second sync runs no iptables-restore at all.
            iptables
                .sync_table("filter", &filter_chains, &filter_jumps)
                .unwrap();
            iptables.sync_table("nat", &nat_chains, &nat_jumps).unwrap();
            assert_eq!(calls(log), 2, "a converged table needs no iptables-restore");

            // Someone puts a rule ahead of kudonet's jump: the jump moves back to the head.
            common::sh("iptables -I FORWARD 1 -s 192.0.2.0/24 -j DROP");
            iptables
                .sync_table("filter", &filter_chains, &filter_jumps)
                .unwrap();
            assert_eq!(calls(log), 3);
            assert_eq!(
                saved("filter").chains["FORWARD"],
                [
                    "-m comment --comment kudonet -j KUDO-FORWARD",
                    "-s 192.0.2.0/24 -j DROP",
                    "-j DOCKER-USER",
                    "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                ]
            );
            common::sh("iptables -D FORWARD -s 192.0.2.0/24 -j DROP");

            // Teardown: only the foreign rules remain, as they were.
            let none = BTreeMap::new();
            iptables.sync_table("filter", &none, &none).unwrap();
            iptables.sync_table("nat", &none, &none).unwrap();
            assert_eq!(calls(log), 5);
            assert_eq!(saved("filter"), foreign_filter);
            assert_eq!(saved("nat"), foreign_nat);
            let after = common::run_ok("iptables-save", &[]);
            assert!(!after.contains("KUDO-"), "{after}");
            assert!(after.contains(":FORWARD DROP"), "{after}");

            // And a torn-down node stays untouched.
            iptables.sync_table("filter", &none, &none).unwrap();
            assert_eq!(calls(log), 5);
        },
    );
}

#[test]
fn a_missing_binary_is_one_line_naming_the_package() {
    // Nothing runs: the binaries do not exist.
    let missing = Iptables::with_programs("/nonexistent/iptables-save", "iptables-restore");
    let error = missing.read_table("filter").unwrap_err();
    assert_eq!(
        error.to_string(),
        "/nonexistent/iptables-save not found: install the iptables package (apt-get install iptables)"
    );
    let (chains, jumps) = filter_rules();
    assert_eq!(
        missing.sync_table("filter", &chains, &jumps).unwrap_err(),
        error
    );
    let not_in_path = Iptables::with_programs("kudonet-test-no-such-iptables-save", "x");
    assert_eq!(
        not_in_path.read_table("nat").unwrap_err().to_string(),
        "kudonet-test-no-such-iptables-save not found: install the iptables package (apt-get install iptables)"
    );
}

#[test]
fn a_missing_or_failing_restore_is_reported_and_changes_nothing() {
    common::sandboxed(
        "a_missing_or_failing_restore_is_reported_and_changes_nothing",
        || {
            common::sh(FOREIGN);
            let before = common::run_ok("iptables-save", &["-t", "filter"]);
            let (chains, jumps) = filter_rules();

            let missing = Iptables::with_programs("iptables-save", "/run/no/iptables-restore");
            let error = missing.sync_table("filter", &chains, &jumps).unwrap_err();
            assert_eq!(
                error.to_string(),
                "/run/no/iptables-restore not found: install the iptables package (apt-get install iptables)"
            );

            let failing = "/run/failing-iptables-restore";
            std::fs::write(
                failing,
                "#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: something broke' >&2\necho '  second line  ' >&2\nexit 3\n",
            )
            .unwrap();
            common::run_ok("chmod", &["+x", failing]);
            let error = Iptables::with_programs("iptables-save", failing)
                .sync_table("filter", &chains, &jumps)
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "{failing} failed (exit status 3): iptables-restore: something broke; second line"
                )
            );

            // The real iptables-restore refusing a rule: the transaction is all or nothing,
            // and the error names the line of the script.
            let bad = BTreeMap::from([(
                "KUDO-FORWARD".to_string(),
                vec![
                    "-i kudo0 -j ACCEPT".to_string(),
                    "-o kudo0 -j ACCEPT --no-such-option".to_string(),
                ],
            )]);
            let error = Iptables::new()
                .sync_table("filter", &bad, &jumps)
                .unwrap_err();
            let FirewallError::Failed {
                program,
                status,
                stderr,
                script_line,
            } = &error
            else {
                panic!("{error:?}");
            };
            assert_eq!(program, "iptables-restore");
            assert_eq!(status, "exit status 2");
            assert!(stderr.contains("--no-such-option"), "{error}");
            assert!(!stderr.contains('\n'), "{error}");
            assert_eq!(
                script_line.as_deref(),
                Some("4: -A KUDO-FORWARD -o kudo0 -j ACCEPT --no-such-option"),
                "{error}"
            );
            assert_eq!(
                common::run_ok("iptables-save", &["-t", "filter"])
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>(),
                before
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .collect::<Vec<_>>()
            );
        },
    );
}

#[test]
fn reading_an_unknown_table_fails_with_iptables_save_s_reason() {
    common::sandboxed(
        "reading_an_unknown_table_fails_with_iptables_save_s_reason",
        || {
            let error = Iptables::new().read_table("bogus").unwrap_err();
            assert_eq!(
                error.to_string(),
                "iptables-save failed (exit status 1): Table `bogus' does not exist"
            );
        },
    );
}

#[test]
fn one_save_of_all_tables_reads_what_a_save_per_table_reads() {
    common::sandboxed(
        "one_save_of_all_tables_reads_what_a_save_per_table_reads",
        || {
            let iptables = Iptables::new();
            let per_table = || -> BTreeMap<String, Table> {
                ["nat", "filter"]
                    .into_iter()
                    .map(|table| (table.to_string(), iptables.read_table(table).unwrap()))
                    .collect()
            };
            // A fresh namespace has no table yet: both read the empty built-in chains.
            let (fresh, _) = iptables.read_tables(&["nat", "filter"]).unwrap();
            assert_eq!(fresh, per_table());
            assert_eq!(
                fresh["filter"].chains.keys().collect::<Vec<_>>(),
                ["FORWARD", "INPUT", "OUTPUT"]
            );

            common::sh(FOREIGN);
            let (foreign, nf_tables) = iptables.read_tables(&["nat", "filter"]).unwrap();
            assert_eq!(foreign, per_table());
            assert!(foreign["nat"].chains.contains_key("DOCKER"));
            assert!(nf_tables, "this machine's iptables is the nf_tables one");
        },
    );
}

/// What a sync reports having written is what the kernel then has, to the rule: the kernel
/// dataplane keeps it as the table's state instead of reading the table again.
#[test]
fn a_sync_reports_the_table_as_the_kernel_then_has_it() {
    common::sandboxed("a_sync_reports_the_table_as_the_kernel_then_has_it", || {
        common::sh(FOREIGN);
        common::sh(STALE);
        let iptables = Iptables::new();
        let (filter_chains, filter_jumps) = filter_rules();
        let (nat_chains, nat_jumps) = nat_rules();
        // An empty chain of kudonet's (no published port) is created all the same.
        let no_ports: Chains = nat_chains
            .iter()
            .map(|(chain, rules)| match chain.as_str() {
                "KUDO-PORTS" => (chain.clone(), Vec::new()),
                _ => (chain.clone(), rules.clone()),
            })
            .collect();
        let none = BTreeMap::new();
        let requests = [
            ("filter", &filter_chains, &filter_jumps),
            ("nat", &nat_chains, &nat_jumps),
            ("nat", &none, &none),
            ("nat", &no_ports, &nat_jumps),
            ("filter", &none, &none),
            ("nat", &none, &none),
        ];
        for (table, chains, jumps) in requests {
            let current = iptables.read_table(table).unwrap();
            let written = iptables
                .sync_table_from(table, Some(current), chains, jumps)
                .unwrap()
                .expect("a change was written");
            assert_eq!(written, iptables.read_table(table).unwrap(), "{table}");
        }
    });
}

#[test]
fn a_node_with_ipv6_and_no_ip6tables_is_refused_before_any_change() {
    common::sandboxed(
        "a_node_with_ipv6_and_no_ip6tables_is_refused_before_any_change",
        || {
            use kudonet::kernel::KernelDataplane;
            use kudonet::kernel::firewall::IptablesFirewall;
            use kudonet::reconcile::{self, NoProgress};

            let state = common::state::StateDir::new(
                "kind: Node\nname: node-a\ncidr: [10.0.0.1/24, \"fd00:10::1/64\"]\n",
            );
            let (_, desired) =
                reconcile::load_desired(std::path::Path::new(state.path()), None).unwrap();
            let no_ip6tables = IptablesFirewall::with(
                Iptables::new(),
                Iptables::with_programs("/nonexistent/ip6tables-save", "/nonexistent/x"),
            );
            let mut dataplane = KernelDataplane::with_firewall(
                std::path::Path::new("/run/netns"),
                Box::new(no_ip6tables),
            )
            .unwrap();
            let links_before = common::run_ok("ip", &["-o", "link", "show"]);
            let error = reconcile::converge(
                &mut dataplane,
                &desired,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("/nonexistent/ip6tables-save not found"),
                "{error}"
            );
            assert_eq!(
                common::run_ok("ip", &["-o", "link", "show"]),
                links_before,
                "nothing was built"
            );

            // An IPv4 node needs no ip6tables.
            let state =
                common::state::StateDir::new("kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n");
            let (_, desired) =
                reconcile::load_desired(std::path::Path::new(state.path()), None).unwrap();
            let outcome = reconcile::converge(
                &mut dataplane,
                &desired,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap();
            assert!(outcome.converged(), "{:?}", outcome.failures);
        },
    );
}
