//! Convergence is a property, not a hope: from any observed node (half-built instances,
//! drift, foreign objects, leftovers kudonet owns but no longer wants), applying the plan on
//! the in-memory dataplane succeeds, the next plan is empty, and nothing foreign changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cidr::{Ipv4Cidr, Ipv4Inet};
use proptest::prelude::*;

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::names;
use kudonet::names::JUMP_MARK;
use kudonet::observed::{Link, LinkKind, LinkRef, Namespace, Observed, Route, Table};
use kudonet::plan::{Action, plan, plan_teardown};
use kudonet::spec::{Cluster, ClusterMode, Desired, Instance, Node, Protocol, PublishedPort};

const INSTANCE_NAMES: &[&str] = &["web", "db", "api", "cache", "worker-1", "a"];
const BRIDGES: &[&str] = &["kudo0", "br-kudo"];

fn node(
    name: &str,
    third_octet: u8,
    bridge: &str,
    mtu: Option<u32>,
    masquerade: bool,
    uplink: bool,
) -> Node {
    Node {
        name: name.to_string(),
        cidr: Ipv4Inet::new(Ipv4Addr::new(10, 0, third_octet, 1), 24).unwrap(),
        external_ip: Some(Ipv4Addr::new(192, 0, 2, 10 + third_octet)),
        bridge: bridge.to_string(),
        uplink: uplink.then(|| "eth0".to_string()),
        masquerade,
        mtu,
    }
}

prop_compose! {
    fn arb_port()(host_port in 1u16..4, instance_port in 1u16..100, udp: bool, host_ip: bool) -> PublishedPort {
        PublishedPort {
            host_port: 8000 + host_port,
            instance_port,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            host_ip: host_ip.then_some(Ipv4Addr::new(192, 0, 2, 10)),
        }
    }
}

prop_compose! {
    /// A valid desired state for node `a` (10.0.0.0/24), with up to two peers.
    fn arb_desired()(
        chosen in proptest::sample::subsequence(INSTANCE_NAMES, 0..=INSTANCE_NAMES.len()),
        host_offsets in proptest::collection::vec(2u8..250, INSTANCE_NAMES.len()),
        ports in proptest::collection::vec(proptest::collection::vec(arb_port(), 0..3), INSTANCE_NAMES.len()),
        bridge in proptest::sample::select(BRIDGES),
        mtu in proptest::option::of(proptest::sample::select(&[1400u32, 1500, 9000][..])),
        masquerade: bool,
        uplink: bool,
        peers in 0u8..3,
        cluster in proptest::option::of(any::<bool>()),
    ) -> Desired {
        let this = node("a", 0, bridge, mtu, masquerade, uplink);
        let mut used_addresses = Vec::new();
        let mut used_ports = Vec::new();
        let instances = chosen.iter().enumerate().map(|(index, name)| {
            // Distinct host parts: probe upwards from the generated one.
            let mut host = host_offsets[index];
            while used_addresses.contains(&host) {
                host = if host >= 250 { 2 } else { host + 1 };
            }
            used_addresses.push(host);
            let mut instance_ports: Vec<PublishedPort> = ports[index].clone();
            // One (protocol, host port) per node, as validation guarantees.
            instance_ports.retain(|port| {
                let key = (port.protocol, port.host_port);
                !used_ports.contains(&key) && { used_ports.push(key); true }
            });
            Instance {
                name: name.to_string(),
                id: None,
                node: "a".to_string(),
                address: Ipv4Inet::new(Ipv4Addr::new(10, 0, 0, host), 24).unwrap(),
                ports: instance_ports,
            }
        }).collect();
        Desired {
            cluster: cluster.map(|vxlan| Cluster {
                name: Some("c".to_string()),
                cidr: Some(Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap()),
                mode: if vxlan { ClusterMode::Vxlan } else { ClusterMode::Routed },
            }),
            node: this,
            peers: (1..=peers).map(|index| node(&format!("p{index}"), index, "kudo0", None, true, false)).collect(),
            instances,
        }
    }
}

/// Things that happen to a node behind kudonet's back. Indexes pick among what exists.
#[derive(Debug, Clone)]
enum Drift {
    DeleteHostLink(usize),
    DeleteNamespace(usize),
    DeleteInnerLink(usize),
    SetDown(usize),
    SetMtu(usize),
    AddStrayAddress(usize),
    DropAddresses(usize),
    Detach(usize),
    DropDefaultRoute(usize),
    FlushChain(usize),
    DeleteChain(usize),
    DropJumps(usize),
    ResetSysctl(usize),
    DeleteRoute(usize),
}

