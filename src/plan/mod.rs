//! The planner: `plan(&Desired, &Observed) -> Plan`. Pure and deterministic; this is where
//! kudonet's logic lives.
//!
//! A plan lists, in an order the kernel accepts, the actions that turn what is observed into
//! what is desired, touching only what kudonet owns:
//!
//! 1. deletions of what kudonet owns but no longer wants (dependants first: a veth before
//!    its namespace, routes before nothing else needs them);
//! 2. the bridge and node-wide settings, and in a vxlan cluster the overlay device;
//! 3. the segments, the extra bridges of a node with more instances than a bridge holds
//!    (see [`placement`]);
//! 4. each instance: namespace, veth pair, then their addresses, state and routes;
//! 5. routes to peer nodes;
//! 6. the firewall, one transaction per table.
//!
//! Something foreign in the way (a link on the bridge's name, a namespace named like an
//! instance's that kudonet did not create) is never touched: it becomes a [`Conflict`] and
//! whatever depends on it is left out of the plan.
//!
//! Every action and conflict says what it is for, its [`Scope`]: an instance of the desired
//! state (what the instance's own planning step produced, and the removal of a stale link
//! under its host interface's name), or the node as a whole (everything else, including the
//! removal of what belonged to instances no longer desired).

mod action;
pub mod allocate;
pub(crate) mod firewall;
pub mod nftables;
pub mod placement;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use action::{Action, Effect, Scope, Step};
use firewall::TableRules;
pub use placement::{BRIDGE_INSTANCES, Placement};

use crate::names;
use crate::observed::{Link, LinkKind, LinkRef, Observed, Table};
use std::net::IpAddr;

use cidr::{IpCidr, IpInet};

use crate::spec::{ClusterMode, Desired, Family, FirewallBackend, Instance, MAX_BRIDGES};

pub use crate::names::{
    IP_FORWARD, IPV6_FORWARDING, proxy_arp, proxy_delay, proxy_ndp, proxy_ndp_delay,
    route_localnet, sysctl_interface,
};

/// Something foreign stands where kudonet needs to put one of its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The instance held back by the conflict, or the node as a whole.
    pub scope: Scope,
    /// `Conflict` for a foreign object in the way, `UplinkOverlap` for a node subnet the
    /// uplink uses (see `reconcile::Condition`).
    pub kind: &'static str,
    /// What is wrong and what the operator can do about it.
    pub message: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The actions that converge the node, in order, each with its scope, and what stops some
/// of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The actions in the order they must be applied, each with what it is for.
    pub steps: Vec<Step>,
    /// What stands in the way of some actions (a foreign object, a node subnet the uplink
    /// uses), each with the scope it holds back.
    pub conflicts: Vec<Conflict>,
    /// Whether a conflict stops the whole node (a foreign link holds the bridge's name):
    /// then nothing about instances was planned.
    pub blocked: bool,
    /// The addresses given to instances that name none, by instance (see
    /// [`allocate::allocate`]).
    pub allocated: BTreeMap<String, Vec<IpInet>>,
}

impl Plan {
    /// Whether no action is left (conflicts may remain).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The actions, in order, without their scope.
    pub fn actions(&self) -> impl ExactSizeIterator<Item = &Action> + Clone {
        self.steps.iter().map(|step| &step.action)
    }

    /// The actions, in order, as a list of their own (to apply them all at once).
    pub fn to_actions(&self) -> Vec<Action> {
        self.actions().cloned().collect()
    }

    /// The actions for the node as a whole, in order.
    pub fn node_actions(&self) -> impl Iterator<Item = &Action> {
        self.steps
            .iter()
            .filter(|step| step.scope.is_node())
            .map(|step| &step.action)
    }

    /// How many actions add, change and destroy something.
    pub fn counts(&self) -> (usize, usize, usize) {
        count_effects(self.actions())
    }
}

/// How many of `actions` add, change and destroy something.
pub fn count_effects<'a>(
    actions: impl IntoIterator<Item = &'a Action> + Clone,
) -> (usize, usize, usize) {
    let count = |effect| {
        actions
            .clone()
            .into_iter()
            .filter(|action| action.effect() == effect)
            .count()
    };
    (
        count(Effect::Add),
        count(Effect::Change),
        count(Effect::Destroy),
    )
}

impl fmt::Display for Plan {
    /// One action a line, then the summary: `Plan: N to add, M to change, K to destroy.`, or
    /// `No changes.` when the node is converged. Conflicts follow, one a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for action in self.actions() {
            writeln!(f, "{action}")?;
        }
        if self.steps.is_empty() && self.conflicts.is_empty() {
            writeln!(f, "No changes.")?;
        } else {
            let (add, change, destroy) = self.counts();
            writeln!(
                f,
                "Plan: {add} to add, {change} to change, {destroy} to destroy."
            )?;
        }
        for conflict in &self.conflicts {
            writeln!(f, "conflict: {conflict}")?;
        }
        Ok(())
    }
}

/// The node's uplink: its `uplink:`, else the interface of the default route, if any.
pub fn uplink<'a>(desired: &'a Desired, observed: &'a Observed) -> Option<&'a str> {
    desired
        .node
        .uplink
        .as_deref()
        .or(observed.default_route_interface.as_deref())
}

/// The node's uplink for traffic of `family`: its `uplink:`, else the interface of the
/// default route of that family, else [`uplink`].
pub fn uplink_of<'a>(
    desired: &'a Desired,
    observed: &'a Observed,
    family: Family,
) -> Option<&'a str> {
    let of_family = match family {
        Family::Ipv4 => None,
        Family::Ipv6 => observed.ipv6_default_route_interface.as_deref(),
    };
    desired
        .node
        .uplink
        .as_deref()
        .or(of_family)
        .or_else(|| uplink(desired, observed))
}

/// `desired` without the instances whose namespace, someone else's (`netns`), is not there
/// (its owner deleted it, or the path is no network namespace), and for each of those why.
/// Such an instance is planned as absent: what kudonet made for it on the host (its veth,
/// its published ports) goes, and kudonet never creates a namespace someone else owns.
fn without_gone_namespaces<'a>(
    desired: &'a Desired,
    observed: &Observed,
) -> (Cow<'a, Desired>, Vec<(String, String)>) {
    let is_gone = |instance: &Instance| {
        !instance.owns_namespace() && !observed.namespaces.contains_key(&instance.namespace())
    };
    if !desired.instances.iter().any(is_gone) {
        return (Cow::Borrowed(desired), Vec::new());
    }
    let mut present = desired.clone();
    let mut gone = Vec::new();
    present.instances.retain(|instance| {
        if !is_gone(instance) {
            return true;
        }
        gone.push((
            instance.name.clone(),
            format!(
                "namespace {} of instance {:?} does not exist (or is not a network namespace \
                 other than the node's): its owner made none there or deleted it; kudonet \
                 removed what it made for the instance on the node and waits for the namespace",
                instance.namespace(),
                instance.name
            ),
        ));
        false
    });
    (Cow::Owned(present), gone)
}

/// The plan that makes `observed` match `desired`.
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    plan_with_bridge_instances(desired, observed, BRIDGE_INSTANCES)
}

/// [`plan`] with `bridge_instances` instances a bridge rather than [`BRIDGE_INSTANCES`]:
/// tests use a small number to have segments with few instances.
pub fn plan_with_bridge_instances(
    desired: &Desired,
    observed: &Observed,
    bridge_instances: usize,
) -> Plan {
    // Instances that name no address get theirs first; from here on every instance has
    // its addresses, but those left without one (a full subnet), which are not planned.
    let (present, gone) = without_gone_namespaces(desired, observed);
    let allocation = allocate::allocate(&present, observed);
    let desired: &Desired = &allocation.desired;
    let placement = placement::place(desired, observed, bridge_instances);
    let wanted = Wanted::new(desired, &placement);
    let mut planner = Planner::new(observed, &wanted);
    planner.placement = placement;
    planner.plan.allocated = allocation.allocated;
    for (instance, message) in gone.into_iter().chain(allocation.exhausted) {
        planner.plan.conflicts.push(Conflict {
            scope: Scope::instance(instance),
            kind: "Conflict",
            message,
        });
    }
    let uplink = uplink(desired, observed);
    // A node subnet that overlaps the uplink's would cut the node off its own network:
    // refused before anything changes (the command line reports it at the Node's cidr).
    if let Some(uplink) = uplink
        && let Some(link) = observed.links.get(uplink)
        && let Some(problem) = desired
            .node
            .uplink_overlap(uplink, link.addresses.iter().copied())
    {
        planner.plan.conflicts.push(Conflict {
            scope: Scope::Node,
            kind: "UplinkOverlap",
            message: problem,
        });
        planner.plan.blocked = true;
        return planner.plan;
    }
    let underlay = wanted.overlay.then(|| underlay_family(desired));
    let underlay_uplink = underlay.and_then(|family| uplink_of(desired, observed, family));
    planner.mtu = instance_mtu(desired, observed, underlay_uplink, underlay);
    planner.delete_unwanted(&wanted);
    planner.purge_other_backend();
    // Without its bridge the node cannot work, and rules naming the bridge would apply to
    // a foreign interface: change nothing more until the conflict is resolved.
    if !planner.bridge(desired) {
        planner.plan.blocked = true;
        return planner.plan;
    }
    let node = &desired.node;
    if node.has(Family::Ipv4) {
        planner.sysctl(IP_FORWARD, "1");
        planner.sysctl(&route_localnet(&node.bridge), "1");
    }
    if node.has(Family::Ipv6) {
        planner.sysctl(IPV6_FORWARDING, "1");
    }
    if !wanted.segments.is_empty() && node.has(Family::Ipv4) {
        planner.proxy_arp(&desired.node.bridge, false);
    }
    // The instances of the bridge find those of the segments in their IPv6 subnet by
    // neighbour discovery: the node answers for them there (one proxy entry each).
    if !wanted.segments.is_empty() && node.has(Family::Ipv6) {
        planner.sysctl(&proxy_ndp(&node.bridge), "1");
        planner.sysctl(&proxy_ndp_delay(&node.bridge), "0");
    }
    if wanted.overlay {
        planner.overlay(desired, underlay_uplink);
    }
    for segment in &wanted.segments {
        planner.segment(desired, segment);
    }
    for instance in &desired.instances {
        planner.instance(desired, instance);
    }
    planner.peer_routes(&wanted);
    // An instance held back by a conflict publishes nothing: its address may lead elsewhere.
    let blocked: BTreeSet<&str> = planner
        .plan
        .conflicts
        .iter()
        .filter_map(|conflict| conflict.scope.instance_name())
        .collect();
    let serving = Desired {
        instances: desired
            .instances
            .iter()
            .filter(|i| !blocked.contains(i.name.as_str()))
            .cloned()
            .collect(),
        ..desired.clone()
    };
    let segments: Vec<&str> = wanted.segments.iter().map(String::as_str).collect();
    let uplinks = |family| uplink_of(desired, observed, family);
    match desired.firewall {
        FirewallBackend::Iptables => {
            planner.firewall(&firewall::desired_tables(&serving, &uplinks, &segments));
            planner.delete_nftables();
        }
        FirewallBackend::Nftables if observed.foreign_nftables => {
            // kudonet's table cannot be written: its rules stay in iptables meanwhile, so
            // that switching never leaves the node without them.
            planner.foreign_nftables();
            planner.firewall(&firewall::desired_tables(&serving, &uplinks, &segments));
        }
        FirewallBackend::Nftables => {
            // The new rules first: switching from iptables never leaves a moment without.
            planner.nftables(&nftables::desired_ruleset(&serving, &uplinks, &segments));
            // iptables keeps none of kudonet's rules, but for one case: where its FORWARD
            // chain drops (by policy, as Docker sets it, or by a rule), an accept in
            // kudonet's own table cannot overrule that drop, so the same owned KUDO-FORWARD
            // chain and marked jump as in iptables mode accept kudonet's traffic there, for
            // as long as the drop stays.
            let mut tables = firewall::empty_tables();
            let bridges: Vec<&str> = std::iter::once(node.bridge.as_str())
                .chain(segments.iter().copied())
                .collect();
            for family in node.families() {
                if iptables_forward_drops(observed, family) {
                    tables.insert(
                        crate::observed::TableId::new(family, firewall::FILTER),
                        firewall::filter(&serving, family, &bridges),
                    );
                }
            }
            planner.firewall(&tables);
        }
    }
    planner.plan
}

