//! What the bench itself does in the sandbox around the systems it times, the same for all:
//! the instances of bench/baselines/desired.sh, namespaces added and deleted in one
//! `ip -batch`, host veths counted until the kernel has removed them, and the packet check
//! that a built node works.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kudonet::kernel::netlink::Netlink;
use kudonet::probe::{self, Place};
use kudonet::spec::Protocol;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use serde_json::{Value, json};

/// Where `ip netns add` mounts namespaces (the sandbox's private /run).
pub const NETNS_DIR: &str = "/run/netns";
/// The node's gateway address in every system's node (desired.sh: 10.200.0.1/16).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The port each instance serves on (desired.sh: hostPort 20000+i -> 80/tcp).
pub const INSTANCE_PORT: u16 = 80;

/// One instance as desired.sh lists it in WORK/instances.tsv.
pub struct Instance {
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    pub host_port: u16,
}

/// The instances of WORK/instances.tsv, i0 to i(N-1) in that order.
pub fn instances(work: &Path) -> Vec<Instance> {
    let text = std::fs::read_to_string(work.join("instances.tsv")).expect("desired.sh wrote it");
    let mut instances: Vec<Instance> = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let address = fields[4].split('/').next().unwrap();
            Instance {
                name: fields[0].to_string(),
                namespace: fields[1].to_string(),
                address: address.parse().expect("an IPv4 address"),
                host_port: fields[5].parse().expect("a port"),
            }
        })
        .collect();
    instances.sort_by_key(|instance| instance.name[1..].parse::<usize>().unwrap());
    instances
}

/// Runs `ip -batch -` with `lines` on its standard input.
pub fn ip_batch(lines: impl Iterator<Item = String>) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("ip: {error}"))?;
    let mut input = String::new();
    for line in lines {
        input.push_str(&line);
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|error| format!("ip -batch: {error}"))?;
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch failed ({}): {}",
            output.status,
            first_lines(&String::from_utf8_lossy(&output.stderr), 3)
        ))
    }
}

/// Creates the namespaces of `instances` in one `ip -batch`, as a runtime creates its
/// containers' namespaces before it asks for their network.
pub fn add_namespaces(instances: &[Instance]) -> Result<(), String> {
    ip_batch(
        instances
            .iter()
            .map(|instance| format!("netns add {}", instance.namespace)),
    )
}

/// Unmounts the namespaces of `instances` in one `ip -batch`: the kernel then destroys
/// each namespace, with its end of every veth pair, once nothing holds it.
pub fn delete_namespaces(instances: &[Instance]) -> Result<(), String> {
    ip_batch(
        instances
            .iter()
            .map(|instance| format!("netns del {}", instance.namespace)),
    )
}

/// Host veths in the sandbox: veths whose peer is in another namespace (an instance's),
/// and the index of the bridge each is attached to, if any.
pub fn host_veths(netlink: &mut Netlink) -> Vec<Option<u32>> {
    netlink
        .dump_links(|link: &LinkMessage| {
            let mut veth = false;
            let mut peer_elsewhere = false;
            let mut master = None;
            for attribute in &link.attributes {
                match attribute {
                    LinkAttribute::LinkInfo(infos) => {
                        veth = infos
                            .iter()
                            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)))
                    }
                    LinkAttribute::LinkNetNsId(_) => peer_elsewhere = true,
                    LinkAttribute::Controller(index) => master = Some(*index),
                    _ => {}
                }
            }
            (veth && peer_elsewhere).then_some(master)
        })
        .expect("the sandbox's links can be read")
}

/// Waits until at most `remaining` host veths are left: the kernel removes a deleted
/// namespace's veth pairs asynchronously, and a removal is done only when they are gone.
/// Between two reads it sleeps as long as a read took (at least 1 ms), so that reading
/// thousands of links does not take a core from the kernel's cleanup.
pub fn wait_host_veths(netlink: &mut Netlink, remaining: usize) -> Result<(), String> {
    let started = Instant::now();
    let limit = Duration::from_secs(120);
    loop {
        let read = Instant::now();
        let left = host_veths(netlink).len();
        if left <= remaining {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{left} host veths still there {limit:?} after the removal (expected at most {remaining})"
            ));
        }
        std::thread::sleep(read.elapsed().max(Duration::from_millis(1)));
    }
}

/// The packet check of [`check_node`] as a result: true, or the reason the node does not
/// work (also printed).
pub fn verdict(instances: &[Instance]) -> Value {
    match check_node(instances) {
        Ok(()) => json!(true),
        Err(reason) => {
            eprintln!("node: the check failed: {reason}");
            json!(reason)
        }
    }
}

/// Checks that a built node of `instances` works, with real packets to an echo server in
/// the last instance: from the first instance directly (instance to instance over the
/// bridge), and from the node to the gateway address at the last instance's published port
/// (DNAT). Also that every instance has its host veth on a bridge. The reason when not.
fn check_node(instances: &[Instance]) -> Result<(), String> {
    let mut netlink = Netlink::open().map_err(|error| error.to_string())?;
    let attached = host_veths(&mut netlink)
        .iter()
        .filter(|master| master.is_some())
        .count();
    if attached != instances.len() {
        return Err(format!(
            "{attached} host veths on a bridge for {} instances",
            instances.len()
        ));
    }
    let (first, last) = (&instances[0], &instances[instances.len() - 1]);
    let place = |instance: &Instance| Place::netns(Path::new(NETNS_DIR).join(&instance.namespace));
    let _server = probe::serve(
        &place(last),
        Protocol::Tcp,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, INSTANCE_PORT),
    )
    .map_err(|error| format!("echo server in {}: {error}", last.namespace))?;
    let direct = SocketAddrV4::new(last.address, INSTANCE_PORT);
    probe::ask(&place(first), Protocol::Tcp, direct)
        .map_err(|error| format!("{} -> {direct}: {error}", first.name))?;
    let published = SocketAddrV4::new(GATEWAY, last.host_port);
    probe::ask(&Place::Here, Protocol::Tcp, published)
        .map_err(|error| format!("node -> {published} ({}): {error}", last.name))?;
    Ok(())
}

/// The first `count` lines of `text`, joined with " | ", and how many there were in all.
pub fn first_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let mut shown = lines[..lines.len().min(count)].join(" | ");
    if lines.len() > count {
        shown.push_str(&format!(" | ... ({} lines in all)", lines.len()));
    }
    shown
}
