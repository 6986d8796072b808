//! Soak: `kudonet run` on a node of 500 instances while the desired-state directory changes
//! 1,000 times in a minute (instances added, modified and removed, each file written the way
//! agents and editors do: a temp file renamed over the old one). At the end the node must
//! match exactly the final directory, with nothing lost on the way: `kudonet plan` says
//! `No changes.`, the namespaces are the files' instances, the status document shows each of
//! them Ready. The resync is set far beyond the run, so only file events can explain it.
//! Reports the controller's peak RSS (VmHWM), its CPU time (/proc/PID/stat) and how many
//! reconciles it ran (its /metrics).
//!
//! Needs root; runs in a throwaway network and mount namespace it creates for itself.
//!   cargo bench --bench soak [-- INSTANCES CHANGES SECONDS]     (default 500 1000 60)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::KUDONET;
use common::controller::{http_get, is_ready, metric_samples as metric_values, terminate};
const ROOT: &str = "/run/kudonet-soak";
const METRICS: &str = "127.0.0.1:9101";
/// Host port of instance number `id` when it publishes one: unique, so never a clash.
const FIRST_HOST_PORT: u32 = 20000;
/// The node's subnet is 10.0.0.0/21: 2,045 instance addresses.
const SLOTS: u32 = 2000;

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let instances = numbers.first().copied().unwrap_or(500);
    let changes = numbers.get(1).copied().unwrap_or(1000);
    let seconds = numbers.get(2).copied().unwrap_or(60) as u64;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("soak: needs root (it creates namespaces); skipped");
        return;
    }
    kudonet::demo::enter_sandbox().expect("a throwaway namespace");
    let dir = Path::new(ROOT).join("state");
    fs::create_dir_all(dir.join("instances")).unwrap();
    fs::write(
        dir.join("node.yaml"),
        "kind: Node\nname: soak\ncidr: 10.0.0.1/21\n",
    )
    .unwrap();

    let mut state = State::new(dir.clone(), 0x5eed_50a4);
    for _ in 0..instances {
        state.add();
    }

    let started = Instant::now();
    let mut controller = start_controller(&dir);
    let pid = controller.id();
    wait_until(
        Duration::from_secs(600),
        ready,
        "the controller builds the node",
    );
    let initial = started.elapsed();
    let before = Usage::of(pid);

    println!(
        "soak: {instances} instances built in {:.1}s; now {changes} changes in {seconds}s",
        initial.as_secs_f64()
    );
    let churn_started = Instant::now();
    let interval = Duration::from_secs(seconds) / changes as u32;
    let mut counts = BTreeMap::<&str, usize>::new();
    for change in 0..changes {
        let deadline = churn_started + interval * change as u32;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        *counts.entry(state.change(instances)).or_default() += 1;
    }
    let churn = churn_started.elapsed();

    // The controller must get there by itself (the resync is an hour away).
    let last_change = Instant::now();
    wait_until(
        Duration::from_secs(300),
        || plan_is_empty(&dir),
        "the node converges to the final directory",
    );
    let settle = last_change.elapsed();
    let after = Usage::of(pid);

    let expected: BTreeSet<String> = state
        .instances
        .keys()
        .map(|name| kudonet::names::namespace_name(name))
        .collect();
    let namespaces: BTreeSet<String> = fs::read_dir("/run/netns")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("kudo-"))
        .collect();
    assert_eq!(
        namespaces.difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "namespaces the final directory does not have"
    );
    assert_eq!(
        expected.difference(&namespaces).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "instances of the final directory without a namespace"
    );
    // The status document is rewritten after each pass; the last one may still be running.
    wait_until(
        Duration::from_secs(60),
        || status_all_ready(state.instances.len()),
        "the status document shows every instance Ready",
    );
    let metrics = fetch_metrics();
    stop(&mut controller);

    let reconciles = metric_values(&metrics, "kudonet_reconciles_total");
    let actions: f64 = metric_values(&metrics, "kudonet_actions_total")
        .values()
        .sum();
    println!(
        "changes: {} ({:.1} per second), final directory: {} instances",
        counts
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect::<Vec<_>>()
            .join(", "),
        changes as f64 / churn.as_secs_f64(),
        state.instances.len()
    );
    println!(
        "converged {:.2}s after the last change: plan says No changes., {} namespaces match, all Ready",
        settle.as_secs_f64(),
        namespaces.len()
    );
    println!(
        "reconciles: {} ({}), actions applied: {actions}",
        reconciles.values().sum::<f64>(),
        reconciles
            .iter()
            .map(|(labels, count)| format!("{labels} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "controller peak RSS (VmHWM): {:.1} MiB, RSS at the end: {:.1} MiB",
        after.hwm_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0
    );
    println!(
        "controller CPU: initial build {:.2}s user + {:.2}s system; churn and settle ({:.0}s) {:.2}s user + {:.2}s system; its children (iptables) {:.2}s",
        before.user,
        before.system,
        (churn + settle).as_secs_f64(),
        after.user - before.user,
        after.system - before.system,
        after.children
    );
}

/// The directory as the benchmark wrote it, and a deterministic generator of changes.
struct State {
    dir: PathBuf,
    rng: u64,
    next_id: u32,
    /// By name: the slot of its address, its id (for its host port), its instance port.
    instances: BTreeMap<String, Instance>,
    free_slots: BTreeSet<u32>,
}

#[derive(Clone)]
struct Instance {
    id: u32,
    slot: u32,
    instance_port: Option<u16>,
}

impl State {
    fn new(dir: PathBuf, seed: u64) -> State {
        State {
            dir,
            rng: seed,
            next_id: 0,
            instances: BTreeMap::new(),
            free_slots: (0..SLOTS).collect(),
        }
    }

    /// xorshift64*: deterministic, good enough to pick changes.
    fn random(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }

    fn take_slot(&mut self) -> u32 {
        let index = self.random(self.free_slots.len() as u64) as usize;
        let slot = *self.free_slots.iter().nth(index).unwrap();
        self.free_slots.remove(&slot);
        slot
    }

    fn random_port(&mut self) -> Option<u16> {
        (self.random(2) == 0).then(|| 1 + self.random(65535) as u16)
    }

    fn add(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let instance = Instance {
            id,
            slot: self.take_slot(),
            instance_port: self.random_port(),
        };
        let name = format!("s{id}");
        self.write(&name, &instance);
        self.instances.insert(name, instance);
    }

    fn pick(&mut self) -> String {
        let index = self.random(self.instances.len() as u64) as usize;
        self.instances.keys().nth(index).unwrap().clone()
    }

    /// One change, keeping the node around `target` instances.
    fn change(&mut self, target: usize) -> &'static str {
        let count = self.instances.len();
        match self.random(3) {
            0 if count < target + target / 10 => {
                self.add();
                "added"
            }
            1 if count > target - target / 10 => {
                let name = self.pick();
                let instance = self.instances.remove(&name).unwrap();
                self.free_slots.insert(instance.slot);
                fs::remove_file(self.path(&name)).unwrap();
                "removed"
            }
            _ => {
                let name = self.pick();
                let mut instance = self.instances[&name].clone();
                if self.random(2) == 0 {
                    self.free_slots.insert(instance.slot);
                    instance.slot = self.take_slot();
                } else {
                    instance.instance_port = match instance.instance_port {
                        Some(_) if self.random(2) == 0 => None,
                        _ => Some(1 + self.random(65535) as u16),
                    };
                }
                self.write(&name, &instance);
                self.instances.insert(name, instance);
                "modified"
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join("instances").join(format!("{name}.yaml"))
    }

    /// Writes an instance's file as agents do: a hidden temp file, renamed over the old one.
    fn write(&self, name: &str, instance: &Instance) {
        let host = instance.slot + 2;
        let mut text = format!(
            "kind: Instance\nname: {name}\naddress: 10.0.{}.{}\n",
            host / 256,
            host % 256
        );
        if let Some(port) = instance.instance_port {
            text.push_str(&format!(
                "ports:\n  - hostPort: {}\n    instancePort: {port}\n",
                FIRST_HOST_PORT + instance.id
            ));
        }
        let temp = self.dir.join("instances").join(format!(".{name}.yaml.tmp"));
        fs::write(&temp, text).unwrap();
        fs::rename(&temp, self.path(name)).unwrap();
    }
}

fn start_controller(dir: &Path) -> Child {
    let log = fs::File::create(Path::new(ROOT).join("controller.log")).unwrap();
    Command::new(KUDONET)
        .args(["run", "--resync", "3600", "-q", "--metrics-addr", METRICS])
        .arg("--status-file")
        .arg(Path::new(ROOT).join("status.json"))
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("kudonet run starts")
}

fn stop(controller: &mut Child) {
    let status = terminate(controller);
    assert!(
        status.success(),
        "the controller exits 0 on SIGTERM: {status}"
    );
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            let log =
                fs::read_to_string(Path::new(ROOT).join("controller.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "soak: {what}: not within {limit:?}; controller log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fetch_metrics() -> String {
    http_get(METRICS, "/metrics")
        .expect("the controller serves /metrics")
        .1
}

fn ready() -> bool {
    is_ready(METRICS)
}

fn plan_is_empty(dir: &Path) -> bool {
    let output = Command::new(KUDONET)
        .args(["plan", "-q"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains("No changes.")
}

fn status_all_ready(count: usize) -> bool {
    let Ok(text) = fs::read_to_string(Path::new(ROOT).join("status.json")) else {
        return false;
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let instances = status["instances"].as_array().cloned().unwrap_or_default();
    instances.len() == count && instances.iter().all(|i| i["phase"] == "Ready")
}

/// A process's memory and CPU time, from /proc.
struct Usage {
    hwm_kib: u64,
    rss_kib: u64,
    user: f64,
    system: f64,
    /// CPU time of its waited-for children (iptables-restore, …).
    children: f64,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces), from field 3 (state) on.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks = clock_ticks();
        let seconds = |field: usize| fields[field - 3].parse::<f64>().unwrap() / ticks;
        Usage {
            hwm_kib: kib("VmHWM:"),
            rss_kib: kib("VmRSS:"),
            user: seconds(14),
            system: seconds(15),
            children: seconds(16) + seconds(17),
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
