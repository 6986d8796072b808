//! The steps a plan is made of. Each is idempotent in intent and small enough to retry alone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use cidr::{IpCidr, IpInet};

use crate::nftables::{Ruleset, TABLE_FAMILY, TABLE_NAME};
use crate::observed::{LinkRef, TableId};

/// What a piece of work is for: the node as a whole, or one instance of the desired state.
/// The planner says it of every action and conflict; the status, the controller's backoff
/// and the library read it from there (and key their own records by it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scope {
    /// The node as a whole: the bridge, node-wide settings, the overlay, routes to peer
    /// nodes, the firewall, and the removal of what no instance of the desired state owns.
    #[default]
    Node,
    /// The instance of the desired state with this name.
    Instance(String),
}

impl Scope {
    /// The scope of the instance named `name`.
    pub fn instance(name: impl Into<String>) -> Scope {
        Scope::Instance(name.into())
    }

    /// The instance's name, or `None` for the node as a whole.
    pub fn instance_name(&self) -> Option<&str> {
        match self {
            Scope::Node => None,
            Scope::Instance(name) => Some(name),
        }
    }

    /// Whether this is the scope of the node as a whole.
    pub fn is_node(&self) -> bool {
        matches!(self, Scope::Node)
    }
}

/// An action of a plan, with what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The instance the action is for, or the node as a whole.
    pub scope: Scope,
    /// The change itself.
    pub action: Action,
}

