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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use cidr::{IpCidr, IpInet, Ipv4Cidr, Ipv4Inet, Ipv6Cidr, Ipv6Inet};

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::names;
use kudonet::names::JUMP_MARK;
use kudonet::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Table, TableId};
use kudonet::plan::{Action, BRIDGE_INSTANCES, Plan, Scope, plan_with_bridge_instances};
use kudonet::spec::{
    Cluster, ClusterMode, Desired, Family, FirewallBackend, Instance, Node, Protocol, PublishedPort,
};

// Names and address pools.

/// The instances a desired state may hold (`a` is also the node's name).
pub const INSTANCE_NAMES: &[&str] = &["web", "db", "api", "cache", "worker-1", "a"];
/// The node's bridge.
pub const BRIDGES: &[&str] = &["kudo0", "br-kudo"];
/// The node's MTU, when set.
pub const MTUS: &[u32] = &[1280, 1400, 1500, 9000];
/// Host parts of instance addresses in 10.0.0.0/24 and fd00:10::/64: neither the network,
/// the gateway (the node, .1 and ::1) nor IPv4's broadcast address.
pub const HOSTS: RangeInclusive<u8> = 2..=254;
/// The few host ports instances mostly publish, so that they compete for them.
pub const CONTESTED_HOST_PORTS: RangeInclusive<u16> = 8001..=8003;
/// Any port.
pub const PORTS: RangeInclusive<u16> = 1..=65535;
/// Peers of node `a` are p1, p2, ... with 10.0.N.0/24 and fd00:10:0:N::/64.
pub const MAX_PEERS: u8 = 2;
/// How many drifts happen to a node at most.
pub const MAX_DRIFTS: usize = 6;
/// The names an instance's interface inside its namespace may have (`eth0` is the default),
/// which links of others in their namespaces may have too.
pub const INTERFACES: &[&str] = &["eth0", "eth1"];

/// The path of the namespace someone else owns (a container runtime's) named after `name`,
/// one of `INSTANCE_NAMES`: `/run/netns/cni-<name>`. Instances live in them (`netns`), and
/// observed nodes hold some of them.
pub fn others_namespace(name: &str) -> String {
    format!("/run/netns/cni-{name}")
}

/// The families of a node or an instance: IPv4 only, both, or IPv6 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    Ipv4,
    Dual,
    Ipv6,
}

impl Families {
    /// Every choice.
    pub const ALL: &[Families] = &[Families::Ipv4, Families::Dual, Families::Ipv6];

    pub fn has(self, family: Family) -> bool {
        match self {
            Families::Ipv4 => family == Family::Ipv4,
            Families::Ipv6 => family == Family::Ipv6,
            Families::Dual => true,
        }
    }

    /// An instance's families on a node of `node`'s: its own on a dual-stack node (it may
    /// have fewer than its node), else its node's one.
    pub fn within(self, node: Families) -> Families {
        match node {
            Families::Dual => self,
            single => single,
        }
    }
}

/// The address of host `host` in subnet `index` of `family`: `10.0.INDEX.HOST/24` or
/// `fd00:10:0:INDEX::HOST/64` (INDEX and HOST in hex there).
pub fn address(family: Family, index: u8, host: u8) -> IpInet {
    match family {
        Family::Ipv4 => IpInet::V4(Ipv4Inet::new(Ipv4Addr::new(10, 0, index, host), 24).unwrap()),
        Family::Ipv6 => IpInet::V6(
            Ipv6Inet::new(
                Ipv6Addr::new(0xfd00, 0x10, 0, index.into(), 0, 0, 0, host.into()),
                64,
            )
            .unwrap(),
        ),
    }
}

/// A node of the cluster of `families`: `10.0.INDEX.1/24` and `fd00:10:0:INDEX::1/64`,
/// external addresses `192.0.2.(10 + INDEX)` and `2001:db8::(0x10 + INDEX)` (one per family
/// it has, as a routed cluster needs).
pub fn node(
    name: &str,
    index: u8,
    families: Families,
    bridge: &str,
    mtu: Option<u32>,
    masquerade: bool,
    uplink: bool,
) -> Node {
    let external = |family| match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + index)),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            0x10 + u16::from(index),
        )),
    };
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|family| families.has(*family))
        .collect();
    Node {
        name: name.to_string(),
        cidrs: families
            .iter()
            .map(|family| address(*family, index, 1))
            .collect(),
        external_ips: families.iter().map(|family| external(*family)).collect(),
        bridge: bridge.to_string(),
        uplink: uplink.then(|| "eth0".to_string()),
        masquerade,
        mtu,
    }
}

