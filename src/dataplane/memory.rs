//! A dataplane over an in-memory [`Observed`], refusing what the kernel refuses (creating
//! what exists, deleting what does not, routing through a link that is down, a port more
//! than a bridge takes, a vxlan flood entry of another family than the device's) and
//! cascading what the kernel cascades (deleting one end of a veth
//! deletes the other, deleting a link its routes). Property tests use it to prove that
//! plans converge.

use std::net::IpAddr;

use super::{Cause, Dataplane, DataplaneError};
use crate::names;
use crate::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Vxlan};
use crate::plan::Action;
use crate::spec::Family;

/// The loopback MTU the kernel gives a new namespace's `lo`.
const LOOPBACK_MTU: u32 = 65536;

/// How many ports a Linux bridge takes: the kernel numbers them in 10 bits
/// (`BR_MAX_PORTS`, 1024) and keeps 0 for itself.
pub const BRIDGE_PORTS: usize = 1023;

/// A dataplane in memory: applies each action to an [`Observed`] as the kernel would, so the
/// planner can be tested (golden, property and fuzz tests) without a kernel.
#[derive(Debug, Clone, Default)]
pub struct MemoryDataplane {
    /// The node as it is now.
    pub state: Observed,
    /// How many actions were applied: a converged node needs none.
    pub writes: usize,
}

impl MemoryDataplane {
    /// A dataplane whose node is `state`, with no write counted yet.
    pub fn new(state: Observed) -> MemoryDataplane {
        MemoryDataplane { state, writes: 0 }
    }

    fn link_mut(&mut self, link: &LinkRef) -> Option<&mut Link> {
        match &link.netns {
            None => self.state.links.get_mut(&link.name),
            Some(netns) => self
                .state
                .namespaces
                .get_mut(netns)?
                .links
                .get_mut(&link.name),
        }
    }

    /// Removes a link and what the kernel removes with it.
    fn remove_link(&mut self, link: &LinkRef) -> Option<Link> {
        self.remove_link_of(link, None)
    }

    /// [`Self::remove_link`], `kudonets` telling whether a link inside a namespace is
    /// kudonet's when the caller knows (the host end it just removed was).
    fn remove_link_of(&mut self, link: &LinkRef, kudonets: Option<bool>) -> Option<Link> {
        let removed = match &link.netns {
            None => self.state.links.remove(&link.name),
            Some(netns) => {
                // kudonet's: in a namespace of kudonet's, any; in someone else's, the other
                // end of a host veth of kudonet's.
                let kudonets = kudonets.unwrap_or_else(|| {
                    let namespace = self.state.namespaces.get(netns);
                    let host = namespace
                        .and_then(|namespace| namespace.links.get(&link.name))
                        .and_then(|inside| inside.peer.as_ref())
                        .filter(|peer| peer.netns.is_none())
                        .and_then(|peer| self.state.links.get(&peer.name));
                    namespace.is_some_and(|namespace| namespace.owned)
                        || host.is_some_and(Link::is_owned)
                });
                let namespace = self.state.namespaces.get_mut(netns)?;
                let removed = namespace.links.remove(&link.name)?;
                // Its routes go with it: kudonet's go through its interfaces, those of a
                // namespace's owner through theirs. The model records no route's device: a
                // default route goes unless a link left has an address in its gateway's
                // subnet (the interface another instance left there, say).
                if link.name != "lo" {
                    let links = &namespace.links;
                    let carried = |gateway: &IpAddr| {
                        links
                            .iter()
                            .filter(|(name, _)| name.as_str() != "lo")
                            .any(|(_, link)| {
                                link.addresses
                                    .iter()
                                    .any(|address| address.network().contains(gateway))
                            })
                    };
                    if kudonets {
                        namespace.default_gateways.retain(carried);
                        namespace.onlink_gateways.retain(carried);
                    } else {
                        namespace.others_default_gateways.retain(carried);
                    }
                }
                Some(removed)
            }
        }?;
        if let Some(peer) = &removed.peer {
            self.remove_link_of(peer, Some(removed.is_owned()));
        }
        if link.netns.is_none() {
            for port in self.state.links.values_mut() {
                if port.master.as_ref() == Some(&link.name) {
                    port.master = None;
                    port.hairpin = false;
                }
            }
            self.state
                .sysctls
                .retain(|key, _| crate::plan::sysctl_interface(key) != Some(&link.name));
            self.state
                .routes
                .retain(|_, route| route.device.as_ref() != Some(&link.name));
        }
        Some(removed)
    }

