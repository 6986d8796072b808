//! iptables through `iptables-save` and `iptables-restore`: one process reads the tables,
//! one transaction rewrites kudonet's part of a table (after reading it afresh).
//!
//! kudonet owns the `KUDO-*` chains of a table and the jump rules marked with
//! [`JUMP_MARK`] in the other chains; everything else (Docker, firewalld, an admin) is left
//! as it is and where it is. [`restore_script`] turns a table as read into the
//! `iptables-restore --noflush` input that rewrites exactly kudonet's part, and
//! [`Iptables::sync_table`] runs it, only when something differs.
//!
//! Rules are strings in the form `iptables-save` prints them after `-A CHAIN `, so that what
//! is read back compares equal to what was written. A rule in another form (`--dport 80`
//! without `-m tcp`, say) is accepted by iptables but reads back differently: it would be
//! rewritten on every sync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use super::FirewallError;
use crate::names::{FILTER, JUMP_MARK, NAT};
use crate::observed::Table;

/// Where the iptables binaries are looked for when `PATH` lacks them (a root shell or a
/// systemd unit has them in `PATH`; `sudo` and cron may not).
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Parses `iptables-save` output: one or several `*table` … `COMMIT` blocks. Every chain
/// declared in a table is in its map, empty or not; rules keep their order.
pub fn parse_save(text: &str) -> Result<BTreeMap<String, Table>, FirewallError> {
    let mut tables = BTreeMap::new();
    let mut open: Option<(String, Table)> = None;
    let mut last = 0;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        last = number;
        let line = raw.trim_end();
        let error = |reason: &str| FirewallError::Parse {
            line: number,
            reason: reason.to_string(),
            text: line.to_string(),
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if let Some((open, _)) = &open {
                return Err(error(&format!(
                    "table {open} has no COMMIT before the next"
                )));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(error("bad table name"));
            }
            if tables.contains_key(name) {
                return Err(error("table listed twice"));
            }
            open = Some((name.to_string(), Table::default()));
        } else if line == "COMMIT" {
            let (name, table) = open.take().ok_or_else(|| error("COMMIT outside a table"))?;
            tables.insert(name, table);
        } else if let Some(declaration) = line.strip_prefix(':') {
            let (_, table) = open
                .as_mut()
                .ok_or_else(|| error("chain outside a table"))?;
            // `:NAME POLICY [PACKETS:BYTES]`, the policy `-` for a user chain.
            let fields: Vec<&str> = declaration.split(' ').collect();
            let [name, policy, counters] = fields[..] else {
                return Err(error("bad chain declaration"));
            };
            if name.is_empty()
                || policy.is_empty()
                || !(counters.starts_with('[') && counters.ends_with(']'))
            {
                return Err(error("bad chain declaration"));
            }
            if table.chains.insert(name.to_string(), Vec::new()).is_some() {
                return Err(error("chain declared twice"));
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (_, table) = open.as_mut().ok_or_else(|| error("rule outside a table"))?;
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            table
                .chains
                .get_mut(chain)
                .ok_or_else(|| error("rule of an undeclared chain"))?
                .push(rule.to_string());
        } else {
            return Err(error("unexpected line"));
        }
    }
    if let Some((name, _)) = open {
        return Err(FirewallError::Parse {
            line: last,
            reason: format!("table {name} has no COMMIT"),
            text: String::new(),
        });
    }
    Ok(tables)
}

pub use crate::observed::synced_table;