/// The `hostIp`s a published port may have: none (every family the instance has), node
/// `a`'s external address of each family, and every address of one family.
pub const HOST_IPS: &[Option<IpAddr>] = &[
    None,
    Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
    Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    Some(IpAddr::V6(Ipv6Addr::new(
        0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10,
    ))),
    Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
];

/// A published port: TCP or UDP, on the `host_ip`th of [`HOST_IPS`].
pub fn port(host_port: u16, instance_port: u16, udp: bool, host_ip: usize) -> PublishedPort {
    PublishedPort {
        host_port,
        instance_port,
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        host_ip: HOST_IPS[host_ip % HOST_IPS.len()],
    }
}

// Desired states.

/// One instance as drawn: its address may clash with another's, its ports too.
#[derive(Debug, Clone)]
pub struct InstanceChoice {
    pub name: &'static str,
    /// Host part in `HOSTS`.
    pub host: u8,
    /// The instance's families, within its node's (see [`Families::within`]).
    pub families: Families,
    pub ports: Vec<PublishedPort>,
    /// Without an address: kudonet allocates one of each of the node's families.
    pub allocated: bool,
    /// In the namespace someone else owns named after this one of `INSTANCE_NAMES`
    /// ([`others_namespace`]; mostly the instance's own name, so that an observed node holds
    /// it as often as not), else in a namespace of kudonet's.
    pub netns: Option<&'static str>,
    /// Its interface inside its namespace, one of `INTERFACES`.
    pub interface: &'static str,
}

/// A desired state for node `a` (10.0.0.0/24, fd00:10::/64, or both) as drawn; `build`
/// makes it valid.
#[derive(Debug, Clone)]
pub struct DesiredChoice {
    /// Node `a`'s families.
    pub families: Families,
    pub bridge: &'static str,
    pub mtu: Option<u32>,
    pub masquerade: bool,
    pub uplink: bool,
    /// In `INSTANCE_NAMES` order, each name at most once.
    pub instances: Vec<InstanceChoice>,
    /// A cluster, routed (false) or VXLAN (true).
    pub cluster: Option<bool>,
    /// The families of each peer, up to `MAX_PEERS`.
    pub peers: Vec<Families>,
    /// Whether kudonet's rules go to nftables rather than iptables.
    pub nftables: bool,
}

