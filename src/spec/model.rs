//! The validated desired state: what the YAML files mean once every rule of
//! docs/file-format.md holds.
//!
//! These types carry no source positions and cannot be invalid; they are what the planner,
//! the controller and the library API work with.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use cidr::{IpCidr, IpInet, Ipv4Inet, Ipv6Inet};

use super::diagnostic::{Diagnostic, Invalid, Origin};

/// Bridge name used when a Node does not set `bridge`.
pub const DEFAULT_BRIDGE: &str = "kudo0";

/// How many instances kudonet puts on one bridge. A bridge copies a broadcast (an ARP
/// request) to every port at once, each copy through the receiving CPU's backlog
/// (`net.core.netdev_max_backlog`, 1000 by default, for the whole machine): past about a
/// thousand ports the copies overflow it and the answer is dropped. Half of it leaves room
/// for the rest of the traffic. Beyond, a node adds bridges and routes between them
/// (docs/file-format.md, "How many instances a node holds").
pub const BRIDGE_INSTANCES: usize = 500;

/// How many bridges a node has at most: its own and the segments `kudo-seg1` to
/// `kudo-seg99`.
pub const MAX_BRIDGES: usize = 100;

/// How many instances a node holds at most, whatever its subnet.
pub const NODE_INSTANCES: usize = BRIDGE_INSTANCES * MAX_BRIDGES;

/// Everything one desired-state directory describes: possibly a whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The Cluster document, if the directory has one.
    pub cluster: Option<Cluster>,
    /// Sorted by name.
    pub nodes: Vec<Node>,
    /// Sorted by name.
    pub instances: Vec<Instance>,
    /// Where each Node's `cidr` is written, by node name: for the checks that need the
    /// machine (see [`Spec::check_uplink_overlap`]).
    pub node_cidr_origins: BTreeMap<String, Origin>,
}

impl Spec {
    /// [`Node::uplink_overlap`] as a diagnostic at the Node's `cidr`: the check of the
    /// desired state that needs the machine (its uplink's addresses), made once the node is
    /// observed.
    pub fn check_uplink_overlap(
        &self,
        node: &Node,
        uplink: &str,
        uplink_addresses: impl IntoIterator<Item = IpInet>,
    ) -> Option<Diagnostic> {
        let problem = node.uplink_overlap(uplink, uplink_addresses)?;
        let origin = self
            .node_cidr_origins
            .get(&node.name)
            .cloned()
            .unwrap_or_else(|| Origin::path(std::path::Path::new(&node.name)));
        Some(Diagnostic::new(origin, problem))
    }
}

/// A `kind: Cluster` document: how the directory's nodes reach each other's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name, if given.
    pub name: Option<String>,
    /// Every node subnet lies inside one of these (at most one per family); traffic inside
    /// them is never masqueraded.
    pub cidrs: Vec<IpCidr>,
    /// How nodes reach each other's instances.
    pub mode: ClusterMode,
}

impl Cluster {
    /// The Cluster `cidr` of `family`, if it has one.
    pub fn cidr(&self, family: Family) -> Option<IpCidr> {
        self.cidrs
            .iter()
            .copied()
            .find(|cidr| Family::of(cidr.first_address()) == family)
    }
}

/// An IP family: a node has one or both, and so do its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// How many bits an address of the family has.
    pub fn bits(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }

    /// The unspecified address of the family: `0.0.0.0` or `::`.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The family of `address`.
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// The entry of `family` in a list of at most one per family.
fn of_family(list: &[IpInet], family: Family) -> Option<IpInet> {
    list.iter()
        .copied()
        .find(|inet| Family::of(inet.address()) == family)
}

/// How the nodes of a cluster reach each other's instances (`mode:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterMode {
    /// A route per peer node subnet via the peer's external address.
    #[default]
    Routed,
    /// An overlay device, for nodes that do not share a layer-2 segment.
    Vxlan,
}

/// A `kind: Node` document: one machine, its bridge and its instance subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The Node name: the machine's hostname, or what `--node` names.
    pub name: String,
    /// The bridge's addresses and prefixes, at most one per family and at least one, IPv4
    /// first: the gateways of this node's instances.
    pub cidrs: Vec<IpInet>,
    /// This node on the underlay, as peers reach it, at most one per family; required when
    /// there are several Nodes.
    pub external_ips: Vec<IpAddr>,
    /// The bridge's name (`kudo0` unless set).
    pub bridge: String,
    /// `None`: the interface of the default route, found when the node is observed.
    pub uplink: Option<String>,
    /// Whether instance traffic leaving the cluster is masqueraded (SNAT).
    pub masquerade: bool,
    /// `None`: the kernel's default (1500), or over a vxlan overlay the uplink's less the
    /// encapsulation; kudonet keeps it either way.
    pub mtu: Option<u32>,
}