/// The `iptables-restore --noflush` input that takes `current` (table `table` as read) to
/// [`synced_table`] in one transaction. Line by line:
///
/// - `:KUDO-X - [0:0]` for every wanted and every stale `KUDO-*` chain: creates the chain,
///   or flushes it if it exists (so no rule of a chain to delete refers to another);
/// - `-D CHAIN RULE` for every kudonet jump rule in the other chains, once per occurrence;
/// - `-X KUDO-X` for every stale chain, now empty and unreferenced;
/// - `-A KUDO-X RULE` for every wanted rule;
/// - `-I CHAIN N RULE` for the wanted jump rules, at positions 1..N;
/// - `COMMIT`.
///
/// Rules are written verbatim: they are in `iptables-save` form, which `iptables-restore`
/// reads (quotes included).
pub fn restore_script(
    table: &str,
    current: &Table,
    chains: &BTreeMap<String, Vec<String>>,
    jumps: &BTreeMap<String, Vec<String>>,
) -> String {
    let stale: Vec<&String> = current
        .chains
        .keys()
        .filter(|chain| Table::is_owned_chain(chain) && !chains.contains_key(*chain))
        .collect();
    let declared: BTreeSet<&String> = chains.keys().chain(stale.iter().copied()).collect();

    let mut script = format!("*{table}\n");
    for chain in declared {
        let _ = writeln!(script, ":{chain} - [0:0]");
    }
    for (chain, rules) in &current.chains {
        if Table::is_owned_chain(chain) {
            continue;
        }
        for rule in rules.iter().filter(|rule| Table::is_owned_jump(rule)) {
            let _ = writeln!(script, "-D {chain} {rule}");
        }
    }
    for chain in stale {
        let _ = writeln!(script, "-X {chain}");
    }
    for (chain, rules) in chains {
        for rule in rules {
            push_rule(&mut script, &format!("-A {chain}"), rule);
        }
    }
    for (chain, rules) in jumps {
        for (index, rule) in rules.iter().enumerate() {
            push_rule(&mut script, &format!("-I {chain} {}", index + 1), rule);
        }
    }
    script.push_str("COMMIT\n");
    script
}

/// `-A CHAIN RULE`; a rule with no match and no target (`iptables-save` prints `-A CHAIN`)
/// gets no trailing space.
fn push_rule(script: &mut String, command: &str, rule: &str) {
    script.push_str(command);
    if !rule.is_empty() {
        script.push(' ');
        script.push_str(rule);
    }
    script.push('\n');
}

/// The iptables binaries, run as processes: one `iptables-save` per read, one
/// `iptables-restore` per change of a table.
#[derive(Debug, Clone)]
pub struct Iptables {
    /// `iptables` or `ip6tables`: how the other backend's programs are named.
    command: &'static str,
    save: PathBuf,
    restore: PathBuf,
    /// The other backend's programs, once looked up (see [`Iptables::other_backend`]).
    other: std::sync::OnceLock<Option<Box<Iptables>>>,
}

impl Default for Iptables {
    fn default() -> Self {
        Iptables::new()
    }
}

impl Iptables {
    /// `iptables-save` and `iptables-restore` from `PATH` (or the usual sbin directories).
    pub fn new() -> Iptables {
        Iptables::with_programs("iptables-save", "iptables-restore")
    }

    /// `ip6tables-save` and `ip6tables-restore`, for IPv6.
    pub fn ipv6() -> Iptables {
        Iptables {
            command: "ip6tables",
            ..Iptables::with_programs("ip6tables-save", "ip6tables-restore")
        }
    }

    /// Explicit programs. A bare name is looked up in `PATH`, a path is used as it is.
    pub fn with_programs(save: impl Into<PathBuf>, restore: impl Into<PathBuf>) -> Iptables {
        Iptables {
            command: "iptables",
            save: save.into(),
            restore: restore.into(),
            other: std::sync::OnceLock::new(),
        }
    }

    /// The programs of the other iptables backend (`iptables-legacy-*` when `iptables` is
    /// the nf_tables one, `iptables-nft-*` when it is the legacy one), if installed. `None`
    /// for explicit programs, or when the backend cannot be told from the binary's name.
    pub fn other_backend(&self) -> Option<Iptables> {
        // Resolved once: it costs PATH look-ups and a canonicalize, and observations ask
        // on every pass.
        self.other
            .get_or_init(|| self.find_other_backend().map(Box::new))
            .as_deref()
            .cloned()
    }

