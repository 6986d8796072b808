//! The nftables table a node needs, `inet kudonet`: the same promises as the `KUDO-*`
//! chains of the iptables backend, for both families in one table, with published ports in
//! maps so that a packet costs one lookup however many instances the node has.
//!
//! ```text
//! prerouting  (nat, -100)   fib daddr type local jump ports
//! output      (nat, -100)   meta nfproto ipv4 fib daddr type local jump ports
//!                           ip6 daddr != ::1 fib daddr type local jump ports
//! ports                     dnat ip to ip daddr . meta l4proto . th dport map @ports4_host
//!                           dnat ip to meta l4proto . th dport map @ports4   (and ip6)
//! postrouting (nat, 100)    hairpin and node-to-own-port masquerade, cluster exemptions,
//!                           masquerade out of the uplink
//! forward     (filter, 0)   what kudonet forwards, accepted
//! ```

use std::collections::BTreeMap;

use crate::nftables::{
    Chain, ChainKind, Element, Hook, HookPoint, Match, Rule, Ruleset, Set, Type, Value, Verdict,
};
use crate::spec::{Desired, Family};

use super::firewall::cluster_destinations;

/// The set of kudonet's bridges (the node's bridge and its segments).
pub const BRIDGES: &str = "bridges";
/// The chain holding the port maps' translations.
pub const PORTS: &str = "ports";
/// Priority of the nat chains before routing (`dstnat`).
pub const DSTNAT: i32 = -100;
/// Priority of the nat chain after routing (`srcnat`).
pub const SRCNAT: i32 = 100;
/// Priority of the forward chain (`filter`).
pub const FILTER: i32 = 0;

/// The port map of `family`: `ports4`, or `ports4_host` for ports published on one node
/// address.
pub fn port_map(family: Family, by_destination: bool) -> String {
    let number = match family {
        Family::Ipv4 => 4,
        Family::Ipv6 => 6,
    };
    let suffix = if by_destination { "_host" } else { "" };
    format!("ports{number}{suffix}")
}

fn address_type(family: Family) -> Type {
    match family {
        Family::Ipv4 => Type::Ipv4Addr,
        Family::Ipv6 => Type::Ipv6Addr,
    }
}

fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
    Rule { matches, verdict }
}

fn base(kind: ChainKind, point: HookPoint, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        hook: Some(Hook {
            kind,
            point,
            priority,
        }),
        rules,
    }
}

