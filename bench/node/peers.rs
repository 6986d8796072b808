//! The peers: what users would run instead of kudonet, driven per container the way a
//! container runtime drives them, on the node of bench/baselines/desired.sh (N instances at
//! 10.200.x.y/16 behind the gateway 10.200.0.1, each publishing hostPort 20000+i -> 80/tcp).
//!
//! - netavark (Debian's package, the network stack of podman): one `netavark setup NETNS`
//!   per container, its JSON options on stdin (a bridge network "bench" on bridge podman0
//!   with the subnet and gateway, the container's static IP and port mapping); removal is one
//!   `netavark teardown NETNS` per container with the same options.
//! - The CNI reference plugins (Debian's containernetworking-plugins): per container `bridge`
//!   (bridge cni0, gateway and masquerade on, hairpin, `static` IPAM with the container's
//!   address and a default route) and then `portmap` with the bridge's result as `prevResult`,
//!   each exec'd with CNI_COMMAND=ADD, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH and
//!   its configuration on stdin; removal is DEL in the reverse order, with that result.
//!
//! Both use iptables (netavark's driver forced with NETAVARK_FW=iptables; the plugins of
//! this version know no other). Containers are handled one after the other, as a runtime
//! starting N containers does. Like every system of the bench, a cold build includes
//! creating the namespaces (here one `ip -batch` of `netns add` before the first container,
//! the cheapest way there is), and a removal ends when the kernel has removed every host
//! veth (after the per-container teardown, one `ip -batch` of `netns del`).
//! Everything runs in the worker's sandbox; netavark's configuration directory is under its
//! private /run.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use kudonet::kernel::netlink::Netlink;
use serde_json::{Map, Value, json};

use crate::kernel::{self, Instance, NETNS_DIR, first_lines};

pub const NETAVARK: &str = "/usr/lib/podman/netavark";
pub const CNI_PATH: &str = "/usr/lib/cni";
/// Each peer's Debian package, and the program that says it is installed.
const PACKAGES: [(&str, &str, &str); 2] = [
    ("netavark", "netavark", NETAVARK),
    ("cni", "containernetworking-plugins", "/usr/lib/cni/bridge"),
];

/// The Debian package of `system`, if it is a peer.
pub fn package(system: &str) -> Option<&'static str> {
    PACKAGES
        .iter()
        .find(|(peer, _, _)| *peer == system)
        .map(|(_, package, _)| *package)
}

/// Installs the peers' packages that are missing (the bench runs as root), saying so.
/// Returns the packages still missing afterwards.
pub fn install_missing() -> Vec<&'static str> {
    let missing = || -> Vec<&'static str> {
        PACKAGES
            .iter()
            .filter(|(_, _, program)| !Path::new(program).exists())
            .map(|(_, package, _)| *package)
            .collect()
    };
    let wanted = missing();
    if wanted.is_empty() {
        return wanted;
    }
    eprintln!(
        "node: installing the peers: apt-get install -y {}",
        wanted.join(" ")
    );
    let status = Command::new("apt-get")
        .args(["install", "-y"])
        .args(&wanted)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // apt's output goes to stderr with the bench's progress; stdout keeps the tables.
        .stdout(std::io::stderr())
        .status();
    if !matches!(status, Ok(status) if status.success()) {
        eprintln!("node: apt-get install failed ({status:?})");
    }
    missing()
}

