//! kudonet's nftables table, `inet kudonet`, as data: its sets and maps with their elements,
//! its chains with their rules, in nft's own words (each type prints as `nft list` would).
//!
//! The planner builds the table a node needs ([`crate::plan`]); the kernel dataplane writes it
//! in one netlink transaction and reads it back into the same structure, so that desired and
//! observed compare as values, never as text. The vocabulary is exactly what kudonet writes:
//! a rule the kernel holds that is not expressible here reads as [`Verdict::Unknown`], which
//! equals nothing kudonet wants and so gets replaced.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use cidr::IpCidr;
use serde::Deserialize;

use crate::spec::{Family, Protocol};

/// The family of kudonet's table: `inet`, one table for IPv4 and IPv6.
pub const TABLE_FAMILY: &str = "inet";
/// The name of kudonet's table.
pub const TABLE_NAME: &str = "kudonet";
/// The comment that marks the table as kudonet's: a table of that name without it is not
/// kudonet's, and is never changed or deleted.
pub const TABLE_COMMENT: &str = "kudonet";

/// Everything in kudonet's table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ruleset {
    /// Sets and maps, by name.
    pub sets: BTreeMap<String, Set>,
    /// Chains, by name.
    pub chains: BTreeMap<String, Chain>,
}

/// A set (no `data` types) or a map (`data` types: what each key maps to).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Set {
    /// The key's types, concatenated (`inet_proto . inet_service`).
    pub key: Vec<Type>,
    /// The data's types for a map, concatenated; empty for a set.
    pub data: Vec<Type>,
    /// The elements by key.
    pub elements: BTreeMap<Vec<Value>, Element>,
}

/// The data and comment of an element.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Element {
    /// What the key maps to (a map), or nothing (a set).
    pub data: Vec<Value>,
    /// Who the element is for (an instance's name), shown by `nft list` and in plans.
    pub comment: Option<String>,
}

/// The type of a key or data field, as nft names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    /// An interface name.
    Ifname,
    /// A transport protocol (`tcp`, `udp`).
    InetProto,
    /// A port.
    InetService,
    /// An IPv4 address.
    Ipv4Addr,
    /// An IPv6 address.
    Ipv6Addr,
}

/// A value of one field of a key or data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// An interface name.
    Ifname(String),
    /// A transport protocol.
    Proto(Protocol),
    /// A port.
    Port(u16),
    /// An address.
    Address(IpAddr),
}

/// A chain: a base chain when it has a `hook`, else reached by jumps only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chain {
    /// Where a base chain is attached; its policy is always accept.
    pub hook: Option<Hook>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// Where a base chain is attached: its type, hook and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// `nat` or `filter`.
    pub kind: ChainKind,
    /// The netfilter hook.
    pub point: HookPoint,
    /// The priority: lower runs first (nat: -100 before routing, 100 after; filter: 0).
    pub priority: i32,
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainKind {
    /// Sees the first packet of each connection; may translate addresses.
    Nat,
    /// Sees every packet; accepts or drops.
    Filter,
}

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Packets arriving, before routing.
    Prerouting,
    /// Packets the node sends, before routing.
    Output,
    /// Packets routed through the node.
    Forward,
    /// Packets leaving, after routing.
    Postrouting,
}

/// A rule: every match must hold for the verdict to apply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The conditions, in order.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// What happens to a matching packet.
    pub verdict: Verdict,
}

/// A condition on a packet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// The packet is of this family (`meta nfproto ipv4`).
    Nfproto(Family),
    /// It arrived on an interface of the set (`iifname @bridges`).
    IifnameIn(String),
    /// It leaves through an interface of the set (`oifname @bridges`).
    OifnameIn(String),
    /// It leaves through this interface (`oifname "eth0"`).
    Oifname(String),
    /// It leaves through another interface than this one (`oifname != "kudo0"`).
    OifnameNot(String),
    /// Its source is in this network (`ip saddr 10.0.0.0/24`); implies the family.
    Saddr(IpCidr),
    /// Its destination is in this network (`ip daddr 10.0.0.0/16`); implies the family.
    Daddr(IpCidr),
    /// Its destination is not this address (`ip6 daddr != ::1`); implies the family.
    DaddrNot(IpAddr),
    /// It is addressed to the node itself (`fib daddr type local`).
    FibDaddrLocal,
    /// The node itself sent it (`fib saddr type local`).
    FibSaddrLocal,
    /// Its connection was destination-translated (`ct status dnat`).
    CtStatusDnat,
    /// It belongs to, or is related to, a known connection (`ct state
    /// established,related`).
    CtStateEstablishedRelated,
}