impl DesiredChoice {
    /// The desired state, as validation guarantees it: distinct instance addresses (a clash
    /// probes upwards from the drawn one), one instance a namespace (a `netns` an earlier
    /// instance has gives the next free one), a hostIp of a family the instance has (else
    /// the port is dropped) and one (protocol, host port) per node and family (a later port
    /// on a taken one is dropped: an IPv4-only and an IPv6-only one share a host port).
    pub fn build(&self) -> Desired {
        let mut used_addresses = Vec::new();
        let mut used_namespaces = Vec::new();
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
                let netns = choice.netns.map(|name| {
                    let start = INSTANCE_NAMES.iter().position(|n| *n == name).unwrap_or(0);
                    let free = (0..INSTANCE_NAMES.len())
                        .map(|offset| INSTANCE_NAMES[(start + offset) % INSTANCE_NAMES.len()])
                        .find(|name| !used_namespaces.contains(name))
                        .expect("no more instances than names");
                    used_namespaces.push(free);
                    others_namespace(free)
                });
                let families: Vec<Family> = Family::ALL
                    .into_iter()
                    .filter(|family| {
                        let families = if choice.allocated {
                            self.families
                        } else {
                            choice.families.within(self.families)
                        };
                        families.has(*family)
                    })
                    .collect();
                let mut ports = choice.ports.clone();
                ports.retain(|port| {
                    if port
                        .host_ip
                        .is_some_and(|ip| !families.contains(&Family::of(ip)))
                    {
                        return false;
                    }
                    let keys: Vec<_> = families
                        .iter()
                        .filter(|family| port.serves(**family))
                        .map(|family| (port.protocol, port.host_port, *family))
                        .collect();
                    !keys.iter().any(|key| used_ports.contains(key)) && {
                        used_ports.extend(keys);
                        true
                    }
                });
                Instance {
                    name: choice.name.to_string(),
                    id: None,
                    node: "a".to_string(),
                    addresses: if choice.allocated {
                        Vec::new()
                    } else {
                        families
                            .iter()
                            .map(|family| address(*family, 0, host))
                            .collect()
                    },
                    ports,
                    netns,
                    interface: choice.interface.to_string(),
                }
            })
            .collect();
        let mut desired = Desired {
            cluster: self.cluster.map(|vxlan| Cluster {
                name: Some("c".to_string()),
                cidrs: vec![
                    IpCidr::V4(Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap()),
                    IpCidr::V6(
                        Ipv6Cidr::new(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0), 48).unwrap(),
                    ),
                ],
                mode: if vxlan {
                    ClusterMode::Vxlan
                } else {
                    ClusterMode::Routed
                },
            }),
            node: node(
                "a",
                0,
                self.families,
                self.bridge,
                self.mtu,
                self.masquerade,
                self.uplink,
            ),
            peers: self
                .peers
                .iter()
                .take(MAX_PEERS.into())
                .zip(1..)
                .map(|(families, index)| {
                    node(
                        &format!("p{index}"),
                        index,
                        *families,
                        "kudo0",
                        None,
                        true,
                        false,
                    )
                })
                .collect(),
            instances,
            firewall: if self.nftables {
                FirewallBackend::Nftables
            } else {
                FirewallBackend::Iptables
            },
        };
        // A vxlan cluster tunnels over one family, which every node needs an address of
        // (validation refuses a cluster without one): each node has both.
        if self.cluster == Some(true) {
            for node in std::iter::once(&mut desired.node).chain(&mut desired.peers) {
                let index = node
                    .name
                    .strip_prefix('p')
                    .map_or(0, |i| i.parse().unwrap());
                node.external_ips = vec![
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + index)),
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0x10 + u16::from(index),
                    )),
                ];
            }
        }
        desired
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

/// Indexes N of foreign routes to 10.0.N.0/24 and fd00:10:0:N::/64 (node `a`'s subnets and
/// its peers').
pub const FOREIGN_ROUTE_OCTETS: RangeInclusive<u8> = 0..=MAX_PEERS;

/// Rules of someone else's in FORWARD (of iptables and of ip6tables).
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

/// A link of theirs in a namespace someone else owns.
#[derive(Debug, Clone)]
pub struct TheirLink {
    /// One of `INTERFACES`: it may take the name an instance asks for.
    pub name: &'static str,
    /// A veth whose other end is on the node (as a runtime's bridge plugin makes it), else
    /// a link of another kind.
    pub veth: bool,
    pub up: bool,
}

/// A namespace someone else owns (a container runtime's), at [`others_namespace`]`(name)`.
#[derive(Debug, Clone)]
pub struct TheirNamespace {
    /// Which of `INSTANCE_NAMES` its path is named after.
    pub name: &'static str,
    /// Whether its loopback is up (runtimes bring it up; kudonet never does).
    pub lo_up: bool,
    /// Their links besides the loopback, with addresses outside kudonet's subnets.
    pub links: Vec<TheirLink>,
    /// Their default routes, IPv4 and IPv6, via a gateway in their links' subnets (only
    /// when one of those is up: the kernel refuses a gateway it cannot reach).
    pub default_routes: [bool; 2],
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub links: Vec<ForeignLink>,
    pub namespaces: Vec<String>,
    /// Namespaces someone else owns, where instances may live.
    pub their_namespaces: Vec<TheirNamespace>,
    /// IPv4 routes, to 10.0.N.0/24 for N in `FOREIGN_ROUTE_OCTETS`.
    pub routes: Vec<u8>,
    /// IPv6 routes, to fd00:10:0:N::/64 for N in `FOREIGN_ROUTE_OCTETS`.
    pub routes6: Vec<u8>,
    /// In iptables' FORWARD.
    pub forward_rules: Vec<&'static str>,
    /// In ip6tables' FORWARD.
    pub forward_rules6: Vec<&'static str>,
    /// DOCKER-USER in filter, and the FORWARD policy DROP Docker sets.
    pub other_chain: bool,
    /// Docker's MASQUERADE in nat POSTROUTING, of iptables and ip6tables.
    pub nat_rule: bool,
    /// kudonet's chains left in the other iptables backend (both families), beside a rule of
    /// someone else's.
    pub other_backend: bool,
    /// The default route leaves through eth0.
    pub default_route: bool,
}

