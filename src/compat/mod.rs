//! What the original Kudo network API ([`node`](crate::node), [`instance`](crate::instance),
//! [`utils`](crate::utils)) shares: the state directory ([`store`]), the error
//! ([`error::NetworkError`]), and carrying out a call through the same lock, planner and
//! dataplane as `kudonet apply` and `kudonet teardown`.

#![deny(missing_docs)]

pub(crate) mod error;
pub(crate) mod store;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::dataplane::iptables::Iptables;
use crate::dataplane::kernel::KernelDataplane;
use crate::lock::{self, NodeLock};
use crate::plan::Action;
use crate::reconcile::{self, DesiredError, Failure, Outcome, instance_of, load_desired};
use crate::spec::Desired;
use crate::{names, privileges};

use error::NetworkError;
use store::Config;

/// How long a call waits for another kudonet holding the node's lock (an apply or a pass
/// of `kudonet run` finishes well within it).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Fails unless the process may change the node; `call` names the call in the message.
pub(crate) fn require_privileges(call: &str) -> Result<(), NetworkError> {
    privileges::require(call, privileges::NODE_ADMIN)
        .map_err(|reason| NetworkError::MissingPrivileges { reason })
}

/// Takes the node's change lock (the one `kudonet apply` and each pass of `kudonet run`
/// take), waiting at most [`LOCK_WAIT`] for its holder.
pub(crate) fn lock_node(node: &str) -> Result<NodeLock, NetworkError> {
    let wait = lock::Wait {
        until: Some(Instant::now() + LOCK_WAIT),
        // A library cannot own the caller's signals: the deadline bounds the wait.
        stop: &|| false,
    };
    lock::wait_lock(Path::new(lock::LOCK_DIR), node, wait, |_| {}).map_err(|error| {
        NetworkError::Busy {
            reason: error.to_string(),
        }
    })
}

/// Node ids name lock files and appear in the desired state: the rules of Node names that
/// keep them safe as file names, checked before anything is written.
pub(crate) fn check_node_id(node_id: &str) -> Result<(), NetworkError> {
    let problem = if node_id.is_empty() {
        Some("must not be empty")
    } else if node_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain whitespace or control characters")
    } else if node_id.contains('/') || node_id.contains("..") || node_id.starts_with('.') {
        Some("must not contain `/` or `..`, nor start with `.`")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(NetworkError::invalid(format!(
            "node id {node_id:?} {problem}"
        ))),
        None => Ok(()),
    }
}

/// Instance ids are DNS labels (CONTRACT §1): they name the namespace and the instance's
/// file in the state directory, so they are checked before anything is written.
pub(crate) fn check_instance_id(instance_id: &str) -> Result<(), NetworkError> {
    let label = (1..=63).contains(&instance_id.len())
        && instance_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !instance_id.starts_with('-')
        && !instance_id.ends_with('-');
    if label {
        Ok(())
    } else {
        Err(NetworkError::invalid(format!(
            "instance id {instance_id:?} is not a DNS label: lowercase letters, digits and `-`, \
             starting and ending with a letter or digit, at most 63 characters"
        )))
    }
}

/// What a converge must achieve for a call to succeed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// The whole node matches its desired state.
    Node,
    /// Everything but what concerns the other instances: the node itself and this
    /// instance (present or, once cleaned, gone).
    Instance(&'a str),
}

/// Loads the recorded desired state of `node` and converges the node to it.
pub(crate) fn converge(config: &Config, node: &str, scope: Scope) -> Result<(), NetworkError> {
    let (_, desired) = load_desired(&config.state_dir, Some(node)).map_err(|error| {
        NetworkError::InvalidState {
            state_dir: config.state_dir.clone(),
            reason: match error {
                DesiredError::Node(reason) => reason,
                other => store::one_line(&other.to_string()),
            },
        }
    })?;
    let mut dataplane = KernelDataplane::new(&config.netns_dir, Iptables::new())?;
    let outcome = reconcile::converge(&mut dataplane, &desired, &BTreeSet::new(), |action| {
        tracing::info!(node, "{}", action.summary());
    })?;
    let problems = problems(&outcome, &desired, scope);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::NotConverged {
            node: node.to_string(),
            problems,
        })
    }
}

/// What keeps the call from succeeding: failures, conflicts and remaining differences,
/// except those of other instances when the call is about one instance.
fn problems(outcome: &Outcome, desired: &Desired, scope: Scope) -> Vec<String> {
    let of_another = |instance: Option<&str>| match scope {
        Scope::Node => false,
        Scope::Instance(this) => instance.is_some_and(|other| other != this),
    };

    let mut problems: Vec<String> = outcome
        .failures
        .iter()
        .filter(|failure| !of_another(instance_of(&failure.action, desired)))
        .map(Failure::to_string)
        .collect();
    let failed: Vec<String> = outcome
        .failures
        .iter()
        .map(|failure| failure.action.summary())
        .collect();
    problems.extend(
        outcome
            .remaining
            .conflicts
            .iter()
            .filter(|conflict| !of_another(conflict.instance.as_deref()))
            .map(|conflict| format!("conflict: {conflict}")),
    );
    problems.extend(
        outcome
            .remaining
            .actions
            .iter()
            .filter(|action| !of_another(instance_of(action, desired)))
            .map(Action::summary)
            .filter(|action| !failed.contains(action))
            .map(|action| format!("still differs: {action}")),
    );
    problems
}

/// Removes everything kudonet owns on this node, as `kudonet teardown` does.
pub(crate) fn teardown(config: &Config, node: &str) -> Result<(), NetworkError> {
    let mut dataplane = KernelDataplane::new(&config.netns_dir, Iptables::new())?;
    let outcome = reconcile::teardown(&mut dataplane, |action| {
        tracing::info!(node, "{}", action.summary())
    })?;
    if outcome.remaining.actions.is_empty() && outcome.failures.is_empty() {
        return Ok(());
    }
    let mut problems: Vec<String> = outcome.failures.iter().map(Failure::to_string).collect();
    problems.extend(
        outcome
            .remaining
            .actions
            .iter()
            .map(|action| format!("still there: {}", action.summary())),
    );
    Err(NetworkError::NotConverged {
        node: node.to_string(),
        problems,
    })
}

/// The namespace of an instance, as the library reports it.
pub(crate) fn namespace_name(instance_id: &str) -> String {
    names::namespace_name(instance_id)
}
