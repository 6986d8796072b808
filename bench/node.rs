//! The node benchmark: kudonet against two baselines that build the same node, side by side,
//! alternating runs, medians and ratios. Needs root; every run happens in a fresh throwaway
//! network and mount namespace (with a private /run) that this program creates for it.
//!
//!   cargo bench --bench node                 # N = 10, 100, 500, 1000 (about 8 min, 2 cores)
//!   cargo bench --bench node -- --quick      # N = 10, 100, 3 rounds (about 2 min)
//!   cargo bench --bench node -- --sizes 10,200 --rounds 5 --out bench/results.json
//!
//! Systems (bench/baselines/): `per-step.sh`, one process per step as the original library
//! did; `floor.sh`, the same kernel state with `ip -batch` and one `iptables-restore`;
//! kudonet. The node is bench/baselines/desired.sh's: N instances, one published port each.
//! A baseline run is checked once per N with `kudonet plan` (it must say "No changes.").
//!
//! Per kudonet run: cold `apply`; no-op `apply` (actions printed, `iptables-restore` and
//! `iptables-save` calls counted through wrappers in PATH); `run --resync 1` on the converged
//! node (pass durations from `kudonet_reconcile_duration_seconds`, actions from
//! `kudonet_actions_total`, restores and saves counted, VmHWM); `run --resync 600` repairing 1 and then
//! k deleted host veths (time from the deletion until the veths are back and
//! `kudonet_drift_repairs_total` moved); `apply` of half the instances; `teardown`. In the
//! first round of each N also a cold `run` (first pass and VmHWM while building the node).
//! Prints a table and writes JSON (default bench/results.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kudonet::kernel::netlink::Netlink;
use kudonet::names;
use serde_json::{Map, Value, json};

#[path = "../tests/common/mod.rs"]
mod common;

use common::KUDONET;
use common::controller::{http_get, is_ready, metric_sum as metric, terminate};
const BASELINES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/baselines");
const WORKER: &str = "KUDONET_BENCH_NODE_WORKER";
const WORK: &str = "/run/kudonet-bench";
const METRICS: &str = "127.0.0.1:9101";
/// Host veths deleted at once in the second repair measurement.
const REPAIR_K: usize = 10;
/// Reference figures of the issue (same kind of machine, 200 containers, one port each).
const NETAVARK_200_S: f64 = 18.0;

const SYSTEMS: [&str; 3] = ["kudonet", "floor", "per-step"];

struct Options {
    sizes: Vec<usize>,
    rounds: usize,
    /// Rounds of per-step at N >= 1000 (minutes each).
    per_step_large_rounds: usize,
    out: PathBuf,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let sizes = value("--sizes")
        .map(|list| {
            list.split(',')
                .map(|n| n.trim().parse().expect("--sizes takes numbers"))
                .collect()
        })
        .unwrap_or_else(|| {
            if quick {
                vec![10, 100]
            } else {
                vec![10, 100, 500, 1000]
            }
        });
    let rounds = value("--rounds")
        .map(|n| n.parse().expect("--rounds takes a number"))
        .unwrap_or(if quick { 3 } else { 0 });
    Options {
        sizes,
        rounds,
        per_step_large_rounds: value("--per-step-large-rounds")
            .map(|n| n.parse().expect("a number"))
            .unwrap_or(1),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.json")),
    }
}

fn main() {
    if let Ok(job) = std::env::var(WORKER) {
        let result = worker(&job);
        println!("RESULT {result}");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("node: needs root (it creates namespaces); skipped");
        return;
    }
    let options = options();
    let started = Instant::now();
    let mut runs: BTreeMap<(usize, &str), Vec<Value>> = BTreeMap::new();
    for &n in &options.sizes {
        // Default rounds: 5 where a round is quick, 3 where it takes a minute.
        let rounds = match options.rounds {
            0 if n >= 500 => 3,
            0 => 5,
            rounds => rounds,
        };
        for round in 0..rounds {
            for turn in 0..SYSTEMS.len() {
                // Alternate, and rotate who goes first, so that drift of the machine (other
                // work, caches) spreads over all three.
                let system = SYSTEMS[(round + turn) % SYSTEMS.len()];
                if system == "per-step" && n >= 1000 && round >= options.per_step_large_rounds {
                    continue;
                }
                settle_namespaces();
                let result = spawn_worker(system, n, round == 0);
                eprintln!(
                    "[{:>5.0}s] N={n} round {} {system}: {}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    headline(system, &result)
                );
                runs.entry((n, system)).or_default().push(result);
            }
        }
        // Partial results survive an interrupted run.
        let partial = summarise(&options, &runs, started.elapsed());
        std::fs::write(
            &options.out,
            serde_json::to_string_pretty(&partial).unwrap() + "\n",
        )
        .unwrap();
    }
    let report = summarise(&options, &runs, started.elapsed());
    print_table(&report);
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    println!("\nwritten: {}", options.out.display());
}

