//! Convergence from any node: the bytes pick a valid desired state and an observed node
//! (foreign links, namespaces, routes and rules, some squatting on kudonet's names; part of
//! an earlier desired state's plan, as a crash mid-apply leaves it; then drift). One plan
//! applied on the in-memory dataplane must succeed, the next plan must be empty, conflicts
//! must be stable and nothing foreign may change. The libFuzzer twin of
//! tests/plan_properties.rs (proptest), which it follows closely.

#![no_main]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use arbitrary::{Result, Unstructured};
use cidr::{Ipv4Cidr, Ipv4Inet};
use libfuzzer_sys::fuzz_target;

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::names;
use kudonet::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Table};
use kudonet::plan::{Action, plan};
use kudonet::spec::{Cluster, ClusterMode, Desired, Instance, Node, Protocol, PublishedPort};

const INSTANCE_NAMES: &[&str] = &["web", "db", "api", "cache", "worker-1", "a"];
const BRIDGES: &[&str] = &["kudo0", "br-kudo"];

fn node(
    name: &str,
    third_octet: u8,
    bridge: &str,
    mtu: Option<u32>,
    masquerade: bool,
    uplink: bool,
) -> Node {
    Node {
        name: name.to_string(),
        cidr: Ipv4Inet::new(Ipv4Addr::new(10, 0, third_octet, 1), 24).unwrap(),
        external_ip: Some(Ipv4Addr::new(192, 0, 2, 10 + third_octet)),
        bridge: bridge.to_string(),
        uplink: uplink.then(|| "eth0".to_string()),
        masquerade,
        mtu,
    }
}

fn port(u: &mut Unstructured) -> Result<PublishedPort> {
    // Mostly a few host ports, so that instances compete for them; sometimes any.
    let host_port = if u.ratio(1, 4)? {
        u.int_in_range(1..=65535)?
    } else {
        8000 + u.int_in_range(1..=3)?
    };
    Ok(PublishedPort {
        host_port,
        instance_port: u.int_in_range(1..=65535)?,
        protocol: if u.arbitrary()? {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        host_ip: u
            .arbitrary::<bool>()?
            .then_some(Ipv4Addr::new(192, 0, 2, 10)),
    })
}

/// A valid desired state (as validation guarantees it) for node `a` (10.0.0.0/24), with up
/// to two peers.
fn desired(u: &mut Unstructured) -> Result<Desired> {
    let this = node(
        "a",
        0,
        u.choose(BRIDGES)?,
        if u.arbitrary()? {
            Some(*u.choose(&[1280u32, 1400, 1500, 9000])?)
        } else {
            None
        },
        u.arbitrary()?,
        u.arbitrary()?,
    );
    let mut used_addresses = Vec::new();
    let mut used_ports = Vec::new();
    let mut instances = Vec::new();
    for name in INSTANCE_NAMES {
        if !u.arbitrary::<bool>()? {
            continue;
        }
        // Neither the network, the gateway nor the broadcast address; distinct.
        let mut host: u8 = u.int_in_range(2..=254)?;
        while used_addresses.contains(&host) {
            host = if host >= 254 { 2 } else { host + 1 };
        }
        used_addresses.push(host);
        let mut ports = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let port = port(u)?;
            // One (protocol, host port) per node.
            let key = (port.protocol, port.host_port);
            if !used_ports.contains(&key) {
                used_ports.push(key);
                ports.push(port);
            }
        }
        instances.push(Instance {
            name: name.to_string(),
            id: None,
            node: "a".to_string(),
            address: Ipv4Inet::new(Ipv4Addr::new(10, 0, 0, host), 24).unwrap(),
            ports,
        });
    }
    let cluster = if u.arbitrary()? {
        let vxlan: bool = u.arbitrary()?;
        Some(Cluster {
            name: Some("c".to_string()),
            cidr: Some(Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap()),
            mode: if vxlan {
                ClusterMode::Vxlan
            } else {
                ClusterMode::Routed
            },
        })
    } else {
        None
    };
    let peers = u.int_in_range(0..=2u8)?;
    Ok(Desired {
        cluster,
        node: this,
        peers: (1..=peers)
            .map(|index| node(&format!("p{index}"), index, "kudo0", None, true, false))
            .collect(),
        instances,
    })
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
fn add_foreign(u: &mut Unstructured, state: &mut Observed) -> Result<()> {
    for _ in 0..u.int_in_range(0..=3)? {
        let name = match u.int_in_range(0..=3)? {
            0 => "eth0".to_string(),
            1 => "docker0".to_string(),
            2 => u.choose(BRIDGES)?.to_string(),
            _ => names::host_interface_name(u.choose(INSTANCE_NAMES)?),
        };
        let mut link = Link::new(*u.choose(&[
            LinkKind::Bridge,
            LinkKind::Veth,
            LinkKind::Vxlan,
            LinkKind::Other,
        ])?);
        link.up = u.arbitrary()?;
        if u.arbitrary()? {
            link.alias = Some("not-kudonet".to_string());
        }
        link.addresses.insert("192.0.2.10/24".parse().unwrap());
        state.links.entry(name).or_insert(link);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let name = if u.arbitrary()? {
            "other".to_string()
        } else {
            names::namespace_name(u.choose(INSTANCE_NAMES)?)
        };
        state.namespaces.entry(name).or_default();
    }
    for _ in 0..u.int_in_range(0..=2)? {
        let third_octet = u.int_in_range(0..=2u8)?;
        state.routes.insert(
            Ipv4Cidr::new(Ipv4Addr::new(10, 0, third_octet, 0), 24).unwrap(),
            Route {
                gateway: Some(Ipv4Addr::new(192, 0, 2, 99)),
                device: None,
                owned: false,
            },
        );
    }
    let mut forward = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        forward.push(
            u.choose(&[
                "-j DROP",
                "-i docker0 -j ACCEPT",
                "-m comment --comment kudonet-ish -j ACCEPT",
            ])?
            .to_string(),
        );
    }
    let filter = state.firewall.entry("filter".to_string()).or_default();
    filter.chains.insert("FORWARD".to_string(), forward);
    if u.arbitrary()? {
        filter
            .chains
            .insert("DOCKER-USER".to_string(), vec!["-j RETURN".to_string()]);
    }
    if u.arbitrary()? {
        let nat = state.firewall.entry("nat".to_string()).or_default();
        nat.chains.insert(
            "POSTROUTING".to_string(),
            vec!["-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE".to_string()],
        );
    }
    if u.arbitrary()? {
        state.default_route_interface = Some("eth0".to_string());
    }
    state
        .sysctls
        .insert("net.ipv4.ip_forward".to_string(), "0".to_string());
    Ok(())
}

