//! `kudonet demo`: a guided tour that leaves the host untouched. The process moves into a
//! private network and mount namespace (which vanish when it exits), gives that "node" an
//! uplink to an "outside" namespace, applies a desired-state directory, and proves each
//! connectivity promise with real packets.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use cidr::{IpInet, Ipv4Inet};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::kernel::KernelDataplane;
use crate::kernel::netlink::Netlink;
use crate::kernel::netns;
use crate::names;
use crate::probe::{self, EchoServer, Place};
use crate::reconcile::{self, NoProgress, load_desired};
use crate::spec::{Desired, Family, Instance, Protocol};

/// The bundled example, compiled in so that `kudonet demo` works from any directory.
const BUNDLED_EXAMPLE: &[(&str, &str)] = &[
    (
        "node.yaml",
        include_str!("../examples/desired-state/node.yaml"),
    ),
    (
        "instances/api.yaml",
        include_str!("../examples/desired-state/instances/api.yaml"),
    ),
    (
        "instances/dns.yaml",
        include_str!("../examples/desired-state/instances/dns.yaml"),
    ),
    (
        "instances/web.yaml",
        include_str!("../examples/desired-state/instances/web.yaml"),
    ),
    (
        "instances/worker.yaml",
        include_str!("../examples/desired-state/instances/worker.yaml"),
    ),
];

/// Scratch space of the demo, on the private tmpfs.
const DEMO_ROOT: &str = "/run/kudonet-demo";

/// The port every probe listens on, in instances, on the node and outside.
const PROBE_PORT: u16 = 7777;

/// Moves the calling process into a throwaway network and mount namespace with a private
/// `/run`. Must be called while the process has a single thread.
pub fn enter_sandbox() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("kudonet-demo"),
        "/run",
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    let mut netlink = Netlink::open()?;
    netlink.set_up(1, "lo").map_err(|error| error.source)?;
    Ok(())
}

/// Runs the tour (inside the sandbox of [`enter_sandbox`]) on `dir`, or on the bundled
/// example. Returns whether every check passed.
pub fn run(
    dir: Option<&Path>,
    node: Option<&str>,
    netns_dir: &Path,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => write_bundled_example()?,
    };
    let (_, desired) =
        load_desired(&dir, node).map_err(|error| io::Error::other(error.to_string()))?;
    writeln!(
        out,
        "kudonet demo: this process runs in a throwaway network and mount namespace;"
    )?;
    writeln!(
        out,
        "the host's interfaces, namespaces and firewall are not touched.\n"
    )?;

    let uplink = Uplink::for_node(&desired);
    uplink.build(&desired)?;
    writeln!(
        out,
        "1. The node {} gets an uplink {} ({}) to an \"outside\" namespace at {}.",
        desired.node.name, uplink.device, uplink.address, uplink.outside
    )?;

    let mut dataplane =
        KernelDataplane::new(netns_dir).map_err(|e| io::Error::other(e.to_string()))?;
    let outcome = reconcile::converge(
        &mut dataplane,
        &desired,
        &Default::default(),
        &mut NoProgress,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let (add, change, destroy) = crate::plan::count_effects(&outcome.applied);
    writeln!(
        out,
        "2. kudonet apply {}: {add} added, {change} changed, {destroy} destroyed{}.",
        dir.display(),
        if outcome.converged() {
            ""
        } else {
            " (NOT converged)"
        }
    )?;
    for failure in &outcome.failures {
        writeln!(out, "   error: {failure}")?;
    }
    for conflict in &outcome.remaining.conflicts {
        writeln!(out, "   conflict: {conflict}")?;
    }

    writeln!(
        out,
        "3. Real packets (each server answers with the source address it saw):"
    )?;
    let checks = checks(&desired, &uplink, netns_dir);
    let _servers = start_servers(&desired, &uplink, netns_dir)?;
    let mut passed = 0;
    for check in &checks {
        let seen = probe::ask(&check.from, check.protocol, check.target);
        let (mark, result) = match &seen {
            Ok(source) if source.ip() == std::net::IpAddr::from(check.expect) => {
                ("ok  ", format!("saw {}", source.ip()))
            }
            Ok(source) => (
                "FAIL",
                format!("saw {}, expected {}", source.ip(), check.expect),
            ),
            Err(error) => ("FAIL", format!("{error}")),
        };
        passed += usize::from(mark == "ok  ");
        writeln!(
            out,
            "   {mark} {:<40} {}/{} {result}",
            check.what, check.target, check.protocol
        )?;
    }

    writeln!(out, "4. kudonet status:")?;
    let observed = dataplane_observe(&mut dataplane)?;
    let statuses = reconcile::instance_status(&desired, &observed, netns_dir, &outcome.failures);
    for status in &statuses {
        writeln!(
            out,
            "   {:<12} {:<8} {:<16} {}",
            status.name, status.phase, status.address, status.netns
        )?;
    }
    let again = crate::plan::plan(&desired, &observed);
    writeln!(
        out,
        "5. A second kudonet apply: {}",
        if again.is_empty() {
            "No changes."
        } else {
            "changes pending!"
        }
    )?;

    let all = passed == checks.len() && outcome.converged() && again.is_empty();
    writeln!(
        out,
        "\n{passed} of {} connectivity checks passed{}. The namespaces vanish as the demo exits.",
        checks.len(),
        if all { "" } else { "; see FAIL above" }
    )?;
    Ok(all)
}

