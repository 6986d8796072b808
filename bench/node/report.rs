//! The summary of the runs (medians per N and system, ratios) and the printed tables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::SYSTEMS;
use crate::kudonet_run::REPAIR_K;

/// What is known of one system at one N: its runs, or why it was not run.
pub enum Runs {
    Ran(Vec<Value>),
    Skipped(String),
}

pub fn floats(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().filter_map(Value::as_f64).collect(),
        Value::Number(number) => number.as_f64().into_iter().collect(),
        _ => Vec::new(),
    }
}

pub use crate::shared::median;

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

fn total_of(runs: &[Value], key: &str) -> f64 {
    runs.iter().flat_map(|run| floats(&run[key])).sum()
}

/// One system at one N: medians over its runs of every figure they hold (the runs of a
/// failed round included, for what they measured before failing), the checks, the errors.
fn system_summary(system: &str, runs: &Runs) -> Value {
    let runs = match runs {
        Runs::Skipped(reason) => return json!({ "skipped": reason }),
        Runs::Ran(runs) => runs,
    };
    let mut summary = Map::new();
    summary.insert("rounds".into(), json!(runs.len()));
    let keys: std::collections::BTreeSet<&String> = runs
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|run| run.keys())
        .collect();
    for key in keys {
        if !matches!(key.as_str(), "error" | "verified" | "plan_empty") {
            summary.insert(key.clone(), json!(median_of(runs, key)));
        }
    }
    // The packet check (and the plan check of the baselines): true, or the first failure.
    for check in ["verified", "plan_empty"] {
        let results: Vec<&Value> = runs.iter().filter_map(|run| run.get(check)).collect();
        if !results.is_empty() {
            let failed = results.iter().find(|value| ***value != json!(true));
            summary.insert(check.into(), failed.map_or(json!(true), |v| (*v).clone()));
        }
    }
    let errors: Vec<&Value> = runs.iter().filter_map(|run| run.get("error")).collect();
    if !errors.is_empty() {
        summary.insert("errors".into(), json!(errors));
    }
    if system.starts_with("kudonet") {
        for key in [
            "noop_apply_actions",
            "noop_apply_restores",
            "noop_apply_processes",
            "noop_apply_commits",
            "resync_actions",
            "resync_restores",
            "resync_saves",
            "resync_processes",
        ] {
            if runs.iter().any(|run| run.get(key).is_some()) {
                summary.insert(format!("{key}_total"), json!(total_of(runs, key)));
            }
        }
        let all_repairs: Vec<f64> = runs
            .iter()
            .flat_map(|run| floats(&run["repair_1_ms"]))
            .collect();
        summary.insert("repair_1_ms".into(), json!(median(&all_repairs)));
        summary.insert(
            "run_rss_kb_max".into(),
            json!(
                max_of(runs, "run_rss_kb")
                    .max(max_of(runs, "repair_run_rss_kb"))
                    .max(max_of(runs, "cold_run_rss_kb"))
            ),
        );
    }
    Value::Object(summary)
}

pub fn summarise(
    sizes: &[usize],
    runs: &BTreeMap<(usize, &'static str), Runs>,
    elapsed: Duration,
) -> Value {
    let mut entries = Vec::new();
    for &n in sizes {
        let mut systems = Map::new();
        let mut all_runs = Map::new();
        for system in SYSTEMS {
            if let Some(known) = runs.get(&(n, system)) {
                systems.insert(system.into(), system_summary(system, known));
                if let Runs::Ran(list) = known {
                    all_runs.insert(system.into(), json!(list));
                }
            }
        }
        let figure = |system: &str, key: &str| {
            systems
                .get(system)
                .and_then(|summary| summary[key].as_f64())
                .unwrap_or(f64::NAN)
        };
        let cold = figure("kudonet", "build_s");
        let teardown = figure("kudonet", "teardown_s");
        let ratios = json!({
            "cold_over_floor": cold / figure("floor", "build_s"),
            "per_step_over_cold": figure("per-step", "build_s") / cold,
            "netavark_over_cold": figure("netavark", "build_s") / cold,
            "cni_over_cold": figure("cni", "build_s") / cold,
            "remove_half_over_floor": figure("kudonet", "remove_half_s") / figure("floor", "remove_half_s"),
            "teardown_over_floor": teardown / figure("floor", "teardown_s"),
            "netavark_removal_over_teardown": figure("netavark", "teardown_s") / teardown,
            "cni_removal_over_teardown": figure("cni", "teardown_s") / teardown,
            "noop_apply_over_cold": figure("kudonet", "noop_apply_s") / cold,
            "resync_over_cold": figure("kudonet", "resync_pass_s") / cold,
            "dual_over_ipv4_cold": figure("kudonet-dual", "build_s") / cold,
            "dual_over_ipv4_noop_apply": figure("kudonet-dual", "noop_apply_s") / figure("kudonet", "noop_apply_s"),
            "dual_over_ipv4_remove_half": figure("kudonet-dual", "remove_half_s") / figure("kudonet", "remove_half_s"),
            "dual_over_ipv4_teardown": figure("kudonet-dual", "teardown_s") / teardown,
        });
        // The nftables backend over the iptables one, figure by figure.
        let mut ratios = ratios;
        for key in NFT_FIGURES.iter().map(|(key, _)| *key) {
            ratios[format!("nft_over_iptables_{key}")] =
                json!(figure("kudonet-nft", key) / figure("kudonet", key));
        }
        entries.push(json!({ "n": n, "systems": systems, "ratios": ratios, "runs": all_runs }));
    }
    json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "elapsed_s": elapsed.as_secs_f64(),
        "sizes": entries,
        "growth_per_instance": growth(&entries),
    })
}

