//! rtnetlink (netlink-packet-route): links, addresses, routes and forwarding entries, one
//! socket per network namespace, with helpers named after what they do; and the decoding of
//! the route family's events (`changed_links`).
//!
//! [`Netlink::open_in`] creates the socket on a short-lived thread that has entered the
//! target namespace ([`in_namespace`]); the socket then works from any thread.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use cidr::{IpCidr, IpInet};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NetlinkBuffer,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkExtentMask, LinkFlags, LinkHeader, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::{Connection, NetlinkError, Result, in_namespace};
use crate::observed::{Link, LinkKind, Vxlan};
use crate::spec::Family;

/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_ATTEMPTS: usize = 5;

pub struct Netlink {
    connection: Connection,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        Ok(Netlink {
            connection: Connection::open(NETLINK_ROUTE)?,
        })
    }

    /// A socket in the network namespace bound at `netns` (a file of the netns directory).
    pub fn open_in(netns: &Path) -> io::Result<Netlink> {
        let namespace = File::open(netns)?;
        in_namespace(&namespace, Netlink::open)?
    }

    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.connection.request_map(message, flags, &mut Some)
    }

    /// A request the kernel acknowledges; errors name `operation`.
    fn change(
        &mut self,
        operation: impl FnOnce() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<()> {
        self.request(message, flags | NLM_F_ACK)
            .map(drop)
            .map_err(|error| NetlinkError::new(operation(), error))
    }

    fn dump(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.dump_map(what, message, Some)
    }

    fn dump_map<T>(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        mut map: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .connection
                .request_map(message.clone(), NLM_F_DUMP, &mut map)
            {
                Err(error)
                    if error.kind() == io::ErrorKind::Interrupted && attempt < DUMP_ATTEMPTS =>
                {
                    continue;
                }
                result => {
                    return result
                        .map_err(|error| NetlinkError::new(format!("dump {what}"), error));
                }
            }
        }
    }

    /// Every link, as `map` makes it out of each link message.
    pub fn dump_links<T>(
        &mut self,
        mut map: impl FnMut(&LinkMessage) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.dump_map(
            "links",
            RouteNetlinkMessage::GetLink(link_request()),
            |reply| match reply {
                RouteNetlinkMessage::NewLink(link) => map(&link),
                _ => None,
            },
        )
    }

    /// Every IPv4 and IPv6 address but the IPv6 link-local ones (the kernel makes those),
    /// as (interface index, address with prefix, whether it has no prefix route).
    pub fn dump_addresses(&mut self) -> Result<Vec<(u32, IpInet, bool)>> {
        let mut request = AddressMessage::default();
        request.header.family = AddressFamily::Unspec;
        let replies = self.dump("addresses", RouteNetlinkMessage::GetAddress(request))?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(address) => {
                    // IPv4 names the interface's own address IFA_LOCAL (IFA_ADDRESS is the
                    // peer's on a point-to-point link); IPv6 gives IFA_ADDRESS alone.
                    let ip = address
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            AddressAttribute::Local(ip @ IpAddr::V4(_)) => Some(*ip),
                            AddressAttribute::Address(ip @ IpAddr::V6(v6))
                                if !v6.is_unicast_link_local() =>
                            {
                                Some(*ip)
                            }
                            _ => None,
                        })?;
                    let inet = IpInet::new(ip, address.header.prefix_len).ok()?;
                    let no_prefix_route = address.attributes.iter().any(|attribute| {
                        matches!(attribute, AddressAttribute::Flags(flags)
                            if flags.contains(AddressFlags::Noprefixroute))
                    });
                    Some((address.header.index, inet, no_prefix_route))
                }
                _ => None,
            })
            .collect())
    }

    /// The IPv4 and IPv6 routes of the main table.
    pub(crate) fn dump_routes(&mut self) -> Result<Vec<RouteRecord>> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Unspec;
        let replies = self.dump("routes", RouteNetlinkMessage::GetRoute(request))?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route)
                    if route.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    Some(RouteRecord::parse(&route))
                }
                _ => None,
            })
            .collect())
    }

    /// The index of the link named `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        match self.get_link(name)? {
            Some(link) => Ok(link.header.index),
            None => Err(NetlinkError::new(
                format!("find link {name}"),
                io::Error::from_raw_os_error(libc_enodev()),
            )),
        }
    }

    /// The link named `name`, or `None` when there is none.
    pub fn get_link(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        let mut request = link_request();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.get_one_link(request, || format!("find link {name}"))
    }

    /// The MAC address of link `name`, or `None` when there is no such link or it has none.
    pub fn link_mac(&mut self, name: &str) -> Result<Option<[u8; 6]>> {
        let link = self.get_link(name)?;
        let address = link
            .iter()
            .flat_map(|link| &link.attributes)
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(address) => <[u8; 6]>::try_from(address.as_slice()).ok(),
                _ => None,
            });
        Ok(address)
    }

    /// The name of the bridge (or other master) link `name` is a port of, or `None` when
    /// it has none or there is no such link.
    pub fn link_master_name(&mut self, name: &str) -> Result<Option<String>> {
        let master = self.get_link(name)?.and_then(|link| {
            link.attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Controller(master) => Some(*master),
                    _ => None,
                })
        });
        match master {
            Some(index) => Ok(self
                .get_link_by_index(index)?
                .and_then(|link| self::name(&link))),
            None => Ok(None),
        }
    }

    /// The link with interface index `index`, or `None` when there is none.
    pub fn get_link_by_index(&mut self, index: u32) -> Result<Option<LinkMessage>> {
        let mut request = link_request();
        request.header.index = index;
        self.get_one_link(request, || format!("find link {index}"))
    }

    fn get_one_link(
        &mut self,
        request: LinkMessage,
        operation: impl FnOnce() -> String,
    ) -> Result<Option<LinkMessage>> {
        match self.request(RouteNetlinkMessage::GetLink(request), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })),
            Err(error) if error.raw_os_error() == Some(libc_enodev()) => Ok(None),
            Err(error) => Err(NetlinkError::new(operation(), error)),
        }
    }

    /// Creates a bridge, down.
    /// Creates a bridge, down. With `mac`, its address is fixed: otherwise the kernel gives
    /// the bridge the lowest address of its ports, which changes as ports come and go and
    /// leaves instances sending to their gateway at an address that no longer exists.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message
            .attributes
            .extend(mac.map(|mac| LinkAttribute::Address(mac.to_vec())));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        message.attributes.extend(mtu.map(LinkAttribute::Mtu));
        self.change(
            || format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair, down: `name` here and `peer_name` directly in the namespace
    /// `peer_netns` (no move needed).
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: &File,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .extend(peer_mac.map(|mac| LinkAttribute::Address(mac.to_vec())));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        peer.attributes.extend(mtu.map(LinkAttribute::Mtu));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message.attributes.extend(mtu.map(LinkAttribute::Mtu));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.change(
            || format!("create veth {name} with peer {peer_name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes link `index` (`name`); one already gone (with its namespace, or as the
    /// other end of a deleted veth) counts as deleted.
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.change(
            || format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(message),
            0,
        ) {
            Err(error) if error.errno() == Some(libc_enodev()) => Ok(()),
            result => result,
        }
    }

    /// Changes attributes of an existing link.
    fn set_link(
        &mut self,
        index: u32,
        what: impl FnOnce() -> String,
        edit: impl FnOnce(&mut LinkMessage),
    ) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        edit(&mut message);
        self.change(what, RouteNetlinkMessage::SetLink(message), 0)
    }

    pub fn set_up(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_link(
            index,
            || format!("set {name} up"),
            |message| {
                message.header.flags = LinkFlags::Up;
                message.header.change_mask = LinkFlags::Up;
            },
        )
    }

    pub fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<()> {
        self.set_link(
            index,
            || format!("set mtu {mtu} on {name}"),
            |message| {
                message.attributes.push(LinkAttribute::Mtu(mtu));
            },
        )
    }

    pub fn set_alias(&mut self, index: u32, name: &str, alias: &str) -> Result<()> {
        self.set_link(
            index,
            || format!("set alias of {name}"),
            |message| {
                message
                    .attributes
                    .push(LinkAttribute::IfAlias(alias.to_string()));
            },
        )
    }

    pub fn rename(&mut self, index: u32, from: &str, to: &str) -> Result<()> {
        self.set_link(
            index,
            || format!("rename {from} to {to}"),
            |message| {
                message
                    .attributes
                    .push(LinkAttribute::IfName(to.to_string()));
            },
        )
    }

    pub fn set_master(
        &mut self,
        index: u32,
        name: &str,
        master: u32,
        master_name: &str,
    ) -> Result<()> {
        self.set_link(
            index,
            || format!("attach {name} to {master_name}"),
            |message| {
                message.attributes.push(LinkAttribute::Controller(master));
            },
        )
    }

    /// Turns on hairpin mode of a bridge port (`ip link set NAME type bridge_slave hairpin on`).
    pub fn set_hairpin(&mut self, index: u32, name: &str) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.change(
            || format!("set hairpin on {name}"),
            RouteNetlinkMessage::NewLink(message),
            0,
        )
    }

    fn address_message(index: u32, address: IpInet, no_prefix_route: bool) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.prefix_len = address.network_length();
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(address.address()));
        message
            .attributes
            .push(AddressAttribute::Address(address.address()));
        match address {
            IpInet::V4(address) => {
                message.header.family = AddressFamily::Inet;
                if address.network_length() < 31 {
                    message.attributes.push(AddressAttribute::Broadcast(
                        address.network().last_address(),
                    ));
                }
            }
            IpInet::V6(_) => {
                message.header.family = AddressFamily::Inet6;
                // kudonet hands the addresses out: no duplicate address detection, so the
                // address is usable at once instead of "tentative" for a second or more.
                message.header.flags = AddressHeaderFlags::Nodad;
                let mut flags = AddressFlags::Nodad;
                if no_prefix_route {
                    flags |= AddressFlags::Noprefixroute;
                }
                message.attributes.push(AddressAttribute::Flags(flags));
            }
        }
        message
    }

    /// Adds `address` to the link, without the route to its subnet if `no_prefix_route`
    /// (IPv6 only).
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: IpInet,
        no_prefix_route: bool,
    ) -> Result<()> {
        let message = Self::address_message(index, address, no_prefix_route);
        self.change(
            || format!("add address {address} to {name}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_address(&mut self, index: u32, name: &str, address: IpInet) -> Result<()> {
        self.change(
            || format!("delete address {address} from {name}"),
            RouteNetlinkMessage::DelAddress(Self::address_message(index, address, false)),
            0,
        )
    }

    fn route_message(destination: IpCidr, protocol: u8) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = match destination {
            IpCidr::V4(_) => AddressFamily::Inet,
            IpCidr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = destination.network_length();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::from(protocol);
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        if destination.network_length() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    destination.first_address(),
                )));
        }
        message
    }

    /// Adds or replaces the route to `destination` via `gateway` (out of `device`, if given),
    /// marked with `protocol`.
    pub fn replace_route(
        &mut self,
        destination: IpCidr,
        gateway: IpAddr,
        device: Option<u32>,
        protocol: u8,
    ) -> Result<()> {
        self.replace_route_with(destination, gateway, device, protocol, false)
    }

    /// Adds or replaces the route to `destination` through `device`, scope link (no
    /// gateway: the destination is on the device's segment), marked with `protocol`.
    pub fn replace_link_route(
        &mut self,
        destination: IpCidr,
        device: u32,
        protocol: u8,
    ) -> Result<()> {
        let mut message = Self::route_message(destination, protocol);
        message.header.scope = RouteScope::Link;
        message.attributes.push(RouteAttribute::Oif(device));
        self.change(
            || format!("replace route {destination} dev {device}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Like [`Netlink::replace_route`], with the gateway on-link on `device`: reachable
    /// there although no address of the node covers it (a peer's bridge over the overlay).
    pub fn replace_route_onlink(
        &mut self,
        destination: IpCidr,
        gateway: IpAddr,
        device: u32,
        protocol: u8,
    ) -> Result<()> {
        self.replace_route_with(destination, gateway, Some(device), protocol, true)
    }

    fn replace_route_with(
        &mut self,
        destination: IpCidr,
        gateway: IpAddr,
        device: Option<u32>,
        protocol: u8,
        onlink: bool,
    ) -> Result<()> {
        let mut message = Self::route_message(destination, protocol);
        if onlink {
            message.header.flags |= RouteFlags::Onlink;
        }
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        message.attributes.extend(device.map(RouteAttribute::Oif));
        self.change(
            || format!("replace route {destination} via {gateway}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Creates a vxlan device, down, learning remote MAC addresses.
    pub fn create_vxlan(
        &mut self,
        name: &str,
        id: u32,
        local: Option<IpAddr>,
        port: u16,
        uplink: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut data = vec![
            InfoVxlan::Id(id),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(true),
        ];
        data.extend(local.map(|local| match local {
            IpAddr::V4(local) => InfoVxlan::Local(local),
            IpAddr::V6(local) => InfoVxlan::Local6(local),
        }));
        data.extend(uplink.map(InfoVxlan::Link));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message.attributes.extend(mtu.map(LinkAttribute::Mtu));
        let info = vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ];
        message.attributes.push(LinkAttribute::LinkInfo(info));
        self.change(
            || format!("create vxlan {name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The all-zero forwarding entry of a vxlan device that floods to `destination`
    /// (`bridge fdb append 00:00:00:00:00:00 dev DEVICE dst DESTINATION`).
    fn flood_message(index: u32, destination: IpAddr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                destination,
            )));
        message
    }

    pub fn add_flood(&mut self, index: u32, name: &str, destination: IpAddr) -> Result<()> {
        self.change(
            || format!("flood {name} to {destination}"),
            RouteNetlinkMessage::NewNeighbour(Self::flood_message(index, destination)),
            NLM_F_CREATE | NLM_F_APPEND,
        )
    }

    pub fn delete_flood(&mut self, index: u32, name: &str, destination: IpAddr) -> Result<()> {
        self.change(
            || format!("stop flooding {name} to {destination}"),
            RouteNetlinkMessage::DelNeighbour(Self::flood_message(index, destination)),
            0,
        )
    }

    /// The flood destinations of every vxlan device, as (interface index, destination).
    pub fn dump_flood(&mut self) -> Result<Vec<(u32, IpAddr)>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let replies = self.dump(
            "forwarding entries",
            RouteNetlinkMessage::GetNeighbour(request),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(entry) => {
                    let flood = entry.attributes.iter().any(|attribute| {
                        matches!(attribute, NeighbourAttribute::LinkLayerAddress(mac) if mac.iter().all(|b| *b == 0))
                    });
                    // In a bridge-family message the destination is raw bytes to the parser.
                    let destination = entry.attributes.iter().find_map(|attribute| match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                            match bytes.len() {
                                4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
                                16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
                                _ => None,
                            }
                        }
                        _ => None,
                    })?;
                    flood.then_some((entry.header.ifindex, destination))
                }
                _ => None,
            })
            .collect())
    }

    /// A proxy neighbour entry (`ip -6 neigh add proxy ADDRESS dev DEVICE protocol N`).
    fn proxy_message(index: u32, address: IpAddr, protocol: Option<u8>) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = match address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.flags = NeighbourFlags::Proxy;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                address,
            )));
        message.attributes.extend(
            protocol.map(|protocol| NeighbourAttribute::Protocol(RouteProtocol::from(protocol))),
        );
        message
    }

    /// Adds a proxy neighbour entry for `address` on the link, marked with `protocol` (an
    /// entry already there for it is updated, its mark too).
    pub fn add_proxy(
        &mut self,
        index: u32,
        name: &str,
        address: IpAddr,
        protocol: u8,
    ) -> Result<()> {
        self.change(
            || format!("add proxy neighbour {address} on {name}"),
            RouteNetlinkMessage::NewNeighbour(Self::proxy_message(index, address, Some(protocol))),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes the proxy neighbour entry for `address` on the link.
    pub fn delete_proxy(&mut self, index: u32, name: &str, address: IpAddr) -> Result<()> {
        self.change(
            || format!("delete proxy neighbour {address} on {name}"),
            RouteNetlinkMessage::DelNeighbour(Self::proxy_message(index, address, None)),
            0,
        )
    }

    /// Every IPv6 proxy neighbour entry, as (interface index, address, protocol number).
    pub fn dump_ipv6_proxies(&mut self) -> Result<Vec<(u32, IpAddr, u8)>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Inet6;
        // The kernel dumps the proxy entries instead of the neighbours when asked so.
        request.header.flags = NeighbourFlags::Proxy;
        let replies = self.dump(
            "proxy neighbour entries",
            RouteNetlinkMessage::GetNeighbour(request),
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(entry)
                    if entry.header.flags.contains(NeighbourFlags::Proxy) =>
                {
                    let mut protocol = 0;
                    let mut address = None;
                    for attribute in &entry.attributes {
                        match attribute {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                                address = Some(IpAddr::V6(*ip));
                            }
                            NeighbourAttribute::Protocol(number) => protocol = u8::from(*number),
                            _ => {}
                        }
                    }
                    Some((entry.header.ifindex, address?, protocol))
                }
                _ => None,
            })
            .collect())
    }

    /// Deletes the route to `destination`, only if it carries `protocol`.
    /// Deletes kudonet's route to `destination`, whatever its scope (a route through a
    /// gateway is universe, one to an instance on a segment is link), as `ip route del`
    /// asks. One already gone (with its link) counts as deleted.
    pub fn delete_route(&mut self, destination: IpCidr, protocol: u8) -> Result<()> {
        let mut message = Self::route_message(destination, protocol);
        message.header.scope = RouteScope::NoWhere;
        match self.change(
            || format!("delete route {destination}"),
            RouteNetlinkMessage::DelRoute(message),
            0,
        ) {
            Err(error) if error.errno() == Some(nix::libc::ESRCH) => Ok(()),
            result => result,
        }
    }
}

