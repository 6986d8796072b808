//! The node benchmark: kudonet against baselines and peers that build and remove the same
//! node, side by side, alternating runs, medians and ratios. Needs root; every run happens in
//! a fresh throwaway network and mount namespace (with a private /run) that this program
//! creates for it.
//!
//!   cargo bench --bench node                 # N = 10, 100, 1000, 5000 (about 33 min, 2 cores)
//!   cargo bench --bench node -- --sizes 10,100,400,1000 --systems kudonet,kudonet-nft
//!                                            # nftables against iptables (about 8 min)
//!   cargo bench --bench node -- --quick      # N = 10, 100, 3 rounds
//!   cargo bench --bench node -- --sizes 10,200 --rounds 5 --systems kudonet,floor
//!
//! Options: `--sizes N,N,...`; `--rounds R` (every system, every N; default 5, 3 at
//! N >= 500, 1 at N >= 5000, and 3 for the peers); `--systems a,b` (default all);
//! `--max-n system=N,...` (the largest N a system is run at; default
//! per-step=1000,netavark=1000,cni=100,kudonet-dual=1000,kudonet-nft=1000: CNI takes about
//! 15 minutes a run at 1000);
//! `--slow-large-rounds R` (their rounds at N >= 500, default 1); `--out FILE` (default
//! bench/results.json).
//!
//! The node is bench/baselines/desired.sh's: N instances, one published port each. Systems:
//! - kudonet (bench/node/kudonet_run.rs: cold apply, no-op apply, one instance added and
//!   removed, repair of a flushed ruleset, controller resyncs and repairs, removal of half
//!   the instances, teardown, RSS);
//! - kudonet-dual, the same run on the same node in dual stack (every instance also has an
//!   IPv6 address; up to N = 1000 by default, `--max-n kudonet-dual=N`): the cost of IPv6;
//! - kudonet-nft, the same run with `--firewall nftables` (kudonet's rules in its own
//!   nftables table instead of iptables; up to N = 1000 by default): the nftables backend
//!   against the iptables one;
//! - `floor.sh`, the same kernel state with `ip -batch` and one `iptables-restore`, and the
//!   floor of removal: the namespaces unmounted in one `ip -batch` (bench/node/baselines.rs);
//! - `per-step.sh`, one process per step as the original library did (build only);
//! - the peers netavark and the CNI reference plugins, per container (bench/node/peers.rs),
//!   installed with apt-get when missing.
//!
//! Every cold build includes creating the namespaces, and every removal ends when the kernel
//! has removed the host veths. Once per N (the first round) each system's node is checked:
//! real packets from one instance to another and to a published port, every host veth on a
//! bridge, and for the baselines `kudonet plan` must say "No changes.". A system that fails
//! at an N records its error for that N and is not run again there. Prints tables and
//! writes JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

#[path = "node/baselines.rs"]
mod baselines;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "node/kernel.rs"]
mod kernel;
#[path = "node/kudonet_run.rs"]
mod kudonet_run;
#[path = "node/peers.rs"]
mod peers;
#[path = "node/report.rs"]
mod report;
mod shared;

use common::KUDONET;
use kernel::first_lines;
use report::Runs;

const BASELINES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/baselines");
const WORKER: &str = "KUDONET_BENCH_NODE_WORKER";
const WORK: &str = "/run/kudonet-bench";

const SYSTEMS: [&str; 7] = [
    "kudonet",
    "kudonet-dual",
    "kudonet-nft",
    "floor",
    "per-step",
    "netavark",
    "cni",
];
/// Systems that fork per container (minutes a run at N = 1000), and the largest N each is
/// run at by default.
const SLOW: [(&str, usize); 3] = [("per-step", 1000), ("netavark", 1000), ("cni", 100)];
/// kudonet's variants (the same run as kudonet's, in dual stack or with the nftables
/// backend), compared with kudonet, and the largest N each is run at by default.
const VARIANTS: [(&str, usize); 2] = [("kudonet-dual", 1000), ("kudonet-nft", 1000)];
const PEERS: [&str; 2] = ["netavark", "cni"];

