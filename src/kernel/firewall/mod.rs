//! The firewall, behind [`FirewallDriver`]: the seam a backend implements (iptables-save and
//! iptables-restore for IPv4, their ip6tables twins for IPv6, [`IptablesFirewall`]; kudonet's
//! own nftables table written over netlink, [`NftablesFirewall`]). In iptables mode,
//! kudonet's rules live in its own `KUDO-*` chains of the `nat` and `filter` tables of each
//! family, with one marked jump rule at the head of each built-in chain it uses; in
//! nftables mode, in the table `inet kudonet`, and in iptables only where its FORWARD chain
//! drops (by policy or by a rule). Both modes read both, so that switching removes the other's rules.

pub mod iptables;

use std::collections::BTreeMap;
use std::fs;

pub use iptables::Iptables;

use super::netlink::netfilter::NfTables;
use super::netlink::nftables::TableState;
use crate::names::{FILTER, NAT};
use crate::observed::{Table, TableId};
use crate::spec::{Family, FirewallBackend};

/// Why a firewall backend could not read or change the firewall.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    /// The binary is neither at the given path nor in `PATH`.
    #[error("{program} not found: install the iptables package (apt-get install iptables)")]
    NotFound { program: String },
    /// The binary exists but could not be started (permissions, a bad interpreter, no
    /// memory to fork...); `errno` is the system's error number, when there is one.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        program: String,
        reason: String,
        errno: Option<i32>,
    },
    /// The binary ran and failed. `stderr` is on one line; `script_line` is the line of the
    /// `iptables-restore` input it named as failing (`4: COMMIT`), if any.
    #[error("{program} failed ({status}): {stderr}{}", script_line.as_ref().map(|line| format!(" [script line {line}]")).unwrap_or_default())]
    Failed {
        program: String,
        status: String,
        stderr: String,
        script_line: Option<String>,
    },
    /// `iptables-save` printed something this parser does not understand.
    #[error("iptables-save output, line {line}: {reason}: {text:?}")]
    Parse {
        line: usize,
        reason: String,
        text: String,
    },
    /// `iptables-save -t TABLE` succeeded without printing the table (with the nf_tables
    /// backend: a table created by `nft` that iptables cannot represent).
    #[error("iptables-save printed no table {table}{}", if note.is_empty() { String::new() } else { format!(": {note}") })]
    NoTable { table: String, note: String },
    /// The other backend's programs are not installed.
    #[error("the other iptables backend is not installed")]
    NoOtherBackend,
    /// A sync was asked to write something that is not kudonet's, or that would not fit on
    /// one line of an `iptables-restore` script.
    #[error("refusing to sync table {table}: {reason}")]
    Refused { table: String, reason: String },
    /// nf_tables could not be asked (no such kernel support, not permitted) or answered
    /// with an error; `errno` is the kernel's, when there is one.
    #[error("{operation}: {reason}")]
    Nftables {
        operation: String,
        reason: String,
        errno: Option<i32>,
    },
}

impl FirewallError {
    fn nftables(operation: impl Into<String>, error: &std::io::Error) -> FirewallError {
        FirewallError::Nftables {
            operation: operation.into(),
            reason: error.to_string(),
            errno: error.raw_os_error(),
        }
    }
}

