//! Addresses for instances that name none: one of each of the node's families, the lowest
//! free one, kept for as long as the instance exists.
//!
//! There is no database: what an instance was given is read back from the kernel (the
//! address its `eth0` holds), so a restarted kudonet, or a second binary, allocates the same.
//! Explicit addresses of the desired state always win: an allocation never takes an address
//! another document names, and an instance that holds one in the kernel that is now named
//! elsewhere gets another. The caller holds the node's change lock across observing,
//! planning and applying, so two allocations never race.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cidr::{IpCidr, IpInet};

use crate::observed::Observed;
use crate::spec::{Desired, Family, Instance, Node};

/// The desired state with an address of each node family given to every instance that
/// names none, the addresses given by name, and the instances left without (the subnet is
/// full) with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation<'a> {
    /// `desired`, every allocatable instance with its addresses.
    pub desired: Cow<'a, Desired>,
    /// The addresses allocated, by instance name.
    pub allocated: BTreeMap<String, Vec<IpInet>>,
    /// Instances that could not get an address, with the reason.
    pub exhausted: Vec<(String, String)>,
}

/// Allocates for the instances of `desired` that name no address, reading what they hold
/// from `observed`.
pub fn allocate<'a>(desired: &'a Desired, observed: &Observed) -> Allocation<'a> {
    let node = &desired.node;
    let mut wanting: Vec<&Instance> = desired
        .instances
        .iter()
        .filter(|instance| instance.addresses.is_empty())
        .collect();
    wanting.sort_by(|a, b| a.name.cmp(&b.name));
    if wanting.is_empty() {
        // Nothing to allocate: no copy of the desired state on the planner's hot path.
        return Allocation {
            desired: Cow::Borrowed(desired),
            allocated: BTreeMap::new(),
            exhausted: Vec::new(),
        };
    }
    // Named by a document, the gateway, or still on an interface of one of kudonet's
    // namespaces (an instance going away in this pass, or one whose named address just
    // changed) or on an instance's interface in a namespace someone else owns: never
    // allocated.
    let in_own_namespaces = observed
        .namespaces
        .values()
        .filter(|namespace| namespace.owned)
        .flat_map(|namespace| namespace.links.iter())
        .filter(|(name, _)| name.as_str() != "lo")
        .map(|(_, link)| link);
    let in_others_namespaces = desired
        .instances
        .iter()
        .filter(|instance| !instance.owns_namespace())
        .filter_map(|instance| observed.instance_interface(instance));
    let in_use = in_own_namespaces
        .chain(in_others_namespaces)
        .flat_map(|link| link.addresses.iter().map(IpInet::address));
    let mut taken: BTreeSet<IpAddr> = desired
        .instances
        .iter()
        .flat_map(|instance| instance.addresses.iter().map(IpInet::address))
        .chain(node.cidrs.iter().map(IpInet::address))
        .chain(in_use)
        .collect();
    // Named by a document: an instance holding one of these must give it up.
    let named: BTreeSet<IpAddr> = desired
        .instances
        .iter()
        .flat_map(|instance| instance.addresses.iter().map(IpInet::address))
        .collect();
    let mut allocated: BTreeMap<String, Vec<IpInet>> = BTreeMap::new();
    // First what each instance holds in the kernel (it is in `taken` already, so no new
    // allocation takes it).
    let mut kept: BTreeSet<IpAddr> = BTreeSet::new();
    for instance in &wanting {
        for family in node.families() {
            if let Some(address) = held(instance, family, node, observed, &named)
                && kept.insert(address.address())
            {
                allocated
                    .entry(instance.name.clone())
                    .or_default()
                    .push(address);
            }
        }
    }
    // Then the lowest free address, in name order. Within this call `taken` only grows,
    // so each family's search goes on from where the last one stopped (one walk of the
    // subnet for all instances, not one each).
    let mut next: BTreeMap<Family, u128> = BTreeMap::new();
    let mut exhausted = Vec::new();
    for instance in &wanting {
        for family in node.families() {
            let has = allocated.get(&instance.name).is_some_and(|addresses| {
                addresses.iter().any(|a| Family::of(a.address()) == family)
            });
            if has {
                continue;
            }
            let Some(cidr) = node.cidr(family) else {
                continue;
            };
            let from = next
                .entry(family)
                .or_insert_with(|| u128_of(cidr.network().first_address()) + 1);
            match lowest_free(cidr, &taken, from) {
                Some(address) => {
                    taken.insert(address.address());
                    allocated
                        .entry(instance.name.clone())
                        .or_default()
                        .push(address);
                }
                None => exhausted.push((
                    instance.name.clone(),
                    format!(
                        "no free {family} address left in {} for Instance {:?}",
                        cidr.network(),
                        instance.name
                    ),
                )),
            }
        }
    }
    let short: BTreeSet<&str> = exhausted.iter().map(|(name, _)| name.as_str()).collect();
    allocated.retain(|name, _| !short.contains(name.as_str()));
    for addresses in allocated.values_mut() {
        addresses.sort_by_key(|address| Family::of(address.address()));
    }
    let instances = desired
        .instances
        .iter()
        .filter(|instance| !short.contains(instance.name.as_str()))
        .map(|instance| match allocated.get(&instance.name) {
            Some(addresses) => Instance {
                addresses: addresses.clone(),
                ..instance.clone()
            },
            None => instance.clone(),
        })
        .collect();
    Allocation {
        desired: Cow::Owned(Desired {
            instances,
            ..desired.clone()
        }),
        allocated,
        exhausted,
    }
}

