//! How kudonet names and marks what it creates, so that ownership can be read back from the
//! kernel (docs/names-and-marks.md). Nodes in the field carry them: changing one orphans
//! what existing nodes have.

/// Prefix of every instance namespace in the netns directory: `kudo-<instance>`.
pub const NAMESPACE_PREFIX: &str = "kudo-";

/// Prefix of the interface alias (IFLA_IFALIAS) that marks a link as kudonet's.
pub const ALIAS_PREFIX: &str = "kudonet:";

/// Name of the instance's interface inside its namespace.
pub const INSTANCE_INTERFACE: &str = "eth0";

/// Prefix of every iptables chain kudonet owns.
pub const CHAIN_PREFIX: &str = "KUDO-";

/// The overlay device of a node in a `mode: vxlan` cluster.
pub const VXLAN_DEVICE: &str = "kudo-vxlan";

/// Prefix of the node's extra bridges, its segments: `kudo-seg1`, `kudo-seg2`, ... A node
/// puts a bounded number of instances on each bridge and routes between them
/// (docs/file-format.md, "How many instances a node holds").
pub const SEGMENT_PREFIX: &str = "kudo-seg";

/// The name of the node's `number`th segment (from 1): `kudo-seg<number>`.
pub fn segment_name(number: usize) -> String {
    format!("{SEGMENT_PREFIX}{number}")
}

/// The number of the segment named `name`, if it is one of kudonet's pattern (`kudo-seg`
/// and a number from 1, without leading zero).
pub fn segment_number(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?;
    let canonical = !digits.is_empty()
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The VXLAN network identifier of kudonet's overlay, and its UDP port (IANA's).
pub const VXLAN_ID: u32 = 75;
/// The UDP port of kudonet's overlay (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// VXLAN's encapsulation overhead over IPv4: outer IP, UDP and VXLAN headers and the inner
/// Ethernet header.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The route protocol number (`rtm_protocol`, `ip route ... proto 75`) that marks routes
/// kudonet owns. 75 is unassigned in iproute2's rt_protos.
pub const ROUTE_PROTOCOL: u8 = 75;

/// Linux interface names hold at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// The alias of the loopback of every namespace kudonet creates.
pub const NAMESPACE_MARK: &str = "kudonet";

/// The comment on kudonet's jump rules in built-in chains, as `iptables-save` prints it.
pub const JUMP_MARK: &str = "-m comment --comment kudonet";

/// The iptables tables kudonet writes.
pub const NAT: &str = "nat";
/// The iptables table of kudonet's forwarding rules.
pub const FILTER: &str = "filter";

/// The sysctl that lets the node route between the bridge and the uplink.
pub const IP_FORWARD: &str = "net.ipv4.ip_forward";

/// The sysctl that makes the node forward IPv6 (every interface).
pub const IPV6_FORWARDING: &str = "net.ipv6.conf.all.forwarding";

/// The sysctl that lets the node DNAT 127.0.0.1 to an instance behind `bridge`.
pub fn route_localnet(bridge: &str) -> String {
    format!("net.ipv4.conf.{bridge}.route_localnet")
}

/// The sysctl that makes the node answer ARP on `bridge` for addresses it routes through
/// another interface: the instances of the node's other bridges.
pub fn proxy_arp(bridge: &str) -> String {
    format!("net.ipv4.conf.{bridge}.proxy_arp")
}

/// The sysctl that delays proxied ARP answers on `bridge` (0.8 s by default): kudonet
/// answers at once.
pub fn proxy_delay(bridge: &str) -> String {
    format!("net.ipv4.neigh.{bridge}.proxy_delay")
}

