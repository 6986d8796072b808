//! Validation: turns parsed documents into a `Spec`, or reports every rule of
//! docs/file-format.md that does not hold, each at the position of the offending value.
//!
//! Two passes: each document is checked on its own (kind, fields, formats), then the
//! documents are checked against each other (names, subnets, addresses, ports).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use cidr::{IpCidr, IpInet};
use serde_saphyr::{Location, Spanned};

use super::diagnostic::{Diagnostic, Invalid, Origin, Position, quoted};
use super::load::Loaded;
use super::model::{
    BRIDGE_INSTANCES, Cluster, ClusterMode, DEFAULT_BRIDGE, Family, Instance, MAX_BRIDGES,
    NODE_INSTANCES, Node, Protocol, PublishedPort, Spec,
};
use super::raw::{OneOrMore, RawDocument, RawPort};
use crate::names;

const API_VERSION: &str = "kudonet/v1";

const CLUSTER_FIELDS: &[&str] = &["apiVersion", "kind", "name", "cidr", "mode"];
const NODE_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "cidr",
    "externalIp",
    "bridge",
    "uplink",
    "masquerade",
    "mtu",
];
const INSTANCE_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "node",
    "address",
    "ports",
    "id",
    "netns",
    "interface",
];

/// The fields a document of `kind` may have.
pub(super) fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Cluster" => Some(CLUSTER_FIELDS),
        "Node" => Some(NODE_FIELDS),
        "Instance" => Some(INSTANCE_FIELDS),
        _ => None,
    }
}

/// A field of another kind: say whose it is rather than guess at a typo.
fn misplaced_field_message(field: &str, kind: &str, allowed: &[&str]) -> String {
    let owners: Vec<&str> = ["Cluster", "Node", "Instance"]
        .into_iter()
        .filter(|owner| fields_of(owner).is_some_and(|fields| fields.contains(&field)))
        .collect();
    format!(
        "field `{field}` is not allowed in a {kind} (it is a field of {}), expected one of {}",
        owners.join(" and "),
        allowed.join(", ")
    )
}

/// The least MTU IPv6 works with (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// IPv4's minimum MTU up to the largest the kernel accepts on a bridge or veth.
const MTU_RANGE: std::ops::RangeInclusive<i64> = 68..=65535;

/// Instance names are DNS labels.
const MAX_INSTANCE_NAME: usize = 63;

/// Node names are host names in practice.
const MAX_NODE_NAME: usize = 253;

/// A value and where it was written.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    origin: Origin,
}

/// The entries of a field that takes a string or a list, at most one per family, IPv4 first.
#[derive(Debug)]
struct Listed<T> {
    /// The entries that are right.
    entries: Vec<At<T>>,
    /// Whether every entry is (else each wrong one was reported, and rules that need the
    /// whole field are not checked, so that one mistake gives one error).
    complete: bool,
}

#[derive(Debug)]
struct ClusterDecl {
    doc: Origin,
    value: Cluster,
    cidr_origin: Option<Origin>,
}

#[derive(Debug)]
struct NodeDecl {
    name: At<String>,
    /// At most one per family.
    cidrs: Listed<IpInet>,
    /// Where `cidr` is written.
    cidr_origin: Option<Origin>,
    /// At most one per family.
    external_ips: Listed<IpAddr>,
    doc: Origin,
    bridge: String,
    uplink: Option<String>,
    masquerade: bool,
    mtu: Option<u32>,
}

#[derive(Debug)]
struct InstanceDecl {
    name: At<String>,
    id: Option<At<String>>,
    node: Option<At<String>>,
    /// Each address and, when written, its prefix length; at most one per family.
    addresses: Listed<(IpAddr, Option<u8>)>,
    ports: Vec<PortDecl>,
    netns: Option<At<String>>,
    interface: Option<String>,
    doc: Origin,
}

/// A published port, and where its `hostIp` is written.
#[derive(Debug)]
struct PortDecl {
    value: PublishedPort,
    origin: Origin,
    host_ip_origin: Option<Origin>,
}

/// Validates every document of `loaded`; `root` names the directory in directory-wide errors.
pub(super) fn validate(root: &Path, loaded: &Loaded) -> Result<Spec, Vec<Diagnostic>> {
    let mut checker = Checker {
        diagnostics: loaded.diagnostics.clone(),
        node_documents: loaded.broken_nodes.len(),
        broken_nodes: loaded.broken_nodes.clone(),
        ..Checker::default()
    };
    for document in &loaded.documents {
        let file = &loaded.files[document.file];
        let context = DocumentContext {
            path: &file.path,
            text: &file.text,
        };
        checker.document(&context, &document.raw);
    }
    // An unreadable DIR is reported once, not also as "no Node".
    let root_unreadable = loaded
        .diagnostics
        .iter()
        .any(|diagnostic| diagnostic.origin == Origin::path(root));
    let spec = checker.cross_check(root, root_unreadable);
    let mut diagnostics = checker.diagnostics;
    if diagnostics.is_empty() {
        Ok(spec)
    } else {
        diagnostics.sort();
        diagnostics.dedup();
        Err(diagnostics)
    }
}

struct DocumentContext<'a> {
    path: &'a Path,
    text: &'a str,
}

impl DocumentContext<'_> {
    fn origin(&self, location: Location) -> Origin {
        Origin::at(self.path, position(location))
    }

    /// The unquoted IPv6 address ending in `::` written at `location`, if that is what is
    /// there: YAML reads `- fd00::` or `[fd00::]` as a mapping.
    fn unquoted_ipv6(&self, location: Location) -> Option<&str> {
        let start = self
            .text
            .char_indices()
            .nth(location.span().offset() as usize)?
            .0;
        let rest = &self.text[start..];
        let end = rest.find([',', ']', '}', '\n', '#']).unwrap_or(rest.len());
        let token = rest[..end].trim();
        (token.ends_with("::") && token.parse::<Ipv6Addr>().is_ok()).then_some(token)
    }

    /// Where the key of a field is: serde only gives the value's location, which for a block
    /// sequence is the line after the key. The key is the last occurrence of its name before
    /// its value.
    fn key_origin(&self, value: Location, key: &str) -> Origin {
        let value_byte = self
            .text
            .char_indices()
            .nth(value.span().offset() as usize)
            .map_or(self.text.len(), |(index, _)| index);
        match self.text[..value_byte].rfind(key) {
            Some(key_byte) => {
                let before = &self.text[..key_byte];
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                Origin::at(
                    self.path,
                    Position {
                        line: before.matches('\n').count() as u64 + 1,
                        column: before[line_start..].chars().count() as u64 + 1,
                    },
                )
            }
            None => self.origin(value),
        }
    }
}