/// One change to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A named network namespace in the netns directory, marked as kudonet's, `lo` down.
    CreateNamespace {
        /// The namespace's name (`kudo-<id>`).
        name: String,
    },
    /// Deletes a named network namespace kudonet owns, and with it what is inside.
    DeleteNamespace {
        /// The namespace's name.
        name: String,
    },
    /// A bridge in the node namespace, marked as kudonet's, down.
    CreateBridge {
        /// The bridge's name.
        name: String,
        /// The MTU to create it with; `None` leaves the kernel's default.
        mtu: Option<u32>,
    },
    /// A segment: a bridge in the node namespace, marked as one of kudonet's segments, with
    /// the MAC address of the node's bridge `bridge` (one gateway, wherever an instance is),
    /// IPv6 off (on when it gets the IPv6 gateway address), down. It holds the instances
    /// the node's bridge has no room for, and the gateway addresses as a /32 and a /128;
    /// the node routes between its bridges.
    CreateSegment {
        /// The segment's name (`kudo-seg<N>`).
        name: String,
        /// The node's bridge, whose MAC address it takes (a random one without it).
        bridge: String,
        /// The MTU to create it with; `None` leaves the kernel's default.
        mtu: Option<u32>,
    },
    /// A veth pair: `host` in the node namespace (marked as `instance`'s) and `eth0` created
    /// directly in `namespace`; both down.
    CreateVeth {
        /// The name of the end in the node namespace.
        host: String,
        /// The instance namespace the other end is created in.
        namespace: String,
        /// The name of the other end (`eth0` unless the Instance says otherwise).
        interface: String,
        /// The Instance the pair is for, recorded in the host end's mark.
        instance: String,
        /// The MTU of both ends; `None` leaves the kernel's default.
        mtu: Option<u32>,
    },
    /// Deletes a link kudonet owns (a veth pair goes with either end).
    DeleteLink {
        /// The link to delete.
        link: LinkRef,
    },
    /// Changes a link's MTU.
    SetMtu {
        /// The link to change.
        link: LinkRef,
        /// The MTU it gets.
        mtu: u32,
    },
    /// Brings a link up.
    SetUp {
        /// The link to bring up.
        link: LinkRef,
    },
    /// Makes a node-namespace link a port of `bridge`.
    SetMaster {
        /// The node-namespace link that becomes a port.
        link: String,
        /// The bridge it joins.
        bridge: String,
    },
    /// Lets a bridge port send frames back where they came from (an instance reaching
    /// itself through a published port).
    SetHairpin {
        /// The bridge port.
        link: String,
    },
    /// Adds an address (with its prefix length) to a link. An IPv6 address is usable at
    /// once: it skips duplicate address detection (kudonet hands out the addresses), and
    /// the link gets IPv6 if it had it off.
    AddAddress {
        /// The link that gets the address.
        link: LinkRef,
        /// The address and prefix length.
        address: IpInet,
        /// Whether the kernel leaves out the route to the address's subnet
        /// (`IFA_F_NOPREFIXROUTE`): an instance on a segment keeps its IPv6 prefix but
        /// reaches everything, its subnet included, through the gateway.
        no_prefix_route: bool,
    },
    /// Removes an address from a link.
    DeleteAddress {
        /// The link that has the address.
        link: LinkRef,
        /// The address and prefix length to remove.
        address: IpInet,
    },
    /// The default route of an instance namespace for the gateway's family, via its
    /// node's bridge.
    ReplaceDefaultRoute {
        /// The instance namespace.
        namespace: String,
        /// The instance's interface there, which the route goes through.
        interface: String,
        /// The node's bridge address.
        gateway: IpAddr,
        /// Whether the gateway is declared on-link on the interface: an instance on a segment has no
        /// route to its IPv6 subnet (see `AddAddress::no_prefix_route`).
        onlink: bool,
    },
    /// Deletes kudonet's default route of the gateway's family from an instance namespace:
    /// the instance no longer has an address of that family (the kernel keeps an IPv6
    /// default route when the address goes).
    DeleteDefaultRoute {
        /// The instance namespace.
        namespace: String,
        /// The gateway of the route, which gives its family.
        gateway: IpAddr,
    },
    /// A route of the node namespace through `device`, scope link, marked as kudonet's: to
    /// an instance on a segment, whose address the node's bridge route would send elsewhere.
    ReplaceLinkRoute {
        /// The instance's address, as a /32 (or /128).
        destination: IpCidr,
        /// The segment the instance is on.
        device: String,
    },
    /// A route of the node namespace, marked as kudonet's (a peer node's instance subnet):
    /// via `gateway`, or through `device` with the gateway on-link (over the overlay).
    ReplaceRoute {
        /// The subnet routed.
        destination: IpCidr,
        /// The next hop: the peer node (of the subnet's family).
        gateway: IpAddr,
        /// The overlay device, when the gateway is reached through it.
        device: Option<String>,
    },
    /// The overlay device of a vxlan cluster, marked as kudonet's, down: VNI `id` from
    /// `local` through `uplink` (when known).
    CreateVxlan {
        /// The device's name.
        name: String,
        /// The VXLAN network identifier.
        id: u32,
        /// The source address of the encapsulated traffic (the underlay's family), when
        /// known.
        local: Option<IpAddr>,
        /// The UDP destination port.
        port: u16,
        /// The underlying interface, when known.
        uplink: Option<String>,
        /// The device's MTU; `None` leaves the kernel's default.
        mtu: Option<u32>,
    },
    /// Floods broadcast and unknown traffic of the overlay `link` to a peer node too.
    AddFlood {
        /// The overlay device.
        link: String,
        /// The peer node's address.
        destination: IpAddr,
    },
    /// Stops flooding the overlay's broadcast and unknown traffic to a node that is no
    /// longer a peer.
    DeleteFlood {
        /// The overlay device.
        link: String,
        /// The former peer's address.
        destination: IpAddr,
    },
    /// A proxy neighbour entry of the node namespace, marked as kudonet's: the node answers
    /// IPv6 neighbour solicitations for `address` on `link` (the node's bridge, for an
    /// instance on a segment).
    AddProxyNeighbour {
        /// The link the node answers on.
        link: String,
        /// The IPv6 address it answers for.
        address: IpAddr,
    },
    /// Deletes a proxy neighbour entry that kudonet marked as its own.
    DeleteProxyNeighbour {
        /// The link of the entry.
        link: String,
        /// The address of the entry.
        address: IpAddr,
    },
    /// Deletes a route of the node namespace that kudonet marked as its own.
    DeleteRoute {
        /// The subnet of the route.
        destination: IpCidr,
    },
    /// Writes a kernel setting under `/proc/sys`.
    SetSysctl {
        /// The setting, by dotted name (`net.ipv4.ip_forward`).
        key: String,
        /// The value written.
        value: String,
    },
    /// Rewrites kudonet's chains of one table in one transaction: each `KUDO-*` chain to
    /// exactly `chains` (chains absent from it are deleted) and kudonet's jump rules at the
    /// head of the built-in chains to exactly `jumps`. Other rules are left as they are.
    /// `diff` describes the change for people (`+ -A KUDO-PORTS ...`), one line per rule.
    SyncTable {
        /// The table (`nat`, `filter`) of iptables or ip6tables.
        table: TableId,
        /// Each `KUDO-*` chain and its rules, in order.
        chains: BTreeMap<String, Vec<String>>,
        /// Each built-in chain and kudonet's jump rules at its head, in order.
        jumps: BTreeMap<String, Vec<String>>,
        /// The change for people, one line per rule.
        diff: Vec<String>,
    },
    /// Removes kudonet's chains and jump rules from `table` of the other iptables backend
    /// (see `Observed::other_backend`), leaving everything else in it as it is.
    PurgeOtherBackend {
        /// The table (of iptables or ip6tables).
        table: TableId,
    },
    /// Makes kudonet's nftables table `inet kudonet` exactly `ruleset`, in one netlink
    /// transaction: only the elements that differ when nothing else does, else the whole
    /// table replaced atomically. `diff` describes the change for people, one line each.
    SyncNftables {
        /// The table as it must be.
        ruleset: Ruleset,
        /// Whether the table does not exist yet.
        create: bool,
        /// The change for people, in nft's syntax.
        diff: Vec<String>,
    },
    /// Deletes kudonet's nftables table `inet kudonet` (the iptables backend is in use, or
    /// the node is torn down).
    DeleteNftables,
}