/// kudonet's table for `desired`. `uplink` gives the interface that leads out of the node
/// for a family, if known; `segments` are the node's segments, which get the same rules as
/// its bridge. A family the node lacks has no map and no rule.
pub fn desired_ruleset<'a>(
    desired: &Desired,
    uplink: &dyn Fn(Family) -> Option<&'a str>,
    segments: &[&str],
) -> Ruleset {
    let node = &desired.node;
    let bridges = Set {
        key: vec![Type::Ifname],
        data: Vec::new(),
        elements: std::iter::once(node.bridge.as_str())
            .chain(segments.iter().copied())
            .map(|bridge| (vec![Value::Ifname(bridge.to_string())], Element::default()))
            .collect(),
    };
    let mut sets = BTreeMap::from([(BRIDGES.to_string(), bridges)]);
    let mut output = Vec::new();
    let mut ports = Vec::new();
    let mut hairpin = Vec::new();
    let mut masquerade = Vec::new();
    let mut forward = vec![
        rule(vec![Match::IifnameIn(BRIDGES.into())], Verdict::Accept),
        rule(
            vec![
                Match::OifnameIn(BRIDGES.into()),
                Match::CtStateEstablishedRelated,
            ],
            Verdict::Accept,
        ),
        rule(
            vec![Match::OifnameIn(BRIDGES.into()), Match::CtStatusDnat],
            Verdict::Accept,
        ),
    ];
    for family in node.families() {
        let Some(subnet) = node.subnet(family) else {
            continue;
        };
        // Published ports for the node's addresses, whether the packet comes from outside
        // (prerouting) or from the node itself (output). Over IPv6, `[::1]` cannot reach
        // an instance (there is no route_localnet for it): left to the node's services.
        output.push(match family {
            Family::Ipv4 => rule(
                vec![Match::Nfproto(family), Match::FibDaddrLocal],
                Verdict::Jump(PORTS.into()),
            ),
            Family::Ipv6 => rule(
                vec![
                    Match::DaddrNot(std::net::Ipv6Addr::LOCALHOST.into()),
                    Match::FibDaddrLocal,
                ],
                Verdict::Jump(PORTS.into()),
            ),
        });
        // Ports published on one address first: they win over the same port on all.
        for by_destination in [true, false] {
            let map = port_map(family, by_destination);
            let mut key = vec![Type::InetProto, Type::InetService];
            if by_destination {
                key.insert(0, address_type(family));
            }
            let mut elements = BTreeMap::new();
            for instance in &desired.instances {
                let Some(address) = instance.address(family) else {
                    continue;
                };
                for port in instance.ports.iter().filter(|port| port.serves(family)) {
                    if port.host_address().is_some() != by_destination {
                        continue;
                    }
                    let mut key = vec![Value::Proto(port.protocol), Value::Port(port.host_port)];
                    if let Some(host) = port.host_address() {
                        key.insert(0, Value::Address(host));
                    }
                    elements.insert(
                        key,
                        Element {
                            data: vec![
                                Value::Address(address.address()),
                                Value::Port(port.instance_port),
                            ],
                            comment: Some(instance.name.clone()),
                        },
                    );
                }
            }
            sets.insert(
                map.clone(),
                Set {
                    key,
                    data: vec![address_type(family), Type::InetService],
                    elements,
                },
            );
            ports.push(rule(
                vec![Match::Nfproto(family)],
                Verdict::DnatMap {
                    family,
                    map,
                    by_destination,
                },
            ));
        }
        // Hairpin: an instance reaching a published port of its own node is answered by
        // the node, not directly by the target instance, which would drop the reply.
        hairpin.push(rule(
            vec![
                Match::OifnameIn(BRIDGES.into()),
                Match::Saddr(subnet),
                Match::CtStatusDnat,
            ],
            Verdict::Masquerade,
        ));
        if node.masquerade {
            // Traffic inside the cluster keeps its source address.
            for exempt in cluster_destinations(desired, family) {
                masquerade.push(rule(
                    vec![Match::Saddr(subnet), Match::Daddr(exempt)],
                    Verdict::Return,
                ));
            }
            let out = match uplink(family) {
                Some(uplink) => Match::Oifname(uplink.to_string()),
                None => Match::OifnameNot(node.bridge.clone()),
            };
            masquerade.push(rule(vec![Match::Saddr(subnet), out], Verdict::Masquerade));
        }
        // Instances of other nodes reach this node's instances with their own addresses.
        for source in cluster_destinations(desired, family) {
            if Some(source) != node.subnet(family) {
                forward.push(rule(
                    vec![Match::OifnameIn(BRIDGES.into()), Match::Saddr(source)],
                    Verdict::Accept,
                ));
            }
        }
    }
    // The node reaching its own published ports (127.0.0.1 needs route_localnet).
    let mut postrouting = hairpin;
    postrouting.push(rule(
        vec![
            Match::OifnameIn(BRIDGES.into()),
            Match::FibSaddrLocal,
            Match::CtStatusDnat,
        ],
        Verdict::Masquerade,
    ));
    postrouting.extend(masquerade);
    let prerouting = vec![rule(
        vec![Match::FibDaddrLocal],
        Verdict::Jump(PORTS.into()),
    )];
    let chains = BTreeMap::from([
        (
            "prerouting".to_string(),
            base(ChainKind::Nat, HookPoint::Prerouting, DSTNAT, prerouting),
        ),
        (
            "output".to_string(),
            base(ChainKind::Nat, HookPoint::Output, DSTNAT, output),
        ),
        (
            PORTS.to_string(),
            Chain {
                hook: None,
                rules: ports,
            },
        ),
        (
            "postrouting".to_string(),
            base(ChainKind::Nat, HookPoint::Postrouting, SRCNAT, postrouting),
        ),
        (
            "forward".to_string(),
            base(ChainKind::Filter, HookPoint::Forward, FILTER, forward),
        ),
    ]);
    Ruleset { sets, chains }
}
