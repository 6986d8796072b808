//! Convergence from any node: the bytes pick a valid desired state (some instances in
//! namespaces someone else owns) and an observed node (foreign links, namespaces, routes and
//! rules, some squatting on kudonet's names; namespaces someone else owns with links of
//! theirs inside, or not there; part of an earlier desired state's plan, as a crash
//! mid-apply leaves it; then drift). One plan applied on the in-memory dataplane must
//! succeed, the next plan must be empty, conflicts must be stable and nothing foreign may
//! change; no namespace someone else owns is created or deleted, and an instance whose
//! namespace is missing is planned as absent. The libFuzzer twin of
//! tests/plan_properties.rs (proptest): both draw from the same domain,
//! tests/common/generators.rs; this file is only its front end for libFuzzer's bytes.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::observed::Observed;
use kudonet::plan::{BRIDGE_INSTANCES, plan};
use kudonet::spec::{Desired, PublishedPort};

#[path = "../../tests/common/generators.rs"]
mod generators;

use generators::{
    BRIDGES, CONTESTED_HOST_PORTS, DesiredChoice, Drift, FOREIGN_FORWARD_RULES, FOREIGN_LINK_KINDS,
    FOREIGN_ROUTE_OCTETS, Families, Foreign, ForeignLink, HOST_IPS, HOSTS, INSTANCE_NAMES,
    INTERFACES, InstanceChoice, MAX_DRIFTS, MAX_PEERS, MTUS, PORTS, TheirLink, TheirNamespace,
    check_missing_namespaces, check_others_namespaces_stay, foreign_link_names,
    foreign_namespace_names, foreign_view,
};

fn port(u: &mut Unstructured) -> Result<PublishedPort> {
    // Mostly a few host ports, so that instances compete for them; sometimes any.
    let host_port = if u.ratio(1, 4)? {
        u.int_in_range(PORTS)?
    } else {
        u.int_in_range(CONTESTED_HOST_PORTS)?
    };
    Ok(generators::port(
        host_port,
        u.int_in_range(PORTS)?,
        u.arbitrary()?,
        u.choose_index(HOST_IPS.len())?,
    ))
}

/// A valid desired state for node `a` (IPv4-only, dual-stack or IPv6-only), with up to two
/// peers of any families.
fn desired(u: &mut Unstructured) -> Result<Desired> {
    let families = *u.choose(Families::ALL)?;
    let bridge = u.choose(BRIDGES)?;
    let mtu = if u.arbitrary()? {
        Some(*u.choose(MTUS)?)
    } else {
        None
    };
    let masquerade = u.arbitrary()?;
    let uplink = u.arbitrary()?;
    let mut instances = Vec::new();
    for name in INSTANCE_NAMES {
        if !u.arbitrary::<bool>()? {
            continue;
        }
        let host = u.int_in_range(HOSTS)?;
        let instance_families = *u.choose(Families::ALL)?;
        let mut ports = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            ports.push(port(u)?);
        }
        let allocated = u.ratio(1, 4)?;
        // Mostly in a namespace of kudonet's; else in someone else's, mostly the one named
        // after the instance.
        let netns = if u.ratio(3, 10)? {
            Some(if u.ratio(3, 4)? {
                *name
            } else {
                *u.choose(INSTANCE_NAMES)?
            })
        } else {
            None
        };
        let interface = if u.ratio(1, 4)? {
            *u.choose(INTERFACES)?
        } else {
            INTERFACES[0]
        };
        instances.push(InstanceChoice {
            name,
            host,
            families: instance_families,
            ports,
            allocated,
            netns,
            interface,
        });
    }
    let cluster = if u.arbitrary()? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let mut peers = Vec::new();
    for _ in 0..u.int_in_range(0..=MAX_PEERS)? {
        peers.push(*u.choose(Families::ALL)?);
    }
    Ok(DesiredChoice {
        families,
        bridge,
        mtu,
        masquerade,
        uplink,
        instances,
        cluster,
        peers,
        nftables: u.arbitrary()?,
    }
    .build())
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
fn foreign(u: &mut Unstructured) -> Result<Foreign> {
    let link_names = foreign_link_names();
    let mut links = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        links.push(ForeignLink {
            name: u.choose(&link_names)?.clone(),
            kind: *u.choose(FOREIGN_LINK_KINDS)?,
            up: u.arbitrary()?,
            alias: u.arbitrary()?,
        });
    }
    let namespace_names = foreign_namespace_names();
    let mut namespaces = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        namespaces.push(u.choose(&namespace_names)?.clone());
    }
    // Each namespace someone else owns as often there as not.
    let mut their_namespaces = Vec::new();
    for name in INSTANCE_NAMES {
        if !u.arbitrary::<bool>()? {
            continue;
        }
        let mut links = Vec::new();
        for _ in 0..u.int_in_range(0..=2)? {
            links.push(TheirLink {
                name: u.choose(INTERFACES)?,
                veth: u.arbitrary()?,
                up: u.arbitrary()?,
            });
        }
        their_namespaces.push(TheirNamespace {
            name,
            lo_up: u.arbitrary()?,
            links,
            default_routes: u.arbitrary()?,
        });
    }
    let mut routes = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        routes.push(u.int_in_range(FOREIGN_ROUTE_OCTETS)?);
    }
    let mut routes6 = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        routes6.push(u.int_in_range(FOREIGN_ROUTE_OCTETS)?);
    }
    let mut forward_rules = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        forward_rules.push(*u.choose(FOREIGN_FORWARD_RULES)?);
    }
    let mut forward_rules6 = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        forward_rules6.push(*u.choose(FOREIGN_FORWARD_RULES)?);
    }
    Ok(Foreign {
        links,
        namespaces,
        their_namespaces,
        routes,
        routes6,
        forward_rules,
        forward_rules6,
        other_chain: u.arbitrary()?,
        nat_rule: u.arbitrary()?,
        other_backend: u.arbitrary()?,
        default_route: u.arbitrary()?,
    })
}

