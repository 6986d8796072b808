//! The proptest front end of `generators`: strategies drawing the descriptions it builds
//! nodes and desired states from (the libFuzzer front end is in
//! fuzz/fuzz_targets/plan_converges.rs).

use kudonet::observed::Observed;
use kudonet::spec::{Desired, PublishedPort};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use super::generators::{
    BRIDGES, CONTESTED_HOST_PORTS, DesiredChoice, Drift, FOREIGN_FORWARD_RULES, FOREIGN_LINK_KINDS,
    FOREIGN_ROUTE_OCTETS, Families, Foreign, ForeignLink, HOST_IPS, HOSTS, INSTANCE_NAMES,
    INTERFACES, MAX_DRIFTS, MAX_PEERS, MTUS, PORTS, TheirLink, TheirNamespace, foreign_link_names,
    foreign_namespace_names, observed, observed_with_bridges, port,
};

/// A published port, mostly on one of a few contested host ports, with any of the
/// `hostIp`s.
pub fn arb_port() -> impl Strategy<Value = PublishedPort> {
    (
        prop_oneof![3 => CONTESTED_HOST_PORTS, 1 => PORTS],
        PORTS,
        any::<bool>(),
        0..HOST_IPS.len(),
    )
        .prop_map(|(host_port, instance_port, udp, host_ip)| {
            port(host_port, instance_port, udp, host_ip)
        })
}

/// Where an instance lives: `None` in a namespace of kudonet's, else in the namespace
/// someone else owns named after its own name (`true`) or after the given one.
fn arb_home() -> impl Strategy<Value = Option<(bool, &'static str)>> {
    proptest::option::weighted(
        0.3,
        (proptest::bool::weighted(0.75), select(INSTANCE_NAMES)),
    )
}

/// A valid desired state for node `a` (IPv4-only, dual-stack or IPv6-only), with up to two
/// peers of any families; some instances live in namespaces someone else owns.
pub fn arb_desired() -> impl Strategy<Value = Desired> {
    let names = INSTANCE_NAMES.len();
    (
        (
            subsequence(INSTANCE_NAMES, 0..=names),
            proptest::collection::vec(HOSTS, names),
            proptest::collection::vec(select(Families::ALL), names),
            proptest::collection::vec(proptest::collection::vec(arb_port(), 0..=3), names),
            proptest::collection::vec(proptest::bool::weighted(0.25), names),
            proptest::collection::vec(arb_home(), names),
            proptest::collection::vec(
                prop_oneof![3 => Just(INTERFACES[0]), 1 => select(INTERFACES)],
                names,
            ),
        ),
        select(Families::ALL),
        select(BRIDGES),
        proptest::option::of(select(MTUS)),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(select(Families::ALL), 0..=usize::from(MAX_PEERS)),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |(
                (chosen, hosts, instance_families, ports, allocated, homes, interfaces),
                families,
                bridge,
                mtu,
                masquerade,
                uplink,
                peers,
                cluster,
                nftables,
            )| {
                DesiredChoice {
                    families,
                    bridge,
                    mtu,
                    masquerade,
                    uplink,
                    instances: chosen
                        .into_iter()
                        .enumerate()
                        .map(|(index, name)| super::generators::InstanceChoice {
                            name,
                            host: hosts[index],
                            families: instance_families[index],
                            ports: ports[index].clone(),
                            allocated: allocated[index],
                            netns: homes[index].map(|(own, other)| if own { name } else { other }),
                            interface: interfaces[index],
                        })
                        .collect(),
                    cluster,
                    peers,
                    nftables,
                }
                .build()
            },
        )
}

/// Something that happens to a node behind kudonet's back.
pub fn arb_drift() -> impl Strategy<Value = Drift> {
    (0..Drift::KINDS, any::<usize>()).prop_map(|(kind, index)| Drift::of_kind(kind, index))
}

/// A namespace someone else owns, with its loopback and maybe links of theirs.
pub fn arb_their_namespace(name: &'static str) -> impl Strategy<Value = TheirNamespace> {
    let link = (select(INTERFACES), any::<bool>(), any::<bool>())
        .prop_map(|(name, veth, up)| TheirLink { name, veth, up });
    (
        any::<bool>(),
        proptest::collection::vec(link, 0..=2),
        any::<[bool; 2]>(),
    )
        .prop_map(move |(lo_up, links, default_routes)| TheirNamespace {
            name,
            lo_up,
            links,
            default_routes,
        })
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
pub fn arb_foreign() -> impl Strategy<Value = Foreign> {
    let link = (
        select(foreign_link_names()),
        select(FOREIGN_LINK_KINDS),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, kind, up, alias)| ForeignLink {
            name,
            kind,
            up,
            alias,
        });
    (
        proptest::collection::vec(link, 0..=3),
        proptest::collection::vec(select(foreign_namespace_names()), 0..=2),
        // Each namespace someone else owns as often there as not.
        INSTANCE_NAMES
            .iter()
            .map(|name| proptest::option::of(arb_their_namespace(name)))
            .collect::<Vec<_>>(),
        proptest::collection::vec(FOREIGN_ROUTE_OCTETS, 0..=2),
        proptest::collection::vec(FOREIGN_ROUTE_OCTETS, 0..=2),
        proptest::collection::vec(select(FOREIGN_FORWARD_RULES), 0..=3),
        proptest::collection::vec(select(FOREIGN_FORWARD_RULES), 0..=3),
        any::<[bool; 4]>(),
    )
        .prop_map(
            |(
                links,
                namespaces,
                their_namespaces,
                routes,
                routes6,
                forward_rules,
                forward_rules6,
                [other_chain, nat_rule, other_backend, default_route],
            )| {
                Foreign {
                    links,
                    namespaces,
                    their_namespaces: their_namespaces.into_iter().flatten().collect(),
                    routes,
                    routes6,
                    forward_rules,
                    forward_rules6,
                    other_chain,
                    nat_rule,
                    other_backend,
                    default_route,
                }
            },
        )
}

/// A node as it may be found: foreign objects, then part of an earlier desired state's
/// plan (a crash mid-apply), then drift.
pub fn arb_observed() -> impl Strategy<Value = (Observed, Foreign)> {
    (
        arb_foreign(),
        arb_desired(),
        0.0f64..=1.0,
        proptest::collection::vec(arb_drift(), 0..=MAX_DRIFTS),
    )
        .prop_map(|(foreign, earlier, applied_fraction, drifts)| {
            let observed = observed(
                &foreign,
                &earlier,
                |length| (length as f64 * applied_fraction) as usize,
                &drifts,
            );
            (observed, foreign)
        })
}

/// [`arb_observed`], the earlier plan putting one of `bridge_instances` instances on a
/// bridge: small ones give segments, a larger one than the plan under test's gives bridges
/// over their room.
pub fn arb_observed_with_bridges(
    bridge_instances: &'static [usize],
) -> impl Strategy<Value = (Observed, Foreign)> {
    (
        arb_foreign(),
        arb_desired(),
        0.0f64..=1.0,
        proptest::collection::vec(arb_drift(), 0..=MAX_DRIFTS),
        select(bridge_instances),
    )
        .prop_map(|(foreign, earlier, applied_fraction, drifts, bridges)| {
            let observed = observed_with_bridges(
                &foreign,
                &earlier,
                |length| (length as f64 * applied_fraction) as usize,
                &drifts,
                bridges,
            );
            (observed, foreign)
        })
}
