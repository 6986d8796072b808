//! One kudonet run at N: cold `apply`; the packet check (first round); no-op `apply`
//! (actions printed; `iptables-restore` and `iptables-save` calls, and every process kudonet
//! started, counted through wrappers in PATH of every program it runs; commits to the
//! ruleset counted by the nf_tables generation); one instance added (`apply` of N + 1) and
//! removed again (`apply` of N, until the kernel has removed its host veth); repair of a
//! flushed ruleset (`nft flush ruleset` in the sandbox, which takes kudonet's rules with it
//! in both backends, then `apply` timed; in the first round the packet check again);
//! `run --resync 1` on the converged node (pass durations from
//! `kudonet_reconcile_duration_seconds`, actions from `kudonet_actions_total`, restores and
//! saves counted, VmHWM); `run --resync 600` repairing 1 and then k deleted host veths (time
//! from the deletion until the veths are back and `kudonet_drift_repairs_total` moved);
//! `apply` of half the instances; `apply` of all of them again (not timed) and `teardown`.
//! A removal ends when the command has returned and the kernel has removed the host veths
//! of the removed instances, as for every system. In the first round also a cold `run`
//! (first pass and VmHWM while building the node).
//!
//! With `Mode::nftables` every command runs with `--firewall nftables`.
//!
//! A command that fails ends the run with its error (today a node of more instances than a
//! bridge takes fails its cold `apply`); what was measured before stays.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kudonet::kernel::netlink::{Netlink, NfTables};
use kudonet::names;
use serde_json::{Map, Value, json};

use crate::common::KUDONET;
use crate::common::controller::{http_get, is_ready, metric_sum as metric, terminate};
use crate::kernel::{self, Instance};
use crate::{desired, kudonet};

const METRICS: &str = "127.0.0.1:9101";
/// Host veths deleted at once in the second repair measurement.
pub const REPAIR_K: usize = 10;

/// Which node kudonet builds, and with which firewall backend.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// The node and its instances are dual stack.
    pub dual: bool,
    /// `--firewall nftables`: kudonet's rules in its own nftables table.
    pub nftables: bool,
}

/// Programs kudonet may run (the iptables family, also of the other backend, which it reads
/// for leftovers; `nft` in case a backend ever shells out): each is wrapped to count its
/// calls.
const PROGRAMS: [&str; 13] = [
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "nft",
];

