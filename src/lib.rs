//! kudonet: a declarative network controller for container-like instances on Linux nodes.
//!
//! The crate is a functional core in an imperative shell (the module map and the rules that
//! hold it together are in `docs/architecture.md`).
//!
//! # The supported library API
//!
//! Two audiences, two parts; everything documented here is supported:
//!
//! - The API of the original Kudo network library, at the original's paths, so its
//!   consumers compile unchanged (`docs/library.md`): [`node`], [`instance`], [`utils`],
//!   [`port`], [`error`], and [`cidr`], the cidr crate its signatures use. Each call records
//!   the request as desired state and converges the real node.
//! - The core, for a Rust program that works with kudonet's model without touching a node:
//!   - [`spec`]: the desired state (YAML files), loaded and validated;
//!   - [`names`]: how kudonet names and marks what it owns;
//!   - [`nftables`]: kudonet's nftables table as data;
//!   - [`observed`]: the vocabulary of what the kernel has ([`observed::Observed`]);
//!   - [`plan`]: `plan(&Desired, &Observed) -> Plan`, pure and deterministic;
//!   - [`dataplane`]: the seam: the [`dataplane::Dataplane`] trait (observe and apply), its
//!     typed errors, and [`dataplane::memory`], a dataplane in memory;
//!   - [`reconcile`]: observe → plan → apply → verify, and instance status.
//!
//! # What is not supported
//!
//! The imperative shell (the kernel dataplane, the `kudonet run` controller, the node lock,
//! privilege checks, real-packet probes, the demo and fault injection) is public only
//! because the binary (`kudonet`, a separate crate target), the tests, the benchmarks and
//! the fuzz crate use it. Those modules are `#[doc(hidden)]`: they are absent from the
//! documentation and may change in any release. To change a real node from Rust, use the
//! original API above, or run the binary.

#![deny(missing_docs)]

mod compat;
pub mod dataplane;
/// The library's error, at the original library's path (`error::KudoNetworkError`).
pub mod error {
    pub use crate::compat::error::{KudoNetworkError, NetworkError};
}
pub use compat::{instance, node, utils};
pub mod names;
pub mod nftables;
pub mod observed;
pub mod plan;
/// The published port of the library, at the original library's path (`port::Port`).
pub mod port {
    pub use crate::compat::port::Port;
}
pub mod reconcile;
pub mod spec;

/// The cidr crate (0.3) of the library's signatures: `kudonet::cidr::Ipv4Inet`.
pub use cidr;

// The shell. Public only for the binary (`src/main.rs` is a separate crate target), the
// tests, the benchmarks and the fuzz crate, which all build without extra flags; hidden from
// the documentation because it is not a supported API and may change in any release.
#[doc(hidden)]
pub mod cni;
#[doc(hidden)]
pub mod controller;
#[doc(hidden)]
pub mod demo;
#[doc(hidden)]
pub mod faults;
#[doc(hidden)]
pub mod kernel;
#[doc(hidden)]
pub mod lock;
#[doc(hidden)]
pub mod privileges;
#[doc(hidden)]
pub mod probe;
