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
    /// The request cannot be carried out as given: an instance id that is not a DNS label,
    /// an address outside the node's subnet or with another prefix length, a port published
    /// twice, a gateway that is not the node's... The reason is kudonet's validation
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
