//! Convergence is a property, not a hope: from any observed node (half-built instances,
//! drift, foreign objects, leftovers kudonet owns but no longer wants), applying the plan on
//! the in-memory dataplane succeeds, the next plan is empty, and nothing foreign changed.
//! The nodes and desired states are drawn from `common::generators`, which the fuzz target
//! fuzz/fuzz_targets/plan_converges.rs shares: IPv4-only, dual-stack and IPv6-only nodes,
//! foreign objects and drift of both families, instances in namespaces someone else owns
//! (there or missing, with links of theirs inside).

mod common;

use proptest::prelude::*;

use std::collections::BTreeMap;

use common::generators::{
    Families, MAX_DRIFTS, address, check_missing_namespaces, check_others_namespaces_stay, drift,
    foreign_view, is_kudonets_inside, node, owned_objects, without_namespace,
};
use common::strategies::{arb_desired, arb_drift, arb_observed, arb_observed_with_bridges};
use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::names;
use kudonet::observed::LinkRef;
use kudonet::observed::{LinkKind, Observed};
use kudonet::plan::{Action, Scope, plan, plan_teardown, plan_with_bridge_instances};
use kudonet::spec::{Desired, Family, FirewallBackend, Instance, Protocol, PublishedPort};

/// Applies the plan for `desired` to `dataplane`, which holds `observed`, and checks that
/// the next plan is empty, that conflicts are stable and that nothing foreign changed;
/// returns the plan applied and the node after it.
fn one_pass_converges(
    dataplane: &mut MemoryDataplane,
    desired: &Desired,
    observed: &Observed,
) -> Result<(kudonet::plan::Plan, Observed), TestCaseError> {
    let first = plan(desired, observed);
    if let Err(error) = dataplane.apply_all(&first.to_actions()) {
        panic!("plan failed: {error}\nplan:\n{first}");
    }
    let converged = dataplane.observe().unwrap();
    let second = plan(desired, &converged);
    prop_assert!(
        second.is_empty(),
        "second plan not empty:\n{}\nafter:\n{}",
        second,
        first
    );
    prop_assert_eq!(&second.conflicts, &first.conflicts, "conflicts are stable");
    prop_assert_eq!(foreign_view(&converged), foreign_view(observed));
    Ok((first, converged))
}