struct Options {
    sizes: Vec<usize>,
    /// Rounds of every system at every N; 0 for the defaults.
    rounds: usize,
    systems: Vec<&'static str>,
    /// The largest N of each slow system and variant.
    max_n: BTreeMap<&'static str, usize>,
    slow_large_rounds: usize,
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
    let number = |flag: &str, default: usize| {
        value(flag).map_or(default, |text| {
            text.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number, not {text:?}"))
        })
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
                vec![10, 100, 1000, 5000]
            }
        });
    let systems = match value("--systems") {
        None => SYSTEMS.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| {
                let name = name.trim();
                *SYSTEMS
                    .iter()
                    .find(|system| **system == name)
                    .unwrap_or_else(|| panic!("--systems: {name:?} is not one of {SYSTEMS:?}"))
            })
            .collect(),
    };
    let mut max_n: BTreeMap<&'static str, usize> = SLOW.into_iter().chain(VARIANTS).collect();
    for setting in value("--max-n").iter().flat_map(|list| list.split(',')) {
        let (name, n) = setting
            .split_once('=')
            .unwrap_or_else(|| panic!("--max-n takes system=N, not {setting:?}"));
        let known: Vec<&'static str> = max_n.keys().copied().collect();
        let system = *known
            .iter()
            .find(|system| **system == name.trim())
            .unwrap_or_else(|| panic!("--max-n: {name:?} is not one of {known:?}"));
        let n = n.trim().parse().expect("--max-n takes system=N");
        max_n.insert(system, n);
    }
    Options {
        sizes,
        rounds: number("--rounds", if quick { 3 } else { 0 }),
        systems,
        max_n,
        slow_large_rounds: number("--slow-large-rounds", 1),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.json")),
    }
}

/// How many rounds `system` gets at N, or why none.
fn rounds(options: &Options, system: &str, n: usize) -> Result<usize, String> {
    let max_n = options.max_n.get(system);
    if let Some(max_n) = max_n.filter(|max_n| n > **max_n) {
        let why = if system.starts_with("kudonet") {
            ""
        } else {
            "forks per container: "
        };
        return Err(format!("{why}run up to N = {max_n} (--max-n {system}=N)"));
    }
    let slow = SLOW.iter().any(|(slow, _)| *slow == system);
    let rounds = match options.rounds {
        0 if n >= 5000 => 1,
        0 if n >= 500 => 3,
        0 if PEERS.contains(&system) => 3,
        0 => 5,
        rounds => rounds,
    };
    Ok(if slow && n >= 500 {
        rounds.min(options.slow_large_rounds)
    } else {
        rounds
    })
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
    let mut missing = Vec::new();
    if options.systems.iter().any(|system| PEERS.contains(system)) {
        missing = peers::install_missing();
    }
    let started = Instant::now();
    let mut runs: BTreeMap<(usize, &'static str), Runs> = BTreeMap::new();
    for &n in &options.sizes {
        let mut planned = Vec::new();
        for &system in &options.systems {
            let rounds = match peers::package(system) {
                Some(package) if missing.contains(&package) => {
                    Err(format!("{package} is not installed"))
                }
                _ => rounds(&options, system, n),
            };
            match rounds {
                Ok(count) => planned.push((system, count)),
                Err(reason) => {
                    runs.insert((n, system), Runs::Skipped(reason));
                }
            }
        }
        let most = planned.iter().map(|(_, count)| *count).max().unwrap_or(0);
        let mut settle_limit = Duration::from_secs(15);
        for round in 0..most {
            // Alternate, and rotate who goes first, so that drift of the machine (other
            // work, caches) spreads over all systems.
            let turn: Vec<&'static str> = planned
                .iter()
                .filter(|(_, count)| *count > round)
                .map(|(system, _)| *system)
                .collect();
            for at in 0..turn.len() {
                let system = turn[(round + at) % turn.len()];
                let done = runs.entry((n, system)).or_insert(Runs::Ran(Vec::new()));
                let Runs::Ran(done) = done else { continue };
                if done.iter().any(|run| run.get("error").is_some()) {
                    continue; // failed in an earlier round: it would fail again
                }
                settle_namespaces(settle_limit);
                let result = spawn_worker(system, n, round == 0);
                eprintln!(
                    "[{:>5.0}s] N={n} round {} {system}: {}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    headline(system, &result)
                );
                done.push(result);
                // Thousands of namespaces take the kernel a while to free.
                settle_limit = Duration::from_secs(15).max(Duration::from_millis(10 * n as u64));
            }
        }
        // Partial results survive an interrupted run.
        write(
            &options.out,
            &report::summarise(&options.sizes, &runs, started.elapsed()),
        );
    }
    let summary = report::summarise(&options.sizes, &runs, started.elapsed());
    report::print_tables(&summary);
    write(&options.out, &summary);
    println!("\nwritten: {}", options.out.display());
}

fn write(out: &Path, report: &Value) {
    std::fs::write(out, serde_json::to_string_pretty(report).unwrap() + "\n")
        .unwrap_or_else(|error| panic!("{}: {error}", out.display()));
}

fn headline(system: &str, result: &Value) -> String {
    let number = |key: &str| result[key].as_f64().unwrap_or(f64::NAN);
    if let Some(error) = result
        .get("error")
        .filter(|_| result.get("build_s").is_none())
    {
        return format!("FAILED: {}", error.as_str().unwrap_or(""));
    }
    let mut line = match system {
        "kudonet" | "kudonet-dual" | "kudonet-nft" => format!(
            "cold {:.3}s, no-op apply {:.3}s, +1 {:.3}s, flushed {:.3}s, resync {:.3}s, repair {:.1}ms, half {:.3}s, teardown {:.3}s, rss {} kB",
            number("build_s"),
            number("noop_apply_s"),
            number("add_one_s"),
            number("flush_repair_s"),
            report::median(&report::floats(&result["resync_pass_s"])),
            report::median(&report::floats(&result["repair_1_ms"])),
            number("remove_half_s"),
            number("teardown_s"),
            result["run_rss_kb"]
        ),
        "floor" => format!(
            "build {:.3}s, half {:.3}s, teardown {:.3}s",
            number("build_s"),
            number("remove_half_s"),
            number("teardown_s")
        ),
        "per-step" => format!("build {:.3}s", number("build_s")),
        _ => format!(
            "build {:.3}s (namespaces {:.3}s), removal {:.3}s",
            number("build_s"),
            number("namespaces_s"),
            number("teardown_s")
        ),
    };
    match result.get("verified") {
        Some(Value::Bool(true)) => line.push_str(", node checked"),
        Some(reason) => line.push_str(&format!(", CHECK FAILED: {reason}")),
        None => {}
    }
    if result.get("plan_empty") == Some(&json!(false)) {
        line.push_str(", kudonet plan found DIFFERENCES");
    }
    if let Some(error) = result.get("error") {
        line.push_str(&format!(", FAILED: {}", error.as_str().unwrap_or("")));
    }
    line
}

/// The kernel frees network namespaces asynchronously: wait while their number is still
/// falling (at most `limit`), so that the cleanup of the previous run is not billed to the
/// next. (Only a trend: other work on the machine may hold namespaces too.)
fn settle_namespaces(limit: Duration) {
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
    while started.elapsed() < limit && since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now < lowest {
            lowest = now;
            since = Instant::now();
        }
    }
}

