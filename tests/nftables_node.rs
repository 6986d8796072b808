//! kudonet's nftables backend (`--firewall nftables`) through the binary on a real kernel,
//! in a sandbox, with real packets (`tests/nftables.rs` tests the backend's driver itself):
//!
//! - beside Docker's iptables rules (FORWARD dropping by policy in both families, its
//!   chains, a masquerade of its own bridge) and a foreign nftables table, kudonet's
//!   traffic is forwarded both ways in both families, and everything that is not kudonet's
//!   stays byte for byte as it was, through apply, repair, switching and teardown; the
//!   owned KUDO-FORWARD chain lives in iptables only while its FORWARD policy drops;
//! - switching between iptables and nftables both ways leaves the other one without a rule
//!   of kudonet's, with packets proving each state, and teardown after each removes both;
//! - `kudonet run --firewall nftables` repairs its table from kernel events, and the
//!   forwarded paths work after each repair;
//! - a published port whose target changes (another instance port, another instance) is
//!   changed by one transaction that replaces its elements alone, and packets follow.
//!
//! The node is dual-stack, as `tests/kernel_ipv6.rs`'s: uplink `eth0` (192.0.2.10/24,
//! 2001:db8::10/64) to "outside" (192.0.2.254, 2001:db8::fe).

mod common;

use common::cli::{Run, kudonet};
use common::controller::Controller;
use common::kernel::KUDO_FORWARD_ONLY;
use common::probes::{seen, serve};
use common::{
    Firewall, StateDir, kudo_lines, netns, nft_kudonet, nft_table, setup_outside_dual_stack, sh,
};

use std::net::SocketAddr;

use kudonet::probe::{self, EchoServer};
use kudonet::spec::Protocol::{Tcp, Udp};

/// The dual-stack node of the kernel tests (`common::DUAL_STACK`).
const DUAL: &str = common::DUAL_STACK;

/// `nft list table inet kudonet` for `DUAL`.
const DUAL_TABLE: &str = include_str!("nft/dual-stack.nft");

/// Docker's iptables rules (as `dockerd` writes them with its iptables backend, bridge
/// docker0 on 172.17.0.0/16), in both families.
const DOCKER: &str = "
for iptables in iptables ip6tables; do
  $iptables -w -N DOCKER
  $iptables -w -N DOCKER-ISOLATION-STAGE-1
  $iptables -w -N DOCKER-ISOLATION-STAGE-2
  $iptables -w -N DOCKER-USER
  $iptables -w -P FORWARD DROP
  $iptables -w -A FORWARD -j DOCKER-USER
  $iptables -w -A FORWARD -j DOCKER-ISOLATION-STAGE-1
  $iptables -w -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  $iptables -w -A FORWARD -o docker0 -j DOCKER
  $iptables -w -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
  $iptables -w -A FORWARD -i docker0 -o docker0 -j ACCEPT
  $iptables -w -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
  $iptables -w -A DOCKER-ISOLATION-STAGE-1 -j RETURN
  $iptables -w -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
  $iptables -w -A DOCKER-ISOLATION-STAGE-2 -j RETURN
  $iptables -w -A DOCKER-USER -j RETURN
  $iptables -w -t nat -N DOCKER
  $iptables -w -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
  $iptables -w -t nat -A DOCKER -i docker0 -j RETURN
done
iptables -w -t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
iptables -w -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
iptables -w -t nat -A DOCKER -d 172.17.0.2/32 ! -i docker0 -p tcp -m tcp --dport 9999 -j DNAT --to-destination 172.17.0.2:80
ip6tables -w -t nat -A POSTROUTING -s fd00:17::/64 ! -o docker0 -j MASQUERADE
";

/// Someone else's nftables table, with base chains on the hooks kudonet uses and a set.
/// No counters: its listing must not move with traffic.
const FOREIGN_TABLE: &str = r#"
nft -f - <<'EOF'
table inet foreign {
	set blocked {
		type ipv4_addr
		elements = { 198.51.100.7, 198.51.100.8 }
	}
	chain forward {
		type filter hook forward priority 10; policy accept;
		ip saddr @blocked drop
	}
	chain postrouting {
		type nat hook postrouting priority 110; policy accept;
		ip saddr 172.18.0.0/16 oifname "eth0" masquerade
	}
}
EOF
"#;