/// Adds `foreign`'s objects to `state` (a link whose name is taken stays as it is); IPv4
/// and IPv6 forwarding are off.
pub fn add_foreign(state: &mut Observed, foreign: &Foreign) {
    for foreign_link in &foreign.links {
        let mut link = Link::new(foreign_link.kind);
        link.up = foreign_link.up;
        if foreign_link.alias {
            link.alias = Some("not-kudonet".to_string());
        }
        link.addresses.insert("192.0.2.10/24".parse().unwrap());
        link.addresses.insert("2001:db8::10/64".parse().unwrap());
        state.links.entry(foreign_link.name.clone()).or_insert(link);
    }
    for name in &foreign.namespaces {
        state.namespaces.entry(name.clone()).or_default();
    }
    for theirs in &foreign.their_namespaces {
        add_their_namespace(state, theirs);
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
    for index in &foreign.routes6 {
        state.routes.insert(
            address(Family::Ipv6, *index, 0).network(),
            Route {
                gateway: Some("2001:db8::99".parse().unwrap()),
                device: None,
                owned: false,
            },
        );
    }
    let filter6 = state
        .firewall
        .entry(TableId::new(Family::Ipv6, "filter"))
        .or_default();
    filter6.chains.insert(
        "FORWARD".to_string(),
        foreign
            .forward_rules6
            .iter()
            .map(|rule| rule.to_string())
            .collect(),
    );
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
        // Docker sets iptables' FORWARD policy to DROP (the nftables backend then keeps
        // its KUDO-FORWARD chain in iptables' filter table).
        state.iptables_forward_drops.insert(Family::Ipv4);
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
        let nat6 = state
            .firewall
            .entry(TableId::new(Family::Ipv6, "nat"))
            .or_default();
        nat6.chains.insert(
            "POSTROUTING".to_string(),
            vec!["-s fd00:dead::/64 ! -o docker0 -j MASQUERADE".to_string()],
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
        let nat6 = state
            .other_backend
            .entry(TableId::new(Family::Ipv6, "nat"))
            .or_default();
        nat6.chains.insert(
            "KUDO-PORTS".to_string(),
            vec!["-p tcp -m tcp --dport 8081 -j DNAT --to-destination [fd00:10::9]:80".to_string()],
        );
        nat6.chains.insert(
            "PREROUTING".to_string(),
            vec![
                format!("{JUMP_MARK} -j KUDO-PORTS"),
                "-d 2001:db8:ffff::7/128 -j RETURN".to_string(),
            ],
        );
    }
    if foreign.default_route {
        state.default_route_interface = Some("eth0".to_string());
    }
    state
        .sysctls
        .insert("net.ipv4.ip_forward".to_string(), "0".to_string());
    state
        .sysctls
        .insert("net.ipv6.conf.all.forwarding".to_string(), "0".to_string());
}

/// Adds the namespace someone else owns that `theirs` describes (nothing when its path is
/// taken): its loopback, and its links, a veth's other end on the node.
fn add_their_namespace(state: &mut Observed, theirs: &TheirNamespace) {
    let path = others_namespace(theirs.name);
    if state.namespaces.contains_key(&path) {
        return;
    }
    let lo = Link {
        up: theirs.lo_up,
        mtu: 65536,
        ..Link::new(LinkKind::Loopback)
    };
    let mut namespace = Namespace {
        owned: false,
        links: [("lo".to_string(), lo)].into(),
        ..Namespace::default()
    };
    let position = INSTANCE_NAMES
        .iter()
        .position(|name| *name == theirs.name)
        .unwrap_or(0);
    for their_link in &theirs.links {
        if namespace.links.contains_key(their_link.name) {
            continue;
        }
        let kind = if their_link.veth {
            LinkKind::Veth
        } else {
            LinkKind::Other
        };
        let mut link = Link {
            up: their_link.up,
            ..Link::new(kind)
        };
        link.addresses.insert("10.88.0.2/16".parse().unwrap());
        link.addresses.insert("fd00:88::2/64".parse().unwrap());
        if their_link.veth {
            // Their end on the node: `veth<namespace><interface>`, as a runtime names it.
            let host = format!("veth{position}{}", their_link.name);
            let host_end = Link {
                up: true,
                peer: Some(LinkRef::in_namespace(&path, their_link.name)),
                ..Link::new(LinkKind::Veth)
            };
            if state.links.contains_key(&host) {
                continue;
            }
            state.links.insert(host.clone(), host_end);
            link.peer = Some(LinkRef::host(&host));
        }
        namespace.links.insert(their_link.name.to_string(), link);
    }
    let reachable = namespace
        .links
        .values()
        .any(|link| link.kind != LinkKind::Loopback && link.up);
    let gateways: [IpAddr; 2] = ["10.88.0.1".parse().unwrap(), "fd00:88::1".parse().unwrap()];
    for (wanted, gateway) in theirs.default_routes.iter().zip(gateways) {
        if *wanted && reachable {
            namespace.others_default_gateways.insert(gateway);
        }
    }
    state.namespaces.insert(path, namespace);
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
    AddStrayIpv6Address(usize),
    /// Drops a link's IPv6 addresses, keeping its IPv4 ones.
    DropIpv6Addresses(usize),
    /// Drops a namespace's IPv6 default route, keeping its IPv4 one.
    DropIpv6DefaultRoute(usize),
}

impl Drift {
    /// How many kinds of drift there are.
    pub const KINDS: u8 = 17;

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
            13 => Drift::DeleteRoute(index),
            14 => Drift::AddStrayIpv6Address(index),
            15 => Drift::DropIpv6Addresses(index),
            _ => Drift::DropIpv6DefaultRoute(index),
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
        | Drift::AddStrayIpv6Address(i)
        | Drift::DropIpv6Addresses(i)
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
                Drift::AddStrayIpv6Address(_) => {
                    target
                        .addresses
                        .insert("2001:db8:ffff::7/64".parse().unwrap());
                }
                Drift::DropIpv6Addresses(_) => {
                    target.addresses.retain(|address| address.is_ipv4());
                    target.no_prefix_route.retain(|address| address.is_ipv4());
                }
                _ => {
                    target.master = None;
                    target.hairpin = false;
                }
            }
        }
        Drift::DropDefaultRoute(i) | Drift::DropIpv6DefaultRoute(i) => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), i) {
                let namespace = state.namespaces.get_mut(&name).unwrap();
                match drift {
                    Drift::DropDefaultRoute(_) => {
                        namespace.default_gateways.clear();
                        namespace.onlink_gateways.clear();
                    }
                    _ => {
                        namespace
                            .default_gateways
                            .retain(|gateway| gateway.is_ipv4());
                        namespace
                            .onlink_gateways
                            .retain(|gateway| gateway.is_ipv4());
                    }
                }
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

/// The instances of `desired` whose namespace, someone else's, `observed` does not hold.
pub fn without_namespace<'a>(desired: &'a Desired, observed: &Observed) -> Vec<&'a Instance> {
    desired
        .instances
        .iter()
        .filter(|instance| {
            !instance.owns_namespace() && !observed.namespaces.contains_key(&instance.namespace())
        })
        .collect()
}