fn headline(system: &str, result: &Value) -> String {
    let number = |key: &str| result[key].as_f64().unwrap_or(f64::NAN);
    match system {
        "kudonet" => format!(
            "cold {:.3}s, no-op apply {:.3}s, resync {:.3}s, repair {:.1}ms, half {:.3}s, teardown {:.3}s, rss {} kB",
            number("cold_apply_s"),
            number("noop_apply_s"),
            median(&floats(&result["resync_pass_s"])),
            median(&floats(&result["repair_1_ms"])),
            number("remove_half_s"),
            number("teardown_s"),
            result["run_rss_kb"]
        ),
        _ => format!(
            "{:.3}s{}",
            number("build_s"),
            match result.get("verified") {
                Some(Value::Bool(true)) => ", kudonet plan: No changes.",
                Some(_) => ", kudonet plan found DIFFERENCES",
                None => "",
            }
        ),
    }
}

/// The kernel frees network namespaces asynchronously: wait while their number is still
/// falling (at most 15 s), so that the cleanup of the previous run is not billed to the next.
/// (Only a trend: other work on the machine may hold namespaces too.)
fn settle_namespaces() {
    let count = || -> Option<u64> {
        let slab = std::fs::read_to_string("/proc/slabinfo").ok()?;
        let line = slab
            .lines()
            .find(|line| line.starts_with("net_namespace "))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let started = Instant::now();
    let mut lowest = count();
    let mut since = Instant::now();
    while started.elapsed() < Duration::from_secs(15)
        && since.elapsed() < Duration::from_millis(500)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now < lowest {
            lowest = now;
            since = Instant::now();
        }
    }
}

fn spawn_worker(system: &str, n: usize, first_round: bool) -> Value {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(WORKER, format!("{system} {n} {first_round}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("the worker starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "worker {system} N={n} failed ({}):\n{stdout}",
                output.status
            )
        });
    serde_json::from_str(line).unwrap()
}

// ---------------------------------------------------------------------------------------
// Workers: one run in a fresh sandbox.

fn worker(job: &str) -> Value {
    let mut words = job.split(' ');
    let system = words.next().unwrap().to_string();
    let n: usize = words.next().unwrap().parse().unwrap();
    let first_round = words.next() == Some("true");
    kudonet::demo::enter_sandbox().expect("a throwaway namespace");
    let work = Path::new(WORK);
    std::fs::create_dir_all(work.join("bin")).unwrap();
    desired(n, &work.join("full"));
    match system.as_str() {
        "kudonet" => kudonet_run(n, first_round, work),
        baseline => baseline_run(baseline, n, first_round, work),
    }
}

fn desired(n: usize, dir: &Path) {
    let status = Command::new("bash")
        .arg(Path::new(BASELINES).join("desired.sh"))
        .arg(n.to_string())
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "desired.sh {n}");
}

fn baseline_run(script: &str, n: usize, verify: bool, work: &Path) -> Value {
    let full = work.join("full");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(Path::new(BASELINES).join(format!("{script}.sh")))
        .arg(n.to_string())
        .arg(&full)
        .output()
        .unwrap();
    let build_s = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{script}.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut result = json!({ "build_s": build_s });
    if verify {
        let plan = kudonet(&["plan"], &full.join("state"), None);
        let same = plan.trim_end().ends_with("No changes.");
        if !same {
            eprintln!("{script}.sh N={n}: kudonet plan is not empty:\n{plan}");
        }
        result["verified"] = json!(same);
    }
    result
}