impl FirewallError {
    /// Whether running the program again can succeed with nothing else changed:
    ///
    /// - no for a missing program ([`NotFound`](FirewallError::NotFound)), one that cannot
    ///   be started ([`Spawn`](FirewallError::Spawn): permissions, a bad interpreter; a
    ///   transient errno such as EAGAIN or ENOMEM from fork says yes), output
    ///   kudonet cannot read ([`Parse`](FirewallError::Parse),
    ///   [`NoTable`](FirewallError::NoTable): a table only `nft` can show), a refused sync
    ///   and a missing other backend;
    /// - for a program that ran and failed ([`Failed`](FirewallError::Failed)): no when it
    ///   says permission was denied (not root, no `CAP_NET_ADMIN`), yes otherwise, notably
    ///   for contention on the xtables lock ("Another app is currently holding the xtables
    ///   lock", "Resource temporarily unavailable") and for a ruleset changed meanwhile.
    pub fn can_retry(&self) -> bool {
        match self {
            FirewallError::Failed { stderr, .. } => {
                let denied = [
                    "Permission denied",
                    "must be root",
                    "Operation not permitted",
                ];
                !denied.iter().any(|marker| stderr.contains(marker))
            }
            // Out of processes, memory or descriptors for a moment: a later fork can work.
            FirewallError::Spawn { errno, .. } => errno.is_some_and(|errno| {
                use nix::errno::Errno;
                matches!(
                    Errno::from_raw(errno),
                    Errno::EAGAIN
                        | Errno::ENOMEM
                        | Errno::EMFILE
                        | Errno::ENFILE
                        | Errno::EINTR
                        | Errno::ETXTBSY
                )
            }),
            FirewallError::Nftables { errno, .. } => {
                errno.is_none_or(crate::dataplane::errno_can_retry)
            }
            FirewallError::NotFound { .. }
            | FirewallError::Parse { .. }
            | FirewallError::NoTable { .. }
            | FirewallError::NoOtherBackend
            | FirewallError::Refused { .. } => false,
        }
    }
}

impl From<FirewallError> for crate::dataplane::Cause {
    fn from(error: FirewallError) -> Self {
        let can_retry = error.can_retry();
        crate::dataplane::Cause::new(error, can_retry)
    }
}

/// A firewall backend: what kudonet needs from one.
pub trait FirewallDriver {
    /// Checks, before anything is changed, that the backend can be used (its programs are
    /// there): a node must not be left half built.
    fn check_available(&self) -> Result<(), FirewallError>;

    /// Checks that the tables of `family` can be changed (its programs are there).
    fn check_family(&self, _family: Family) -> Result<(), FirewallError> {
        Ok(())
    }

    /// What the firewall holds: kudonet's tables, the other backend's tables holding
    /// kudonet's rules, and what others' rules do to the instances' forwarded traffic.
    /// What `cache` holds is reused while the nf_tables `generation` has not moved; a
    /// backend that moves no generation is read again only with `reread_unversioned`.
    fn read(
        &self,
        generation: Option<&mut NfTables>,
        cache: &mut FirewallCache,
        reread_unversioned: bool,
    ) -> Result<FirewallView, FirewallError>;

    /// Syncs `table` to `chains` and `jumps` in one transaction (see
    /// [`synced_table`](crate::observed::synced_table)), from `current` when the caller
    /// knows the table as it is now, else reading it first. Returns the table as written,
    /// or `None` when it was as wanted already.
    fn sync_table(
        &self,
        table: &TableId,
        current: Option<Table>,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<Option<Table>, FirewallError>;

    /// Removes kudonet's chains and jump rules from `table` of the other backend.
    fn purge_other_backend(&self, table: &TableId) -> Result<(), FirewallError>;
}

/// iptables for IPv4 and ip6tables for IPv6: the same chains in each, written by the
/// family's own `*-restore`.
#[derive(Debug, Clone)]
pub struct IptablesFirewall {
    ipv4: Iptables,
    ipv6: Iptables,
    /// Whether IPv6 tables can be read, once looked up: observations ask on every pass.
    ipv6_readable: std::sync::OnceLock<bool>,
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        IptablesFirewall::new()
    }
}

impl IptablesFirewall {
    /// `iptables-*` and `ip6tables-*` from `PATH`.
    pub fn new() -> IptablesFirewall {
        IptablesFirewall::with(Iptables::new(), Iptables::ipv6())
    }

    /// Explicit programs for each family.
    pub fn with(ipv4: Iptables, ipv6: Iptables) -> IptablesFirewall {
        IptablesFirewall {
            ipv4,
            ipv6,
            ipv6_readable: std::sync::OnceLock::new(),
        }
    }

    /// The programs of `family`.
    pub fn family(&self, family: Family) -> &Iptables {
        match family {
            Family::Ipv4 => &self.ipv4,
            Family::Ipv6 => &self.ipv6,
        }
    }
}

