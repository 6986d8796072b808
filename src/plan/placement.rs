//! Which bridge each instance's host veth is a port of.
//!
//! A node puts at most [`BRIDGE_INSTANCES`] instances on a bridge: its own bridge first,
//! then segments (`kudo-seg1`, `kudo-seg2`, ...), bridges of kudonet's that hold the
//! gateway address too and that the node routes between (docs/file-format.md, "How many
//! instances a node holds"). Placement is stable: an instance stays on the bridge it is a
//! port of, as long as that bridge is one of the node's and not over its room; the others
//! take, in name order, the first bridge with room.

use std::collections::{BTreeMap, BTreeSet};

use crate::names;
use crate::observed::{LinkKind, Observed};
use crate::spec::{Desired, MAX_BRIDGES};

pub use crate::spec::BRIDGE_INSTANCES;

/// The bridge of every placed instance of a desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Instance name -> its bridge. Missing: no room left (or a conflict holds it back
    /// anyway, see [`Observed::held_back`]).
    bridges: BTreeMap<String, String>,
    /// How many instances a bridge holds.
    pub bridge_instances: usize,
}

impl Placement {
    /// The bridge instance `name` is a port of, or `None` when no bridge has room for it.
    pub fn bridge_of(&self, name: &str) -> Option<&str> {
        self.bridges.get(name).map(String::as_str)
    }

    /// The segments holding an instance, in order: the node needs exactly these.
    pub fn segments(&self) -> BTreeSet<&str> {
        self.bridges
            .values()
            .filter(|bridge| names::segment_number(bridge).is_some())
            .map(String::as_str)
            .collect()
    }
}

/// Places the instances of `desired` on the node's bridges, `bridge_instances` a bridge
/// ([`BRIDGE_INSTANCES`] but in tests).
///
/// The bridges, in order, are the node's own and its segments `kudo-seg1` to
/// `kudo-seg99`; a segment's name held by a link that is not kudonet's is skipped. An
/// instance whose host veth is a port of one of them stays there (unless that veth goes
/// with a namespace of kudonet's the instance left), the first by name up to the bridge's
/// room (more are only found on a node built with a larger room). The others,
/// in name order, take the first bridge with room; ports of others on a bridge take room
/// too. An instance that something of someone else's holds back (its namespace, a link
/// with the name of its host interface or of its interface) is not placed: a conflict
/// holds it back ([`Observed::held_back`]).
pub fn place(desired: &Desired, observed: &Observed, bridge_instances: usize) -> Placement {
    let node_bridge = &desired.node.bridge;
    // The bridges an instance may be on, in order of filling.
    let bridges: Vec<String> = std::iter::once(node_bridge.clone())
        .chain(
            (1..MAX_BRIDGES)
                .map(names::segment_name)
                .filter(|name| observed.links.get(name).is_none_or(|link| link.is_owned())),
        )
        .collect();
    let order: BTreeMap<&str, usize> = bridges
        .iter()
        .enumerate()
        .map(|(index, name)| (name.as_str(), index))
        .collect();
    // The namespaces that stay: a host veth whose other end is in one of kudonet's that no
    // instance has any more (the instance moved to another namespace) goes with that
    // namespace before anything is placed, and holds no place (else the bridge it was on
    // would be kept for a port that is gone, while a blocked node builds no new one).
    let staying: BTreeSet<String> = desired.instances.iter().map(|i| i.namespace()).collect();
    let goes_with_its_namespace = |netns: &String| {
        !staying.contains(netns)
            && observed
                .namespaces
                .get(netns)
                .is_some_and(|namespace| namespace.owned)
    };
    // Where an instance is now, if that counts: a port of one of the node's bridges.
    let current = |name: &str| {
        let alias = names::instance_alias(name);
        let port = observed.links.get(&names::host_interface_name(name))?;
        if port.kind != LinkKind::Veth || port.alias.as_ref() != Some(&alias) {
            return None;
        }
        if port
            .peer
            .as_ref()
            .and_then(|peer| peer.netns.as_ref())
            .is_some_and(goes_with_its_namespace)
        {
            return None;
        }
        let bridge = port.master.as_ref()?;
        let is_ours = bridge == node_bridge
            || observed
                .links
                .get(bridge)
                .is_some_and(|link| link.is_kudonet_segment());
        is_ours
            .then(|| order.get(bridge.as_str()).copied())
            .flatten()
    };

    let mut on: Vec<Vec<&str>> = vec![Vec::new(); bridges.len()];
    let mut unplaced = Vec::new();
    for instance in &desired.instances {
        if observed.held_back(instance) {
            continue;
        }
        match current(&instance.name) {
            Some(index) => on[index].push(instance.name.as_str()),
            None => unplaced.push(instance.name.as_str()),
        }
    }
    // Ports of others, by bridge.
    let mut others: BTreeMap<&str, usize> = BTreeMap::new();
    for link in observed.links.values().filter(|link| !link.is_owned()) {
        if let Some(master) = &link.master {
            *others.entry(master.as_str()).or_default() += 1;
        }
    }
    let mut placed = BTreeMap::new();
    let mut free = Vec::with_capacity(bridges.len());
    for (bridge, instances) in bridges.iter().zip(&mut on) {
        // Over the room (a node built with a larger one): the last by name move.
        unplaced.extend(instances.split_off(instances.len().min(bridge_instances)));
        let others = others.get(bridge.as_str()).copied().unwrap_or_default();
        free.push(bridge_instances.saturating_sub(others + instances.len()));
        placed.extend(
            instances
                .iter()
                .map(|name| (name.to_string(), bridge.clone())),
        );
    }
    unplaced.sort_unstable();
    for name in unplaced {
        if let Some(index) = free.iter().position(|free| *free > 0) {
            free[index] -= 1;
            placed.insert(name.to_string(), bridges[index].clone());
        }
    }
    Placement {
        bridges: placed,
        bridge_instances,
    }
}