impl Node {
    /// The bridge address of `family`, if the node has that family.
    pub fn cidr(&self, family: Family) -> Option<IpInet> {
        of_family(&self.cidrs, family)
    }

    /// The bridge's IPv4 address, if the node has IPv4.
    pub fn ipv4(&self) -> Option<Ipv4Inet> {
        match self.cidr(Family::Ipv4)? {
            IpInet::V4(inet) => Some(inet),
            IpInet::V6(_) => None,
        }
    }

    /// The bridge's IPv6 address, if the node has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Inet> {
        match self.cidr(Family::Ipv6)? {
            IpInet::V6(inet) => Some(inet),
            IpInet::V4(_) => None,
        }
    }

    /// The node's families, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.cidrs.iter().map(|cidr| Family::of(cidr.address()))
    }

    /// Whether the node has `family`.
    pub fn has(&self, family: Family) -> bool {
        self.cidr(family).is_some()
    }

    /// The node's instance subnets, e.g. 10.0.0.0/24 for a bridge at 10.0.0.1/24, IPv4
    /// first.
    pub fn subnets(&self) -> impl Iterator<Item = IpCidr> + '_ {
        self.cidrs.iter().map(|cidr| cidr.network())
    }

    /// The node's instance subnet of `family`.
    pub fn subnet(&self, family: Family) -> Option<IpCidr> {
        Some(self.cidr(family)?.network())
    }

    /// The instances' default gateway of `family`: the bridge address.
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        Some(self.cidr(family)?.address())
    }

    /// This node's address of `family` on the underlay, if it has one.
    pub fn external_ip(&self, family: Family) -> Option<IpAddr> {
        self.external_ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    /// Why this node's subnet cannot be used beside `uplink`: it holds one of the uplink's
    /// own addresses, or the whole of one of its networks (the gateway with it). The node
    /// would route its own address or its neighbours and gateway into the bridge and lose the
    /// underlay.
    pub fn uplink_overlap(
        &self,
        uplink: &str,
        uplink_addresses: impl IntoIterator<Item = IpInet>,
    ) -> Option<String> {
        let (subnet, clash) = uplink_addresses.into_iter().find_map(|address| {
            let subnet = self.subnet(Family::of(address.address()))?;
            (subnet.contains(&address.address())
                || super::validate::contains(&subnet, &address.network()))
            .then_some((subnet, address))
        })?;
        Some(format!(
            "subnet {subnet} of Node {:?} overlaps {clash} of its uplink {uplink}: the node would \
             lose its own network; choose a subnet the uplink does not use",
            self.name
        ))
    }

    /// What this node's subnet hides of a wider network of `uplink` that it lies inside
    /// (without holding the uplink's address): hosts of that network in the node's subnet
    /// are unreachable from the node, since its bridge route is more specific. It works, and
    /// is often meant (a /24 of instances inside a /8 LAN), so it is a warning.
    pub fn uplink_shadowed(
        &self,
        uplink: &str,
        uplink_addresses: impl IntoIterator<Item = IpInet>,
    ) -> Option<String> {
        let (subnet, wider) = uplink_addresses.into_iter().find_map(|address| {
            let subnet = self.subnet(Family::of(address.address()))?;
            (address.network_length() < subnet.network_length()
                && address.network().contains(&subnet.first_address())
                && !subnet.contains(&address.address()))
            .then_some((subnet, address))
        })?;
        Some(format!(
            "subnet {subnet} of Node {:?} lies inside {} of its uplink {uplink}: hosts of that \
             network in {subnet} are unreachable from the node",
            self.name,
            wider.network()
        ))
    }
}

/// A `kind: Instance` document: one instance's network on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The Instance name, a DNS label.
    pub name: String,
    /// The id an orchestrator knows the instance by, when its namespace is named after that
    /// rather than after `name` (ids of the original library need not be DNS labels).
    pub id: Option<String>,
    /// The Node the instance runs on.
    pub node: String,
    /// At most one per family, of families its node has, IPv4 first; each carries the
    /// node's prefix length for its family.
    pub addresses: Vec<IpInet>,
    /// The node ports forwarded to the instance.
    pub ports: Vec<PublishedPort>,
    /// The path of a network namespace someone else owns (a container runtime's), when the
    /// instance lives there rather than in a namespace of kudonet's: kudonet puts the
    /// instance's interface inside but never creates, renames or deletes the namespace.
    pub netns: Option<String>,
    /// The name of the instance's interface inside its namespace (`eth0` unless a document
    /// says otherwise: a runtime may ask for `eth1`).
    pub interface: String,
}

