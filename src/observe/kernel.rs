//! Reading the node from the kernel: rtnetlink dumps in the node namespace and in each
//! namespace of the netns directory, `/proc/sys`, and one `iptables-save` per table.
//! Nothing here changes anything.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};

use super::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Vxlan};
use crate::dataplane::iptables::Iptables;
use crate::dataplane::netlink::{Netlink, NetlinkError};
use crate::dataplane::netns::{self, NamespaceSockets};
use crate::names;
use crate::plan::firewall::{FILTER, NAT};
use crate::plan::{IP_FORWARD, route_localnet};

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
    Firewall(#[from] crate::dataplane::iptables::FirewallError),
}

/// Reads what the node has: links, addresses and routes of the namespace of `host`, the
/// namespaces of `netns_dir` (through `sockets`, reused between calls), sysctls and iptables.
pub fn observe(
    host: &mut Netlink,
    netns_dir: &Path,
    sockets: &mut NamespaceSockets,
    iptables: &Iptables,
) -> Result<Observed, ObserveError> {
    let (mut links, indexes) = read_links(host)?;
    // Forwarding entries are only read when there is an overlay: a bridge may have many.
    if links.values().any(|link| link.link.kind == LinkKind::Vxlan) {
        for (index, destination) in host.dump_flood()? {
            if let Some(link) = indexes.get(&index).and_then(|name| links.get_mut(name)) {
                link.link.flood.insert(destination);
            }
        }
    }
    let mut observed = Observed::default();

    for route in host.dump_routes()? {
        let Some(destination) = destination(&route) else {
            continue;
        };
        let device = route_device(&route)
            .and_then(|index| indexes.get(&index))
            .cloned();
        if destination.network_length() == 0 {
            observed.default_route_interface = observed.default_route_interface.or(device);
            continue;
        }
        let gateway = gateway(&route);
        // Connected routes of interfaces are the kernel's business, not a collision.
        if gateway.is_none() && route.header.protocol == RouteProtocol::Kernel {
            continue;
        }
        let owned = route.header.protocol == RouteProtocol::from(names::ROUTE_PROTOCOL);
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

    let mut namespaces = BTreeMap::new();
    let names = netns::list(netns_dir).map_err(|source| ObserveError::NetnsDir {
        dir: netns_dir.display().to_string(),
        source,
    })?;
    // Only namespaces named like kudonet's matter (its own, or foreign ones in the way):
    // others are not entered, nor kept alive by a cached socket.
    let names: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with(names::NAMESPACE_PREFIX))
        .collect();
    sockets.retain(|name| names.iter().any(|listed| listed == name));
    // Deleted meanwhile: it is gone, as the next pass will see.
    let opened: std::collections::HashSet<String> = names
        .into_iter()
        .filter(|name| sockets.get(name).is_ok())
        .collect();
    // Reading a namespace is a few netlink round trips; with hundreds of them, reading on
    // every core shortens a pass (and so a repair) accordingly.
    let mut work: Vec<(&String, &mut Netlink)> = sockets
        .iter_mut()
        .filter(|(name, _)| opened.contains(*name))
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(work.len().max(1));
    let chunk = work.len().div_ceil(workers).max(1);
    let read: Vec<(String, Option<InstanceNamespace>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks_mut(chunk)
            .map(|part| scope.spawn(move || read_namespaces(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    for (name, namespace) in read {
        match namespace {
            Some(namespace) => {
                namespaces.insert(name, namespace);
            }
            None => sockets.forget(&name),
        }
    }

    // Pair veth ends: each end names its peer's index, and both must point at each other.
    for (netns, (_, inner, _)) in namespaces.iter_mut() {
        for (inner_name, inner_link) in inner.iter_mut() {
            let Some(peer_index) = inner_link.peer_index else {
                continue;
            };
            let host_end = links.iter_mut().find(|(_, host_link)| {
                host_link.index == peer_index && host_link.peer_index == Some(inner_link.index)
            });
            if let Some((host_name, host_link)) = host_end {
                host_link.link.peer = Some(LinkRef::in_namespace(netns, inner_name));
                inner_link.link.peer = Some(LinkRef::host(host_name));
            }
        }
    }

    observed.links = links
        .into_iter()
        .map(|(name, link)| (name, link.link))
        .collect();
    observed.namespaces = namespaces
        .into_iter()
        .map(|(name, (owned, links, default_gateway))| {
            let links = links
                .into_iter()
                .map(|(name, link)| (name, link.link))
                .collect();
            (
                name,
                Namespace {
                    owned,
                    links,
                    default_gateway,
                },
            )
        })
        .collect();

    let mut sysctls = vec![IP_FORWARD.to_string()];
    sysctls.extend(
        observed
            .links
            .iter()
            .filter(|(_, link)| link.kind == LinkKind::Bridge)
            .map(|(name, _)| route_localnet(name)),
    );
    for key in sysctls {
        let value = read_sysctl(&key).map_err(|source| ObserveError::Sysctl {
            key: key.clone(),
            source,
        })?;
        observed.sysctls.insert(key, value);
    }

    for table in [NAT, FILTER] {
        observed
            .firewall
            .insert(table.to_string(), iptables.read_table(table)?);
    }
    Ok(observed)
}

/// What a namespace holds: whether it is kudonet's, its links, its default gateway.
type InstanceNamespace = (bool, BTreeMap<String, RawLink>, Option<std::net::Ipv4Addr>);

/// Reads each namespace of `part`; `None` for one that could not be read.
fn read_namespaces(
    part: &mut [(&String, &mut Netlink)],
) -> Vec<(String, Option<InstanceNamespace>)> {
    part.iter_mut()
        .map(|(name, netlink)| {
            let mut read = || -> Result<InstanceNamespace, ObserveError> {
                let (links, _) = read_links(netlink)?;
                let default_gateway = netlink
                    .dump_routes()?
                    .iter()
                    .filter(|route| destination(route).is_some_and(|d| d.network_length() == 0))
                    .find_map(gateway);
                let owned = links
                    .get("lo")
                    .is_some_and(|lo| lo.link.alias.as_deref() == Some(netns::NAMESPACE_MARK));
                Ok((owned, links, default_gateway))
            };
            (name.to_string(), read().ok())
        })
        .collect()
}

/// The links of one namespace by name, and the names by interface index.
type LinkTable = (BTreeMap<String, RawLink>, HashMap<u32, String>);

/// A link as read, with the indexes needed to resolve masters and veth peers.
struct RawLink {
    link: Link,
    index: u32,
    peer_index: Option<u32>,
}

fn read_links(netlink: &mut Netlink) -> Result<LinkTable, ObserveError> {
    let messages = netlink.dump_links()?;
    let indexes: HashMap<u32, String> = messages
        .iter()
        .filter_map(|message| Some((message.header.index, name(message)?)))
        .collect();
    let mut addresses: HashMap<u32, Vec<cidr::Ipv4Inet>> = HashMap::new();
    for (index, address) in netlink.dump_addresses()? {
        addresses.entry(index).or_default().push(address);
    }
    let links = messages
        .iter()
        .filter_map(|message| {
            let name = name(message)?;
            let mut link = Link::new(kind(message));
            link.up = message.header.flags.contains(LinkFlags::Up);
            link.addresses = addresses
                .remove(&message.header.index)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let mut peer_index = None;
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::IfAlias(alias) if !alias.is_empty() => {
                        link.alias = Some(alias.clone())
                    }
                    LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                    LinkAttribute::Controller(master) => link.master = indexes.get(master).cloned(),
                    LinkAttribute::Link(peer) if link.kind == LinkKind::Veth => {
                        peer_index = Some(*peer)
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        link.hairpin = hairpin(infos);
                        link.vxlan = vxlan(infos, &indexes);
                    }
                    _ => {}
                }
            }
            Some((
                name,
                RawLink {
                    link,
                    index: message.header.index,
                    peer_index,
                },
            ))
        })
        .collect();
    Ok((links, indexes))
}

fn name(message: &LinkMessage) -> Option<String> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

fn kind(message: &LinkMessage) -> LinkKind {
    if message.header.link_layer_type == LinkLayerType::Loopback {
        return LinkKind::Loopback;
    }
    let info_kind = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind.clone()),
                _ => None,
            }),
            _ => None,
        });
    match info_kind {
        Some(InfoKind::Bridge) => LinkKind::Bridge,
        Some(InfoKind::Veth) => LinkKind::Veth,
        Some(InfoKind::Vxlan) => LinkKind::Vxlan,
        _ => LinkKind::Other,
    }
}

