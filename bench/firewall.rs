//! The firewall alone: kudonet's nftables backend against its iptables backend, side by
//! side in the same run, without the namespaces and veths that dominate the node bench.
//! Needs root; every run happens in a fresh throwaway network and mount namespace (with a
//! private /run) that this program creates for it.
//!
//!   cargo bench --bench firewall                     # N = 10, 100, 1000, 5000 (under a minute)
//!   cargo bench --bench firewall -- --sizes 10,200 --rounds 3 --out /tmp/firewall.json
//!
//! Options: `--sizes N,N,...`; `--rounds R` (every backend, every N; default 11, 7 at
//! N >= 1000, 5 at N >= 5000); `--out FILE` (default bench/firewall.json).
//!
//! The node is bench/baselines/desired.sh's (N instances, one published TCP port each),
//! with an uplink (`eth0` with the default route) so that the masquerade rules are
//! there too. In each run kudonet builds the node without its instances (the bridge, the
//! segments above 500 instances, the sysctls: the plan's node steps), never creating a
//! namespace or a veth, and then times, through `KernelDataplane` and the planner as
//! `kudonet apply` uses them:
//! - cold: writing the plan's firewall actions on a node that has no rule yet;
//! - no-op: reading the firewall as a fresh process does (nothing cached: the iptables
//!   tables, and for nftables also kudonet's table), of which reading the backend's own
//!   rules alone (one `iptables-save` of IPv4 `nat` and `filter`, or one dump of
//!   `inet kudonet`), and a whole observation and plan by a fresh dataplane, which must plan
//!   nothing (medians of 5 each);
//! - +1: writing the firewall actions of the node with one instance more (map elements
//!   against an `iptables-restore`);
//! - flushed: after `nft flush ruleset` (which with iptables-nft takes iptables' tables
//!   too), observing, planning and writing the rules back.
//!
//! The planner sees the node converged: the plan of the instances applied in memory
//! (`MemoryDataplane`) over the kernel's node, with the firewall the kernel has, so that a
//! pass plans what it would on a real node (nothing, or the firewall alone). Each write's
//! nf_tables commits are counted by the generation. After the repair a fresh observation
//! must plan nothing. Backends alternate, the first of each round rotating. Prints a table
//! with the ratios nftables / iptables and writes JSON (bench/results.json is the node
//! bench's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::kernel::KernelDataplane;
use kudonet::kernel::firewall::{
    FirewallCache, FirewallDriver, Iptables, IptablesFirewall, NftablesFirewall,
};
use kudonet::kernel::netlink::NfTables;
use kudonet::names;
use kudonet::observed::Observed;
use kudonet::plan::{Action, Plan, plan};
use kudonet::reconcile::load_desired;
use kudonet::spec::{Desired, FirewallBackend};
use serde_json::{Map, Value, json};

mod shared;
use shared::{bench_state, median};

const WORKER: &str = "KUDONET_BENCH_FIREWALL_WORKER";
const WORK: &str = "/run/kudonet-bench";
const NETNS_DIR: &str = "/run/netns";
const BACKENDS: [FirewallBackend; 2] = [FirewallBackend::Iptables, FirewallBackend::Nftables];
/// Samples of each no-op figure in a run (their median is the run's figure).
const NOOP_SAMPLES: usize = 5;
/// The figures of the table: key, heading.
const FIGURES: [(&str, &str); 6] = [
    ("cold_write_s", "cold write"),
    ("noop_read_s", "no-op firewall read"),
    ("noop_own_read_s", "of which own rules"),
    ("noop_pass_s", "no-op observe + plan"),
    ("add_one_write_s", "+1 write"),
    ("flushed_repair_s", "flushed: observe + plan + write"),
];

struct Options {
    sizes: Vec<usize>,
    /// Rounds of every backend at every N; 0 for the defaults.
    rounds: usize,
    out: PathBuf,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    Options {
        sizes: value("--sizes").map_or(vec![10, 100, 1000, 5000], |list| {
            list.split(',')
                .map(|n| n.trim().parse().expect("--sizes takes numbers"))
                .collect()
        }),
        rounds: value("--rounds").map_or(0, |text| {
            text.parse()
                .unwrap_or_else(|_| panic!("--rounds takes a number, not {text:?}"))
        }),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/firewall.json")),
    }
}