/// `iptables-save` then `ip6tables-save`: no comment lines (they hold the time), no
/// counters (traffic moves them).
fn iptables_state() -> String {
    sh("{ iptables-save; ip6tables-save; } | sed -e '/^#/d' -e 's/ \\[[0-9]*:[0-9]*\\]$//'")
}

/// `iptables_state` without kudonet's lines.
fn without_kudonet(state: &str) -> String {
    state
        .lines()
        .filter(|line| !line.contains("KUDO-"))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `nft list table inet foreign`.
fn foreign_table() -> String {
    nft_table("inet foreign").expect("the foreign table is there")
}

/// `kudonet ARGS... --firewall FIREWALL`, which must succeed.
#[track_caller]
fn kudonet_ok(firewall: Firewall, args: &[&str]) -> Run {
    let run = kudonet(&firewall.args(args));
    run.expect_success();
    run
}

/// Echo servers: web TCP 80 and UDP 53, outside TCP 9000 (both families).
fn start_servers() -> Vec<EchoServer> {
    vec![
        serve(&netns("kudo-web"), Tcp, 80),
        serve(&netns("kudo-web"), Udp, 53),
        serve(&netns("outside"), Tcp, 9000),
    ]
}

/// The forwarded paths of both families (servers of `start_servers` running): a client
/// outside to a published port, TCP and UDP, seen as itself; an instance to the outside,
/// masqueraded; an instance to another one's published port through the node (hairpin).
#[track_caller]
fn assert_forwarded() {
    let (web, db, outside) = (netns("kudo-web"), netns("kudo-db"), netns("outside"));
    assert_eq!(seen(&outside, Tcp, "192.0.2.10:8080"), "192.0.2.254");
    assert_eq!(seen(&outside, Udp, "192.0.2.10:5353"), "192.0.2.254");
    assert_eq!(seen(&outside, Tcp, "[2001:db8::10]:8080"), "2001:db8::fe");
    assert_eq!(seen(&outside, Udp, "[2001:db8::10]:5353"), "2001:db8::fe");
    assert_eq!(seen(&db, Tcp, "192.0.2.254:9000"), "192.0.2.10");
    assert_eq!(seen(&web, Tcp, "[2001:db8::fe]:9000"), "2001:db8::10");
    assert_eq!(seen(&db, Tcp, "192.0.2.10:8080"), "10.0.0.1");
    assert_eq!(seen(&db, Tcp, "[2001:db8::10]:8080"), "fd00:10::1");
    assert_eq!(seen(&db, Tcp, "10.0.0.2:80"), "10.0.0.3");
    assert_eq!(seen(&db, Tcp, "[fd00:10::2]:80"), "fd00:10::3");
}

/// With nftables on Docker's node: kudonet's table exactly; iptables and ip6tables exactly
/// as `docker` left them plus the owned KUDO-FORWARD chain and its jump, at the head of
/// FORWARD; the foreign table as `foreign` was; every iptables table still readable.
#[track_caller]
fn assert_beside_docker(docker: &str, foreign: &str) {
    assert_eq!(nft_kudonet().as_deref(), Some(DUAL_TABLE));
    assert_eq!(kudo_lines(false), KUDO_FORWARD_ONLY);
    assert_eq!(kudo_lines(true), KUDO_FORWARD_ONLY);
    let state = iptables_state();
    assert_eq!(without_kudonet(&state), docker);
    // kudonet's jump stands right before Docker's first FORWARD rule, in each family.
    let jump = "-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD";
    let docker_first = "-A FORWARD -j DOCKER-USER";
    let lines: Vec<&str> = state.lines().collect();
    let before_docker: Vec<&str> = lines
        .windows(2)
        .filter(|pair| pair[1] == docker_first)
        .map(|pair| pair[0])
        .collect();
    assert_eq!(before_docker, [jump, jump]);
    assert!(!state.contains("incompatible"), "{state}");
    assert_eq!(foreign_table(), foreign);
}

#[test]
fn beside_docker_and_a_foreign_table() {
    common::sandboxed("beside_docker_and_a_foreign_table", || {
        setup_outside_dual_stack();
        sh(DOCKER);
        sh(FOREIGN_TABLE);
        let docker = iptables_state();
        let foreign = foreign_table();
        let state = StateDir::new(DUAL);

        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        assert_beside_docker(&docker, &foreign);
        let _servers = start_servers();
        assert_forwarded();
        kudonet(&Firewall::Nftables.args(&["apply", state.path()])).expect(0, "No changes.\n", "");

        // Repair: kudonet's table deleted, then its jump in iptables.
        sh("nft delete table inet kudonet");
        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        assert_beside_docker(&docker, &foreign);
        assert_forwarded();
        sh("ip6tables -w -D FORWARD -m comment --comment kudonet -j KUDO-FORWARD");
        kudonet(&Firewall::Nftables.args(&["apply", "-v", state.path()])).expect(
            0,
            "~ ip6tables table filter\n    \
             + -A FORWARD -m comment --comment kudonet -j KUDO-FORWARD\n\
             Apply complete: 0 added, 1 changed, 0 destroyed.\n",
            "",
        );
        assert_beside_docker(&docker, &foreign);
        assert_forwarded();

        // Switching to iptables and back: Docker's rules and the foreign table stay.
        kudonet_ok(Firewall::Iptables, &["apply", state.path()]);
        assert_eq!(nft_kudonet(), None);
        assert_eq!(without_kudonet(&iptables_state()), docker);
        assert!(kudo_lines(false).contains(":KUDO-PORTS"));
        assert_eq!(foreign_table(), foreign);
        assert_forwarded();
        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        assert_beside_docker(&docker, &foreign);
        assert_forwarded();

        // Teardown: exactly what was there before kudonet.
        kudonet_ok(Firewall::Nftables, &["teardown"]);
        assert_eq!(nft_kudonet(), None);
        assert_eq!(iptables_state(), docker);
        assert_eq!(foreign_table(), foreign);
    });
}

#[test]
fn kudo_forward_stays_in_iptables_only_while_forward_drops() {
    common::sandboxed(
        "kudo_forward_stays_in_iptables_only_while_forward_drops",
        || {
            setup_outside_dual_stack();
            sh(DOCKER);
            let state = StateDir::new(DUAL);
            kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
            assert_eq!(kudo_lines(false), KUDO_FORWARD_ONLY);
            assert_eq!(kudo_lines(true), KUDO_FORWARD_ONLY);

            // IPv4's FORWARD accepts again: its KUDO-FORWARD goes, IPv6's stays.
            sh("iptables -w -P FORWARD ACCEPT");
            let docker = iptables_state();
            kudonet(&Firewall::Nftables.args(&["apply", "-v", state.path()])).expect(
                0,
                "~ iptables table filter\n    \
                 - -X KUDO-FORWARD\n    \
                 - -A FORWARD -m comment --comment kudonet -j KUDO-FORWARD\n\
                 Apply complete: 0 added, 1 changed, 0 destroyed.\n",
                "",
            );
            assert_eq!(kudo_lines(false), "");
            assert_eq!(kudo_lines(true), KUDO_FORWARD_ONLY);
            assert_eq!(without_kudonet(&iptables_state()), without_kudonet(&docker));
            let _servers = start_servers();
            assert_forwarded();

            sh("ip6tables -w -P FORWARD ACCEPT");
            kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
            assert_eq!(kudo_lines(true), "");
            assert_forwarded();
            assert_eq!(nft_kudonet().as_deref(), Some(DUAL_TABLE));

            // Docker comes back: so does KUDO-FORWARD.
            sh("iptables -w -P FORWARD DROP");
            kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
            assert_eq!(kudo_lines(false), KUDO_FORWARD_ONLY);
            assert_eq!(kudo_lines(true), "");
            assert_forwarded();
        },
    );
}

#[test]
fn switching_firewalls_both_ways() {
    common::sandboxed("switching_firewalls_both_ways", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);

        kudonet_ok(Firewall::Iptables, &["apply", state.path()]);
        let iptables_rules = (kudo_lines(false), kudo_lines(true));
        assert!(
            iptables_rules.0.contains(":KUDO-PORTS"),
            "{iptables_rules:?}"
        );
        assert!(
            iptables_rules.1.contains(":KUDO-PORTS"),
            "{iptables_rules:?}"
        );
        assert_eq!(nft_kudonet(), None);
        let _servers = start_servers();
        assert_forwarded();

        // To nftables: iptables keeps no rule of kudonet's (FORWARD accepts here).
        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        assert_eq!(
            (kudo_lines(false), kudo_lines(true)),
            (String::new(), String::new())
        );
        assert_eq!(nft_kudonet().as_deref(), Some(DUAL_TABLE));
        assert_forwarded();
        kudonet(&Firewall::Nftables.args(&["apply", state.path()])).expect(0, "No changes.\n", "");

        // Back to iptables: no nftables table; the chains as they were.
        kudonet_ok(Firewall::Iptables, &["apply", state.path()]);
        assert_eq!(nft_kudonet(), None);
        assert_eq!((kudo_lines(false), kudo_lines(true)), iptables_rules);
        assert_forwarded();
        kudonet(&Firewall::Iptables.args(&["apply", state.path()])).expect(0, "No changes.\n", "");

        // Teardown removes both, whichever firewall it is told.
        kudonet_ok(Firewall::Nftables, &["teardown"]);
        assert_eq!(nft_kudonet(), None);
        // The tables stay, empty: no chain or rule of kudonet.
        let empty = "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n\
                     *nat\n:PREROUTING ACCEPT\n:INPUT ACCEPT\n:OUTPUT ACCEPT\n:POSTROUTING ACCEPT\n\
                     COMMIT\n";
        assert_eq!(iptables_state(), empty.repeat(2));
        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        assert_eq!(nft_kudonet().as_deref(), Some(DUAL_TABLE));
        kudonet_ok(Firewall::Iptables, &["teardown"]);
        assert_eq!(nft_kudonet(), None);
        assert_eq!(iptables_state(), empty.repeat(2));
    });
}