/// The interface a per-interface sysctl (`net.ipv4.conf.<device>.<setting>`,
/// `net.ipv4.neigh.<device>.<setting>`) is about, or `None` for a node-wide one. `all` and
/// `default` are returned too: they are pseudo-devices whose settings reach every
/// interface, which is why a dataplane writes a per-interface sysctl only for kudonet's own
/// existing bridges. [`IPV6_FORWARDING`] is the exception: IPv6 has no node-wide forwarding
/// switch but `all`'s, which kudonet means to set for every interface (as `ip_forward`).
pub fn sysctl_interface(key: &str) -> Option<&str> {
    if key == IPV6_FORWARDING {
        return None;
    }
    let rest = ["net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh."]
        .into_iter()
        .find_map(|prefix| key.strip_prefix(prefix))?;
    // Interface names may contain dots: the setting is the last part.
    rest.rsplit_once('.').map(|(device, _)| device)
}

/// The namespace of an instance: `kudo-<instance>`.
pub fn namespace_name(instance: &str) -> String {
    format!("{NAMESPACE_PREFIX}{instance}")
}

/// The host end of an instance's veth pair: `kv` and 13 hex digits of a stable hash of the
/// instance name. Instance names run to 63 characters, interface names to 15, so the name
/// cannot carry the instance name; the alias does (`instance_alias`).
pub fn host_interface_name(instance: &str) -> String {
    format!("kv{:013x}", fnv1a64(instance.as_bytes()) & ((1 << 52) - 1))
}

/// The MAC address of an instance's eth0: locally administered, derived from its name, so
/// that a veth pair rebuilt after drift keeps it and neighbours' ARP caches stay right.
pub fn instance_mac(instance: &str) -> [u8; 6] {
    let hash = fnv1a64(instance.as_bytes()).to_be_bytes();
    [0x0a, hash[3], hash[4], hash[5], hash[6], hash[7]]
}

/// The alias that marks a host veth as the one of `instance`.
pub fn instance_alias(instance: &str) -> String {
    format!("{ALIAS_PREFIX}instance:{instance}")
}

/// The alias that marks the overlay device as kudonet's.
pub fn vxlan_alias() -> String {
    format!("{ALIAS_PREFIX}vxlan")
}

/// The alias that marks a bridge as kudonet's.
pub fn bridge_alias() -> String {
    format!("{ALIAS_PREFIX}bridge")
}

/// The alias that marks a bridge as one of kudonet's segments ([`SEGMENT_PREFIX`]).
pub fn segment_alias() -> String {
    format!("{ALIAS_PREFIX}segment")
}

/// Prefix of the temporary name a host link has between its creation and its rename, while
/// kudonet marks it. A link left with such a name by a crash is kudonet's and is deleted.
pub const SCRATCH_PREFIX: &str = "kudonet-";

/// The scratch name made from `seed`: `kudonet-` and 7 hex digits of its hash (15
/// characters). The kernel shell seeds it with what makes a moment unique (process, clock,
/// a counter): this module stays pure.
pub fn scratch_link_name(seed: &str) -> String {
    format!(
        "{SCRATCH_PREFIX}{:07x}",
        fnv1a64(seed.as_bytes()) & 0xfff_ffff
    )
}

