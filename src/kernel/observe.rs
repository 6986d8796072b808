//! Reading the node from the kernel: rtnetlink dumps in the node namespace and in each
//! namespace of the netns directory, `/proc/sys`, and `iptables-save`.
//! Nothing here changes anything.
//!
//! What was read is kept in a [`Snapshot`], so that an observation reads again only what
//! may have changed since ([`Changes`]): a kernel event names a link or a namespace, an
//! action of kudonet's names what it touched, and the nf_tables generation tells whether
//! iptables moved. With nothing named, a pass over a node of a thousand instances reads
//! the node's addresses, routes and sysctls, the netns directory, the overlay's forwarding
//! entries (when there is an overlay) and the nf_tables generation (and iptables only when
//! it moved), and no link or namespace at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use super::firewall::{FirewallCache, FirewallDriver, FirewallError};
use super::netlink::netfilter::NfTables;
use super::netlink::nftables::TableState;
use super::netlink::route::{LinkAddresses, RawLink};
use super::netlink::{Netlink, NetlinkError};
use super::netns::{self, NamespaceSockets};
use super::sysctl::read_sysctl;
use crate::dataplane::{Cause, Changes};
use crate::names::{
    self, IP_FORWARD, IPV6_FORWARDING, proxy_arp, proxy_delay, proxy_ndp, proxy_ndp_delay,
    route_localnet,
};
use crate::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    #[error("reading the netns directory {dir}: {source}")]
    NetnsDir { dir: String, source: std::io::Error },
    #[error("reading sysctl {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("{0}")]
    Firewall(#[from] FirewallError),
}

impl ObserveError {
    /// Whether reading again can succeed: a netlink errno or a firewall failure says (see
    /// their `can_retry`); a netns directory or a sysctl that cannot be read follows its
    /// errno (a permission: no; a namespace or a link that vanished meanwhile: yes).
    pub fn can_retry(&self) -> bool {
        let errno = crate::dataplane::io_can_retry;
        match self {
            ObserveError::Socket(error) => errno(error),
            ObserveError::Netlink(error) => error.can_retry(),
            ObserveError::NetnsDir { source, .. } | ObserveError::Sysctl { source, .. } => {
                errno(source)
            }
            ObserveError::Firewall(error) => error.can_retry(),
        }
    }
}

impl From<ObserveError> for Cause {
    fn from(error: ObserveError) -> Cause {
        let can_retry = error.can_retry();
        Cause::new(error, can_retry)
    }
}

/// What the last observation read, reused where nothing changed since.
#[derive(Default)]
pub struct Snapshot {
    /// Links of the node namespace by interface index; `None` before the first read.
    host_links: Option<BTreeMap<u32, RawLink>>,
    namespaces: HashMap<String, InstanceNamespace>,
    /// What the firewall held, and when it was read.
    firewall: FirewallCache,
}

impl Snapshot {
    /// What the firewall held when last read.
    pub fn firewall(&self) -> &FirewallCache {
        &self.firewall
    }

    /// What the firewall held when last read, for kudonet's own writes to update.
    pub fn firewall_mut(&mut self) -> &mut FirewallCache {
        &mut self.firewall
    }