/// A request for links without their counters: kudonet never reads them, and filling and
/// parsing them is about a third of a dump of a node's links.
fn link_request() -> LinkMessage {
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    request
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// The interface indexes of the link messages (`RTM_NEWLINK`, `RTM_DELLINK`) among the
/// route family's event messages in `buffer` (one `recv`): the node's links they say changed.
/// Other messages (addresses, routes) name no link; a message cut short ends the walk.
pub(crate) fn changed_links(buffer: &[u8]) -> Vec<u32> {
    const RTM_NEWLINK: u16 = 16;
    const RTM_DELLINK: u16 = 17;
    let mut indexes = Vec::new();
    let mut offset = 0;
    while let Some(rest) = buffer.get(offset..) {
        let Ok(message) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        if matches!(message.message_type(), RTM_NEWLINK | RTM_DELLINK)
            && let Ok(header) = LinkHeader::parse(message.payload())
        {
            indexes.push(header.index);
        }
        offset += (message.length() as usize).div_ceil(4) * 4;
    }
    indexes
}

/// The addresses of a link, and those of them without a prefix route.
pub(crate) type LinkAddresses = (BTreeSet<IpInet>, BTreeSet<IpInet>);

/// A link as read, with the indexes needed to resolve its master, its vxlan underlay and
/// its veth peer, which may be read later than it.
pub(crate) struct RawLink {
    pub(crate) name: String,
    /// Without master, addresses, peer, flood, vxlan device: see [`RawLink::resolve`].
    pub(crate) link: Link,
    pub(crate) index: u32,
    pub(crate) peer_index: Option<u32>,
    pub(crate) master_index: Option<u32>,
    pub(crate) vxlan_device_index: Option<u32>,
}

/// The link a netlink link message describes (without master, addresses or peer), or
/// `None` for a message without a name.
pub(crate) fn parse_link(message: &LinkMessage) -> Option<Link> {
    RawLink::parse(message).map(|raw| raw.link)
}

impl RawLink {
    /// The link `message` describes, or `None` for a message without a name.
    pub(crate) fn parse(message: &LinkMessage) -> Option<RawLink> {
        let mut raw = RawLink {
            name: name(message)?,
            link: Link::new(kind(message)),
            index: message.header.index,
            peer_index: None,
            master_index: None,
            vxlan_device_index: None,
        };
        raw.link.up = message.header.flags.contains(LinkFlags::Up);
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => {
                    raw.link.alias = Some(alias.clone())
                }
                LinkAttribute::Mtu(mtu) => raw.link.mtu = *mtu,
                LinkAttribute::Controller(master) => raw.master_index = Some(*master),
                LinkAttribute::Link(peer) if raw.link.kind == LinkKind::Veth => {
                    raw.peer_index = Some(*peer)
                }
                LinkAttribute::LinkInfo(infos) => {
                    raw.link.hairpin = hairpin(infos);
                    if let Some((vxlan, device)) = vxlan(infos) {
                        raw.link.vxlan = Some(vxlan);
                        raw.vxlan_device_index = device;
                    }
                }
                _ => {}
            }
        }
        Some(raw)
    }

    /// The link with the names of its master and underlay, and its addresses (taken out
    /// of `addresses`).
    pub(crate) fn resolve(
        &self,
        names_by_index: &HashMap<u32, &str>,
        addresses: &mut HashMap<u32, LinkAddresses>,
    ) -> Link {
        let name_of = |index: Option<u32>| {
            index
                .and_then(|index| names_by_index.get(&index))
                .map(|name| name.to_string())
        };
        let mut link = self.link.clone();
        link.master = name_of(self.master_index);
        if let Some(vxlan) = &mut link.vxlan {
            vxlan.device = name_of(self.vxlan_device_index);
        }
        (link.addresses, link.no_prefix_route) = addresses.remove(&self.index).unwrap_or_default();
        link
    }
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

