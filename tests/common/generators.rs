//! The domain of the convergence properties, shared by the proptest suite
//! (tests/plan_properties.rs, through `common::strategies`) and the libFuzzer target
//! (fuzz/fuzz_targets/plan_converges.rs, which includes this file by `#[path]`): which
//! names, addresses and ports a desired state draws from, which foreign objects a node may
//! hold and how they are added, what drift does to a node, and the views the properties
//! compare. Each front end only turns its input (a proptest strategy, libFuzzer's bytes)
//! into the plain descriptions below.
//!
//! Depends on kudonet and cidr only, so that both the test crate and the fuzz crate build it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use cidr::{IpCidr, IpInet, Ipv4Cidr, Ipv4Inet};

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::names;
use kudonet::names::JUMP_MARK;
use kudonet::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Table, TableId};
use kudonet::plan::{Action, BRIDGE_INSTANCES, plan_with_bridge_instances};
use kudonet::spec::{
    Cluster, ClusterMode, Desired, Family, Instance, Node, Protocol, PublishedPort,
};

// Names and address pools.

/// The instances a desired state may hold (`a` is also the node's name).
pub const INSTANCE_NAMES: &[&str] = &["web", "db", "api", "cache", "worker-1", "a"];
/// The node's bridge.
pub const BRIDGES: &[&str] = &["kudo0", "br-kudo"];
/// The node's MTU, when set.
pub const MTUS: &[u32] = &[1280, 1400, 1500, 9000];
/// Host parts of instance addresses in 10.0.0.0/24: neither the network, the gateway (the
/// node, .1) nor the broadcast address.
pub const HOSTS: RangeInclusive<u8> = 2..=254;
/// The few host ports instances mostly publish, so that they compete for them.
pub const CONTESTED_HOST_PORTS: RangeInclusive<u16> = 8001..=8003;
/// Any port.
pub const PORTS: RangeInclusive<u16> = 1..=65535;
/// Peers of node `a` are p1, p2, ... with 10.0.N.0/24.
pub const MAX_PEERS: u8 = 2;
/// How many drifts happen to a node at most.
pub const MAX_DRIFTS: usize = 6;

/// A node of the cluster: `10.0.THIRD_OCTET.1/24`, external address `192.0.2.(10 + THIRD_OCTET)`.
pub fn node(
    name: &str,
    third_octet: u8,
    bridge: &str,
    mtu: Option<u32>,
    masquerade: bool,
    uplink: bool,
) -> Node {
    Node {
        name: name.to_string(),
        cidrs: vec![IpInet::V4(
            Ipv4Inet::new(Ipv4Addr::new(10, 0, third_octet, 1), 24).unwrap(),
        )],
        external_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + third_octet))],
        bridge: bridge.to_string(),
        uplink: uplink.then(|| "eth0".to_string()),
        masquerade,
        mtu,
    }
}

/// A published port: TCP or UDP, on all host addresses or on the node's external one.
pub fn port(host_port: u16, instance_port: u16, udp: bool, host_ip: bool) -> PublishedPort {
    PublishedPort {
        host_port,
        instance_port,
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        host_ip: host_ip.then_some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
    }
}

// Desired states.

/// One instance as drawn: its address may clash with another's, its ports too.
#[derive(Debug, Clone)]
pub struct InstanceChoice {
    pub name: &'static str,
    /// Host part in `HOSTS`.
    pub host: u8,
    pub ports: Vec<PublishedPort>,
}

/// A desired state for node `a` (10.0.0.0/24) as drawn; `build` makes it valid.
#[derive(Debug, Clone)]
pub struct DesiredChoice {
    pub bridge: &'static str,
    pub mtu: Option<u32>,
    pub masquerade: bool,
    pub uplink: bool,
    /// In `INSTANCE_NAMES` order, each name at most once.
    pub instances: Vec<InstanceChoice>,
    /// A cluster, routed (false) or VXLAN (true).
    pub cluster: Option<bool>,
    /// Up to `MAX_PEERS`.
    pub peers: u8,
}

