//! The read of the table: a dump of its sets, elements, chains and rules, consistent with
//! one generation, back into a [`Ruleset`].

use super::*;

impl NfTables {
    /// Reads the table `inet kudonet`: whether it is there and kudonet's, and its sets,
    /// elements, chains and rules, with the generation the read is consistent with (what
    /// a batch decided on it is [`based on`](NfTables::commit)). Read again while the
    /// generation moves meanwhile; when it moves during each of [`READ_ATTEMPTS`] reads,
    /// an error without errno (worth retrying) rather than a torn read.
    pub fn read_kudonet(&mut self) -> io::Result<(TableState, u32)> {
        let mut before = self.current()?;
        for _ in 0..READ_ATTEMPTS {
            let state = self.read_kudonet_once()?;
            let after = self.current()?;
            if after == before {
                return Ok((state, after));
            }
            before = after;
        }
        Err(io::Error::other(format!(
            "the ruleset changed during each of {READ_ATTEMPTS} reads of table inet kudonet"
        )))
    }

    fn read_kudonet_once(&mut self) -> io::Result<TableState> {
        let tables = self.dump_family(NFPROTO_INET, GETTABLE, NEWTABLE, Vec::new(), parse_table)?;
        let Some((comment, flags)) = tables
            .into_iter()
            .flatten()
            .find_map(|(name, comment, flags)| (name == TABLE_NAME).then_some((comment, flags)))
        else {
            return Ok(TableState::Absent);
        };
        if comment.as_deref() != Some(TABLE_COMMENT) {
            return Ok(TableState::Foreign);
        }
        let mut ruleset = Ruleset::default();
        if flags != 0 {
            // A dormant table (or other flags) is not as kudonet writes it. A ruleset has no
            // place for the table's own state: a chain named after it stands in, so that
            // the table equals nothing kudonet wants, gets replaced, and the plan's diff
            // says why (`- chain (table flags 0x1: dormant)`).
            let text = table_flags_text(flags);
            ruleset.chains.insert(
                format!("(table {text})"),
                Chain {
                    hook: None,
                    rules: vec![unknown_rule(format!("table {text}"))],
                },
            );
        }
        let mut filter = Vec::new();
        put_string(&mut filter, SET_TABLE, TABLE_NAME);
        let sets = self.dump_family(NFPROTO_INET, GETSET, NEWSET, filter, parse_set)?;
        for (name, mut set, ours) in sets.into_iter().flatten() {
            if ours {
                let mut filter = Vec::new();
                put_string(&mut filter, SET_ELEM_LIST_TABLE, TABLE_NAME);
                put_string(&mut filter, SET_ELEM_LIST_SET, &name);
                let key = set.key.clone();
                let data = set.data.clone();
                let batches =
                    self.dump_family(NFPROTO_INET, GETSETELEM, NEWSETELEM, filter, |body| {
                        parse_elements(body, &key, &data)
                    })?;
                for elements in batches {
                    match elements {
                        Some(elements) => set.elements.extend(elements),
                        // Elements kudonet cannot have written: a set it does not want.
                        None => {
                            set = unknown_set();
                            break;
                        }
                    }
                }
            }
            ruleset.sets.insert(name, set);
        }
        let mut filter = Vec::new();
        put_string(&mut filter, CHAIN_TABLE, TABLE_NAME);
        let chains = self.dump_family(NFPROTO_INET, GETCHAIN, NEWCHAIN, filter, parse_chain)?;
        for (name, chain) in chains.into_iter().flatten() {
            ruleset.chains.insert(name, chain);
        }
        let mut filter = Vec::new();
        put_string(&mut filter, RULE_TABLE, TABLE_NAME);
        let rules = self.dump_family(NFPROTO_INET, GETRULE, NEWRULE, filter, parse_rule)?;
        for (chain, rule) in rules.into_iter().flatten() {
            ruleset.chains.entry(chain).or_default().rules.push(rule);
        }
        Ok(TableState::Ours(ruleset))
    }
}

