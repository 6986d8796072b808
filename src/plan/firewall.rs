//! The iptables rules a node needs, written exactly as `iptables-save` prints them so that
//! desired and observed chains compare as plain strings.
//!
//! Everything lives in kudonet's own `KUDO-*` chains; built-in chains only get one jump rule
//! each, marked with a comment, at their head.

use std::collections::BTreeMap;

use cidr::IpCidr;

use crate::names::JUMP_MARK;
use crate::observed::TableId;
use crate::spec::{Desired, Family};

/// The `KUDO-*` chains of a table, and kudonet's jump rules per built-in chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableRules {
    /// Each `KUDO-*` chain and its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Each built-in chain and kudonet's jump rules at its head, in order.
    pub jumps: BTreeMap<String, Vec<String>>,
}

pub use crate::names::{FILTER, NAT};

/// The rules of every table kudonet uses, for `desired`: iptables for IPv4, ip6tables for
/// IPv6, each with the same chains. A family the node lacks gets no rule (what kudonet left
/// there goes). `uplink` gives the interface that leads out of the node for a family (the
/// Node's `uplink`, else that family's default route's), if known. `segments` are the node's segments: the node's
/// bridge and each of them get the same rules.
pub fn desired_tables<'a>(
    desired: &Desired,
    uplink: &dyn Fn(Family) -> Option<&'a str>,
    segments: &[&str],
) -> BTreeMap<TableId, TableRules> {
    let bridges: Vec<&str> = std::iter::once(desired.node.bridge.as_str())
        .chain(segments.iter().copied())
        .collect();
    let mut tables = empty_tables();
    for family in desired.node.families() {
        tables.insert(
            TableId::new(family, NAT),
            nat(desired, family, uplink(family), &bridges),
        );
        tables.insert(
            TableId::new(family, FILTER),
            filter(desired, family, &bridges),
        );
    }
    tables
}

/// The tables as they are once kudonet is gone: no chain, no jump, in either family.
pub fn empty_tables() -> BTreeMap<TableId, TableRules> {
    Family::ALL
        .into_iter()
        .flat_map(|family| [NAT, FILTER].map(|table| TableId::new(family, table)))
        .map(|table| (table, TableRules::default()))
        .collect()
}

fn jump(chain: &str) -> String {
    format!("{JUMP_MARK} -j {chain}")
}

/// A host address as `iptables-save` prints it in a match: `10.0.0.1/32`, `fd00::1/128`.
fn host_match(ip: std::net::IpAddr) -> String {
    format!("{:#}", IpCidr::new_host(ip))
}

/// A DNAT destination: `10.0.0.2:80`, `[fd00::2]:80`.
fn dnat_target(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

fn nat(desired: &Desired, family: Family, uplink: Option<&str>, bridges: &[&str]) -> TableRules {
    let node = &desired.node;
    let bridge = &node.bridge;
    let Some(subnet) = node.subnet(family) else {
        return TableRules::default();
    };

    // Published ports: DNAT traffic for the node's addresses, whether it arrives from outside
    // (PREROUTING) or is sent by the node itself, 127.0.0.1 included (OUTPUT).
    let local = "-m addrtype --dst-type LOCAL -j KUDO-PORTS".to_string();
    // Over IPv6, `[::1]` cannot reach an instance (the kernel has no route_localnet for
    // it): leave it to the node's own services on those ports.
    let output = match family {
        Family::Ipv4 => local.clone(),
        Family::Ipv6 => format!("! -d ::1/128 {local}"),
    };
    let mut ports = Vec::new();
    for instance in &desired.instances {
        let Some(address) = instance.address(family) else {
            continue;
        };
        for port in instance.ports.iter().filter(|port| port.serves(family)) {
            let destination = port
                .host_address()
                .map(|ip| format!("-d {} ", host_match(ip)))
                .unwrap_or_default();
            let protocol = port.protocol;
            ports.push(format!(
                "{destination}-p {protocol} -m {protocol} --dport {} -m comment --comment {} -j DNAT --to-destination {}",
                port.host_port,
                instance.name,
                dnat_target(address.address(), port.instance_port)
            ));
        }
    }

    let mut postrouting = Vec::new();
    for bridge in bridges {
        // Hairpin: an instance reaching a published port of its own node gets answered by
        // the node, not directly by the target instance, which would drop the reply.
        postrouting.push(format!(
            "-s {subnet} -o {bridge} -m conntrack --ctstate DNAT -j MASQUERADE"
        ));
        // The node reaching its own published ports (127.0.0.1 needs route_localnet).
        postrouting.push(format!(
            "-o {bridge} -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE"
        ));
    }
    if node.masquerade {
        // Traffic inside the cluster keeps its source address.
        for exempt in cluster_destinations(desired, family) {
            postrouting.push(format!("-s {subnet} -d {exempt} -j RETURN"));
        }
        postrouting.push(match uplink {
            Some(uplink) => format!("-s {subnet} -o {uplink} -j MASQUERADE"),
            None => format!("-s {subnet} ! -o {bridge} -j MASQUERADE"),
        });
    }

    TableRules {
        chains: BTreeMap::from([
            ("KUDO-OUTPUT".to_string(), vec![output]),
            ("KUDO-PORTS".to_string(), ports),
            ("KUDO-POSTROUTING".to_string(), postrouting),
            ("KUDO-PREROUTING".to_string(), vec![local]),
        ]),
        jumps: BTreeMap::from([
            ("OUTPUT".to_string(), vec![jump("KUDO-OUTPUT")]),
            ("POSTROUTING".to_string(), vec![jump("KUDO-POSTROUTING")]),
            ("PREROUTING".to_string(), vec![jump("KUDO-PREROUTING")]),
        ]),
    }
}

pub(crate) fn filter(desired: &Desired, family: Family, bridges: &[&str]) -> TableRules {
    // Accepted explicitly, so that hosts whose FORWARD policy is DROP still forward
    // kudonet's traffic, and nothing else.
    let mut forward = Vec::new();
    for bridge in bridges {
        forward.extend([
            format!("-i {bridge} -j ACCEPT"),
            format!("-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            format!("-o {bridge} -m conntrack --ctstate DNAT -j ACCEPT"),
        ]);
        for source in cluster_destinations(desired, family) {
            if Some(source) != desired.node.subnet(family) {
                forward.push(format!("-s {source} -o {bridge} -j ACCEPT"));
            }
        }
    }
    TableRules {
        chains: BTreeMap::from([("KUDO-FORWARD".to_string(), forward)]),
        jumps: BTreeMap::from([("FORWARD".to_string(), vec![jump("KUDO-FORWARD")])]),
    }
}

/// Where this node's instances reach other instances over `family`: the Cluster cidr of
/// that family, or else every node subnet of it (the node's own first).
pub(crate) fn cluster_destinations(desired: &Desired, family: Family) -> Vec<IpCidr> {
    match desired
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.cidr(family))
    {
        Some(cidr) => vec![cidr],
        None => std::iter::once(&desired.node)
            .chain(&desired.peers)
            .filter_map(|node| node.subnet(family))
            .collect(),
    }
}