/// Per-instance cost at the largest N kudonet built over the smallest N >= 100 (fixed
/// costs dominate below); 1.00 is flat.
fn growth(entries: &[Value]) -> Value {
    let per_instance = |entry: &Value, system: &str, key: &str| {
        entry["systems"][system][key].as_f64().unwrap_or(f64::NAN) / entry["n"].as_f64().unwrap()
    };
    let built: Vec<&Value> = entries
        .iter()
        .filter(|entry| per_instance(entry, "kudonet", "build_s").is_finite())
        .collect();
    let reference = built
        .iter()
        .find(|entry| entry["n"].as_u64().unwrap() >= 100)
        .or(built.first());
    let Some((small, large)) = reference
        .zip(built.last())
        .filter(|(s, l)| s["n"] != l["n"])
    else {
        return Value::Null;
    };
    let ratio = |system: &str, key: &str| {
        json!(per_instance(large, system, key) / per_instance(small, system, key))
    };
    json!({
        "from_n": small["n"], "to_n": large["n"],
        "kudonet_cold": ratio("kudonet", "build_s"),
        "floor": ratio("floor", "build_s"),
        "kudonet_resync": ratio("kudonet", "resync_pass_s"),
        "kudonet_teardown": ratio("kudonet", "teardown_s"),
        "floor_teardown": ratio("floor", "teardown_s"),
    })
}

/// The figures of kudonet-nft compared with kudonet's (iptables), and their heading.
const NFT_FIGURES: [(&str, &str); 9] = [
    ("build_s", "cold"),
    ("noop_apply_s", "no-op"),
    ("flush_repair_s", "flushed"),
    ("add_one_s", "+1"),
    ("remove_one_s", "-1"),
    ("remove_half_s", "half"),
    ("teardown_s", "tdown"),
    ("resync_pass_s", "resync"),
    ("repair_1_ms", "repair1"),
];

/// A cell of `system`'s figure `key`: the number, "-" when the system was not run at this N,
/// "FAIL" when it ran without producing the figure.
fn cell(entry: &Value, system: &str, key: &str, precision: usize) -> String {
    let summary = &entry["systems"][system];
    match summary[key].as_f64() {
        Some(value) => format!("{value:.precision$}"),
        None if summary.is_null() || summary.get("skipped").is_some() => "-".into(),
        None if summary.get("errors").is_some() => "FAIL".into(),
        None => "?".into(),
    }
}

fn ratio(entry: &Value, key: &str) -> String {
    match entry["ratios"][key].as_f64() {
        Some(value) => format!("{value:.2}"),
        None => "-".into(),
    }
}

