//! Reading the node and executing a plan's actions. The [`Dataplane`] trait is the seam
//! between the pure core (spec, observed model, planner) and the kernel, whose module
//! implements it for a real node; [`memory::MemoryDataplane`] implements it over an
//! in-memory [`Observed`], with the kernel's semantics, for tests that need no root.

mod error;
pub mod memory;

pub use error::{Cause, DataplaneError, IoError, Refusal, errno_can_retry, io_can_retry};

use std::collections::BTreeSet;

use crate::observed::Observed;
use crate::plan::Action;

/// What may have changed in the kernel since the last observation: what the next one
/// reads again. The rest comes from the kernel dataplane's `Snapshot`. Addresses and routes
/// of the node, sysctls and the list of namespaces are cheap and read every time; iptables
/// is read again whenever the nf_tables generation moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Trust no link or namespace read before: at start, on a resync, after dropped
    /// events. iptables still follows its generation, the kernel's own change counter.
    pub everything: bool,
    /// Links of the node namespace, by interface index (as kernel events name them).
    pub host_indexes: BTreeSet<u32>,
    /// Links of the node namespace, by name (as kudonet's own actions name them).
    pub host_names: BTreeSet<String>,
    /// Namespaces of the netns directory, by name.
    pub namespaces: BTreeSet<String>,
    /// kudonet changed the other iptables backend (which moves no nf_tables generation when
    /// it is the legacy one, and is otherwise read again only with `everything`).
    pub other_backend: bool,
}

impl Changes {
    /// Changes that make the next observation read the whole node again.
    pub fn everything() -> Changes {
        Changes {
            everything: true,
            ..Changes::default()
        }
    }

    /// Adds what `other` names to what this names.
    pub fn merge(&mut self, other: Changes) {
        self.everything |= other.everything;
        self.host_indexes.extend(other.host_indexes);
        self.host_names.extend(other.host_names);
        self.namespaces.extend(other.namespaces);
        self.other_backend |= other.other_backend;
    }
}

/// Reads the node and changes it, one action at a time.
pub trait Dataplane {
    /// What the node has now.
    fn observe(&mut self) -> Result<Observed, DataplaneError>;

    /// From now on, observations read only what [`changed`](Dataplane::changed) reported
    /// and what the dataplane's own actions touched since the last one, if the dataplane
    /// reads incrementally. For an owner that follows kernel events (the controller); one
    /// that misses some must report [`Changes::everything`].
    fn observe_incrementally(&mut self) {}

    /// Reports what may have changed in the node since the last observation.
    fn changed(&mut self, _changes: Changes) {}

    /// The namespaces someone else owns that the desired state names (`netns` paths):
    /// observations read them too, besides the netns directory's namespaces of kudonet's.
    fn read_others_namespaces(&mut self, _paths: BTreeSet<String>) {}

    /// Carries out one action.
    fn apply(&mut self, action: &Action) -> Result<(), DataplaneError>;

    /// Checks, before a plan's first action, what would make every action fail (a
    /// read-only `/proc/sys`, say), so that such a node is left as it was.
    fn check_can_change(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Checks, before a plan's first action, that `action` can be carried out at all (the
    /// program it needs is installed, say), so that a node is not left half built.
    fn check_can_apply(&mut self, _action: &Action) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Waits until what the actions applied since the last call set going finishes: the
    /// kernel destroys the veths of deleted namespaces asynchronously. Called after a
    /// plan's actions, before the node is observed again, so that an observation never
    /// sees half-removed instances (and neither recreates nor deletes again what is going).
    fn settle(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }

    /// Carries out `actions` in order, stopping at the first failure, then settles.
    fn apply_all(&mut self, actions: &[Action]) -> Result<(), DataplaneError> {
        actions.iter().try_for_each(|action| self.apply(action))?;
        self.settle()
    }
}