/// Whether `kudonet plan --firewall nftables` finds nothing to do (it only reads, so it may
/// run beside `run`).
fn plan_is_empty(state: &StateDir) -> bool {
    let plan = kudonet(&Firewall::Nftables.args(&["plan", state.path()]));
    plan.code == 0 && plan.stdout == "No changes.\n"
}

#[test]
fn the_controller_repairs_its_table_from_events() {
    common::sandboxed("the_controller_repairs_its_table_from_events", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);
        // No resync within the test: only kernel events explain a repair.
        let controller = Controller::start(&state, &["--resync", "60", "--firewall", "nftables"]);
        controller.wait_ready(&["db", "web"]);
        controller.wait_until("the node is converged", || plan_is_empty(&state));
        assert_eq!(nft_kudonet().as_deref(), Some(DUAL_TABLE));
        let _servers = start_servers();
        assert_forwarded();

        let repaired = |what: &str| {
            controller.wait_until(&format!("{what} is repaired"), || {
                nft_kudonet().as_deref() == Some(DUAL_TABLE) && plan_is_empty(&state)
            });
            assert_forwarded();
        };
        sh("nft delete table inet kudonet");
        repaired("the deleted table");
        sh("nft flush chain inet kudonet postrouting");
        repaired("the flushed postrouting chain");
        sh("nft delete element inet kudonet ports4 '{ tcp . 8080 }'");
        repaired("web's deleted port");
        sh("nft delete element inet kudonet ports6 '{ udp . 5353 }'");
        repaired("web's deleted IPv6 UDP port");

        kudonet(&Firewall::Nftables.args(&["apply", state.path()])).expect(0, "No changes.\n", "");
        let log = controller.stop();
        assert!(
            log.contains("repaired changes made behind kudonet's back"),
            "{log}"
        );
        assert_eq!(kudo_lines(false), "");
        assert_eq!(kudo_lines(true), "");
    });
}

