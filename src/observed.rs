//! What the kernel has, in the planner's vocabulary: links, addresses, routes, namespaces,
//! sysctls and iptables chains of the node.
//!
//! The model holds everything kudonet owns and everything that could collide with it (a
//! foreign link on the bridge's name, a foreign namespace named `kudo-web`, foreign rules
//! around its jump rules). Ownership is read from marks kudonet leaves in the kernel
//! (`crate::names`), never from a local database, so that a rebooted or wiped node, or a
//! second kudonet binary, sees the truth.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use cidr::{IpCidr, IpInet};
use serde::Deserialize;

use crate::names;
use crate::spec::Family;

/// The node as observed. `Default` is an empty machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Observed {
    /// Links of the node's own network namespace, by name.
    pub links: BTreeMap<String, Link>,
    /// Named namespaces of the netns directory, by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Routes of the node namespace's main table that kudonet owns or that share a
    /// destination with one it wants, by destination.
    pub routes: BTreeMap<IpCidr, Route>,
    /// The interface of the node's IPv4 default route (else of its IPv6 one): the uplink
    /// when a Node names none.
    pub default_route_interface: Option<String>,
    /// The interface of the node's IPv6 default route: the uplink of IPv6 traffic when a
    /// Node names none (it may differ from IPv4's: a tunnel, another NIC).
    pub ipv6_default_route_interface: Option<String>,
    /// Sysctls kudonet sets, by dotted name (`net.ipv4.ip_forward`), with their values.
    pub sysctls: BTreeMap<String, String>,
    /// iptables and ip6tables, by table.
    pub firewall: BTreeMap<TableId, Table>,
    /// The tables of the *other* iptables backend (legacy when kudonet's `iptables` is the
    /// nf_tables one, and the reverse) that hold chains or jump rules of kudonet's, left by
    /// a kudonet that used that backend: they would keep forwarding removed ports.
    pub other_backend: BTreeMap<TableId, Table>,
    /// Firewall rules of others that drop forwarded traffic whatever kudonet's chains
    /// accept (a FORWARD policy of DROP in the other iptables backend, an nftables forward
    /// chain that drops by policy or rejects), one description each. kudonet cannot own
    /// them; it reports them.
    pub forward_blockers: Vec<String>,
    /// kudonet's nftables table `inet kudonet`, if there is one (marked with kudonet's
    /// comment).
    pub nftables: Option<crate::nftables::Ruleset>,
    /// Whether a table `inet kudonet` exists without kudonet's comment: someone else's,
    /// which kudonet never changes or deletes.
    pub foreign_nftables: bool,
    /// The families whose iptables `FORWARD` chain (of kudonet's iptables backend) drops
    /// by policy, as Docker sets it: with the nftables backend, kudonet's traffic needs an
    /// accept there too.
    pub iptables_forward_drops: BTreeSet<Family>,
}

/// What kind of link an interface is, as far as kudonet cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkKind {
    /// A Linux bridge (a node's bridge).
    Bridge,
    /// One end of a veth pair (an instance's link).
    Veth,
    /// A VXLAN device (a cluster's overlay).
    Vxlan,
    /// The loopback (`lo`).
    Loopback,
    /// Anything kudonet never creates (a physical NIC, a tun, a dummy...).
    Other,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Link {
    /// What kind of link it is.
    pub kind: LinkKind,
    /// The interface alias (IFLA_IFALIAS): kudonet's ownership mark.
    #[serde(default)]
    pub alias: Option<String>,
    /// Whether it is administratively up.
    #[serde(default)]
    pub up: bool,
    /// Its MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The bridge this link is a port of.
    #[serde(default)]
    pub master: Option<String>,
    /// Its IPv4 and IPv6 addresses, with prefix lengths (not the IPv6 link-local ones,
    /// which the kernel makes).
    #[serde(default)]
    pub addresses: BTreeSet<IpInet>,
    /// Those of `addresses` without a route to their subnet (`IFA_F_NOPREFIXROUTE`).
    #[serde(default)]
    pub no_prefix_route: BTreeSet<IpInet>,
    /// The IPv6 addresses of kudonet's proxy neighbour entries on this link (marked with
    /// its route protocol number): the node answers neighbour solicitations for them.
    #[serde(default)]
    pub proxy_neighbours: BTreeSet<IpAddr>,
    /// The IPv6 addresses of proxy neighbour entries of others on this link: kudonet
    /// leaves them alone.
    #[serde(default)]
    pub foreign_proxy_neighbours: BTreeSet<IpAddr>,
    /// Bridge port hairpin mode.
    #[serde(default)]
    pub hairpin: bool,
    /// For a veth: where its other end is.
    #[serde(default)]
    pub peer: Option<LinkRef>,
    /// For a vxlan: its tunnel settings.
    #[serde(default)]
    pub vxlan: Option<Vxlan>,
    /// For a vxlan: the remote endpoints broadcast and unknown traffic is flooded to (its
    /// all-zero forwarding entries): the peer nodes.
    #[serde(default)]
    pub flood: BTreeSet<IpAddr>,
}