fn rounds(options: &Options, n: usize) -> usize {
    match options.rounds {
        0 if n >= 5000 => 5,
        0 if n >= 1000 => 7,
        0 => 11,
        rounds => rounds,
    }
}

fn name(backend: FirewallBackend) -> &'static str {
    match backend {
        FirewallBackend::Iptables => "iptables",
        FirewallBackend::Nftables => "nftables",
    }
}

fn main() {
    if let Ok(job) = std::env::var(WORKER) {
        let result = worker(&job).unwrap_or_else(|error| json!({ "error": error }));
        println!("RESULT {result}");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("firewall: needs root (it creates namespaces); skipped");
        return;
    }
    let options = options();
    let started = Instant::now();
    let mut runs: BTreeMap<(usize, &'static str), Vec<Value>> = BTreeMap::new();
    for &n in &options.sizes {
        for round in 0..rounds(&options, n) {
            // Alternate, and rotate who goes first, so that drift of the machine spreads
            // over both backends.
            for at in 0..BACKENDS.len() {
                let backend = BACKENDS[(round + at) % BACKENDS.len()];
                let result = spawn_worker(backend, n);
                eprintln!(
                    "[{:>4.0}s] N={n} round {} {}: {}",
                    started.elapsed().as_secs_f64(),
                    round + 1,
                    name(backend),
                    headline(&result)
                );
                runs.entry((n, name(backend))).or_default().push(result);
            }
        }
    }
    let summary = summarise(&options.sizes, &runs, started.elapsed().as_secs_f64());
    print_table(&summary);
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&summary).unwrap() + "\n",
    )
    .unwrap_or_else(|error| panic!("{}: {error}", options.out.display()));
    println!("\nwritten: {}", options.out.display());
}

/// Runs one backend at N in a worker process (in its own sandbox); what it measured, with
/// "error" when it failed.
fn spawn_worker(backend: FirewallBackend, n: usize) -> Value {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(WORKER, format!("{} {n}", name(backend)))
        .stderr(Stdio::inherit())
        .output()
        .expect("the worker starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().find_map(|line| line.strip_prefix("RESULT ")) {
        Some(line) => serde_json::from_str(line).unwrap(),
        None => json!({ "error": format!("the worker failed ({})", output.status) }),
    }
}

fn headline(result: &Value) -> String {
    if let Some(error) = result.get("error") {
        return format!("FAILED: {}", error.as_str().unwrap_or(""));
    }
    let ms = |key: &str| result[key].as_f64().unwrap_or(f64::NAN) * 1000.0;
    format!(
        "cold {:.1} ms ({} commits), no-op read {:.1} ms (own rules {:.1}), no-op pass {:.1} ms, +1 {:.1} ms ({} commits), flushed {:.1} ms (observe {:.1}, plan {:.1}, write {:.1})",
        ms("cold_write_s"),
        result["cold_commits"],
        ms("noop_read_s"),
        ms("noop_own_read_s"),
        ms("noop_pass_s"),
        ms("add_one_write_s"),
        result["add_one_commits"],
        ms("flushed_repair_s"),
        ms("flushed_observe_s"),
        ms("flushed_plan_s"),
        ms("flushed_write_s"),
    )
}

// ---------------------------------------------------------------------------------------
// The worker: one run of one backend in a fresh sandbox.

