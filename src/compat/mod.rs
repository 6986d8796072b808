//! What the original Kudo network API ([`node`](crate::node), [`instance`](crate::instance),
//! [`utils`](crate::utils)) shares: the state directory ([`store`]), the error
//! ([`error::NetworkError`]), and carrying out a call through the same lock, planner and
//! dataplane as `kudonet apply` and `kudonet teardown`.

pub(crate) mod error;
pub(crate) mod inet;
pub mod instance;
pub mod node;
pub(crate) mod port;
pub(crate) mod store;
pub mod utils;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::kernel::KernelDataplane;
use crate::lock::{self, NodeLock};
use crate::plan::{Action, Scope, Step};
use crate::reconcile::{self, DesiredError, Failure, Outcome, load_desired};
use crate::spec;
use crate::{names, privileges};

use error::NetworkError;
use store::Config;

/// How long a call waits for another kudonet holding the node's lock (an apply or a pass
/// of `kudonet run` finishes well within it).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Fails unless the process may change the node; `call` names the call in the message.
pub(crate) fn require_privileges(call: &str) -> Result<(), NetworkError> {
    privileges::require(call, privileges::NODE_ADMIN).map_err(|missing| {
        NetworkError::MissingPrivileges {
            reason: missing.to_string(),
        }
    })
}

/// Takes the node's change lock (the one `kudonet apply` and each pass of `kudonet run`
/// take), waiting at most [`LOCK_WAIT`] for its holder.
pub(crate) fn lock_node(node: &str) -> Result<NodeLock, NetworkError> {
    wait_for_node(node, |_| {}).map_err(|error| NetworkError::Busy {
        reason: error.to_string(),
    })
}

/// Takes the node's change lock, waiting at most [`LOCK_WAIT`] for its holder; `waiting`
/// is told who holds it when it is not free at once. The library's calls and the CNI
/// plugin's commands wait alike.
pub(crate) fn wait_for_node(
    node: &str,
    waiting: impl FnMut(&lock::LockError),
) -> Result<NodeLock, lock::LockError> {
    let wait = lock::Wait {
        until: Some(Instant::now() + LOCK_WAIT),
        // A library cannot own the caller's signals: the deadline bounds the wait.
        stop: &|| false,
    };
    lock::wait_lock(Path::new(lock::LOCK_DIR), node, wait, waiting)
}

/// A node id is the name of the recorded Node: the rules of Node names, checked before
/// anything is written.
pub(crate) fn check_node_id(node_id: &str) -> Result<(), NetworkError> {
    spec::check_node_name(node_id).map_err(|problem| {
        NetworkError::invalid(format!("node_id {}: {problem}", store::quote(node_id)))
    })
}

/// The Instance name (a DNS label, as every Instance name is) recorded for `instance_id`.
///
/// An id that is a DNS label is the name itself. Any other id the original library accepted
/// (capitals, dots: `default.web-Ab3xZ`) is recorded under a name made of it, lowercased,
/// with every other character turned into `-`, cut to 54 characters, and 8 hex digits of a
/// hash of the id (`default-web-ab3xz-` and the hash), so that ids differing only in case
/// stay apart; the id itself is recorded too, and names the namespace: `kudo-<id>`.
pub(crate) fn instance_name(instance_id: &str) -> Result<String, NetworkError> {
    if spec::is_dns_label(instance_id) {
        return Ok(instance_id.to_string());
    }
    spec::check_instance_id(instance_id).map_err(|problem| {
        NetworkError::invalid(format!(
            "instance_id {}: {problem}",
            store::quote(instance_id)
        ))
    })?;
    let mut stem = String::new();
    for c in instance_id.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        // One `-` for a run of other characters, none at the start.
        if c != '-' || !(stem.is_empty() || stem.ends_with('-')) {
            stem.push(c);
        }
        if stem.len() == 54 {
            break;
        }
    }
    let stem = stem.trim_end_matches('-');
    let hash = names::fnv1a64(instance_id.as_bytes()) as u32;
    Ok(if stem.is_empty() {
        format!("id-{hash:08x}")
    } else {
        format!("{stem}-{hash:08x}")
    })
}

/// Loads the recorded desired state of `node` and converges the node to it. What the call
/// needs depends on its `scope`: with [`Scope::Node`], the whole node matches its desired
/// state; with [`Scope::Instance`], everything but what is for the other instances: the
/// node itself and this instance (present or, once cleaned, gone).
pub(crate) fn converge(config: &Config, node: &str, scope: Scope) -> Result<(), NetworkError> {
    let reported = |other: &Scope| !is_of_another(&scope, other);
    converge_reporting(config, node, &reported, &reported)
}

/// Whether `other` is about another instance than `scope` is.
fn is_of_another(scope: &Scope, other: &Scope) -> bool {
    match (scope, other) {
        (Scope::Instance(this), Scope::Instance(other)) => this != other,
        _ => false,
    }
}