fn pick<T: Clone>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
    let items: Vec<T> = items.collect();
    (!items.is_empty()).then(|| items[index % items.len()].clone())
}

/// One thing that happens to a node behind kudonet's back; `index` picks among what exists.
fn drift(dataplane: &mut MemoryDataplane, kind: u8, index: usize) {
    let state = &mut dataplane.state;
    let inner_links: Vec<LinkRef> = state
        .namespaces
        .iter()
        .flat_map(|(netns, namespace)| {
            // The kernel refuses to delete a loopback.
            namespace
                .links
                .iter()
                .filter(|(_, link)| link.kind != LinkKind::Loopback)
                .map(|(name, _)| LinkRef::in_namespace(netns, name))
        })
        .collect();
    let all_links: Vec<LinkRef> = state
        .links
        .keys()
        .map(|name| LinkRef::host(name))
        .chain(inner_links.clone())
        .collect();
    match kind % 14 {
        0 => {
            if let Some(name) = pick(state.links.keys().cloned(), index) {
                dataplane
                    .apply(&Action::DeleteLink {
                        link: LinkRef::host(&name),
                    })
                    .unwrap();
            }
        }
        1 => {
            if let Some(link) = pick(inner_links.into_iter(), index) {
                dataplane.apply(&Action::DeleteLink { link }).unwrap();
            }
        }
        2 => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), index) {
                dataplane.apply(&Action::DeleteNamespace { name }).unwrap();
            }
        }
        change @ 3..=7 => {
            let Some(link) = pick(all_links.into_iter(), index) else {
                return;
            };
            let links = match &link.netns {
                None => &mut state.links,
                Some(netns) => &mut state.namespaces.get_mut(netns).unwrap().links,
            };
            let target = links.get_mut(&link.name).unwrap();
            match change {
                3 => target.up = false,
                4 => target.mtu = 1280,
                5 => {
                    target.addresses.insert("198.51.100.7/24".parse().unwrap());
                }
                6 => target.addresses.clear(),
                _ => {
                    target.master = None;
                    target.hairpin = false;
                }
            }
        }
        8 => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), index) {
                state.namespaces.get_mut(&name).unwrap().default_gateway = None;
            }
        }
        change @ (9 | 10) => {
            let chains = state.firewall.iter().flat_map(|(table, t)| {
                t.chains
                    .keys()
                    .filter(|c| Table::is_owned_chain(c))
                    .map(move |c| (table.clone(), c.clone()))
            });
            if let Some((table, chain)) = pick(chains, index) {
                let chains = &mut state.firewall.get_mut(&table).unwrap().chains;
                if change == 9 {
                    chains.get_mut(&chain).unwrap().clear();
                } else {
                    chains.remove(&chain);
                }
            }
        }
        11 => {
            if let Some(table) = pick(state.firewall.keys().cloned(), index) {
                for rules in state.firewall.get_mut(&table).unwrap().chains.values_mut() {
                    rules.retain(|rule| !Table::is_owned_jump(rule));
                }
            }
        }
        12 => {
            if let Some(key) = pick(state.sysctls.keys().cloned(), index) {
                state.sysctls.insert(key, "0".to_string());
            }
        }
        _ => {
            if let Some(destination) = pick(state.routes.keys().copied(), index) {
                state.routes.remove(&destination);
            }
        }
    }
}