/// Whether iptables' FORWARD chain of `family` (of kudonet's iptables backend) drops
/// forwarded packets: by policy (Docker sets DROP), or by a rule of its own that drops or
/// rejects. kudonet's jump is not one.
fn iptables_forward_drops(observed: &Observed, family: Family) -> bool {
    // The rule's target: the word after `-j` (a comment's text is quoted, one word or
    // more, and never follows `-j` itself).
    let drops = |rule: &str| {
        let words: Vec<&str> = rule.split_whitespace().collect();
        words
            .windows(2)
            .any(|pair| pair[0] == "-j" && matches!(pair[1], "DROP" | "REJECT"))
    };
    observed.iptables_forward_drops.contains(&family)
        || observed
            .firewall
            .get(&crate::observed::TableId::new(family, firewall::FILTER))
            .and_then(|table| table.chains.get("FORWARD"))
            .is_some_and(|rules| rules.iter().any(|rule| drops(rule)))
}

/// The plan that removes everything kudonet owns on the node, and nothing else.
pub fn plan_teardown(observed: &Observed) -> Plan {
    let nothing = Wanted::default();
    let mut planner = Planner::new(observed, &nothing);
    planner.delete_unwanted(&nothing);
    planner.firewall(&firewall::empty_tables());
    planner.delete_nftables();
    planner.purge_other_backend();
    planner.plan
}

/// The names of what kudonet wants to own, for deciding what to delete.
#[derive(Debug, Default)]
struct Wanted {
    bridge: Option<String>,
    /// The segments holding an instance.
    segments: BTreeSet<String>,
    /// The address (/32, /128) of each instance on a segment -> that segment.
    link_routes: BTreeMap<IpCidr, String>,
    /// The IPv6 address of each instance on a segment, which the node answers for on its
    /// bridge, and that bridge.
    proxy_neighbours: BTreeSet<(String, IpAddr)>,
    /// Host veth name -> the alias it must carry and the instance it is for.
    host_links: BTreeMap<String, (String, String)>,
    namespaces: BTreeSet<String>,
    /// Peer subnet -> gateway and, over the overlay, the device the gateway is on-link on.
    routes: BTreeMap<IpCidr, (IpAddr, Option<String>)>,
    /// Whether the node needs the vxlan overlay device.
    overlay: bool,
}

impl Wanted {
    fn new(desired: &Desired, placement: &Placement) -> Wanted {
        let link_routes: BTreeMap<IpCidr, String> = desired
            .instances
            .iter()
            .filter_map(|instance| {
                let bridge = placement.bridge_of(&instance.name)?;
                (bridge != desired.node.bridge).then_some((instance, bridge))
            })
            .flat_map(|(instance, bridge)| {
                instance
                    .addresses
                    .iter()
                    .map(move |address| (host_route(*address), bridge.to_string()))
            })
            .collect();
        let proxy_neighbours = link_routes
            .keys()
            .map(IpCidr::first_address)
            .filter(IpAddr::is_ipv6)
            .map(|address| (desired.node.bridge.clone(), address))
            .collect();
        Wanted {
            segments: placement
                .segments()
                .into_iter()
                .map(str::to_string)
                .collect(),
            link_routes,
            proxy_neighbours,
            ..Wanted::from(desired)
        }
    }
}

/// The route to one address: an instance's `10.0.0.7/24` as `10.0.0.7/32`.
fn host_route(address: IpInet) -> IpCidr {
    IpCidr::new_host(address.address())
}

/// The family of a vxlan cluster's underlay: IPv4 when this node and every peer have an
/// IPv4 `externalIp`, else IPv6 (a vxlan device tunnels over one family; it carries both).
pub fn underlay_family(desired: &Desired) -> Family {
    let all_ipv4 = std::iter::once(&desired.node)
        .chain(&desired.peers)
        .all(|node| node.external_ip(Family::Ipv4).is_some());
    if all_ipv4 { Family::Ipv4 } else { Family::Ipv6 }
}

impl From<&Desired> for Wanted {
    fn from(desired: &Desired) -> Wanted {
        let routed = desired
            .cluster
            .as_ref()
            .is_none_or(|cluster| cluster.mode == ClusterMode::Routed);
        let overlay = !routed && !desired.peers.is_empty();
        Wanted {
            bridge: Some(desired.node.bridge.clone()),
            segments: BTreeSet::new(),
            link_routes: BTreeMap::new(),
            proxy_neighbours: BTreeSet::new(),
            host_links: desired
                .instances
                .iter()
                .map(|instance| {
                    (
                        names::host_interface_name(&instance.name),
                        (names::instance_alias(&instance.name), instance.name.clone()),
                    )
                })
                .collect(),
            namespaces: desired
                .instances
                .iter()
                .map(|instance| instance.namespace())
                .collect(),
            // A subnet of each family both ends have.
            routes: desired
                .peers
                .iter()
                .flat_map(|peer| peer.cidrs.iter().map(move |cidr| (peer, *cidr)))
                .filter(|(_, cidr)| desired.node.has(Family::of(cidr.address())))
                .filter_map(|(peer, cidr)| match routed {
                    true => Some((
                        cidr.network(),
                        (peer.external_ip(Family::of(cidr.address()))?, None),
                    )),
                    false => Some((
                        cidr.network(),
                        (cidr.address(), Some(desired.node.bridge.clone())),
                    )),
                })
                .collect(),
            overlay,
        }
    }
}

struct Planner<'a> {
    observed: &'a Observed,
    /// What the desired state names: the host links of its instances.
    wanted: &'a Wanted,
    plan: Plan,
    /// What the actions and conflicts being planned are for: an instance while its own
    /// step is planned, else the node.
    scope: Scope,
    /// The MTU of the bridge, the veths, the vxlan and the instances' eth0.
    mtu: u32,
    /// Links the plan deletes as a side effect of an earlier action: the other end of a
    /// deleted veth, the veths of a deleted namespace.
    gone: BTreeSet<LinkRef>,
    /// The bridge of each desired instance.
    placement: Placement,
}

