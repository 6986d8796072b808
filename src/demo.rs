//! `kudonet demo`: a guided tour that leaves the host untouched. The process moves into a
//! private network and mount namespace (which vanish when it exits), gives that "node" an
//! uplink to an "outside" namespace, applies a desired-state directory, and proves each
//! connectivity promise with real packets.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use cidr::IpInet;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::kernel::KernelDataplane;
use crate::kernel::netlink::{Netlink, in_namespace};
use crate::kernel::netns;
use crate::names;
use crate::probe::{self, EchoServer, Place};
use crate::reconcile::{self, NoProgress, load_desired};
use crate::spec::{Desired, Family, FirewallBackend, Instance, Protocol};

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
/// example, with kudonet's rules in `firewall`. Returns whether every check passed.
pub fn run(
    dir: Option<&Path>,
    node: Option<&str>,
    netns_dir: &Path,
    firewall: FirewallBackend,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => write_bundled_example()?,
    };
    let (_, mut desired) =
        load_desired(&dir, node).map_err(|error| io::Error::other(error.to_string()))?;
    desired.firewall = firewall;
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
        desired.node.name,
        uplink.device,
        list(uplink.addresses.iter().map(|(address, _)| address)),
        list(uplink.addresses.iter().map(|(_, outside)| outside)),
    )?;

    let mut dataplane = KernelDataplane::for_backend(netns_dir, firewall)
        .map_err(|e| io::Error::other(e.to_string()))?;
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
        "2. kudonet apply {}{}: {add} added, {change} changed, {destroy} destroyed{}.",
        // The default backend goes unsaid, as on the command line.
        match firewall {
            FirewallBackend::Iptables => "",
            FirewallBackend::Nftables => "--firewall nftables ",
        },
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
    // Past 40 characters (long names, IPv6 labels), the columns widen to stay aligned.
    let width = checks
        .iter()
        .map(|check| check.what.len())
        .max()
        .unwrap_or(0)
        .max(40);
    let dual_stack = desired.node.families().count() > 1;
    let mut passed = 0;
    let mut family = None;
    for check in &checks {
        if dual_stack && family != Some(check.family) {
            family = Some(check.family);
            writeln!(out, "   {}:", check.family)?;
        }
        let seen = probe::ask(&check.from, check.protocol, check.target);
        let (mark, result) = match &seen {
            Ok(source) if source.ip() == check.expect => ("ok  ", format!("saw {}", source.ip())),
            Ok(source) => (
                "FAIL",
                format!("saw {}, expected {}", source.ip(), check.expect),
            ),
            Err(error) => ("FAIL", format!("{error}")),
        };
        passed += usize::from(mark == "ok  ");
        writeln!(
            out,
            "   {mark} {:<width$} {}/{} {result}",
            check.what, check.target, check.protocol
        )?;
    }

    if desired.node.has(Family::Ipv6) {
        writeln!(
            out,
            "   note: [::1] is not a published path for IPv6 (the kernel has no route_localnet \
             for it): the node reaches its ports at its own IPv6 addresses."
        )?;
    }

    writeln!(out, "4. kudonet status:")?;
    let observed = dataplane_observe(&mut dataplane)?;
    let statuses = reconcile::instance_status(&desired, &observed, netns_dir, &outcome.failures);
    let addresses: Vec<String> = statuses
        .iter()
        .map(|status| status.addresses.join(","))
        .collect();
    let width = addresses.iter().map(String::len).max().unwrap_or(0).max(16);
    for (status, addresses) in statuses.iter().zip(&addresses) {
        writeln!(
            out,
            "   {:<12} {:<8} {addresses:<width$} {}",
            status.name, status.phase, status.netns
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

/// `items` joined by ", ".
fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
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

/// The node's uplink in the demo: for each family of the node, its `externalIp` of that
/// family (or 203.0.113.1/24, 2001:db8::1/64) on a network shared with the outside
/// namespace.
struct Uplink {
    device: String,
    /// The node's address and the outside's, for each family of the node (IPv4 first).
    addresses: Vec<(IpInet, IpAddr)>,
    outside_netns: PathBuf,
}

impl Uplink {
    fn for_node(desired: &Desired) -> Uplink {
        let addresses = desired
            .node
            .families()
            .map(|family| {
                let address = match (family, desired.node.external_ip(family)) {
                    (Family::Ipv4, Some(ip)) => IpInet::new(ip, 24),
                    (Family::Ipv6, Some(ip)) => IpInet::new(ip, 64),
                    (Family::Ipv4, None) => IpInet::new(Ipv4Addr::new(203, 0, 113, 1).into(), 24),
                    (Family::Ipv6, None) => {
                        IpInet::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 64)
                    }
                }
                .expect("the prefix fits the family");
                (address, outside_address(address))
            })
            .collect();
        Uplink {
            device: desired
                .node
                .uplink
                .clone()
                .unwrap_or_else(|| "eth0".to_string()),
            addresses,
            outside_netns: Path::new(DEMO_ROOT).join("outside"),
        }
    }

    /// The node's uplink address of `family`.
    fn address(&self, family: Family) -> Option<IpAddr> {
        self.addresses
            .iter()
            .map(|(address, _)| address.address())
            .find(|ip| Family::of(*ip) == family)
    }

    /// The outside's address of `family`.
    fn outside(&self, family: Family) -> Option<IpAddr> {
        self.addresses
            .iter()
            .map(|(_, outside)| *outside)
            .find(|ip| Family::of(*ip) == family)
    }

    /// A veth from the node to "outside", addressed, up, and the node's default route of
    /// each family. "outside" lives outside the netns directory kudonet manages.
    fn build(&self, desired: &Desired) -> io::Result<()> {
        let dir = self.outside_netns.parent().expect("has a parent");
        netns::create(dir, "outside")?;
        let outside_file = std::fs::File::open(&self.outside_netns)?;
        let err = |error: crate::kernel::netlink::NetlinkError| io::Error::other(error.to_string());
        let mut node = Netlink::open()?;
        node.create_veth(&self.device, "up0", &outside_file, None, desired.node.mtu)
            .map_err(err)?;
        // Both ends' link-local addresses valid at once (no duplicate address detection),
        // so that IPv6 neighbours are found from the first packet.
        netns::skip_ipv6_dad(&self.device)?;
        in_namespace(&outside_file, || netns::skip_ipv6_dad("up0"))??;
        let index = node.link_index(&self.device).map_err(err)?;
        let mut outside = Netlink::open_in(&self.outside_netns)?;
        let up0 = outside.link_index("up0").map_err(err)?;
        for (address, outside_ip) in &self.addresses {
            node.add_address(index, &self.device, *address, false)
                .map_err(err)?;
            let outside_address = IpInet::new(*outside_ip, address.network_length())
                .expect("the prefix fits the family");
            outside
                .add_address(up0, "up0", outside_address, false)
                .map_err(err)?;
        }
        node.set_up(index, &self.device).map_err(err)?;
        outside.set_up(up0, "up0").map_err(err)?;
        outside.set_up(1, "lo").map_err(err)?;
        for (address, outside_ip) in &self.addresses {
            let unspecified = Family::of(address.address()).unspecified();
            let default = cidr::IpCidr::new(unspecified, 0).expect("a /0 is valid");
            node.replace_route(default, *outside_ip, Some(index), 0)
                .map_err(err)?;
        }
        Ok(())
    }
}

/// The outside's address beside the node's `address`: the last but one of the network
/// (IPv4) or `::fe` in it (IPv6), or the one before when that is the node's.
fn outside_address(address: IpInet) -> IpAddr {
    match address {
        IpInet::V4(address) => {
            let last = u32::from(address.network().last_address());
            let ip = u32::from(address.address());
            Ipv4Addr::from(if ip == last - 1 { last - 2 } else { last - 1 }).into()
        }
        IpInet::V6(address) => {
            let first = u128::from(address.network().first_address());
            let ip = u128::from(address.address());
            Ipv6Addr::from(if ip == first + 0xfe {
                first + 0xfd
            } else {
                first + 0xfe
            })
            .into()
        }
    }
}

struct Check {
    family: Family,
    what: String,
    from: Place,
    protocol: Protocol,
    target: SocketAddr,
    expect: IpAddr,
}

fn instance_place(netns_dir: &Path, name: &str) -> Place {
    Place::netns(netns_dir.join(names::namespace_name(name)))
}

/// Echo servers: on the probe port in every instance, on the node and outside, and on each
/// published instance port. On a node with IPv6 they listen on `[::]`, for both families.
fn start_servers(
    desired: &Desired,
    uplink: &Uplink,
    netns_dir: &Path,
) -> io::Result<Vec<EchoServer>> {
    let unspecified = match desired.node.has(Family::Ipv6) {
        true => Family::Ipv6.unspecified(),
        false => Family::Ipv4.unspecified(),
    };
    let any = |port| SocketAddr::new(unspecified, port);
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

/// What to prove for `desired`, for each family of the node (IPv4 first): instance to
/// instance, to the gateway, egress, and every published port from where it is published
/// to.
fn checks(desired: &Desired, uplink: &Uplink, netns_dir: &Path) -> Vec<Check> {
    desired
        .node
        .families()
        .flat_map(|family| family_checks(desired, family, uplink, netns_dir))
        .collect()
}

/// The checks of `family`.
fn family_checks(
    desired: &Desired,
    family: Family,
    uplink: &Uplink,
    netns_dir: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let node = &desired.node;
    let (Some(gateway), Some(uplink_ip), Some(outside_ip)) = (
        node.gateway(family),
        uplink.address(family),
        uplink.outside(family),
    ) else {
        return checks;
    };
    let outside = Place::netns(&uplink.outside_netns);
    let instances: Vec<(&Instance, IpAddr)> = desired
        .instances
        .iter()
        .filter_map(|instance| Some((instance, instance.address(family)?.address())))
        .collect();
    if let [(first, first_ip), (second, second_ip), ..] = instances.as_slice() {
        for ((from, from_ip), (to, to_ip)) in [
            ((first, first_ip), (second, second_ip)),
            ((second, second_ip), (first, first_ip)),
        ] {
            checks.push(Check {
                family,
                what: format!("instance {} -> instance {}", from.name, to.name),
                from: instance_place(netns_dir, &from.name),
                protocol: Protocol::Tcp,
                target: SocketAddr::new(*to_ip, PROBE_PORT),
                expect: *from_ip,
            });
        }
    }
    if let Some((first, first_ip)) = instances.first() {
        let from = instance_place(netns_dir, &first.name);
        checks.push(Check {
            family,
            what: format!("instance {} -> node (gateway)", first.name),
            from: from.clone(),
            protocol: Protocol::Tcp,
            target: SocketAddr::new(gateway, PROBE_PORT),
            expect: *first_ip,
        });
        checks.push(Check {
            family,
            what: format!(
                "instance {} -> outside{}",
                first.name,
                if node.masquerade { ", masqueraded" } else { "" }
            ),
            from,
            protocol: Protocol::Tcp,
            target: SocketAddr::new(outside_ip, PROBE_PORT),
            expect: if node.masquerade {
                uplink_ip
            } else {
                *first_ip
            },
        });
    }
    for (instance, _) in &instances {
        for port in instance.ports.iter().filter(|port| port.serves(family)) {
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
            let check = |what: String, from: Place, ip: IpAddr, expect: IpAddr| Check {
                family,
                what,
                from,
                protocol: port.protocol,
                target: SocketAddr::new(ip, port.host_port),
                expect,
            };
            match port.host_address() {
                None => {
                    checks.push(check(
                        label("outside"),
                        outside.clone(),
                        uplink_ip,
                        outside_ip,
                    ));
                    // The node reaches its IPv4 ports on 127.0.0.1 (route_localnet); IPv6 has
                    // no such thing for ::1, so it uses one of its own addresses.
                    let node_target = match family {
                        Family::Ipv4 => Ipv4Addr::LOCALHOST.into(),
                        Family::Ipv6 => uplink_ip,
                    };
                    checks.push(check(
                        label(&format!("node via {node_target}")),
                        Place::Here,
                        node_target,
                        gateway,
                    ));
                    checks.push(check(
                        label(&format!("{} (hairpin)", hairpin_from.name)),
                        instance_place(netns_dir, &hairpin_from.name),
                        uplink_ip,
                        gateway,
                    ));
                }
                Some(ip) if ip == uplink_ip => {
                    checks.push(check(label("outside"), outside.clone(), ip, outside_ip));
                }
                Some(ip) => checks.push(check(
                    label(&format!("{} via {ip}", hairpin_from.name)),
                    instance_place(netns_dir, &hairpin_from.name),
                    ip,
                    gateway,
                )),
            }
        }
    }
    checks
}