fn position(location: Location) -> Position {
    Position {
        line: location.line().max(1),
        column: location.column().max(1),
    }
}

#[derive(Default)]
struct Checker {
    diagnostics: Vec<Diagnostic>,
    clusters: Vec<ClusterDecl>,
    nodes: Vec<NodeDecl>,
    instances: Vec<InstanceDecl>,
    /// Node documents seen, including those too broken to declare a node.
    node_documents: usize,
    /// The names (when readable) of Node documents that failed to parse.
    broken_nodes: Vec<Option<String>>,
}

impl Checker {
    fn error(&mut self, origin: Origin, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(origin, message));
    }

    /// Checks a string field with `parse`, reporting its error at the field's value.
    fn parse<T>(
        &mut self,
        context: &DocumentContext,
        field: &Option<Spanned<String>>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<At<T>> {
        let field = field.as_ref()?;
        let origin = context.origin(field.referenced);
        match parse(&field.value) {
            Ok(value) => Some(At { value, origin }),
            Err(message) => {
                self.error(origin, message);
                None
            }
        }
    }

    /// Checks a field that takes a string or a list (at most one entry per family) with
    /// `parse`, reporting each error at its entry (an empty list at the field's value).
    fn parse_list<T>(
        &mut self,
        context: &DocumentContext,
        field: &Option<Spanned<OneOrMore>>,
        what: &str,
        parse: impl Fn(&str) -> Result<T, Invalid>,
        family: impl Fn(&T) -> Family,
    ) -> Listed<T> {
        let mut listed = Listed {
            entries: Vec::new(),
            complete: true,
        };
        let Some(field) = field else {
            return listed;
        };
        let entries = match &field.value {
            OneOrMore::One(text) => vec![(Ok(text.as_str()), field.referenced)],
            OneOrMore::More(entries) => entries
                .iter()
                .map(|entry| (entry.value.0.as_deref(), entry.referenced))
                .collect(),
            OneOrMore::Other(other) => {
                self.error(
                    context.origin(field.referenced),
                    format!("`{what}` must be a string or a list of strings, not {other}"),
                );
                listed.complete = false;
                return listed;
            }
        };
        if entries.is_empty() {
            self.error(
                context.origin(field.referenced),
                format!("`{what}` must not be an empty list"),
            );
            listed.complete = false;
        }
        for (text, location) in entries {
            let origin = context.origin(location);
            let text = match text {
                Ok(text) => text,
                Err(other) => {
                    let hint = context
                        .unquoted_ipv6(location)
                        .map(|ip| {
                            format!(
                                " (an IPv6 address ending in `::` must be quoted, as in \"{ip}\")"
                            )
                        })
                        .unwrap_or_default();
                    self.error(
                        origin,
                        format!("each entry of `{what}` must be a string, not {other}{hint}"),
                    );
                    listed.complete = false;
                    continue;
                }
            };
            match parse(text) {
                Ok(value) => {
                    if let Some(first) = listed
                        .entries
                        .iter()
                        .find(|other| family(&other.value) == family(&value))
                    {
                        self.error(
                            origin,
                            format!(
                                "`{what}` has two {} entries ({} here, and at {}): at most one per family",
                                family(&value),
                                quoted(text),
                                first.origin
                            ),
                        );
                        listed.complete = false;
                    } else {
                        listed.entries.push(At { value, origin });
                    }
                }
                Err(message) => {
                    self.error(origin, message);
                    listed.complete = false;
                }
            }
        }
        listed.entries.sort_by_key(|entry| family(&entry.value));
        listed
    }

    fn require<'a, T>(
        &mut self,
        doc: &Origin,
        kind: &str,
        name: &str,
        field: &'a Option<Spanned<T>>,
    ) -> Option<&'a Spanned<T>> {
        if field.is_none() {
            self.error(
                doc.clone(),
                format!("{kind} is missing required field `{name}`"),
            );
        }
        field.as_ref()
    }

    fn document(&mut self, context: &DocumentContext, document: &Spanned<RawDocument>) {
        let raw = &document.value;
        let doc = context.origin(document.referenced);
        if let Some(version) = &raw.api_version
            && version.value != API_VERSION
        {
            self.error(
                context.origin(version.referenced),
                format!(
                    "unsupported apiVersion {}: expected {API_VERSION}",
                    quoted(&version.value)
                ),
            );
        }
        let Some(kind) = &raw.kind else {
            self.error(
                doc,
                "document has no `kind` (expected Cluster, Node or Instance)",
            );
            return;
        };
        let kind_name = kind.value.as_str();
        let Some(allowed) = fields_of(kind_name) else {
            self.error(
                context.origin(kind.referenced),
                format!(
                    "unknown kind {}: expected Cluster, Node or Instance",
                    quoted(kind_name)
                ),
            );
            return;
        };
        for field in raw.fields() {
            if let Some(location) = field.location
                && !allowed.contains(&field.name)
            {
                self.error(
                    context.key_origin(location, field.name),
                    misplaced_field_message(field.name, kind_name, allowed),
                );
            }
        }
        match kind_name {
            "Cluster" => self.cluster(context, raw, doc),
            "Node" => self.node(context, raw, doc),
            _ => self.instance(context, raw, doc),
        }
    }

    fn cluster(&mut self, context: &DocumentContext, raw: &RawDocument, doc: Origin) {
        let name = self.parse(context, &raw.name, |name| {
            check_name("Cluster", name).map(|()| name.to_string())
        });
        let cidrs = self.parse_list(context, &raw.cidr, "cidr", parse_network, |cidr| {
            Family::of(cidr.first_address())
        });
        let mode = self
            .parse(context, &raw.mode, |mode| match mode {
                "routed" => Ok(ClusterMode::Routed),
                "vxlan" => Ok(ClusterMode::Vxlan),
                other => Err(Invalid(format!(
                    "unknown mode {}: expected routed or vxlan",
                    quoted(other)
                ))),
            })
            .map(|mode| mode.value)
            .unwrap_or_default();
        self.clusters.push(ClusterDecl {
            doc,
            value: Cluster {
                name: name.map(|name| name.value),
                cidrs: cidrs.entries.iter().map(|cidr| cidr.value).collect(),
                mode,
            },
            cidr_origin: raw
                .cidr
                .as_ref()
                .map(|cidr| context.origin(cidr.referenced)),
        });
    }

    fn node(&mut self, context: &DocumentContext, raw: &RawDocument, doc: Origin) {
        self.node_documents += 1;
        self.require(&doc, "Node", "name", &raw.name);
        self.require(&doc, "Node", "cidr", &raw.cidr);
        let name = self.parse(context, &raw.name, |name| {
            check_name("Node", name).map(|()| name.to_string())
        });
        let cidrs = self.parse_list(context, &raw.cidr, "cidr", parse_gateway, |cidr| {
            Family::of(cidr.address())
        });
        let external_ips = self.parse_list(
            context,
            &raw.external_ip,
            "externalIp",
            |ip| parse_address(ip, "externalIp"),
            |ip| Family::of(*ip),
        );
        let bridge = self.parse(context, &raw.bridge, |bridge| {
            check_bridge_name(bridge).map(|()| bridge.to_string())
        });
        let uplink = self.parse(context, &raw.uplink, |uplink| {
            check_interface_name(uplink).map(|()| uplink.to_string())
        });
        let mtu = raw.mtu.as_ref().and_then(|mtu| {
            if MTU_RANGE.contains(&mtu.value) {
                Some(mtu.value as u32)
            } else {
                self.error(
                    context.origin(mtu.referenced),
                    format!(
                        "mtu {} is outside {}..{}",
                        mtu.value,
                        MTU_RANGE.start(),
                        MTU_RANGE.end()
                    ),
                );
                None
            }
        });
        // The kernel turns IPv6 off on a link of a smaller MTU.
        if let (Some(value), Some(field)) = (mtu, &raw.mtu)
            && value < IPV6_MIN_MTU
            && cidrs
                .entries
                .iter()
                .any(|cidr| Family::of(cidr.value.address()) == Family::Ipv6)
        {
            self.error(
                context.origin(field.referenced),
                format!(
                    "mtu {value} is below {IPV6_MIN_MTU}, the least IPv6 works with, and the \
                     Node has an IPv6 subnet"
                ),
            );
        }
        let Some(name) = name else { return };
        self.nodes.push(NodeDecl {
            name,
            cidrs,
            cidr_origin: raw
                .cidr
                .as_ref()
                .map(|cidr| context.origin(cidr.referenced)),
            external_ips,
            doc,
            bridge: bridge.map_or_else(|| DEFAULT_BRIDGE.to_string(), |bridge| bridge.value),
            uplink: uplink.map(|uplink| uplink.value),
            masquerade: raw
                .masquerade
                .as_ref()
                .is_none_or(|masquerade| masquerade.value),
            mtu,
        });
    }

    fn instance(&mut self, context: &DocumentContext, raw: &RawDocument, doc: Origin) {
        self.require(&doc, "Instance", "name", &raw.name);
        // Without `address`, kudonet allocates one of each of the node's families.
        let name = self.parse(context, &raw.name, |name| {
            check_instance_name(name).map(|()| name.to_string())
        });
        let node = self.parse(context, &raw.node, |node| {
            check_name("Node", node).map(|()| node.to_string())
        });
        let id = self.parse(context, &raw.id, |id| {
            check_instance_id(id).map(|()| id.to_string())
        });
        let netns = self.parse(context, &raw.netns, |path| {
            check_netns_path(path).map(|()| path.to_string())
        });
        if let (Some(id), Some(_)) = (&raw.id, &netns) {
            // `id` names a namespace of kudonet's; `netns` is someone else's.
            self.error(
                context.origin(id.referenced),
                "an Instance with `netns` has no `id` (the id names a namespace kudonet creates)"
                    .to_string(),
            );
        }
        let interface = self.parse(context, &raw.interface, |interface| {
            check_instance_interface(interface).map(|()| interface.to_string())
        });
        let addresses = self.parse_list(
            context,
            &raw.address,
            "address",
            parse_instance_address,
            |(ip, _)| Family::of(*ip),
        );
        let ports = raw
            .ports
            .iter()
            .flat_map(|ports| &ports.value)
            .filter_map(|port| self.port(context, port))
            .collect();
        let Some(name) = name else { return };
        self.instances.push(InstanceDecl {
            name,
            id,
            node,
            addresses,
            ports,
            netns,
            interface: interface.map(|interface| interface.value),
            doc,
        });
    }

    fn port(&mut self, context: &DocumentContext, port: &Spanned<RawPort>) -> Option<PortDecl> {
        let origin = context.origin(port.referenced);
        let raw = &port.value;
        let mut number = |field: &Option<Spanned<i64>>, name: &str| {
            let Some(field) = field else {
                self.error(
                    origin.clone(),
                    format!("port is missing required field `{name}`"),
                );
                return None;
            };
            match port_number(field.value) {
                Some(port) => Some(port),
                None => {
                    self.error(
                        context.origin(field.referenced),
                        format!("{name} {} is outside 1..65535", field.value),
                    );
                    None
                }
            }
        };
        let host_port = number(&raw.host_port, "hostPort");
        let instance_port = number(&raw.instance_port, "instancePort");
        let protocol = self.parse(context, &raw.protocol, |protocol| match protocol {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(Invalid(format!(
                "unknown protocol {}: expected tcp or udp",
                quoted(other)
            ))),
        });
        let protocol_valid = raw.protocol.is_none() || protocol.is_some();
        let host_ip = self.parse(context, &raw.host_ip, parse_host_ip);
        let host_ip_valid = raw.host_ip.is_none() || host_ip.is_some();
        let (Some(host_port), Some(instance_port), true, true) =
            (host_port, instance_port, protocol_valid, host_ip_valid)
        else {
            return None;
        };
        Some(PortDecl {
            value: PublishedPort {
                host_port,
                instance_port,
                protocol: protocol.map(|protocol| protocol.value).unwrap_or_default(),
                host_ip: host_ip.as_ref().map(|ip| ip.value),
            },
            origin,
            host_ip_origin: host_ip.map(|ip| ip.origin),
        })
    }

    /// The rules between documents. Returns the spec they describe (meaningful only when no
    /// diagnostic was recorded).
    fn cross_check(&mut self, root: &Path, root_unreadable: bool) -> Spec {
        if let [first, rest @ ..] = self.clusters.as_slice() {
            let duplicates: Vec<Diagnostic> = rest
                .iter()
                .map(|cluster| {
                    Diagnostic::new(
                        cluster.doc.clone(),
                        format!("more than one Cluster: the first is at {}", first.doc),
                    )
                })
                .collect();
            self.diagnostics.extend(duplicates);
        }
        let cluster = self
            .clusters
            .first()
            .map(|cluster| (cluster.value.clone(), cluster.cidr_origin.clone()));
        if self.node_documents == 0 && !root_unreadable {
            self.error(
                Origin::path(root),
                "no Node: at least one document of kind Node is required",
            );
        }
        self.check_duplicate_names();
        let cluster_cidrs = cluster
            .as_ref()
            .map(|(cluster, _)| cluster.cidrs.clone())
            .unwrap_or_default();
        let routed = cluster
            .as_ref()
            .is_none_or(|(cluster, _)| cluster.mode == ClusterMode::Routed);
        let nodes = self.check_nodes(&cluster_cidrs, routed);
        let instances = self.check_instances(&nodes);
        self.check_capacity(&nodes);
        let mut nodes: Vec<Node> = nodes.into_values().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let node_cidr_origins = self
            .nodes
            .iter()
            .filter_map(|node| Some((node.name.value.clone(), node.cidr_origin.clone()?)))
            .collect();
        Spec {
            cluster: cluster.map(|(cluster, _)| cluster),
            nodes,
            instances,
            node_cidr_origins,
        }
    }

    fn check_duplicate_names(&mut self) {
        let mut errors = Vec::new();
        let node_names = self.nodes.iter().map(|node| &node.name);
        let instance_names = self.instances.iter().map(|instance| &instance.name);
        for (kind, names) in [
            ("Node", node_names.collect::<Vec<_>>()),
            ("Instance", instance_names.collect()),
        ] {
            let mut first: HashMap<&str, &Origin> = HashMap::new();
            for name in names {
                if let Some(previous) = first.insert(&name.value, &name.origin) {
                    errors.push(Diagnostic::new(
                        name.origin.clone(),
                        format!(
                            "duplicate {kind} name {}: also defined at {previous}",
                            quoted(&name.value)
                        ),
                    ));
                    first.insert(&name.value, previous);
                }
            }
        }
        self.diagnostics.extend(errors);
    }

    /// Checks nodes against each other and the cluster; returns the well-formed ones by name.
    fn check_nodes(&mut self, cluster_cidrs: &[IpCidr], routed: bool) -> BTreeMap<String, Node> {
        let mut errors = Vec::new();
        let several = self.node_documents > 1;
        let mut subnets: Vec<(IpCidr, &NodeDecl, &Origin)> = Vec::new();
        let mut external_ips: HashMap<IpAddr, &Origin> = HashMap::new();
        for node in &self.nodes {
            for cidr in &node.cidrs.entries {
                let subnet = cidr.value.network();
                let family = Family::of(subnet.first_address());
                if let Some(cluster) = cluster_cidrs
                    .iter()
                    .find(|cluster| Family::of(cluster.first_address()) == family)
                    && !contains(cluster, &subnet)
                {
                    errors.push(Diagnostic::new(
                        cidr.origin.clone(),
                        format!(
                            "subnet {subnet} of Node {} is outside the Cluster cidr {cluster}",
                            quoted(&node.name.value)
                        ),
                    ));
                }
                for (other_subnet, other, other_origin) in &subnets {
                    if overlaps(&subnet, other_subnet) {
                        errors.push(Diagnostic::new(
                            cidr.origin.clone(),
                            format!(
                                "subnet {subnet} of Node {} overlaps subnet {other_subnet} of Node {} at {other_origin}",
                                quoted(&node.name.value),
                                quoted(&other.name.value)
                            ),
                        ));
                    }
                }
                subnets.push((subnet, node, &cidr.origin));
                // A routed cluster reaches a peer's subnet via the peer's address of the
                // subnet's family.
                if several
                    && routed
                    && node.external_ips.complete
                    && !node.external_ips.entries.is_empty()
                    && !node
                        .external_ips
                        .entries
                        .iter()
                        .any(|ip| Family::of(ip.value) == family)
                {
                    errors.push(Diagnostic::new(
                        cidr.origin.clone(),
                        format!(
                            "Node {} has an {family} subnet and no {family} `externalIp`: a routed \
                             cluster routes each subnet via the peer's address of its family",
                            quoted(&node.name.value)
                        ),
                    ));
                }
            }
            for ip in &node.external_ips.entries {
                if let Some(previous) = external_ips.insert(ip.value, &ip.origin) {
                    errors.push(Diagnostic::new(
                        ip.origin.clone(),
                        format!("externalIp {} is also used at {previous}", ip.value),
                    ));
                }
            }
            // A wrong or empty `externalIp` was reported as such.
            if several && node.external_ips.complete && node.external_ips.entries.is_empty() {
                errors.push(Diagnostic::new(
                    node.doc.clone(),
                    format!(
                        "Node {} is missing `externalIp`, required when the directory describes several nodes",
                        quoted(&node.name.value)
                    ),
                ));
            }
        }
        if several && !routed {
            errors.extend(self.check_vxlan_underlay());
        }
        self.diagnostics.extend(errors);
        self.nodes
            .iter()
            .filter_map(|node| {
                // A node whose cidr is wrong (or missing) was reported; its instances are
                // not checked against half of it.
                (node.cidrs.complete && !node.cidrs.entries.is_empty()).then_some(())?;
                Some(Node {
                    name: node.name.value.clone(),
                    cidrs: node.cidrs.entries.iter().map(|cidr| cidr.value).collect(),
                    external_ips: node
                        .external_ips
                        .entries
                        .iter()
                        .map(|ip| ip.value)
                        .collect(),
                    bridge: node.bridge.clone(),
                    uplink: node.uplink.clone(),
                    masquerade: node.masquerade,
                    mtu: node.mtu,
                })
            })
            .map(|node| (node.name.clone(), node))
            .collect()
    }

    /// A vxlan cluster tunnels over one family, IPv4 when every Node has an IPv4
    /// `externalIp`, else IPv6: every Node needs an `externalIp` of it (a node without one
    /// could neither send nor be flooded to). Nodes whose `externalIp` is missing or wrong
    /// were reported as such.
    fn check_vxlan_underlay(&self) -> Vec<Diagnostic> {
        let complete: Vec<&NodeDecl> = self
            .nodes
            .iter()
            .filter(|node| node.external_ips.complete && !node.external_ips.entries.is_empty())
            .collect();
        let has = |node: &NodeDecl, family| {
            node.external_ips
                .entries
                .iter()
                .any(|ip| Family::of(ip.value) == family)
        };
        let Some(without_ipv4) = complete.iter().find(|node| !has(node, Family::Ipv4)) else {
            return Vec::new();
        };
        complete
            .iter()
            .filter(|node| !has(node, Family::Ipv6))
            .map(|node| {
                let at = node.external_ips.entries[0].origin.clone();
                Diagnostic::new(
                    at,
                    format!(
                        "Node {} has no IPv6 `externalIp`: a vxlan cluster tunnels over one family, \
                         IPv6 here since Node {} has no IPv4 `externalIp`; give every Node an \
                         `externalIp` of one family",
                        quoted(&node.name.value),
                        quoted(&without_ipv4.name.value)
                    ),
                )
            })
            .collect()
    }

    /// A node holds at most as many instances as its subnet has addresses for, and at most
    /// [`NODE_INSTANCES`] (docs/file-format.md, "How many instances a node holds"): one
    /// error at the Node, rather than a node built in part.
    fn check_capacity(&mut self, nodes: &BTreeMap<String, Node>) {
        let only_node = match self.nodes.as_slice() {
            [node] if self.node_documents == 1 => Some(node.name.value.as_str()),
            _ => None,
        };
        // Instances by node, and by node and family (those with an address of it).
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut family_counts: BTreeMap<(&str, Family), usize> = BTreeMap::new();
        for instance in &self.instances {
            let node = instance.node.as_ref().map(|node| node.value.as_str());
            if let Some(node) = node.or(only_node) {
                *counts.entry(node).or_default() += 1;
                let mut families: Vec<Family> = instance
                    .addresses
                    .entries
                    .iter()
                    .map(|address| Family::of(address.value.0))
                    .collect();
                // An instance without `address` takes one of each family of its node.
                if instance.addresses.complete
                    && families.is_empty()
                    && let Some(node) = nodes.get(node)
                {
                    families = node.families().collect();
                }
                for family in families {
                    *family_counts.entry((node, family)).or_default() += 1;
                }
            }
        }
        let mut errors = Vec::new();
        for decl in &self.nodes {
            let Some(node) = nodes.get(&decl.name.value) else {
                continue;
            };
            let name = quoted(&node.name);
            let count = counts.get(node.name.as_str()).copied().unwrap_or_default();
            if count > NODE_INSTANCES {
                errors.push(Diagnostic::new(
                    decl.name.origin.clone(),
                    format!(
                        "Node {name} has {count} instances, more than a node holds: \
                         {NODE_INSTANCES} ({MAX_BRIDGES} bridges of {BRIDGE_INSTANCES})"
                    ),
                ));
                continue;
            }
            for cidr in &decl.cidrs.entries {
                let subnet = cidr.value.network();
                let family = Family::of(subnet.first_address());
                let count = family_counts
                    .get(&(node.name.as_str(), family))
                    .copied()
                    .unwrap_or_default();
                // Every address but the network, broadcast (IPv4 only) and gateway ones.
                let host_bits = u32::from(family.bits() - subnet.network_length());
                let reserved = match family {
                    Family::Ipv4 => 3,
                    Family::Ipv6 => 2,
                };
                let addresses = 1usize
                    .checked_shl(host_bits)
                    .map_or(usize::MAX, |all| all - reserved);
                if count > addresses {
                    errors.push(Diagnostic::new(
                        cidr.origin.clone(),
                        format!(
                            "Node {name} has {count} instances, more than its subnet {subnet} has \
                             addresses for ({addresses})"
                        ),
                    ));
                }
            }
        }
        self.diagnostics.extend(errors);
    }

    fn check_instances(&mut self, nodes: &BTreeMap<String, Node>) -> Vec<Instance> {
        let mut errors = Vec::new();
        let mut instances = Vec::new();
        let only_node = match self.nodes.as_slice() {
            [node] if self.node_documents == 1 => Some(node.name.value.as_str()),
            _ => None,
        };
        let mut addresses: HashMap<IpAddr, &Origin> = HashMap::new();
        // Who publishes each (node, protocol, host port), on which families and host
        // address (`None`: every address of those families).
        type Publisher<'a> = (Vec<Family>, Option<IpAddr>, &'a str, &'a Origin);
        let mut published: HashMap<(&str, Protocol, u16), Vec<Publisher>> = HashMap::new();
        let mut interfaces: HashMap<String, &str> = HashMap::new();
        let mut namespaces: HashMap<String, (&str, &Origin)> = HashMap::new();
        for instance in &self.instances {
            let name = instance.name.value.as_str();
            let node_name = match (&instance.node, only_node) {
                (Some(node), _) => {
                    let declared = self
                        .nodes
                        .iter()
                        .any(|declared| declared.name.value == node.value);
                    let broken = self
                        .broken_nodes
                        .iter()
                        .any(|broken| broken.as_ref() == Some(&node.value));
                    if !declared && !broken {
                        errors.push(Diagnostic::new(
                            node.origin.clone(),
                            format!(
                                "Instance {} is on Node {}, which does not exist",
                                quoted(name),
                                quoted(&node.value)
                            ),
                        ));
                    }
                    node.value.as_str()
                }
                (None, Some(only)) => only,
                (None, None) => {
                    if self.node_documents > 1 {
                        errors.push(Diagnostic::new(
                            instance.doc.clone(),
                            format!(
                                "Instance {} is missing `node`, required when the directory describes several nodes",
                                quoted(name)
                            ),
                        ));
                    }
                    continue;
                }
            };
            let id = instance.id.as_ref().map(|id| id.value.as_str());
            let namespace = match &instance.netns {
                Some(path) => path.value.clone(),
                None => names::namespace_name(id.unwrap_or(name)),
            };
            // Equal names are reported as duplicates; an id or a netns can take another's
            // namespace.
            let this = instance
                .netns
                .as_ref()
                .or(instance.id.as_ref())
                .map_or(&instance.name.origin, |at| &at.origin);
            if let Some((other, previous)) = namespaces.insert(namespace.clone(), (name, this))
                && other != name
            {
                errors.push(Diagnostic::new(
                    this.clone(),
                    format!(
                        "namespace {namespace} of Instance {} is already the namespace of Instance {} at {previous}",
                        quoted(name),
                        quoted(other)
                    ),
                ));
            }
            let interface = names::host_interface_name(name);
            // Equal names are reported as duplicates; only distinct names can collide here.
            if let Some(other) = interfaces.insert(interface.clone(), name)
                && other != name
            {
                errors.push(Diagnostic::new(
                    instance.name.origin.clone(),
                    format!(
                        "instances {} and {} would share host interface {interface}; rename one",
                        quoted(other),
                        quoted(name)
                    ),
                ));
            }
            // Without `address`, the instance gets an address of each of its node's families.
            let allocated = instance.addresses.complete && instance.addresses.entries.is_empty();
            let families: Vec<Family> = match nodes.get(node_name) {
                Some(node) if allocated => node.families().collect(),
                _ => instance
                    .addresses
                    .entries
                    .iter()
                    .map(|address| Family::of(address.value.0))
                    .collect(),
            };
            for port in &instance.ports {
                if let Some(ip) = port.value.host_ip
                    && !families.contains(&Family::of(ip))
                {
                    // Unless the instance's addresses are wrong (and reported as such).
                    if instance.addresses.complete && !families.is_empty() {
                        let family = Family::of(ip);
                        errors.push(Diagnostic::new(
                            port.host_ip_origin.clone().unwrap_or(port.origin.clone()),
                            format!(
                                "hostIp {ip} is {family} and Instance {} has no {family} address",
                                quoted(name),
                            ),
                        ));
                    }
                    // Published on no address the instance has: it takes no host port.
                    continue;
                }
                // The families it is published on: its hostIp's, else all the instance has.
                let served: Vec<Family> = families
                    .iter()
                    .copied()
                    .filter(|family| port.value.serves(*family))
                    .collect();
                let key = (node_name, port.value.protocol, port.value.host_port);
                let users = published.entry(key).or_default();
                let any = |ip: &Option<IpAddr>| ip.is_none_or(|ip| ip.is_unspecified());
                let this_ip = port.value.host_ip;
                let clash = users
                    .iter()
                    .find_map(|(other_families, other_ip, other, origin)| {
                        let shared = served
                            .iter()
                            .find(|family| other_families.contains(family))?;
                        (any(&this_ip) || any(other_ip) || this_ip == *other_ip)
                            .then_some((*shared, other_ip, other, origin))
                    });
                if let Some((family, other_ip, other, origin)) = clash {
                    let at = |ip: &Option<IpAddr>| {
                        let ip = ip.unwrap_or(family.unspecified());
                        let socket = std::net::SocketAddr::new(ip, port.value.host_port);
                        format!("{socket}/{}", port.value.protocol)
                    };
                    let (this, other_port) = (at(&this_ip), at(other_ip));
                    let on = if this == other_port {
                        String::new()
                    } else {
                        format!(" on {other_port}")
                    };
                    errors.push(Diagnostic::new(
                        port.origin.clone(),
                        format!(
                            "host port {this} on Node {} is already published{on} by Instance {} at {origin}",
                            quoted(node_name),
                            quoted(other)
                        ),
                    ));
                }
                users.push((served, this_ip, name, &port.origin));
            }
            let Some(node) = nodes.get(node_name) else {
                continue;
            };
            let mut valid = Vec::new();
            for address in &instance.addresses.entries {
                let (ip, prefix) = address.value;
                match check_instance_address(ip, prefix, node) {
                    Err(message) => errors.push(Diagnostic::new(address.origin.clone(), message)),
                    Ok(address_inet) => {
                        if let Some(previous) = addresses.insert(ip, &address.origin) {
                            errors.push(Diagnostic::new(
                                address.origin.clone(),
                                format!("address {ip} is already used at {previous}"),
                            ));
                        }
                        valid.push(address_inet);
                    }
                }
            }
            if instance.addresses.complete && valid.len() == instance.addresses.entries.len() {
                instances.push(Instance {
                    name: name.to_string(),
                    id: id.map(str::to_string),
                    node: node_name.to_string(),
                    addresses: valid,
                    ports: instance.ports.iter().map(|port| port.value).collect(),
                    netns: instance.netns.as_ref().map(|path| path.value.clone()),
                    interface: instance
                        .interface
                        .clone()
                        .unwrap_or_else(|| names::INSTANCE_INTERFACE.to_string()),
                });
            }
        }
        self.diagnostics.extend(errors);
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        instances
    }
}