    /// The namespaces holding the other end of the node's veth `name`.
    pub fn peers_of_host_link(&self, name: &str) -> Vec<String> {
        let Some(host) = self
            .host_links
            .iter()
            .flatten()
            .find(|(_, raw)| raw.name == name)
        else {
            return Vec::new();
        };
        let index = *host.0;
        self.namespaces
            .iter()
            .filter(|(_, namespace)| {
                namespace
                    .links
                    .values()
                    .any(|(_, _, peer_index)| *peer_index == Some(index))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The node's links whose veth peer is in namespace `netns`.
    pub fn host_peers_of_namespace(&self, netns: &str) -> Vec<String> {
        self.host_peer_links_of_namespace(netns)
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    }

    /// The node's links whose veth peer is in namespace `netns`, by index and name.
    pub fn host_peer_links_of_namespace(&self, netns: &str) -> Vec<(u32, String)> {
        let Some(namespace) = self.namespaces.get(netns) else {
            return Vec::new();
        };
        let peers: BTreeSet<u32> = namespace
            .links
            .values()
            .filter_map(|(_, _, peer_index)| *peer_index)
            .collect();
        self.host_links
            .iter()
            .flatten()
            .filter(|(index, _)| peers.contains(index))
            .map(|(index, raw)| (*index, raw.name.clone()))
            .collect()
    }
}

/// Where the node is read from.
pub struct Sources<'a> {
    /// A socket in the node's namespace.
    pub host: &'a mut Netlink,
    pub netns_dir: &'a Path,
    /// The namespaces someone else owns that instances live in, by path.
    pub others_namespaces: &'a BTreeSet<String>,
    /// Sockets inside the namespaces, reused between observations.
    pub sockets: &'a mut NamespaceSockets,
    pub firewall: &'a dyn FirewallDriver,
    /// The nf_tables generation, when it can be read.
    pub generation: Option<&'a mut NfTables>,
}

/// Reads what the node has: links, addresses and routes of the node namespace and of the
/// namespaces of the netns directory, sysctls and iptables. What `changes` does not name
/// comes from `snapshot`, which is brought up to date.
pub fn observe(
    sources: Sources<'_>,
    snapshot: &mut Snapshot,
    changes: &Changes,
) -> Result<Observed, ObserveError> {
    let Sources {
        host,
        netns_dir,
        others_namespaces,
        sockets,
        firewall,
        generation,
    } = sources;
    // Namespaces first: a veth end moved or replaced inside one changes its host end's
    // peer index without an event on the node, so host ends paired with a namespace read
    // again are read again too.
    let peers = refresh_namespaces(
        netns_dir,
        others_namespaces,
        sockets,
        &mut snapshot.namespaces,
        changes,
    )?;
    refresh_host_links(host, &mut snapshot.host_links, changes, &peers)?;
    let raw_links = snapshot.host_links.as_ref().expect("read above");
    let names_by_index: HashMap<u32, &str> = raw_links
        .iter()
        .map(|(index, raw)| (*index, raw.name.as_str()))
        .collect();
    let mut addresses = addresses_by_index(host)?;
    // Forwarding entries are only read when there is an overlay: a bridge may have many.
    let mut flood: HashMap<u32, BTreeSet<std::net::IpAddr>> = HashMap::new();
    if raw_links
        .values()
        .any(|raw| raw.link.kind == LinkKind::Vxlan)
    {
        for (index, destination) in host.dump_flood()? {
            flood.entry(index).or_default().insert(destination);
        }
    }
    // Proxy neighbour entries are few (one an instance on a segment) and read every time,
    // as addresses are: kudonet's carry its route protocol number.
    let mut proxies: HashMap<u32, (BTreeSet<IpAddr>, BTreeSet<IpAddr>)> = HashMap::new();
    for (index, address, protocol) in host.dump_ipv6_proxies()? {
        let (ours, others) = proxies.entry(index).or_default();
        match protocol == names::ROUTE_PROTOCOL {
            true => ours.insert(address),
            false => others.insert(address),
        };
    }
    let mut links: BTreeMap<String, Link> = raw_links
        .values()
        .map(|raw| {
            let mut link = raw.resolve(&names_by_index, &mut addresses);
            link.flood = flood.remove(&raw.index).unwrap_or_default();
            (link.proxy_neighbours, link.foreign_proxy_neighbours) =
                proxies.remove(&raw.index).unwrap_or_default();
            (raw.name.clone(), link)
        })
        .collect();

    let mut observed = Observed::default();
    for route in host.dump_routes()? {
        let Some(destination) = route.destination else {
            continue;
        };
        let device = route
            .device
            .and_then(|index| names_by_index.get(&index))
            .map(|name| name.to_string());
        if destination.network_length() == 0 {
            match destination {
                cidr::IpCidr::V4(_) => {
                    observed.default_route_interface = observed.default_route_interface.or(device)
                }
                cidr::IpCidr::V6(_) => {
                    observed.ipv6_default_route_interface =
                        observed.ipv6_default_route_interface.or(device)
                }
            }
            continue;
        }
        let gateway = route.gateway;
        // Connected routes of interfaces are the kernel's business, not a collision.
        if gateway.is_none() && route.kernel {
            continue;
        }
        let owned = route.protocol == names::ROUTE_PROTOCOL;
        // Several routes to one destination (other metrics): kudonet's is the one to see.
        let route = Route {
            gateway,
            device,
            owned,
        };
        match observed.routes.get(&destination) {
            Some(existing) if existing.owned || !owned => {}
            _ => {
                observed.routes.insert(destination, route);
            }
        }
    }

    // An IPv6-only node's uplink is its IPv6 default route's.
    if observed.default_route_interface.is_none() {
        observed.default_route_interface = observed.ipv6_default_route_interface.clone();
    }

    // Pair veth ends: each end names its peer's index, and both must point at each other.
    let host_peers: HashMap<u32, (&str, Option<u32>)> = raw_links
        .iter()
        .map(|(index, raw)| (*index, (raw.name.as_str(), raw.peer_index)))
        .collect();
    let mut namespaces = BTreeMap::new();
    for (netns, read) in &snapshot.namespaces {
        let mut namespace = Namespace {
            owned: read.owned,
            links: BTreeMap::new(),
            default_gateways: read.default_gateways.clone(),
            onlink_gateways: read.onlink_gateways.clone(),
            others_default_gateways: read.others_default_gateways.clone(),
        };
        for (inner_name, (inner_link, inner_index, peer_index)) in &read.links {
            let mut inner_link = inner_link.clone();
            let host_end = peer_index
                .and_then(|peer_index| host_peers.get(&peer_index))
                .filter(|(_, host_peer)| *host_peer == Some(*inner_index));
            if let Some((host_name, _)) = host_end
                && let Some(host_link) = links.get_mut(*host_name)
            {
                host_link.peer = Some(LinkRef::in_namespace(netns, inner_name));
                inner_link.peer = Some(LinkRef::host(host_name));
            }
            namespace.links.insert(inner_name.clone(), inner_link);
        }
        namespaces.insert(netns.clone(), namespace);
    }
    observed.links = links;
    observed.namespaces = namespaces;

    let mut sysctls = vec![IP_FORWARD.to_string()];
    for (name, link) in &observed.links {
        if link.kind == LinkKind::Bridge {
            sysctls.push(route_localnet(name));
        }
        // Proxy ARP is kudonet's business on its bridges only.
        if link.is_kudonet_bridge() || link.is_kudonet_segment() {
            sysctls.extend([proxy_arp(name), proxy_delay(name)]);
        }
    }
    for key in sysctls {
        let value = read_sysctl(&key).map_err(|source| ObserveError::Sysctl {
            key: key.clone(),
            source,
        })?;
        observed.sysctls.insert(key, value);
    }
    // Absent from a kernel without IPv6: then no node of IPv6 can converge, and says why
    // when kudonet sets it.
    let mut ipv6_sysctls = vec![IPV6_FORWARDING.to_string()];
    for (name, link) in &observed.links {
        if link.is_kudonet_bridge() {
            ipv6_sysctls.extend([proxy_ndp(name), proxy_ndp_delay(name)]);
        }
    }
    for key in ipv6_sysctls {
        if let Ok(value) = read_sysctl(&key) {
            observed.sysctls.insert(key, value);
        }
    }

    // The legacy backend beside kudonet's moves no generation: it is read again on full
    // reads (start, resync, the command line) and after kudonet changed it, since stale
    // chains appear there only when a node switches backends.
    let reread_legacy = changes.everything || changes.other_backend;
    let view = firewall.read(generation, &mut snapshot.firewall, reread_legacy)?;
    observed.firewall = view.tables;
    observed.other_backend = view.other_backend;
    observed.forward_blockers = view.forward_blockers;
    observed.foreign_nftables = view.nftables == TableState::Foreign;
    observed.nftables = match view.nftables {
        TableState::Ours(ruleset) => Some(ruleset),
        _ => None,
    };
    observed.iptables_forward_drops = view.iptables_forward_drops;
    Ok(observed)
}

/// Brings the node's links up to date: all of them at first, when everything may have
/// changed or when most did, else only those `changes` names and those of `also`
/// (indexes).
fn refresh_host_links(
    host: &mut Netlink,
    cached: &mut Option<BTreeMap<u32, RawLink>>,
    changes: &Changes,
    also: &BTreeSet<u32>,
) -> Result<(), ObserveError> {
    // A request for one link costs about what that link costs in a dump (measured at a
    // thousand links: 33 ms either way): past half the node's links, one dump is quicker.
    let named = changes.host_indexes.len() + also.len() + changes.host_names.len();
    let links = match cached {
        Some(links) if !changes.everything && named * 2 <= links.len() => links,
        _ => {
            let links = host.dump_links(RawLink::parse)?;
            *cached = Some(links.into_iter().map(|raw| (raw.index, raw)).collect());
            return Ok(());
        }
    };
    for index in changes.host_indexes.union(also) {
        links.remove(index);
        if let Some(raw) = host
            .get_link_by_index(*index)?
            .as_ref()
            .and_then(RawLink::parse)
        {
            links.insert(raw.index, raw);
        }
    }
    for name in &changes.host_names {
        links.retain(|_, raw| raw.name != *name);
        if let Some(raw) = host.get_link(name)?.as_ref().and_then(RawLink::parse) {
            links.insert(raw.index, raw);
        }
    }
    Ok(())
}

/// Brings the namespaces up to date: lists the netns directory, and reads the namespaces
/// that are new, made anew, or named by `changes` (all of them if everything changed).
/// Returns the peer indexes (node links) of the veths of the namespaces read, before and
/// after.
fn refresh_namespaces(
    netns_dir: &Path,
    others_namespaces: &BTreeSet<String>,
    sockets: &mut NamespaceSockets,
    cached: &mut HashMap<String, InstanceNamespace>,
    changes: &Changes,
) -> Result<BTreeSet<u32>, ObserveError> {
    let dir_error = |source| ObserveError::NetnsDir {
        dir: netns_dir.display().to_string(),
        source,
    };
    let listed = netns::list(netns_dir).map_err(dir_error)?;
    // Only namespaces named like kudonet's matter (its own, or foreign ones in the way):
    // others are not entered, nor kept alive by a cached socket.
    // Those someone else owns are named by their path (the sockets open the netns
    // directory joined with it, which is the path itself), and read when they are there.
    // (The node's own namespace under such a path reads as none: `NamespaceSockets`.)
    let listed: Vec<String> = listed
        .into_iter()
        .filter(|name| name.starts_with(names::NAMESPACE_PREFIX))
        .chain(others_namespaces.iter().cloned())
        .collect();
    let fresh = sockets.refresh(&listed).map_err(dir_error)?;
    cached.retain(|name, _| sockets.contains(name));
    let stale: Vec<(&String, &mut Netlink)> = sockets
        .iter_mut()
        .filter(|(name, _)| {
            changes.everything
                || fresh.contains(*name)
                || changes.namespaces.contains(*name)
                || !cached.contains_key(*name)
        })
        .collect();
    // Reading a namespace is a few netlink round trips; with hundreds of them, reading on
    // every core shortens a pass (and so a repair) accordingly.
    let read = netns::on_every_core(stale, |(name, netlink)| {
        // A namespace someone else owns is named by its path.
        (name.clone(), read_namespace(netlink, name.starts_with('/')))
    })
    .map_err(dir_error)?;
    let mut peers = BTreeSet::new();
    let mut note_peers = |namespace: Option<&InstanceNamespace>| {
        let links = namespace
            .into_iter()
            .flat_map(|namespace| namespace.links.values());
        peers.extend(links.filter_map(|(_, _, peer_index)| *peer_index));
    };
    for (name, namespace) in read {
        note_peers(cached.get(&name));
        match namespace {
            Ok(namespace) => {
                note_peers(Some(&namespace));
                cached.insert(name, namespace);
            }
            // Deleted meanwhile: it is gone, as the next pass will see.
            Err(_) => {
                cached.remove(&name);
                sockets.forget(&name);
            }
        }
    }
    Ok(peers)
}

/// What a namespace holds: whether it is kudonet's, its links (with their index and their
/// veth peer's index), its default gateway.
struct InstanceNamespace {
    owned: bool,
    links: BTreeMap<String, (Link, u32, Option<u32>)>,
    default_gateways: BTreeSet<IpAddr>,
    onlink_gateways: BTreeSet<IpAddr>,
    others_default_gateways: BTreeSet<IpAddr>,
}

/// Reads a namespace; `theirs` when it is one someone else owns (named by `netns`): then,
/// whatever marks are in it (anyone with CAP_NET_ADMIN there can set its loopback's
/// alias), it is never kudonet's.
fn read_namespace(netlink: &mut Netlink, theirs: bool) -> Result<InstanceNamespace, ObserveError> {
    let raw: Vec<RawLink> = netlink.dump_links(RawLink::parse)?;
    let names_by_index: HashMap<u32, &str> = raw
        .iter()
        .map(|raw| (raw.index, raw.name.as_str()))
        .collect();
    let mut addresses = addresses_by_index(netlink)?;
    let links: BTreeMap<String, (Link, u32, Option<u32>)> = raw
        .iter()
        .map(|raw| {
            let link = raw.resolve(&names_by_index, &mut addresses);
            (raw.name.clone(), (link, raw.index, raw.peer_index))
        })
        .collect();
    let owned = !theirs
        && links
            .get("lo")
            .is_some_and(|(lo, _, _)| lo.alias.as_deref() == Some(names::NAMESPACE_MARK));
    // In a namespace someone else owns, only kudonet's default routes are the instance's.
    let (defaults, others_defaults): (Vec<_>, Vec<_>) = netlink
        .dump_routes()?
        .into_iter()
        .filter(|route| route.destination.is_some_and(|d| d.network_length() == 0))
        .partition(|route| owned || route.protocol == names::ROUTE_PROTOCOL);
    let others_default_gateways = others_defaults
        .iter()
        .filter_map(|route| route.gateway)
        .collect();
    let default_gateways = defaults.iter().filter_map(|route| route.gateway).collect();
    let onlink_gateways = defaults
        .iter()
        .filter(|route| route.onlink)
        .filter_map(|route| route.gateway)
        .collect();
    Ok(InstanceNamespace {
        owned,
        links,
        default_gateways,
        onlink_gateways,
        others_default_gateways,
    })
}

fn addresses_by_index(netlink: &mut Netlink) -> Result<HashMap<u32, LinkAddresses>, ObserveError> {
    let mut addresses: HashMap<u32, LinkAddresses> = HashMap::new();
    for (index, address, no_prefix_route) in netlink.dump_addresses()? {
        let (all, without_prefix_route) = addresses.entry(index).or_default();
        all.insert(address);
        if no_prefix_route {
            without_prefix_route.insert(address);
        }
    }
    Ok(addresses)
}