/// What `planned` (for `desired`, or a teardown) must never do to namespaces someone else
/// owns: create or delete one, whether `observed` holds it (and kudonet does not own it) or
/// an instance names it with `netns`.
pub fn check_others_namespaces_stay(
    planned: &Plan,
    observed: &Observed,
    desired: Option<&Desired>,
) -> Result<(), String> {
    let others = desired.map(Desired::others_namespaces).unwrap_or_default();
    for action in planned.actions() {
        if let Action::CreateNamespace { name } | Action::DeleteNamespace { name } = action {
            let theirs = observed
                .namespaces
                .get(name)
                .is_some_and(|namespace| !namespace.owned);
            if theirs || others.contains(name) {
                return Err(format!(
                    "`{action}` is about a namespace someone else owns:\n{planned}"
                ));
            }
        }
    }
    Ok(())
}

/// An instance whose namespace, someone else's, is missing is planned as absent: no action
/// in its scope, exactly one conflict (that the namespace does not exist), and the plan is
/// the one for the desired state without it but for those conflicts.
pub fn check_missing_namespaces(
    planned: &Plan,
    desired: &Desired,
    observed: &Observed,
    bridge_instances: usize,
) -> Result<(), String> {
    let missing = without_namespace(desired, observed);
    for instance in &missing {
        let scope = Scope::instance(&instance.name);
        if let Some(step) = planned.steps.iter().find(|step| step.scope == scope) {
            return Err(format!(
                "`{}` is for {}, whose namespace is missing:\n{planned}",
                step.action, instance.name
            ));
        }
        let conflicts: Vec<String> = planned
            .conflicts
            .iter()
            .filter(|conflict| conflict.scope == scope)
            .map(|conflict| conflict.message.clone())
            .collect();
        let expected = format!(
            "namespace {} of instance {:?} does not exist",
            instance.namespace(),
            instance.name
        );
        if conflicts.len() != 1 || !conflicts[0].starts_with(&expected) {
            return Err(format!(
                "{} has the conflicts {conflicts:?}, not one that its namespace does not exist",
                instance.name
            ));
        }
    }
    let present = Desired {
        instances: desired
            .instances
            .iter()
            .filter(|instance| !missing.iter().any(|gone| gone.name == instance.name))
            .cloned()
            .collect(),
        ..desired.clone()
    };
    let without = plan_with_bridge_instances(&present, observed, bridge_instances);
    let others_conflicts: Vec<_> = planned
        .conflicts
        .iter()
        .filter(|conflict| {
            !missing
                .iter()
                .any(|gone| conflict.scope == Scope::instance(&gone.name))
        })
        .cloned()
        .collect();
    if planned.steps != without.steps
        || planned.allocated != without.allocated
        || others_conflicts != without.conflicts
    {
        return Err(format!(
            "not planned as absent:\n{planned}\nwithout the instances whose namespace is missing:\n{without}"
        ));
    }
    Ok(())
}