/// Whether `inner` lies inside `outer` (never for two families).
pub(super) fn contains(outer: &IpCidr, inner: &IpCidr) -> bool {
    outer.family() == inner.family()
        && outer.network_length() <= inner.network_length()
        && outer.contains(&inner.first_address())
}

pub(super) fn overlaps(a: &IpCidr, b: &IpCidr) -> bool {
    contains(a, b) || contains(b, a)
}

fn check_instance_address(ip: IpAddr, prefix: Option<u8>, node: &Node) -> Result<IpInet, Invalid> {
    let family = Family::of(ip);
    let node_name = quoted(&node.name);
    let (Some(subnet), Some(gateway)) = (node.subnet(family), node.gateway(family)) else {
        return Err(Invalid(format!(
            "address {ip} is {family} and Node {node_name} has no {family} subnet"
        )));
    };
    if let Some(prefix) = prefix
        && prefix != subnet.network_length()
    {
        return Err(Invalid(format!(
            "prefix /{prefix} of address {ip} differs from the /{} of Node {node_name}'s subnet {subnet}",
            subnet.network_length()
        )));
    }
    if !subnet.contains(&ip) {
        return Err(Invalid(format!(
            "address {ip} is outside Node {node_name}'s subnet {subnet}"
        )));
    }
    if ip == subnet.first_address() {
        return Err(Invalid(format!(
            "address {ip} is the network address of subnet {subnet}"
        )));
    }
    // IPv6 has no broadcast address.
    if family == Family::Ipv4 && ip == subnet.last_address() {
        return Err(Invalid(format!(
            "address {ip} is the broadcast address of subnet {subnet}"
        )));
    }
    if ip == gateway {
        return Err(Invalid(format!(
            "address {ip} is Node {node_name}'s gateway (its bridge address)"
        )));
    }
    IpInet::new(ip, subnet.network_length()).map_err(|error| Invalid(error.to_string()))
}