impl<'a> Planner<'a> {
    fn new(observed: &'a Observed, wanted: &'a Wanted) -> Planner<'a> {
        Planner {
            observed,
            wanted,
            plan: Plan::default(),
            scope: Scope::Node,
            mtu: DEFAULT_MTU,
            gone: BTreeSet::new(),
            placement: Placement::default(),
        }
    }

    /// The MTU to create a bridge or veth with: none when it is the kernel's default,
    /// which keeps plans short.
    fn creation_mtu(&self) -> Option<u32> {
        (self.mtu != DEFAULT_MTU).then_some(self.mtu)
    }

    fn push(&mut self, action: Action) {
        let scope = self.scope.clone();
        self.push_for(scope, action);
    }

    fn push_for(&mut self, scope: Scope, action: Action) {
        self.plan.steps.push(Step { scope, action });
    }

    /// The scope of deleting a node-namespace link: the desired instance whose host
    /// interface has its name (a stale link in its way), else the current scope.
    fn host_link_scope(&self, name: &str) -> Scope {
        match (&self.scope, self.wanted.host_links.get(name)) {
            (Scope::Node, Some((_, instance))) => Scope::instance(instance),
            _ => self.scope.clone(),
        }
    }

    /// The observed link, unless an earlier action of the plan takes it away.
    fn link(&self, link: &LinkRef) -> Option<&'a Link> {
        if self.gone.contains(link) {
            return None;
        }
        let links = match &link.netns {
            None => &self.observed.links,
            Some(netns) => &self.observed.namespaces.get(netns)?.links,
        };
        links.get(&link.name)
    }

    fn delete_link(&mut self, link: LinkRef) {
        if let Some(existing) = self.link(&link) {
            self.gone.extend(existing.peer.clone());
            self.gone.insert(link.clone());
            let scope = match &link.netns {
                None => self.host_link_scope(&link.name),
                Some(_) => self.scope.clone(),
            };
            self.push_for(scope, Action::DeleteLink { link });
        }
    }

    /// Something foreign in the way of the current scope's work.
    fn conflict(&mut self, message: String) {
        self.plan.conflicts.push(Conflict {
            scope: self.scope.clone(),
            kind: "Conflict",
            message,
        });
    }

    /// Deletes what kudonet owns and `wanted` does not name: host veths first (that takes
    /// their peers out of the namespaces), then namespaces, bridges and routes.
    ///
    /// A veth whose other end is in a namespace that goes too is not deleted on its own:
    /// deleting one link costs an RCU grace period, one after another, while the kernel
    /// destroys the devices of every dying namespace together, in one batch. The dataplane
    /// waits for that (see `Dataplane::settle`).
    fn delete_unwanted(&mut self, wanted: &Wanted) {
        let observed = self.observed;
        let dying_namespaces: BTreeSet<&String> = observed
            .namespaces
            .iter()
            .filter(|(name, namespace)| namespace.owned && !wanted.namespaces.contains(*name))
            .map(|(name, _)| name)
            .collect();
        let goes_with_its_namespace = |name: &String, link: &Link| {
            // A name some desired instance needs is freed at once instead.
            !wanted.host_links.contains_key(name)
                && link
                    .peer
                    .as_ref()
                    .and_then(|peer| peer.netns.as_ref())
                    .is_some_and(|netns| dying_namespaces.contains(netns))
        };
        // Left by a crash between creating a link and marking it: a scratch name, a kind
        // kudonet creates, and no mark but kudonet's.
        for (name, link) in &observed.links {
            let ours = matches!(
                link.kind,
                LinkKind::Bridge | LinkKind::Veth | LinkKind::Vxlan
            ) && (link.alias.is_none() || link.is_owned());
            if names::is_scratch_link_name(name) && ours {
                self.delete_link(LinkRef::host(name));
            }
        }
        for (name, link) in &observed.links {
            if link.kind == LinkKind::Veth
                && link.is_owned()
                && wanted.host_links.get(name).map(|(alias, _)| alias) != link.alias.as_ref()
                && !goes_with_its_namespace(name, link)
            {
                self.delete_link(LinkRef::host(name));
            }
        }
        for (name, namespace) in &observed.namespaces {
            if namespace.owned && !wanted.namespaces.contains(name) {
                self.gone.extend(
                    namespace
                        .links
                        .values()
                        .filter_map(|link| link.peer.clone()),
                );
                self.push(Action::DeleteNamespace { name: name.clone() });
            }
        }
        if !wanted.overlay
            && observed
                .links
                .get(names::VXLAN_DEVICE)
                .is_some_and(|link| link.kind == LinkKind::Vxlan && link.is_owned())
        {
            self.delete_link(LinkRef::host(names::VXLAN_DEVICE));
        }
        for (name, link) in &observed.links {
            if link.kind == LinkKind::Bridge
                && link.is_owned()
                && wanted.bridge.as_ref() != Some(name)
                && !wanted.segments.contains(name)
            {
                self.delete_link(LinkRef::host(name));
            }
        }
        for (destination, route) in &observed.routes {
            // The kernel takes a route with the link it goes through.
            let device_gone = route
                .device
                .as_ref()
                .is_some_and(|device| self.gone.contains(&LinkRef::host(device)));
            if route.owned
                && !wanted.routes.contains_key(destination)
                && !wanted.link_routes.contains_key(destination)
                && !device_gone
            {
                self.push(Action::DeleteRoute {
                    destination: *destination,
                });
            }
        }
        // Proxy entries carrying kudonet's mark, on whatever link (they go with it).
        for (name, link) in &observed.links {
            if self.gone.contains(&LinkRef::host(name)) {
                continue;
            }
            for address in &link.proxy_neighbours {
                if !wanted.proxy_neighbours.contains(&(name.clone(), *address)) {
                    self.push(Action::DeleteProxyNeighbour {
                        link: name.clone(),
                        address: *address,
                    });
                }
            }
        }
    }

    /// kudonet's rules left in the other iptables backend go, whatever the node wants: both
    /// backends' hooks see every packet, so stale DNAT rules there would keep forwarding a
    /// removed instance's ports.
    fn purge_other_backend(&mut self) {
        let stale: Vec<crate::observed::TableId> = self
            .observed
            .other_backend
            .iter()
            .filter(|(_, table)| table.has_kudonet_rules())
            .map(|(name, _)| name.clone())
            .collect();
        for table in stale {
            self.push(Action::PurgeOtherBackend { table });
        }
    }

    fn sysctl(&mut self, key: &str, value: &str) {
        self.sysctl_of(key, value, false);
    }

    /// A sysctl of an interface the plan creates (`fresh`): what is observed under its
    /// name is its predecessor's.
    fn sysctl_of(&mut self, key: &str, value: &str, fresh: bool) {
        if fresh || self.observed.sysctls.get(key).map(String::as_str) != Some(value) {
            self.push(Action::SetSysctl {
                key: key.to_string(),
                value: value.to_string(),
            });
        }
    }

    /// Creates or repairs the bridge. Returns false when a foreign link holds its name.
    fn bridge(&mut self, desired: &Desired) -> bool {
        let node = &desired.node;
        let name = &node.bridge;
        let link = LinkRef::host(name);
        let current = match self.observed.links.get(name) {
            Some(existing) if existing.is_kudonet_bridge() => Some(existing),
            Some(existing) => {
                self.conflict(format!(
                    "link {name} exists and is not kudonet's bridge ({}): kudonet leaves it alone; \
                         delete or rename it, or set `bridge:` on Node {:?} to a free name",
                    describe(existing),
                    node.name
                ));
                return false;
            }
            None => {
                self.push(Action::CreateBridge {
                    name: name.clone(),
                    mtu: self.creation_mtu(),
                });
                None
            }
        };
        let created = Link {
            mtu: self.mtu,
            ..Link::new(LinkKind::Bridge)
        };
        let current = current.unwrap_or(&created);
        let addresses = node.cidrs.iter().copied().collect();
        self.converge_link(&link, current, self.mtu, &addresses, &BTreeSet::new());
        true
    }

    /// MTU, addresses (exactly `addresses`, those of `no_prefix_route` without the route
    /// to their subnet, the others with it) and up, in the order the kernel needs them. An
    /// address with the other kind of prefix route is added again.
    fn converge_link(
        &mut self,
        link: &LinkRef,
        current: &Link,
        mtu: u32,
        addresses: &BTreeSet<IpInet>,
        no_prefix_route: &BTreeSet<IpInet>,
    ) {
        if current.mtu != mtu {
            self.push(Action::SetMtu {
                link: link.clone(),
                mtu,
            });
        }
        let wrong = |address: &&IpInet| {
            !addresses.contains(address)
                || !current.has_address(address, no_prefix_route.contains(address))
        };
        for address in current.addresses.iter().filter(wrong) {
            self.push(Action::DeleteAddress {
                link: link.clone(),
                address: *address,
            });
        }
        for address in addresses {
            let no_prefix_route = no_prefix_route.contains(address);
            if !current.has_address(address, no_prefix_route) {
                self.push(Action::AddAddress {
                    link: link.clone(),
                    address: *address,
                    no_prefix_route,
                });
            }
        }
        if !current.up {
            self.push(Action::SetUp { link: link.clone() });
        }
    }

    /// Plans `instance`'s own step: everything it is made of, each action and conflict
    /// scoped to it.
    fn instance(&mut self, desired: &Desired, instance: &Instance) {
        self.scope = Scope::instance(&instance.name);
        self.instance_parts(desired, instance);
        self.scope = Scope::Node;
    }

    fn instance_parts(&mut self, desired: &Desired, instance: &Instance) {
        let node = &desired.node;
        let netns = instance.namespace();
        let bridge = match self.placement.bridge_of(&instance.name) {
            Some(bridge) => bridge.to_string(),
            // What of someone else's holds it back is reported below; else every bridge is
            // full.
            None if !self.observed.held_back(instance) => {
                self.conflict(format!(
                    "no bridge of the node has room for instance {:?}: a bridge holds {} instances \
                     and a node at most {MAX_BRIDGES} bridges; links of others on its bridges, or \
                     named like its segments (kudo-seg…), take room",
                    instance.name, self.placement.bridge_instances
                ));
                return;
            }
            None => node.bridge.clone(),
        };
        let host = names::host_interface_name(&instance.name);
        let alias = names::instance_alias(&instance.name);
        let eth0 = instance.interface.as_str();
        let foreign = !instance.owns_namespace();

        let namespace = match self.observed.namespaces.get(&netns) {
            // Someone else's namespace that the instance names is where it lives.
            Some(namespace) if namespace.owned || foreign => Some(namespace),
            Some(_) => {
                self.conflict(
                    format!(
                        "namespace {netns} exists and was not created by kudonet: kudonet leaves it alone; \
                         delete it (ip netns delete {netns}) if nothing uses it"
                    ),
                );
                // Its veth from before leads to a namespace it left (someone else's).
                self.delete_veth_of(instance);
                return;
            }
            // Never created: `without_gone_namespaces` plans such an instance as absent.
            None if foreign => return,
            None => {
                self.push(Action::CreateNamespace {
                    name: netns.clone(),
                });
                None
            }
        };
        let host_ref = LinkRef::host(&host);
        let eth0_ref = LinkRef::in_namespace(&netns, eth0);
        let host_link = self.link(&host_ref);
        if let Some(existing) = host_link
            && !existing.is_owned()
        {
            self.conflict(
                format!(
                    "link {host}, the host interface of instance {:?}, exists and is not kudonet's ({}): \
                     kudonet leaves it alone; delete or rename it",
                    instance.name,
                    describe(existing)
                ),
            );
            return;
        }
        // A stale link of another instance under this name is deleted by `delete_unwanted`.
        let host_link = host_link
            .filter(|link| link.kind == LinkKind::Veth && link.alias.as_ref() == Some(&alias));
        let peer = self.link(&eth0_ref);
        let paired = matches!((host_link, peer), (Some(h), Some(p))
            if p.kind == LinkKind::Veth && h.peer.as_ref() == Some(&eth0_ref) && p.peer.as_ref() == Some(&host_ref));

        if foreign
            && !paired
            && let Some(existing) = peer
            && !self.observed.is_instance_interface(&netns, eth0)
        {
            // In a namespace someone else owns, a link of that name that is not the other
            // end of a veth of kudonet's is theirs.
            self.conflict(format!(
                "interface {eth0} exists in namespace {netns} and is not kudonet's ({}): \
                 kudonet leaves it alone; give instance {:?} another `interface`",
                describe(existing),
                instance.name
            ));
            // Its veth from before has another interface name, or leads to a namespace it
            // left.
            self.delete_veth_of(instance);
            return;
        }
        // There, the interface of another instance of kudonet's (one that lived in the
        // namespace before) goes, with its host end and the default routes through it.
        let others_left = foreign && self.delete_others_interfaces(&netns, &host_ref);

        let (host_now, peer_now, gateways_now, onlink_now);
        let created = Link {
            mtu: self.mtu,
            ..Link::new(LinkKind::Veth)
        };
        if paired {
            (host_now, peer_now) = (host_link.unwrap_or(&created), peer.unwrap_or(&created));
            gateways_now = namespace
                .map(|namespace| namespace.default_gateways.clone())
                .unwrap_or_default();
            onlink_now = namespace
                .map(|namespace| namespace.onlink_gateways.clone())
                .unwrap_or_default();
        } else {
            // Half built or broken: rebuild the pair (deleting an end that is still there;
            // `delete_link` knows that deleting one end of a veth takes the other with it).
            self.delete_link(host_ref.clone());
            self.delete_link(eth0_ref.clone());
            self.push(Action::CreateVeth {
                host: host.clone(),
                namespace: netns.clone(),
                interface: eth0.to_string(),
                instance: instance.name.clone(),
                mtu: self.creation_mtu(),
            });
            (host_now, peer_now) = (&created, &created);
            (gateways_now, onlink_now) = (BTreeSet::new(), BTreeSet::new());
        }

        // Host end: a port of its bridge, no address of its own.
        // Bridge-port settings such as hairpin only exist while attached, and reset on a move.
        let attached = host_now.master.as_ref() == Some(&bridge);
        if !attached {
            self.push(Action::SetMaster {
                link: host.clone(),
                bridge: bridge.clone(),
            });
        }
        if !(attached && host_now.hairpin) {
            self.push(Action::SetHairpin { link: host.clone() });
        }
        self.converge_link(
            &host_ref,
            host_now,
            self.mtu,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );

        // Inside: lo up, eth0 with the instance address, default route via the bridge. The
        // loopback of a namespace someone else owns is theirs (runtimes bring it up).
        if !foreign
            && !self
                .link(&LinkRef::in_namespace(&netns, "lo"))
                .is_some_and(|lo| lo.up)
        {
            self.push(Action::SetUp {
                link: LinkRef::in_namespace(&netns, "lo"),
            });
        }
        let addresses: BTreeSet<IpInet> = instance.addresses.iter().copied().collect();
        // On a segment, the IPv6 subnet is not on-link (the node answers for the gateway
        // alone there, and proxy neighbour discovery needs one entry an address): the
        // instance keeps its prefix but sends everything through the gateway.
        let on_segment = bridge != node.bridge;
        let no_prefix_route: BTreeSet<IpInet> = addresses
            .iter()
            .filter(|address| on_segment && address.is_ipv6())
            .copied()
            .collect();
        self.converge_link(&eth0_ref, peer_now, self.mtu, &addresses, &no_prefix_route);
        for address in &instance.addresses {
            let family = Family::of(address.address());
            let Some(gateway) = node.gateway(family) else {
                continue;
            };
            // Someone else's default route of this family (another network of the runtime)
            // is theirs: the instance reaches its own subnet, not beyond.
            if let Some(theirs) = namespace.and_then(|namespace| {
                namespace
                    .others_default_gateways
                    .iter()
                    .find(|theirs| Family::of(**theirs) == family)
            }) {
                self.conflict(format!(
                    "namespace {netns} has a default route of someone else's via {theirs}: \
                     kudonet leaves it alone, so instance {:?} reaches its own subnet only",
                    instance.name
                ));
                continue;
            }
            let onlink = no_prefix_route.contains(address);
            // The kernel drops routes through an address that goes away: re-assert it then
            // too. An observation does not say which interface a default route goes
            // through: one of another instance's interface that goes is re-asserted too.
            let readdressed = !peer_now.has_address(address, onlink);
            if !gateways_now.contains(&gateway)
                || onlink_now.contains(&gateway) != onlink
                || readdressed
                || others_left
            {
                self.push(Action::ReplaceDefaultRoute {
                    namespace: netns.clone(),
                    interface: eth0.to_string(),
                    gateway,
                    onlink,
                });
            }
        }
        // A default route of a family the instance no longer has (the kernel keeps an IPv6
        // one when the address goes).
        for gateway in &gateways_now {
            if instance.address(Family::of(*gateway)).is_none() {
                self.push(Action::DeleteDefaultRoute {
                    namespace: netns.clone(),
                    gateway: *gateway,
                });
            }
        }
        if on_segment {
            self.link_route(instance, &bridge);
            self.proxy_neighbours(instance, &node.bridge);
        }
    }

    /// Deletes the host veth of `instance` held back by a conflict, if it has one of
    /// before (with its mark): it leads elsewhere than where the instance is to live, so
    /// it goes, so that nothing leads to the instance's address meanwhile and it holds no
    /// port of a bridge (placement counts it nowhere, or may give its place to another).
    fn delete_veth_of(&mut self, instance: &Instance) {
        let host = LinkRef::host(&names::host_interface_name(&instance.name));
        let alias = names::instance_alias(&instance.name);
        if self.link(&host).is_some_and(|link| {
            link.kind == LinkKind::Veth && link.alias.as_deref() == Some(alias.as_str())
        }) {
            self.delete_link(host);
        }
    }

    /// Deletes the interfaces of other instances in namespace `netns`, someone else's: those
    /// that are the other end of a host veth of kudonet's that is not `host` (an instance
    /// that lived there before, and lives elsewhere now or no more). Returns whether there
    /// were any.
    fn delete_others_interfaces(&mut self, netns: &str, host: &LinkRef) -> bool {
        let Some(namespace) = self.observed.namespaces.get(netns) else {
            return false;
        };
        let others: Vec<LinkRef> = namespace
            .links
            .iter()
            .filter(|(name, _)| self.observed.is_instance_interface(netns, name))
            .filter(|(_, link)| link.peer.as_ref() != Some(host))
            .map(|(name, _)| LinkRef::in_namespace(netns, name))
            .collect();
        for link in &others {
            self.delete_link(link.clone());
        }
        !others.is_empty()
    }

    /// The node's proxy neighbour entries on its bridge for the IPv6 address of an
    /// instance on a segment. An entry of someone else's for it answers as well: kudonet
    /// leaves it alone.
    fn proxy_neighbours(&mut self, instance: &Instance, bridge: &str) {
        let current = self.link(&LinkRef::host(bridge));
        let missing: Vec<IpAddr> = instance
            .addresses
            .iter()
            .map(|address| address.address())
            .filter(IpAddr::is_ipv6)
            .filter(|address| {
                current.is_none_or(|link| {
                    !link.proxy_neighbours.contains(address)
                        && !link.foreign_proxy_neighbours.contains(address)
                })
            })
            .collect();
        for address in missing {
            self.push(Action::AddProxyNeighbour {
                link: bridge.to_string(),
                address,
            });
        }
    }

    /// The node's route to an instance on a segment: its bridge's subnet route would send
    /// the instance's traffic to the node's own bridge.
    fn link_route(&mut self, instance: &Instance, segment: &str) {
        for address in &instance.addresses {
            self.link_route_to(instance, host_route(*address), segment);
        }
    }

    fn link_route_to(&mut self, instance: &Instance, destination: IpCidr, segment: &str) {
        match self.observed.routes.get(&destination) {
            Some(route) if !route.owned => self.conflict(format!(
                "a route to {destination} exists and is not kudonet's: kudonet leaves it alone; \
                 delete it to let the node reach instance {:?} on {segment}",
                instance.name
            )),
            Some(route)
                if route.gateway.is_none()
                    && route.device.as_deref() == Some(segment)
                    && !self.gone.contains(&LinkRef::host(segment)) => {}
            _ => self.push(Action::ReplaceLinkRoute {
                destination,
                device: segment.to_string(),
            }),
        }
    }

    /// Proxy ARP on one of the node's bridges when it has segments: the node answers for
    /// the instances of its other bridges, at once, so that instances reach each other at
    /// their on-link addresses through the node.
    fn proxy_arp(&mut self, bridge: &str, fresh: bool) {
        self.sysctl_of(&proxy_arp(bridge), "1", fresh);
        self.sysctl_of(&proxy_delay(bridge), "0", fresh);
    }

    /// A segment of the node: a bridge of kudonet's holding the gateway address as a /32
    /// (the instances' gateway there too, and the source of what the node sends them), the
    /// node's settings for its bridge, and proxy ARP.
    fn segment(&mut self, desired: &Desired, name: &str) {
        let link = LinkRef::host(name);
        // Placement skips a segment's name held by a link of someone else's; one of
        // kudonet's that is not a segment is in the way and goes.
        let current = match self.link(&link) {
            Some(existing) if existing.is_kudonet_segment() => Some(existing),
            Some(_) => {
                self.delete_link(link.clone());
                None
            }
            None => None,
        };
        if current.is_none() {
            self.push(Action::CreateSegment {
                name: name.to_string(),
                bridge: desired.node.bridge.clone(),
                mtu: self.creation_mtu(),
            });
        }
        let created = Link {
            mtu: self.mtu,
            ..Link::new(LinkKind::Bridge)
        };
        let gateways = desired
            .node
            .cidrs
            .iter()
            .map(|cidr| IpInet::new_host(cidr.address()))
            .collect();
        let fresh = current.is_none();
        self.converge_link(
            &link,
            current.unwrap_or(&created),
            self.mtu,
            &gateways,
            &BTreeSet::new(),
        );
        if desired.node.has(Family::Ipv4) {
            self.sysctl_of(&route_localnet(name), "1", fresh);
            self.proxy_arp(name, fresh);
        }
    }

    /// The overlay of a vxlan cluster: one vxlan device, a port of the bridge, flooding
    /// broadcast and unknown traffic to every peer node; remote MAC addresses are learnt.
    fn overlay(&mut self, desired: &Desired, uplink: Option<&str>) {
        let name = names::VXLAN_DEVICE;
        let uplink = uplink
            .filter(|uplink| self.observed.links.contains_key(*uplink))
            .map(str::to_string);
        let underlay = underlay_family(desired);
        let settings = crate::observed::Vxlan {
            id: names::VXLAN_ID,
            local: desired.node.external_ip(underlay),
            port: names::VXLAN_PORT,
            device: uplink.clone(),
        };
        let current = match self.link(&LinkRef::host(name)) {
            Some(existing) if !existing.is_owned() => {
                self.conflict(
                    format!(
                        "link {name} exists and is not kudonet's overlay device ({}): kudonet leaves it alone; \
                         delete or rename it to connect this node to its peers",
                        describe(existing)
                    ),
                );
                return;
            }
            Some(existing)
                if existing.kind == LinkKind::Vxlan
                    && existing.vxlan.as_ref() == Some(&settings) =>
            {
                Some(existing)
            }
            Some(_) => {
                // Other tunnel settings (a new uplink or address): rebuild it. The kernel
                // could change some in place, but never the family of the local address,
                // which follows the underlay.
                self.delete_link(LinkRef::host(name));
                None
            }
            None => None,
        };
        let created;
        let current = match current {
            Some(current) => current,
            None => {
                self.push(Action::CreateVxlan {
                    name: name.to_string(),
                    id: settings.id,
                    local: settings.local,
                    port: settings.port,
                    uplink,
                    // Always given: the kernel's default for a vxlan follows its underlay.
                    mtu: Some(self.mtu),
                });
                created = Link {
                    mtu: self.mtu,
                    vxlan: Some(settings),
                    ..Link::new(LinkKind::Vxlan)
                };
                &created
            }
        };
        if current.master.as_ref() != Some(&desired.node.bridge) {
            self.push(Action::SetMaster {
                link: name.to_string(),
                bridge: desired.node.bridge.clone(),
            });
        }
        // A device floods over its local address's family only: a peer without an
        // externalIp of the underlay's family cannot be reached (validation refuses it).
        let peers: BTreeSet<IpAddr> = desired
            .peers
            .iter()
            .filter_map(|peer| peer.external_ip(underlay))
            .collect();
        for destination in current.flood.difference(&peers) {
            self.push(Action::DeleteFlood {
                link: name.to_string(),
                destination: *destination,
            });
        }
        for destination in peers.difference(&current.flood) {
            self.push(Action::AddFlood {
                link: name.to_string(),
                destination: *destination,
            });
        }
        self.converge_link(
            &LinkRef::host(name),
            current,
            self.mtu,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
    }

    fn peer_routes(&mut self, wanted: &Wanted) {
        for (destination, (gateway, device)) in &wanted.routes {
            match self.observed.routes.get(destination) {
                Some(route) if !route.owned => self.conflict(
                    format!(
                        "a route to {destination} exists and is not kudonet's: kudonet leaves it alone; \
                         delete it to let the peer node's instances be reached via {gateway}"
                    ),
                ),
                // A route via an underlay gateway may leave through whichever device the kernel picks.
                Some(route) if route.gateway == Some(*gateway) && (device.is_none() || route.device == *device) => {}
                _ => self.push(Action::ReplaceRoute {
                    destination: *destination,
                    gateway: *gateway,
                    device: device.clone(),
                }),
            }
        }
    }

    /// A table of the name of kudonet's is someone else's: kudonet's rules stay in
    /// iptables.
    fn foreign_nftables(&mut self) {
        self.plan.conflicts.push(Conflict {
            scope: Scope::Node,
            kind: "Conflict",
            message: format!(
                "nftables table {} {} exists without kudonet's comment: it is someone else's, \
                 so kudonet keeps its rules in iptables (rename or delete that table)",
                crate::nftables::TABLE_FAMILY,
                crate::nftables::TABLE_NAME
            ),
        });
    }

    /// kudonet's nftables table made `ruleset`.
    fn nftables(&mut self, ruleset: &crate::nftables::Ruleset) {
        let current = self.observed.nftables.as_ref();
        if current != Some(ruleset) {
            self.push(Action::SyncNftables {
                ruleset: ruleset.clone(),
                create: current.is_none(),
                diff: crate::nftables::diff(current, ruleset),
            });
        }
    }

    /// kudonet's nftables table deleted, if there is one.
    fn delete_nftables(&mut self) {
        if self.observed.nftables.is_some() {
            self.push(Action::DeleteNftables);
        }
    }

    fn firewall(&mut self, tables: &BTreeMap<crate::observed::TableId, TableRules>) {
        let empty = Table::default();
        for (table, rules) in tables {
            let observed = self.observed.firewall.get(table).unwrap_or(&empty);
            let diff = table_diff(observed, rules);
            if !diff.is_empty() {
                self.push(Action::SyncTable {
                    table: table.clone(),
                    chains: rules.chains.clone(),
                    jumps: rules.jumps.clone(),
                    diff,
                });
            }
        }
    }
}