impl DesiredChoice {
    /// The desired state, as validation guarantees it: distinct instance addresses (a clash
    /// probes upwards from the drawn one) and one (protocol, host port) per node (a later
    /// port on a taken one is dropped).
    pub fn build(&self) -> Desired {
        let mut used_addresses = Vec::new();
        let mut used_ports = Vec::new();
        let instances = self
            .instances
            .iter()
            .map(|choice| {
                let mut host = choice.host;
                while used_addresses.contains(&host) {
                    host = if host >= *HOSTS.end() {
                        *HOSTS.start()
                    } else {
                        host + 1
                    };
                }
                used_addresses.push(host);
                let mut ports = choice.ports.clone();
                ports.retain(|port| {
                    let key = (port.protocol, port.host_port);
                    !used_ports.contains(&key) && {
                        used_ports.push(key);
                        true
                    }
                });
                Instance {
                    name: choice.name.to_string(),
                    id: None,
                    node: "a".to_string(),
                    addresses: vec![IpInet::V4(
                        Ipv4Inet::new(Ipv4Addr::new(10, 0, 0, host), 24).unwrap(),
                    )],
                    ports,
                }
            })
            .collect();
        Desired {
            cluster: self.cluster.map(|vxlan| Cluster {
                name: Some("c".to_string()),
                cidrs: vec![IpCidr::V4(
                    Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap(),
                )],
                mode: if vxlan {
                    ClusterMode::Vxlan
                } else {
                    ClusterMode::Routed
                },
            }),
            node: node("a", 0, self.bridge, self.mtu, self.masquerade, self.uplink),
            peers: (1..=self.peers.min(MAX_PEERS))
                .map(|index| node(&format!("p{index}"), index, "kudo0", None, true, false))
                .collect(),
            instances,
        }
    }
}

// Foreign objects.

/// Names a foreign link may have: common ones, and the names kudonet wants (its bridges and
/// first segment, the host ends of its instances' veths).
pub fn foreign_link_names() -> Vec<String> {
    let mut names = vec![
        "eth0".to_string(),
        "docker0".to_string(),
        names::segment_name(1),
    ];
    names.extend(BRIDGES.iter().map(|bridge| bridge.to_string()));
    names.extend(
        INSTANCE_NAMES
            .iter()
            .map(|name| names::host_interface_name(name)),
    );
    names
}

/// The kinds of foreign links.
pub const FOREIGN_LINK_KINDS: &[LinkKind] = &[
    LinkKind::Bridge,
    LinkKind::Veth,
    LinkKind::Vxlan,
    LinkKind::Other,
];

/// Names a foreign namespace may have: another one, and those of kudonet's instances.
pub fn foreign_namespace_names() -> Vec<String> {
    let mut names = vec!["other".to_string()];
    names.extend(
        INSTANCE_NAMES
            .iter()
            .map(|name| names::namespace_name(name)),
    );
    names
}

/// Third octets of foreign routes to 10.0.N.0/24 (node `a`'s subnet and its peers').
pub const FOREIGN_ROUTE_OCTETS: RangeInclusive<u8> = 0..=MAX_PEERS;

/// Rules of someone else's in FORWARD.
pub const FOREIGN_FORWARD_RULES: &[&str] = &[
    "-j DROP",
    "-i docker0 -j ACCEPT",
    "-m comment --comment kudonet-ish -j ACCEPT",
];

/// A foreign link.
#[derive(Debug, Clone)]
pub struct ForeignLink {
    pub name: String,
    pub kind: LinkKind,
    pub up: bool,
    /// With an alias that is not kudonet's.
    pub alias: bool,
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub links: Vec<ForeignLink>,
    pub namespaces: Vec<String>,
    /// Third octets in `FOREIGN_ROUTE_OCTETS`.
    pub routes: Vec<u8>,
    pub forward_rules: Vec<&'static str>,
    /// DOCKER-USER in filter.
    pub other_chain: bool,
    /// Docker's MASQUERADE in nat POSTROUTING.
    pub nat_rule: bool,
    /// kudonet's chains left in the other iptables backend, beside a rule of someone else's.
    pub other_backend: bool,
    /// The default route leaves through eth0.
    pub default_route: bool,
}

/// Adds `foreign`'s objects to `state` (a link whose name is taken stays as it is); IP
/// forwarding is off.
pub fn add_foreign(state: &mut Observed, foreign: &Foreign) {
    for foreign_link in &foreign.links {
        let mut link = Link::new(foreign_link.kind);
        link.up = foreign_link.up;
        if foreign_link.alias {
            link.alias = Some("not-kudonet".to_string());
        }
        link.addresses.insert("192.0.2.10/24".parse().unwrap());
        state.links.entry(foreign_link.name.clone()).or_insert(link);
    }
    for name in &foreign.namespaces {
        state.namespaces.entry(name.clone()).or_default();
    }
    for third_octet in &foreign.routes {
        let destination = Ipv4Cidr::new(Ipv4Addr::new(10, 0, *third_octet, 0), 24).unwrap();
        state.routes.insert(
            IpCidr::V4(destination),
            Route {
                gateway: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))),
                device: None,
                owned: false,
            },
        );
    }
    let filter = state
        .firewall
        .entry(TableId::new(Family::Ipv4, "filter"))
        .or_default();
    filter.chains.insert(
        "FORWARD".to_string(),
        foreign
            .forward_rules
            .iter()
            .map(|rule| rule.to_string())
            .collect(),
    );
    if foreign.other_chain {
        filter
            .chains
            .insert("DOCKER-USER".to_string(), vec!["-j RETURN".to_string()]);
    }
    if foreign.nat_rule {
        let nat = state
            .firewall
            .entry(TableId::new(Family::Ipv4, "nat"))
            .or_default();
        nat.chains.insert(
            "POSTROUTING".to_string(),
            vec!["-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE".to_string()],
        );
    }
    if foreign.other_backend {
        let nat = state
            .other_backend
            .entry(TableId::new(Family::Ipv4, "nat"))
            .or_default();
        nat.chains.insert(
            "KUDO-PORTS".to_string(),
            vec!["-p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.9:80".to_string()],
        );
        nat.chains.insert(
            "PREROUTING".to_string(),
            vec![
                format!("{JUMP_MARK} -j KUDO-PORTS"),
                "-d 198.51.100.7/32 -j RETURN".to_string(),
            ],
        );
    }
    if foreign.default_route {
        state.default_route_interface = Some("eth0".to_string());
    }
    state
        .sysctls
        .insert("net.ipv4.ip_forward".to_string(), "0".to_string());
}