/// An IPv4 or IPv6 address, with a clear word for anything else.
fn parse_address(text: &str, what: &str) -> Result<IpAddr, Invalid> {
    text.parse::<IpAddr>()
        .map_err(|_| Invalid(format!("{what} {} is not an IP address", quoted(text))))
}

/// A published port's `hostIp`. IPv6's loopback is refused: the kernel has no
/// `route_localnet` for IPv6, so a port published on `::1` could never be reached.
fn parse_host_ip(text: &str) -> Result<IpAddr, Invalid> {
    let ip = parse_address(text, "hostIp")?;
    if ip == IpAddr::V6(Ipv6Addr::LOCALHOST) {
        return Err(Invalid(format!(
            "hostIp {ip}: a port cannot be published on IPv6's loopback (the kernel forwards \
             no traffic from it to an instance); use 127.0.0.1, or the node's IPv6 addresses"
        )));
    }
    Ok(ip)
}

/// `A.B.C.D/N` or `X:Y::Z/N`, with a clear message for each way it can be wrong.
fn parse_prefixed(text: &str, what: &str) -> Result<(IpAddr, u8), Invalid> {
    let Some((address, prefix)) = text.split_once('/') else {
        return Err(Invalid(format!(
            "{what} {} needs a prefix length, as in 10.0.0.1/24 or fd00::1/64",
            quoted(text)
        )));
    };
    let address = address.parse::<IpAddr>().map_err(|_| {
        Invalid(format!(
            "{what} {} is not a CIDR such as 10.0.0.1/24 or fd00::1/64",
            quoted(text)
        ))
    })?;
    let max = Family::of(address).bits();
    // Digits only, no leading zero: `/024` or `/+24` are typos, not prefixes.
    let canonical = !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    match prefix.parse::<u8>() {
        Ok(prefix) if canonical && prefix <= max => Ok((address, prefix)),
        _ => Err(Invalid(format!(
            "{what} {} has an invalid prefix length (0..{max})",
            quoted(text)
        ))),
    }
}