/// kudonet with `--firewall nftables` against kudonet with iptables, run side by side:
/// seconds of both for the first four figures, then the ratios of all.
fn print_nftables(entries: &[Value]) {
    let ran = |entry: &&Value| entry["systems"]["kudonet-nft"]["rounds"].is_number();
    if !entries.iter().any(|entry| ran(&entry)) {
        return;
    }
    println!(
        "\nnftables backend (kudonet-nft) against iptables (kudonet), seconds: cold apply, no-op apply, apply after `nft flush ruleset`, apply of one instance more"
    );
    print!("{:>5} |", "N");
    for (_, heading) in &NFT_FIGURES[..4] {
        print!(
            " {:>8} {:>8} {:>6} |",
            format!("{heading} ipt"),
            "nft",
            "n/i"
        );
    }
    println!();
    for entry in entries.iter().filter(ran) {
        print!("{:>5} |", entry["n"].as_u64().unwrap_or(0));
        for (key, _) in &NFT_FIGURES[..4] {
            print!(
                " {:>8} {:>8} {:>6} |",
                cell(entry, "kudonet", key, 3),
                cell(entry, "kudonet-nft", key, 3),
                ratio(entry, &format!("nft_over_iptables_{key}")),
            );
        }
        println!();
    }
    println!("nftables / iptables, all figures (the medians' ratio):");
    print!("{:>5} |", "N");
    for (_, heading) in &NFT_FIGURES {
        print!(" {heading:>7}");
    }
    println!();
    for entry in entries.iter().filter(ran) {
        print!("{:>5} |", entry["n"].as_u64().unwrap_or(0));
        for (key, _) in &NFT_FIGURES {
            print!(" {:>7}", ratio(entry, &format!("nft_over_iptables_{key}")));
        }
        println!();
    }
    for entry in entries.iter().filter(ran) {
        let count = |system: &str, key: &str| cell(entry, system, key, 0);
        println!(
            "N={}: no-op apply, processes started and ruleset commits in all runs: iptables {} and {} ({} runs), nftables {} and {} ({} runs); controller's resyncs, processes: iptables {}, nftables {}; commits (median) of +1: iptables {}, nftables {}; of the flushed ruleset's repair: iptables {}, nftables {}",
            entry["n"].as_u64().unwrap_or(0),
            count("kudonet", "noop_apply_processes_total"),
            count("kudonet", "noop_apply_commits_total"),
            count("kudonet", "rounds"),
            count("kudonet-nft", "noop_apply_processes_total"),
            count("kudonet-nft", "noop_apply_commits_total"),
            count("kudonet-nft", "rounds"),
            count("kudonet", "resync_processes_total"),
            count("kudonet-nft", "resync_processes_total"),
            count("kudonet", "add_one_commits"),
            count("kudonet-nft", "add_one_commits"),
            count("kudonet", "flush_repair_commits"),
            count("kudonet-nft", "flush_repair_commits"),
        );
    }
}

