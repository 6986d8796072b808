//! What the CNI plugin reads of an attachment in the kernel: whether the runtime's path
//! is a network namespace, and the interfaces its ADD result reports (names, MAC
//! addresses, the container interface's addresses).

use std::io;
use std::path::Path;

use cidr::IpInet;

use super::netlink::Netlink;

/// Why `path` cannot be the namespace of an attachment: it does not exist, or it is not a
/// network namespace (a plain file, another kind of namespace).
pub(crate) fn check_network_namespace(path: &Path) -> Result<(), String> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(format!("{} does not exist", path.display()));
    }
    // A namespace file is on nsfs; entering it as a network namespace proves its kind.
    if !super::netns::is_namespace(path) || Netlink::open_in(path).is_err() {
        return Err(format!("{} is not a network namespace", path.display()));
    }
    let own = super::netns::inode(Path::new(super::netns::OWN_NAMESPACE)).ok();
    if super::netns::inode(path).ok() == own {
        return Err(format!(
            "{} is the node's own network namespace",
            path.display()
        ));
    }
    Ok(())
}

/// Whether the namespace at `netns` has an interface named `name`.
pub(crate) fn has_interface(netns: &Path, name: &str) -> io::Result<bool> {
    let mut inside = Netlink::open_in(netns)?;
    inside
        .get_link(name)
        .map(|link| link.is_some())
        .map_err(|error| io::Error::other(error.to_string()))
}

/// The interfaces of an attachment, as the kernel has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachmentLinks {
    /// The bridge the host end is a port of, with its MAC address.
    pub bridge: Option<(String, Option<[u8; 6]>)>,
    /// The MAC address of the host end.
    pub host_mac: Option<[u8; 6]>,
    /// The MAC address of the container's interface.
    pub container_mac: Option<[u8; 6]>,
    /// The container interface's addresses (not IPv6 link-local), IPv4 first.
    pub addresses: Vec<IpInet>,
}

/// Reads the attachment whose host end is `host_interface` (in this process's namespace)
/// and whose container interface is `interface` in the namespace at `netns`.
pub(crate) fn read_attachment(
    netns: &Path,
    interface: &str,
    host_interface: &str,
) -> io::Result<AttachmentLinks> {
    let error = |error: super::netlink::NetlinkError| io::Error::other(error.to_string());
    let mut host = Netlink::open()?;
    let bridge = match host.link_master_name(host_interface).map_err(error)? {
        Some(bridge) => {
            let mac = host.link_mac(&bridge).map_err(error)?;
            Some((bridge, mac))
        }
        None => None,
    };
    let host_mac = host.link_mac(host_interface).map_err(error)?;
    let mut inside = Netlink::open_in(netns)?;
    let container_mac = inside.link_mac(interface).map_err(error)?;
    let index = inside.link_index(interface).map_err(error)?;
    let mut addresses: Vec<IpInet> = inside
        .dump_addresses()
        .map_err(error)?
        .into_iter()
        .filter(|(link, _, _)| *link == index)
        .map(|(_, address, _)| address)
        .collect();
    addresses.sort_by_key(|address| (address.is_ipv6(), address.address()));
    Ok(AttachmentLinks {
        bridge,
        host_mac,
        container_mac,
        addresses,
    })
}