/// What a rule does to a matching packet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Lets it through this chain (`accept`).
    Accept,
    /// Leaves this chain (`return`).
    Return,
    /// Continues in another chain (`jump ports`).
    Jump(String),
    /// Rewrites its source to the outgoing interface's address (`masquerade`).
    Masquerade,
    /// Rewrites its destination to the address and port the map gives for its key:
    /// `[daddr .] l4proto . dport` (`dnat ip to meta l4proto . th dport map @ports4`).
    /// Packets whose key is not in the map go on unchanged.
    DnatMap {
        /// The family of the packets it translates (and of the map's addresses).
        family: Family,
        /// The map.
        map: String,
        /// Whether the key starts with the packet's destination address (ports published
        /// on one node address).
        by_destination: bool,
    },
    /// A rule kudonet does not write (read from the kernel): described, never equal to a
    /// wanted one.
    Unknown(String),
}

impl Ruleset {
    /// Whether the table would be empty of sets and chains.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.chains.is_empty()
    }
}

/// How kudonet's table must change to become `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It is as desired: nothing to write.
    None,
    /// Only elements differ: add and delete them, leaving every chain and set in place
    /// (instances coming and going).
    Elements {
        /// Elements to add (or whose data or comment changes), by set and key.
        add: Vec<(String, Vec<Value>, Element)>,
        /// Elements to delete, by set and key.
        delete: Vec<(String, Vec<Value>)>,
    },
    /// The table is missing, or a chain or a set's definition differs: the whole table
    /// is (re)created, atomically, in one transaction.
    Replace,
}

impl Change {
    /// What turns `current` (`None`: no table) into `desired`.
    pub fn between(current: Option<&Ruleset>, desired: &Ruleset) -> Change {
        let Some(current) = current else {
            return Change::Replace;
        };
        if current == desired {
            return Change::None;
        }
        let same_shape = current.chains == desired.chains
            && current.sets.len() == desired.sets.len()
            && current.sets.iter().all(|(name, set)| {
                desired
                    .sets
                    .get(name)
                    .is_some_and(|wanted| wanted.key == set.key && wanted.data == set.data)
            });
        if !same_shape {
            return Change::Replace;
        }
        let mut add = Vec::new();
        let mut delete = Vec::new();
        for (name, wanted) in &desired.sets {
            let set = &current.sets[name];
            for (key, element) in &wanted.elements {
                if set.elements.get(key) != Some(element) {
                    if set.elements.contains_key(key) {
                        // The kernel cannot change an element in place: delete, then add.
                        delete.push((name.clone(), key.clone()));
                    }
                    add.push((name.clone(), key.clone(), element.clone()));
                }
            }
            for key in set.elements.keys() {
                if !wanted.elements.contains_key(key) {
                    delete.push((name.clone(), key.clone()));
                }
            }
        }
        Change::Elements { add, delete }
    }
}

