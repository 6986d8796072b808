//! Setting up and cleaning a node: the calls of the original Kudo network library's `node`
//! module.
//!
//! A node set up through this module is an ordinary kudonet node: the library records the
//! request as a `kind: Node` document in its desired-state directory (see
//! [`utils`](crate::utils) for where, and how to change it), then converges the node with
//! the same planner and dataplane as `kudonet apply`. `kudonet status`, `kudonet plan` and
//! `kudonet run` pointed at that directory see the same node.
//!
//! Every call is synchronous and idempotent: it returns once the node matches the request
//! (or with a [`NetworkError`] saying what failed and why), and calling it again changes
//! nothing. Calls take the node's lock, so concurrent calls, `kudonet apply` and
//! `kudonet run` for the same node never change it at once; a call waits up to 30 seconds
//! for the lock, then fails with [`NetworkError::Busy`]. They need root (CAP_NET_ADMIN and
//! CAP_SYS_ADMIN), checked before anything is written.
//!
//! A state directory holds one node. [`setup_node`] with another node id re-keys it when no
//! instance is set up (an agent that restarts with a fresh id is not refused: nothing in the
//! kernel is named after the node id), and fails with [`NetworkError::NodeInUse`] while
//! instances recorded under the old id remain.
//!
//! The requests and responses are also reachable where the original library published them:
//! [`request`] and [`response`].

use cidr::Ipv4Inet;

use crate::compat;
use crate::compat::inet::IntoIpv4Inet;
use crate::compat::store::{self, Change, Config};
use crate::plan::Scope;

pub use crate::compat::error::NetworkError;

/// The node requests, at the original library's path (`node::request::SetupNodeRequest`).
pub mod request {
    pub use super::{CleanNodeRequest, SetupIptablesRequest, SetupNodeRequest};
}

/// The node response, at the original library's path (`node::response::SetupNodeResponse`).
pub mod response {
    pub use super::SetupNodeResponse;
}

/// A request to set up a node: its id and the bridge's address and prefix.
///
/// `node_ip_cidr` is the gateway of the node's instances (the bridge address, for example
/// `10.0.0.1/24`); its network (`10.0.0.0/24`) is the subnet instance addresses come from.
/// It must leave room for instances and be an address other hosts can route to: a loopback
/// address (`127.0.0.1/32`) or a prefix of /31 or /32 is refused with
/// [`NetworkError::InvalidRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupNodeRequest {
    /// The node's name (the `name` of its Node document).
    pub node_id: String,
    /// The bridge address and prefix (the `cidr` of its Node document).
    pub node_ip_cidr: Ipv4Inet,
}

impl SetupNodeRequest {
    /// A request to set up node `node_id` with its bridge at `node_ip_cidr`, a
    /// `cidr::Ipv4Inet` of cidr 0.3 ([`kudonet::cidr`](crate::cidr)) or of cidr 0.2 (the
    /// version the original library was published with).
    pub fn new(node_id: String, node_ip_cidr: impl IntoIpv4Inet) -> SetupNodeRequest {
        SetupNodeRequest {
            node_id,
            node_ip_cidr: node_ip_cidr.into_ipv4_inet(),
        }
    }
}

/// What [`setup_node`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupNodeResponse {
    /// The node's bridge, to which every instance is attached (`kudo0`): the "CNI" of the
    /// original library.
    pub interface_name: String,
}

impl SetupNodeResponse {
    /// A response naming the node's bridge.
    pub fn new(interface_name: String) -> SetupNodeResponse {
        SetupNodeResponse { interface_name }
    }

    /// The node's bridge (`kudo0`).
    pub fn interface_name(&self) -> &str {
        &self.interface_name
    }
}

/// A request to restore a node's firewall (and the rest of the node) after a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupIptablesRequest {
    /// The node set up earlier with [`setup_node`].
    pub node_id: String,
}

impl SetupIptablesRequest {
    /// A request to restore node `node_id`.
    pub fn new(node_id: String) -> SetupIptablesRequest {
        SetupIptablesRequest { node_id }
    }
}

/// A request to remove everything kudonet owns on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanNodeRequest {
    /// The node set up earlier with [`setup_node`].
    pub node_id: String,
}

impl CleanNodeRequest {
    /// A request to clean node `node_id`.
    pub fn new(node_id: String) -> CleanNodeRequest {
        CleanNodeRequest { node_id }
    }
}

