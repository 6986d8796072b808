//! kudonet: a declarative network controller for container-like instances on Linux nodes.
//!
//! The crate is a functional core in an imperative shell:
//!
//! - [`spec`]: the desired state (YAML files), loaded and validated;
//! - [`names`]: how kudonet names and marks what it owns;
//! - [`observed`]: the vocabulary of what the kernel has ([`observed::Observed`]);
//! - [`plan`]: `plan(&Desired, &Observed) -> Plan`, pure and deterministic;
//! - [`dataplane`]: the seam: the [`dataplane::Dataplane`] trait (observe and apply), its
//!   typed errors, and [`dataplane::memory`], a dataplane in memory;
//! - [`kernel`]: all kernel I/O, the dataplane of a real node and its kernel events;
//! - [`reconcile`]: observe → plan → apply → verify, and instance status;
//! - [`node`], [`instance`], [`utils`], [`port`], [`error`]: the API of the original Kudo
//!   network library, recording requests as desired state and converging through the above;
//!   [`cidr`] is the cidr crate its signatures use.
//!
//! The binary (`kudonet`) is a thin command line over these.

mod compat;
pub mod controller;
pub mod dataplane;
pub mod demo;
/// The library's error, at the original library's path (`error::KudoNetworkError`).
pub mod error {
    pub use crate::compat::error::{KudoNetworkError, NetworkError};
}
pub mod faults;
pub mod instance;
pub mod kernel;
pub mod lock;
pub mod names;
pub mod node;
pub mod observed;
pub mod plan;
/// The published port of the library, at the original library's path (`port::Port`).
pub mod port {
    pub use crate::compat::port::Port;
}
pub mod privileges;
pub mod probe;
pub mod reconcile;
pub mod spec;
pub mod utils;

/// The cidr crate (0.3) of the library's signatures: `kudonet::cidr::Ipv4Inet`.
pub use cidr;
