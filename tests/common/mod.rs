//! The test kit: what the integration tests share, so that each test file holds only its
//! scenarios.
//!
//! - `sandbox`: run a test body in a throwaway network + mount namespace (`sandboxed`), run
//!   commands and scripts, build the "outside" behind the node's uplink;
//! - `kernel`: read links, addresses, namespaces and the firewall, for assertions;
//! - `probes`: places to send packets from, and the source address a server saw (`seen`);
//! - `cli`: run the kudonet binary (`kudonet`, `Run::expect`);
//! - `state`: desired-state directories as a root-run kudonet accepts them (`StateDir`);
//! - `controller`: a `kudonet run` child process: start, wait, status document, metrics,
//!   HTTP, stop;
//! - `podman`: Podman 4 with its CNI backend and kudonet as a network's plugin, in a sandbox
//!   with a PID namespace (`sandboxed_with_pids`): run, exec, inspect and remove containers;
//! - `generators` (the domain, shared with the fuzz target) and `strategies` (its proptest
//!   front end): desired states and observed nodes for the convergence properties.
//!
//! The most used items are re-exported here (`common::sandboxed`, `common::sh`, ...).

#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod controller;
pub mod generators;
pub mod kernel;
pub mod podman;
pub mod probes;
pub mod sandbox;
pub mod state;
pub mod strategies;

pub use kernel::{
    Firewall, addresses, firewall, is_up, kudo_lines, link, link_names, namespaces, nft_kudonet,
    nft_table,
};
pub use probes::{addr, netns, seen, seen_tcp};
pub use sandbox::{
    inside_sandbox, run, run_ok, sandboxed, sandboxed_with_pids, setup_outside,
    setup_outside_dual_stack, sh,
};
pub use state::{DUAL_STACK, StateDir};

/// The kudonet binary under test.
pub const KUDONET: &str = env!("CARGO_BIN_EXE_kudonet");