fn arb_drift() -> impl Strategy<Value = Drift> {
    let index = any::<usize>();
    prop_oneof![
        index.prop_map(Drift::DeleteHostLink),
        index.prop_map(Drift::DeleteNamespace),
        index.prop_map(Drift::DeleteInnerLink),
        index.prop_map(Drift::SetDown),
        index.prop_map(Drift::SetMtu),
        index.prop_map(Drift::AddStrayAddress),
        index.prop_map(Drift::DropAddresses),
        index.prop_map(Drift::Detach),
        index.prop_map(Drift::DropDefaultRoute),
        index.prop_map(Drift::FlushChain),
        index.prop_map(Drift::DeleteChain),
        index.prop_map(Drift::DropJumps),
        index.prop_map(Drift::ResetSysctl),
        index.prop_map(Drift::DeleteRoute),
    ]
}

fn pick<T: Clone>(items: impl Iterator<Item = T>, index: usize) -> Option<T> {
    let items: Vec<T> = items.collect();
    (!items.is_empty()).then(|| items[index % items.len()].clone())
}

fn drift(dataplane: &mut MemoryDataplane, drift: &Drift) {
    let state = &mut dataplane.state;
    let host_links = || state.links.keys().cloned();
    let inner_links: Vec<LinkRef> = state
        .namespaces
        .iter()
        .flat_map(|(netns, namespace)| {
            // The kernel refuses to delete a loopback.
            namespace
                .links
                .iter()
                .filter(|(_, link)| link.kind != LinkKind::Loopback)
                .map(|(name, _)| LinkRef::in_namespace(netns, name))
        })
        .collect();
    let all_links: Vec<LinkRef> = host_links()
        .map(|name| LinkRef::host(&name))
        .chain(inner_links.clone())
        .collect();
    match *drift {
        Drift::DeleteHostLink(i) => {
            if let Some(name) = pick(host_links(), i) {
                dataplane
                    .apply(&Action::DeleteLink {
                        link: LinkRef::host(&name),
                    })
                    .unwrap();
            }
        }
        Drift::DeleteInnerLink(i) => {
            if let Some(link) = pick(inner_links.into_iter(), i) {
                dataplane.apply(&Action::DeleteLink { link }).unwrap();
            }
        }
        Drift::DeleteNamespace(i) => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), i) {
                dataplane.apply(&Action::DeleteNamespace { name }).unwrap();
            }
        }
        Drift::SetDown(i)
        | Drift::SetMtu(i)
        | Drift::AddStrayAddress(i)
        | Drift::DropAddresses(i)
        | Drift::Detach(i) => {
            let Some(link) = pick(all_links.into_iter(), i) else {
                return;
            };
            let links = match &link.netns {
                None => &mut state.links,
                Some(netns) => &mut state.namespaces.get_mut(netns).unwrap().links,
            };
            let target = links.get_mut(&link.name).unwrap();
            match drift {
                Drift::SetDown(_) => target.up = false,
                Drift::SetMtu(_) => target.mtu = 1280,
                Drift::AddStrayAddress(_) => {
                    target.addresses.insert("198.51.100.7/24".parse().unwrap());
                }
                Drift::DropAddresses(_) => target.addresses.clear(),
                _ => {
                    target.master = None;
                    target.hairpin = false;
                }
            }
        }
        Drift::DropDefaultRoute(i) => {
            if let Some(name) = pick(state.namespaces.keys().cloned(), i) {
                state.namespaces.get_mut(&name).unwrap().default_gateway = None;
            }
        }
        Drift::FlushChain(i) | Drift::DeleteChain(i) => {
            let chains = state.firewall.iter().flat_map(|(table, t)| {
                t.chains
                    .keys()
                    .filter(|c| Table::is_owned_chain(c))
                    .map(move |c| (table.clone(), c.clone()))
            });
            if let Some((table, chain)) = pick(chains, i) {
                let chains = &mut state.firewall.get_mut(&table).unwrap().chains;
                if matches!(drift, Drift::FlushChain(_)) {
                    chains.get_mut(&chain).unwrap().clear();
                } else {
                    chains.remove(&chain);
                }
            }
        }
        Drift::DropJumps(i) => {
            if let Some(table) = pick(state.firewall.keys().cloned(), i) {
                for rules in state.firewall.get_mut(&table).unwrap().chains.values_mut() {
                    rules.retain(|rule| !Table::is_owned_jump(rule));
                }
            }
        }
        Drift::ResetSysctl(i) => {
            if let Some(key) = pick(state.sysctls.keys().cloned(), i) {
                state.sysctls.insert(key, "0".to_string());
            }
        }
        Drift::DeleteRoute(i) => {
            if let Some(destination) = pick(state.routes.keys().copied(), i) {
                state.routes.remove(&destination);
            }
        }
    }
}