/// The address of `family` the instance's `eth0` holds in the kernel (in a namespace of
/// kudonet's), if it is one an allocation could have given: in the node's subnet, with its
/// prefix, a host address other than the gateway, not `named` by a document.
fn held(
    instance: &Instance,
    family: Family,
    node: &Node,
    observed: &Observed,
    named: &BTreeSet<IpAddr>,
) -> Option<IpInet> {
    let cidr = node.cidr(family)?;
    let interface = observed.instance_interface(instance)?;
    interface.addresses.iter().copied().find(|address| {
        address.network_length() == cidr.network_length()
            && address.network() == cidr.network()
            && address.address() != cidr.address()
            && is_host(cidr.network(), address.address())
            && !named.contains(&address.address())
    })
}

/// Whether `address` may be given to an instance of `subnet`: not its network address, nor
/// (IPv4) its broadcast address.
fn is_host(subnet: IpCidr, address: IpAddr) -> bool {
    if address == subnet.first_address() {
        return false;
    }
    match subnet {
        IpCidr::V4(_) => address != subnet.last_address(),
        IpCidr::V6(_) => true,
    }
}

/// The lowest host address of `cidr`'s subnet not in `taken`, from `from` on (every address
/// below it is taken), with the subnet's prefix; `from` moves past it.
fn lowest_free(cidr: IpInet, taken: &BTreeSet<IpAddr>, from: &mut u128) -> Option<IpInet> {
    let subnet = cidr.network();
    let last = u128_of(subnet.last_address());
    // Bounded by the taken addresses: each step past one of them moves on by one.
    while *from <= last {
        let address = address_of(subnet.first_address(), *from);
        *from += 1;
        if !taken.contains(&address) && is_host(subnet, address) {
            return IpInet::new(address, cidr.network_length()).ok();
        }
    }
    None
}

