//! The firewall, behind [`FirewallDriver`]: the seam a backend implements (iptables-save and
//! iptables-restore today, [`iptables`]; a native nftables backend would be a second one).
//! kudonet's rules live in its own `KUDO-*` chains of the `nat` and `filter` tables, with
//! one marked jump rule at the head of each built-in chain it uses.

pub mod iptables;

use std::collections::BTreeMap;
use std::fs;

pub use iptables::{FirewallError, Iptables};

use super::netlink::netfilter::Generation;
use crate::names::{FILTER, NAT};
use crate::observed::Table;

/// A firewall backend: what kudonet needs from one.
pub trait FirewallDriver {
    /// Checks, before anything is changed, that the backend can be used (its programs are
    /// there): a node must not be left half built.
    fn check_available(&self) -> Result<(), FirewallError>;

    /// What the firewall holds: kudonet's tables, the other backend's tables holding
    /// kudonet's rules, and what others' rules do to the instances' forwarded traffic.
    /// `cached` is what was read at nf_tables generation `.0`, reused while `generation`
    /// has not moved.
    fn read(
        &self,
        generation: Option<&mut Generation>,
        cached: &mut Option<(u32, FirewallView)>,
    ) -> Result<FirewallView, FirewallError>;

    /// Syncs `table` to `chains` and `jumps` in one transaction (see
    /// [`synced_table`](crate::observed::synced_table)).
    fn sync_table(
        &self,
        table: &str,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), FirewallError>;

    /// Removes kudonet's chains and jump rules from `table` of the other backend.
    fn purge_other_backend(&self, table: &str) -> Result<(), FirewallError>;
}

impl FirewallDriver for Iptables {
    fn check_available(&self) -> Result<(), FirewallError> {
        Iptables::check_available(self)
    }

    fn read(
        &self,
        generation: Option<&mut Generation>,
        cached: &mut Option<(u32, FirewallView)>,
    ) -> Result<FirewallView, FirewallError> {
        read_firewall(self, generation, cached)
    }

    fn sync_table(
        &self,
        table: &str,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), FirewallError> {
        Iptables::sync_table(self, table, chains, jumps)
    }

    fn purge_other_backend(&self, table: &str) -> Result<(), FirewallError> {
        self.other_backend()
            .ok_or(FirewallError::NoOtherBackend)?
            .sync_table(table, &Default::default(), &Default::default())
    }
}

/// iptables: the tables read at the last observation while the nf_tables generation has
/// not moved since, else read afresh (one `iptables-save`).
pub(super) fn read_firewall(
    iptables: &Iptables,
    mut generation: Option<&mut Generation>,
    cached: &mut Option<(u32, FirewallView)>,
) -> Result<FirewallView, FirewallError> {
    // Read before the tables: a change made meanwhile moves it past what is cached.
    let now = generation
        .as_deref_mut()
        .and_then(|generation| generation.current().ok());
    let other = iptables.other_backend();
    let mut view = match (now, cached.as_ref()) {
        (Some(now), Some((read_at, view))) if now == *read_at => view.clone(),
        _ => {
            let (tables, nf_tables) = iptables.read_tables(&[NAT, FILTER])?;
            // nftables chains on the forward hook; with the nf_tables iptables, its own
            // FORWARD chain is where kudonet's jump accepts first.
            let forward_blockers = generation
                .and_then(|generation| generation.forward_blockers(nf_tables).ok())
                .unwrap_or_default();
            let mut view = FirewallView {
                tables,
                other_backend: BTreeMap::new(),
                forward_blockers,
            };
            // The nf_tables iptables as the other backend moves the generation too.
            if let Some(other) = other.as_ref().filter(|other| !other.is_legacy()) {
                read_other_backend(other, &mut view);
            }
            // The legacy backend moves no generation: it is read every time.
            *cached = now.filter(|_| nf_tables).map(|now| (now, view.clone()));
            view
        }
    };
    if let Some(other) = other.as_ref().filter(|other| other.is_legacy())
        && legacy_tables_in_use()
    {
        read_other_backend(other, &mut view);
    }
    Ok(view)
}

/// What the firewall holds: kudonet's backend's tables, and what others' rules do to the
/// instances' traffic (see
/// [`Observed::other_backend`](crate::observed::Observed::other_backend),
/// [`Observed::forward_blockers`](crate::observed::Observed::forward_blockers)).
#[derive(Debug, Clone, Default)]
pub struct FirewallView {
    pub(crate) tables: BTreeMap<String, Table>,
    pub(crate) other_backend: BTreeMap<String, Table>,
    pub(crate) forward_blockers: Vec<String>,
}

/// Whether this namespace has legacy iptables tables at all: without, reading them would
/// only cost a process (and could load x_tables modules).
fn legacy_tables_in_use() -> bool {
    fs::read_to_string("/proc/net/ip_tables_names").is_ok_and(|names| !names.trim().is_empty())
}

/// Adds what the other backend holds to `view`: its tables with kudonet's chains or jump
/// rules, and a FORWARD policy of DROP. Best effort: a backend that cannot be read is not
/// reported (kudonet's own backend is what it must read).
fn read_other_backend(other: &Iptables, view: &mut FirewallView) {
    let (tables, forward_drops) = match other.read_all() {
        Ok(read) => read,
        Err(error) => {
            tracing::debug!(%error, "cannot read the other iptables backend");
            return;
        }
    };
    let backend = if other.is_legacy() {
        "iptables-legacy"
    } else {
        "iptables-nft"
    };
    if forward_drops {
        view.forward_blockers.push(format!(
            "{backend} FORWARD policy is DROP: forwarded instance traffic is dropped there, \
             whatever kudonet's chains accept"
        ));
    }
    view.other_backend = tables
        .into_iter()
        .filter(|(_, table)| table.has_kudonet_rules())
        .collect();
}