/// The tunnel settings of a vxlan, and the index of its underlay device.
fn vxlan(infos: &[LinkInfo]) -> Option<(Vxlan, Option<u32>)> {
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
    let mut device = None;
    for attribute in data {
        match attribute {
            InfoVxlan::Id(id) => vxlan.id = *id,
            InfoVxlan::Local(local) => vxlan.local = Some(IpAddr::V4(*local)),
            InfoVxlan::Local6(local) => vxlan.local = Some(IpAddr::V6(*local)),
            InfoVxlan::Port(port) => vxlan.port = *port,
            InfoVxlan::Link(index) => device = Some(*index),
            _ => {}
        }
    }
    Some((vxlan, device))
}

/// A route of the main table, as kudonet reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteRecord {
    /// `None` when it is neither an IPv4 nor an IPv6 prefix.
    pub(crate) destination: Option<IpCidr>,
    pub(crate) gateway: Option<IpAddr>,
    /// The output interface's index.
    pub(crate) device: Option<u32>,
    /// Made by the kernel for an interface's own subnet.
    pub(crate) kernel: bool,
    /// The route protocol number (kudonet's marks its own).
    pub(crate) protocol: u8,
    /// Whether the gateway is declared on-link.
    pub(crate) onlink: bool,
}

impl RouteRecord {
    fn parse(route: &RouteMessage) -> RouteRecord {
        let mut destination = match route.header.address_family {
            AddressFamily::Inet => Some(Family::Ipv4.unspecified()),
            AddressFamily::Inet6 => Some(Family::Ipv6.unspecified()),
            _ => None,
        };
        let (mut gateway, mut device) = (None, None);
        let ip = |address: &RouteAddress| match address {
            RouteAddress::Inet(address) => Some(IpAddr::V4(*address)),
            RouteAddress::Inet6(address) => Some(IpAddr::V6(*address)),
            _ => None,
        };
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Destination(address) => destination = ip(address),
                RouteAttribute::Gateway(address) => gateway = ip(address),
                RouteAttribute::Oif(index) => device = Some(*index),
                _ => {}
            }
        }
        RouteRecord {
            destination: destination.and_then(|destination| {
                IpCidr::new(destination, route.header.destination_prefix_length).ok()
            }),
            gateway,
            device,
            kernel: route.header.protocol == RouteProtocol::Kernel,
            protocol: u8::from(route.header.protocol),
            onlink: route.header.flags.contains(RouteFlags::Onlink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_events_name_their_interface_index() {
        // RTM_NEWLINK for index 7, RTM_NEWADDR (names no link), RTM_DELLINK for index 300.
        let message = |kind: u16, index: u32, length: u32| {
            let mut bytes = Vec::new();
            bytes.extend(length.to_ne_bytes());
            bytes.extend(kind.to_ne_bytes());
            bytes.extend([0u8; 10]);
            bytes.extend([0u8; 4]);
            bytes.extend(index.to_ne_bytes());
            bytes.resize(length.div_ceil(4) as usize * 4, 0);
            bytes
        };
        let mut buffer = message(16, 7, 34);
        buffer.extend(message(20, 9, 40));
        buffer.extend(message(17, 300, 32));
        assert_eq!(changed_links(&buffer), [7, 300]);
        assert_eq!(changed_links(&buffer[..20]), Vec::<u32>::new(), "cut short");
    }
}