pub fn print_tables(report: &Value) {
    let entries = report["sizes"].as_array().unwrap();
    let n_of = |entry: &Value| entry["n"].as_u64().unwrap_or(0);

    println!(
        "\nCold build of N instances (seconds; namespaces created inside the timing for every system)"
    );
    println!(
        "{:>5} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7}",
        "N", "kudonet", "floor", "per-step", "netavark", "CNI", "k/floor", "ps/k", "nv/k", "cni/k"
    );
    for entry in entries {
        println!(
            "{:>5} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7}",
            n_of(entry),
            cell(entry, "kudonet", "build_s", 3),
            cell(entry, "floor", "build_s", 3),
            cell(entry, "per-step", "build_s", 3),
            cell(entry, "netavark", "build_s", 3),
            cell(entry, "cni", "build_s", 3),
            ratio(entry, "cold_over_floor"),
            ratio(entry, "per_step_over_cold"),
            ratio(entry, "netavark_over_cold"),
            ratio(entry, "cni_over_cold"),
        );
    }

    println!("\nRemoval (seconds, until the kernel has removed the host veths)");
    println!(
        "{:>5} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} {:>7}",
        "N",
        "k half",
        "fl half",
        "k/floor",
        "k tdown",
        "fl tdown",
        "k/floor",
        "netavark",
        "CNI",
        "nv/k",
        "cni/k"
    );
    for entry in entries {
        println!(
            "{:>5} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7} {:>7}",
            n_of(entry),
            cell(entry, "kudonet", "remove_half_s", 3),
            cell(entry, "floor", "remove_half_s", 3),
            ratio(entry, "remove_half_over_floor"),
            cell(entry, "kudonet", "teardown_s", 3),
            cell(entry, "floor", "teardown_s", 3),
            ratio(entry, "teardown_over_floor"),
            cell(entry, "netavark", "teardown_s", 3),
            cell(entry, "cni", "teardown_s", 3),
            ratio(entry, "netavark_removal_over_teardown"),
            ratio(entry, "cni_removal_over_teardown"),
        );
    }

    println!(
        "\nDual stack: kudonet with IPv4 and IPv6 on every instance, against IPv4 only (seconds)"
    );
    println!(
        "{:>5} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
        "N",
        "cold v4",
        "dual",
        "d/v4",
        "no-op v4",
        "dual",
        "d/v4",
        "half v4",
        "dual",
        "d/v4",
        "tdown v4",
        "dual",
        "d/v4"
    );
    for entry in entries {
        if entry["systems"]["kudonet-dual"]["build_s"].is_null() {
            continue;
        }
        println!(
            "{:>5} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>8} {:>6}",
            n_of(entry),
            cell(entry, "kudonet", "build_s", 3),
            cell(entry, "kudonet-dual", "build_s", 3),
            ratio(entry, "dual_over_ipv4_cold"),
            cell(entry, "kudonet", "noop_apply_s", 3),
            cell(entry, "kudonet-dual", "noop_apply_s", 3),
            ratio(entry, "dual_over_ipv4_noop_apply"),
            cell(entry, "kudonet", "remove_half_s", 3),
            cell(entry, "kudonet-dual", "remove_half_s", 3),
            ratio(entry, "dual_over_ipv4_remove_half"),
            cell(entry, "kudonet", "teardown_s", 3),
            cell(entry, "kudonet-dual", "teardown_s", 3),
            ratio(entry, "dual_over_ipv4_teardown"),
        );
    }

    print_nftables(entries);

    println!("\nkudonet on a converged node, repairs, memory");
    println!(
        "{:>5} | {:>9} {:>9} {:>6} | {:>10} {:>10} | {:>7}",
        "N", "no-op s", "resync s", "%cold", "repair1 ms", "repairK ms", "RSS MB"
    );
    for entry in entries {
        let k = &entry["systems"]["kudonet"];
        let share = entry["ratios"]["noop_apply_over_cold"]
            .as_f64()
            .unwrap_or(f64::NAN)
            .max(
                entry["ratios"]["resync_over_cold"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            );
        let share = if share.is_finite() {
            format!("{:.1}%", 100.0 * share)
        } else {
            "-".into()
        };
        let rss = k["run_rss_kb_max"].as_f64().map(|kb| kb / 1024.0);
        println!(
            "{:>5} | {:>9} {:>9} {:>6} | {:>10} {:>10} | {:>7}",
            n_of(entry),
            cell(entry, "kudonet", "noop_apply_s", 3),
            cell(entry, "kudonet", "resync_pass_s", 3),
            share,
            cell(entry, "kudonet", "repair_1_ms", 1),
            cell(entry, "kudonet", "repair_k_ms", 1),
            rss.map_or("-".into(), |mb| format!("{mb:.1}")),
        );
    }

    println!();
    for entry in entries {
        let n = n_of(entry);
        let k = &entry["systems"]["kudonet"];
        if k["noop_apply_actions_total"].is_number() {
            println!(
                "N={n}: no-op apply {} actions, {} iptables-restore, {} iptables-save a run; resync {} actions, {} iptables-restore, {} iptables-save; repair of {} veths includes {} ms of the kernel deleting them",
                cell(entry, "kudonet", "noop_apply_actions_total", 0),
                cell(entry, "kudonet", "noop_apply_restores_total", 0),
                cell(entry, "kudonet", "noop_apply_saves", 0),
                cell(entry, "kudonet", "resync_actions_total", 0),
                cell(entry, "kudonet", "resync_restores_total", 0),
                cell(entry, "kudonet", "resync_saves_total", 0),
                REPAIR_K.min(n as usize),
                cell(entry, "kudonet", "repair_k_delete_ms", 1),
            );
        }
        for system in SYSTEMS {
            let summary = &entry["systems"][system];
            if let Some(reason) = summary.get("skipped") {
                println!(
                    "N={n} {system}: not run ({})",
                    reason.as_str().unwrap_or("")
                );
                continue;
            }
            if let Some(check) = summary.get("verified") {
                let plan = match summary.get("plan_empty") {
                    Some(Value::Bool(true)) => ", kudonet plan: No changes.",
                    Some(_) => ", kudonet plan found DIFFERENCES",
                    None => "",
                };
                match check {
                    Value::Bool(true) => println!("N={n} {system}: node checked (packets{plan})"),
                    reason => println!("N={n} {system}: CHECK FAILED: {reason}{plan}"),
                }
            }
            for error in summary["errors"].as_array().into_iter().flatten() {
                println!("N={n} {system}: FAILED: {}", error.as_str().unwrap_or(""));
            }
        }
    }
    let growth = &report["growth_per_instance"];
    if !growth.is_null() {
        let f = |key: &str| growth[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "growth of per-instance cost from N={} to N={}: kudonet cold x{:.2}, floor x{:.2}, resync x{:.2}, teardown x{:.2}, floor teardown x{:.2} (1.00 = flat)",
            growth["from_n"],
            growth["to_n"],
            f("kudonet_cold"),
            f("floor"),
            f("kudonet_resync"),
            f("kudonet_teardown"),
            f("floor_teardown"),
        );
    }
}