// Drift.

/// Things that happen to a node behind kudonet's back. Indexes pick among what exists.
#[derive(Debug, Clone)]
pub enum Drift {
    DeleteHostLink(usize),
    DeleteNamespace(usize),
    DeleteInnerLink(usize),
    SetDown(usize),
    SetMtu(usize),
    AddStrayAddress(usize),
    DropAddresses(usize),
    Detach(usize),
    DropDefaultRoute(usize),
    FlushChain(usize),
    DeleteChain(usize),
    DropJumps(usize),
    ResetSysctl(usize),
    DeleteRoute(usize),
}

impl Drift {
    /// How many kinds of drift there are.
    pub const KINDS: u8 = 14;

    /// Drift of kind `kind % KINDS`, picking the `index`th of what exists.
    pub fn of_kind(kind: u8, index: usize) -> Drift {
        match kind % Drift::KINDS {
            0 => Drift::DeleteHostLink(index),
            1 => Drift::DeleteNamespace(index),
            2 => Drift::DeleteInnerLink(index),
            3 => Drift::SetDown(index),
            4 => Drift::SetMtu(index),
            5 => Drift::AddStrayAddress(index),
            6 => Drift::DropAddresses(index),
            7 => Drift::Detach(index),
            8 => Drift::DropDefaultRoute(index),
            9 => Drift::FlushChain(index),
            10 => Drift::DeleteChain(index),
            11 => Drift::DropJumps(index),
            12 => Drift::ResetSysctl(index),
            _ => Drift::DeleteRoute(index),
        }
    }
}

fn pick<T: Clone>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
    let items: Vec<T> = items.collect();
    (!items.is_empty()).then(|| items[index % items.len()].clone())
}

/// Makes `drift` happen to the node of `dataplane` (nothing when there is nothing to pick).
pub fn drift(dataplane: &mut MemoryDataplane, drift: &Drift) {
    let state = &mut dataplane.state;
    let host_links = || state.links.keys().cloned();
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
    let all_links: Vec<LinkRef> = host_links()
        .map(|name| LinkRef::host(&name))
        .chain(inner_links.clone())
        .collect();
    match *drift {
        Drift::DeleteHostLink(i) => {
            if let Some(name) = pick(host_links(), i) {
                dataplane
                    .apply(&Action::DeleteLink {
                        link: LinkRef::host(&name),
                    })
                    .unwrap();
            }
        }
        Drift::DeleteInnerLink(i) => {
            if let Some(link) = pick(inner_links.into_iter(), i) {
                dataplane.apply(&Action::DeleteLink { link }).unwrap();
            }
        }
        Drift::DeleteNamespace(i) => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), i) {
                dataplane.apply(&Action::DeleteNamespace { name }).unwrap();
            }
        }
        Drift::SetDown(i)
        | Drift::SetMtu(i)
        | Drift::AddStrayAddress(i)
        | Drift::DropAddresses(i)
        | Drift::Detach(i) => {
            let Some(link) = pick(all_links.into_iter(), i) else {
                return;
            };
            let links = match &link.netns {
                None => &mut state.links,
                Some(netns) => &mut state.namespaces.get_mut(netns).unwrap().links,
            };
            let target = links.get_mut(&link.name).unwrap();
            match drift {
                Drift::SetDown(_) => target.up = false,
                Drift::SetMtu(_) => target.mtu = 1280,
                Drift::AddStrayAddress(_) => {
                    target.addresses.insert("198.51.100.7/24".parse().unwrap());
                }
                Drift::DropAddresses(_) => {
                    target.addresses.clear();
                    target.no_prefix_route.clear();
                }
                _ => {
                    target.master = None;
                    target.hairpin = false;
                }
            }
        }
        Drift::DropDefaultRoute(i) => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), i) {
                let namespace = state.namespaces.get_mut(&name).unwrap();
                namespace.default_gateways.clear();
                namespace.onlink_gateways.clear();
            }
        }
        Drift::FlushChain(i) | Drift::DeleteChain(i) => {
            let chains = state.firewall.iter().flat_map(|(table, t)| {
                t.chains
                    .keys()
                    .filter(|c| Table::is_owned_chain(c))
                    .map(move |c| (table.clone(), c.clone()))
            });
            if let Some((table, chain)) = pick(chains, i) {
                let chains = &mut state.firewall.get_mut(&table).unwrap().chains;
                if matches!(drift, Drift::FlushChain(_)) {
                    chains.get_mut(&chain).unwrap().clear();
                } else {
                    chains.remove(&chain);
                }
            }
        }
        Drift::DropJumps(i) => {
            if let Some(table) = pick(state.firewall.keys().cloned(), i) {
                for rules in state.firewall.get_mut(&table).unwrap().chains.values_mut() {
                    rules.retain(|rule| !Table::is_owned_jump(rule));
                }
            }
        }
        Drift::ResetSysctl(i) => {
            if let Some(key) = pick(state.sysctls.keys().cloned(), i) {
                state.sysctls.insert(key, "0".to_string());
            }
        }
        Drift::DeleteRoute(i) => {
            if let Some(destination) = pick(state.routes.keys().copied(), i) {
                state.routes.remove(&destination);
            }
        }
    }
}