/// A Cluster `cidr`: a network such as 10.0.0.0/16 or fd00:10::/48.
fn parse_network(text: &str) -> Result<IpCidr, Invalid> {
    let (address, prefix) = parse_prefixed(text, "cidr")?;
    IpCidr::new(address, prefix)
        .map_err(|_| {
            let network = IpInet::new(address, prefix).map(|inet| inet.network());
            format!(
                "cidr {} has host bits set: did you mean {}?",
                quoted(text),
                network
                    .map(|network| network.to_string())
                    .unwrap_or_default()
            )
        })
        .map_err(Invalid)
}

/// A Node `cidr`: the bridge's address and prefix, a usable host address of its subnet.
fn parse_gateway(text: &str) -> Result<IpInet, Invalid> {
    let (address, prefix) = parse_prefixed(text, "cidr")?;
    let family = Family::of(address);
    if address.is_loopback() {
        return Err(Invalid(format!(
            "cidr {}: a loopback address cannot be a node's bridge address, the gateway of its instances",
            quoted(text)
        )));
    }
    if let IpAddr::V6(v6) = address
        && (v6.is_unicast_link_local() || v6.is_multicast() || v6.is_unspecified())
    {
        return Err(Invalid(format!(
            "cidr {}: a link-local, multicast or unspecified address cannot be a node's bridge address",
            quoted(text)
        )));
    }
    let max = family.bits() - 2;
    if prefix > max {
        return Err(Invalid(format!(
            "cidr {}: a node subnet needs a prefix of at most /{max} to hold instances",
            quoted(text)
        )));
    }
    let inet = IpInet::new(address, prefix).map_err(|error| Invalid(error.to_string()))?;
    let subnet = inet.network();
    // `next`, not `IpInet::increment`, which in cidr 0.3 increments a copy and leaves the
    // address as it was.
    let first_host = IpInet::new(subnet.first_address(), prefix)
        .ok()
        .and_then(IpInet::next)
        .map_or(subnet.first_address(), |first| first.address());
    if address == subnet.first_address() {
        return Err(Invalid(format!(
            "cidr {} is the network address of {subnet}, not a usable bridge address (e.g. {first_host}/{prefix})",
            quoted(text),
        )));
    }
    if family == Family::Ipv4 && address == subnet.last_address() {
        return Err(Invalid(format!(
            "cidr {} is the broadcast address of {subnet}, not a usable bridge address (e.g. {first_host}/{prefix})",
            quoted(text),
        )));
    }
    Ok(inet)
}

