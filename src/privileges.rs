//! Checking, before touching anything, that kudonet may do what it is asked, so that a
//! missing privilege is one clear line instead of a half-applied plan.

use std::fmt;

/// A Linux capability kudonet needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Links, addresses, routes, iptables.
    NetAdmin,
    /// Creating, entering and mounting namespaces.
    SysAdmin,
}

impl Capability {
    fn bit(self) -> u32 {
        match self {
            Capability::NetAdmin => 12,
            Capability::SysAdmin => 21,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        })
    }
}

/// What changing a node needs.
pub const NODE_ADMIN: &[Capability] = &[Capability::NetAdmin, Capability::SysAdmin];

/// What a command lacks to run: its message is one line, naming the command and the
/// capabilities.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingPrivileges {
    /// Root without the capability: a container or a unit's bounding set dropped it.
    #[error(
        "{command} needs {missing}, which this root process lacks: grant it (e.g. in the container or systemd unit)"
    )]
    RootLacks { command: String, missing: String },
    /// Not root.
    #[error("{command} needs root (missing {missing}): run it as root")]
    NotRoot { command: String, missing: String },
}

/// Ok when the process has every capability of `needed` in its effective set; else what
/// `command` lacks.
pub fn require(command: &str, needed: &[Capability]) -> Result<(), MissingPrivileges> {
    let effective = effective_capabilities().unwrap_or(0);
    let missing: Vec<String> = needed
        .iter()
        .filter(|cap| effective & (1 << cap.bit()) == 0)
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let (command, missing) = (command.to_string(), missing.join(" and "));
    if nix::unistd::geteuid().is_root() {
        Err(MissingPrivileges::RootLacks { command, missing })
    } else {
        Err(MissingPrivileges::NotRoot { command, missing })
    }
}

/// The effective capability set, from `/proc/self/status`.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}