// Observed nodes.

/// A node as it may be found: `foreign`'s objects, then the first `applied(length)` actions
/// of `earlier`'s plan (kudonet's leftovers, a crash mid-apply), then `drifts`.
pub fn observed(
    foreign: &Foreign,
    earlier: &Desired,
    applied: impl FnOnce(usize) -> usize,
    drifts: &[Drift],
) -> Observed {
    observed_with_bridges(foreign, earlier, applied, drifts, BRIDGE_INSTANCES)
}

/// [`observed`], the earlier plan putting `bridge_instances` instances on a bridge.
pub fn observed_with_bridges(
    foreign: &Foreign,
    earlier: &Desired,
    applied: impl FnOnce(usize) -> usize,
    drifts: &[Drift],
    bridge_instances: usize,
) -> Observed {
    let mut state = Observed::default();
    add_foreign(&mut state, foreign);
    let mut dataplane = MemoryDataplane::new(state);
    let earlier_plan = plan_with_bridge_instances(earlier, &dataplane.state, bridge_instances);
    let applied = applied(earlier_plan.steps.len()).min(earlier_plan.steps.len());
    if let Err(error) = dataplane.apply_all(&earlier_plan.to_actions()[..applied]) {
        panic!("an earlier plan fails on the in-memory dataplane: {error}\n{earlier_plan}");
    }
    for change in drifts {
        drift(&mut dataplane, change);
    }
    dataplane.state
}

// What the properties compare.

/// Everything on the node that kudonet does not own, as it must stay.
#[derive(Debug, PartialEq)]
pub struct ForeignView {
    pub links: BTreeMap<String, Link>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub routes: BTreeMap<IpCidr, Route>,
    pub rules: BTreeMap<(String, String), Vec<String>>,
}

/// The foreign objects of `state`, in both iptables backends.
pub fn foreign_view(state: &Observed) -> ForeignView {
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
            .map(|(table, t)| (table.to_string(), t))
            .chain(
                state
                    .other_backend
                    .iter()
                    .map(|(table, t)| (format!("other backend {table}"), t)),
            )
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

/// Everything kudonet owns on the node (nothing after a teardown).
pub fn owned_objects(state: &Observed) -> Vec<String> {
    let mut owned = Vec::new();
    owned.extend(
        state
            .links
            .iter()
            .filter(|(_, l)| l.is_owned())
            .map(|(n, _)| format!("link {n}")),
    );
    owned.extend(
        state
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.owned)
            .map(|(n, _)| format!("namespace {n}")),
    );
    owned.extend(
        state
            .routes
            .iter()
            .filter(|(_, r)| r.owned)
            .map(|(d, _)| format!("route {d}")),
    );
    for (table, t) in state.firewall.iter().chain(&state.other_backend) {
        for (chain, rules) in &t.chains {
            if Table::is_owned_chain(chain) {
                owned.push(format!("chain {table} {chain}"));
            }
            owned.extend(
                rules
                    .iter()
                    .filter(|r| Table::is_owned_jump(r))
                    .map(|r| format!("rule {table} {chain} {r}")),
            );
        }
    }
    owned
}