/// An Instance `address`: `10.0.0.2/24`, `10.0.0.2`, `fd00::2/64` or `fd00::2`.
fn parse_instance_address(text: &str) -> Result<(IpAddr, Option<u8>), Invalid> {
    if text.contains('/') {
        let (address, prefix) = parse_prefixed(text, "address")?;
        Ok((address, Some(prefix)))
    } else {
        Ok((parse_address(text, "address")?, None))
    }
}

/// Rules every name follows: it ends up in paths, interface aliases and log lines.
fn check_name(kind: &str, name: &str) -> Result<(), Invalid> {
    check_text(&format!("{kind} name"), name, MAX_NODE_NAME)
}

/// The rules of names for `what` (`Node name`, `Instance id`...), at most `max` bytes.
fn check_text(what: &str, name: &str, max: usize) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid(format!("{what} must not be empty")));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Invalid(format!(
            "{what} {} contains a control character (U+{:04X})",
            quoted(name),
            c as u32
        )));
    }
    if name.contains('/') || name.contains("..") {
        return Err(Invalid(format!(
            "{what} {} must not contain `/` or `..`",
            quoted(name)
        )));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(Invalid(format!(
            "{what} {} must not contain whitespace",
            quoted(name)
        )));
    }
    if name.len() > max {
        return Err(Invalid(format!(
            "{what} is {} characters long, over the limit of {max}",
            name.chars().count()
        )));
    }
    Ok(())
}