    fn find_other_backend(&self) -> Option<Iptables> {
        let command = self.command;
        if self.save != Path::new(&format!("{command}-save")) {
            return None;
        }
        let binary = std::fs::canonicalize(locate(&self.save)?).ok()?;
        let name = binary.file_name()?.to_str()?;
        let other = if name.contains("legacy") {
            "nft"
        } else if name.contains("nft") {
            "legacy"
        } else {
            return None;
        };
        let save = PathBuf::from(format!("{command}-{other}-save"));
        locate(&save)?;
        Some(Iptables {
            command,
            ..Iptables::with_programs(save, format!("{command}-{other}-restore"))
        })
    }

    /// Whether these are the legacy (x_tables) programs.
    pub fn is_legacy(&self) -> bool {
        self.save.to_string_lossy().contains("legacy")
    }

    /// The `nat` and `filter` tables (those kudonet uses; others go unparsed, so a table
    /// this parser cannot read does not hide them), and whether the FORWARD chain of
    /// `filter` drops by policy.
    pub fn read_all(&self) -> Result<(BTreeMap<String, Table>, bool), FirewallError> {
        let kept = only_tables(&self.save_all()?, &[NAT, FILTER]);
        // Only `filter` has a FORWARD chain among the two.
        let forward_drops = kept.lines().any(|line| line.starts_with(":FORWARD DROP "));
        Ok((parse_save(&kept)?, forward_drops))
    }