/// Runs one system at N in a worker process (in its own sandbox); what it measured, with
/// "error" when it failed.
fn spawn_worker(system: &str, n: usize, first_round: bool) -> Value {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(WORKER, format!("{system} {n} {first_round}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("the worker starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().find_map(|line| line.strip_prefix("RESULT ")) {
        Some(line) => serde_json::from_str(line).unwrap(),
        None => json!({
            "error": format!("the worker failed ({}): {}", output.status, first_lines(&stdout, 3)),
        }),
    }
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
    desired(n, &work.join("full"), system == "kudonet-dual");
    let mut result = Map::new();
    let outcome = match system.as_str() {
        "kudonet" | "kudonet-dual" | "kudonet-nft" => {
            let mode = kudonet_run::Mode {
                dual: system == "kudonet-dual",
                nftables: system == "kudonet-nft",
            };
            kudonet_run::run(n, mode, first_round, work, &mut result)
        }
        "netavark" | "cni" => {
            let instances = kernel::instances(&work.join("full"));
            peers::run(&system, &instances, first_round, work, &mut result)
        }
        script => baselines::run(script, n, first_round, work, &mut result),
    };
    if let Err(error) = outcome {
        result.insert("error".into(), json!(error));
    }
    Value::Object(result)
}

/// Writes the desired state of N instances and its table (bench/baselines/desired.sh), in
/// dual stack when `dual`.
fn desired(n: usize, dir: &Path, dual: bool) {
    let status = Command::new("bash")
        .arg(Path::new(BASELINES).join("desired.sh"))
        .arg(n.to_string())
        .arg(dir)
        .args(dual.then_some("dual"))
        .status()
        .unwrap();
    assert!(status.success(), "desired.sh {n}");
}

/// Runs `kudonet COMMAND DIR -q` (with PATH set to `path`); its stdout, or why it failed.
fn kudonet(command: &[&str], dir: &Path, path: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(KUDONET);
    cmd.args(command).arg(dir).arg("-q");
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let output = cmd
        .output()
        .map_err(|error| format!("{KUDONET}: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "kudonet {} failed ({}): {}",
            command.join(" "),
            output.status,
            first_lines(&(stderr.into_owned() + &stdout), 3)
        ))
    }
}