/// A port number (a published port's `hostPort` or `instancePort`, a port of the library's
/// `Port`) is in 1..=65535: `None` for anything else.
pub fn port_number(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|&port| port != 0)
}

/// The rules of a Node name.
pub fn check_node_name(name: &str) -> Result<(), Invalid> {
    check_name("Node", name)
}

/// Instance ids name a namespace, `kudo-<id>`, which must fit a file name (255 bytes).
const MAX_INSTANCE_ID: usize = 250;

/// Whether `name` is a DNS label: what every Instance name is.
pub fn is_dns_label(name: &str) -> bool {
    (1..=MAX_INSTANCE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An Instance `id`: any name an orchestrator gives (capitals, dots...) that is safe as the
/// namespace name `kudo-<id>`.
pub fn check_instance_id(id: &str) -> Result<(), Invalid> {
    check_text("Instance id", id, MAX_INSTANCE_ID)
}

/// Instance names are DNS labels: they name namespaces and appear in DNS-like places.
fn check_instance_name(name: &str) -> Result<(), Invalid> {
    if name.len() > MAX_INSTANCE_NAME {
        return Err(Invalid(format!(
            "Instance name is {} characters long, over the DNS label limit of {MAX_INSTANCE_NAME}",
            name.chars().count()
        )));
    }
    check_name("Instance", name)?;
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "Instance name {} is not a DNS label: lowercase letters, digits and `-`, \
             starting and ending with a letter or digit, at most 63 characters",
            quoted(name)
        )))
    }
}