/// How `current` (`None`: no table) differs from `desired`, for people, one line each in
/// nft's syntax: `+ element ports4 tcp . 8080 : 10.0.0.2 . 80  # web`, `- rule postrouting
/// ...`, `+ chain forward { type filter hook forward priority 0; }`. Empty when equal.
pub fn diff(current: Option<&Ruleset>, desired: &Ruleset) -> Vec<String> {
    let empty = Ruleset::default();
    let current = current.unwrap_or(&empty);
    let mut lines = Vec::new();
    for (name, set) in &current.sets {
        match desired.sets.get(name) {
            Some(wanted) if wanted.key == set.key && wanted.data == set.data => {}
            _ => lines.push(format!("- {} {name}", set.keyword())),
        }
    }
    for (name, wanted) in &desired.sets {
        let set = match current.sets.get(name) {
            Some(set) if set.key == wanted.key && set.data == wanted.data => set,
            _ => {
                lines.push(format!(
                    "+ {} {name} {{ type {} }}",
                    wanted.keyword(),
                    wanted.typ()
                ));
                &Set::default()
            }
        };
        for (key, element) in &set.elements {
            if wanted.elements.get(key) != Some(element) {
                lines.push(format!("- element {name} {}", element_text(key, element)));
            }
        }
        for (key, element) in &wanted.elements {
            if set.elements.get(key) != Some(element) {
                lines.push(format!("+ element {name} {}", element_text(key, element)));
            }
        }
    }
    for (name, chain) in &current.chains {
        if !desired.chains.contains_key(name) {
            lines.push(format!("- chain {name}"));
        } else if desired.chains[name].hook != chain.hook {
            lines.push(format!("- chain {name}{}", hook_text(chain.hook)));
        }
    }
    for (name, wanted) in &desired.chains {
        let rules: &[Rule] = match current.chains.get(name) {
            Some(chain) if chain.hook == wanted.hook => &chain.rules,
            _ => {
                lines.push(format!("+ chain {name}{}", hook_text(wanted.hook)));
                &[]
            }
        };
        if rules == wanted.rules.as_slice() {
            continue;
        }
        // Rules have no identity of their own: show the chain's old rules going and its
        // new ones coming, unchanged ones left out.
        for rule in rules.iter().filter(|rule| !wanted.rules.contains(rule)) {
            lines.push(format!("- rule {name} {rule}"));
        }
        for rule in wanted.rules.iter().filter(|rule| !rules.contains(rule)) {
            lines.push(format!("+ rule {name} {rule}"));
        }
        if rules.iter().all(|rule| wanted.rules.contains(rule))
            && wanted.rules.iter().all(|rule| rules.contains(rule))
        {
            lines.push(format!("~ rule order in chain {name}"));
        }
    }
    lines
}

fn hook_text(hook: Option<Hook>) -> String {
    hook.map(|hook| format!(" {{ {hook} }}"))
        .unwrap_or_default()
}

fn element_text(key: &[Value], element: &Element) -> String {
    let mut text = join(key);
    if !element.data.is_empty() {
        text = format!("{text} : {}", join(&element.data));
    }
    if let Some(comment) = &element.comment {
        text = format!("{text}  # {comment}");
    }
    text
}

fn join<T: fmt::Display>(fields: &[T]) -> String {
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" . ")
}

impl Set {
    fn keyword(&self) -> &'static str {
        if self.data.is_empty() { "set" } else { "map" }
    }

    /// Its type as nft prints it: `inet_proto . inet_service : ipv4_addr . inet_service`.
    pub fn typ(&self) -> String {
        if self.data.is_empty() {
            join(&self.key)
        } else {
            format!("{} : {}", join(&self.key), join(&self.data))
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Ifname => "ifname",
            Type::InetProto => "inet_proto",
            Type::InetService => "inet_service",
            Type::Ipv4Addr => "ipv4_addr",
            Type::Ipv6Addr => "ipv6_addr",
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ifname(name) => write!(f, "\"{name}\""),
            Value::Proto(protocol) => write!(f, "{protocol}"),
            Value::Port(port) => write!(f, "{port}"),
            Value::Address(address) => write!(f, "{address}"),
        }
    }
}

impl fmt::Display for Hook {
    /// `type nat hook prerouting priority -100; policy accept;`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ChainKind::Nat => "nat",
            ChainKind::Filter => "filter",
        };
        let point = match self.point {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Output => "output",
            HookPoint::Forward => "forward",
            HookPoint::Postrouting => "postrouting",
        };
        write!(
            f,
            "type {kind} hook {point} priority {}; policy accept;",
            self.priority
        )
    }
}

/// `ip` or `ip6`, as nft writes the family of an address match.
fn family_word(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Nfproto(Family::Ipv4) => f.write_str("meta nfproto ipv4"),
            Match::Nfproto(Family::Ipv6) => f.write_str("meta nfproto ipv6"),
            Match::IifnameIn(set) => write!(f, "iifname @{set}"),
            Match::OifnameIn(set) => write!(f, "oifname @{set}"),
            Match::Oifname(name) => write!(f, "oifname \"{name}\""),
            Match::OifnameNot(name) => write!(f, "oifname != \"{name}\""),
            Match::Saddr(cidr) => write!(
                f,
                "{} saddr {cidr:#}",
                family_word(Family::of(cidr.first_address()))
            ),
            Match::Daddr(cidr) => write!(
                f,
                "{} daddr {cidr:#}",
                family_word(Family::of(cidr.first_address()))
            ),
            Match::DaddrNot(address) => write!(
                f,
                "{} daddr != {address}",
                family_word(Family::of(*address))
            ),
            Match::FibDaddrLocal => f.write_str("fib daddr type local"),
            Match::FibSaddrLocal => f.write_str("fib saddr type local"),
            Match::CtStatusDnat => f.write_str("ct status dnat"),
            Match::CtStateEstablishedRelated => f.write_str("ct state established,related"),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Masquerade => f.write_str("masquerade"),
            Verdict::DnatMap {
                family,
                map,
                by_destination,
            } => {
                let word = family_word(*family);
                let destination = if *by_destination {
                    format!("{word} daddr . ")
                } else {
                    String::new()
                };
                write!(
                    f,
                    "dnat {word} to {destination}meta l4proto . th dport map @{map}"
                )
            }
            Verdict::Unknown(description) => write!(f, "# not kudonet's: {description}"),
        }
    }
}