fn worker(job: &str) -> Result<Value, String> {
    let (backend, n) = job.split_once(' ').expect("BACKEND N");
    let backend = match backend {
        "iptables" => FirewallBackend::Iptables,
        _ => FirewallBackend::Nftables,
    };
    let n: usize = n.parse().expect("N");
    kudonet::demo::enter_sandbox().map_err(|error| format!("sandbox: {error}"))?;
    add_uplink()?;
    std::fs::create_dir_all(NETNS_DIR).map_err(|error| format!("{NETNS_DIR}: {error}"))?;
    let desired = desired_state(n, backend)?;
    let grown = desired_state(n + 1, backend)?;
    let mut result = Map::new();
    let mut dataplane = kernel_dataplane(backend)?;
    let mut generation = NfTables::open().map_err(|error| format!("nf_tables: {error}"))?;
    let mut commits = move || generation.current().unwrap_or(0);

    // The node without its instances (not timed).
    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    apply_node_steps(&mut dataplane, &plan(&desired, &observed))?;

    // Cold: the firewall actions on a node without a rule.
    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    let actions = firewall_actions(&plan(&desired, &observed));
    let before = commits();
    let started = Instant::now();
    apply(&mut dataplane, &actions)?;
    result.insert(
        "cold_write_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("cold_actions".into(), json!(actions.len()));
    result.insert("cold_commits".into(), json!(commits().wrapping_sub(before)));

    // The node as the planner would see it converged, instances included (built in
    // memory from the kernel's node): each pass below plans against it, with the firewall
    // the kernel has, so that the plan's cost is that of a converged node.
    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    let model = converged_model(&desired, observed)?;

    // No-op: the firewall read of a fresh process, and a fresh dataplane's observe + plan.
    let before = commits();
    let driver: Box<dyn FirewallDriver> = match backend {
        FirewallBackend::Iptables => Box::new(IptablesFirewall::new()),
        FirewallBackend::Nftables => Box::new(NftablesFirewall::new()),
    };
    let mut reads = Vec::new();
    let mut own_reads = Vec::new();
    let mut passes = Vec::new();
    for _ in 0..NOOP_SAMPLES {
        // The backend's own rules alone: one `iptables-save` of IPv4 `nat` and `filter`,
        // or one dump of `inet kudonet`.
        let started = Instant::now();
        match backend {
            FirewallBackend::Iptables => drop(
                Iptables::new()
                    .read_tables(&[names::NAT, names::FILTER])
                    .map_err(|error| error.to_string())?,
            ),
            FirewallBackend::Nftables => drop(
                NfTables::open()
                    .and_then(|mut generation| generation.read_kudonet())
                    .map_err(|error| format!("nf_tables: {error}"))?,
            ),
        }
        own_reads.push(started.elapsed().as_secs_f64());

        let mut generation = NfTables::open().map_err(|error| format!("nf_tables: {error}"))?;
        let started = Instant::now();
        driver
            .read(Some(&mut generation), &mut FirewallCache::default(), true)
            .map_err(|error| error.to_string())?;
        reads.push(started.elapsed().as_secs_f64());

        let model = model.clone();
        let started = Instant::now();
        let mut fresh = kernel_dataplane(backend)?;
        let observed = fresh.observe().map_err(|error| error.to_string())?;
        // Bound, so that dropping it is not timed.
        let merged = with_firewall_of(model, observed);
        let noop = plan(&desired, &merged);
        passes.push(started.elapsed().as_secs_f64());
        if !noop.is_empty() {
            return Err(format!("the no-op pass plans {:?}", noop.to_actions()));
        }
    }
    result.insert("noop_read_s".into(), json!(median(&reads)));
    result.insert("noop_own_read_s".into(), json!(median(&own_reads)));
    result.insert("noop_pass_s".into(), json!(median(&passes)));
    result.insert("noop_commits".into(), json!(commits().wrapping_sub(before)));

    // +1: one instance more (at 1000 and 5000 it also opens a new segment).
    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    let grown_plan = plan(&grown, &observed);
    apply_node_steps(&mut dataplane, &grown_plan)?;
    let actions = firewall_actions(&grown_plan);
    let before = commits();
    let started = Instant::now();
    apply(&mut dataplane, &actions)?;
    result.insert(
        "add_one_write_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    result.insert("add_one_actions".into(), json!(actions.len()));
    result.insert(
        "add_one_commits".into(),
        json!(commits().wrapping_sub(before)),
    );

    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    let model = converged_model(&grown, observed)?;

    // Flushed: every rule gone, then observed, planned and written back.
    let flush = Command::new("nft")
        .args(["flush", "ruleset"])
        .output()
        .map_err(|error| format!("nft: {error}"))?;
    if !flush.status.success() {
        return Err(format!(
            "nft flush ruleset: {}",
            String::from_utf8_lossy(&flush.stderr).trim()
        ));
    }
    let before = commits();
    let copy = model.clone();
    let started = Instant::now();
    let observed = dataplane.observe().map_err(|error| error.to_string())?;
    let observed_at = started.elapsed().as_secs_f64();
    let merged = with_firewall_of(copy, observed);
    let repair = plan(&grown, &merged);
    let planned_at = started.elapsed().as_secs_f64();
    if repair.actions().any(|action| !is_firewall(action)) {
        return Err(format!(
            "the repair plans more than the firewall: {:?}",
            repair.to_actions()
        ));
    }
    apply(&mut dataplane, repair.actions())?;
    let repaired = started.elapsed().as_secs_f64();
    result.insert("flushed_repair_s".into(), json!(repaired));
    result.insert("flushed_observe_s".into(), json!(observed_at));
    result.insert("flushed_plan_s".into(), json!(planned_at - observed_at));
    result.insert("flushed_write_s".into(), json!(repaired - planned_at));
    result.insert("flushed_actions".into(), json!(repair.steps.len()));
    result.insert(
        "flushed_commits".into(),
        json!(commits().wrapping_sub(before)),
    );

    // The firewall is the node's again: a fresh observation plans nothing for it.
    let observed = kernel_dataplane(backend)?
        .observe()
        .map_err(|error| error.to_string())?;
    let left = plan(&grown, &with_firewall_of(model, observed));
    if !left.is_empty() {
        return Err(format!(
            "after the repair the plan still has {:?}",
            left.to_actions()
        ));
    }
    Ok(Value::Object(result))
}

fn kernel_dataplane(backend: FirewallBackend) -> Result<KernelDataplane, String> {
    KernelDataplane::for_backend(Path::new(NETNS_DIR), backend).map_err(|error| error.to_string())
}

/// The node's uplink: `eth0` (203.0.113.1/24, a veth whose other end stays in the sandbox,
/// unused) with the default route, so that the rules that masquerade out of the uplink are
/// part of the node's firewall.
fn add_uplink() -> Result<(), String> {
    for command in [
        "link add eth0 type veth peer name up0",
        "link set up0 up",
        "address add 203.0.113.1/24 dev eth0",
        "link set eth0 up",
        "route add default via 203.0.113.254",
    ] {
        let status = Command::new("ip")
            .args(command.split(' '))
            .status()
            .map_err(|error| format!("ip: {error}"))?;
        if !status.success() {
            return Err(format!("ip {command}: {status}"));
        }
    }
    Ok(())
}

/// The desired state of bench/baselines/desired.sh with N instances: Node "bench"
/// (10.200.0.1/16) and instances i0.. at 10.200.x.y, each publishing 20000+i -> 80/tcp.
fn desired_state(n: usize, backend: FirewallBackend) -> Result<Desired, String> {
    let dir = Path::new(WORK).join(format!("n{n}"));
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    std::fs::write(dir.join("node.yaml"), bench_state(n)).map_err(|error| error.to_string())?;
    let (_, mut desired) = load_desired(&dir, None).map_err(|error| error.to_string())?;
    desired.firewall = backend;
    Ok(desired)
}

/// `observed` (the kernel's node, without instances) with everything `desired` plans
/// applied in memory: the node converged, as the planner sees it. Checked: it plans nothing.
fn converged_model(desired: &Desired, observed: Observed) -> Result<Observed, String> {
    let actions = plan(desired, &observed).to_actions();
    let mut memory = MemoryDataplane::new(observed);
    memory
        .apply_all(&actions)
        .map_err(|error| format!("in memory: {error}"))?;
    let model = memory.observe().map_err(|error| error.to_string())?;
    let left = plan(desired, &model);
    if !left.is_empty() {
        return Err(format!("the model still plans {:?}", left.to_actions()));
    }
    Ok(model)
}

/// `model` with the firewall of `kernel`, as the kernel observed it.
fn with_firewall_of(mut model: Observed, kernel: Observed) -> Observed {
    model.firewall = kernel.firewall;
    model.other_backend = kernel.other_backend;
    model.forward_blockers = kernel.forward_blockers;
    model.nftables = kernel.nftables;
    model.foreign_nftables = kernel.foreign_nftables;
    model.iptables_forward_drops = kernel.iptables_forward_drops;
    model
}

fn is_firewall(action: &Action) -> bool {
    matches!(
        action,
        Action::SyncTable { .. }
            | Action::PurgeOtherBackend { .. }
            | Action::SyncNftables { .. }
            | Action::DeleteNftables
    )
}

fn firewall_actions(plan: &Plan) -> Vec<Action> {
    plan.actions().filter(|a| is_firewall(a)).cloned().collect()
}

/// Applies the plan's steps for the node as a whole (bridge, segments, sysctls), but its
/// firewall: what instances need (namespaces, veths) is left out.
fn apply_node_steps(dataplane: &mut KernelDataplane, plan: &Plan) -> Result<(), String> {
    let actions: Vec<Action> = plan
        .steps
        .iter()
        .filter(|step| step.scope.is_node() && !is_firewall(&step.action))
        .map(|step| step.action.clone())
        .collect();
    apply(dataplane, &actions)
}

fn apply<'a>(
    dataplane: &mut KernelDataplane,
    actions: impl IntoIterator<Item = &'a Action>,
) -> Result<(), String> {
    for action in actions {
        dataplane
            .apply(action)
            .map_err(|error| format!("{}: {error}", action.kind()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The summary.

/// Per N and backend, the median over its runs of every figure; ratios nftables / iptables.
fn summarise(
    sizes: &[usize],
    runs: &BTreeMap<(usize, &'static str), Vec<Value>>,
    elapsed: f64,
) -> Value {
    let mut entries = Vec::new();
    for &n in sizes {
        let mut backends = Map::new();
        for backend in BACKENDS.map(name) {
            let list = runs.get(&(n, backend)).cloned().unwrap_or_default();
            let mut summary = Map::new();
            summary.insert("rounds".into(), json!(list.len()));
            let keys: std::collections::BTreeSet<String> = list
                .iter()
                .filter_map(Value::as_object)
                .flat_map(|run| run.keys().cloned())
                .filter(|key| key != "error")
                .collect();
            for key in keys {
                let values: Vec<f64> = list.iter().filter_map(|run| run[&key].as_f64()).collect();
                summary.insert(key, json!(median(&values)));
            }
            let errors: Vec<&Value> = list.iter().filter_map(|run| run.get("error")).collect();
            if !errors.is_empty() {
                summary.insert("errors".into(), json!(errors));
            }
            summary.insert("runs".into(), json!(list));
            backends.insert(backend.into(), Value::Object(summary));
        }
        let mut ratios = Map::new();
        for (key, _) in FIGURES {
            let figure = |backend: &str| backends[backend][key].as_f64().unwrap_or(f64::NAN);
            ratios.insert(key.into(), json!(figure("nftables") / figure("iptables")));
        }
        entries.push(json!({ "n": n, "backends": backends, "nftables_over_iptables": ratios }));
    }
    json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "elapsed_s": elapsed,
        "sizes": entries,
    })
}

/// One table, milliseconds: each figure for iptables, nftables and their ratio.
fn print_table(summary: &Value) {
    println!("\nThe firewall alone: medians, milliseconds; ratio nftables / iptables");
    let mut heading = String::from("| N |");
    let mut rule = String::from("| ---: |");
    for (_, title) in FIGURES {
        heading.push_str(&format!(" {title}, iptables | nftables | ratio |"));
        rule.push_str(" ---: | ---: | ---: |");
    }
    println!("{heading}\n{rule}");
    for entry in summary["sizes"].as_array().unwrap() {
        let mut line = format!("| {} |", entry["n"]);
        for (key, _) in FIGURES {
            let ms = |backend: &str| {
                entry["backends"][backend][key].as_f64().unwrap_or(f64::NAN) * 1000.0
            };
            line.push_str(&format!(
                " {} | {} | {:.2} |",
                milliseconds(ms("iptables")),
                milliseconds(ms("nftables")),
                entry["nftables_over_iptables"][key]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ));
        }
        println!("{line}");
    }
    println!("\nnf_tables commits a write (medians: cold, +1, flushed) and actions:");
    for entry in summary["sizes"].as_array().unwrap() {
        for backend in BACKENDS.map(name) {
            let figures = &entry["backends"][backend];
            println!(
                "  N={:<5} {backend:<8} commits {} / {} / {}, no-op {}; actions {} / {} / {}{}",
                entry["n"],
                figures["cold_commits"],
                figures["add_one_commits"],
                figures["flushed_commits"],
                figures["noop_commits"],
                figures["cold_actions"],
                figures["add_one_actions"],
                figures["flushed_actions"],
                figures
                    .get("errors")
                    .map_or(String::new(), |errors| format!(", ERRORS: {errors}")),
            );
        }
    }
}

/// Three significant digits, at least one decimal.
fn milliseconds(value: f64) -> String {
    match value {
        v if !v.is_finite() => "-".into(),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}
