//! Crash points, for proving crash consistency: with `KUDONET_FAULT_CRASH_AT=N` in its
//! environment, kudonet kills itself with SIGKILL (as `kill -9` would) when it reaches its
//! N-th crash point. Crash points sit between every two kernel changes, including inside
//! multi-step ones (a link between its creation and its mark). The tests crash an apply at
//! every point in turn and check that the next apply converges with nothing left over.
//!
//! Unset (the normal case), a crash point is one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the crash point to die at (1-based).
pub const CRASH_AT: &str = "KUDONET_FAULT_CRASH_AT";

static TARGET: OnceLock<Option<u64>> = OnceLock::new();
static REACHED: AtomicU64 = AtomicU64::new(0);

/// A place where a crash must leave the node recoverable.
pub fn crash_point() {
    let Some(target) = *TARGET.get_or_init(|| std::env::var(CRASH_AT).ok()?.parse().ok()) else {
        return;
    };
    if REACHED.fetch_add(1, Ordering::Relaxed) + 1 == target {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
