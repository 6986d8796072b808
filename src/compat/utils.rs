//! Helpers of the original Kudo network library, and where the library keeps its state.
//!
//! [`get_namespace_name`] and [`namespace_name`] (the name the original crate published it
//! under) give an instance's namespace, `kudo-<instance_id>`, for any id
//! [`setup_instance`](crate::instance::setup_instance) accepts; [`bridge_name`] gives the
//! bridge [`setup_node`](crate::node::setup_node) made. [`IntoIpv4Inet`] is what the
//! requests' constructors accept: a `cidr::Ipv4Inet` of cidr 0.3 or of cidr 0.2.
//!
//! # The library's desired-state directory
//!
//! The calls of [`node`](crate::node) and [`instance`](crate::instance) record what they are
//! asked for as desired-state files (the format of `kudonet validate`), so that the node
//! they set up is one `kudonet status DIR`, `kudonet plan DIR` and `kudonet run DIR`
//! understand:
//!
//! - `DIR/node.yaml`: the `kind: Node` document of [`setup_node`](crate::node::setup_node)
//!   (name, cidr; the bridge is `kudo0`, masquerading on);
//! - `DIR/instances/<name>.yaml`: the `kind: Instance` document of each
//!   [`setup_instance`](crate::instance::setup_instance) (node, address, ports), where
//!   `<name>` is the instance id when it is a DNS label, else the Instance name made of it
//!   (see [Instance ids](crate::instance#instance-ids)), and the id is recorded as `id`.
//!
//! `DIR` is [`DEFAULT_STATE_DIR`] (`/var/lib/kudonet/desired-state`, which survives reboots,
//! so [`setup_iptables`](crate::node::setup_iptables) can restore the node), or the value of
//! the environment variable [`STATE_DIR_ENV`] (`KUDONET_STATE_DIR`) when set. Instance
//! namespaces go to [`DEFAULT_NETNS_DIR`] (`/run/netns`), or [`NETNS_DIR_ENV`]
//! (`KUDONET_NETNS_DIR`), which means what `--netns-dir` means to the command line. The
//! firewall backend is iptables, or what [`FIREWALL_ENV`] (`KUDONET_FIREWALL`) names, as
//! `--firewall` does. All are read at each call.
//!
//! Files are written atomically (a hidden temporary file renamed into place) after the
//! whole directory, as it would be, has been validated: an invalid request leaves it as it
//! was. Folders the library creates are mode 0755 and files 0644, owned by the calling
//! user (root); like the command line, the library refuses a directory that users other
//! than root can write. Other files may be added to the directory (peer Nodes, a Cluster);
//! the library only ever writes and removes the files above. A directory holds one node; a
//! [`setup_node`](crate::node::setup_node) with a new node id re-keys it while no instance is
//! set up.

pub use crate::compat::error::NetworkError;
pub use crate::compat::inet::IntoIpv4Inet;
pub use crate::compat::store::{
    DEFAULT_NETNS_DIR, DEFAULT_STATE_DIR, FIREWALL_ENV, NETNS_DIR_ENV, STATE_DIR_ENV,
};

use std::path::PathBuf;

/// The name of the network namespace of instance `instance_id`: `kudo-<instance_id>`, in
/// the netns directory ([`netns_dir`]).
///
/// # Example
///
/// From the original library's README:
///
/// ```
/// # use kudonet::utils::get_namespace_name;
/// let instance_id = "instance";
/// let namespace_name = get_namespace_name(instance_id.to_string());
/// println!("Namespace of {}: {}", instance_id, namespace_name);
/// # assert_eq!(namespace_name, "kudo-instance");
/// ```
pub fn get_namespace_name(instance_id: String) -> String {
    crate::names::namespace_name(&instance_id)
}

/// The name of the network namespace of instance `instance_id`: the original library's
/// name for [`get_namespace_name`], which it is.
///
/// ```
/// # use kudonet::utils::namespace_name;
/// assert_eq!(namespace_name("default.web-Ab3xZ".to_string()), "kudo-default.web-Ab3xZ");
/// ```
pub fn namespace_name(instance_id: String) -> String {
    get_namespace_name(instance_id)
}

/// The bridge of node `node_id`: the one [`setup_node`](crate::node::setup_node) made and
/// named in its response, read from the node recorded in the state directory; for a node
/// that is not set up there, the bridge `setup_node` would make (`kudo0`).
///
/// ```
/// # use kudonet::utils::bridge_name;
/// assert_eq!(bridge_name("never-set-up".to_string()), "kudo0");
/// ```
pub fn bridge_name(node_id: String) -> String {
    let config = crate::compat::store::Config::from_env();
    match crate::compat::store::recorded_node(&config) {
        Ok(Some(node)) if node.name == node_id => node.bridge,
        _ => crate::spec::DEFAULT_BRIDGE.to_string(),
    }
}

/// The desired-state directory the library uses now: `$KUDONET_STATE_DIR`, else
/// [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    crate::compat::store::Config::from_env().state_dir
}

/// The netns directory the library uses now: `$KUDONET_NETNS_DIR`, else
/// [`DEFAULT_NETNS_DIR`].
pub fn netns_dir() -> PathBuf {
    crate::compat::store::Config::from_env().netns_dir
}