/// Everything on the node that kudonet does not own, as it must stay.
#[derive(Debug, PartialEq)]
pub struct ForeignView {
    pub links: BTreeMap<String, Link>,
    /// The namespaces kudonet does not own (someone else's, where instances may live, and
    /// those squatting on kudonet's names), with what is theirs inside.
    pub namespaces: BTreeMap<String, TheirsInside>,
    pub routes: BTreeMap<IpCidr, Route>,
    pub rules: BTreeMap<(String, String), Vec<String>>,
}

/// What is theirs in a namespace kudonet does not own: every link (the loopback
/// included) but kudonet's, and their default routes.
#[derive(Debug, PartialEq)]
pub struct TheirsInside {
    pub links: BTreeMap<String, Link>,
    pub default_gateways: BTreeSet<IpAddr>,
}

/// Whether link `name` of namespace `netns` is kudonet's: in a namespace someone else owns,
/// only the other end of a host veth that carries kudonet's mark is (as
/// `Observed::instance_interface` tells for an instance).
pub fn is_kudonets_inside(state: &Observed, netns: &str, name: &str) -> bool {
    let inside = LinkRef::in_namespace(netns, name);
    let Some(Some(LinkRef {
        netns: None,
        name: host,
    })) = state
        .namespaces
        .get(netns)
        .and_then(|namespace| namespace.links.get(name))
        .map(|link| link.peer.clone())
    else {
        return false;
    };
    state.links.get(&host).is_some_and(|host| {
        host.kind == LinkKind::Veth && host.is_owned() && host.peer.as_ref() == Some(&inside)
    })
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
            .map(|(netns, namespace)| {
                let links = namespace
                    .links
                    .iter()
                    .filter(|(name, _)| !is_kudonets_inside(state, netns, name))
                    .map(|(name, link)| (name.clone(), link.clone()))
                    .collect();
                let default_gateways = namespace.others_default_gateways.clone();
                (
                    netns.clone(),
                    TheirsInside {
                        links,
                        default_gateways,
                    },
                )
            })
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
    // In namespaces someone else owns: kudonet's interfaces, and the default routes through
    // them (the only ones an observation reads there).
    for (netns, namespace) in state.namespaces.iter().filter(|(_, ns)| !ns.owned) {
        owned.extend(
            namespace
                .links
                .keys()
                .filter(|name| is_kudonets_inside(state, netns, name))
                .map(|name| format!("link {netns}/{name}")),
        );
        owned.extend(
            namespace
                .default_gateways
                .iter()
                .map(|gateway| format!("route default via {gateway} in {netns}")),
        );
    }
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