fn hairpin(infos: &[LinkInfo]) -> bool {
    infos.iter().any(|info| match info {
        LinkInfo::PortData(InfoPortData::BridgePort(port)) => port
            .iter()
            .any(|attribute| matches!(attribute, InfoBridgePort::HairpinMode(true))),
        _ => false,
    })
}

fn vxlan(infos: &[LinkInfo], indexes: &HashMap<u32, String>) -> Option<Vxlan> {
    let data = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    })?;
    let mut vxlan = Vxlan {
        id: 0,
        local: None,
        port: 0,
        device: None,
    };
    for attribute in data {
        match attribute {
            InfoVxlan::Id(id) => vxlan.id = *id,
            InfoVxlan::Local(local) => vxlan.local = Some(*local),
            InfoVxlan::Port(port) => vxlan.port = *port,
            InfoVxlan::Link(index) => vxlan.device = indexes.get(index).cloned(),
            _ => {}
        }
    }
    Some(vxlan)
}

fn destination(route: &RouteMessage) -> Option<cidr::Ipv4Cidr> {
    let address = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => Some(*address),
            _ => None,
        })
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    cidr::Ipv4Cidr::new(address, route.header.destination_prefix_length).ok()
}

fn gateway(route: &RouteMessage) -> Option<std::net::Ipv4Addr> {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => Some(*gateway),
            _ => None,
        })
}

fn route_device(route: &RouteMessage) -> Option<u32> {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
}

/// The file of a sysctl under /proc/sys. Interface names may contain dots, so the device
/// part of `net.ipv4.conf.<device>.<setting>` is kept whole.
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    let root = Path::new("/proc/sys");
    if let Some(rest) = key.strip_prefix("net.ipv4.conf.")
        && let Some((device, setting)) = rest.rsplit_once('.')
    {
        return root.join("net/ipv4/conf").join(device).join(setting);
    }
    root.join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> std::io::Result<String> {
    Ok(fs::read_to_string(sysctl_path(key))?.trim().to_string())
}