/// Whether the kernel has IPv6 (not booted with `ipv6.disable=1`): without, ip6tables has
/// nothing to read or write, and an IPv4 node must not fail for it.
fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

impl IptablesFirewall {
    /// The families whose firewall can be read: IPv4, and IPv6 when the kernel has it and
    /// ip6tables is installed. Without, IPv6 tables read as empty, so an IPv4 node needs
    /// neither; a node with IPv6 fails at its first ip6tables table, naming the program.
    fn families(&self) -> Vec<Family> {
        let ipv6 = *self
            .ipv6_readable
            .get_or_init(|| kernel_has_ipv6() && self.ipv6.check_available().is_ok());
        Family::ALL
            .into_iter()
            .filter(|family| *family == Family::Ipv4 || ipv6)
            .collect()
    }
}

impl FirewallDriver for IptablesFirewall {
    fn check_available(&self) -> Result<(), FirewallError> {
        self.ipv4.check_available()
    }

    fn check_family(&self, family: Family) -> Result<(), FirewallError> {
        self.family(family).check_available()
    }

    fn read(
        &self,
        generation: Option<&mut NfTables>,
        cache: &mut FirewallCache,
        reread_unversioned: bool,
    ) -> Result<FirewallView, FirewallError> {
        read_firewall(
            self,
            FirewallBackend::Iptables,
            generation,
            cache,
            reread_unversioned,
        )
    }

    fn sync_table(
        &self,
        table: &TableId,
        current: Option<Table>,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<Option<Table>, FirewallError> {
        self.family(table.family)
            .sync_table_from(&table.name, current, chains, jumps)
    }

    fn purge_other_backend(&self, table: &TableId) -> Result<(), FirewallError> {
        self.family(table.family)
            .other_backend()
            .ok_or(FirewallError::NoOtherBackend)?
            .sync_table(&table.name, &Default::default(), &Default::default())
    }
}

/// kudonet's own nftables table `inet kudonet`, written over netlink (by the dataplane, with
/// its nf_tables socket), and iptables beside it: read for the rules an earlier iptables
/// mode left (which the plan removes), written only where its FORWARD chain drops (by
/// policy or by a rule). iptables need not be installed: its tables then read as empty.
#[derive(Debug, Clone, Default)]
pub struct NftablesFirewall {
    iptables: IptablesFirewall,
}

impl NftablesFirewall {
    /// With `iptables-*` and `ip6tables-*` from `PATH`, if there.
    pub fn new() -> NftablesFirewall {
        NftablesFirewall::with(IptablesFirewall::new())
    }

    /// With explicit iptables programs.
    pub fn with(iptables: IptablesFirewall) -> NftablesFirewall {
        NftablesFirewall { iptables }
    }
}

/// Checks that the kernel answers nf_tables requests in the calling thread's namespace.
pub fn check_nftables() -> Result<(), FirewallError> {
    NfTables::open()
        .and_then(|mut generation| generation.current())
        .map(drop)
        .map_err(|error| {
            FirewallError::nftables("nftables is not available in this kernel", &error)
        })
}

/// The nf_tables generation of the calling thread's namespace: it moves by one with every
/// transaction (kudonet's batch, an `nft` command, an iptables-nft change).
pub fn nftables_generation() -> std::io::Result<u32> {
    NfTables::open()?.current()
}

impl FirewallDriver for NftablesFirewall {
    fn check_available(&self) -> Result<(), FirewallError> {
        check_nftables()
    }

    fn check_family(&self, family: Family) -> Result<(), FirewallError> {
        self.iptables.check_family(family)
    }

    fn read(
        &self,
        generation: Option<&mut NfTables>,
        cache: &mut FirewallCache,
        reread_unversioned: bool,
    ) -> Result<FirewallView, FirewallError> {
        read_firewall(
            &self.iptables,
            FirewallBackend::Nftables,
            generation,
            cache,
            reread_unversioned,
        )
    }

