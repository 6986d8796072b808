//! The controller's fatal errors: what stops `kudonet run` (another controller holds the
//! node, the metrics address cannot be bound, the kernel cannot be read at all). Failures of
//! a pass are not among them: they back off and show in the status file and the metrics.

use std::net::SocketAddr;

use crate::dataplane::DataplaneError;
use crate::lock::LockError;

/// Why the controller stopped. The message is one line, as printed by `kudonet run`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The signal handlers could not be installed.
    #[error("{0}")]
    Signals(#[source] std::io::Error),
    /// `--metrics-addr` cannot be listened on.
    #[error("cannot listen on --metrics-addr {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The metrics server's thread or runtime could not be started.
    #[error("cannot start the metrics server: {0}")]
    MetricsServer(#[source] std::io::Error),
    /// The kernel dataplane could not be set up (a missing program, no netlink socket).
    #[error("{0}")]
    Dataplane(#[from] DataplaneError),
    /// The node's controller lock: another controller holds it, or it cannot be taken.
    #[error("{0}")]
    Lock(#[from] LockError),
    /// A pass's blocking task panicked or was cancelled.
    #[error("reconcile task failed: {0}")]
    Pass(#[source] tokio::task::JoinError),
    /// Reading the node for the status file panicked or was cancelled.
    #[error("reading the node failed: {0}")]
    ReadNode(#[source] tokio::task::JoinError),
}