impl fmt::Display for Rule {
    /// The rule in nft's syntax: `oifname @bridges ct status dnat accept`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for condition in &self.matches {
            write!(f, "{condition} ")?;
        }
        write!(f, "{}", self.verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(elements: &[(u16, &str)]) -> Set {
        Set {
            key: vec![Type::InetProto, Type::InetService],
            data: vec![Type::Ipv4Addr, Type::InetService],
            elements: elements
                .iter()
                .map(|(port, instance)| {
                    (
                        vec![Value::Proto(Protocol::Tcp), Value::Port(*port)],
                        Element {
                            data: vec![
                                Value::Address("10.0.0.2".parse().unwrap()),
                                Value::Port(80),
                            ],
                            comment: Some(instance.to_string()),
                        },
                    )
                })
                .collect(),
        }
    }

    fn ruleset(elements: &[(u16, &str)]) -> Ruleset {
        Ruleset {
            sets: BTreeMap::from([("ports4".to_string(), ports(elements))]),
            chains: BTreeMap::from([(
                "ports".to_string(),
                Chain {
                    hook: None,
                    rules: vec![Rule {
                        matches: vec![Match::Nfproto(Family::Ipv4)],
                        verdict: Verdict::DnatMap {
                            family: Family::Ipv4,
                            map: "ports4".to_string(),
                            by_destination: false,
                        },
                    }],
                },
            )]),
        }
    }

    #[test]
    fn rules_print_as_nft_writes_them() {
        let rule = &ruleset(&[]).chains["ports"].rules[0];
        assert_eq!(
            rule.to_string(),
            "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4"
        );
        let rule = Rule {
            matches: vec![
                Match::Saddr("fd00::/64".parse().unwrap()),
                Match::Oifname("eth0".to_string()),
            ],
            verdict: Verdict::Masquerade,
        };
        assert_eq!(
            rule.to_string(),
            "ip6 saddr fd00::/64 oifname \"eth0\" masquerade"
        );
    }

    #[test]
    fn elements_alone_change_by_element() {
        let current = ruleset(&[(8080, "web"), (8443, "old")]);
        let desired = ruleset(&[(8080, "web"), (9090, "new")]);
        let Change::Elements { add, delete } = Change::between(Some(&current), &desired) else {
            panic!("expected an element change");
        };
        assert_eq!(add.len(), 1);
        assert_eq!(
            add[0].1,
            vec![Value::Proto(Protocol::Tcp), Value::Port(9090)]
        );
        assert_eq!(
            delete,
            [(
                "ports4".to_string(),
                vec![Value::Proto(Protocol::Tcp), Value::Port(8443)]
            )]
        );
        assert_eq!(
            diff(Some(&current), &desired),
            [
                "- element ports4 tcp . 8443 : 10.0.0.2 . 80  # old",
                "+ element ports4 tcp . 9090 : 10.0.0.2 . 80  # new",
            ]
        );
        assert_eq!(Change::between(Some(&desired), &desired), Change::None);
        assert!(diff(Some(&desired), &desired).is_empty());
    }

    #[test]
    fn a_changed_rule_or_a_missing_table_replaces_the_table() {
        let desired = ruleset(&[(8080, "web")]);
        assert_eq!(Change::between(None, &desired), Change::Replace);
        let mut current = desired.clone();
        current.chains.get_mut("ports").unwrap().rules.clear();
        assert_eq!(Change::between(Some(&current), &desired), Change::Replace);
        assert_eq!(
            diff(Some(&current), &desired),
            ["+ rule ports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4"]
        );
    }
}