/// How an observed table differs from kudonet's rules for it, one line per rule, in the
/// `iptables-save` form (`+ -A CHAIN rule`, `- -A CHAIN rule`, `- -X CHAIN`). Empty when
/// they match, including kudonet's jump rules standing first in their chains.
fn table_diff(observed: &Table, rules: &TableRules) -> Vec<String> {
    let mut diff = Vec::new();
    for (chain, wanted) in &rules.chains {
        match observed.chains.get(chain) {
            Some(current) => chain_diff(&mut diff, chain, current, wanted),
            None => {
                diff.push(format!("+ -N {chain}"));
                diff.extend(wanted.iter().map(|rule| format!("+ -A {chain} {rule}")));
            }
        }
    }
    for chain in observed.chains.keys() {
        if Table::is_owned_chain(chain) && !rules.chains.contains_key(chain) {
            diff.push(format!("- -X {chain}"));
        }
    }
    let others = observed
        .chains
        .keys()
        .filter(|chain| !Table::is_owned_chain(chain));
    for chain in others.chain(rules.jumps.keys()).collect::<BTreeSet<_>>() {
        let current = observed
            .chains
            .get(chain)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let wanted = rules
            .jumps
            .get(chain)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ours: Vec<String> = current
            .iter()
            .filter(|rule| Table::is_owned_jump(rule))
            .cloned()
            .collect();
        if current.starts_with(wanted) && ours.len() == wanted.len() {
            continue;
        }
        chain_diff(&mut diff, chain, &ours, wanted);
        if ours == wanted {
            diff.push(format!("~ -A {chain}: move kudonet's rules to the head"));
        }
    }
    diff
}

