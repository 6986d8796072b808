//! The published port of the original library.

/// A published port: host port `source` forwarded to instance port `destination`, for TCP and
/// for UDP.
///
/// `Port::new(80, 8080)` makes connections to port 80 of the node (any of its addresses,
/// including `127.0.0.1` from the node itself) reach port 8080 in the instance. In the
/// state directory it is two port entries: `hostPort: 80, instancePort: 8080` for `tcp` and
/// for `udp`.
///
/// The fields are `i32`, as in the original library; a port outside 1..=65535 is refused by
/// [`setup_instance`](crate::instance::setup_instance) with
/// [`NetworkError::InvalidRequest`](crate::error::NetworkError::InvalidRequest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// The node's port.
    pub source: i32,
    /// The instance's port.
    pub destination: i32,
}

impl Port {
    /// Host port `source` forwarded to instance port `destination`.
    pub fn new(source: i32, destination: i32) -> Port {
        Port {
            source,
            destination,
        }
    }

    /// The node's port.
    pub fn source(&self) -> i32 {
        self.source
    }

    /// The instance's port.
    pub fn destination(&self) -> i32 {
        self.destination
    }
}