/// [`converge`], failing on the failures of the scopes `failures` keeps, and on the
/// conflicts and remaining differences of those `rest` keeps.
pub(crate) fn converge_reporting(
    config: &Config,
    node: &str,
    failures: &dyn Fn(&Scope) -> bool,
    rest: &dyn Fn(&Scope) -> bool,
) -> Result<(), NetworkError> {
    let firewall = config.firewall()?;
    let (_, mut desired) = load_desired(&config.state_dir, Some(node)).map_err(|error| {
        NetworkError::InvalidState {
            state_dir: config.state_dir.clone(),
            reason: match error {
                DesiredError::Node(reason) => reason.to_string(),
                other => store::one_line(&other.to_string()),
            },
        }
    })?;
    desired.firewall = firewall;
    let mut dataplane = KernelDataplane::for_backend(&config.netns_dir, firewall)?;
    let outcome = reconcile::converge(
        &mut dataplane,
        &desired,
        &BTreeSet::new(),
        &mut |action: &Action| tracing::info!(node, "{}", action.summary()),
    )?;
    let problems = problems(&outcome, failures, rest);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::NotConverged {
            node: node.to_string(),
            problems,
        })
    }
}

/// What keeps the call from succeeding: the failures of the scopes `failures` keeps, the
/// conflicts and remaining differences of those `rest` keeps.
fn problems(
    outcome: &Outcome,
    failures: &dyn Fn(&Scope) -> bool,
    rest: &dyn Fn(&Scope) -> bool,
) -> Vec<String> {
    let mut problems: Vec<String> = outcome
        .failures
        .iter()
        .filter(|failure| failures(&failure.scope))
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
            .filter(|conflict| rest(&conflict.scope))
            .map(|conflict| format!("conflict: {conflict}")),
    );
    problems.extend(
        outcome
            .remaining
            .steps
            .iter()
            .filter(|step| rest(&step.scope))
            .map(|Step { action, .. }| action.summary())
            .filter(|action| !failed.contains(action))
            .map(|action| format!("still differs: {action}")),
    );
    problems
}

/// Removes everything kudonet owns on this node, as `kudonet teardown` does.
pub(crate) fn teardown(config: &Config, node: &str) -> Result<(), NetworkError> {
    let mut dataplane = KernelDataplane::for_backend(&config.netns_dir, config.firewall()?)?;
    let outcome = reconcile::teardown(&mut dataplane, &mut |action: &Action| {
        tracing::info!(node, "{}", action.summary())
    })?;
    if outcome.remaining.is_empty() && outcome.failures.is_empty() {
        return Ok(());
    }
    let mut problems: Vec<String> = outcome.failures.iter().map(Failure::to_string).collect();
    problems.extend(
        outcome
            .remaining
            .actions()
            .map(|action| format!("still there: {}", action.summary())),
    );
    Err(NetworkError::NotConverged {
        node: node.to_string(),
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_fails_on_the_problems_of_the_scopes_it_reports() {
        let mut outcome = Outcome::default();
        for scope in [Scope::Node, Scope::instance("a"), Scope::instance("b")] {
            outcome.remaining.conflicts.push(crate::plan::Conflict {
                message: format!("{scope:?} is in the way"),
                scope,
                kind: "Conflict",
            });
        }
        let a = Scope::instance("a");
        // A call about instance a (setup_instance, a CNI ADD): the node's and a's.
        let reported = |scope: &Scope| !is_of_another(&a, scope);
        assert_eq!(
            problems(&outcome, &reported, &reported),
            [
                "conflict: Node is in the way",
                "conflict: Instance(\"a\") is in the way"
            ]
        );
        // A CNI DEL of a: a's conflicts only (the node's failures would count too).
        assert_eq!(
            problems(
                &outcome,
                &|scope| scope.is_node() || *scope == a,
                &|scope| *scope == a
            ),
            ["conflict: Instance(\"a\") is in the way"]
        );
    }

    #[test]
    fn ids_follow_the_rules_of_names_and_map_to_stable_distinct_dns_labels() {
        assert_eq!(
            instance_name("web").unwrap(),
            "web",
            "a DNS label is the name"
        );
        // Pinned: names recorded in state directories in the field.
        let name = instance_name("default.web-Ab3xZ").unwrap();
        assert_eq!(name, "default-web-ab3xz-c575252d");
        let other = instance_name("default.web-ab3xz").unwrap();
        assert!(other.starts_with("default-web-ab3xz-") && other != name);
        assert_eq!(instance_name("_").unwrap(), "id-8602484e");
        let long = instance_name(&"A.".repeat(125)).unwrap();
        assert!(spec::is_dns_label(&long), "{long}");
        assert_eq!(
            check_node_id("a b").unwrap_err().to_string(),
            "invalid request: node_id \"a b\": Node name \"a b\" must not contain whitespace"
        );
        check_node_id("6f0c9a52-4b8e-4c4f-9d57-3f1e2a7b9c01").unwrap();
        assert_eq!(
            instance_name("a/b").unwrap_err().to_string(),
            "invalid request: instance_id \"a/b\": Instance id \"a/b\" must not contain `/` or `..`"
        );
    }
}