    fn sync_table(
        &self,
        table: &TableId,
        current: Option<Table>,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<Option<Table>, FirewallError> {
        self.iptables.sync_table(table, current, chains, jumps)
    }

    fn purge_other_backend(&self, table: &TableId) -> Result<(), FirewallError> {
        self.iptables.purge_other_backend(table)
    }
}

/// What an observation keeps of the firewall for the next one.
#[derive(Debug, Clone, Default)]
pub struct FirewallCache {
    /// What nf_tables held (kudonet's tables when iptables is the nf_tables one, nftables
    /// forward chains, the nf_tables iptables as the other backend), and the generation it
    /// was read at.
    versioned: Option<(u32, FirewallView)>,
    /// What the legacy backend beside kudonet's nf_tables iptables held, when last read
    /// (IPv4, then IPv6).
    legacy: Vec<OtherBackend>,
}

impl FirewallCache {
    /// kudonet's `table` as read at generation `now`, if that is what is cached: the
    /// table as the kernel has it while the generation stands.
    pub(crate) fn table_at(&self, now: u32, table: &TableId) -> Option<Table> {
        match &self.versioned {
            Some((read_at, view)) if *read_at == now => view.tables.get(table).cloned(),
            _ => None,
        }
    }

    /// kudonet's own transaction wrote `table` as `written`, moving the generation from
    /// `before` to `after`: when it moved by that one transaction only, the cache is the
    /// kernel's state at `after`, so neither the next sync nor the next observation needs
    /// to read the tables again. Anything else (someone else's change meanwhile) leaves
    /// the cache behind the generation, to be read afresh.
    pub(crate) fn wrote(&mut self, before: u32, after: u32, table: &TableId, written: Table) {
        if let Some((read_at, view)) = &mut self.versioned
            && *read_at == before
            && after == before.wrapping_add(1)
        {
            view.tables.insert(table.clone(), written);
            *read_at = after;
        }
    }

    /// kudonet's nftables table as read at generation `now`, if that is what is cached.
    pub(crate) fn nftables_at(&self, now: u32) -> Option<TableState> {
        match &self.versioned {
            Some((read_at, view)) if *read_at == now => Some(view.nftables.clone()),
            _ => None,
        }
    }

