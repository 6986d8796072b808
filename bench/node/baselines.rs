//! The shell baselines of bench/baselines/: `per-step.sh` (one process per step) and
//! `floor.sh` (the same kernel state in as few processes as iproute2 and iptables allow).
//! Both build; the floor also removes, at the kernel's speed: unmount the namespaces in one
//! `ip -batch` (`netns del` lines) and wait until the kernel has removed every host veth
//! they held — for the whole node (against kudonet's `teardown`) and for half of it
//! (against kudonet's `apply` of half the instances: the same half, i(N/2) to i(N-1)).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kudonet::kernel::netlink::Netlink;
use serde_json::{Map, Value, json};

use crate::kernel::{self, first_lines};
use crate::{BASELINES, kudonet};

/// The instances kudonet puts on one bridge: up to this many, floor.sh builds kudonet's
/// layout exactly, one bridge. Above, kudonet routes between bridges of 500 (segments, with
/// a route per instance and their rules), while floor.sh keeps up to 1023 instances a bridge
/// and joins its bridges into one layer-2 segment: less kernel work, a lower bound still.
const ONE_BRIDGE_MAX: usize = 500;

/// One run of `script` ("floor" or "per-step") at N on WORK/full: the build, the checks
/// (when `verify`: `kudonet plan` must say "No changes." and the node must pass the packet
/// check), and for the floor its removals.
pub fn run(
    script: &str,
    n: usize,
    verify: bool,
    work: &Path,
    result: &mut Map<String, Value>,
) -> Result<(), String> {
    let full = work.join("full");
    let instances = kernel::instances(&full);
    let started = Instant::now();
    build(script, n, &full)?;
    result.insert("build_s".into(), json!(started.elapsed().as_secs_f64()));
    if verify {
        if n <= ONE_BRIDGE_MAX {
            let plan = kudonet(&["plan"], &full.join("state"), None)?;
            let same = plan.trim_end().ends_with("No changes.");
            if !same {
                eprintln!("{script}.sh N={n}: kudonet plan is not empty:\n{plan}");
            }
            result.insert("plan_empty".into(), json!(same));
        }
        result.insert("verified".into(), kernel::verdict(&instances));
    }
    if script != "floor" {
        return Ok(());
    }
    let mut netlink = Netlink::open().map_err(|error| error.to_string())?;

    // Removal of the whole node.
    let started = Instant::now();
    kernel::delete_namespaces(&instances)?;
    kernel::wait_host_veths(&mut netlink, 0)?;
    result.insert("teardown_s".into(), json!(started.elapsed().as_secs_f64()));

    // Built again (not timed), then half of it removed.
    reset(n)?;
    build(script, n, &full)?;
    let kept = n / 2;
    let started = Instant::now();
    kernel::delete_namespaces(&instances[kept..])?;
    kernel::wait_host_veths(&mut netlink, kept)?;
    result.insert(
        "remove_half_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    Ok(())
}

fn build(script: &str, n: usize, full: &Path) -> Result<(), String> {
    let output = Command::new("bash")
        .arg(Path::new(BASELINES).join(format!("{script}.sh")))
        .arg(n.to_string())
        .arg(full)
        .output()
        .map_err(|error| format!("bash: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script}.sh failed ({}): {}",
            output.status,
            first_lines(&String::from_utf8_lossy(&output.stderr), 3)
        ))
    }
}

/// Removes what floor.sh leaves once its namespaces are gone (bridges, trunk veths, the
/// rules: the sandbox holds nothing else), so that it can build again.
fn reset(n: usize) -> Result<(), String> {
    let bridges = if n <= ONE_BRIDGE_MAX {
        1
    } else {
        n.div_ceil(1000)
    };
    kernel::ip_batch(
        (0..bridges)
            .map(|k| format!("link del kudo{k}"))
            .chain((1..bridges).map(|k| format!("link del kt{k}a"))),
    )?;
    for table in ["filter", "nat"] {
        for flag in ["-F", "-X"] {
            let status = Command::new("iptables")
                .args(["-w", "-t", table, flag])
                .status()
                .map_err(|error| format!("iptables: {error}"))?;
            if !status.success() {
                return Err(format!("iptables -t {table} {flag} failed ({status})"));
            }
        }
    }
    Ok(())
}
