//! Executing a plan's actions. The [`Dataplane`] trait is the seam between the pure planner
//! and the kernel; [`memory::MemoryDataplane`] implements it over an in-memory [`Observed`],
//! with the kernel's semantics, for tests that need no root.

pub mod iptables;
pub mod kernel;
pub mod memory;
pub mod netlink;
pub mod netns;
pub mod nftables;

use crate::observe::Observed;
use crate::plan::Action;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error("reading the node: {0}")]
    Observe(String),
    /// A tool or facility the dataplane needs is missing; nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    /// `action` is the first line of the action as the plan prints it (without the rule
    /// diff of a table sync), so that the error is one line.
    #[error("{action}: {reason}")]
    Action { action: String, reason: String },
}

impl DataplaneError {
    pub fn action(action: &Action, reason: impl Into<String>) -> DataplaneError {
        DataplaneError::Action {
            action: action.summary(),
            reason: reason.into(),
        }
    }
}

/// Reads the node and changes it, one action at a time.
pub trait Dataplane {
    /// What the node has now.
    fn observe(&mut self) -> Result<Observed, DataplaneError>;

    /// Carries out one action.
    fn apply(&mut self, action: &Action) -> Result<(), DataplaneError>;

    /// Checks, before a plan's first action, what would make every action fail (a
    /// read-only `/proc/sys`, say), so that such a node is left as it was.
    fn check_can_change(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Carries out `actions` in order, stopping at the first failure.
    fn apply_all(&mut self, actions: &[Action]) -> Result<(), DataplaneError> {
        actions.iter().try_for_each(|action| self.apply(action))
    }
}