/// `nft -a list table inet kudonet`: the table with the handle of every set, chain and rule.
fn listed_with_handles() -> String {
    sh("nft -a list table inet kudonet")
}

/// `kudonet apply -v --firewall nftables` for `state`, which must succeed in one nf_tables
/// transaction (the generation moves by exactly one); returns what `-v` printed.
#[track_caller]
fn apply_one_transaction(state: &StateDir) -> String {
    let before = kudonet::kernel::firewall::nftables_generation().unwrap();
    let run = kudonet_ok(Firewall::Nftables, &["apply", "-v", state.path()]);
    let after = kudonet::kernel::firewall::nftables_generation().unwrap();
    assert_eq!(
        after,
        before.wrapping_add(1),
        "one transaction:\n{}",
        run.stdout
    );
    run.stdout
}

#[test]
fn a_port_with_a_new_target_changes_its_elements_only() {
    common::sandboxed("a_port_with_a_new_target_changes_its_elements_only", || {
        setup_outside_dual_stack();
        let state = StateDir::new(DUAL);
        kudonet_ok(Firewall::Nftables, &["apply", state.path()]);
        let outside = netns("outside");
        // Outside reaches port 8080 of the node in both families (`target` listening).
        let reached = |target: &str| {
            assert_eq!(
                seen(&outside, Tcp, "192.0.2.10:8080"),
                "192.0.2.254",
                "{target}"
            );
            assert_eq!(
                seen(&outside, Tcp, "[2001:db8::10]:8080"),
                "2001:db8::fe",
                "{target}"
            );
        };
        let any = |port| format!("[::]:{port}").parse::<SocketAddr>().unwrap();
        {
            let _web80 = probe::serve(&netns("kudo-web"), Tcp, any(80)).unwrap();
            reached("web:80");
        }
        let table = listed_with_handles();
        let element = |instance: &str, v4: &str, v6: &str, port: u16| {
            [
                format!("tcp . 8080 comment \"{instance}\" : {v4} . {port}"),
                format!("tcp . 8080 comment \"{instance}\" : {v6} . {port}"),
            ]
        };
        let [web80_v4, web80_v6] = element("web", "10.0.0.2", "fd00:10::2", 80);
        assert!(
            table.contains(&web80_v4) && table.contains(&web80_v6),
            "{table}"
        );

        // web's 8080 now leads to its port 81: both maps' element for tcp 8080 change.
        let to_81 = DUAL.replacen(
            "  - hostPort: 8080\n    instancePort: 80\n",
            "  - hostPort: 8080\n    instancePort: 81\n",
            1,
        );
        assert_ne!(to_81, DUAL);
        state.write("node.yaml", &to_81);
        let printed = apply_one_transaction(&state);
        assert_eq!(
            printed,
            "~ nftables table inet kudonet\n    \
             - element ports4 tcp . 8080 : 10.0.0.2 . 80  # web\n    \
             + element ports4 tcp . 8080 : 10.0.0.2 . 81  # web\n    \
             - element ports6 tcp . 8080 : fd00:10::2 . 80  # web\n    \
             + element ports6 tcp . 8080 : fd00:10::2 . 81  # web\n\
             Apply complete: 0 added, 1 changed, 0 destroyed.\n"
        );
        let [web81_v4, web81_v6] = element("web", "10.0.0.2", "fd00:10::2", 81);
        assert_eq!(
            listed_with_handles(),
            table
                .replace(&web80_v4, &web81_v4)
                .replace(&web80_v6, &web81_v6),
            "{printed}"
        );
        {
            // Nothing listens on web's port 80 any more: an answer comes from 81.
            let _web81 = probe::serve(&netns("kudo-web"), Tcp, any(81)).unwrap();
            reached("web:81");
        }

        // 8080 moves from web to db (its port 81): the same key, another instance.
        let to_db = DUAL
            .replacen("  - hostPort: 8080\n    instancePort: 80\n", "", 1)
            .replacen(
                "address: [10.0.0.3/24, \"fd00:10::3/64\"]\n",
                "address: [10.0.0.3/24, \"fd00:10::3/64\"]\n\
                 ports:\n  - hostPort: 8080\n    instancePort: 81\n",
                1,
            );
        assert!(to_db.ends_with("instancePort: 81\n"), "{to_db}");
        state.write("node.yaml", &to_db);
        let printed = apply_one_transaction(&state);
        assert_eq!(
            printed,
            "~ nftables table inet kudonet\n    \
             - element ports4 tcp . 8080 : 10.0.0.2 . 81  # web\n    \
             + element ports4 tcp . 8080 : 10.0.0.3 . 81  # db\n    \
             - element ports6 tcp . 8080 : fd00:10::2 . 81  # web\n    \
             + element ports6 tcp . 8080 : fd00:10::3 . 81  # db\n\
             Apply complete: 0 added, 1 changed, 0 destroyed.\n"
        );
        let [db81_v4, db81_v6] = element("db", "10.0.0.3", "fd00:10::3", 81);
        assert_eq!(
            listed_with_handles(),
            table
                .replace(&web80_v4, &db81_v4)
                .replace(&web80_v6, &db81_v6),
            "{printed}"
        );
        // Nothing listens in web: an answer comes from db.
        let _db81 = probe::serve(&netns("kudo-db"), Tcp, any(81)).unwrap();
        reached("db:81");
        kudonet(&Firewall::Nftables.args(&["apply", state.path()])).expect(0, "No changes.\n", "");
    });
}