/// Whether `name` is a scratch name (see [`SCRATCH_PREFIX`]).
pub fn is_scratch_link_name(name: &str) -> bool {
    name.strip_prefix(SCRATCH_PREFIX)
        .is_some_and(|rest| rest.len() == 7 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `name` is a host veth name of kudonet's pattern (`kv` and 13 hex digits).
pub fn is_host_interface_name(name: &str) -> bool {
    name.strip_prefix("kv")
        .is_some_and(|rest| rest.len() == 13 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why `name` cannot be a node's bridge although the kernel may accept it, or `None`.
///
/// `all` and `default` are the kernel's per-interface sysctl pseudo-devices
/// (`net.ipv4.conf.all.*` reaches every interface: route_localnet there would expose services
/// bound to 127.0.0.1), `lo` is the loopback device, and the rest are names kudonet gives its
/// own links: a bridge named like them would be mistaken for, or deleted as, one of those.
pub fn reserved_link_name(name: &str) -> Option<&'static str> {
    if name == "all" || name == "default" {
        Some("is reserved by the kernel for settings of every interface")
    } else if name == "lo" {
        Some("is the loopback interface")
    } else if name.starts_with(SCRATCH_PREFIX) {
        Some("is in kudonet's pattern for links it is creating (`kudonet-…`)")
    } else if is_host_interface_name(name) {
        Some("is in kudonet's pattern for host veths (`kv` and 13 hex digits)")
    } else if name == VXLAN_DEVICE {
        Some("is kudonet's overlay device")
    } else if name.starts_with(SEGMENT_PREFIX) {
        Some("is in kudonet's pattern for a node's extra bridges (`kudo-seg…`)")
    } else {
        None
    }
}

/// FNV-1a: tiny, and stable across Rust releases (unlike `DefaultHasher`), which names need.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_are_stable_and_fit_the_kernel_limit() {
        // Pinned: nodes in the field carry these names.
        assert_eq!(host_interface_name("web"), "kv0e11948721ef1");
        let long = "a".repeat(63);
        assert_eq!(host_interface_name(&long).len(), MAX_INTERFACE_NAME);
        assert_ne!(host_interface_name("web-1"), host_interface_name("web-2"));
    }

    #[test]
    fn scratch_names_fit_the_kernel_limit_and_are_recognised() {
        let scratch = scratch_link_name("1-2-3");
        assert_eq!(scratch.len(), MAX_INTERFACE_NAME);
        assert!(is_scratch_link_name(&scratch));
        assert_ne!(scratch, scratch_link_name("1-2-4"));
        assert!(!is_scratch_link_name("kudonet-web"));
        assert!(!is_scratch_link_name("kudo0"));
    }

    #[test]
    fn names_of_kernel_pseudo_devices_and_of_kudonets_own_links_are_reserved() {
        for name in [
            "all",
            "default",
            "lo",
            "kudonet-web",
            "kudonet-",
            "kudo-vxlan",
            "kudo-seg1",
            "kudo-seg",
            "kudo-segment",
        ] {
            assert!(reserved_link_name(name).is_some(), "{name}");
        }
        assert!(reserved_link_name(&host_interface_name("web")).is_some());
        assert!(reserved_link_name(&scratch_link_name("seed")).is_some());
        for name in ["kudo0", "br0", "kv0", "kvxxxxxxxxxxxxx", "alls", "lo0"] {
            assert_eq!(reserved_link_name(name), None, "{name}");
        }
    }

    #[test]
    fn segment_names_are_numbered_from_one() {
        assert_eq!(segment_name(1), "kudo-seg1");
        assert_eq!(segment_number("kudo-seg1"), Some(1));
        assert_eq!(segment_number("kudo-seg99"), Some(99));
        for name in [
            "kudo-seg",
            "kudo-seg0",
            "kudo-seg01",
            "kudo-seg1a",
            "kudo0",
            "kudo-seg+1",
        ] {
            assert_eq!(segment_number(name), None, "{name}");
        }
    }

    #[test]
    fn neighbour_sysctls_are_per_interface() {
        assert_eq!(sysctl_interface(&proxy_delay("kudo0")), Some("kudo0"));
        assert_eq!(sysctl_interface(&proxy_arp("kudo-seg1")), Some("kudo-seg1"));
        assert_eq!(
            sysctl_interface("net.ipv4.neigh.default.gc_thresh3"),
            Some("default")
        );
        assert_eq!(sysctl_interface(IP_FORWARD), None);
    }

    #[test]
    fn ipv6_forwarding_is_node_wide_but_other_settings_of_all_are_not() {
        assert_eq!(sysctl_interface(IPV6_FORWARDING), None);
        assert_eq!(sysctl_interface("net.ipv6.conf.all.accept_ra"), Some("all"));
        assert_eq!(
            sysctl_interface("net.ipv6.conf.kudo0.forwarding"),
            Some("kudo0")
        );
    }

    #[test]
    fn namespace_names_are_kudo_and_the_instance_name() {
        assert_eq!(namespace_name("web"), "kudo-web");
    }
}