    /// A bridge marked with `alias`, down, with the settings the kernel gives a new
    /// interface.
    fn create_bridge(
        &mut self,
        name: &str,
        alias: String,
        mtu: Option<u32>,
    ) -> Result<(), Rejected> {
        if self.state.links.contains_key(name) {
            return Err(Rejected("link exists".into()));
        }
        let bridge = Link {
            alias: Some(alias),
            mtu: mtu.unwrap_or(Link::new(LinkKind::Bridge).mtu),
            ..Link::new(LinkKind::Bridge)
        };
        self.state.links.insert(name.to_string(), bridge);
        for (key, value) in [
            (crate::plan::route_localnet(name), "0"),
            (crate::plan::proxy_arp(name), "0"),
            (crate::plan::proxy_delay(name), "80"),
        ] {
            self.state.sysctls.insert(key, value.into());
        }
        // Proxy neighbour discovery is kudonet's business on the node's bridge alone (as
        // the kernel dataplane reads it).
        if self.state.links[name].is_kudonet_bridge() {
            for (key, value) in [
                (crate::plan::proxy_ndp(name), "0"),
                (crate::plan::proxy_ndp_delay(name), "80"),
            ] {
                self.state.sysctls.insert(key, value.into());
            }
        }
        Ok(())
    }

