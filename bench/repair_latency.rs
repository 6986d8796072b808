//! Repair latency of `kudonet run`: from a kernel event (an instance's host veth deleted
//! behind kudonet's back) to the node converged again, with a one-minute resync so that only
//! the event can explain a fast repair. Side by side, the baseline: the same repair by
//! running `kudonet apply` once the deletion is noticed (an operator or cron loop).
//!
//! Needs root; runs in a throwaway network and mount namespace it creates for itself.
//!   cargo bench --bench repair_latency [-- ROUNDS]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kudonet::kernel::netlink::Netlink;
use kudonet::names;

#[path = "../tests/common/mod.rs"]
mod common;

use common::KUDONET;
use common::controller::terminate;
const INSTANCES: usize = 20;

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(30);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("repair_latency: needs root (it creates namespaces); skipped");
        return;
    }
    kudonet::demo::enter_sandbox().expect("a throwaway namespace");
    let dir = Path::new("/run/kudonet-bench");
    std::fs::create_dir_all(dir).unwrap();
    let mut state = String::from("kind: Node\nname: bench\ncidr: 10.0.0.1/24\n");
    for index in 0..INSTANCES {
        state.push_str(&format!(
            "---\nkind: Instance\nname: i{index}\naddress: 10.0.0.{}/24\n",
            index + 2
        ));
    }
    std::fs::write(dir.join("node.yaml"), state).unwrap();

    let mut netlink = Netlink::open().unwrap();
    let mut controller = start_controller(dir);
    wait_for(
        &mut netlink,
        &names::host_interface_name(&format!("i{}", INSTANCES - 1)),
        Duration::from_secs(30),
    )
    .expect("the controller builds the node");
    let by_event = measure(&mut netlink, rounds, |_| {});
    terminate(&mut controller);

    let by_apply = measure(&mut netlink, rounds, |_| {
        // -q: no progress line drawn on the terminal the bench runs in, nor timed.
        let status = Command::new(KUDONET)
            .args(["apply", "-q"])
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });

    println!("repair of a deleted veth, {INSTANCES} instances, {rounds} rounds (milliseconds)");
    println!("{:<34} {:>8} {:>8} {:>8}", "", "median", "p90", "max");
    report("kudonet run (kernel event)", &by_event);
    report("kudonet apply after the deletion", &by_apply);
    println!(
        "ratio run/apply (median): {:.2}",
        median(&by_event).as_secs_f64() / median(&by_apply).as_secs_f64()
    );
}

fn start_controller(dir: &Path) -> Child {
    Command::new(KUDONET)
        .args(["run", "--resync", "60", "-q"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("kudonet run starts")
}

/// Deletes a host veth `rounds` times, lets `repair` run, and times until it is back.
fn measure(netlink: &mut Netlink, rounds: usize, mut repair: impl FnMut(&str)) -> Vec<Duration> {
    (0..rounds)
        .map(|round| {
            let name = names::host_interface_name(&format!("i{}", round % INSTANCES));
            let index = netlink
                .link_index(&name)
                .expect("the veth exists before the round");
            let started = Instant::now();
            netlink.delete_link(index, &name).unwrap();
            repair(&name);
            wait_for(netlink, &name, Duration::from_secs(10)).expect("repaired");
            started.elapsed()
        })
        .collect()
}

fn wait_for(netlink: &mut Netlink, name: &str, limit: Duration) -> Option<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if netlink.link_index(name).is_ok() {
            return Some(());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}

fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50)
}

fn percentile(samples: &[Duration], percent: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

fn report(label: &str, samples: &[Duration]) {
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{label:<34} {:>8.1} {:>8.1} {:>8.1}",
        ms(median(samples)),
        ms(percentile(samples, 90)),
        ms(*samples.iter().max().unwrap())
    );
}