fn check_bridge_name(name: &str) -> Result<(), Invalid> {
    let valid = (1..=names::MAX_INTERFACE_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.contains("..")
        && name != ".";
    if !valid {
        return Err(Invalid(format!(
            "bridge {} must be 1..15 characters of [a-zA-Z0-9_.-], without `..`",
            quoted(name)
        )));
    }
    match names::reserved_link_name(name) {
        Some(reason) => Err(Invalid(format!(
            "bridge {} {reason}; choose another name",
            quoted(name)
        ))),
        None => Ok(()),
    }
}

/// The path of a namespace someone else owns: absolute, and plain (no `.` or `..`
/// component, no doubled or trailing `/`), so that one namespace has one spelling.
fn check_netns_path(path: &str) -> Result<(), Invalid> {
    let plain = path.starts_with('/')
        && path.len() > 1
        && path.len() <= MAX_NETNS_PATH
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path.chars().any(|c| c.is_control());
    let file_name = path.rsplit('/').next().unwrap_or_default();
    if plain && file_name.starts_with(names::NAMESPACE_PREFIX) {
        return Err(Invalid(format!(
            "netns {}: names starting with {} are those of kudonet's own namespaces, which it \
             creates and deletes; name the namespace otherwise",
            quoted(path),
            names::NAMESPACE_PREFIX
        )));
    }
    if plain && (path == "/proc" || path.starts_with("/proc/")) {
        return Err(Invalid(format!(
            "netns {} names a process's namespace, which another process's becomes once the \
             process ends and its id is reused: name a bind mount of it instead (ip netns \
             attach, or the runtime's /run/netns/...)",
            quoted(path)
        )));
    }
    if plain {
        Ok(())
    } else {
        Err(Invalid(format!(
            "netns {} is not a plain absolute path (such as /run/netns/cni-1234: no `.` or `..` \
             parts, no trailing `/`, at most {MAX_NETNS_PATH} bytes)",
            quoted(path)
        )))
    }
}

/// The longest `netns` path (PATH_MAX less the terminating NUL).
const MAX_NETNS_PATH: usize = 4095;

/// The name of an instance's interface inside its namespace: a name the kernel accepts,
/// and not the loopback's.
fn check_instance_interface(name: &str) -> Result<(), Invalid> {
    if name == "lo" {
        return Err(Invalid(
            "interface \"lo\" is the namespace's loopback; choose another name".to_string(),
        ));
    }
    check_interface_name(name).map_err(|_| {
        Invalid(format!(
            "interface {} is not an interface name (1..15 characters, no `/`, `:` or whitespace)",
            quoted(name)
        ))
    })
}

/// Any name the kernel accepts for an existing interface.
fn check_interface_name(name: &str) -> Result<(), Invalid> {
    let valid = (1..=names::MAX_INTERFACE_NAME).contains(&name.len())
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        && !name.contains("..")
        && name != ".";
    if valid {
        Ok(())
    } else {
        Err(Invalid(format!(
            "uplink {} is not an interface name (1..15 characters, no `/`, `:` or whitespace)",
            quoted(name)
        )))
    }
}