/// The tunnel settings of a vxlan link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Vxlan {
    /// The VXLAN network identifier.
    pub id: u32,
    /// The source address of encapsulated traffic, if set (IPv4 or IPv6: the underlay's
    /// family).
    #[serde(default)]
    pub local: Option<IpAddr>,
    /// The UDP destination port.
    pub port: u16,
    /// The underlay interface it sends through.
    #[serde(default)]
    pub device: Option<String>,
}

fn default_mtu() -> u32 {
    1500
}

impl Link {
    /// A link as the kernel creates it: down, default MTU, no address, no master.
    pub fn new(kind: LinkKind) -> Link {
        Link {
            kind,
            alias: None,
            up: false,
            mtu: default_mtu(),
            master: None,
            addresses: BTreeSet::new(),
            no_prefix_route: BTreeSet::new(),
            proxy_neighbours: BTreeSet::new(),
            foreign_proxy_neighbours: BTreeSet::new(),
            hairpin: false,
            peer: None,
            vxlan: None,
            flood: BTreeSet::new(),
        }
    }

    /// Whether kudonet created this link (its alias carries kudonet's mark).
    pub fn is_owned(&self) -> bool {
        self.alias
            .as_deref()
            .is_some_and(|alias| alias.starts_with(names::ALIAS_PREFIX))
    }

    /// Whether the link has `address` with (or, for `no_prefix_route`, without) the route
    /// to its subnet.
    pub fn has_address(&self, address: &IpInet, no_prefix_route: bool) -> bool {
        self.addresses.contains(address)
            && self.no_prefix_route.contains(address) == no_prefix_route
    }

    /// Whether this link is a bridge carrying kudonet's bridge mark.
    pub fn is_kudonet_bridge(&self) -> bool {
        self.kind == LinkKind::Bridge
            && self.alias.as_deref() == Some(names::bridge_alias().as_str())
    }

    /// Whether this link is a bridge carrying kudonet's segment mark (`kudo-seg<N>`).
    pub fn is_kudonet_segment(&self) -> bool {
        self.kind == LinkKind::Bridge
            && self.alias.as_deref() == Some(names::segment_alias().as_str())
    }
}

/// A link by namespace and name. `netns: None` is the node's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRef {
    /// The named namespace it is in; `None` for the node's own.
    #[serde(default)]
    pub netns: Option<String>,
    /// The interface name.
    pub name: String,
}

impl LinkRef {
    /// Link `name` of the node's own namespace.
    pub fn host(name: &str) -> LinkRef {
        LinkRef {
            netns: None,
            name: name.to_string(),
        }
    }