fn kudonet_run(n: usize, first_round: bool, work: &Path) -> Value {
    let state = work.join("full/state");
    let bin = work.join("bin");
    let calls = work.join("calls");
    for program in ["iptables-restore", "iptables-save"] {
        let real = Command::new("bash")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .unwrap();
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        let wrapper = bin.join(program);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho {program} >>{}\nexec {real} \"$@\"\n",
                calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let counting_path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let count_calls = |program: &str| {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|line| *line == program)
            .count()
    };
    let mut result = Map::new();

    // Cold apply: the real binaries, no wrapper.
    let started = Instant::now();
    let output = kudonet(&["apply"], &state, None);
    result.insert(
        "cold_apply_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("cold_actions".into(), json!(applied(&output)));

    // No-op apply.
    let _ = std::fs::remove_file(&calls);
    let started = Instant::now();
    let output = kudonet(&["apply"], &state, Some(&counting_path));
    result.insert(
        "noop_apply_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("noop_apply_actions".into(), json!(applied(&output)));
    result.insert(
        "noop_apply_restores".into(),
        json!(count_calls("iptables-restore")),
    );
    result.insert(
        "noop_apply_saves".into(),
        json!(count_calls("iptables-save")),
    );

    // No-op resyncs of the controller.
    let _ = std::fs::remove_file(&calls);
    let controller = start_controller(&state, 1, &counting_path, work);
    let first = wait_ready(&controller, n);
    let first_pass = metric(&scrape(), "kudonet_reconcile_duration_seconds_sum");
    let restores_before = count_calls("iptables-restore");
    let saves_before = count_calls("iptables-save");
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
        json!(count_calls("iptables-restore") - restores_before),
    );
    // iptables is read again only when the nf_tables generation moved: never, here.
    result.insert(
        "resync_saves".into(),
        json!(count_calls("iptables-save") - saves_before),
    );
    result.insert("run_rss_kb".into(), json!(vm_hwm(&controller)));
    stop(controller);

    // Repairs after kernel events, with a resync far away.
    let controller = start_controller(&state, 600, &counting_path, work);
    wait_ready(&controller, n);
    let mut netlink = Netlink::open().unwrap();
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
    stop(controller);

    // Half the instances removed.
    desired(n / 2, &work.join("half"));
    let started = Instant::now();
    let output = kudonet(&["apply"], &work.join("half/state"), None);
    result.insert(
        "remove_half_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("remove_half_actions".into(), json!(applied(&output)));

    // Teardown.
    let started = Instant::now();
    kudonet(&["teardown"], &state, None);
    result.insert("teardown_s".into(), json!(started.elapsed().as_secs_f64()));

    // A cold start of the controller: what a reboot costs, and its peak memory.
    if first_round {
        let controller = start_controller(&state, 600, &counting_path, work);
        let ready = wait_ready(&controller, n);
        result.insert("cold_run_ready_s".into(), json!(ready.as_secs_f64()));
        result.insert(
            "cold_run_first_pass_s".into(),
            json!(metric(&scrape(), "kudonet_reconcile_duration_seconds_sum")),
        );
        result.insert("cold_run_rss_kb".into(), json!(vm_hwm(&controller)));
        stop(controller);
        kudonet(&["teardown"], &state, None);
    }
    Value::Object(result)
}

/// Runs kudonet COMMAND DIR; its stdout. Panics when it fails.
fn kudonet(command: &[&str], dir: &Path, path: Option<&str>) -> String {
    let mut cmd = Command::new(KUDONET);
    cmd.args(command).arg(dir).arg("-q");
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kudonet {command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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

fn start_controller(state: &Path, resync: u64, path: &str, work: &Path) -> Child {
    Command::new(KUDONET)
        .args(["run", "-q", "--resync", &resync.to_string()])
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

fn stop(mut controller: Child) {
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

// ---------------------------------------------------------------------------------------
// Summary.

fn floats(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().filter_map(Value::as_f64).collect(),
        Value::Number(number) => number.as_f64().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// The median over runs of `key` (each run's value, or the median of its list).
fn median_of(runs: &[Value], key: &str) -> f64 {
    let per_run: Vec<f64> = runs
        .iter()
        .map(|run| median(&floats(&run[key])))
        .filter(|value| value.is_finite())
        .collect();
    median(&per_run)
}

fn max_of(runs: &[Value], key: &str) -> f64 {
    runs.iter()
        .flat_map(|run| floats(&run[key]))
        .fold(f64::NAN, f64::max)
}

fn summarise(
    options: &Options,
    runs: &BTreeMap<(usize, &str), Vec<Value>>,
    elapsed: Duration,
) -> Value {
    let empty = Vec::new();
    let mut sizes = Vec::new();
    for &n in &options.sizes {
        let k = runs.get(&(n, "kudonet")).unwrap_or(&empty);
        let floor = runs.get(&(n, "floor")).unwrap_or(&empty);
        let per_step = runs.get(&(n, "per-step")).unwrap_or(&empty);
        let cold = median_of(k, "cold_apply_s");
        let floor_s = median_of(floor, "build_s");
        let per_step_s = median_of(per_step, "build_s");
        let noop = median_of(k, "noop_apply_s");
        let resync = median_of(k, "resync_pass_s");
        let verified = |runs: &[Value]| {
            runs.iter()
                .filter_map(|run| run.get("verified"))
                .all(|value| value == &json!(true))
        };
        let total = |key: &str| -> f64 { k.iter().flat_map(|run| floats(&run[key])).sum() };
        sizes.push(json!({
            "n": n,
            "rounds": { "kudonet": k.len(), "floor": floor.len(), "per_step": per_step.len() },
            "kudonet": {
                "cold_apply_s": cold,
                "cold_apply_per_instance_ms": cold * 1000.0 / n as f64,
                "cold_actions": median_of(k, "cold_actions"),
                "noop_apply_s": noop,
                "noop_apply_actions_total": total("noop_apply_actions"),
                "noop_apply_restores_total": total("noop_apply_restores"),
                "noop_apply_saves_per_run": median_of(k, "noop_apply_saves"),
                "resync_pass_s": resync,
                "resync_actions_total": total("resync_actions"),
                "resync_restores_total": total("resync_restores"),
                "resync_saves_total": total("resync_saves"),
                "repair_1_ms": median(&k.iter().flat_map(|run| floats(&run["repair_1_ms"])).collect::<Vec<_>>()),
                "repair_k": REPAIR_K.min(n),
                "repair_k_ms": median_of(k, "repair_k_ms"),
                "repair_k_delete_ms": median_of(k, "repair_k_delete_ms"),
                "remove_half_s": median_of(k, "remove_half_s"),
                "teardown_s": median_of(k, "teardown_s"),
                "run_rss_kb_max": max_of(k, "run_rss_kb").max(max_of(k, "repair_run_rss_kb")),
                "cold_run_first_pass_s": median_of(k, "cold_run_first_pass_s"),
                "cold_run_rss_kb": max_of(k, "cold_run_rss_kb"),
            },
            "floor": { "build_s": floor_s, "per_instance_ms": floor_s * 1000.0 / n as f64, "verified": verified(floor) },
            "per_step": { "build_s": per_step_s, "per_instance_ms": per_step_s * 1000.0 / n as f64, "verified": verified(per_step) },
            "ratios": {
                "cold_over_floor": cold / floor_s,
                "per_step_over_cold": per_step_s / cold,
                "noop_apply_over_cold": noop / cold,
                "resync_over_cold": resync / cold,
            },
            "runs": { "kudonet": k, "floor": floor, "per_step": per_step },
        }));
    }
    // Growth: per-instance cost at the largest N over the smallest N >= 100 (fixed costs
    // dominate below).
    let per_instance = |entry: &Value, path: &[&str]| {
        let mut value = entry;
        for key in path {
            value = &value[*key];
        }
        value.as_f64().unwrap_or(f64::NAN) / entry["n"].as_f64().unwrap()
    };
    let reference = sizes
        .iter()
        .find(|entry| entry["n"].as_u64().unwrap() >= 100)
        .or(sizes.first());
    let growth = reference.zip(sizes.last()).map(|(small, large)| {
        json!({
            "from_n": small["n"], "to_n": large["n"],
            "kudonet_cold": per_instance(large, &["kudonet", "cold_apply_s"]) / per_instance(small, &["kudonet", "cold_apply_s"]),
            "floor": per_instance(large, &["floor", "build_s"]) / per_instance(small, &["floor", "build_s"]),
            "per_step": per_instance(large, &["per_step", "build_s"]) / per_instance(small, &["per_step", "build_s"]),
            "kudonet_resync": per_instance(large, &["kudonet", "resync_pass_s"]) / per_instance(small, &["kudonet", "resync_pass_s"]),
            "kudonet_teardown": per_instance(large, &["kudonet", "teardown_s"]) / per_instance(small, &["kudonet", "teardown_s"]),
        })
    });
    // netavark's 200-container figure against kudonet at 200 (interpolated per instance
    // from the nearest measured N).
    let near_200 = sizes
        .iter()
        .min_by_key(|entry| (entry["n"].as_i64().unwrap() - 200).abs());
    let netavark = near_200.map(|entry| {
        let at_200 = per_instance(entry, &["kudonet", "cold_apply_s"]) * 200.0;
        json!({ "netavark_200_s": NETAVARK_200_S, "kudonet_200_s_estimated_from_n": entry["n"], "kudonet_200_s": at_200, "speedup": NETAVARK_200_S / at_200 })
    });
    json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "elapsed_s": elapsed.as_secs_f64(),
        "sizes": sizes,
        "growth_per_instance": growth,
        "netavark": netavark,
    })
}

fn print_table(report: &Value) {
    let f = |value: &Value| value.as_f64().unwrap_or(f64::NAN);
    println!(
        "\n{:>5} | {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} | {:>7} {:>7} | {:>7}",
        "N",
        "kudonet",
        "floor",
        "per-step",
        "k/flr",
        "ps/k",
        "noop-ap",
        "resync",
        "%cold",
        "repair1",
        "repairK",
        "half",
        "tdown",
        "RSS MB"
    );
    println!(
        "{:>5} | {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} | {:>7} {:>7} | {:>7}",
        "", "cold s", "s", "s", "ratio", "ratio", "s", "s", "", "ms", "ms", "s", "s", "peak"
    );
    for entry in report["sizes"].as_array().unwrap() {
        let k = &entry["kudonet"];
        let rss = f(&k["run_rss_kb_max"]).max(f(&k["cold_run_rss_kb"])) / 1024.0;
        println!(
            "{:>5} | {:>9.3} {:>9.3} {:>9.3} | {:>6.2} {:>6.1} | {:>8.3} {:>8.3} {:>5.1}% | {:>8.1} {:>8.1} | {:>7.3} {:>7.3} | {:>7.1}",
            entry["n"].as_u64().unwrap_or(0),
            f(&k["cold_apply_s"]),
            f(&entry["floor"]["build_s"]),
            f(&entry["per_step"]["build_s"]),
            f(&entry["ratios"]["cold_over_floor"]),
            f(&entry["ratios"]["per_step_over_cold"]),
            f(&k["noop_apply_s"]),
            f(&k["resync_pass_s"]),
            100.0 * f(&k["resync_pass_s"]).max(f(&k["noop_apply_s"])) / f(&k["cold_apply_s"]),
            f(&k["repair_1_ms"]),
            f(&k["repair_k_ms"]),
            f(&k["remove_half_s"]),
            f(&k["teardown_s"]),
            rss,
        );
    }
    println!("\nper-instance cost (ms): kudonet cold / floor / per-step");
    for entry in report["sizes"].as_array().unwrap() {
        println!(
            "{:>5}: {:>7.2} {:>7.2} {:>7.2}   no-op: apply {} actions, {} iptables-restore, {} iptables-save; resync {} actions, {} iptables-restore, {} iptables-save; baselines checked by kudonet plan: floor {}, per-step {}; repairK includes {:.1} ms of the kernel deleting the veths",
            entry["n"].as_u64().unwrap_or(0),
            f(&entry["kudonet"]["cold_apply_per_instance_ms"]),
            f(&entry["floor"]["per_instance_ms"]),
            f(&entry["per_step"]["per_instance_ms"]),
            entry["kudonet"]["noop_apply_actions_total"],
            entry["kudonet"]["noop_apply_restores_total"],
            entry["kudonet"]["noop_apply_saves_per_run"],
            entry["kudonet"]["resync_actions_total"],
            entry["kudonet"]["resync_restores_total"],
            entry["kudonet"]["resync_saves_total"],
            entry["floor"]["verified"],
            entry["per_step"]["verified"],
            f(&entry["kudonet"]["repair_k_delete_ms"]),
        );
    }
    if let Some(growth) = report.get("growth_per_instance").filter(|g| !g.is_null()) {
        println!(
            "growth of per-instance cost from N={} to N={}: kudonet cold x{:.2}, floor x{:.2}, per-step x{:.2}, resync x{:.2}, teardown x{:.2} (1.00 = flat)",
            growth["from_n"],
            growth["to_n"],
            f(&growth["kudonet_cold"]),
            f(&growth["floor"]),
            f(&growth["per_step"]),
            f(&growth["kudonet_resync"]),
            f(&growth["kudonet_teardown"])
        );
    }
    if let Some(netavark) = report.get("netavark").filter(|n| !n.is_null()) {
        println!(
            "netavark reference: {:.0} s for 200 containers; kudonet ~{:.2} s at 200 (from N={}): x{:.1} faster",
            f(&netavark["netavark_200_s"]),
            f(&netavark["kudonet_200_s"]),
            netavark["kudonet_200_s_estimated_from_n"],
            f(&netavark["speedup"])
        );
    }
}
