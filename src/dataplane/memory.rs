//! A dataplane over an in-memory [`Observed`], refusing what the kernel refuses (creating
//! what exists, deleting what does not, routing through a link that is down) and cascading
//! what the kernel cascades (deleting one end of a veth deletes the other). Property tests
//! use it to prove that plans converge.

use super::{Cause, Dataplane, DataplaneError};
use crate::names;
use crate::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Vxlan};
use crate::plan::Action;

/// The loopback MTU the kernel gives a new namespace's `lo`.
const LOOPBACK_MTU: u32 = 65536;

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
        let removed = match &link.netns {
            None => self.state.links.remove(&link.name),
            Some(netns) => {
                let namespace = self.state.namespaces.get_mut(netns)?;
                let removed = namespace.links.remove(&link.name)?;
                // Its routes go with it; an instance namespace routes only through eth0.
                if link.name == names::INSTANCE_INTERFACE {
                    namespace.default_gateway = None;
                }
                Some(removed)
            }
        }?;
        if let Some(peer) = &removed.peer {
            self.remove_link(peer);
        }
        if link.netns.is_none() {
            for port in self.state.links.values_mut() {
                if port.master.as_ref() == Some(&link.name) {
                    port.master = None;
                    port.hairpin = false;
                }
            }
            let prefix = format!("net.ipv4.conf.{}.", link.name);
            self.state
                .sysctls
                .retain(|key, _| !key.starts_with(&prefix));
        }
        Some(removed)
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
                    default_gateway: None,
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
                if self.state.links.contains_key(name) {
                    return Err(Rejected("link exists".into()));
                }
                let bridge = Link {
                    alias: Some(names::bridge_alias()),
                    mtu: mtu.unwrap_or(Link::new(LinkKind::Bridge).mtu),
                    ..Link::new(LinkKind::Bridge)
                };
                self.state.links.insert(name.clone(), bridge);
                self.state
                    .sysctls
                    .insert(crate::plan::route_localnet(name), "0".into());
            }
            Action::CreateVeth {
                host,
                namespace,
                instance,
                mtu,
            } => {
                let eth0 = LinkRef::in_namespace(namespace, names::INSTANCE_INTERFACE);
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
                let port = self
                    .state
                    .links
                    .get_mut(link)
                    .ok_or_else(|| no_such_link(&LinkRef::host(link)))?;
                if port.master.as_ref() != Some(bridge) {
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
            Action::AddAddress { link, address } => {
                if !self
                    .link_mut(link)
                    .ok_or_else(|| no_such_link(link))?
                    .addresses
                    .insert(*address)
                {
                    return Err(Rejected("address exists".into()));
                }
            }
            Action::DeleteAddress { link, address } => {
                if !self
                    .link_mut(link)
                    .ok_or_else(|| no_such_link(link))?
                    .addresses
                    .remove(address)
                {
                    return Err(Rejected("no such address".into()));
                }
            }
            Action::ReplaceDefaultRoute { namespace, gateway } => {
                let inside = self
                    .state
                    .namespaces
                    .get_mut(namespace)
                    .ok_or("no such namespace")?;
                let reachable = inside
                    .links
                    .get(names::INSTANCE_INTERFACE)
                    .is_some_and(|eth0| {
                        eth0.up
                            && eth0
                                .addresses
                                .iter()
                                .any(|address| address.network().contains(gateway))
                    });
                if !reachable {
                    return Err(Rejected("network is unreachable".into()));
                }
                inside.default_gateway = Some(*gateway);
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
                // of kudonet's, never for `all`, `default` or anyone else's interface.
                if let Some(device) = crate::plan::sysctl_interface(key)
                    && !self
                        .state
                        .links
                        .get(device)
                        .is_some_and(Link::is_kudonet_bridge)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