/// One run of `peer` ("netavark" or "cni") at N: cold build, the check that the node works
/// (when `verify`), removal. Measurements go into `result`.
pub fn run(
    peer: &str,
    instances: &[Instance],
    verify: bool,
    work: &Path,
    result: &mut Map<String, Value>,
) -> Result<(), String> {
    let driver: Box<dyn Peer> = match peer {
        "netavark" => Box::new(Netavark::new(work)?),
        _ => Box::new(Cni),
    };
    let mut netlink = Netlink::open().map_err(|error| error.to_string())?;

    let started = Instant::now();
    kernel::add_namespaces(instances)?;
    result.insert(
        "namespaces_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    let mut results = Vec::with_capacity(instances.len());
    for instance in instances {
        results.push(driver.add(instance)?);
    }
    result.insert("build_s".into(), json!(started.elapsed().as_secs_f64()));

    if verify {
        result.insert("verified".into(), kernel::verdict(instances));
    }

    let started = Instant::now();
    for (instance, added) in instances.iter().zip(&results).rev() {
        driver.delete(instance, added)?;
    }
    result.insert(
        "teardown_calls_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    kernel::delete_namespaces(instances)?;
    kernel::wait_host_veths(&mut netlink, 0)?;
    result.insert("teardown_s".into(), json!(started.elapsed().as_secs_f64()));
    Ok(())
}

/// What a runtime calls per container.
trait Peer {
    /// Connects the container; what it answered (CNI's result, needed for DEL).
    fn add(&self, instance: &Instance) -> Result<Value, String>;
    /// Disconnects it.
    fn delete(&self, instance: &Instance, added: &Value) -> Result<(), String>;
}

struct Netavark {
    config_dir: String,
}

impl Netavark {
    fn new(work: &Path) -> Result<Netavark, String> {
        let dir = work.join("netavark");
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        Ok(Netavark {
            config_dir: dir.display().to_string(),
        })
    }

    /// netavark's options for one container (the format of netavark's own tests).
    fn options(instance: &Instance) -> Value {
        json!({
            "container_id": instance.name,
            "container_name": instance.name,
            "port_mappings": [{
                "host_ip": "",
                "container_port": kernel::INSTANCE_PORT,
                "host_port": instance.host_port,
                "range": 1,
                "protocol": "tcp",
            }],
            "networks": {
                "bench": { "interface_name": "eth0", "static_ips": [instance.address.to_string()] },
            },
            "network_info": {
                "bench": {
                    "name": "bench",
                    "id": "6b75646f6e65742062656e6368206e6574776f726b2062656e6368206e657421",
                    "driver": "bridge",
                    "network_interface": "podman0",
                    "subnets": [{ "subnet": "10.200.0.0/16", "gateway": kernel::GATEWAY.to_string() }],
                    "ipv6_enabled": false,
                    "internal": false,
                    "dns_enabled": false,
                    "ipam_options": { "driver": "host-local" },
                },
            },
        })
    }

    fn call(&self, command: &str, instance: &Instance) -> Result<Value, String> {
        let netns = Path::new(NETNS_DIR).join(&instance.namespace);
        let mut program = Command::new(NETAVARK);
        program
            .args(["--config", &self.config_dir, command])
            .arg(&netns)
            .env("NETAVARK_FW", "iptables")
            // As in netavark's tests: no firewalld over D-Bus (the sandbox's /run has no bus
            // anyway).
            .env("DBUS_SYSTEM_BUS_ADDRESS", "");
        let output = exec(program, &Netavark::options(instance))?;
        Ok(serde_json::from_str(&output).unwrap_or(Value::Null))
    }
}

impl Peer for Netavark {
    fn add(&self, instance: &Instance) -> Result<Value, String> {
        self.call("setup", instance)
    }

    fn delete(&self, instance: &Instance, _: &Value) -> Result<(), String> {
        self.call("teardown", instance).map(drop)
    }
}

struct Cni;

impl Cni {
    fn bridge(instance: &Instance) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "static",
                "addresses": [{
                    "address": format!("{}/16", instance.address),
                    "gateway": kernel::GATEWAY.to_string(),
                }],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        })
    }

    fn portmap(instance: &Instance, previous: &Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
            "runtimeConfig": {
                "portMappings": [{
                    "hostPort": instance.host_port,
                    "containerPort": kernel::INSTANCE_PORT,
                    "protocol": "tcp",
                }],
            },
            "prevResult": previous,
        })
    }

    fn call(
        command: &str,
        plugin: &str,
        instance: &Instance,
        config: &Value,
    ) -> Result<String, String> {
        let mut program = Command::new(Path::new(CNI_PATH).join(plugin));
        program
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &instance.name)
            .env("CNI_NETNS", Path::new(NETNS_DIR).join(&instance.namespace))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH);
        exec(program, config)
    }
}

impl Peer for Cni {
    fn add(&self, instance: &Instance) -> Result<Value, String> {
        let bridged = Cni::call("ADD", "bridge", instance, &Cni::bridge(instance))?;
        let bridged: Value = serde_json::from_str(&bridged)
            .map_err(|error| format!("bridge's result for {}: {error}", instance.name))?;
        let mapped = Cni::call(
            "ADD",
            "portmap",
            instance,
            &Cni::portmap(instance, &bridged),
        )?;
        serde_json::from_str(&mapped)
            .map_err(|error| format!("portmap's result for {}: {error}", instance.name))
    }

    fn delete(&self, instance: &Instance, added: &Value) -> Result<(), String> {
        Cni::call("DEL", "portmap", instance, &Cni::portmap(instance, added))?;
        let mut bridge = Cni::bridge(instance);
        bridge["prevResult"] = added.clone();
        Cni::call("DEL", "bridge", instance, &bridge).map(drop)
    }
}

/// Runs `program` with `input` (JSON) on its stdin; its stdout, or what went wrong.
fn exec(mut program: Command, input: &Value) -> Result<String, String> {
    let mut child = program
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{program:?}: {error}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .map_err(|error| format!("{program:?}: {error}"))?;
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} failed ({}): {}",
            describe(&program),
            output.status,
            first_lines(
                &(String::from_utf8_lossy(&output.stderr).into_owned() + &stdout),
                3
            )
        ))
    }
}

/// The program and its arguments, and CNI_COMMAND when there is one.
fn describe(program: &Command) -> String {
    let mut words = vec![program.get_program().to_string_lossy().into_owned()];
    words.extend(
        program
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    if let Some((_, Some(command))) = program.get_envs().find(|(key, _)| *key == "CNI_COMMAND") {
        words.push(format!("(CNI_COMMAND={})", command.to_string_lossy()));
    }
    words.join(" ")
}