fn chain_diff(diff: &mut Vec<String>, chain: &str, current: &[String], wanted: &[String]) {
    if current == wanted {
        return;
    }
    let removed: Vec<String> = current
        .iter()
        .filter(|rule| !wanted.contains(rule))
        .map(|rule| format!("- -A {chain} {rule}"))
        .collect();
    let added: Vec<String> = wanted
        .iter()
        .filter(|rule| !current.contains(rule))
        .map(|rule| format!("+ -A {chain} {rule}"))
        .collect();
    if removed.is_empty() && added.is_empty() {
        diff.push(format!("~ -A {chain}: reorder or deduplicate rules"));
    }
    diff.extend(removed);
    diff.extend(added);
}

/// The MTU of a bridge or veth the kernel creates without being told one (`ETH_DATA_LEN`).
const DEFAULT_MTU: u32 = 1500;

/// The MTU kudonet keeps on the bridge, veths and instances: the Node's `mtu`; without
/// one, over a vxlan overlay (`underlay`: the family it tunnels over), the uplink's less
/// the encapsulation overhead of that family, so that instances never send frames the
/// underlay cannot carry, else the kernel's default (so removing `mtu:` puts it back).
fn instance_mtu(
    desired: &Desired,
    observed: &Observed,
    uplink: Option<&str>,
    underlay: Option<Family>,
) -> u32 {
    match (desired.node.mtu, underlay) {
        (Some(mtu), _) => mtu,
        (None, Some(underlay)) => {
            let uplink_mtu = uplink
                .and_then(|uplink| observed.links.get(uplink))
                .map_or(DEFAULT_MTU, |link| link.mtu);
            uplink_mtu
                .saturating_sub(names::vxlan_overhead(underlay))
                .max(68)
        }
        (None, None) => DEFAULT_MTU,
    }
}