fn dataplane_observe(dataplane: &mut KernelDataplane) -> io::Result<crate::observed::Observed> {
    use crate::dataplane::Dataplane;
    dataplane
        .observe()
        .map_err(|error| io::Error::other(error.to_string()))
}

fn write_bundled_example() -> io::Result<PathBuf> {
    let dir = Path::new(DEMO_ROOT).join("desired-state");
    for (file, text) in BUNDLED_EXAMPLE {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files are in a folder"))?;
        std::fs::write(path, text)?;
    }
    Ok(dir)
}

/// The node's uplink in the demo: its `externalIp` (or 203.0.113.1) on a /24 shared with
/// the outside namespace.
struct Uplink {
    device: String,
    address: Ipv4Inet,
    outside: Ipv4Addr,
    outside_netns: PathBuf,
}

impl Uplink {
    fn for_node(desired: &Desired) -> Uplink {
        let ip = match desired.node.external_ip(Family::Ipv4) {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::new(203, 0, 113, 1),
        };
        let address = Ipv4Inet::new(ip, 24).expect("/24 is valid");
        let last = address.network().last_address();
        let outside = if ip == Ipv4Addr::from(u32::from(last) - 1) {
            Ipv4Addr::from(u32::from(last) - 2)
        } else {
            Ipv4Addr::from(u32::from(last) - 1)
        };
        Uplink {
            device: desired
                .node
                .uplink
                .clone()
                .unwrap_or_else(|| "eth0".to_string()),
            address,
            outside,
            outside_netns: Path::new(DEMO_ROOT).join("outside"),
        }
    }

    /// A veth from the node to "outside", addressed, up, and the node's default route.
    /// "outside" lives outside the netns directory kudonet manages.
    fn build(&self, desired: &Desired) -> io::Result<()> {
        let dir = self.outside_netns.parent().expect("has a parent");
        netns::create(dir, "outside")?;
        let outside_file = std::fs::File::open(&self.outside_netns)?;
        let err = |error: crate::kernel::netlink::NetlinkError| io::Error::other(error.to_string());
        let mut node = Netlink::open()?;
        node.create_veth(&self.device, "up0", &outside_file, None, desired.node.mtu)
            .map_err(err)?;
        let index = node.link_index(&self.device).map_err(err)?;
        node.add_address(index, &self.device, IpInet::V4(self.address), false)
            .map_err(err)?;
        node.set_up(index, &self.device).map_err(err)?;
        let default = cidr::IpCidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("0.0.0.0/0");
        node.replace_route(default, IpAddr::V4(self.outside), Some(index), 0)
            .map_err(err)?;
        let mut outside = Netlink::open_in(&self.outside_netns)?;
        let up0 = outside.link_index("up0").map_err(err)?;
        let outside_address = Ipv4Inet::new(self.outside, 24).expect("/24 is valid");
        outside
            .add_address(up0, "up0", IpInet::V4(outside_address), false)
            .map_err(err)?;
        outside.set_up(up0, "up0").map_err(err)?;
        outside.set_up(1, "lo").map_err(err)
    }
}

struct Check {
    what: String,
    from: Place,
    protocol: Protocol,
    target: SocketAddrV4,
    expect: Ipv4Addr,
}

fn instance_place(netns_dir: &Path, name: &str) -> Place {
    Place::netns(netns_dir.join(names::namespace_name(name)))
}