fn u128_of(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `value` as an address of the family of `like`.
fn address_of(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{Link, LinkKind, Namespace};

    fn desired(cidrs: &[&str], instances: &[(&str, &[&str])]) -> Desired {
        Desired {
            cluster: None,
            node: Node {
                name: "a".to_string(),
                cidrs: cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect(),
                external_ips: Vec::new(),
                bridge: "kudo0".to_string(),
                uplink: None,
                masquerade: true,
                mtu: None,
            },
            peers: Vec::new(),
            instances: instances
                .iter()
                .map(|(name, addresses)| Instance {
                    name: name.to_string(),
                    id: None,
                    node: "a".to_string(),
                    addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                    ports: Vec::new(),
                    netns: None,
                    interface: "eth0".to_string(),
                })
                .collect(),
            firewall: Default::default(),
        }
    }

    fn holding(observed: &mut Observed, instance: &str, addresses: &[&str]) {
        let mut eth0 = Link::new(LinkKind::Veth);
        eth0.addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
        let namespace = Namespace {
            owned: true,
            links: [("eth0".to_string(), eth0)].into(),
            ..Namespace::default()
        };
        observed
            .namespaces
            .insert(crate::names::namespace_name(instance), namespace);
    }

    fn addresses(allocation: &Allocation) -> Vec<(String, Vec<String>)> {
        allocation
            .desired
            .instances
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.addresses.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_lowest_free_address_of_each_family_in_name_order_skipping_named_ones() {
        let desired = desired(
            &["10.0.0.1/24", "fd00::1/64"],
            &[("b", &[]), ("a", &[]), ("named", &["10.0.0.2/24"])],
        );
        let allocation = allocate(&desired, &Observed::default());
        assert_eq!(
            addresses(&allocation),
            [
                ("b".into(), vec!["10.0.0.4/24".into(), "fd00::3/64".into()]),
                ("a".into(), vec!["10.0.0.3/24".into(), "fd00::2/64".into()]),
                ("named".into(), vec!["10.0.0.2/24".into()]),
            ]
        );
        assert_eq!(allocation.allocated.len(), 2);
        assert!(allocation.exhausted.is_empty());
    }

    #[test]
    fn an_instance_keeps_what_it_holds_unless_a_document_names_it_now() {
        let desired = desired(
            &["10.0.0.1/24"],
            &[("a", &[]), ("b", &[]), ("c", &["10.0.0.9/24"])],
        );
        let mut observed = Observed::default();
        holding(&mut observed, "b", &["10.0.0.2/24"]);
        holding(&mut observed, "a", &["10.0.0.9/24"]);
        let allocation = allocate(&desired, &observed);
        assert_eq!(
            addresses(&allocation),
            [
                ("a".into(), vec!["10.0.0.3/24".into()]),
                ("b".into(), vec!["10.0.0.2/24".into()]),
                ("c".into(), vec!["10.0.0.9/24".into()]),
            ]
        );
        // An address of another subnet, or the gateway, is not kept.
        let mut observed = Observed::default();
        holding(&mut observed, "a", &["10.0.1.5/24"]);
        holding(&mut observed, "b", &["10.0.0.1/24"]);
        let allocation = allocate(&desired, &observed);
        assert_eq!(
            allocation.allocated["a"],
            ["10.0.0.2/24".parse::<IpInet>().unwrap()]
        );
        assert_eq!(
            allocation.allocated["b"],
            ["10.0.0.3/24".parse::<IpInet>().unwrap()]
        );
    }

    #[test]
    fn an_address_still_on_a_namespace_of_kudonets_is_not_given_again() {
        // `old` is going (not desired) but its eth0 still holds 10.0.0.2; a foreign
        // namespace's addresses are not kudonet's to count.
        let desired = desired(&["10.0.0.1/24"], &[("new", &[])]);
        let mut observed = Observed::default();
        holding(&mut observed, "old", &["10.0.0.2/24"]);
        holding(&mut observed, "foreign", &["10.0.0.3/24"]);
        observed.namespaces.get_mut("kudo-foreign").unwrap().owned = false;
        let allocation = allocate(&desired, &observed);
        assert_eq!(
            allocation.allocated["new"],
            ["10.0.0.3/24".parse::<IpInet>().unwrap()]
        );
        // Nor is a foreign namespace of the instance's name its own.
        holding(&mut observed, "new", &["10.0.0.9/24"]);
        observed.namespaces.get_mut("kudo-new").unwrap().owned = false;
        assert_eq!(
            allocate(&desired, &observed).allocated["new"],
            ["10.0.0.3/24".parse::<IpInet>().unwrap()]
        );
    }

    #[test]
    fn fifty_thousand_instances_get_fifty_thousand_addresses() {
        let names: Vec<String> = (0..50_000).map(|index| format!("i{index:05}")).collect();
        let instances: Vec<(&str, &[&str])> =
            names.iter().map(|name| (name.as_str(), &[][..])).collect();
        let desired = desired(&["10.0.0.1/16", "fd00::1/64"], &instances);
        let allocation = allocate(&desired, &Observed::default());
        assert!(allocation.exhausted.is_empty());
        let first = &allocation.desired.instances[0].addresses;
        let last = &allocation.desired.instances[49_999].addresses;
        assert_eq!(
            (first[0].to_string(), first[1].to_string()),
            ("10.0.0.2/16".to_string(), "fd00::2/64".to_string())
        );
        // From .2 on, the 50,000th is at offset 50,001 = 195 * 256 + 81 = 0xc351.
        assert_eq!(
            (last[0].to_string(), last[1].to_string()),
            ("10.0.195.81/16".to_string(), "fd00::c351/64".to_string())
        );
        let distinct: BTreeSet<IpInet> = allocation.allocated.values().flatten().copied().collect();
        assert_eq!(distinct.len(), 100_000);
    }

    #[test]
    fn a_full_subnet_leaves_the_instance_out_with_why() {
        // A /30 has two host addresses: the gateway and one more.
        let desired = desired(&["10.0.0.1/30"], &[("a", &[]), ("b", &[])]);
        let allocation = allocate(&desired, &Observed::default());
        assert_eq!(
            addresses(&allocation),
            [("a".into(), vec!["10.0.0.2/30".into()])]
        );
        assert_eq!(
            allocation.exhausted,
            [(
                "b".to_string(),
                "no free IPv4 address left in 10.0.0.0/30 for Instance \"b\"".to_string()
            )]
        );
    }
}