/// Objects that are not kudonet's, some squatting on names kudonet wants.
#[derive(Debug, Clone)]
struct Foreign {
    links: Vec<(String, LinkKind)>,
    namespaces: Vec<String>,
    routes: Vec<u8>,
    forward_rules: Vec<String>,
    other_chain: bool,
    /// kudonet's chains left in the other iptables backend, beside a rule of someone else's.
    other_backend: bool,
}

fn arb_foreign() -> impl Strategy<Value = Foreign> {
    let link_names = prop_oneof![
        Just("eth0".to_string()),
        Just("docker0".to_string()),
        proptest::sample::select(BRIDGES).prop_map(str::to_string),
        proptest::sample::select(INSTANCE_NAMES).prop_map(names::host_interface_name),
    ];
    let kinds = proptest::sample::select(&[LinkKind::Bridge, LinkKind::Veth, LinkKind::Other][..]);
    (
        proptest::collection::vec((link_names, kinds), 0..3),
        proptest::collection::vec(
            prop_oneof![
                Just("other".to_string()),
                proptest::sample::select(INSTANCE_NAMES).prop_map(names::namespace_name)
            ],
            0..2,
        ),
        proptest::collection::vec(0u8..3, 0..2),
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    "-j DROP",
                    "-i docker0 -j ACCEPT",
                    "-m comment --comment kudonet-ish -j ACCEPT",
                ][..],
            )
            .prop_map(str::to_string),
            0..3,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(links, namespaces, routes, forward_rules, other_chain, other_backend)| Foreign {
                links,
                namespaces,
                routes,
                forward_rules,
                other_chain,
                other_backend,
            },
        )
}

fn add_foreign(state: &mut Observed, foreign: &Foreign) {
    for (name, kind) in &foreign.links {
        let mut link = Link::new(*kind);
        link.up = true;
        link.addresses.insert("192.0.2.10/24".parse().unwrap());
        state.links.entry(name.clone()).or_insert(link);
    }
    for name in &foreign.namespaces {
        state.namespaces.entry(name.clone()).or_default();
    }
    for third_octet in &foreign.routes {
        let destination = Ipv4Cidr::new(Ipv4Addr::new(10, 0, *third_octet, 0), 24).unwrap();
        state.routes.insert(
            destination,
            Route {
                gateway: Some(Ipv4Addr::new(192, 0, 2, 99)),
                device: None,
                owned: false,
            },
        );
    }
    let filter = state.firewall.entry("filter".to_string()).or_default();
    filter
        .chains
        .insert("FORWARD".to_string(), foreign.forward_rules.clone());
    if foreign.other_chain {
        filter
            .chains
            .insert("DOCKER-USER".to_string(), vec!["-j RETURN".to_string()]);
    }
    if foreign.other_backend {
        let nat = state.other_backend.entry("nat".to_string()).or_default();
        nat.chains.insert(
            "KUDO-PORTS".to_string(),
            vec!["-p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.9:80".to_string()],
        );
        nat.chains.insert(
            "PREROUTING".to_string(),
            vec![
                format!("{JUMP_MARK} -j KUDO-PORTS"),
                "-d 198.51.100.7/32 -j RETURN".to_string(),
            ],
        );
    }
    state.default_route_interface = Some("eth0".to_string());
    state
        .sysctls
        .insert("net.ipv4.ip_forward".to_string(), "0".to_string());
}

/// Everything on the node that kudonet does not own, as it must stay.
#[derive(Debug, PartialEq)]
struct ForeignView {
    links: BTreeMap<String, Link>,
    namespaces: BTreeMap<String, Namespace>,
    routes: BTreeMap<Ipv4Cidr, Route>,
    rules: BTreeMap<(String, String), Vec<String>>,
}

fn foreign_view(state: &Observed) -> ForeignView {
    ForeignView {
        links: state
            .links
            .iter()
            .filter(|(_, link)| !link.is_owned())
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect(),
        namespaces: state
            .namespaces
            .iter()
            .filter(|(_, ns)| !ns.owned)
            .map(|(n, ns)| (n.clone(), ns.clone()))
            .collect(),
        routes: state
            .routes
            .iter()
            .filter(|(_, r)| !r.owned)
            .map(|(d, r)| (*d, r.clone()))
            .collect(),
        rules: state
            .firewall
            .iter()
            .map(|(table, t)| (table.clone(), t))
            .chain(
                state
                    .other_backend
                    .iter()
                    .map(|(table, t)| (format!("other backend {table}"), t)),
            )
            .flat_map(|(table, t)| {
                t.chains
                    .iter()
                    .filter(|(chain, _)| !Table::is_owned_chain(chain))
                    .map(move |(chain, rules)| {
                        let others = rules
                            .iter()
                            .filter(|rule| !Table::is_owned_jump(rule))
                            .cloned()
                            .collect();
                        ((table.clone(), chain.clone()), others)
                    })
            })
            .filter(|(_, rules): &(_, Vec<String>)| !rules.is_empty())
            .collect(),
    }
}