/// A node as it may be found: foreign objects, then part of an earlier desired state's plan
/// (kudonet's leftovers, a crash mid-apply), then drift.
fn observed(u: &mut Unstructured) -> Result<Observed> {
    let mut state = Observed::default();
    add_foreign(u, &mut state)?;
    let earlier = desired(u)?;
    let mut dataplane = MemoryDataplane::new(state);
    let earlier_plan = plan(&earlier, &dataplane.state);
    let applied = u.int_in_range(0..=earlier_plan.actions.len())?;
    if let Err(error) = dataplane.apply_all(&earlier_plan.actions[..applied]) {
        panic!("an earlier plan fails on the in-memory dataplane: {error}\n{earlier_plan}");
    }
    for _ in 0..u.int_in_range(0..=6)? {
        let kind = u.arbitrary()?;
        let index = u.arbitrary()?;
        drift(&mut dataplane, kind, index);
    }
    Ok(dataplane.state)
}

/// Everything on the node that kudonet does not own, as it must stay.
#[derive(Debug, PartialEq)]
struct ForeignView {
    links: BTreeMap<String, Link>,
    namespaces: BTreeMap<String, Namespace>,
    routes: BTreeMap<Ipv4Cidr, Route>,
    rules: BTreeMap<(String, String), Vec<String>>,
}

fn foreign_view(state: &Observed) -> ForeignView {
    ForeignView {
        links: state
            .links
            .iter()
            .filter(|(_, link)| !link.is_owned())
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect(),
        namespaces: state
            .namespaces
            .iter()
            .filter(|(_, ns)| !ns.owned)
            .map(|(n, ns)| (n.clone(), ns.clone()))
            .collect(),
        routes: state
            .routes
            .iter()
            .filter(|(_, r)| !r.owned)
            .map(|(d, r)| (*d, r.clone()))
            .collect(),
        rules: state
            .firewall
            .iter()
            .flat_map(|(table, t)| {
                t.chains
                    .iter()
                    .filter(|(chain, _)| !Table::is_owned_chain(chain))
                    .map(move |(chain, rules)| {
                        let others = rules
                            .iter()
                            .filter(|rule| !Table::is_owned_jump(rule))
                            .cloned()
                            .collect();
                        ((table.clone(), chain.clone()), others)
                    })
            })
            .filter(|(_, rules): &(_, Vec<String>)| !rules.is_empty())
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(desired), Ok(observed)) = (desired(&mut u), observed(&mut u)) else {
        return;
    };
    let first = plan(&desired, &observed);
    let mut dataplane = MemoryDataplane::new(observed.clone());
    if let Err(error) = dataplane.apply_all(&first.actions) {
        panic!("plan failed: {error}\nplan:\n{first}");
    }
    let converged = dataplane.observe().unwrap();
    let second = plan(&desired, &converged);
    assert!(
        second.actions.is_empty(),
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