/// A short description of a foreign link, for conflict messages.
fn describe(link: &Link) -> String {
    let kind = match link.kind {
        LinkKind::Bridge => "a bridge",
        LinkKind::Veth => "a veth",
        LinkKind::Vxlan => "a vxlan",
        LinkKind::Loopback => "a loopback",
        LinkKind::Other => "an interface",
    };
    match &link.alias {
        Some(alias) => format!("{kind} with alias {alias:?}"),
        None => format!("{kind} without kudonet's mark"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Dataplane, memory::MemoryDataplane};
    use crate::spec::{Cluster, Node};

    fn node(name: &str, cidrs: &[&str], external_ips: &[&str]) -> Node {
        Node {
            name: name.to_string(),
            cidrs: cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect(),
            external_ips: external_ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            bridge: "kudo0".to_string(),
            uplink: None,
            masquerade: true,
            mtu: None,
        }
    }

    /// Node a (dual stack) with external addresses `a`, and peers b and c with theirs.
    fn cluster(mode: ClusterMode, a: &[&str], b: &[&str], c: &[&str]) -> Desired {
        Desired {
            cluster: Some(Cluster {
                name: None,
                cidrs: vec![
                    "10.0.0.0/16".parse().unwrap(),
                    "fd00:10::/48".parse().unwrap(),
                ],
                mode,
            }),
            node: node("a", &["10.0.0.1/24", "fd00:10::1/64"], a),
            peers: vec![
                node("b", &["10.0.1.1/24", "fd00:10:0:1::1/64"], b),
                node("c", &["10.0.2.1/24", "fd00:10:0:2::1/64"], c),
            ],
            instances: Vec::new(),
            firewall: Default::default(),
        }
    }

    /// A node with an uplink eth0 (MTU 1500) carrying its default route.
    fn fresh_node() -> Observed {
        let mut observed = Observed::default();
        let eth0 = Link {
            up: true,
            ..Link::new(LinkKind::Other)
        };
        observed.links.insert("eth0".to_string(), eth0);
        observed.default_route_interface = Some("eth0".to_string());
        observed
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Applies plans to `dataplane` until one is empty; returns the plans applied.
    fn converge(dataplane: &mut MemoryDataplane, desired: &Desired) -> Vec<Plan> {
        let mut plans = Vec::new();
        loop {
            let plan = plan(desired, &dataplane.observe().unwrap());
            if plan.is_empty() {
                return plans;
            }
            assert!(plans.len() < 2, "no convergence:\n{plan}");
            for action in plan.actions() {
                dataplane.apply(action).unwrap();
            }
            plans.push(plan);
        }
    }

    #[test]
    fn a_namespace_of_someone_elses_is_entered_never_made_nor_deleted_and_its_absence_undoes_the_instance()
     {
        let netns = "/run/netns/cni-1";
        let desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: vec![Instance {
                name: "c1".to_string(),
                id: None,
                node: "a".to_string(),
                addresses: Vec::new(),
                ports: vec![crate::spec::PublishedPort {
                    host_port: 8080,
                    instance_port: 80,
                    protocol: crate::spec::Protocol::Tcp,
                    host_ip: None,
                }],
                netns: Some(netns.to_string()),
                interface: "eth1".to_string(),
            }],
            firewall: FirewallBackend::Iptables,
        };
        let publishes = |observed: &Observed| {
            observed
                .firewall
                .values()
                .flat_map(|table| table.chains.values().flatten())
                .any(|rule| rule.contains("8080"))
        };
        let instance_steps = |plan: &Plan| {
            plan.steps
                .iter()
                .filter(|step| step.scope == Scope::instance("c1"))
                .count()
        };

        // Not there (yet, or any more): reported, never created, nothing published.
        let planned = plan(&desired, &fresh_node());
        assert_eq!(instance_steps(&planned), 0, "{planned}");
        assert_eq!(
            planned
                .conflicts
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            [format!(
                "namespace {netns} of instance \"c1\" does not exist (or is not a network \
                 namespace other than the node's): its owner made none there or deleted it; \
                 kudonet removed what it made for the instance on the node and waits for the \
                 namespace"
            )]
        );
        let mut dataplane = MemoryDataplane::new(fresh_node());
        converge(&mut dataplane, &desired);
        assert!(!publishes(&dataplane.observe().unwrap()));

        // There, someone else's (its loopback carries no mark of kudonet's): the veth goes
        // in as eth1 with the allocated address; their loopback is left as it is.
        let mut theirs = fresh_node();
        let lo = Link::new(LinkKind::Loopback);
        let namespace = crate::observed::Namespace {
            owned: false,
            links: [("lo".to_string(), lo.clone())].into(),
            ..Default::default()
        };
        theirs
            .namespaces
            .insert(netns.to_string(), namespace.clone());
        let mut dataplane = MemoryDataplane::new(theirs.clone());
        converge(&mut dataplane, &desired);
        let built = dataplane.observe().unwrap();
        let inside = &built.namespaces[netns];
        assert_eq!(inside.links["lo"], lo);
        assert_eq!(
            inside.links["eth1"].addresses,
            BTreeSet::from(["10.0.0.2/24".parse().unwrap()])
        );
        assert!(publishes(&built));

        // Gone again (the host end kept alive a moment by a socket): the host veth and the
        // published port go; the namespace is nobody's business of kudonet's.
        let mut gone = built.clone();
        gone.namespaces.remove(netns);
        let planned = plan(&desired, &gone);
        assert!(
            planned.actions().all(|action| !matches!(
                action,
                Action::CreateNamespace { .. } | Action::DeleteNamespace { .. }
            )),
            "{planned}"
        );
        let mut dataplane = MemoryDataplane::new(gone);
        converge(&mut dataplane, &desired);
        let after = dataplane.observe().unwrap();
        assert!(!after.links.contains_key(&names::host_interface_name("c1")));
        assert!(!publishes(&after));

        // A default route of theirs (another network of the runtime) is theirs: reported,
        // and the instance gets everything but a default route.
        let mut routed = theirs.clone();
        let namespace = routed.namespaces.get_mut(netns).unwrap();
        namespace.others_default_gateways.insert(ip("192.168.1.1"));
        let planned = plan(&desired, &routed);
        assert!(
            planned
                .actions()
                .all(|action| !matches!(action, Action::ReplaceDefaultRoute { .. })),
            "{planned}"
        );
        assert!(
            planned
                .actions()
                .any(|action| matches!(action, Action::AddAddress { .. }))
        );
        assert_eq!(
            planned.conflicts[0].message,
            "namespace /run/netns/cni-1 has a default route of someone else's via 192.168.1.1: \
             kudonet leaves it alone, so instance \"c1\" reaches its own subnet only"
        );

        // A link of theirs under the interface's name is theirs: reported, not replaced.
        let mut taken = theirs;
        let mut their_eth1 = Link::new(LinkKind::Veth);
        their_eth1.up = true;
        let namespace = taken.namespaces.get_mut(netns).unwrap();
        namespace.links.insert("eth1".to_string(), their_eth1);
        let planned = plan(&desired, &taken);
        assert_eq!(instance_steps(&planned), 0, "{planned}");
        assert!(
            planned.conflicts[0].message.starts_with(
                "interface eth1 exists in namespace /run/netns/cni-1 and is not kudonet's"
            ),
            "{planned}"
        );
    }

    /// An instance named `name` of node a (10.0.0.0/24) at `10.0.0.<host>`, in namespace
    /// `netns` of someone else's when given.
    fn instance_at(name: &str, host: u8, netns: Option<&str>) -> Instance {
        Instance {
            name: name.to_string(),
            id: None,
            node: "a".to_string(),
            addresses: vec![format!("10.0.0.{host}/24").parse().unwrap()],
            ports: Vec::new(),
            netns: netns.map(str::to_string),
            interface: "eth0".to_string(),
        }
    }

    /// A namespace someone else owns, with its loopback alone.
    fn their_namespace() -> crate::observed::Namespace {
        crate::observed::Namespace {
            owned: false,
            links: [("lo".to_string(), Link::new(LinkKind::Loopback))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_interface_another_instance_left_in_someone_elses_namespace_is_kudonets_and_makes_way() {
        let netns = "/run/netns/cni-1";
        let mut desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: vec![instance_at("b", 3, Some(netns))],
            firewall: FirewallBackend::Iptables,
        };
        let mut theirs = fresh_node();
        theirs
            .namespaces
            .insert(netns.to_string(), their_namespace());
        let mut dataplane = MemoryDataplane::new(theirs);
        converge(&mut dataplane, &desired);

        // b moves to a namespace of kudonet's, a takes b's place in the runtime's namespace,
        // under the same interface name; a is planned first. b's old interface there is
        // kudonet's, not theirs: it goes (with b's host veth, which b then builds anew) and
        // a gets its own, in one pass.
        desired.instances = vec![instance_at("a", 2, Some(netns)), instance_at("b", 3, None)];
        let planned = plan(&desired, &dataplane.observe().unwrap());
        assert_eq!(planned.conflicts, [], "{planned}");
        assert!(
            planned
                .to_string()
                .contains(&format!("- link {netns}/eth0\n")),
            "{planned}"
        );
        dataplane.apply_all(&planned.to_actions()).unwrap();
        let built = dataplane.observe().unwrap();
        assert!(
            plan(&desired, &built).is_empty(),
            "{}",
            plan(&desired, &built)
        );
        assert!(built.is_instance_interface(netns, "eth0"));
        assert_eq!(
            built.links[&names::host_interface_name("a")].peer,
            Some(LinkRef::in_namespace(netns, "eth0"))
        );
        assert_eq!(
            built.namespaces[netns].links["lo"],
            Link::new(LinkKind::Loopback)
        );

        // A crash left c half built beside a's interface (c's veth, addressed and up, but
        // not its default route: the only one is a's, through a's interface). c comes
        // first: a's interface goes, and c's route is asserted again although the
        // observation shows one of its gateway, since it may be the one through a's.
        let mut c = instance_at("c", 4, Some(netns));
        c.interface = "eth1".to_string();
        desired.instances = vec![c, instance_at("a", 2, None), instance_at("b", 3, None)];
        let c_host = names::host_interface_name("c");
        let c_inside = LinkRef::in_namespace(netns, "eth1");
        let mut half_built = MemoryDataplane::new(built.clone());
        half_built
            .apply_all(&[
                Action::CreateVeth {
                    host: c_host.clone(),
                    namespace: netns.to_string(),
                    interface: "eth1".to_string(),
                    instance: "c".to_string(),
                    mtu: None,
                },
                Action::SetMaster {
                    link: c_host.clone(),
                    bridge: "kudo0".to_string(),
                },
                Action::SetHairpin {
                    link: c_host.clone(),
                },
                Action::SetUp {
                    link: LinkRef::host(&c_host),
                },
                Action::AddAddress {
                    link: c_inside.clone(),
                    address: "10.0.0.4/24".parse().unwrap(),
                    no_prefix_route: false,
                },
                Action::SetUp { link: c_inside },
            ])
            .unwrap();
        let planned = plan(&desired, &half_built.observe().unwrap());
        let c_steps: Vec<String> = planned
            .steps
            .iter()
            .filter(|step| step.scope == Scope::instance("c"))
            .map(|step| step.action.to_string())
            .collect();
        assert_eq!(
            c_steps,
            [
                format!("- link {netns}/eth0"),
                format!("~ route default via 10.0.0.1 in {netns}"),
            ],
            "{planned}"
        );
        half_built.apply_all(&planned.to_actions()).unwrap();
        let after = half_built.observe().unwrap();
        assert!(
            plan(&desired, &after).is_empty(),
            "{}",
            plan(&desired, &after)
        );
    }

    #[test]
    fn an_instance_held_back_where_it_is_to_live_takes_its_veth_of_before_along() {
        let netns = "/run/netns/cni-1";
        let desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: vec![
                instance_at("web", 2, Some(netns)),
                instance_at("db", 3, None),
            ],
            firewall: FirewallBackend::Iptables,
        };
        let mut theirs = fresh_node();
        let mut their_eth1 = Link::new(LinkKind::Other);
        their_eth1.up = true;
        let mut namespace = their_namespace();
        namespace.links.insert("eth1".to_string(), their_eth1);
        theirs.namespaces.insert(netns.to_string(), namespace);
        let host = names::host_interface_name("web");
        let web_steps = |planned: &Plan| {
            planned
                .steps
                .iter()
                .filter(|step| step.scope == Scope::instance("web"))
                .map(|step| step.action.to_string())
                .collect::<Vec<_>>()
        };

        // One instance a bridge: db on kudo0, web on kudo-seg1. web is held back, and its
        // veth from before goes (with its interface in the runtime's namespace): it is no
        // port of a bridge any more (kudo-seg1, left without one, goes in the same pass),
        // and nothing leads to web's address meanwhile. Their links stay.
        let plan = |desired: &Desired, observed: &Observed| {
            plan_with_bridge_instances(desired, observed, 1)
        };
        for (moved, conflict) in [
            // To kudo-web, which someone else's namespace squats.
            (
                None,
                "namespace kudo-web exists and was not created by kudonet",
            ),
            // To an interface name a link of theirs has.
            (
                Some("eth1"),
                "interface eth1 exists in namespace /run/netns/cni-1 and is not kudonet's",
            ),
        ] {
            let mut dataplane = MemoryDataplane::new(theirs.clone());
            let built = plan(&desired, &dataplane.state);
            dataplane.apply_all(&built.to_actions()).unwrap();
            assert!(dataplane.state.namespaces[netns].links.contains_key("eth0"));
            assert_eq!(
                dataplane.state.links[&host].master.as_deref(),
                Some("kudo-seg1")
            );
            let mut now = desired.clone();
            match moved {
                None => {
                    now.instances[0].netns = None;
                    dataplane
                        .state
                        .namespaces
                        .insert("kudo-web".to_string(), their_namespace());
                }
                Some(interface) => now.instances[0].interface = interface.to_string(),
            }
            let planned = plan(&now, &dataplane.observe().unwrap());
            assert_eq!(web_steps(&planned), [format!("- link {host}")]);
            assert!(
                planned.conflicts[0].message.starts_with(conflict),
                "{planned}"
            );
            assert!(
                planned.to_string().contains("- link kudo-seg1\n"),
                "{planned}"
            );
            dataplane.apply_all(&planned.to_actions()).unwrap();
            let after = dataplane.observe().unwrap();
            assert!(plan(&now, &after).is_empty(), "{}", plan(&now, &after));
            assert!(!after.links.contains_key(&host));
            assert_eq!(
                after.namespaces[netns].links.keys().collect::<Vec<_>>(),
                ["eth1", "lo"]
            );
            assert_eq!(
                after.namespaces[netns].links["eth1"],
                theirs.namespaces[netns].links["eth1"]
            );
        }
    }

    #[test]
    fn an_instance_a_squatter_holds_back_is_placed_nowhere_so_nothing_is_kept_for_it() {
        // One instance a bridge: a on kudo0, b on kudo-seg1.
        let mut desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: vec![instance_at("a", 2, None), instance_at("b", 3, None)],
            firewall: FirewallBackend::Iptables,
        };
        let mut dataplane = MemoryDataplane::new(fresh_node());
        let built = plan_with_bridge_instances(&desired, &dataplane.state, 1);
        dataplane.apply_all(&built.to_actions()).unwrap();

        // b goes; c, allocated, comes, but a link of someone else's has its host
        // interface's name. A route of kudonet's to 10.0.0.4 on kudo-seg1 is left over (what
        // c would get while b's address is still in use). c is held back, and placed on no
        // bridge: kudo-seg1 goes with that route at once, although c's address moves to
        // 10.0.0.3 once b's is free.
        dataplane
            .state
            .links
            .insert(names::host_interface_name("c"), Link::new(LinkKind::Other));
        dataplane.state.routes.insert(
            "10.0.0.4/32".parse().unwrap(),
            crate::observed::Route {
                gateway: None,
                device: Some("kudo-seg1".to_string()),
                owned: true,
            },
        );
        desired.instances = vec![
            instance_at("a", 2, None),
            Instance {
                addresses: Vec::new(),
                ..instance_at("c", 0, None)
            },
        ];
        let planned = plan_with_bridge_instances(&desired, &dataplane.state, 1);
        assert_eq!(planned.allocated["c"], ["10.0.0.4/24".parse().unwrap()]);
        assert!(
            planned.to_string().contains("- link kudo-seg1\n"),
            "{planned}"
        );
        dataplane.apply_all(&planned.to_actions()).unwrap();
        let again = plan_with_bridge_instances(&desired, &dataplane.state, 1);
        assert!(again.is_empty(), "{again}");
        assert_eq!(again.allocated["c"], ["10.0.0.3/24".parse().unwrap()]);
        assert!(dataplane.state.routes.is_empty());
    }

    #[test]
    fn a_blocked_node_drops_the_segment_of_an_instance_that_left_its_namespace_in_one_pass() {
        let mut desired = Desired {
            cluster: None,
            node: Node {
                bridge: "br-kudo".to_string(),
                ..node("a", &["10.0.0.1/24"], &[])
            },
            peers: Vec::new(),
            instances: ["a", "b", "c", "d", "e"]
                .into_iter()
                .zip(2..)
                .map(|(name, host)| instance_at(name, host, None))
                .collect(),
            firewall: FirewallBackend::Iptables,
        };
        // Two instances a bridge: a and b on br-kudo, c and d on kudo-seg1, e on kudo-seg2.
        let mut dataplane = MemoryDataplane::new(fresh_node());
        let built = plan_with_bridge_instances(&desired, &dataplane.state, 2);
        dataplane.apply_all(&built.to_actions()).unwrap();
        assert_eq!(
            dataplane.state.links[&names::host_interface_name("e")]
                .master
                .as_deref(),
            Some("kudo-seg2")
        );

        // The node's bridge is now a name someone else's bridge holds (the node is blocked),
        // c stays, e moves to a runtime's namespace: its veth goes with kudo-e, so nothing
        // is left on kudo-seg2, which goes in the same pass.
        let netns = "/run/netns/cni-1";
        dataplane
            .state
            .links
            .insert("kudo0".to_string(), Link::new(LinkKind::Bridge));
        dataplane
            .state
            .namespaces
            .insert(netns.to_string(), their_namespace());
        desired.node.bridge = "kudo0".to_string();
        desired.instances = vec![instance_at("c", 4, None), instance_at("e", 6, Some(netns))];
        let planned = plan_with_bridge_instances(&desired, &dataplane.state, 2);
        assert!(planned.blocked, "{planned}");
        assert!(
            planned.to_string().contains("- link kudo-seg2\n"),
            "{planned}"
        );
        dataplane.apply_all(&planned.to_actions()).unwrap();
        let again = plan_with_bridge_instances(&desired, &dataplane.state, 2);
        assert!(again.is_empty(), "{again}");
        assert!(dataplane.state.links.contains_key("kudo-seg1"));
    }

    #[test]
    fn switching_the_firewall_backend_moves_every_rule_and_teardown_clears_both() {
        let mut desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24", "fd00:10::1/64"], &[]),
            peers: Vec::new(),
            instances: Vec::new(),
            firewall: FirewallBackend::Iptables,
        };
        let owned_tables = |observed: &Observed| {
            observed
                .firewall
                .iter()
                .filter(|(_, table)| table.has_kudonet_rules())
                .map(|(table, _)| table.to_string())
                .collect::<Vec<_>>()
        };
        let mut dataplane = MemoryDataplane::new(fresh_node());
        converge(&mut dataplane, &desired);
        assert_eq!(
            owned_tables(&dataplane.state),
            ["filter", "nat", "ip6 filter", "ip6 nat"]
        );
        assert_eq!(dataplane.state.nftables, None);

        desired.firewall = FirewallBackend::Nftables;
        let plans = converge(&mut dataplane, &desired);
        assert_eq!(plans.len(), 1, "one pass switches");
        assert!(owned_tables(&dataplane.state).is_empty());
        let ruleset = dataplane.state.nftables.clone().unwrap();
        assert_eq!(
            ruleset.chains.keys().collect::<Vec<_>>(),
            ["forward", "output", "ports", "postrouting", "prerouting"]
        );

        // Docker sets iptables' FORWARD policy to DROP: kudonet's owned chain accepts its
        // traffic there, in that family only; when the policy goes, so does the chain.
        dataplane.state.iptables_forward_drops.insert(Family::Ipv4);
        converge(&mut dataplane, &desired);
        assert_eq!(owned_tables(&dataplane.state), ["filter"]);
        assert_eq!(dataplane.state.nftables.as_ref(), Some(&ruleset));
        dataplane.state.iptables_forward_drops.clear();
        converge(&mut dataplane, &desired);
        assert!(owned_tables(&dataplane.state).is_empty());

        desired.firewall = FirewallBackend::Iptables;
        let plans = converge(&mut dataplane, &desired);
        assert!(
            plans[0]
                .to_string()
                .contains("- nftables table inet kudonet\n")
        );
        assert_eq!(dataplane.state.nftables, None);
        assert_eq!(owned_tables(&dataplane.state).len(), 4);

        // Teardown removes both backends' rules, whichever is in use.
        desired.firewall = FirewallBackend::Nftables;
        dataplane.state.iptables_forward_drops.insert(Family::Ipv6);
        converge(&mut dataplane, &desired);
        assert_eq!(owned_tables(&dataplane.state), ["ip6 filter"]);
        for action in plan_teardown(&dataplane.state).actions() {
            dataplane.apply(action).unwrap();
        }
        assert!(owned_tables(&dataplane.state).is_empty());
        assert_eq!(dataplane.state.nftables, None);
    }

    #[test]
    fn a_foreign_table_named_like_kudonets_is_a_conflict_and_left_alone() {
        let mut desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: Vec::new(),
            firewall: FirewallBackend::Iptables,
        };
        let mut dataplane = MemoryDataplane::new(fresh_node());
        converge(&mut dataplane, &desired);
        let iptables = dataplane.state.firewall.clone();
        // Someone else's `inet kudonet`, then a switch to nftables: kudonet's rules stay
        // in iptables, untouched, and the table is left alone.
        dataplane.state.foreign_nftables = true;
        desired.firewall = FirewallBackend::Nftables;
        let planned = plan(&desired, &dataplane.state);
        assert!(planned.is_empty(), "{planned}");
        assert_eq!(
            planned.conflicts[0].message,
            "nftables table inet kudonet exists without kudonet's comment: it is someone else's, \
             so kudonet keeps its rules in iptables (rename or delete that table)"
        );
        converge(&mut dataplane, &desired);
        assert_eq!(dataplane.state.firewall, iptables);
        assert!(
            !plan_teardown(&dataplane.state)
                .actions()
                .any(|action| matches!(action, Action::DeleteNftables))
        );
        // Once it is gone, the switch happens, the table first.
        dataplane.state.foreign_nftables = false;
        let planned = plan(&desired, &dataplane.state);
        assert!(matches!(
            planned.actions().next(),
            Some(Action::SyncNftables { .. })
        ));
    }

    #[test]
    fn a_forward_chain_dropping_by_a_rule_also_gets_kudo_forward() {
        let desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24"], &[]),
            peers: Vec::new(),
            instances: Vec::new(),
            firewall: FirewallBackend::Nftables,
        };
        let kudo_forward = |forward: &[&str]| {
            let mut observed = fresh_node();
            observed.firewall.insert(
                crate::observed::TableId::new(Family::Ipv4, "filter"),
                Table {
                    chains: BTreeMap::from([(
                        "FORWARD".to_string(),
                        forward.iter().map(|rule| rule.to_string()).collect(),
                    )]),
                },
            );
            plan(&desired, &observed).actions().any(|action| {
                matches!(action, Action::SyncTable { chains, .. } if chains.contains_key("KUDO-FORWARD"))
            })
        };
        assert!(kudo_forward(&["-i docker0 -j ACCEPT", "-j DROP"]));
        assert!(kudo_forward(&[
            "-j REJECT --reject-with icmp-host-prohibited"
        ]));
        assert!(kudo_forward(&["-s 192.0.2.7/32 -j DROP"]));
        assert!(!kudo_forward(&["-i docker0 -j ACCEPT", "-j DOCKER-USER"]));
        assert!(!kudo_forward(&[]));
    }

    #[test]
    fn each_family_is_masqueraded_behind_the_uplink_of_its_default_route() {
        let desired = Desired {
            cluster: None,
            node: node("a", &["10.0.0.1/24", "fd00:10::1/64"], &[]),
            peers: Vec::new(),
            instances: Vec::new(),
            firewall: Default::default(),
        };
        let mut observed = fresh_node();
        observed
            .links
            .insert("tun6".to_string(), Link::new(LinkKind::Other));
        observed.ipv6_default_route_interface = Some("tun6".to_string());
        let masquerade = |observed: &Observed, table: &str| -> Vec<String> {
            plan(&desired, observed)
                .actions()
                .find_map(|action| match action {
                    Action::SyncTable {
                        table: id, chains, ..
                    } if id.to_string() == table => Some(chains["KUDO-POSTROUTING"].clone()),
                    _ => None,
                })
                .unwrap()
                .into_iter()
                .filter(|rule| rule.ends_with("-j MASQUERADE") && !rule.contains("ctstate"))
                .collect()
        };
        assert_eq!(
            masquerade(&observed, "nat"),
            ["-s 10.0.0.0/24 -o eth0 -j MASQUERADE"]
        );
        assert_eq!(
            masquerade(&observed, "ip6 nat"),
            ["-s fd00:10::/64 -o tun6 -j MASQUERADE"]
        );
        // Without an IPv6 default route, IPv6 leaves through the node's uplink.
        observed.ipv6_default_route_interface = None;
        assert_eq!(
            masquerade(&observed, "ip6 nat"),
            ["-s fd00:10::/64 -o eth0 -j MASQUERADE"]
        );
    }

    const DUAL_A: &[&str] = &["192.0.2.11", "2001:db8::11"];
    const DUAL_B: &[&str] = &["192.0.2.12", "2001:db8::12"];
    const DUAL_C: &[&str] = &["192.0.2.13", "2001:db8::13"];

    #[test]
    fn the_underlay_is_ipv4_only_when_every_node_has_an_ipv4_external_ip() {
        let family = |b: &[&str]| underlay_family(&cluster(ClusterMode::Vxlan, DUAL_A, b, DUAL_C));
        assert_eq!(family(DUAL_B), Family::Ipv4);
        assert_eq!(family(&["192.0.2.12"]), Family::Ipv4);
        assert_eq!(family(&["2001:db8::12"]), Family::Ipv6);
    }

    #[test]
    fn routed_peers_are_reached_per_family_via_their_external_ip_of_that_family() {
        let desired = cluster(ClusterMode::Routed, DUAL_A, DUAL_B, &["2001:db8::13"]);
        let routes: Vec<(String, IpAddr)> = plan(&desired, &fresh_node())
            .actions()
            .filter_map(|action| match action {
                Action::ReplaceRoute {
                    destination,
                    gateway,
                    device: None,
                } => Some((destination.to_string(), *gateway)),
                _ => None,
            })
            .collect();
        // c has no IPv4 externalIp (validation refuses that in a routed cluster): its IPv4
        // subnet gets no route rather than one via an address of the other family.
        assert_eq!(
            routes,
            [
                ("10.0.1.0/24".to_string(), ip("192.0.2.12")),
                ("fd00:10:0:1::/64".to_string(), ip("2001:db8::12")),
                ("fd00:10:0:2::/64".to_string(), ip("2001:db8::13")),
            ]
        );
    }

    #[test]
    fn a_vxlan_over_ipv6_has_an_ipv6_local_address_floods_and_70_bytes_less_mtu() {
        let desired = cluster(
            ClusterMode::Vxlan,
            &["2001:db8::11"],
            &["2001:db8::12"],
            DUAL_C,
        );
        let plan = plan(&desired, &fresh_node());
        let create = plan
            .actions()
            .find(|action| matches!(action, Action::CreateVxlan { .. }))
            .unwrap();
        assert_eq!(
            create,
            &Action::CreateVxlan {
                name: names::VXLAN_DEVICE.to_string(),
                id: names::VXLAN_ID,
                local: Some(ip("2001:db8::11")),
                port: names::VXLAN_PORT,
                uplink: Some("eth0".to_string()),
                mtu: Some(1430),
            }
        );
        let floods: Vec<IpAddr> = plan
            .actions()
            .filter_map(|action| match action {
                Action::AddFlood { destination, .. } => Some(*destination),
                _ => None,
            })
            .collect();
        assert_eq!(floods, [ip("2001:db8::12"), ip("2001:db8::13")]);
        assert!(plan.actions().any(|action| action
            == &Action::CreateBridge {
                name: "kudo0".to_string(),
                mtu: Some(1430),
            }));
        // Both families of each peer over the one device, via the peer's gateways.
        let routes: Vec<String> = plan
            .actions()
            .filter_map(|action| match action {
                Action::ReplaceRoute {
                    destination,
                    gateway,
                    device: Some(device),
                } => Some(format!("{destination} via {gateway} dev {device}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            routes,
            [
                "10.0.1.0/24 via 10.0.1.1 dev kudo0",
                "10.0.2.0/24 via 10.0.2.1 dev kudo0",
                "fd00:10:0:1::/64 via fd00:10:0:1::1 dev kudo0",
                "fd00:10:0:2::/64 via fd00:10:0:2::1 dev kudo0",
            ]
        );
    }

    #[test]
    fn a_peer_without_an_external_ip_of_the_underlay_family_gets_no_flood_entry() {
        // b has IPv4 only, c IPv6 only: the underlay is IPv6 and b cannot be reached.
        let desired = cluster(
            ClusterMode::Vxlan,
            DUAL_A,
            &["192.0.2.12"],
            &["2001:db8::13"],
        );
        let floods: Vec<IpAddr> = plan(&desired, &fresh_node())
            .actions()
            .filter_map(|action| match action {
                Action::AddFlood { destination, .. } => Some(*destination),
                _ => None,
            })
            .collect();
        assert_eq!(floods, [ip("2001:db8::13")]);
    }

    #[test]
    fn switching_the_underlay_family_recreates_the_vxlan_device() {
        let mut dataplane = MemoryDataplane::new(fresh_node());
        let ipv4 = cluster(ClusterMode::Vxlan, DUAL_A, DUAL_B, DUAL_C);
        assert_eq!(converge(&mut dataplane, &ipv4).len(), 1);
        let vxlan = &dataplane.state.links[names::VXLAN_DEVICE];
        assert_eq!(vxlan.mtu, 1450);
        assert_eq!(
            vxlan.flood,
            BTreeSet::from([ip("192.0.2.12"), ip("192.0.2.13")])
        );

        // c loses its IPv4 externalIp: every node tunnels over IPv6 now.
        let ipv6 = cluster(ClusterMode::Vxlan, DUAL_A, DUAL_B, &["2001:db8::13"]);
        let plans = converge(&mut dataplane, &ipv6);
        assert_eq!(plans.len(), 1, "converges in one pass");
        assert_eq!(
            plans[0].to_string(),
            "~ link kudo0: mtu 1430\n\
             - link kudo-vxlan\n\
             + vxlan kudo-vxlan id 75 local 2001:db8::11 dev eth0 (mtu 1430)\n\
             ~ link kudo-vxlan: attach to bridge kudo0\n\
             + flood kudo-vxlan to 2001:db8::12\n\
             + flood kudo-vxlan to 2001:db8::13\n\
             ~ link kudo-vxlan: up\n\
             Plan: 3 to add, 3 to change, 1 to destroy.\n"
        );
        let vxlan = &dataplane.state.links[names::VXLAN_DEVICE];
        assert_eq!(
            vxlan.vxlan.as_ref().unwrap().local,
            Some(ip("2001:db8::11"))
        );
        assert_eq!(vxlan.mtu, 1430);
        assert_eq!(dataplane.state.links["kudo0"].mtu, 1430);
        assert_eq!(
            vxlan.flood,
            BTreeSet::from([ip("2001:db8::12"), ip("2001:db8::13")])
        );

        // And back.
        assert_eq!(converge(&mut dataplane, &ipv4).len(), 1);
        assert_eq!(dataplane.state.links[names::VXLAN_DEVICE].mtu, 1450);
    }

    #[test]
    fn a_node_mtu_wins_over_either_underlay() {
        let mut desired = cluster(ClusterMode::Vxlan, &["2001:db8::11"], DUAL_B, DUAL_C);
        desired.node.mtu = Some(1400);
        assert_eq!(
            instance_mtu(&desired, &fresh_node(), Some("eth0"), Some(Family::Ipv6)),
            1400
        );
        desired.node.mtu = None;
        assert_eq!(
            instance_mtu(&desired, &fresh_node(), Some("eth0"), Some(Family::Ipv6)),
            1430
        );
        assert_eq!(
            instance_mtu(&desired, &fresh_node(), Some("eth0"), Some(Family::Ipv4)),
            1450
        );
    }
}