/// Bridges of two instances: the up to six instances of a desired state spread over the
/// node's bridge and segments.
const SMALL_BRIDGES: usize = 2;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_converges_and_leaves_foreign_objects_alone(desired in arb_desired(), (observed, _) in arb_observed()) {
        let mut dataplane = MemoryDataplane::new(observed.clone());
        let (first, converged) = one_pass_converges(&mut dataplane, &desired, &observed)?;
        if let Err(problem) = check_others_namespaces_stay(&first, &observed, Some(&desired)) {
            prop_assert!(false, "{}", problem);
        }
        // Stale rules in the other iptables backend would keep forwarding removed ports.
        prop_assert!(converged.other_backend.values().all(|table| !table.has_kudonet_rules()));
    }

    /// From a node converged to a desired state, whatever happens behind kudonet's back
    /// (in namespaces someone else owns too: their owner deletes one, their links or
    /// kudonet's interface in there go down or away), one pass converges again.
    #[test]
    fn after_drift_one_pass_converges_again(
        desired in arb_desired(),
        (observed, _) in arb_observed(),
        drifts in proptest::collection::vec(arb_drift(), 1..=MAX_DRIFTS),
    ) {
        let mut dataplane = MemoryDataplane::new(observed);
        let built = plan(&desired, &dataplane.state);
        if let Err(error) = dataplane.apply_all(&built.to_actions()) {
            panic!("plan failed: {error}\nplan:\n{built}");
        }
        for change in &drifts {
            drift(&mut dataplane, change);
        }
        let drifted = dataplane.observe().unwrap();
        let (first, _) = one_pass_converges(&mut dataplane, &desired, &drifted)?;
        if let Err(problem) = check_others_namespaces_stay(&first, &drifted, Some(&desired))
            .and_then(|()| check_missing_namespaces(&first, &desired, &drifted, kudonet::plan::BRIDGE_INSTANCES))
        {
            prop_assert!(false, "{}", problem);
        }
    }

    #[test]
    fn teardown_removes_exactly_what_kudonet_owns((observed, _) in arb_observed()) {
        let mut dataplane = MemoryDataplane::new(observed.clone());
        let teardown = plan_teardown(&observed);
        if let Err(error) = dataplane.apply_all(&teardown.to_actions()) {
            panic!("teardown failed: {error}\nplan:\n{teardown}");
        }
        let after = dataplane.observe().unwrap();
        prop_assert_eq!(owned_objects(&after), Vec::<String>::new());
        prop_assert_eq!(foreign_view(&after), foreign_view(&observed));
        prop_assert!(plan_teardown(&after).is_empty());
        // Namespaces someone else owns stay, without kudonet's interfaces inside.
        if let Err(problem) = check_others_namespaces_stay(&teardown, &observed, None) {
            prop_assert!(false, "{}", problem);
        }
        for (netns, namespace) in observed.namespaces.iter().filter(|(_, ns)| !ns.owned) {
            prop_assert!(after.namespaces.contains_key(netns), "{} went", netns);
            for name in namespace.links.keys().filter(|name| is_kudonets_inside(&observed, netns, name)) {
                prop_assert!(!after.namespaces[netns].links.contains_key(name), "{}/{} stays", netns, name);
            }
        }
    }

    #[test]
    fn every_action_and_conflict_is_for_a_desired_instance_or_the_node(desired in arb_desired(), (observed, _) in arb_observed()) {
        let planned = plan(&desired, &observed);
        let instances: Vec<&str> = desired.instances.iter().map(|i| i.name.as_str()).collect();
        for step in &planned.steps {
            if let Some(name) = step.scope.instance_name() {
                prop_assert!(instances.contains(&name), "{} is for {name}, not in the desired state", step.action);
            }
            // The scope is what the action's names say it is about.
            prop_assert_eq!(step.scope.clone(), scope_by_names(&step.action, &desired, &observed), "{}", step.action);
        }
        for conflict in &planned.conflicts {
            if let Some(name) = conflict.scope.instance_name() {
                prop_assert!(instances.contains(&name), "{} is for {name}, not in the desired state", conflict);
            }
        }
        if let Err(problem) = check_missing_namespaces(&planned, &desired, &observed, kudonet::plan::BRIDGE_INSTANCES) {
            prop_assert!(false, "{}", problem);
        }
        // Removing everything is the node's business.
        prop_assert!(plan_teardown(&observed).steps.iter().all(|step| step.scope.is_node()));
    }

    #[test]
    fn planning_is_deterministic(desired in arb_desired(), (observed, _) in arb_observed()) {
        prop_assert_eq!(plan(&desired, &observed), plan(&desired, &observed));
    }

    /// With small bridges, from nodes an earlier plan built with small bridges, or with
    /// larger ones (bridges over the room now), one pass converges and keeps every bridge
    /// within its room, the node reaching each instance of a segment through it.
    #[test]
    fn with_small_bridges_one_pass_converges_within_their_room(
        desired in arb_desired(),
        (observed, _) in arb_observed_with_bridges(&[1, SMALL_BRIDGES, 500]),
    ) {
        let first = plan_with_bridge_instances(&desired, &observed, SMALL_BRIDGES);
        if let Err(problem) = check_missing_namespaces(&first, &desired, &observed, SMALL_BRIDGES)
            .and_then(|()| check_others_namespaces_stay(&first, &observed, Some(&desired)))
        {
            prop_assert!(false, "{}", problem);
        }
        let mut dataplane = MemoryDataplane::new(observed.clone());
        if let Err(error) = dataplane.apply_all(&first.to_actions()) {
            panic!("plan failed: {error}\nplan:\n{first}");
        }
        let converged = dataplane.observe().unwrap();
        let second = plan_with_bridge_instances(&desired, &converged, SMALL_BRIDGES);
        prop_assert!(second.is_empty(), "second plan not empty:\n{}\nafter:\n{}", second, first);
        prop_assert_eq!(&second.conflicts, &first.conflicts, "conflicts are stable");
        prop_assert_eq!(foreign_view(&converged), foreign_view(&observed));
        let ports = instance_ports(&converged);
        for (bridge, instances) in bridges_and_instances(&ports) {
            prop_assert!(instances.len() <= SMALL_BRIDGES, "{bridge} holds {instances:?}");
        }
        let held_back: Vec<&str> = first.conflicts.iter().filter_map(|c| c.scope.instance_name()).collect();
        for (instance, bridge) in ports.iter().filter(|(i, _)| !first.blocked && !held_back.contains(&i.as_str())) {
            // Its own address, else the one allocated to it.
            let named = desired.instances.iter().find(|i| &i.name == instance).unwrap();
            let address = named.addresses.first().or_else(|| first.allocated.get(instance)?.first()).copied().unwrap();
            let route = converged.routes.get(&cidr::IpCidr::new_host(address.address()));
            if names::segment_number(bridge).is_some() {
                prop_assert!(
                    route.is_some_and(|route| route.owned && route.device.as_ref() == Some(bridge)),
                    "no route to {instance} on {bridge}: {route:?}"
                );
            }
        }
    }

    /// An instance stays on its bridge while others come and go, and a segment no instance
    /// is on goes.
    #[test]
    fn instances_stay_on_their_bridge_and_unneeded_segments_go(
        first in arb_desired(),
        second in arb_desired(),
    ) {
        let second = Desired {
            node: kudonet::spec::Node { bridge: first.node.bridge.clone(), ..second.node.clone() },
            ..second
        };
        let mut dataplane = MemoryDataplane::default();
        converge_small(&mut dataplane, &first);
        let before = instance_ports(&dataplane.state);
        converge_small(&mut dataplane, &second);
        let after = instance_ports(&dataplane.state);
        // One that left its namespace of kudonet's (for someone else's) is built anew.
        let left_its_namespace = |name: &str| {
            let namespace = |desired: &Desired| {
                desired.instances.iter().find(|i| i.name == name).map(|i| (i.namespace(), i.owns_namespace()))
            };
            matches!((namespace(&first), namespace(&second)), (Some((was, true)), Some((is, _))) if was != is)
        };
        for (instance, bridge) in &after {
            if let Some(previous) = before.get(instance).filter(|_| !left_its_namespace(instance)) {
                prop_assert_eq!(bridge, previous, "{} moved", instance);
            }
        }
        let in_use = bridges_and_instances(&after);
        for (name, link) in &dataplane.state.links {
            if link.is_kudonet_segment() {
                prop_assert!(in_use.contains_key(name), "segment {name} holds no instance");
            }
        }
    }
}