/// Sets up the node: records it (`node.yaml` in the state directory) and converges it, which
/// creates the bridge `kudo0` with `node_ip_cidr` as its address, enables forwarding and
/// installs kudonet's iptables chains (`KUDO-*`), masquerading instance traffic that leaves
/// the node.
///
/// Instances recorded earlier are kept; calling it again with another `node_ip_cidr`
/// changes the node's address, provided every recorded instance still fits the new subnet.
/// Calling it with another `node_id` while no instance is set up re-keys the node: the
/// recorded Node takes the new id and nothing in the kernel changes (an agent that picks a
/// fresh id at every start keeps working).
///
/// It blocks until the node is converged and may be called from inside an async runtime
/// (a tokio task, as the Kudo node agent does); it does not need one.
///
/// # Errors
///
/// [`NetworkError::InvalidRequest`] for an unusable node id or address (among them a
/// loopback address or a /31 or /32 prefix, which leave no room for instances: two callers
/// asking for `127.0.0.1/32` at once both get this error, and nothing changes),
/// [`NetworkError::NodeInUse`] for a new node id while instances of the recorded node are
/// still set up,
/// [`NetworkError::NotConverged`] (and the others of [`NetworkError`]) when the node could not
/// be brought to the requested state.
///
/// # Example
///
/// From the original library's README:
///
/// ```no_run
/// # use std::net::Ipv4Addr;
/// # use std::str::FromStr;
/// # use cidr::Ipv4Inet;
/// # use kudonet::node::{setup_node, SetupNodeRequest};
/// let node_id = "node";
/// let node_ip_addr = Ipv4Addr::from_str("10.0.0.1").unwrap();
/// let node_ip_cidr = Ipv4Inet::new(node_ip_addr, 24).unwrap();
///
/// let request = SetupNodeRequest::new(node_id.to_string(), node_ip_cidr);
/// let response = setup_node(request).unwrap();
/// println!("CNI name: {}", response.interface_name);
/// ```
pub fn setup_node(request: SetupNodeRequest) -> Result<SetupNodeResponse, NetworkError> {
    compat::check_node_id(&request.node_id)?;
    compat::require_privileges("node::setup_node")?;
    let config = Config::from_env();
    let _lock = compat::lock_node(&request.node_id)?;
    let recorded = store::recorded_node(&config)?;
    // An IPv6 subnet given to the node in its file stays, also when the node is re-keyed
    // (an agent restarting with a new node id): the original API knows IPv4 only.
    let ipv6 = recorded.as_ref().and_then(|recorded| recorded.ipv6());
    if let Some(recorded) = recorded
        && recorded.name != request.node_id
    {
        let instances = store::recorded_instances(&config)?;
        if !instances.is_empty() {
            return Err(NetworkError::NodeInUse {
                requested: request.node_id,
                recorded: recorded.name,
                instances,
                state_dir: config.state_dir,
            });
        }
        // Re-keyed below: only the Node document carries the node id.
        tracing::info!(
            from = recorded.name,
            to = request.node_id,
            "re-keying the node, which has no instances"
        );
    }
    store::commit(
        &config,
        &Change::node(&request.node_id, request.node_ip_cidr, ipv6),
    )?;
    compat::converge(&config, &request.node_id, Scope::Node)?;
    let node = store::require_node(&config, &request.node_id)?;
    Ok(SetupNodeResponse::new(node.bridge))
}

/// Restores the node after a reboot: converges it to what is recorded, which rebuilds its
/// iptables chains and, since every instance is recorded too, the bridge, the instances'
/// namespaces, veths and published ports. On a node that is up it changes nothing.
///
/// # Errors
///
/// [`NetworkError::NodeNotSetUp`] when [`setup_node`] was never called (or the node was
/// cleaned), [`NetworkError::DifferentNode`] when another node is set up, and the others of
/// [`NetworkError`] when the node could not be restored.
///
/// # Example
///
/// From the original library's README:
///
/// ```no_run
/// # use kudonet::node::{setup_iptables, SetupIptablesRequest};
/// let node_id = "node";
/// let request = SetupIptablesRequest::new(node_id.to_string());
///
/// setup_iptables(request).unwrap();
/// ```
pub fn setup_iptables(request: SetupIptablesRequest) -> Result<(), NetworkError> {
    compat::check_node_id(&request.node_id)?;
    compat::require_privileges("node::setup_iptables")?;
    let config = Config::from_env();
    let _lock = compat::lock_node(&request.node_id)?;
    store::require_node(&config, &request.node_id)?;
    compat::converge(&config, &request.node_id, Scope::Node)
}

/// Cleans the node: removes everything kudonet owns on it, as `kudonet teardown` does (the
/// bridge, every instance's namespace and veth, the `KUDO-*` chains and the jump rules into
/// them, kudonet's routes), and the files the library recorded (`node.yaml` and
/// `instances/*.yaml`). Nothing kudonet does not own is touched. Cleaning a node that is not
/// set up is not an error.
///
/// # Errors
///
/// [`NetworkError::DifferentNode`] when another node is set up in the state directory;
/// [`NetworkError::NotConverged`] naming what could not be removed.
///
/// # Example
///
/// From the original library's README:
///
/// ```no_run
/// # use kudonet::node::{clean_node, CleanNodeRequest};
/// let node_id = "node";
/// let request = CleanNodeRequest::new(node_id.to_string());
/// clean_node(request).unwrap();
/// ```
pub fn clean_node(request: CleanNodeRequest) -> Result<(), NetworkError> {
    compat::check_node_id(&request.node_id)?;
    compat::require_privileges("node::clean_node")?;
    let config = Config::from_env();
    let _lock = compat::lock_node(&request.node_id)?;
    // A node file the library cannot read any more does not stop the clean-up.
    if let Ok(Some(recorded)) = store::recorded_node(&config) {
        store::check_same_node(&config, &request.node_id, &recorded)?;
    }
    store::remove_all(&config)?;
    compat::teardown(&config, &request.node_id)
}