    /// Link `name` of the named namespace `netns`.
    pub fn in_namespace(netns: &str, name: &str) -> LinkRef {
        LinkRef {
            netns: Some(netns.to_string()),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for LinkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(netns) => write!(f, "{netns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Observed {
    /// Whether a namespace someone else owns takes the place of the namespace kudonet would
    /// create for `instance` (`kudo-web` made by hand). A namespace an instance names with
    /// `netns` is someone else's by design, and in nobody's way.
    pub fn namespace_in_the_way(&self, instance: &crate::spec::Instance) -> bool {
        instance.owns_namespace()
            && self
                .namespaces
                .get(&instance.namespace())
                .is_some_and(|namespace| !namespace.owned)
    }

    /// Whether a link of someone else's has the name of `instance`'s interface in the
    /// namespace someone else owns that the instance lives in (`netns`): the instance is
    /// held back, as by a namespace in the way.
    pub fn interface_in_the_way(&self, instance: &crate::spec::Instance) -> bool {
        let netns = instance.namespace();
        !instance.owns_namespace()
            && self
                .namespaces
                .get(&netns)
                .is_some_and(|namespace| namespace.links.contains_key(&instance.interface))
            && !self.is_instance_interface(&netns, &instance.interface)
    }

    /// Whether a link of someone else's has the name of `instance`'s host interface.
    pub fn host_interface_in_the_way(&self, instance: &crate::spec::Instance) -> bool {
        self.links
            .get(&names::host_interface_name(&instance.name))
            .is_some_and(|link| !link.is_owned())
    }

    /// Whether something of someone else's holds `instance` back (a conflict reports it,
    /// and nothing is built for it): a namespace in the way, or a link of theirs named like
    /// its host interface or like its interface in their namespace. Such an instance is
    /// placed on no bridge, so that nothing is kept for it there (a segment, routes).
    pub fn held_back(&self, instance: &crate::spec::Instance) -> bool {
        self.namespace_in_the_way(instance)
            || self.host_interface_in_the_way(instance)
            || self.interface_in_the_way(instance)
    }

    /// Whether link `name` of namespace `netns` is the other end of a host veth that
    /// carries kudonet's mark of an instance (of whichever instance): in a namespace someone
    /// else owns, only such a link is kudonet's.
    pub fn is_instance_interface(&self, netns: &str, name: &str) -> bool {
        let inside = LinkRef::in_namespace(netns, name);
        let Some(link) = self
            .namespaces
            .get(netns)
            .and_then(|namespace| namespace.links.get(name))
        else {
            return false;
        };
        let host = link
            .peer
            .as_ref()
            .filter(|peer| peer.netns.is_none())
            .and_then(|peer| self.links.get(&peer.name));
        host.is_some_and(|host| {
            host.kind == LinkKind::Veth
                && host
                    .alias
                    .as_deref()
                    .is_some_and(|alias| alias.starts_with(&names::instance_alias("")))
                && host.peer.as_ref() == Some(&inside)
        })
    }

    /// The interface of `instance` inside its namespace, if it is kudonet's: in a namespace
    /// of kudonet's, the link of that name; in one someone else owns, only the other end of
    /// the instance's host veth (kudonet marks the host end).
    pub fn instance_interface(&self, instance: &crate::spec::Instance) -> Option<&Link> {
        let netns = instance.namespace();
        let namespace = self.namespaces.get(&netns)?;
        let link = namespace.links.get(&instance.interface)?;
        if namespace.owned {
            return Some(link);
        }
        let host = self
            .links
            .get(&names::host_interface_name(&instance.name))?;
        let paired = host.alias.as_deref() == Some(names::instance_alias(&instance.name).as_str())
            && host.peer.as_ref() == Some(&LinkRef::in_namespace(&netns, &instance.interface));
        paired.then_some(link)
    }
}

/// A named network namespace (an entry of the netns directory).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    /// Whether kudonet created it: its loopback carries kudonet's alias, set before the
    /// namespace is mounted, so a half-created namespace is never mistaken for a foreign one.
    pub owned: bool,
    /// Its links, by name.
    pub links: BTreeMap<String, Link>,
    /// The gateways of the namespace's default routes (one per family at most).
    pub default_gateways: BTreeSet<IpAddr>,
    /// Those of `default_gateways` whose route declares them on-link (`onlink`).
    pub onlink_gateways: BTreeSet<IpAddr>,
    /// In a namespace someone else owns, the gateways of default routes that are not
    /// kudonet's (another network's of the runtime): `default_gateways` are kudonet's only.
    pub others_default_gateways: BTreeSet<IpAddr>,
}

/// A route of the node namespace's main table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// The next hop, if the route has one.
    pub gateway: Option<IpAddr>,
    /// The output device, if the route names one.
    #[serde(default)]
    pub device: Option<String>,
    /// Whether it carries kudonet's route protocol number.
    #[serde(default)]
    pub owned: bool,
}

/// An iptables table of one family: `nat` of iptables, `filter` of ip6tables...
///
/// Written `nat`, `filter` for IPv4 and `ip6 nat`, `ip6 filter` for IPv6 (in observed-state
/// fixtures and logs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TableId {
    /// IPv4 (iptables) or IPv6 (ip6tables).
    pub family: Family,
    /// The table's name (`nat`, `filter`).
    pub name: String,
}