pub fn run(
    n: usize,
    mode: Mode,
    first_round: bool,
    work: &Path,
    result: &mut Map<String, Value>,
) -> Result<(), String> {
    let state = work.join("full/state");
    let instances: Vec<Instance> = kernel::instances(&work.join("full"));
    let counting_path = counting_wrappers(work);
    let calls = work.join("calls");
    let count_calls = |program: Option<&str>| {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|line| program.is_none_or(|program| *line == program))
            .count()
    };
    let firewall: &[&str] = if mode.nftables {
        &["--firewall", "nftables"]
    } else {
        &[]
    };
    let apply: Vec<&str> = std::iter::once("apply")
        .chain(firewall.iter().copied())
        .collect();
    let mut netlink = Netlink::open().map_err(|error| error.to_string())?;
    let mut generation = NfTables::open().map_err(|error| format!("nf_tables: {error}"))?;
    // The nf_tables generation moves once per commit to the ruleset (a netlink transaction,
    // an iptables-nft restore): its difference counts them (null if it cannot be read).
    let mut generation_now = || generation.current().ok();
    let commits = |before: Option<u32>, after: Option<u32>| {
        json!(
            before
                .zip(after)
                .map(|(before, after)| after.wrapping_sub(before))
        )
    };

    // Cold apply: the real binaries, no wrapper.
    let started = Instant::now();
    let output = kudonet(&apply, &state, None)?;
    result.insert("build_s".into(), json!(started.elapsed().as_secs_f64()));
    result.insert("cold_actions".into(), json!(applied(&output)));
    if first_round {
        result.insert("verified".into(), kernel::verdict(&instances));
    }

    // No-op apply.
    let _ = std::fs::remove_file(&calls);
    let before = generation_now();
    let started = Instant::now();
    let output = kudonet(&apply, &state, Some(&counting_path))?;
    result.insert(
        "noop_apply_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert(
        "noop_apply_commits".into(),
        commits(before, generation_now()),
    );
    result.insert("noop_apply_actions".into(), json!(applied(&output)));
    result.insert(
        "noop_apply_restores".into(),
        json!(count_calls(Some("iptables-restore"))),
    );
    result.insert(
        "noop_apply_saves".into(),
        json!(count_calls(Some("iptables-save"))),
    );
    result.insert("noop_apply_processes".into(), json!(count_calls(None)));

    // Churn: one instance more (i(N)), then the node of N again.
    desired(n + 1, &work.join("plus"), mode.dual);
    let before = generation_now();
    let started = Instant::now();
    kudonet(&apply, &work.join("plus/state"), None)?;
    result.insert("add_one_s".into(), json!(started.elapsed().as_secs_f64()));
    result.insert("add_one_commits".into(), commits(before, generation_now()));
    let started = Instant::now();
    kudonet(&apply, &state, None)?;
    kernel::wait_host_veths(&mut netlink, n)?;
    result.insert(
        "remove_one_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );

    // The ruleset flushed (as by an administrator or a firewall manager starting): with
    // iptables-nft this also takes iptables' tables, so both backends lose all their rules.
    let flushed = Command::new("nft")
        .args(["flush", "ruleset"])
        .status()
        .map_err(|error| format!("nft: {error}"))?;
    if !flushed.success() {
        return Err(format!("nft flush ruleset failed ({flushed})"));
    }
    let before = generation_now();
    let started = Instant::now();
    let output = kudonet(&apply, &state, None)?;
    result.insert(
        "flush_repair_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert(
        "flush_repair_commits".into(),
        commits(before, generation_now()),
    );
    result.insert("flush_repair_actions".into(), json!(applied(&output)));
    if first_round && result.get("verified") == Some(&json!(true)) {
        let after = kernel::verdict(&instances);
        if after != json!(true) {
            result.insert(
                "verified".into(),
                json!(format!("after the flushed ruleset's repair: {after}")),
            );
        }
    }

    // No-op resyncs of the controller.
    let _ = std::fs::remove_file(&calls);
    let controller = start_controller(&state, 1, &counting_path, work, firewall);
    let first = wait_ready(&controller, n);
    let first_pass = metric(&scrape(), "kudonet_reconcile_duration_seconds_sum");
    let restores_before = count_calls(Some("iptables-restore"));
    let saves_before = count_calls(Some("iptables-save"));
    let processes_before = count_calls(None);
    let actions_before = metric(&scrape(), "kudonet_actions_total");
    let mut passes = Vec::new();
    let (mut count, mut sum) = histogram();
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(n as u64 * 20);
    while passes.len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let (now_count, now_sum) = histogram();
        if now_count > count {
            passes.push((now_sum - sum) / (now_count - count));
            (count, sum) = (now_count, now_sum);
        }
    }
    result.insert("run_start_s".into(), json!(first.as_secs_f64()));
    result.insert("resync_first_pass_s".into(), json!(first_pass));
    result.insert("resync_pass_s".into(), json!(passes));
    result.insert(
        "resync_actions".into(),
        json!(metric(&scrape(), "kudonet_actions_total") - actions_before),
    );
    result.insert(
        "resync_restores".into(),
        json!(count_calls(Some("iptables-restore")) - restores_before),
    );
    // iptables is read again only when the nf_tables generation moved: never, here.
    result.insert(
        "resync_saves".into(),
        json!(count_calls(Some("iptables-save")) - saves_before),
    );
    result.insert(
        "resync_processes".into(),
        json!(count_calls(None) - processes_before),
    );
    result.insert("run_rss_kb".into(), json!(vm_hwm(&controller)));
    terminate_controller(controller);

    // Repairs after kernel events, with a resync far away.
    let controller = start_controller(&state, 600, &counting_path, work, firewall);
    wait_ready(&controller, n);
    let host = |index: usize| names::host_interface_name(&format!("i{index}"));
    let mut repairs = Vec::new();
    for rep in 0..3 {
        let victim = vec![host((rep * 7919) % n)];
        repairs.push(repair(&mut netlink, &victim, n).0.as_secs_f64() * 1000.0);
    }
    let k = REPAIR_K.min(n);
    let victims: Vec<String> = (0..k).map(|index| host(index * n / k)).collect();
    result.insert("repair_1_ms".into(), json!(repairs));
    result.insert("repair_k".into(), json!(k));
    let (repaired, deleted) = repair(&mut netlink, &victims, n);
    result.insert("repair_k_ms".into(), json!(repaired.as_secs_f64() * 1000.0));
    result.insert(
        "repair_k_delete_ms".into(),
        json!(deleted.as_secs_f64() * 1000.0),
    );
    result.insert("repair_run_rss_kb".into(), json!(vm_hwm(&controller)));
    terminate_controller(controller);

    // Half the instances removed: i(N/2) to i(N-1).
    let kept = n / 2;
    desired(kept, &work.join("half"), mode.dual);
    let started = Instant::now();
    let output = kudonet(&apply, &work.join("half/state"), None)?;
    result.insert(
        "remove_half_command_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    kernel::wait_host_veths(&mut netlink, kept)?;
    result.insert(
        "remove_half_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("remove_half_actions".into(), json!(applied(&output)));

    // Teardown of the whole node (all N instances again first).
    let teardown: Vec<&str> = std::iter::once("teardown")
        .chain(firewall.iter().copied())
        .collect();
    kudonet(&apply, &state, None)?;
    let started = Instant::now();
    kudonet(&teardown, &state, None)?;
    result.insert(
        "teardown_command_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    kernel::wait_host_veths(&mut netlink, 0)?;
    result.insert("teardown_s".into(), json!(started.elapsed().as_secs_f64()));

    // A cold start of the controller: what a reboot costs, and its peak memory.
    if first_round {
        let controller = start_controller(&state, 600, &counting_path, work, firewall);
        let ready = wait_ready(&controller, n);
        result.insert("cold_run_ready_s".into(), json!(ready.as_secs_f64()));
        result.insert(
            "cold_run_first_pass_s".into(),
            json!(metric(&scrape(), "kudonet_reconcile_duration_seconds_sum")),
        );
        result.insert("cold_run_rss_kb".into(), json!(vm_hwm(&controller)));
        terminate_controller(controller);
        kudonet(&teardown, &state, None)?;
    }
    Ok(())
}

/// Writes wrappers of [`PROGRAMS`] (those installed) that log each call to WORK/calls; the
/// PATH that finds them first. kudonet tells the nf_tables iptables from the legacy one by
/// the name of the binary a program resolves to (`xtables-nft-multi`), so each wrapper is
/// a symbolic link WORK/bin/PROGRAM to a script of that same name (WORK/bin/real/NAME),
/// which logs the name it was called by and runs the real program of that name.
fn counting_wrappers(work: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = work.join("bin");
    let scripts = bin.join("real");
    std::fs::create_dir_all(&scripts).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let script = format!(
        "#!/bin/sh\nname=${{0##*/}}\necho \"$name\" >>{}\nPATH={path} exec \"$name\" \"$@\"\n",
        work.join("calls").display()
    );
    for program in PROGRAMS {
        let Ok(real) = which(program).and_then(std::fs::canonicalize) else {
            continue; // not installed
        };
        let target = scripts.join(real.file_name().unwrap());
        std::fs::write(&target, &script).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = bin.join(program);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
    }
    format!("{}:{path}", bin.display())
}

/// Where `program` is in PATH.
fn which(program: &str) -> std::io::Result<std::path::PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// Actions an `apply` carried out, from its summary line (0 for "No changes.").
fn applied(output: &str) -> u64 {
    let Some(line) = output
        .lines()
        .rev()
        .find(|line| line.starts_with("Apply complete:"))
    else {
        assert!(
            output.contains("No changes."),
            "unexpected output: {output}"
        );
        return 0;
    };
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse::<u64>().ok())
        .sum()
}

fn start_controller(
    state: &Path,
    resync: u64,
    path: &str,
    work: &Path,
    firewall: &[&str],
) -> Child {
    Command::new(KUDONET)
        .args(["run", "-q", "--resync", &resync.to_string()])
        .args(firewall)
        .args(["--metrics-addr", METRICS, "--status-file"])
        .arg(work.join("status.json"))
        .arg(state)
        .env("PATH", path)
        .stdout(Stdio::null())
        .spawn()
        .expect("kudonet run starts")
}

/// Waits for /readyz (the first pass converged the node); the time it took.
fn wait_ready(controller: &Child, n: usize) -> Duration {
    let started = Instant::now();
    let limit = Duration::from_secs(60) + Duration::from_millis(n as u64 * 200);
    while started.elapsed() < limit {
        if is_ready(METRICS) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "kudonet run (pid {}) not ready in {limit:?}",
        controller.id()
    );
}

fn terminate_controller(mut controller: Child) {
    terminate(&mut controller);
}

/// Deletes `victims` (host veths) and times until the controller has them back: the links
/// exist again and `kudonet_drift_repairs_total` moved. Then waits for the controller to
/// be idle (no pass for 300 ms). Also returns how long the deletions took: the kernel
/// deletes veths one by one, each waiting out an RCU grace period.
fn repair(netlink: &mut Netlink, victims: &[String], n: usize) -> (Duration, Duration) {
    let repairs_before = metric(&scrape(), "kudonet_drift_repairs_total");
    let started = Instant::now();
    for name in victims {
        let index = netlink.link_index(name).expect("the veth exists");
        netlink.delete_link(index, name).unwrap();
    }
    let deleted = started.elapsed();
    let limit = Duration::from_secs(30) + Duration::from_millis(n as u64 * 20);
    while !victims.iter().all(|name| netlink.link_index(name).is_ok()) {
        assert!(started.elapsed() < limit, "no repair within {limit:?}");
        std::thread::sleep(Duration::from_micros(500));
    }
    while metric(&scrape(), "kudonet_drift_repairs_total") <= repairs_before {
        assert!(started.elapsed() < limit, "no repair within {limit:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let mut last = histogram().0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = histogram().0;
        if now == last {
            break;
        }
        last = now;
    }
    (elapsed, deleted)
}

fn vm_hwm(controller: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", controller.id()))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn scrape() -> String {
    http_get(METRICS, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// (count, sum) of the reconcile duration histogram.
fn histogram() -> (f64, f64) {
    let text = scrape();
    (
        metric(&text, "kudonet_reconcile_duration_seconds_count"),
        metric(&text, "kudonet_reconcile_duration_seconds_sum"),
    )
}
