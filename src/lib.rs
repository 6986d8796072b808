//! kudonet: a declarative network controller for container-like instances on Linux nodes.
//!
//! The crate is a functional core in an imperative shell:
//!
//! - [`spec`]: the desired state (YAML files), loaded and validated;
//! - [`observe`]: the vocabulary of what the kernel has ([`observe::Observed`]);
//! - [`plan`]: `plan(&Desired, &Observed) -> Plan`, pure and deterministic;
//! - [`dataplane`]: executes a plan's actions; [`dataplane::memory`] does so in memory;
//! - [`reconcile`]: observe → plan → apply → verify, and instance status;
//! - [`names`]: how kudonet names and marks what it owns;
//! - [`node`], [`instance`], [`utils`]: the API of the original Kudo network library
//!   (CONTRACT §6), recording requests as desired state and converging through the above.
//!
//! The binary (`kudonet`) is a thin command line over these.

mod compat;
pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod faults;
pub mod instance;
pub mod lock;
pub mod names;
pub mod node;
pub mod observe;
pub mod plan;
pub mod privileges;
pub mod probe;
pub mod reconcile;
pub mod spec;
pub mod utils;