/// `desired` with an IPv6 subnet beside its IPv4 one, fd00:10::/64, and each instance the
/// IPv6 address of its IPv4 address's last byte (10.0.0.7: fd00:10::7); as it is when its
/// node has IPv6 already (the generators draw such nodes too).
fn dual_stack(desired: Desired) -> Desired {
    if desired.node.has(kudonet::spec::Family::Ipv6) {
        return desired;
    }
    let ipv6 = |last: u8| std::net::Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, last.into());
    let mut node = desired.node.clone();
    node.cidrs
        .push(cidr::IpInet::new(ipv6(1).into(), 64).unwrap());
    let instances = desired
        .instances
        .iter()
        .map(|instance| {
            let mut instance = instance.clone();
            // An allocated instance gets an address of the new family too.
            let Some(first) = instance.addresses.first() else {
                return instance;
            };
            let std::net::IpAddr::V4(v4) = first.address() else {
                unreachable!("the generators give IPv4 addresses")
            };
            let address = cidr::IpInet::new(ipv6(v4.octets()[3]).into(), 64).unwrap();
            instance.addresses.push(address);
            instance
        })
        .collect();
    Desired {
        node,
        instances,
        ..desired
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A dual-stack node built with bridges of one size, planned with small ones: one pass
    /// converges (instances moved to a segment get their IPv6 address again), and each IPv6
    /// instance of a segment has its address without the subnet's route, its gateway
    /// on-link, a route from the node and the node's proxy entry on its bridge; the
    /// instances of the node's bridge have neither.
    #[test]
    fn dual_stack_segments_converge_in_one_pass(
        desired in arb_desired(),
        built_with in proptest::sample::select(&[1usize, SMALL_BRIDGES, 500][..]),
    ) {
        let desired = dual_stack(desired);
        let mut dataplane = MemoryDataplane::default();
        let built = plan_with_bridge_instances(&desired, &dataplane.state, built_with);
        dataplane.apply_all(&built.to_actions()).unwrap();
        converge_small(&mut dataplane, &desired);
        let state = &dataplane.state;
        let bridge = &desired.node.bridge;
        for (name, on) in instance_ports(state) {
            let instance = desired.instances.iter().find(|i| i.name == name).unwrap();
            let Some(address) = instance.address(kudonet::spec::Family::Ipv6) else {
                continue;
            };
            let namespace = &state.namespaces[&instance.namespace()];
            let eth0 = &namespace.links[&instance.interface];
            let gateway = desired.node.gateway(kudonet::spec::Family::Ipv6).unwrap();
            let on_segment = on != *bridge;
            prop_assert!(eth0.has_address(&address, on_segment), "{name} on {on}: {eth0:?}");
            prop_assert_eq!(namespace.onlink_gateways.contains(&gateway), on_segment, "{} on {}", name, on);
            let route = state.routes.get(&cidr::IpCidr::new_host(address.address()));
            prop_assert_eq!(route.is_some_and(|r| r.device.as_ref() == Some(&on)), on_segment);
            let proxied = state.links[bridge].proxy_neighbours.contains(&address.address());
            prop_assert_eq!(proxied, on_segment, "{} on {}", name, on);
        }
    }
}