    fn apply_action(&mut self, action: &Action) -> Result<(), Rejected> {
        let no_such_link = |link: &LinkRef| Rejected(format!("no link {link}"));
        match action {
            Action::CreateNamespace { name } => {
                if self.state.namespaces.contains_key(name) {
                    return Err(Rejected("namespace exists".into()));
                }
                let lo = Link {
                    mtu: LOOPBACK_MTU,
                    ..Link::new(LinkKind::Loopback)
                };
                let namespace = Namespace {
                    owned: true,
                    links: [("lo".to_string(), lo)].into(),
                    ..Namespace::default()
                };
                self.state.namespaces.insert(name.clone(), namespace);
            }
            Action::DeleteNamespace { name } => {
                let namespace = self
                    .state
                    .namespaces
                    .remove(name)
                    .ok_or("no such namespace")?;
                for peer in namespace
                    .links
                    .values()
                    .filter_map(|link| link.peer.as_ref())
                {
                    self.remove_link(peer);
                }
            }
            Action::CreateBridge { name, mtu } => {
                self.create_bridge(name, names::bridge_alias(), *mtu)?
            }
            Action::CreateSegment { name, mtu, .. } => {
                self.create_bridge(name, names::segment_alias(), *mtu)?
            }
            Action::CreateVeth {
                host,
                namespace,
                interface,
                instance,
                mtu,
            } => {
                let eth0 = LinkRef::in_namespace(namespace, interface);
                let inside = self
                    .state
                    .namespaces
                    .get(namespace)
                    .ok_or("no such namespace")?;
                if self.state.links.contains_key(host) || inside.links.contains_key(&eth0.name) {
                    return Err(Rejected("link exists".into()));
                }
                let end = |alias: Option<String>, peer: LinkRef| Link {
                    alias,
                    mtu: mtu.unwrap_or(Link::new(LinkKind::Veth).mtu),
                    peer: Some(peer),
                    ..Link::new(LinkKind::Veth)
                };
                let host_end = end(Some(names::instance_alias(instance)), eth0.clone());
                let inner_end = end(None, LinkRef::host(host));
                self.state.links.insert(host.clone(), host_end);
                if let Some(inside) = self.state.namespaces.get_mut(namespace) {
                    inside.links.insert(eth0.name, inner_end);
                }
            }
            Action::DeleteLink { link } => {
                let existing = self.link_mut(link).ok_or_else(|| no_such_link(link))?;
                if existing.kind == LinkKind::Loopback {
                    return Err(Rejected(
                        "operation not supported: a loopback cannot be deleted".into(),
                    ));
                }
                self.remove_link(link);
            }
            Action::SetMtu { link, mtu } => {
                self.link_mut(link).ok_or_else(|| no_such_link(link))?.mtu = *mtu
            }
            Action::SetUp { link } => {
                self.link_mut(link).ok_or_else(|| no_such_link(link))?.up = true
            }
            Action::SetMaster { link, bridge } => {
                if self
                    .state
                    .links
                    .get(bridge)
                    .is_none_or(|bridge| bridge.kind != LinkKind::Bridge)
                {
                    return Err(Rejected(format!("no bridge {bridge}")));
                }
                let ports = self
                    .state
                    .links
                    .values()
                    .filter(|port| port.master.as_ref() == Some(bridge))
                    .count();
                let port = self
                    .state
                    .links
                    .get_mut(link)
                    .ok_or_else(|| no_such_link(&LinkRef::host(link)))?;
                if port.master.as_ref() != Some(bridge) {
                    if ports >= BRIDGE_PORTS {
                        // EXFULL, in the kernel's words.
                        return Err(Rejected("Exchange full".into()));
                    }
                    port.master = Some(bridge.clone());
                    port.hairpin = false;
                }
            }
            Action::SetHairpin { link } => {
                let port = self
                    .state
                    .links
                    .get_mut(link)
                    .ok_or_else(|| no_such_link(&LinkRef::host(link)))?;
                if port.master.is_none() {
                    return Err(Rejected("not a bridge port".into()));
                }
                port.hairpin = true;
            }
            Action::AddAddress {
                link,
                address,
                no_prefix_route,
            } => {
                let target = self.link_mut(link).ok_or_else(|| no_such_link(link))?;
                if !target.addresses.insert(*address) {
                    return Err(Rejected("address exists".into()));
                }
                match no_prefix_route {
                    true => target.no_prefix_route.insert(*address),
                    false => target.no_prefix_route.remove(address),
                };
            }
            Action::DeleteAddress { link, address } => {
                let target = self.link_mut(link).ok_or_else(|| no_such_link(link))?;
                if !target.addresses.remove(address) {
                    return Err(Rejected("no such address".into()));
                }
                target.no_prefix_route.remove(address);
                // As the kernel does: an instance's IPv4 default route goes with its last
                // IPv4 address (an IPv6 one stays: the plan deletes it).
                let family_left = target.addresses.iter().any(|other| other.is_ipv4());
                if let Some(netns) = &link.netns
                    && link.name != "lo"
                    && address.is_ipv4()
                    && !family_left
                    && let Some(namespace) = self.state.namespaces.get_mut(netns)
                {
                    drop_default_route(namespace, Family::Ipv4);
                }
            }
            Action::DeleteDefaultRoute { namespace, gateway } => {
                // Already gone (with its address) is no error, as in the kernel dataplane.
                if let Some(inside) = self.state.namespaces.get_mut(namespace) {
                    drop_default_route(inside, Family::of(*gateway));
                }
            }
            Action::ReplaceDefaultRoute {
                namespace,
                interface,
                gateway,
                onlink,
            } => {
                let inside = self
                    .state
                    .namespaces
                    .get_mut(namespace)
                    .ok_or("no such namespace")?;
                let eth0 = inside
                    .links
                    .get(interface)
                    .ok_or_else(|| no_such_link(&LinkRef::in_namespace(namespace, interface)))?;
                // Through a route to an address's subnet on the interface, or declared
                // on-link there.
                let reachable = eth0.up
                    && (*onlink
                        || eth0.addresses.iter().any(|address| {
                            address.network().contains(gateway)
                                && !eth0.no_prefix_route.contains(address)
                        }));
                if !reachable {
                    return Err(Rejected("network is unreachable".into()));
                }
                // One default route per family (and metric: the kernel's default for all,
                // the model's owners' included): it replaces that family's, whoever's.
                let family = Family::of(*gateway);
                drop_default_route(inside, family);
                inside
                    .others_default_gateways
                    .retain(|theirs| Family::of(*theirs) != family);
                inside.default_gateways.insert(*gateway);
                if *onlink {
                    inside.onlink_gateways.insert(*gateway);
                }
            }
            Action::AddProxyNeighbour { link, address } => {
                // The kernel adds or updates an entry, whatever was there.
                let target = self
                    .state
                    .links
                    .get_mut(link)
                    .ok_or_else(|| no_such_link(&LinkRef::host(link)))?;
                target.foreign_proxy_neighbours.remove(address);
                target.proxy_neighbours.insert(*address);
            }
            Action::DeleteProxyNeighbour { link, address } => {
                let target = self
                    .state
                    .links
                    .get_mut(link)
                    .ok_or_else(|| no_such_link(&LinkRef::host(link)))?;
                if !target.proxy_neighbours.remove(address) {
                    return Err(Rejected("no such entry".into()));
                }
            }
            Action::ReplaceLinkRoute {
                destination,
                device,
            } => {
                if !self.state.links.get(device).is_some_and(|link| link.up) {
                    return Err(Rejected(format!("network is down: {device}")));
                }
                let route = Route {
                    gateway: None,
                    device: Some(device.clone()),
                    owned: true,
                };
                self.state.routes.insert(*destination, route);
            }
            Action::ReplaceRoute {
                destination,
                gateway,
                device,
            } => {
                if let Some(device) = device
                    && !self.state.links.get(device).is_some_and(|link| link.up)
                {
                    return Err(Rejected(format!("network is down: {device}")));
                }
                let route = Route {
                    gateway: Some(*gateway),
                    device: device.clone(),
                    owned: true,
                };
                self.state.routes.insert(*destination, route);
            }
            Action::CreateVxlan {
                name,
                id,
                local,
                port,
                uplink,
                mtu,
            } => {
                if self.state.links.contains_key(name) {
                    return Err(Rejected("link exists".into()));
                }
                let vxlan = Link {
                    alias: Some(names::vxlan_alias()),
                    mtu: mtu.unwrap_or(Link::new(LinkKind::Vxlan).mtu),
                    vxlan: Some(Vxlan {
                        id: *id,
                        local: *local,
                        port: *port,
                        device: uplink.clone(),
                    }),
                    ..Link::new(LinkKind::Vxlan)
                };
                self.state.links.insert(name.clone(), vxlan);
            }
            Action::AddFlood { link, destination } => {
                let vxlan = self
                    .state
                    .links
                    .get_mut(link)
                    .filter(|l| l.kind == LinkKind::Vxlan)
                    .ok_or("no such vxlan")?;
                // As the kernel: a device tunnels over its local address's family (IPv4
                // without one), EAFNOSUPPORT for a destination of the other.
                let local = vxlan.vxlan.as_ref().and_then(|settings| settings.local);
                if local.is_some_and(|local| local.is_ipv6()) != destination.is_ipv6() {
                    return Err(Rejected("Address family not supported by protocol".into()));
                }
                if !vxlan.flood.insert(*destination) {
                    return Err(Rejected("entry exists".into()));
                }
            }
            Action::DeleteFlood { link, destination } => {
                let vxlan = self
                    .state
                    .links
                    .get_mut(link)
                    .filter(|l| l.kind == LinkKind::Vxlan)
                    .ok_or("no such vxlan")?;
                if !vxlan.flood.remove(destination) {
                    return Err(Rejected("no such entry".into()));
                }
            }
            Action::DeleteRoute { destination } => {
                self.state
                    .routes
                    .remove(destination)
                    .ok_or("no such route")?;
            }
            Action::SetSysctl { key, value } => {
                // As the kernel dataplane: a per-interface sysctl only for an existing bridge
                // of kudonet's (its segments included), never for `all`, `default` or anyone
                // else's interface.
                if let Some(device) = crate::plan::sysctl_interface(key)
                    && !self
                        .state
                        .links
                        .get(device)
                        .is_some_and(|link| link.is_kudonet_bridge() || link.is_kudonet_segment())
                {
                    return Err(Rejected(format!(
                        "refusing to set {key}: {device} is not kudonet's bridge"
                    )));
                }
                self.state.sysctls.insert(key.clone(), value.clone());
            }
            Action::SyncTable {
                table,
                chains,
                jumps,
                ..
            } => {
                // The same semantics as the kernel's sync, by construction.
                let current = self.state.firewall.entry(table.clone()).or_default();
                *current = crate::observed::synced_table(current, chains, jumps);
            }
            Action::PurgeOtherBackend { table } => {
                let current = self
                    .state
                    .other_backend
                    .get_mut(table)
                    .ok_or_else(|| Rejected("no such table in the other backend".into()))?;
                *current = crate::observed::synced_table(
                    current,
                    &Default::default(),
                    &Default::default(),
                );
            }
            Action::SyncNftables { ruleset, .. } => {
                if self.state.foreign_nftables {
                    return Err(Rejected("table inet kudonet is not kudonet's".into()));
                }
                self.state.nftables = Some(ruleset.clone());
            }
            Action::DeleteNftables => {
                self.state
                    .nftables
                    .take()
                    .ok_or_else(|| Rejected("no table inet kudonet".into()))?;
            }
        }
        Ok(())
    }
}