/// Whether anything kudonet owns is left.
fn owned_objects(state: &Observed) -> Vec<String> {
    let mut owned = Vec::new();
    owned.extend(
        state
            .links
            .iter()
            .filter(|(_, l)| l.is_owned())
            .map(|(n, _)| format!("link {n}")),
    );
    owned.extend(
        state
            .namespaces
            .iter()
            .filter(|(_, ns)| ns.owned)
            .map(|(n, _)| format!("namespace {n}")),
    );
    owned.extend(
        state
            .routes
            .iter()
            .filter(|(_, r)| r.owned)
            .map(|(d, _)| format!("route {d}")),
    );
    for (table, t) in state.firewall.iter().chain(&state.other_backend) {
        for (chain, rules) in &t.chains {
            if Table::is_owned_chain(chain) {
                owned.push(format!("chain {table} {chain}"));
            }
            owned.extend(
                rules
                    .iter()
                    .filter(|r| Table::is_owned_jump(r))
                    .map(|r| format!("rule {table} {chain} {r}")),
            );
        }
    }
    owned
}

prop_compose! {
    /// A node as it may be found: foreign objects, then part of an earlier desired state's
    /// plan (a crash mid-apply), then drift.
    fn arb_observed()(
        foreign in arb_foreign(),
        earlier in arb_desired(),
        applied_fraction in 0.0f64..=1.0,
        drifts in proptest::collection::vec(arb_drift(), 0..6),
    ) -> (Observed, Foreign) {
        let mut state = Observed::default();
        add_foreign(&mut state, &foreign);
        let mut dataplane = MemoryDataplane::new(state);
        let earlier_plan = plan(&earlier, &dataplane.state);
        let applied = (earlier_plan.actions.len() as f64 * applied_fraction) as usize;
        dataplane.apply_all(&earlier_plan.actions[..applied]).expect("an earlier plan applies");
        for change in &drifts {
            drift(&mut dataplane, change);
        }
        (dataplane.state, foreign)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_converges_and_leaves_foreign_objects_alone(desired in arb_desired(), (observed, _) in arb_observed()) {
        let first = plan(&desired, &observed);
        let mut dataplane = MemoryDataplane::new(observed.clone());
        if let Err(error) = dataplane.apply_all(&first.actions) {
            panic!("plan failed: {error}\nplan:\n{first}");
        }
        let converged = dataplane.observe().unwrap();
        let second = plan(&desired, &converged);
        prop_assert!(second.actions.is_empty(), "second plan not empty:\n{}\nafter:\n{}", second, first);
        prop_assert_eq!(&second.conflicts, &first.conflicts, "conflicts are stable");
        prop_assert_eq!(foreign_view(&converged), foreign_view(&observed));
        // Stale rules in the other iptables backend would keep forwarding removed ports.
        prop_assert!(converged.other_backend.values().all(|table| !table.has_kudonet_rules()));
    }

    #[test]
    fn teardown_removes_exactly_what_kudonet_owns((observed, _) in arb_observed()) {
        let mut dataplane = MemoryDataplane::new(observed.clone());
        let teardown = plan_teardown(&observed);
        if let Err(error) = dataplane.apply_all(&teardown.actions) {
            panic!("teardown failed: {error}\nplan:\n{teardown}");
        }
        let after = dataplane.observe().unwrap();
        prop_assert_eq!(owned_objects(&after), Vec::<String>::new());
        prop_assert_eq!(foreign_view(&after), foreign_view(&observed));
        prop_assert!(plan_teardown(&after).actions.is_empty());
    }

    #[test]
    fn planning_is_deterministic(desired in arb_desired(), (observed, _) in arb_observed()) {
        prop_assert_eq!(plan(&desired, &observed), plan(&desired, &observed));
    }
}

#[test]
fn a_converged_node_needs_no_write() {
    let desired = Desired {
        cluster: None,
        node: node("a", 0, "kudo0", Some(1500), true, true),
        peers: vec![node("b", 1, "kudo0", None, true, false)],
        instances: vec![Instance {
            name: "web".to_string(),
            id: None,
            node: "a".to_string(),
            address: "10.0.0.2/24".parse().unwrap(),
            ports: vec![PublishedPort {
                host_port: 8080,
                instance_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            }],
        }],
    };
    let mut dataplane = MemoryDataplane::default();
    dataplane
        .apply_all(&plan(&desired, &Observed::default()).actions)
        .unwrap();
    let writes = dataplane.writes;
    assert!(writes > 0);
    let again = plan(&desired, &dataplane.observe().unwrap());
    assert_eq!(again.to_string(), "No changes.\n");
    dataplane.apply_all(&again.actions).unwrap();
    assert_eq!(dataplane.writes, writes);
}