/// Converges `dataplane`'s node to `desired` with small bridges: one pass, and nothing left.
fn converge_small(dataplane: &mut MemoryDataplane, desired: &Desired) {
    let planned = plan_with_bridge_instances(desired, &dataplane.state, SMALL_BRIDGES);
    if let Err(error) = dataplane.apply_all(&planned.to_actions()) {
        panic!("plan failed: {error}\nplan:\n{planned}");
    }
    let again = plan_with_bridge_instances(desired, &dataplane.state, SMALL_BRIDGES);
    assert!(again.is_empty(), "not converged:\n{again}");
}

/// Instance name -> the bridge its host veth is a port of.
fn instance_ports(state: &Observed) -> BTreeMap<String, String> {
    state
        .links
        .values()
        .filter(|link| link.kind == LinkKind::Veth)
        .filter_map(|link| {
            let alias = link.alias.as_deref()?;
            let instance = alias.strip_prefix("kudonet:instance:")?;
            Some((instance.to_string(), link.master.clone()?))
        })
        .collect()
}

/// Bridge -> the instances on it.
fn bridges_and_instances(ports: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let mut bridges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (instance, bridge) in ports {
        bridges
            .entry(bridge.clone())
            .or_default()
            .push(instance.clone());
    }
    bridges
}