impl Dataplane for MemoryDataplane {
    fn observe(&mut self) -> Result<Observed, DataplaneError> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, action: &Action) -> Result<(), DataplaneError> {
        self.writes += 1;
        self.apply_action(action).map_err(|rejected| {
            // The in-memory node's refusals mirror the kernel's answers to races (a link
            // that exists, one that is gone), which a later pass can get past.
            let retry = !rejected.0.starts_with("refusing");
            DataplaneError::action(action, Cause::new(rejected, retry))
        })
    }
}

/// Why the in-memory node refused an action, in the kernel's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct Rejected(String);

impl From<&str> for Rejected {
    fn from(reason: &str) -> Rejected {
        Rejected(reason.to_string())
    }
}

/// Removes `namespace`'s default route of `family` (one per family, as in the kernel).
fn drop_default_route(namespace: &mut Namespace, family: Family) {
    namespace
        .default_gateways
        .retain(|gateway| Family::of(*gateway) != family);
    namespace
        .onlink_gateways
        .retain(|gateway| Family::of(*gateway) != family);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Linux: a bridge takes 1023 ports; attaching one more fails with EXFULL, and
    /// leaves the link as it was.
    #[test]
    fn a_bridge_refuses_a_port_more_than_the_kernel_takes() {
        let mut dataplane = MemoryDataplane::default();
        let create = Action::CreateBridge {
            name: "kudo0".to_string(),
            mtu: None,
        };
        dataplane.apply(&create).unwrap();
        for port in 0..=BRIDGE_PORTS {
            let link = Link::new(LinkKind::Veth);
            dataplane.state.links.insert(format!("v{port}"), link);
        }
        let attach = |port: usize| Action::SetMaster {
            link: format!("v{port}"),
            bridge: "kudo0".to_string(),
        };
        for port in 0..BRIDGE_PORTS {
            dataplane.apply(&attach(port)).unwrap();
        }
        let error = dataplane.apply(&attach(BRIDGE_PORTS)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "~ link v1023: attach to bridge kudo0: Exchange full"
        );
        assert_eq!(dataplane.state.links["v1023"].master, None);
        // Re-attaching a port is no new port.
        dataplane.apply(&attach(0)).unwrap();
    }

    /// As the kernel dataplane: a per-interface sysctl only for an existing bridge of
    /// kudonet's, never for `all`, `default` or a bridge of someone else's.
    #[test]
    fn per_interface_sysctls_are_refused_but_for_kudonets_own_bridge() {
        let mut state = Observed::default();
        state
            .links
            .insert("br-x".to_string(), Link::new(LinkKind::Bridge));
        let mut own = Link::new(LinkKind::Bridge);
        own.alias = Some(names::bridge_alias());
        state.links.insert("kudo0".to_string(), own);
        let mut dataplane = MemoryDataplane::new(state);
        let set = |device: &str| Action::SetSysctl {
            key: format!("net.ipv4.conf.{device}.route_localnet"),
            value: "1".to_string(),
        };
        for device in ["all", "default", "br-x", "eth9"] {
            let error = dataplane.apply(&set(device)).unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "refusing to set net.ipv4.conf.{device}.route_localnet: {device} is not kudonet's bridge"
                )),
                "{error}"
            );
        }
        dataplane.apply(&set("kudo0")).unwrap();
        let observed = dataplane.observe().unwrap();
        assert_eq!(
            observed.sysctls.keys().collect::<Vec<_>>(),
            ["net.ipv4.conf.kudo0.route_localnet"]
        );
        // Its segments' too, neighbour settings included; never the defaults of all.
        let segment = Action::CreateSegment {
            name: "kudo-seg1".to_string(),
            bridge: "kudo0".to_string(),
            mtu: None,
        };
        dataplane.apply(&segment).unwrap();
        let delay = |device: &str| Action::SetSysctl {
            key: format!("net.ipv4.neigh.{device}.proxy_delay"),
            value: "0".to_string(),
        };
        dataplane.apply(&delay("kudo-seg1")).unwrap();
        let error = dataplane.apply(&delay("default")).unwrap_err().to_string();
        assert!(
            error.contains(
                "refusing to set net.ipv4.neigh.default.proxy_delay: default is not kudonet's bridge"
            ),
            "{error}"
        );
    }
}