impl TableId {
    /// Table `name` of `family`.
    pub fn new(family: Family, name: &str) -> TableId {
        TableId {
            family,
            name: name.to_string(),
        }
    }

    /// The command that edits it: `iptables` or `ip6tables`.
    pub fn command(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            Family::Ipv4 => f.write_str(&self.name),
            Family::Ipv6 => write!(f, "ip6 {}", self.name),
        }
    }
}

impl TryFrom<String> for TableId {
    type Error = String;

    fn try_from(text: String) -> Result<TableId, String> {
        let (family, name) = match text.strip_prefix("ip6 ") {
            Some(name) => (Family::Ipv6, name),
            None => (Family::Ipv4, text.as_str()),
        };
        if name.is_empty() || name.contains(' ') {
            return Err(format!("{text:?} is not a table (`nat`, `ip6 filter`...)"));
        }
        Ok(TableId::new(family, name))
    }
}

/// One iptables table: every chain with its rules, as `iptables-save` prints them after
/// `-A CHAIN ` (for example `-p tcp -m tcp --dport 80 -j ACCEPT`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Table {
    /// Every chain, built-in and user-defined, with its rules in order.
    pub chains: BTreeMap<String, Vec<String>>,
}

impl Table {
    /// Whether the table holds any chain or jump rule of kudonet's.
    pub fn has_kudonet_rules(&self) -> bool {
        self.chains.iter().any(|(chain, rules)| {
            Table::is_owned_chain(chain) || rules.iter().any(|rule| Table::is_owned_jump(rule))
        })
    }

    /// Whether `chain` is one of kudonet's (`KUDO-*`).
    pub fn is_owned_chain(chain: &str) -> bool {
        chain.starts_with(names::CHAIN_PREFIX)
    }

    /// Whether `rule`, in a chain that is not kudonet's, is one of kudonet's jump rules.
    pub fn is_owned_jump(rule: &str) -> bool {
        rule.strip_prefix(names::JUMP_MARK)
            .and_then(|rest| rest.strip_prefix(" -j "))
            .is_some_and(|target| target.starts_with(names::CHAIN_PREFIX) && !target.contains(' '))
    }
}

/// The table `current` becomes once synced to `chains` and `jumps`: every `KUDO-*` chain
/// exactly as in `chains` (others deleted), and in every other chain kudonet's jump rules
/// removed, then `jumps[chain]` put at its head. Other rules keep their place. This is the
/// semantics of `Action::SyncTable` (the in-memory dataplane applies it too).
pub fn synced_table(
    current: &Table,
    chains: &BTreeMap<String, Vec<String>>,
    jumps: &BTreeMap<String, Vec<String>>,
) -> Table {
    let mut table = current.clone();
    table
        .chains
        .retain(|chain, _| !Table::is_owned_chain(chain));
    for rules in table.chains.values_mut() {
        rules.retain(|rule| !Table::is_owned_jump(rule));
    }
    for (chain, rules) in jumps {
        let head = table.chains.entry(chain.clone()).or_default();
        head.splice(0..0, rules.iter().cloned());
    }
    table.chains.extend(
        chains
            .iter()
            .map(|(chain, rules)| (chain.clone(), rules.clone())),
    );
    table
}