#[test]
fn a_converged_node_needs_no_write() {
    for (families, firewall) in Families::ALL.iter().flat_map(|families| {
        [FirewallBackend::Iptables, FirewallBackend::Nftables].map(|firewall| (families, firewall))
    }) {
        let desired = Desired {
            firewall,
            cluster: None,
            node: node("a", 0, *families, "kudo0", Some(1500), true, true),
            peers: vec![node("b", 1, *families, "kudo0", None, true, false)],
            instances: vec![Instance {
                name: "web".to_string(),
                id: None,
                node: "a".to_string(),
                addresses: Family::ALL
                    .into_iter()
                    .filter(|family| families.has(*family))
                    .map(|family| address(family, 0, 2))
                    .collect(),
                ports: vec![PublishedPort {
                    host_port: 8080,
                    instance_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                }],
                netns: None,
                interface: "eth0".to_string(),
            }],
        };
        let mut dataplane = MemoryDataplane::default();
        let first = plan(&desired, &Observed::default());
        // Each family the node has gets its port.
        let rules = match firewall {
            FirewallBackend::Iptables => [
                (Family::Ipv4, "--to-destination 10.0.0.2:80"),
                (Family::Ipv6, "--to-destination [fd00:10::2]:80"),
            ],
            FirewallBackend::Nftables => [
                (
                    Family::Ipv4,
                    "+ element ports4 tcp . 8080 : 10.0.0.2 . 80  # web",
                ),
                (
                    Family::Ipv6,
                    "+ element ports6 tcp . 8080 : fd00:10::2 . 80  # web",
                ),
            ],
        };
        for (family, rule) in rules {
            assert_eq!(
                first.to_string().contains(rule),
                families.has(family),
                "{families:?}:\n{first}"
            );
        }
        dataplane.apply_all(&first.to_actions()).unwrap();
        let writes = dataplane.writes;
        assert!(writes > 0);
        let again = plan(&desired, &dataplane.observe().unwrap());
        assert_eq!(
            again.to_string(),
            "No changes.\n",
            "{families:?} {firewall}"
        );
        dataplane.apply_all(&again.to_actions()).unwrap();
        assert_eq!(dataplane.writes, writes);
    }
}

/// The instance of `desired` an action names (its namespace, or its host interface, by
/// name), else the node: what the planner's scope must agree with. An instance whose
/// namespace, someone else's, is missing is planned as absent: what kudonet removes of it is
/// the node's business.
fn scope_by_names(action: &Action, desired: &Desired, observed: &Observed) -> Scope {
    let missing = without_namespace(desired, observed);
    let present: Vec<&Instance> = desired
        .instances
        .iter()
        .filter(|i| !missing.iter().any(|gone| gone.name == i.name))
        .collect();
    let by_namespace = |netns: &str| present.iter().find(|i| i.namespace() == netns);
    let by_host_link = |link: &str| {
        present
            .iter()
            .find(|i| names::host_interface_name(&i.name) == link)
    };
    let by_link = |link: &LinkRef| match &link.netns {
        Some(netns) => by_namespace(netns),
        None => by_host_link(&link.name),
    };
    let instance = match action {
        Action::CreateNamespace { name } | Action::DeleteNamespace { name } => by_namespace(name),
        Action::CreateVeth { host, .. } => by_host_link(host),
        Action::SetMaster { link, .. } | Action::SetHairpin { link } => by_host_link(link),
        Action::DeleteLink { link }
        | Action::SetMtu { link, .. }
        | Action::SetUp { link }
        | Action::AddAddress { link, .. }
        | Action::DeleteAddress { link, .. } => by_link(link),
        Action::ReplaceDefaultRoute { namespace, .. }
        | Action::DeleteDefaultRoute { namespace, .. } => by_namespace(namespace),
        Action::ReplaceLinkRoute { destination, .. } => present.iter().find(|i| {
            i.addresses
                .iter()
                .any(|address| cidr::IpCidr::new_host(address.address()) == *destination)
        }),
        Action::AddProxyNeighbour { address, .. } => present
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.address() == *address)),
        _ => None,
    };
    instance.map_or(Scope::Node, |instance| Scope::instance(&instance.name))
}