/// Echo servers: on the probe port in every instance, on the node and outside, and on each
/// published instance port.
fn start_servers(
    desired: &Desired,
    uplink: &Uplink,
    netns_dir: &Path,
) -> io::Result<Vec<EchoServer>> {
    let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let mut servers = vec![
        probe::serve(&Place::Here, Protocol::Tcp, any(PROBE_PORT))?,
        probe::serve(
            &Place::netns(&uplink.outside_netns),
            Protocol::Tcp,
            any(PROBE_PORT),
        )?,
    ];
    for instance in &desired.instances {
        let place = instance_place(netns_dir, &instance.name);
        servers.push(probe::serve(&place, Protocol::Tcp, any(PROBE_PORT))?);
        let mut ports: Vec<(Protocol, u16)> = instance
            .ports
            .iter()
            .map(|port| (port.protocol, port.instance_port))
            .collect();
        ports.sort();
        ports.dedup();
        for (protocol, port) in ports {
            if !(protocol == Protocol::Tcp && port == PROBE_PORT) {
                servers.push(probe::serve(&place, protocol, any(port))?);
            }
        }
    }
    Ok(servers)
}

/// What to prove for `desired`: instance to instance, to the gateway, egress, and every
/// published port from where it is published to.
fn checks(desired: &Desired, uplink: &Uplink, netns_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let node = &desired.node;
    let Some(gateway) = node.ipv4().map(|cidr| cidr.address()) else {
        return checks;
    };
    let outside = Place::netns(&uplink.outside_netns);
    let instances: Vec<(&Instance, Ipv4Addr)> = desired
        .instances
        .iter()
        .filter_map(|instance| Some((instance, instance.ipv4()?.address())))
        .collect();
    if let [(first, first_ip), (second, second_ip), ..] = instances.as_slice() {
        for ((from, from_ip), (to, to_ip)) in [
            ((first, first_ip), (second, second_ip)),
            ((second, second_ip), (first, first_ip)),
        ] {
            checks.push(Check {
                what: format!("instance {} -> instance {}", from.name, to.name),
                from: instance_place(netns_dir, &from.name),
                protocol: Protocol::Tcp,
                target: SocketAddrV4::new(*to_ip, PROBE_PORT),
                expect: *from_ip,
            });
        }
    }
    if let Some((first, first_ip)) = instances.first() {
        let from = instance_place(netns_dir, &first.name);
        checks.push(Check {
            what: format!("instance {} -> node (gateway)", first.name),
            from: from.clone(),
            protocol: Protocol::Tcp,
            target: SocketAddrV4::new(gateway, PROBE_PORT),
            expect: *first_ip,
        });
        checks.push(Check {
            what: format!(
                "instance {} -> outside{}",
                first.name,
                if node.masquerade { ", masqueraded" } else { "" }
            ),
            from,
            protocol: Protocol::Tcp,
            target: SocketAddrV4::new(uplink.outside, PROBE_PORT),
            expect: if node.masquerade {
                uplink.address.address()
            } else {
                *first_ip
            },
        });
    }
    for (instance, _) in &instances {
        for port in instance
            .ports
            .iter()
            .filter(|port| port.serves(Family::Ipv4))
        {
            let label = |from: &str| {
                format!(
                    "{from} -> :{} -> {}:{}",
                    port.host_port, instance.name, port.instance_port
                )
            };
            let hairpin_from = instances
                .iter()
                .map(|(other, _)| *other)
                .find(|other| other.name != instance.name)
                .unwrap_or(instance);
            let host_ip = match port.host_address() {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            match host_ip {
                None => {
                    checks.push(Check {
                        what: label("outside"),
                        from: outside.clone(),
                        protocol: port.protocol,
                        target: SocketAddrV4::new(uplink.address.address(), port.host_port),
                        expect: uplink.outside,
                    });
                    checks.push(Check {
                        what: label("node via 127.0.0.1"),
                        from: Place::Here,
                        protocol: port.protocol,
                        target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.host_port),
                        expect: gateway,
                    });
                    checks.push(Check {
                        what: label(&format!("{} (hairpin)", hairpin_from.name)),
                        from: instance_place(netns_dir, &hairpin_from.name),
                        protocol: port.protocol,
                        target: SocketAddrV4::new(uplink.address.address(), port.host_port),
                        expect: gateway,
                    });
                }
                Some(ip) if ip == uplink.address.address() => checks.push(Check {
                    what: label("outside"),
                    from: outside.clone(),
                    protocol: port.protocol,
                    target: SocketAddrV4::new(ip, port.host_port),
                    expect: uplink.outside,
                }),
                Some(ip) => checks.push(Check {
                    what: label(&format!("{} via {ip}", hairpin_from.name)),
                    from: instance_place(netns_dir, &hairpin_from.name),
                    protocol: port.protocol,
                    target: SocketAddrV4::new(ip, port.host_port),
                    expect: gateway,
                }),
            }
        }
    }
    checks
}