/// How an action counts in the plan summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Creates something that was not there.
    Add,
    /// Changes something in place.
    Change,
    /// Removes something.
    Destroy,
}

impl Action {
    /// The action in one line, as the plan prints it without a table's rule diff: for
    /// errors, logs and status messages.
    pub fn summary(&self) -> String {
        self.to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the action is clean-up of something kudonet does not use (its chains left in
    /// the other iptables backend): when it fails, the node still works, so the failure is
    /// reported (the `StaleOtherBackend` node condition, the log) but neither fails the node
    /// nor holds its instances back.
    pub fn is_best_effort(&self) -> bool {
        matches!(self, Action::PurgeOtherBackend { .. })
    }

    /// Whether the action takes kudonet's rules away from iptables' `nat` tables: planned
    /// with the nftables backend right after [`Action::SyncNftables`], it must not run
    /// when that failed, or the node would be left without translation rules anywhere
    /// (a kernel without `nft_fib` or `nft_nat`, say): the iptables ones keep working.
    pub fn clears_iptables_nat(&self) -> bool {
        matches!(self, Action::SyncTable { table, chains, .. }
            if table.name == crate::names::NAT && chains.is_empty())
    }

    /// A stable snake_case name of the action's kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::CreateNamespace { .. } => "create_namespace",
            Action::DeleteNamespace { .. } => "delete_namespace",
            Action::CreateBridge { .. } => "create_bridge",
            Action::CreateSegment { .. } => "create_segment",
            Action::CreateVeth { .. } => "create_veth",
            Action::CreateVxlan { .. } => "create_vxlan",
            Action::AddFlood { .. } => "add_flood",
            Action::DeleteFlood { .. } => "delete_flood",
            Action::DeleteLink { .. } => "delete_link",
            Action::SetMtu { .. } => "set_mtu",
            Action::SetUp { .. } => "set_up",
            Action::SetMaster { .. } => "set_master",
            Action::SetHairpin { .. } => "set_hairpin",
            Action::AddAddress { .. } => "add_address",
            Action::DeleteAddress { .. } => "delete_address",
            Action::ReplaceDefaultRoute { .. } => "replace_default_route",
            Action::DeleteDefaultRoute { .. } => "delete_default_route",
            Action::ReplaceRoute { .. } => "replace_route",
            Action::ReplaceLinkRoute { .. } => "replace_link_route",
            Action::DeleteRoute { .. } => "delete_route",
            Action::AddProxyNeighbour { .. } => "add_proxy_neighbour",
            Action::DeleteProxyNeighbour { .. } => "delete_proxy_neighbour",
            Action::SetSysctl { .. } => "set_sysctl",
            Action::SyncTable { .. } => "sync_table",
            Action::PurgeOtherBackend { .. } => "purge_other_backend",
            Action::SyncNftables { .. } => "sync_nftables",
            Action::DeleteNftables => "delete_nftables",
        }
    }

    /// Whether the action adds, changes or destroys, for the plan summary.
    pub fn effect(&self) -> Effect {
        match self {
            Action::CreateNamespace { .. }
            | Action::CreateBridge { .. }
            | Action::CreateSegment { .. }
            | Action::CreateVeth { .. }
            | Action::CreateVxlan { .. }
            | Action::AddFlood { .. }
            | Action::AddAddress { .. }
            | Action::AddProxyNeighbour { .. } => Effect::Add,
            Action::DeleteNamespace { .. }
            | Action::DeleteLink { .. }
            | Action::DeleteAddress { .. }
            | Action::DeleteFlood { .. }
            | Action::DeleteRoute { .. }
            | Action::DeleteDefaultRoute { .. }
            | Action::DeleteProxyNeighbour { .. }
            | Action::PurgeOtherBackend { .. }
            | Action::DeleteNftables => Effect::Destroy,
            Action::SyncNftables { create: true, .. } => Effect::Add,
            Action::SetMtu { .. }
            | Action::SetUp { .. }
            | Action::SetMaster { .. }
            | Action::SetHairpin { .. }
            | Action::ReplaceDefaultRoute { .. }
            | Action::ReplaceRoute { .. }
            | Action::ReplaceLinkRoute { .. }
            | Action::SetSysctl { .. }
            | Action::SyncTable { .. }
            | Action::SyncNftables { create: false, .. } => Effect::Change,
        }
    }
}