/// A `NEWTABLE` of the dump: its name, comment and flags.
pub(super) fn parse_table(body: &[u8]) -> Option<(String, Option<String>, u32)> {
    let (mut name, mut comment, mut flags) = (None, None, 0);
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        match kind {
            TABLE_NAME_ATTR => name = Some(string(value)),
            TABLE_FLAGS => flags = be_u32(value).unwrap_or(0),
            TABLE_USERDATA => comment = comment_of(value),
            _ => {}
        }
    }
    Some((name?, comment, flags))
}

/// A `NEWCHAIN` of the dump: its name and the chain without rules. A base chain kudonet
/// cannot have written (another hook or type, a policy other than accept) gets an unknown
/// rule, so that it equals no chain kudonet wants.
pub(super) fn parse_chain(body: &[u8]) -> Option<(String, Chain)> {
    let (mut table, mut name, mut kind, mut policy, mut hook) = (None, None, None, None, None);
    for (attribute, value) in attributes(body.get(NFGENMSG..)?) {
        match attribute {
            CHAIN_TABLE => table = Some(string(value)),
            CHAIN_NAME => name = Some(string(value)),
            CHAIN_TYPE => kind = Some(string(value)),
            CHAIN_POLICY => policy = be_u32(value),
            CHAIN_HOOK => {
                let (mut number, mut priority) = (None, None);
                for (attribute, value) in attributes(value) {
                    match attribute {
                        HOOK_HOOKNUM => number = be_u32(value),
                        HOOK_PRIORITY => priority = be_u32(value).map(|value| value as i32),
                        _ => {}
                    }
                }
                hook = Some((number, priority));
            }
            _ => {}
        }
    }
    if table.as_deref() != Some(TABLE_NAME) {
        return None;
    }
    let mut chain = Chain::default();
    if let Some((number, priority)) = hook {
        let kind = match kind.as_deref() {
            Some("nat") => Some(ChainKind::Nat),
            Some("filter") => Some(ChainKind::Filter),
            _ => None,
        };
        match (kind, number.and_then(hook_point), priority) {
            (Some(kind), Some(point), Some(priority)) => {
                chain.hook = Some(Hook {
                    kind,
                    point,
                    priority,
                })
            }
            _ => chain.rules.push(unknown_rule(format!(
                "a base chain of type {} on hook {number:?}",
                kind.map_or("?", |kind| match kind {
                    ChainKind::Nat => "nat",
                    ChainKind::Filter => "filter",
                })
            ))),
        }
        if policy != Some(NF_ACCEPT as u32) {
            chain
                .rules
                .push(unknown_rule(format!("chain policy {policy:?}, not accept")));
        }
    }
    Some((name?, chain))
}

/// A `NEWRULE` of the dump: its chain and the rule.
pub(super) fn parse_rule(body: &[u8]) -> Option<(String, Rule)> {
    let (mut table, mut chain, mut rule, mut commented) = (None, None, None, false);
    for (kind, value) in attributes(body.get(NFGENMSG..)?) {
        match kind {
            RULE_TABLE => table = Some(string(value)),
            RULE_CHAIN => chain = Some(string(value)),
            RULE_USERDATA => commented = true,
            RULE_EXPRESSIONS => {
                let expressions: Vec<Expr> = attributes(value)
                    .filter(|(kind, _)| *kind == LIST_ELEM)
                    .map(|(_, element)| Expr::decode(element))
                    .collect();
                rule = Some(decode_rule(&expressions));
            }
            _ => {}
        }
    }
    if table.as_deref() != Some(TABLE_NAME) {
        return None;
    }
    let mut rule = rule.unwrap_or_else(|| unknown_rule("a rule without expressions"));
    if commented {
        rule = unknown_rule(format!("{rule} with a comment"));
    }
    Some((chain?, rule))
}

/// Table flags for people: `flags 0x1: dormant`.
pub(super) fn table_flags_text(flags: u32) -> String {
    let names: Vec<&str> = [(0x1, "dormant"), (0x2, "owner"), (0x4, "persist")]
        .into_iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name)
        .collect();
    if names.is_empty() {
        format!("flags {flags:#x}")
    } else {
        format!("flags {flags:#x}: {}", names.join(", "))
    }
}