    /// What a plain `iptables-save` prints: every table.
    fn save_all(&self) -> Result<String, FirewallError> {
        let output = run(&self.save, &[], None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Checks that both programs can be found, before anything is changed: a node must not
    /// be left half built because `iptables-restore` is missing.
    pub fn check_available(&self) -> Result<(), FirewallError> {
        for program in [&self.save, &self.restore] {
            if locate(program).is_none_or(|path| !path.exists()) {
                return Err(FirewallError::NotFound {
                    program: program.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Table `table` as it is now (`iptables-save -t TABLE`; that binary takes no `-w`: it
    /// reads without the lock).
    pub fn read_table(&self, table: &str) -> Result<Table, FirewallError> {
        let output = run(&self.save, &["-t", table], None)?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_save(&text)?
            .remove(table)
            .ok_or_else(|| no_table(table, &text))
    }

    /// Tables `tables` as they are now, all read by one `iptables-save`, and whether
    /// iptables is the nf_tables one (its first line says so), whose changes move the
    /// nf_tables generation. A table not made yet is not printed by a plain `iptables-save`
    /// (`-t TABLE` prints its built-in chains): it reads as its empty built-in chains, as
    /// with `-t`.
    pub fn read_tables(
        &self,
        tables: &[&str],
    ) -> Result<(BTreeMap<String, Table>, bool), FirewallError> {
        let (read, nf_tables, _) = self.read_tables_and_forward(tables)?;
        Ok((read, nf_tables))
    }

    /// As [`Iptables::read_tables`], and whether the FORWARD chain of `filter` drops by
    /// policy (`:FORWARD DROP`), from the same `iptables-save`.
    pub fn read_tables_and_forward(
        &self,
        tables: &[&str],
    ) -> Result<(BTreeMap<String, Table>, bool, bool), FirewallError> {
        let text = self.save_all()?;
        let forward_drops = only_tables(&text, &[FILTER])
            .lines()
            .any(|line| line.starts_with(":FORWARD DROP "));
        let mut saved = parse_save(&only_tables(&text, tables))?;
        let mut read = BTreeMap::new();
        for &table in tables {
            let found = match saved.remove(table) {
                Some(found) => found,
                None => {
                    let error = no_table(table, &text);
                    match (&error, builtin_chains(table)) {
                        (FirewallError::NoTable { note, .. }, Some(chains)) if note.is_empty() => {
                            Table {
                                chains: chains
                                    .iter()
                                    .map(|chain| (chain.to_string(), Vec::new()))
                                    .collect(),
                            }
                        }
                        _ => return Err(error),
                    }
                }
            };
            read.insert(table.to_string(), found);
        }
        // An empty ruleset prints no header: the binary tells then.
        let nf_tables = match text.lines().any(|line| line.starts_with('*')) {
            true => is_nf_tables(&text),
            false => self.binary_is_nf_tables(),
        };
        Ok((read, nf_tables, forward_drops))
    }

    /// Whether the `iptables-save` in use is the nf_tables one, by the name of the binary
    /// it resolves to (`xtables-nft-multi`); false when that cannot be told.
    fn binary_is_nf_tables(&self) -> bool {
        locate(&self.save)
            .and_then(|path| std::fs::canonicalize(path).ok())
            .and_then(|binary| Some(binary.file_name()?.to_str()?.contains("nft")))
            .unwrap_or(false)
    }

    /// Rewrites kudonet's part of `table` to `chains` and `jumps` (see [`synced_table`]) in
    /// one `iptables-restore -w --noflush` transaction, after reading the table afresh.
    /// Runs no `iptables-restore` at all when the table already is as wanted.
    pub fn sync_table(
        &self,
        table: &str,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), FirewallError> {
        self.sync_table_from(table, None, chains, jumps).map(drop)
    }

    /// As [`Iptables::sync_table`], from `current` when the caller knows the table as it
    /// is now (read at the nf_tables generation that still stands), else reading it.
    /// Returns the table as written, or `None` when it was as wanted already.
    pub fn sync_table_from(
        &self,
        table: &str,
        current: Option<Table>,
        chains: &BTreeMap<String, Vec<String>>,
        jumps: &BTreeMap<String, Vec<String>>,
    ) -> Result<Option<Table>, FirewallError> {
        check_request(table, chains, jumps)?;
        let current = match current {
            Some(current) => current,
            None => self.read_table(table)?,
        };
        let mut wanted = synced_table(&current, chains, jumps);
        // An empty jump list for a chain the table lacks creates nothing in the kernel
        // (kudonet's own chains are created even when empty).
        wanted.chains.retain(|chain, rules| {
            !rules.is_empty() || current.chains.contains_key(chain) || Table::is_owned_chain(chain)
        });
        if wanted == current {
            return Ok(None);
        }
        let script = restore_script(table, &current, chains, jumps);
        run(&self.restore, &["-w", "--noflush"], Some(&script))?;
        Ok(Some(wanted))
    }
}

/// `iptables-save` output with only the blocks of `tables` (and the comments): what other
/// tools keep in other tables is none of kudonet's business, and is not parsed.
fn only_tables(text: &str, tables: &[&str]) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut keep = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            keep = tables.contains(&name.trim_end());
        }
        if keep || line.starts_with('#') {
            kept.push_str(line);
            kept.push('\n');
        }
        if line.trim_end() == "COMMIT" {
            keep = false;
        }
    }
    kept
}

/// Whether `iptables-save` output comes from the nf_tables backend (its first line).
fn is_nf_tables(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|first| first.starts_with('#') && first.contains("(nf_tables)"))
}

/// The error for `table` missing from `iptables-save` output `text`, with what the output
/// says of it (the nf_tables backend notes a table it cannot represent).
fn no_table(table: &str, text: &str) -> FirewallError {
    let quoted = format!("`{table}'");
    FirewallError::NoTable {
        table: table.to_string(),
        note: text
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .map(str::trim)
            .filter(|note| note.contains(&quoted))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The built-in chains of the tables kudonet uses, as `iptables-save -t` lists them.
fn builtin_chains(table: &str) -> Option<&'static [&'static str]> {
    match table {
        "nat" => Some(&["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
        "filter" => Some(&["INPUT", "FORWARD", "OUTPUT"]),
        _ => None,
    }
}

/// Refuses what would touch something not kudonet's, or smuggle extra lines into the
/// script: chains not named `KUDO-*`, jump rules not marked as kudonet's, line breaks.
fn check_request(
    table: &str,
    chains: &BTreeMap<String, Vec<String>>,
    jumps: &BTreeMap<String, Vec<String>>,
) -> Result<(), FirewallError> {
    let refuse = |reason: String| {
        Err(FirewallError::Refused {
            table: table.to_string(),
            reason,
        })
    };
    let one_word = |name: &str| !name.is_empty() && !name.contains(char::is_whitespace);
    if !one_word(table) {
        return refuse(format!("bad table name {table:?}"));
    }
    for (chain, rules) in chains {
        if !Table::is_owned_chain(chain) || !one_word(chain) {
            return refuse(format!("chain {chain:?} is not kudonet's (KUDO-*)"));
        }
        if let Some(rule) = rules.iter().find(|rule| rule.contains(['\n', '\r'])) {
            return refuse(format!("rule of {chain} spans lines: {rule:?}"));
        }
    }
    for (chain, rules) in jumps {
        if Table::is_owned_chain(chain) || !one_word(chain) {
            return refuse(format!(
                "jump rules belong in built-in chains, not {chain:?}"
            ));
        }
        if let Some(rule) = rules.iter().find(|rule| !Table::is_owned_jump(rule)) {
            return refuse(format!(
                "{rule:?} in {chain} is not a kudonet jump rule ({JUMP_MARK} -j KUDO-...)"
            ));
        }
    }
    Ok(())
}

/// Where `program` is: itself if it names a path, else the first match in `PATH` and then
/// the sbin directories.
fn locate(program: &Path) -> Option<PathBuf> {
    if program.components().count() != 1 || program.is_absolute() {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program` with `args`, feeding it `stdin`; its output if it exits 0.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output, FirewallError> {
    let name = program.display().to_string();
    let not_found = || FirewallError::NotFound {
        program: name.clone(),
    };
    let path = locate(program).ok_or_else(not_found)?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            ErrorKind::NotFound => not_found(),
            _ => FirewallError::Spawn {
                program: name.clone(),
                reason: error.to_string(),
                errno: error.raw_os_error(),
            },
        })?;
    // Write from another thread: a child that fills its output pipes before reading all
    // of its input must not deadlock us.
    let writer = child.stdin.take().zip(stdin).map(|(mut pipe, text)| {
        let text = text.to_string();
        std::thread::spawn(move || pipe.write_all(text.as_bytes()))
    });
    let output = child
        .wait_with_output()
        .map_err(|error| FirewallError::Spawn {
            program: name.clone(),
            reason: error.to_string(),
            errno: error.raw_os_error(),
        })?;
    // A write error (a broken pipe) means the child quit early: its status says why.
    let written = writer.map(|writer| writer.join());
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(FirewallError::Failed {
            program: name,
            status: describe(output.status),
            stderr: one_line(&stderr),
            script_line: stdin.and_then(|script| failing_line(&stderr, script)),
        });
    }
    if let Some(Ok(Err(error))) = written {
        return Err(FirewallError::Spawn {
            program: name,
            reason: format!("writing its input: {error}"),
            errno: error.raw_os_error(),
        });
    }
    Ok(output)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Error output on one line: lines trimmed and joined with `; `, without the `Try ... -h`
/// advice iptables appends.
fn one_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The script line `iptables-restore` blames, as `N: TEXT`. It says
/// `Error occurred at line: N` (a bad rule) or `line N: ... failed` (a kernel refusal).
fn failing_line(stderr: &str, script: &str) -> Option<String> {
    let number = stderr.lines().find_map(|line| {
        let line = line.trim();
        let digits = line
            .strip_prefix("Error occurred at line:")
            .or_else(|| line.strip_prefix("line "))?
            .trim_start();
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse::<usize>().ok()
    })?;
    let text = script.lines().nth(number.checked_sub(1)?)?;
    Some(format!("{number}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(chain, rules)| {
                let rules = rules.iter().map(|rule| rule.to_string()).collect();
                (chain.to_string(), rules)
            })
            .collect()
    }

    fn table(entries: &[(&str, &[&str])]) -> Table {
        Table {
            chains: map(entries),
        }
    }

    const JUMP_FORWARD: &str = "-m comment --comment kudonet -j KUDO-FORWARD";
    const JUMP_OLD: &str = "-m comment --comment kudonet -j KUDO-OLD";

    /// `iptables-save` of a Debian host with Docker and kudonet (nf_tables backend).
    const DOCKER_HOST: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 10:49:00 2026
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:DOCKER - [0:0]
:KUDO-PORTS - [0:0]
-A PREROUTING -m comment --comment kudonet -j KUDO-PREROUTING
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80
COMMIT
# Completed on Sat Nov 28 10:49:00 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 10:49:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:KUDO-FORWARD - [0:0]
-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD ! -o kudo0 -m comment --comment \"web port\" -j ACCEPT
-A FORWARD
-A DOCKER-USER -j RETURN
-A KUDO-FORWARD -i kudo0 -j ACCEPT
COMMIT
# Completed on Sat Nov 28 10:49:00 2026
";

    #[test]
    fn parses_several_tables_with_comments_negations_and_quotes() {
        let tables = parse_save(DOCKER_HOST).unwrap();
        assert_eq!(tables.keys().collect::<Vec<_>>(), ["filter", "nat"]);
        assert_eq!(
            tables["filter"],
            table(&[
                ("INPUT", &[]),
                (
                    "FORWARD",
                    &[
                        JUMP_FORWARD,
                        "-j DOCKER-USER",
                        "! -o kudo0 -m comment --comment \"web port\" -j ACCEPT",
                        "",
                    ],
                ),
                ("OUTPUT", &[]),
                ("DOCKER-USER", &["-j RETURN"]),
                ("KUDO-FORWARD", &["-i kudo0 -j ACCEPT"]),
            ])
        );
        let nat = &tables["nat"];
        assert_eq!(nat.chains.len(), 6);
        assert_eq!(nat.chains["INPUT"], Vec::<String>::new());
        assert_eq!(
            nat.chains["POSTROUTING"],
            ["-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]
        );
        assert_eq!(
            nat.chains["KUDO-PORTS"],
            [
                "-p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80"
            ]
        );
    }

    #[test]
    fn only_the_wanted_tables_are_parsed() {
        let text = "# Generated by iptables-save v1.8.9 (nf_tables)\n*mangle\n:PREROUTING ACCEPT [0:0]\nsomething odd\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUDO-OUTPUT\nCOMMIT\n";
        let kept = only_tables(text, &["nat", "filter"]);
        assert_eq!(
            kept,
            "# Generated by iptables-save v1.8.9 (nf_tables)\n*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUDO-OUTPUT\nCOMMIT\n"
        );
        assert!(parse_save(text).is_err(), "the odd line is mangle's");
        assert_eq!(parse_save(&kept).unwrap().len(), 1);
    }

    #[test]
    fn parses_an_empty_output_and_an_empty_table() {
        assert_eq!(parse_save("").unwrap(), BTreeMap::new());
        let raw = "# Generated by iptables-save v1.8.9 (nf_tables)\n*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            parse_save(raw).unwrap(),
            BTreeMap::from([(
                "raw".to_string(),
                table(&[("PREROUTING", &[]), ("OUTPUT", &[])])
            )])
        );
    }

    #[test]
    fn rejects_unexpected_lines_naming_them() {
        let cases = [
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-I INPUT -j ACCEPT\nCOMMIT\n",
                3,
                "unexpected line",
            ),
            (
                "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n",
                2,
                "rule of an undeclared chain",
            ),
            ("-A INPUT -j ACCEPT\n", 1, "rule outside a table"),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n",
                2,
                "table filter has no COMMIT",
            ),
            (
                "*filter\n*nat\n",
                2,
                "table filter has no COMMIT before the next",
            ),
            ("COMMIT\n", 1, "COMMIT outside a table"),
            (
                "*filter\n:INPUT ACCEPT\nCOMMIT\n",
                2,
                "bad chain declaration",
            ),
            (
                "*filter\nCOMMIT\n*filter\nCOMMIT\n",
                3,
                "table listed twice",
            ),
            ("*filter\n[0:0] -A INPUT -j ACCEPT\n", 2, "unexpected line"),
        ];
        for (text, line, reason) in cases {
            match parse_save(text) {
                Err(FirewallError::Parse {
                    line: got_line,
                    reason: got_reason,
                    ..
                }) => assert_eq!((got_line, got_reason.as_str()), (line, reason), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let error = parse_save("*filter\nbogus\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "iptables-save output, line 2: unexpected line: \"bogus\""
        );
    }

    #[test]
    fn script_for_a_fresh_table() {
        let current = table(&[("INPUT", &[]), ("FORWARD", &[]), ("OUTPUT", &[])]);
        let chains = map(&[(
            "KUDO-FORWARD",
            &[
                "-i kudo0 -j ACCEPT",
                "-o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ],
        )]);
        let jumps = map(&[("FORWARD", &[JUMP_FORWARD])]);
        assert_eq!(
            restore_script("filter", &current, &chains, &jumps),
            "\
*filter
:KUDO-FORWARD - [0:0]
-A KUDO-FORWARD -i kudo0 -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-I FORWARD 1 -m comment --comment kudonet -j KUDO-FORWARD
COMMIT
"
        );
    }

    #[test]
    fn script_replacing_a_stale_rule() {
        let current = table(&[
            (
                "PREROUTING",
                &[
                    "-m comment --comment kudonet -j KUDO-PREROUTING",
                    "-m addrtype --dst-type LOCAL -j DOCKER",
                ],
            ),
            ("DOCKER", &[]),
            (
                "KUDO-PREROUTING",
                &["-m addrtype --dst-type LOCAL -j KUDO-PORTS"],
            ),
            (
                "KUDO-PORTS",
                &[
                    "-p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.2:80",
                ],
            ),
        ]);
        let chains = map(&[
            (
                "KUDO-PREROUTING",
                &["-m addrtype --dst-type LOCAL -j KUDO-PORTS"],
            ),
            (
                "KUDO-PORTS",
                &[
                    "-p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.3:80",
                ],
            ),
        ]);
        let jumps = map(&[(
            "PREROUTING",
            &["-m comment --comment kudonet -j KUDO-PREROUTING"],
        )]);
        assert_eq!(
            restore_script("nat", &current, &chains, &jumps),
            "\
*nat
:KUDO-PORTS - [0:0]
:KUDO-PREROUTING - [0:0]
-D PREROUTING -m comment --comment kudonet -j KUDO-PREROUTING
-A KUDO-PORTS -p tcp -m tcp --dport 8080 -m comment --comment web -j DNAT --to-destination 10.0.0.3:80
-A KUDO-PREROUTING -m addrtype --dst-type LOCAL -j KUDO-PORTS
-I PREROUTING 1 -m comment --comment kudonet -j KUDO-PREROUTING
COMMIT
"
        );
    }

    #[test]
    fn script_deleting_a_stale_chain_after_its_jumps() {
        let current = table(&[
            (
                "FORWARD",
                &[JUMP_OLD, "-j DOCKER-USER", JUMP_FORWARD, JUMP_OLD],
            ),
            ("DOCKER-USER", &["-j RETURN"]),
            ("KUDO-FORWARD", &["-i kudo0 -j ACCEPT", "-j KUDO-OLD"]),
            ("KUDO-OLD", &["-j ACCEPT"]),
        ]);
        let chains = map(&[("KUDO-FORWARD", &["-i kudo0 -j ACCEPT"])]);
        let jumps = map(&[("FORWARD", &[JUMP_FORWARD])]);
        assert_eq!(
            restore_script("filter", &current, &chains, &jumps),
            "\
*filter
:KUDO-FORWARD - [0:0]
:KUDO-OLD - [0:0]
-D FORWARD -m comment --comment kudonet -j KUDO-OLD
-D FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-D FORWARD -m comment --comment kudonet -j KUDO-OLD
-X KUDO-OLD
-A KUDO-FORWARD -i kudo0 -j ACCEPT
-I FORWARD 1 -m comment --comment kudonet -j KUDO-FORWARD
COMMIT
"
        );
    }

    #[test]
    fn script_moving_jumps_to_the_head() {
        let jump_out = "-m comment --comment kudonet -j KUDO-OUTPUT";
        let jump_ports = "-m comment --comment kudonet -j KUDO-PORTS";
        let current = table(&[
            (
                "OUTPUT",
                &["-d 127.0.0.11/32 -j DOCKER_OUTPUT", jump_ports, jump_out],
            ),
            ("KUDO-OUTPUT", &[]),
            ("KUDO-PORTS", &[]),
        ]);
        let chains = map(&[("KUDO-OUTPUT", &[]), ("KUDO-PORTS", &[])]);
        let jumps = map(&[("OUTPUT", &[jump_out, jump_ports])]);
        assert_eq!(
            restore_script("nat", &current, &chains, &jumps),
            "\
*nat
:KUDO-OUTPUT - [0:0]
:KUDO-PORTS - [0:0]
-D OUTPUT -m comment --comment kudonet -j KUDO-PORTS
-D OUTPUT -m comment --comment kudonet -j KUDO-OUTPUT
-I OUTPUT 1 -m comment --comment kudonet -j KUDO-OUTPUT
-I OUTPUT 2 -m comment --comment kudonet -j KUDO-PORTS
COMMIT
"
        );
    }

    #[test]
    fn script_for_a_teardown() {
        let current = parse_save(DOCKER_HOST).unwrap().remove("filter").unwrap();
        assert_eq!(
            restore_script("filter", &current, &BTreeMap::new(), &BTreeMap::new()),
            "\
*filter
:KUDO-FORWARD - [0:0]
-D FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-X KUDO-FORWARD
COMMIT
"
        );
        let empty = table(&[("INPUT", &[]), ("FORWARD", &["-j DOCKER-USER"])]);
        assert_eq!(
            restore_script("filter", &empty, &BTreeMap::new(), &BTreeMap::new()),
            "*filter\nCOMMIT\n"
        );
    }

    #[test]
    fn a_rule_without_match_or_target_has_no_trailing_space() {
        let chains = map(&[("KUDO-COUNT", &[""])]);
        assert_eq!(
            restore_script("filter", &Table::default(), &chains, &BTreeMap::new()),
            "*filter\n:KUDO-COUNT - [0:0]\n-A KUDO-COUNT\nCOMMIT\n"
        );
    }

    #[test]
    fn refuses_to_write_what_is_not_kudonets() {
        let ok = map(&[("KUDO-X", &["-j ACCEPT"])]);
        let none = BTreeMap::new();
        let cases = [
            check_request("filter", &map(&[("DOCKER-USER", &[])]), &none),
            check_request(
                "filter",
                &map(&[("KUDO-X", &["-j ACCEPT\n-F FORWARD"])]),
                &none,
            ),
            check_request("filter", &ok, &map(&[("FORWARD", &["-j KUDO-X"])])),
            check_request("filter", &ok, &map(&[("KUDO-Y", &[JUMP_FORWARD])])),
            check_request("filter\nCOMMIT", &ok, &none),
        ];
        for case in cases {
            assert!(
                matches!(case, Err(FirewallError::Refused { .. })),
                "{case:?}"
            );
        }
        let jumps = map(&[("FORWARD", &["-m comment --comment kudonet -j KUDO-X"])]);
        assert_eq!(check_request("filter", &ok, &jumps), Ok(()));
    }

    #[test]
    fn errors_are_one_line_and_name_the_failing_script_line() {
        let script = "*filter\n:KUDO-X - [0:0]\n-A KUDO-X -j ACCEPT --bogus\nCOMMIT\n";
        let stderr = "iptables-restore v1.8.9 (nf_tables): unknown option \"--bogus\"\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n";
        assert_eq!(
            failing_line(stderr, script).as_deref(),
            Some("3: -A KUDO-X -j ACCEPT --bogus")
        );
        let kernel = "iptables-restore v1.8.9 (nf_tables): \nline 2: CHAIN_DEL failed (Device or resource busy): chain KUDO-X\n";
        assert_eq!(
            failing_line(kernel, script).as_deref(),
            Some("2: :KUDO-X - [0:0]")
        );
        assert_eq!(failing_line("nothing useful\n", script), None);
        let error = FirewallError::Failed {
            program: "iptables-restore".into(),
            status: "exit status 2".into(),
            stderr: one_line(stderr),
            script_line: failing_line(stderr, script),
        };
        assert_eq!(
            error.to_string(),
            "iptables-restore failed (exit status 2): iptables-restore v1.8.9 (nf_tables): \
             unknown option \"--bogus\"; Error occurred at line: 3 \
             [script line 3: -A KUDO-X -j ACCEPT --bogus]"
        );
    }
}
