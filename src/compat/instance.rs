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
//!
//! # Instance ids
//!
//! Any id the original library accepted works, not only DNS labels: `default.web-Ab3xZ`
//! (capitals, dots) gets the namespace `kudo-default.web-Ab3xZ`, as
//! [`utils::get_namespace_name`](crate::utils::get_namespace_name) says. In the state
//! directory an Instance name is a DNS label, so such an id is recorded as an Instance
//! named after it (lowercased, other characters turned into `-`, and 8 hex digits of a hash
//! of the id: `default-web-ab3xz-` and the hash) whose `id: default.web-Ab3xZ` names the
//! namespace; `kudonet status` lists it under that name. An id that is a DNS label is the
//! Instance name itself. An id must not be empty, nor contain `/`, `..`, whitespace or
//! control characters, nor be longer than 250 bytes (its namespace is a file name).
//!
//! The requests, the response and [`Port`] are also reachable where the original library
//! published them: [`request`], [`response`] and [`crate::port`].

use std::net::{IpAddr, Ipv4Addr};

use cidr::Ipv4Inet;

use crate::compat;
use crate::compat::inet::IntoIpv4Inet;
use crate::compat::store::{self, Change, Config};
use crate::names;
use crate::plan::Scope;
use crate::spec::{self, Family};

pub use crate::compat::error::NetworkError;
pub use crate::compat::port::Port;

/// The instance requests, at the original library's path
/// (`instance::request::SetupInstanceRequest`).
pub mod request {
    pub use super::{CleanInstanceRequest, SetupInstanceRequest};
}

/// The instance response, at the original library's path
/// (`instance::response::SetupInstanceResponse`).
pub mod response {
    pub use super::SetupInstanceResponse;
}

/// A request to set up (or update) the network of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupInstanceRequest {
    /// The node set up with [`setup_node`](crate::node::setup_node).
    pub node_id: String,
    /// The node's gateway address: the address part of the node's `node_ip_cidr`.
    pub node_ip_addr: Ipv4Addr,
    /// The instance's id; its namespace is `kudo-<instance_id>` (see [Instance
    /// ids](self#instance-ids)).
    pub instance_id: String,
    /// The instance's address, in the node's subnet and with the node's prefix length.
    pub instance_ip_cidr: Ipv4Inet,
    /// The ports published by the node to the instance.
    pub ports: Vec<Port>,
}

impl SetupInstanceRequest {
    /// A request to set up instance `instance_id` on node `node_id` (whose gateway is
    /// `node_ip_addr`) at `instance_ip_cidr` (a `cidr::Ipv4Inet` of cidr 0.3 or 0.2),
    /// publishing `ports`.
    pub fn new(
        node_id: String,
        node_ip_addr: Ipv4Addr,
        instance_id: String,
        instance_ip_cidr: impl IntoIpv4Inet,
        ports: Vec<Port>,
    ) -> SetupInstanceRequest {
        SetupInstanceRequest {
            node_id,
            node_ip_addr,
            instance_id,
            instance_ip_cidr: instance_ip_cidr.into_ipv4_inet(),
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
    /// A response naming the instance's interface and namespace.
    pub fn new(interface_name: String, namespace_name: String) -> SetupInstanceResponse {
        SetupInstanceResponse {
            interface_name,
            namespace_name,
        }
    }

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
    /// A request to clean instance `instance_id` (`instance_ip_cidr` of cidr 0.3 or 0.2).
    pub fn new(
        instance_id: String,
        ports: Vec<Port>,
        instance_ip_cidr: impl IntoIpv4Inet,
    ) -> CleanInstanceRequest {
        CleanInstanceRequest {
            instance_id,
            ports,
            instance_ip_cidr: instance_ip_cidr.into_ipv4_inet(),
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
/// [`NetworkError::InvalidRequest`] for an unusable instance id, a `node_ip_addr` that is not
/// the node's gateway, an address outside the node's subnet (or with another prefix length:
/// `10.0.0.2/32` on a /24 node is refused, not widened; or taken by another instance), a port
/// outside 1..=65535 or a host port another instance publishes; nothing is changed then. The
/// message names the request's value (`instance_ip_cidr 10.0.0.2/32: ...`). [`NetworkError::NotConverged`]
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
    let name = compat::instance_name(&request.instance_id)?;
    let ports = port_pairs(&request.ports)?;
    compat::require_privileges("instance::setup_instance")?;
    let config = Config::from_env();
    let _lock = compat::lock_node(&request.node_id)?;
    let node = store::require_node(&config, &request.node_id)?;
    // The original API is IPv4: on a dual-stack node it speaks for the IPv4 side.
    let gateway = node.gateway(Family::Ipv4);
    if gateway != Some(IpAddr::V4(request.node_ip_addr)) {
        return Err(NetworkError::invalid(match gateway {
            Some(gateway) => format!(
                "node_ip_addr {} is not the gateway of node {:?}, which is {gateway}",
                request.node_ip_addr, node.name,
            ),
            None => format!(
                "node_ip_addr {}: node {:?} has no IPv4 subnet",
                request.node_ip_addr, node.name,
            ),
        }));
    }
    // Two ids whose names meet (a DNS-label id spelled like another id's name, or a hash
    // collision) must not overwrite each other's record.
    if let Some(recorded) = store::recorded_instance_id(&config, &name)
        && recorded != request.instance_id
    {
        return Err(NetworkError::invalid(format!(
            "instance_id {:?}: its Instance name {name:?} is already instance {recorded:?}'s",
            request.instance_id
        )));
    }
    let document = store::instance_document(
        &request.instance_id,
        &name,
        &node.name,
        request.instance_ip_cidr,
        &ports,
    );
    store::commit(&config, &Change::instance(&name, document))?;
    compat::converge(&config, &node.name, Scope::instance(&name))?;
    Ok(SetupInstanceResponse::new(
        names::INSTANCE_INTERFACE.to_string(),
        names::namespace_name(&request.instance_id),
    ))
}

/// The ports as recorded, each refused unless both ends are in 1..=65535.
fn port_pairs(ports: &[Port]) -> Result<Vec<store::PortPair>, NetworkError> {
    let valid = |port: i32| spec::port_number(port.into());
    ports
        .iter()
        .enumerate()
        .map(
            |(index, port)| match (valid(port.source), valid(port.destination)) {
                (Some(source), Some(destination)) => Ok((source, destination)),
                _ => Err(NetworkError::invalid(format!(
                    "ports[{index}] (source {}, destination {}): a port is a number in 1..=65535",
                    port.source, port.destination
                ))),
            },
        )
        .collect()
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
/// [`NetworkError::InvalidRequest`] for an unusable instance id;
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
    let name = compat::instance_name(&request.instance_id)?;
    compat::require_privileges("instance::clean_instance")?;
    let config = Config::from_env();
    let file = config.instance_file(&name);
    let Some(node) = store::recorded_node(&config)? else {
        // No node: nothing is set up, and no converge is possible; drop a stray record.
        store::remove(&file)?;
        return Ok(());
    };
    let _lock = compat::lock_node(&node.name)?;
    if store::recorded_instance_id(&config, &name).is_some_and(|id| id != request.instance_id) {
        // Another instance's record under the same name: this one does not exist.
        return Ok(());
    }
    store::remove(&file)?;
    compat::converge(&config, &node.name, Scope::instance(&name))
}