    /// kudonet's own nftables transaction left its table `written`, moving the generation
    /// from `before` to `after`: as [`FirewallCache::wrote`].
    pub(crate) fn wrote_nftables(&mut self, before: u32, after: u32, written: TableState) {
        if let Some((read_at, view)) = &mut self.versioned
            && *read_at == before
            && after == before.wrapping_add(1)
        {
            view.nftables = written;
            *read_at = after;
        }
    }
}

/// iptables and ip6tables, and kudonet's nftables table: what was read at the last
/// observation while the nf_tables generation has not moved since, else read afresh (one
/// `iptables-save` and one `ip6tables-save`, and one more each when the other backend is
/// the nf_tables one; a dump of `inet kudonet`); the legacy backend beside it only when
/// `reread_legacy`. With the nftables `backend`, missing iptables programs read as empty
/// tables, and failing to read kudonet's table is an error (else it reads as absent).
pub(super) fn read_firewall(
    firewall: &IptablesFirewall,
    backend: FirewallBackend,
    mut generation: Option<&mut NfTables>,
    cache: &mut FirewallCache,
    reread_legacy: bool,
) -> Result<FirewallView, FirewallError> {
    // Read before the tables: a change made meanwhile moves it past what is cached.
    let now = generation
        .as_deref_mut()
        .and_then(|generation| generation.current().ok());
    let families = firewall.families();
    let others: Vec<(Family, Option<Iptables>)> = families
        .iter()
        .map(|family| (*family, firewall.family(*family).other_backend()))
        .collect();
    let mut view = match (now, cache.versioned.as_ref()) {
        (Some(now), Some((read_at, view))) if now == *read_at => view.clone(),
        _ => {
            let mut tables = BTreeMap::new();
            let mut nf_tables = true;
            let mut iptables_forward_drops = std::collections::BTreeSet::new();
            for &family in &families {
                let (read, family_nf_tables, forward_drops) = match firewall
                    .family(family)
                    .read_tables_and_forward(&[NAT, FILTER])
                {
                    Err(FirewallError::NotFound { .. }) if backend == FirewallBackend::Nftables => {
                        continue;
                    }
                    read => read?,
                };
                nf_tables &= family_nf_tables;
                if forward_drops {
                    iptables_forward_drops.insert(family);
                }
                tables.extend(
                    read.into_iter()
                        .map(|(name, table)| (TableId::new(family, &name), table)),
                );
            }
            let nftables = match generation.as_deref_mut() {
                None => TableState::Absent,
                Some(generation) => match generation.read_kudonet() {
                    // Consistent with a generation at or after `now`: cached at `now`, it
                    // is used only while the generation stays there, so never torn.
                    Ok((state, _)) => state,
                    Err(error) if backend == FirewallBackend::Nftables => {
                        return Err(FirewallError::nftables(
                            "nftables: read table inet kudonet",
                            &error,
                        ));
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot read nftables table inet kudonet");
                        TableState::Absent
                    }
                },
            };
            let others_nft: Vec<(Family, &Iptables)> = others
                .iter()
                .filter_map(|(family, other)| Some((*family, other.as_ref()?)))
                .filter(|(_, other)| !other.is_legacy())
                .collect();
            // nftables chains on the forward hook. iptables-nft's own `ip filter` is left
            // out: kudonet's jump accepts first there when it is kudonet's backend, and the
            // other backend's read reports its FORWARD policy when it is not.
            let forward_blockers = generation
                .and_then(|generation| {
                    generation
                        .forward_blockers(nf_tables || !others_nft.is_empty())
                        .ok()
                })
                .unwrap_or_default();
            let mut view = FirewallView {
                tables,
                other_backend: BTreeMap::new(),
                forward_blockers,
                nftables,
                iptables_forward_drops,
            };
            // The nf_tables iptables as the other backend moves the generation too.
            for (family, other) in others_nft {
                if let Some(read) = read_other_backend(family, other) {
                    read.add_to(&mut view);
                }
            }
            // The legacy backend moves no generation: kudonet's own is read every time.
            cache.versioned = now.filter(|_| nf_tables).map(|now| (now, view.clone()));
            view
        }
    };
    let legacies: Vec<(Family, &Iptables)> = others
        .iter()
        .filter_map(|(family, other)| Some((*family, other.as_ref()?)))
        .filter(|(_, other)| other.is_legacy())
        .collect();
    if legacies.is_empty() {
        cache.legacy.clear();
    } else if reread_legacy {
        cache.legacy = legacies
            .into_iter()
            .filter(|(family, _)| legacy_tables_in_use(*family))
            .filter_map(|(family, legacy)| read_other_backend(family, legacy))
            .collect();
    }
    for legacy in &cache.legacy {
        legacy.add_to(&mut view);
    }
    Ok(view)
}

/// What the firewall holds: kudonet's backend's tables, and what others' rules do to the
/// instances' traffic (see
/// [`Observed::other_backend`](crate::observed::Observed::other_backend),
/// [`Observed::forward_blockers`](crate::observed::Observed::forward_blockers)).
#[derive(Debug, Clone, Default)]
pub struct FirewallView {
    pub(crate) tables: BTreeMap<TableId, Table>,
    pub(crate) other_backend: BTreeMap<TableId, Table>,
    pub(crate) forward_blockers: Vec<String>,
    /// kudonet's nftables table `inet kudonet`.
    pub(crate) nftables: TableState,
    /// The families whose iptables FORWARD chain (of kudonet's backend) drops by policy.
    pub(crate) iptables_forward_drops: std::collections::BTreeSet<Family>,
}

/// Whether this namespace has legacy iptables tables of `family` at all: without, reading
/// them would only cost a process (and could load x_tables modules).
fn legacy_tables_in_use(family: Family) -> bool {
    let names = match family {
        Family::Ipv4 => "/proc/net/ip_tables_names",
        Family::Ipv6 => "/proc/net/ip6_tables_names",
    };
    fs::read_to_string(names).is_ok_and(|names| !names.trim().is_empty())
}

/// What the other backend holds that matters to kudonet: its tables with kudonet's chains
/// or jump rules, and whether its FORWARD chain drops by policy.
#[derive(Debug, Clone)]
struct OtherBackend {
    backend: &'static str,
    stale: BTreeMap<TableId, Table>,
    forward_drops: bool,
}

impl OtherBackend {
    fn add_to(&self, view: &mut FirewallView) {
        if self.forward_drops {
            view.forward_blockers.push(format!(
                "{} FORWARD policy is DROP: forwarded instance traffic is dropped there, \
                 whatever kudonet's chains accept",
                self.backend
            ));
        }
        view.other_backend.extend(self.stale.clone());
    }
}

/// Reads the other backend. Best effort: one that cannot be read is not reported
/// (kudonet's own backend is what it must read).
fn read_other_backend(family: Family, other: &Iptables) -> Option<OtherBackend> {
    let (tables, forward_drops) = match other.read_all() {
        Ok(read) => read,
        Err(error) => {
            tracing::debug!(%error, "cannot read the other iptables backend");
            return None;
        }
    };
    Some(OtherBackend {
        backend: match (family, other.is_legacy()) {
            (Family::Ipv4, true) => "iptables-legacy",
            (Family::Ipv4, false) => "iptables-nft",
            (Family::Ipv6, true) => "ip6tables-legacy",
            (Family::Ipv6, false) => "ip6tables-nft",
        },
        stale: tables
            .into_iter()
            .filter(|(_, table)| table.has_kudonet_rules())
            .map(|(name, table)| (TableId::new(family, &name), table))
            .collect(),
        forward_drops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rule: &str) -> Table {
        Table {
            chains: BTreeMap::from([("KUDO-PORTS".to_string(), vec![rule.to_string()])]),
        }
    }

    fn nat() -> TableId {
        TableId::new(Family::Ipv4, NAT)
    }

    fn cache_at(generation: u32) -> FirewallCache {
        FirewallCache {
            versioned: Some((
                generation,
                FirewallView {
                    tables: BTreeMap::from([(nat(), table("old"))]),
                    ..FirewallView::default()
                },
            )),
            legacy: Vec::new(),
        }
    }

    #[test]
    fn the_cache_serves_a_table_only_at_its_own_generation() {
        let cache = cache_at(7);
        assert_eq!(cache.table_at(7, &nat()), Some(table("old")));
        assert_eq!(cache.table_at(8, &nat()), None);
        assert_eq!(cache.table_at(7, &TableId::new(Family::Ipv4, FILTER)), None);
        assert_eq!(FirewallCache::default().table_at(7, &nat()), None);
    }

    #[test]
    fn kudonets_own_write_is_cached_only_when_it_alone_moved_the_generation() {
        // One transaction, ours: the table as written is the kernel's, at the new generation.
        let mut cache = cache_at(7);
        cache.wrote(7, 8, &nat(), table("new"));
        assert_eq!(cache.table_at(8, &nat()), Some(table("new")));
        // Someone else's change too (two transactions): the cache stays behind, unused.
        let mut cache = cache_at(7);
        cache.wrote(7, 9, &nat(), table("new"));
        assert_eq!(cache.table_at(9, &nat()), None);
        assert_eq!(cache.table_at(7, &nat()), Some(table("old")));
        // A change before ours (the cache was read at an older generation): likewise.
        let mut cache = cache_at(6);
        cache.wrote(7, 8, &nat(), table("new"));
        assert_eq!(cache.table_at(8, &nat()), None);
        // Nothing cached (the legacy backend): nothing to update.
        let mut cache = FirewallCache::default();
        cache.wrote(7, 8, &nat(), table("new"));
        assert_eq!(cache.table_at(8, &nat()), None);
        // The generation wraps around.
        let mut cache = cache_at(u32::MAX);
        cache.wrote(u32::MAX, 0, &nat(), table("new"));
        assert_eq!(cache.table_at(0, &nat()), Some(table("new")));
    }
}
