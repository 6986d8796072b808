//! Setting up and cleaning an instance's network: the calls of the original Kudo network
//! library's `instance` module.
//!
//! [`setup_instance`] records the instance as a `kind: Instance` document
//! (`instances/<instance_id>.yaml` in the library's state directory, see
//! [`utils`](crate::utils)) and converges the node with the same planner and dataplane as
//! `kudonet apply`: the instance gets a network namespace `kudo-<instance_id>` holding `eth0`
//! (its address) and a default route via the node's bridge, the host end of its veth pair is
//! attached to the bridge, and its published ports are forwarded from the node.
//! [`clean_instance`] removes the document and converges again, which removes the
//! namespace, the veth and the port rules.
//!
//! A call about one instance never disturbs the others: the planner changes only what
//! differs, and a call succeeds or fails on the node and its own instance alone (another
//! instance in trouble does not fail it). Calls are synchronous and idempotent, take the
//! node's lock, and need root, like those of [`node`](crate::node).

#![deny(missing_docs)]

use std::net::Ipv4Addr;

use cidr::Ipv4Inet;

use crate::compat::store::{self, Change, Config};
use crate::compat::{self, Scope};
use crate::names;

pub use crate::compat::error::NetworkError;

/// A published port: host port `source` forwarded to instance port `destination`, for TCP and
/// for UDP.
///
/// `Port::new(80, 8080)` makes connections to port 80 of the node (any of its addresses,
/// including `127.0.0.1` from the node itself) reach port 8080 in the instance. In the
/// state directory it is two port entries: `hostPort: 80, instancePort: 8080` for `tcp` and
/// for `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// The node's port.
    pub source: u16,
    /// The instance's port.
    pub destination: u16,
}

impl Port {
    /// Host port `source` forwarded to instance port `destination`.
    pub fn new(source: u16, destination: u16) -> Port {
        Port {
            source,
            destination,
        }
    }

    /// The node's port.
    pub fn source(&self) -> u16 {
        self.source
    }

    /// The instance's port.
    pub fn destination(&self) -> u16 {
        self.destination
    }
}

/// A request to set up (or update) the network of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupInstanceRequest {
    /// The node set up with [`setup_node`](crate::node::setup_node).
    pub node_id: String,
    /// The node's gateway address: the address part of the node's `node_ip_cidr`.
    pub node_ip_addr: Ipv4Addr,
    /// The instance's id, a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63
    /// characters); its namespace is `kudo-<instance_id>`.
    pub instance_id: String,
    /// The instance's address, in the node's subnet and with the node's prefix length.
    pub instance_ip_cidr: Ipv4Inet,
    /// The ports published by the node to the instance.
    pub ports: Vec<Port>,
}

impl SetupInstanceRequest {
    /// A request to set up instance `instance_id` on node `node_id` (whose gateway is
    /// `node_ip_addr`) at `instance_ip_cidr`, publishing `ports`.
    pub fn new(
        node_id: String,
        node_ip_addr: Ipv4Addr,
        instance_id: String,
        instance_ip_cidr: Ipv4Inet,
        ports: Vec<Port>,
    ) -> SetupInstanceRequest {
        SetupInstanceRequest {
            node_id,
            node_ip_addr,
            instance_id,
            instance_ip_cidr,
            ports,
        }
    }
}

/// What [`setup_instance`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupInstanceResponse {
    /// The instance's default interface, inside its namespace (`eth0`).
    pub interface_name: String,
    /// The instance's network namespace (`kudo-<instance_id>`), in the netns directory, so
    /// that `ip netns exec kudo-<instance_id> ...` runs a process in it.
    pub namespace_name: String,
}

impl SetupInstanceResponse {
    /// The instance's default interface (`eth0`).
    pub fn interface_name(&self) -> &str {
        &self.interface_name
    }

    /// The instance's network namespace (`kudo-<instance_id>`).
    pub fn namespace_name(&self) -> &str {
        &self.namespace_name
    }
}

/// A request to remove the network of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanInstanceRequest {
    /// The instance's id.
    pub instance_id: String,
    /// The ports the instance published. kudonet removes whatever it recorded and owns for
    /// the instance, so this is accepted for compatibility and not needed.
    pub ports: Vec<Port>,
    /// The instance's address. Accepted for compatibility, as `ports`.
    pub instance_ip_cidr: Ipv4Inet,
}

impl CleanInstanceRequest {
    /// A request to clean instance `instance_id`.
    pub fn new(
        instance_id: String,
        ports: Vec<Port>,
        instance_ip_cidr: Ipv4Inet,
    ) -> CleanInstanceRequest {
        CleanInstanceRequest {
            instance_id,
            ports,
            instance_ip_cidr,
        }
    }
}

