//! Incremental observation (`kernel::observe::Snapshot`, `dataplane::Changes`) against a real kernel:
//! after any sequence of changes made behind kudonet's back, and of repairs kudonet makes,
//! an observation that reads only what kernel events and kudonet's own actions named must
//! equal a full read by a fresh dataplane. Each case runs in its own sandbox.

mod common;

use std::path::{Path, PathBuf};

use kudonet::controller::triggers::Triggers;
use kudonet::dataplane::Dataplane;
use kudonet::kernel::KernelDataplane;
use kudonet::kernel::events::KernelEvents;
use kudonet::names;
use kudonet::observed::Observed;
use kudonet::reconcile::{self, NoProgress};

const NETNS_DIR: &str = "/run/netns";

const NODE: &str = "\
kind: Node
name: node-a
cidr: 10.0.0.1/24
---
kind: Instance
name: a
address: 10.0.0.2/24
ports:
  - hostPort: 8080
    instancePort: 80
---
kind: Instance
name: b
address: 10.0.0.3/24
---
kind: Instance
name: c
address: 10.0.0.4/24
";

/// Changes someone else might make, `{veth}`, `{ns}` and `{other}` standing for an
/// instance's host veth, its namespace and another instance's namespace, `{i}` for the
/// step. Any may fail (the veth was deleted earlier, say): that is part of the game.
const DRIFTS: &[&str] = &[
    "ip link set {veth} down",
    "ip link set {veth} nomaster",
    "ip link set {veth} mtu 1400",
    "ip link set dev {veth} alias someone-elses",
    "bridge link set dev {veth} hairpin off",
    "ip link del {veth}",
    "ip link set {veth} down && ip link set {veth} name stolen{i}",
    "ip addr add 10.0.0.200/24 dev kudo0",
    "ip addr del 10.0.0.1/24 dev kudo0",
    "ip link set kudo0 down",
    "ip link add foreign{i} type bridge",
    "ip -n {ns} addr flush dev eth0",
    "ip -n {ns} link set eth0 down",
    "ip -n {ns} route del default",
    "ip -n {ns} link set eth0 name moved{i} && ip -n {ns} link set moved{i} netns {other}",
    "ip netns del {ns}",
    "ip netns add kudo-foreign{i}",
    "iptables -w -t nat -F KUDO-PORTS",
    "iptables -w -D FORWARD -m comment --comment kudonet -j KUDO-FORWARD",
];

/// A small deterministic generator (xorshift64*), so that a failing sequence can be
/// replayed from its seed.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }
}

fn full_read() -> Observed {
    KernelDataplane::new(Path::new(NETNS_DIR))
        .unwrap()
        .observe()
        .unwrap()
}

/// What the controller does after each pass: follow the events of kudonet's namespaces.
fn watch(events: &KernelEvents, observed: &Observed) {
    let owned: Vec<(String, PathBuf)> = observed
        .namespaces
        .iter()
        .filter(|(_, namespace)| namespace.owned)
        .map(|(name, _)| (name.clone(), Path::new(NETNS_DIR).join(name)))
        .collect();
    events.watch_namespaces(&owned);
}

fn random_changes_are_all_seen(seed: u64) {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("node.yaml"), NODE).unwrap();
    let (_, desired) = reconcile::load_desired(state.path(), Some("node-a")).unwrap();
    let triggers = Triggers::new();
    let events = KernelEvents::start(&triggers).unwrap();
    let mut dataplane = KernelDataplane::new(Path::new(NETNS_DIR)).unwrap();
    dataplane.observe_incrementally();
    let outcome = reconcile::converge(
        &mut dataplane,
        &desired,
        &Default::default(),
        &mut NoProgress,
    )
    .expect("the node is built");
    assert!(outcome.converged(), "{:?}", outcome.remaining);
    watch(&events, &outcome.observed);

    let instances = ["a", "b", "c"];
    let mut steps = Steps(seed);
    let mut done = Vec::new();
    for step in 0..40 {
        // One step in four, kudonet repairs the node through the incremental dataplane, as
        // a controller pass started by the events would.
        if steps.next(4) == 0 {
            dataplane.changed(events.take_changes());
            let outcome = reconcile::converge(
                &mut dataplane,
                &desired,
                &Default::default(),
                &mut NoProgress,
            )
            .unwrap();
            watch(&events, &outcome.observed);
            done.push("kudonet converges".to_string());
        } else {
            let instance = instances[steps.next(instances.len())];
            let other = instances[steps.next(instances.len())];
            let drift = DRIFTS[steps.next(DRIFTS.len())]
                .replace("{veth}", &names::host_interface_name(instance))
                .replace("{ns}", &names::namespace_name(instance))
                .replace("{other}", &names::namespace_name(other))
                .replace("{i}", &step.to_string());
            let applied = common::run("bash", &["-c", &drift]).status.success();
            done.push(format!("{drift}{}", if applied { "" } else { " (failed)" }));
        }
        // Some changes finish later: a deleted namespace is destroyed, its veths with it,
        // once the last socket in it is closed (kudonet's among them). Their events come
        // then, and name what changed: a missed change would never show, a late one does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            dataplane.changed(events.take_changes());
            let incremental = dataplane.observe().unwrap();
            watch(&events, &incremental);
            let full = full_read();
            if incremental == full {
                break;
            }
            if std::time::Instant::now() > deadline {
                assert_eq!(
                    incremental,
                    full,
                    "seed {seed}, after:\n  {}",
                    done.join("\n  ")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn an_incremental_observation_equals_a_full_read_after_any_changes() {
    common::sandboxed(
        "an_incremental_observation_equals_a_full_read_after_any_changes",
        || {
            for seed in [1, 0x5eed, 0xdeca_fbad, 42_424_242] {
                random_changes_are_all_seen(seed);
                // The next sequence starts from a fresh node.
                let mut dataplane = KernelDataplane::new(Path::new(NETNS_DIR)).unwrap();
                reconcile::teardown(&mut dataplane, &mut NoProgress).unwrap();
                // Deleted namespaces take their veths with them a moment later: links may
                // vanish while being listed, and are waited for.
                let only_lo = || {
                    common::sh(
                        "for ns in $(ip netns list | cut -d' ' -f1); do ip netns del $ns; done
                         for link in $(ip -o link show | cut -d: -f2 | cut -d@ -f1); do
                             [ $link = lo ] || ip link del $link 2>/dev/null || true
                         done
                         ip -o link show | cut -d: -f2",
                    )
                    .trim()
                        == "lo"
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !only_lo() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the node never emptied"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        },
    );
}
