//! The error every library call returns.

use std::io;
use std::path::PathBuf;

use crate::dataplane::DataplaneError;

/// Why a call of [`node`](crate::node) or [`instance`](crate::instance) failed.
///
/// Every message is one line saying what failed and why. A call that fails on an invalid
/// request (or missing privileges, or the wrong node) changes nothing; a call that fails
/// later ([`NetworkError::Dataplane`], [`NetworkError::NotConverged`]) has recorded the
/// request, and calling it again, or running `kudonet apply` on the state directory, retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The request cannot be carried out as given: an unusable id, an address outside the
    /// node's subnet or with another prefix length, a port out of range or published twice, a
    /// gateway that is not the node's, a loopback node address... The reason names the
    /// request's value (`instance_ip_cidr 10.0.0.2/32: ...`), then kudonet's validation
    /// message.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with the request.
        reason: String,
    },
    /// The process lacks root or a capability the call needs (CAP_NET_ADMIN, CAP_SYS_ADMIN).
    #[error("{reason}")]
    MissingPrivileges {
        /// Which call needs what, and how to grant it.
        reason: String,
    },
    /// No node has been set up with [`setup_node`](crate::node::setup_node) in this state
    /// directory.
    #[error("no node is set up in {}: call node::setup_node first", state_dir.display())]
    NodeNotSetUp {
        /// The library's desired-state directory.
        state_dir: PathBuf,
    },
    /// The request names a node other than the one set up in this state directory (a state
    /// directory holds one node).
    #[error(
        "node {requested:?} is not the node set up in {} ({recorded:?}); call node::clean_node for {recorded:?} first",
        state_dir.display()
    )]
    DifferentNode {
        /// The node the request names.
        requested: String,
        /// The node recorded in the state directory.
        recorded: String,
        /// The library's desired-state directory.
        state_dir: PathBuf,
    },
    /// [`setup_node`](crate::node::setup_node) with a new node id while instances of the node
    /// recorded under the old id are still set up. Without instances the node is simply
    /// re-keyed; with them, kudonet cannot tell a restarted agent from a second one sharing the
    /// state directory, and leaves the decision to the caller.
    #[error(
        "node {requested:?} cannot replace node {recorded:?} set up in {}: its instances {} are still set up; clean them with instance::clean_instance, or call node::clean_node for {recorded:?}, first",
        state_dir.display(),
        instances.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", ")
    )]
    NodeInUse {
        /// The node id of the request.
        requested: String,
        /// The node id recorded in the state directory.
        recorded: String,
        /// The ids of the instances recorded for it.
        instances: Vec<String>,
        /// The library's desired-state directory.
        state_dir: PathBuf,
    },
    /// The desired state recorded in the state directory cannot be used as it is (edited by
    /// hand into an invalid state, or writable by users other than root).
    #[error("the desired state in {} cannot be used: {reason}", state_dir.display())]
    InvalidState {
        /// The library's desired-state directory.
        state_dir: PathBuf,
        /// Every problem, separated by `; `.
        reason: String,
    },
    /// Another kudonet (for example `kudonet run` for the same node) holds the node's lock
    /// for longer than the call waits.
    #[error("{reason}")]
    Busy {
        /// Who holds the lock.
        reason: String,
    },
    /// The dataplane could not be used or read: iptables missing, netlink unavailable...
    #[error("dataplane: {0}")]
    Dataplane(#[from] DataplaneError),
    /// The node (or, for an instance call, what concerns that instance) still differs from
    /// the request after applying it: the failed actions with their reasons, and conflicts
    /// with what is in the way.
    #[error("node {node} did not converge: {}", problems.join("; "))]
    NotConverged {
        /// The node.
        node: String,
        /// One line each: `ACTION: REASON`, `conflict: ...` or `still differs: ACTION`.
        problems: Vec<String>,
    },
    /// Reading or writing the state directory failed.
    #[error("cannot {operation} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `remove`, `create folder`...).
        operation: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The system's reason.
        source: io::Error,
    },
}

/// The original library's name for [`NetworkError`].
pub type KudoNetworkError = NetworkError;

impl NetworkError {
    pub(crate) fn invalid(reason: impl Into<String>) -> NetworkError {
        NetworkError::InvalidRequest {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> NetworkError {
        let path = path.into();
        move |source| NetworkError::Io {
            operation,
            path,
            source,
        }
    }
}