/// Sets up the network of an instance: records it and converges the node, so that when it
/// returns `Ok` the namespace `kudo-<instance_id>` exists with `eth0` up at
/// `instance_ip_cidr`, a default route via the node's gateway, and `ports` published. A
/// process started in the namespace then reaches other instances, the node and (through
/// the node, masqueraded) the outside.
///
/// Calling it again with the same request changes nothing; with other addresses or ports
/// it updates the instance in place.
///
/// # Errors
///
/// [`NetworkError::NodeNotSetUp`] before [`setup_node`](crate::node::setup_node),
/// [`NetworkError::DifferentNode`] for a `node_id` other than the node set up,
/// [`NetworkError::InvalidRequest`] for an instance id that is not a DNS label, a
/// `node_ip_addr` that is not the node's gateway, an address outside the node's subnet (or
/// with another prefix length, or taken by another instance), a port 0 or a host port
/// another instance publishes; nothing is changed then. [`NetworkError::NotConverged`]
/// when the instance could not be set up (the request stays recorded; calling again
/// retries).
///
/// # Example
///
/// From the original library's README:
///
/// ```no_run
/// # use std::net::Ipv4Addr;
/// # use std::str::FromStr;
/// # use cidr::Ipv4Inet;
/// # use kudonet::instance::{setup_instance, Port, SetupInstanceRequest};
/// let node_id = "node";
/// let node_ip_addr = Ipv4Addr::from_str("10.0.0.1").unwrap();
/// let instance_id = "instance";
/// let instance_ip_addr = Ipv4Addr::from_str("10.0.0.2").unwrap();
/// let instance_ip_cidr = Ipv4Inet::new(instance_ip_addr, 24).unwrap();
/// let ports = vec![Port::new(80, 8080)];
///
/// let request = SetupInstanceRequest::new(
///     node_id.to_string(),
///     node_ip_addr,
///     instance_id.to_string(),
///     instance_ip_cidr,
///     ports,
/// );
/// let response = setup_instance(request).unwrap();
/// println!("Instance default interface: {}", response.interface_name);
/// println!("Network namespace: {}", response.namespace_name);
/// ```
pub fn setup_instance(
    request: SetupInstanceRequest,
) -> Result<SetupInstanceResponse, NetworkError> {
    compat::check_node_id(&request.node_id)?;
    compat::check_instance_id(&request.instance_id)?;
    compat::require_privileges("instance::setup_instance")?;
    let config = Config::from_env();
    let _lock = compat::lock_node(&request.node_id)?;
    let node = store::require_node(&config, &request.node_id)?;
    if node.gateway() != request.node_ip_addr {
        return Err(NetworkError::invalid(format!(
            "node_ip_addr {} is not the gateway of node {:?}, which is {}",
            request.node_ip_addr,
            node.name,
            node.gateway()
        )));
    }
    let ports: Vec<store::PortPair> = request
        .ports
        .iter()
        .map(|port| (port.source, port.destination))
        .collect();
    let document = store::instance_document(
        &request.instance_id,
        &node.name,
        request.instance_ip_cidr,
        &ports,
    );
    store::commit(&config, &Change::instance(&request.instance_id, document))?;
    compat::converge(&config, &node.name, Scope::Instance(&request.instance_id))?;
    Ok(SetupInstanceResponse {
        interface_name: names::INSTANCE_INTERFACE.to_string(),
        namespace_name: names::namespace_name(&request.instance_id),
    })
}

/// Cleans the network of an instance: removes its recorded document and converges the node,
/// which deletes its namespace, its veth pair and its published-port rules. Other instances
/// are not touched. Cleaning an instance that does not exist (or was cleaned already) is
/// not an error.
///
/// What is removed is what kudonet recorded and owns for the instance, whatever `ports` and
/// `instance_ip_cidr` say.
///
/// # Errors
///
/// [`NetworkError::InvalidRequest`] for an instance id that is not a DNS label;
/// [`NetworkError::NotConverged`] naming what could not be removed.
///
/// # Example
///
/// From the original library's README:
///
/// ```no_run
/// # use std::net::Ipv4Addr;
/// # use std::str::FromStr;
/// # use cidr::Ipv4Inet;
/// # use kudonet::instance::{clean_instance, CleanInstanceRequest, Port};
/// let instance_id = "instance";
/// let instance_ip_addr = Ipv4Addr::from_str("10.0.0.2").unwrap();
/// let instance_ip_cidr = Ipv4Inet::new(instance_ip_addr, 24).unwrap();
/// let ports = vec![Port::new(80, 8080)];
/// let request = CleanInstanceRequest::new(
///     instance_id.to_string(),
///     ports,
///     instance_ip_cidr,
/// );
/// clean_instance(request).unwrap();
/// ```
pub fn clean_instance(request: CleanInstanceRequest) -> Result<(), NetworkError> {
    compat::check_instance_id(&request.instance_id)?;
    compat::require_privileges("instance::clean_instance")?;
    let config = Config::from_env();
    let file = config.instance_file(&request.instance_id);
    let Some(node) = store::recorded_node(&config)? else {
        // No node: nothing is set up, and no converge is possible; drop a stray record.
        store::remove(&file)?;
        return Ok(());
    };
    let _lock = compat::lock_node(&node.name)?;
    store::remove(&file)?;
    compat::converge(&config, &node.name, Scope::Instance(&request.instance_id))
}