/// A node as it may be found: foreign objects, then part of an earlier desired state's plan
/// (kudonet's leftovers, a crash mid-apply), then drift.
fn observed(u: &mut Unstructured) -> Result<Observed> {
    let foreign = foreign(u)?;
    let earlier = desired(u)?;
    let mut drifts = Vec::new();
    for _ in 0..u.int_in_range(0..=MAX_DRIFTS)? {
        drifts.push(Drift::of_kind(u.arbitrary()?, u.arbitrary()?));
    }
    // How much of the earlier plan was applied: any prefix of it.
    Ok(generators::observed(
        &foreign,
        &earlier,
        |length| u.int_in_range(0..=length).unwrap_or(0),
        &drifts,
    ))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(desired), Ok(observed)) = (desired(&mut u), observed(&mut u)) else {
        return;
    };
    let first = plan(&desired, &observed);
    // Every action and conflict is for an instance of the desired state or the node.
    let desired_instance = |name: &str| desired.instances.iter().any(|i| i.name == name);
    for step in &first.steps {
        if let Some(name) = step.scope.instance_name() {
            assert!(
                desired_instance(name),
                "{} is for {name}, not desired",
                step.action
            );
        }
    }
    for conflict in &first.conflicts {
        if let Some(name) = conflict.scope.instance_name() {
            assert!(
                desired_instance(name),
                "{conflict} is for {name}, not desired"
            );
        }
    }
    if let Err(problem) = check_others_namespaces_stay(&first, &observed, Some(&desired))
        .and_then(|()| check_missing_namespaces(&first, &desired, &observed, BRIDGE_INSTANCES))
    {
        panic!("{problem}");
    }
    let mut dataplane = MemoryDataplane::new(observed.clone());
    if let Err(error) = dataplane.apply_all(&first.to_actions()) {
        panic!("plan failed: {error}\nplan:\n{first}");
    }
    let converged = dataplane.observe().unwrap();
    let second = plan(&desired, &converged);
    assert!(
        second.is_empty(),
        "second plan not empty:\n{second}\nafter:\n{first}"
    );
    assert_eq!(second.conflicts, first.conflicts, "conflicts are stable");
    assert_eq!(
        foreign_view(&converged),
        foreign_view(&observed),
        "foreign objects changed"
    );
    assert_eq!(
        plan(&desired, &observed),
        first,
        "planning is deterministic"
    );
});