impl Instance {
    /// The instance's namespace, as observations and actions name it: `kudo-<id>` when it
    /// has an id, else `kudo-<name>`, both in the netns directory; or the path of the
    /// namespace someone else owns (`netns`), which is absolute.
    pub fn namespace(&self) -> String {
        match &self.netns {
            Some(path) => path.clone(),
            None => crate::names::namespace_name(self.id.as_deref().unwrap_or(&self.name)),
        }
    }

    /// Whether kudonet creates and deletes the instance's namespace (it has no `netns`).
    pub fn owns_namespace(&self) -> bool {
        self.netns.is_none()
    }

    /// The instance's address of `family`, if it has one.
    pub fn address(&self, family: Family) -> Option<IpInet> {
        of_family(&self.addresses, family)
    }

    /// The instance's IPv4 address, if it has one.
    pub fn ipv4(&self) -> Option<Ipv4Inet> {
        match self.address(Family::Ipv4)? {
            IpInet::V4(inet) => Some(inet),
            IpInet::V6(_) => None,
        }
    }
}

/// A port of the node forwarded (DNAT) to a port of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    /// The port of the node.
    pub host_port: u16,
    /// The port of the instance it is forwarded to.
    pub instance_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// `None`: every address of the node, in every family the instance has. An unspecified
    /// address (`0.0.0.0`, `::`) means every address of its family only.
    pub host_ip: Option<IpAddr>,
}

impl PublishedPort {
    /// Whether the port is published on the node's addresses of `family`.
    pub fn serves(&self, family: Family) -> bool {
        self.host_ip.is_none_or(|ip| Family::of(ip) == family)
    }

    /// The node address it is published on, when it names one (not `0.0.0.0` or `::`).
    pub fn host_address(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name used in the files and in iptables rules (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one node should have: its own Node, its instances, and the peers it routes to.
/// This is the planner's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The Cluster document, if the directory has one.
    pub cluster: Option<Cluster>,
    /// The node to converge.
    pub node: Node,
    /// Every other node of the directory, sorted by name.
    pub peers: Vec<Node>,
    /// The instances on `node`, sorted by name.
    pub instances: Vec<Instance>,
    /// Which firewall holds kudonet's rules (`--firewall`; not part of the files).
    pub firewall: FirewallBackend,
}

impl Desired {
    /// The paths of the namespaces someone else owns that instances live in (`netns`).
    pub fn others_namespaces(&self) -> std::collections::BTreeSet<String> {
        self.instances
            .iter()
            .filter_map(|instance| instance.netns.clone())
            .collect()
    }
}

/// Which firewall holds kudonet's rules; the other one is kept free of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirewallBackend {
    /// `KUDO-*` chains in iptables' and ip6tables' `nat` and `filter` tables, written by
    /// `iptables-restore` (the default).
    #[default]
    Iptables,
    /// kudonet's own nftables table `inet kudonet`, written over netlink in one
    /// transaction.
    Nftables,
}

impl std::fmt::Display for FirewallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirewallBackend::Iptables => "iptables",
            FirewallBackend::Nftables => "nftables",
        })
    }
}

impl Spec {
    /// Which node this machine manages: `explicit` (`--node`), else the only Node, else the
    /// Node named like `hostname`.
    pub fn select_node(
        &self,
        explicit: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<&Node, Invalid> {
        let by_name = |name: &str| self.nodes.iter().find(|node| node.name == name);
        if let Some(name) = explicit {
            return by_name(name).ok_or_else(|| {
                Invalid(format!(
                    "--node {name:?}: no Node of that name (known: {})",
                    self.node_names()
                ))
            });
        }
        if let [only] = self.nodes.as_slice() {
            return Ok(only);
        }
        hostname.and_then(by_name).ok_or_else(|| {
            Invalid(format!(
                "the directory describes {} nodes and none is named like this machine ({}): pass --node NAME (known: {})",
                self.nodes.len(),
                hostname.unwrap_or("unknown hostname"),
                self.node_names()
            ))
        })
    }

    fn node_names(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The desired state of the node named `node` (which must be one of `self.nodes`).
    pub fn desired_for(&self, node: &Node) -> Desired {
        Desired {
            cluster: self.cluster.clone(),
            node: node.clone(),
            peers: self
                .nodes
                .iter()
                .filter(|peer| peer.name != node.name)
                .cloned()
                .collect(),
            instances: self
                .instances
                .iter()
                .filter(|instance| instance.node == node.name)
                .cloned()
                .collect(),
            firewall: FirewallBackend::default(),
        }
    }
}