impl fmt::Display for Action {
    /// One line, prefixed like Terraform: `+` adds, `~` changes, `-` destroys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.effect() {
            Effect::Add => '+',
            Effect::Change => '~',
            Effect::Destroy => '-',
        };
        write!(f, "{sign} ")?;
        let mtu = |mtu: &Option<u32>| mtu.map(|mtu| format!(" (mtu {mtu})")).unwrap_or_default();
        match self {
            Action::CreateNamespace { name } => write!(f, "namespace {name}"),
            Action::DeleteNamespace { name } => write!(f, "namespace {name}"),
            Action::CreateBridge { name, mtu: m } => write!(f, "bridge {name}{}", mtu(m)),
            Action::CreateSegment {
                name,
                bridge,
                mtu: m,
            } => write!(f, "segment {name} of bridge {bridge}{}", mtu(m)),
            Action::CreateVeth {
                host,
                namespace,
                interface,
                instance,
                mtu: m,
            } => {
                write!(
                    f,
                    "veth {host} <-> {namespace}/{interface} for instance {instance}{}",
                    mtu(m)
                )
            }
            Action::DeleteLink { link } => write!(f, "link {link}"),
            Action::SetMtu { link, mtu } => write!(f, "link {link}: mtu {mtu}"),
            Action::SetUp { link } => write!(f, "link {link}: up"),
            Action::SetMaster { link, bridge } => {
                write!(f, "link {link}: attach to bridge {bridge}")
            }
            Action::SetHairpin { link } => write!(f, "link {link}: hairpin on"),
            // `:#` keeps the prefix of a /32 (a segment's gateway address) in sight.
            Action::AddAddress {
                link,
                address,
                no_prefix_route,
            } => {
                write!(f, "address {address:#} on {link}")?;
                if *no_prefix_route {
                    write!(f, " (noprefixroute)")?;
                }
                Ok(())
            }
            Action::DeleteAddress { link, address } => write!(f, "address {address:#} on {link}"),
            Action::ReplaceDefaultRoute {
                namespace,
                gateway,
                onlink: false,
                ..
            } => write!(f, "route default via {gateway} in {namespace}"),
            Action::ReplaceDefaultRoute {
                namespace,
                interface,
                gateway,
                onlink: true,
            } => write!(
                f,
                "route default via {gateway} dev {interface} onlink in {namespace}"
            ),
            Action::DeleteDefaultRoute { namespace, gateway } => {
                write!(f, "route default via {gateway} in {namespace}")
            }
            Action::ReplaceLinkRoute {
                destination,
                device,
            } => write!(f, "route {destination:#} dev {device}"),
            Action::ReplaceRoute {
                destination,
                gateway,
                device: None,
            } => {
                write!(f, "route {destination} via {gateway}")
            }
            Action::ReplaceRoute {
                destination,
                gateway,
                device: Some(device),
            } => {
                write!(f, "route {destination} via {gateway} dev {device} onlink")
            }
            Action::CreateVxlan {
                name,
                id,
                local,
                uplink,
                mtu: m,
                ..
            } => {
                let local = local
                    .map(|local| format!(" local {local}"))
                    .unwrap_or_default();
                let uplink = uplink
                    .as_ref()
                    .map(|uplink| format!(" dev {uplink}"))
                    .unwrap_or_default();
                write!(f, "vxlan {name} id {id}{local}{uplink}{}", mtu(m))
            }
            Action::AddFlood { link, destination } | Action::DeleteFlood { link, destination } => {
                write!(f, "flood {link} to {destination}")
            }
            Action::DeleteRoute { destination } => write!(f, "route {destination:#}"),
            Action::AddProxyNeighbour { link, address }
            | Action::DeleteProxyNeighbour { link, address } => {
                write!(f, "proxy neighbour {address} on {link}")
            }
            Action::SetSysctl { key, value } => write!(f, "sysctl {key} = {value}"),
            Action::SyncTable { table, diff, .. } => {
                write!(f, "{} table {}", table.command(), table.name)?;
                diff.iter().try_for_each(|line| write!(f, "\n    {line}"))
            }
            Action::PurgeOtherBackend { table } => {
                write!(
                    f,
                    "kudonet's chains in table {} of the other {} backend",
                    table.name,
                    table.command()
                )
            }
            Action::SyncNftables { diff, .. } => {
                write!(f, "nftables table {TABLE_FAMILY} {TABLE_NAME}")?;
                diff.iter().try_for_each(|line| write!(f, "\n    {line}"))
            }
            Action::DeleteNftables => write!(f, "nftables table {TABLE_FAMILY} {TABLE_NAME}"),
        }
    }
}
