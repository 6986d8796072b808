//! The kernel: all of kudonet's kernel I/O lives here. [`KernelDataplane`] is the
//! [`Dataplane`] of a real node: rtnetlink for links, addresses and routes
//! (`netlink::route`), the netns directory for namespaces (`netns`), `/proc/sys` for
//! sysctls (`sysctl`), a [`firewall::FirewallDriver`] for the firewall, and nf_tables
//! (`netlink::netfilter`) for its generation and the forward hook, and (`netlink::nftables`)
//! for kudonet's own table `inet kudonet` in nftables mode. `observe` reads the
//! node incrementally; [`events`] subscribes to the kernel's events and reports what they
//! name.

pub(crate) mod attachment;
pub mod events;
pub mod firewall;
pub mod netlink;
pub(crate) mod netns;
pub(crate) mod observe;
pub(crate) mod sysctl;

use crate::spec::Family;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firewall::{FirewallDriver, IptablesFirewall, NftablesFirewall};
use netlink::TableState;
use netlink::netfilter::NfTables;
use netlink::route::{RawLink, parse_link};
use netlink::{Netlink, NetlinkError};
use netns::NamespaceSockets;
use observe::{Snapshot, Sources, observe};
use sysctl::sysctl_path;

use crate::dataplane::{Cause, Changes, Dataplane, DataplaneError};
use crate::faults::crash_point;
use crate::names;
use crate::observed::{LinkKind, LinkRef, Observed};
use crate::plan::Action;

/// Told the path of a namespace kudonet is about to delete.
type NamespaceRelease = Box<dyn FnMut(&Path) + Send>;

pub struct KernelDataplane {
    netns_dir: PathBuf,
    /// The firewall backend (iptables or nftables), behind its seam.
    firewall: Box<dyn FirewallDriver + Send>,
    /// A socket in the node's namespace (the one kudonet runs in).
    host: Netlink,
    /// Sockets inside instance namespaces, opened when first needed and reused.
    namespaces: NamespaceSockets,
    /// The nf_tables generation of the node's namespace, if the kernel has nf_tables.
    generation: Option<NfTables>,
    /// What the last observation read.
    snapshot: Snapshot,
    /// What may have changed since: reported by the owner, and touched by actions.
    changes: Changes,
    /// Told the path of each namespace about to be deleted, so that whoever holds a socket
    /// inside (the controller's event reader) lets it go: a socket keeps its namespace, and
    /// the veths in it, alive.
    releasing: Option<NamespaceRelease>,
    /// Host ends of veths whose namespace was deleted, by index and name: the kernel
    /// destroys them on its own, asynchronously; [`Dataplane::settle`] waits for it.
    dying: Vec<(u32, String)>,
    /// Bridges being deleted on threads of their own, by name: [`Dataplane::settle`]
    /// waits for them.
    deleting: Vec<(String, std::thread::JoinHandle<Result<(), NetlinkError>>)>,
    /// Whether the owner reports every change of the kernel through [`changed`]: if not,
    /// every observation reads everything again (but iptables while its generation stands).
    ///
    /// [`changed`]: KernelDataplane::changed
    incremental: bool,
    /// The namespaces someone else owns that instances live in, by path: read besides the
    /// netns directory's.
    others_namespaces: BTreeSet<String>,
}

impl KernelDataplane {
    /// A dataplane for the network namespace of the calling thread, with instance
    /// namespaces in `netns_dir`, and the machine's firewall backend (the `iptables` in
    /// `PATH` or the sbin folders).
    pub fn new(netns_dir: &Path) -> Result<KernelDataplane, DataplaneError> {
        KernelDataplane::with_firewall(netns_dir, Box::new(IptablesFirewall::new()))
    }

    /// As [`KernelDataplane::new`], with the firewall of `backend`: for nftables, the kernel
    /// must answer nf_tables requests, and iptables need not be installed.
    pub fn for_backend(
        netns_dir: &Path,
        backend: crate::spec::FirewallBackend,
    ) -> Result<KernelDataplane, DataplaneError> {
        match backend {
            crate::spec::FirewallBackend::Iptables => KernelDataplane::new(netns_dir),
            crate::spec::FirewallBackend::Nftables => {
                KernelDataplane::with_firewall(netns_dir, Box::new(NftablesFirewall::new()))
            }
        }
    }

    /// As [`KernelDataplane::new`], with the firewall backend `firewall`.
    pub fn with_firewall(
        netns_dir: &Path,
        firewall: Box<dyn FirewallDriver + Send>,
    ) -> Result<KernelDataplane, DataplaneError> {
        firewall
            .check_available()
            .map_err(|error| DataplaneError::Unavailable(error.into()))?;
        let host = Netlink::open().map_err(|error| {
            DataplaneError::Observe(observe::ObserveError::Socket(error).into())
        })?;
        Ok(KernelDataplane {
            netns_dir: netns_dir.to_path_buf(),
            firewall,
            host,
            namespaces: NamespaceSockets::new(netns_dir),
            generation: NfTables::open().ok(),
            snapshot: Snapshot::default(),
            changes: Changes::everything(),
            releasing: None,
            dying: Vec::new(),
            deleting: Vec::new(),
            incremental: false,
            others_namespaces: BTreeSet::new(),
        })
    }

    /// Calls `release` with the path of each namespace before deleting it, so that the
    /// owner lets go of its own sockets inside (a socket keeps its namespace alive).
    pub fn on_namespace_release(&mut self, release: impl FnMut(&Path) + Send + 'static) {
        self.releasing = Some(Box::new(release));
    }

    /// Notes what `action` may change, for the next observation to read it again: the
    /// links and namespaces it names, and the other end of a veth it deletes. Routes,
    /// sysctls and (through its generation) iptables are read every time anyway.
    fn touches(&mut self, action: &Action) {
        let changes = &mut self.changes;
        let snapshot = &self.snapshot;
        let mut link = |link: &LinkRef, deleted: bool| match &link.netns {
            Some(netns) => {
                changes.namespaces.insert(netns.clone());
                if deleted {
                    changes
                        .host_names
                        .extend(snapshot.host_peers_of_namespace(netns));
                }
            }
            None => {
                changes.host_names.insert(link.name.clone());
                if deleted {
                    changes
                        .namespaces
                        .extend(snapshot.peers_of_host_link(&link.name));
                }
            }
        };
        match action {
            Action::DeleteLink { link: target } => link(target, true),
            Action::SetMtu { link: target, .. }
            | Action::SetUp { link: target }
            | Action::AddAddress { link: target, .. }
            | Action::DeleteAddress { link: target, .. } => link(target, false),
            Action::CreateBridge { name, .. }
            | Action::CreateSegment { name, .. }
            | Action::CreateVxlan { name, .. }
            | Action::SetMaster { link: name, .. }
            | Action::SetHairpin { link: name }
            | Action::AddFlood { link: name, .. }
            | Action::AddProxyNeighbour { link: name, .. }
            | Action::DeleteProxyNeighbour { link: name, .. }
            | Action::DeleteFlood { link: name, .. } => link(&LinkRef::host(name), false),
            Action::CreateVeth {
                host, namespace, ..
            } => {
                link(&LinkRef::host(host), false);
                changes.namespaces.insert(namespace.clone());
            }
            Action::CreateNamespace { name } => {
                changes.namespaces.insert(name.clone());
            }
            Action::DeleteNamespace { name } => {
                changes.namespaces.insert(name.clone());
                changes
                    .host_names
                    .extend(snapshot.host_peers_of_namespace(name));
            }
            Action::ReplaceDefaultRoute { namespace, .. }
            | Action::DeleteDefaultRoute { namespace, .. } => {
                changes.namespaces.insert(namespace.clone());
            }
            Action::PurgeOtherBackend { .. } => changes.other_backend = true,
            Action::ReplaceRoute { .. }
            | Action::ReplaceLinkRoute { .. }
            | Action::DeleteRoute { .. }
            | Action::SetSysctl { .. }
            | Action::SyncTable { .. }
            | Action::SyncNftables { .. }
            | Action::DeleteNftables => {}
        }
    }

    /// A per-interface sysctl is written only for an existing bridge marked as kudonet's (its
    /// segments included): `all` and `default` would change every interface of the node
    /// (route_localnet there exposes services bound to 127.0.0.1), and anyone else's
    /// interface is not ours.
    fn check_own_bridge(&mut self, key: &str, device: &str) -> Result<(), Cause> {
        let link = self
            .host
            .get_link(device)
            .map_err(Cause::from)?
            .as_ref()
            .and_then(parse_link);
        if link.is_some_and(|link| link.is_kudonet_bridge() || link.is_kudonet_segment()) {
            Ok(())
        } else {
            Err(Cause::refusal(format!(
                "refusing to set {key}: {device} is not kudonet's bridge"
            )))
        }
    }

    fn socket(&mut self, netns: Option<&str>) -> Result<&mut Netlink, Cause> {
        let Some(netns) = netns else {
            return Ok(&mut self.host);
        };
        self.namespaces
            .get(netns)
            .map_err(|error| Cause::io(format!("cannot enter namespace {netns}"), error))
    }

    /// The socket of `link`'s namespace and the link's index there.
    fn link(&mut self, link: &LinkRef) -> Result<(&mut Netlink, u32), Cause> {
        let socket = self.socket(link.netns.as_deref())?;
        let index = socket.link_index(&link.name).map_err(Cause::from)?;
        Ok((socket, index))
    }

    /// Creates a host link marked as kudonet's: under a scratch name, then marked, then
    /// renamed, so that a crash at any point leaves either nothing, a scratch link that the
    /// next plan deletes, or a marked link.
    fn create_marked(
        &mut self,
        name: &str,
        alias: &str,
        create: impl FnOnce(&mut Netlink, &str) -> Result<(), NetlinkError>,
    ) -> Result<(), Cause> {
        let scratch = fresh_scratch_name();
        let host = &mut self.host;
        create(host, &scratch).map_err(Cause::from)?;
        let marked = (|| {
            crash_point();
            let index = host.link_index(&scratch)?;
            host.set_alias(index, &scratch, alias)?;
            crash_point();
            host.rename(index, &scratch, name)
        })();
        marked.map_err(|error| {
            if let Ok(index) = host.link_index(&scratch) {
                let _ = host.delete_link(index, &scratch);
            }
            Cause::from(error)
        })
    }

    fn apply_action(&mut self, action: &Action) -> Result<(), Cause> {
        match action {
            Action::CreateNamespace { name } => netns::create(&self.netns_dir, name)
                .map_err(|error| Cause::io("create namespace", error)),
            Action::DeleteNamespace { name } => {
                // Our sockets inside hold the namespace alive: let them go first.
                self.namespaces.forget(name);
                if let Some(release) = &mut self.releasing {
                    release(&self.netns_dir.join(name));
                }
                let host_ends = self.snapshot.host_peer_links_of_namespace(name);
                netns::delete(&self.netns_dir, name)
                    .map_err(|error| Cause::io("delete namespace", error))?;
                self.dying.extend(host_ends);
                Ok(())
            }
            Action::CreateBridge { name, mtu } => {
                // A fixed address, so that ports coming and going never change it; random,
                // as the kernel's, so that bridges joined by the vxlan overlay differ.
                let mac = random_mac().map_err(|error| Cause::io("bridge address", error))?;
                self.create_marked(name, &names::bridge_alias(), |host, scratch| {
                    host.create_bridge(scratch, Some(mac), *mtu)?;
                    // Its IPv6 link-local address (which the node solicits neighbours
                    // from) is usable as soon as the bridge is up, not after a second of
                    // duplicate address detection.
                    netns::skip_ipv6_dad(scratch).map_err(|error| NetlinkError {
                        operation: format!(
                            "turn IPv6 duplicate address detection off on {scratch}"
                        ),
                        source: error,
                    })
                })
            }
            Action::CreateSegment { name, bridge, mtu } => {
                // The node's bridge's address: instances moved to a segment keep a valid
                // gateway in their ARP cache, and the node has one gateway MAC.
                let mac = match self.host.link_mac(bridge).map_err(Cause::from)? {
                    Some(mac) => mac,
                    None => random_mac().map_err(|error| Cause::io("bridge address", error))?,
                };
                self.create_marked(name, &names::segment_alias(), |host, scratch| {
                    host.create_bridge(scratch, Some(mac), *mtu)?;
                    // No IPv6 (so no DAD or MLD) until it gets the IPv6 gateway address:
                    // `AddAddress` turns it on then, with a link-local address usable at
                    // once, which the node solicits the segment's instances from.
                    netns::disable_ipv6(&[scratch]).map_err(|error| NetlinkError {
                        operation: format!("turn IPv6 off on {scratch}"),
                        source: error,
                    })
                })
            }
            Action::CreateVeth {
                host,
                namespace,
                interface,
                instance,
                mtu,
            } => {
                let peer_netns = netns::open(&self.netns_dir, namespace)
                    .map_err(|error| Cause::io(format!("open namespace {namespace}"), error))?;
                self.create_marked(host, &names::instance_alias(instance), |socket, scratch| {
                    socket.create_veth(
                        scratch,
                        interface,
                        &peer_netns,
                        Some(names::instance_mac(instance)),
                        *mtu,
                    )?;
                    // A bridge port needs no address: IPv6 off.
                    netns::disable_ipv6(&[scratch]).map_err(|error| NetlinkError {
                        operation: format!("turn IPv6 off on {scratch}"),
                        source: error,
                    })
                })
            }
            Action::DeleteLink { link } => {
                let socket = self.socket(link.netns.as_deref())?;
                // Gone already (with its namespace, or its other end): nothing to do.
                let Some(message) = socket.get_link(&link.name).map_err(Cause::from)? else {
                    return Ok(());
                };
                let index = message.header.index;
                let bridge = parse_link(&message).is_some_and(|link| link.kind == LinkKind::Bridge);
                if link.netns.is_none() && bridge {
                    // Deleting a bridge takes the kernel some 50 ms of grace periods: it
                    // runs beside the rest of the plan, and `settle` waits for it.
                    let name = link.name.clone();
                    let deletion = std::thread::Builder::new()
                        .name("delete-bridge".into())
                        .spawn(move || {
                            let mut socket = Netlink::open().map_err(|error| {
                                NetlinkError::new(format!("delete link {name}"), error)
                            })?;
                            socket.delete_link(index, &name)
                        })
                        .map_err(|error| Cause::io("start deleting a bridge", error))?;
                    self.deleting.push((link.name.clone(), deletion));
                    return Ok(());
                }
                socket.delete_link(index, &link.name).map_err(Cause::from)
            }
            Action::SetMtu { link, mtu } => {
                let (socket, index) = self.link(link)?;
                socket.set_mtu(index, &link.name, *mtu).map_err(Cause::from)
            }
            Action::SetUp { link } => {
                let (socket, index) = self.link(link)?;
                socket.set_up(index, &link.name).map_err(Cause::from)
            }
            Action::SetMaster { link, bridge } => {
                let host = &mut self.host;
                let (index, master) =
                    (|| Ok::<_, NetlinkError>((host.link_index(link)?, host.link_index(bridge)?)))(
                    )
                    .map_err(Cause::from)?;
                host.set_master(index, link, master, bridge)
                    .map_err(Cause::from)
            }
            Action::SetHairpin { link } => {
                let (socket, index) = self.link(&LinkRef::host(link))?;
                socket.set_hairpin(index, link).map_err(Cause::from)
            }
            Action::AddAddress {
                link,
                address,
                no_prefix_route,
            } => {
                let (socket, index) = self.link(link)?;
                match socket.add_address(index, &link.name, *address, *no_prefix_route) {
                    // IPv6 is off on the link (a namespace or segment made for IPv4 only):
                    // turn it on, without the link-local address and its duplicate
                    // address detection, then add again.
                    Err(error) if address.is_ipv6() && error.errno() == Some(nix::libc::EACCES) => {
                        // In the node's namespace only on a bridge of kudonet's (its
                        // sysctls are written for no one else's interface).
                        if link.netns.is_none() {
                            let key = format!("net.ipv6.conf.{}.disable_ipv6", link.name);
                            self.check_own_bridge(&key, &link.name)?;
                        }
                        netns::enable_ipv6(&self.netns_dir, link).map_err(|error| {
                            Cause::io(format!("turn IPv6 on for {link}"), error)
                        })?;
                        let (socket, index) = self.link(link)?;
                        socket
                            .add_address(index, &link.name, *address, *no_prefix_route)
                            .map_err(Cause::from)
                    }
                    result => result.map_err(Cause::from),
                }
            }
            Action::DeleteAddress { link, address } => {
                let (socket, index) = self.link(link)?;
                socket
                    .delete_address(index, &link.name, *address)
                    .map_err(Cause::from)?;
                Ok(())
            }
            Action::DeleteDefaultRoute { namespace, gateway } => {
                let socket = self.socket(Some(namespace))?;
                let default = cidr::IpCidr::new(Family::of(*gateway).unspecified(), 0)
                    .expect("a /0 of any address");
                socket
                    .delete_route(default, names::ROUTE_PROTOCOL)
                    .map_err(Cause::from)
            }
            Action::ReplaceDefaultRoute {
                namespace,
                interface,
                gateway,
                onlink,
            } => {
                let eth0 = LinkRef::in_namespace(namespace, interface);
                let (socket, index) = self.link(&eth0)?;
                let default = cidr::IpCidr::new(Family::of(*gateway).unspecified(), 0)
                    .expect("a /0 of any address");
                if *onlink {
                    socket.replace_route_onlink(default, *gateway, index, names::ROUTE_PROTOCOL)
                } else {
                    socket.replace_route(default, *gateway, Some(index), names::ROUTE_PROTOCOL)
                }
                .map_err(Cause::from)
            }
            Action::ReplaceRoute {
                destination,
                gateway,
                device: Some(device),
            } => {
                let host = &mut self.host;
                let index = host.link_index(device).map_err(Cause::from)?;
                host.replace_route_onlink(*destination, *gateway, index, names::ROUTE_PROTOCOL)
                    .map_err(Cause::from)
            }
            Action::CreateVxlan {
                name,
                id,
                local,
                port,
                uplink,
                mtu,
            } => {
                let uplink_index = match uplink {
                    Some(uplink) => Some(self.host.link_index(uplink).map_err(Cause::from)?),
                    None => None,
                };
                self.create_marked(name, &names::vxlan_alias(), |host, scratch| {
                    host.create_vxlan(scratch, *id, *local, *port, uplink_index, *mtu)
                })
            }
            Action::AddFlood { link, destination } => {
                let (socket, index) = self.link(&LinkRef::host(link))?;
                socket
                    .add_flood(index, link, *destination)
                    .map_err(Cause::from)
            }
            Action::DeleteFlood { link, destination } => {
                let (socket, index) = self.link(&LinkRef::host(link))?;
                socket
                    .delete_flood(index, link, *destination)
                    .map_err(Cause::from)
            }
            Action::ReplaceLinkRoute {
                destination,
                device,
            } => {
                let host = &mut self.host;
                let index = host.link_index(device).map_err(Cause::from)?;
                host.replace_link_route(*destination, index, names::ROUTE_PROTOCOL)
                    .map_err(Cause::from)
            }
            Action::ReplaceRoute {
                destination,
                gateway,
                device: None,
            } => self
                .host
                .replace_route(*destination, *gateway, None, names::ROUTE_PROTOCOL)
                .map_err(Cause::from),
            Action::AddProxyNeighbour { link, address } => {
                let (socket, index) = self.link(&LinkRef::host(link))?;
                socket
                    .add_proxy(index, link, *address, names::ROUTE_PROTOCOL)
                    .map_err(Cause::from)
            }
            Action::DeleteProxyNeighbour { link, address } => {
                let (socket, index) = self.link(&LinkRef::host(link))?;
                socket
                    .delete_proxy(index, link, *address)
                    .map_err(Cause::from)
            }
            Action::DeleteRoute { destination } => self
                .host
                .delete_route(*destination, names::ROUTE_PROTOCOL)
                .map_err(Cause::from),
            Action::SetSysctl { key, value } => {
                if let Some(device) = names::sysctl_interface(key) {
                    self.check_own_bridge(key, device)?;
                }
                let path = sysctl_path(key);
                fs::write(&path, value)
                    .map_err(|error| Cause::io(format!("write {}", path.display()), error))
            }
            Action::SyncTable {
                table,
                chains,
                jumps,
                ..
            } => {
                // The table as observed, while the generation says nothing changed since:
                // no `iptables-save` before the restore.
                let before = self.generation.as_mut().and_then(|g| g.current().ok());
                let current = before.and_then(|now| self.snapshot.firewall().table_at(now, table));
                let written = self
                    .firewall
                    .sync_table(table, current, chains, jumps)
                    .map_err(Cause::from)?;
                let after = self.generation.as_mut().and_then(|g| g.current().ok());
                if let (Some(before), Some(after), Some(written)) = (before, after, written) {
                    self.snapshot
                        .firewall_mut()
                        .wrote(before, after, table, written);
                }
                Ok(())
            }
            Action::PurgeOtherBackend { table } => self
                .firewall
                .purge_other_backend(table)
                .map_err(Cause::from),
            Action::SyncNftables { ruleset, .. } => self.sync_nftables(ruleset),
            Action::DeleteNftables => self.delete_nftables(),
        }
    }

    /// kudonet's nftables table now, and the generation it is at (what a batch decided on
    /// it is based on): as observed while the generation has not moved since, else read.
    fn nftables_now(&mut self) -> Result<(&mut NfTables, u32, TableState), Cause> {
        let generation = self.generation.as_mut().ok_or_else(|| {
            Cause::new(
                std::io::Error::other("nftables is not available in this kernel"),
                false,
            )
        })?;
        let before = generation
            .current()
            .map_err(|error| Cause::io("nftables: read the generation", error))?;
        let (state, based_on) = match self.snapshot.firewall().nftables_at(before) {
            Some(state) => (state, before),
            None => generation
                .read_kudonet()
                .map_err(|error| Cause::io("nftables: read table inet kudonet", error))?,
        };
        Ok((generation, based_on, state))
    }

    /// Makes kudonet's table `ruleset` in one transaction: nothing when it is already,
    /// only elements when only they differ, else the whole table replaced atomically.
    fn sync_nftables(&mut self, ruleset: &crate::nftables::Ruleset) -> Result<(), Cause> {
        let (generation, before, state) = self.nftables_now()?;
        let current = match &state {
            TableState::Foreign => return Err(foreign_nftables("change")),
            TableState::Absent => None,
            TableState::Ours(current) => Some(current),
        };
        let Some(after) = generation
            .sync_kudonet(current, before, ruleset)
            .map_err(Cause::from)?
        else {
            return Ok(());
        };
        self.snapshot.firewall_mut().wrote_nftables(
            before,
            after,
            TableState::Ours(ruleset.clone()),
        );
        Ok(())
    }

    /// Deletes kudonet's table, never someone else's of the same name.
    fn delete_nftables(&mut self) -> Result<(), Cause> {
        let (generation, before, state) = self.nftables_now()?;
        match state {
            TableState::Absent => Ok(()),
            TableState::Foreign => Err(foreign_nftables("delete")),
            TableState::Ours(_) => {
                let after = generation.delete_kudonet(before).map_err(Cause::from)?;
                self.snapshot
                    .firewall_mut()
                    .wrote_nftables(before, after, TableState::Absent);
                Ok(())
            }
        }
    }
}

/// The refusal to touch an `inet kudonet` table without kudonet's comment.
fn foreign_nftables(verb: &str) -> Cause {
    Cause::refusal(format!(
        "refusing to {verb} nftables table inet kudonet: it has no comment \"kudonet\", so it \
         is someone else's"
    ))
}

impl Dataplane for KernelDataplane {
    fn check_can_apply(&mut self, action: &Action) -> Result<(), DataplaneError> {
        match action {
            // ip6tables may be missing where only IPv4 nodes were expected.
            Action::SyncTable { table, .. } => self
                .firewall
                .check_family(table.family)
                .map_err(|error| DataplaneError::Unavailable(error.into())),
            Action::SyncNftables { .. } | Action::DeleteNftables if self.generation.is_none() => {
                Err(DataplaneError::Unavailable(
                    firewall::check_nftables()
                        .err()
                        .unwrap_or_else(|| firewall::FirewallError::Nftables {
                            operation: "nftables is not available in this kernel".into(),
                            reason: "no nf_tables socket".into(),
                            errno: None,
                        })
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    fn check_can_change(&mut self) -> Result<(), DataplaneError> {
        // Opening for writing is enough to meet a read-only /proc/sys (a container's).
        let path = sysctl_path(names::IP_FORWARD);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(drop)
            .map_err(|error| {
                let context = format!("cannot change sysctls: {}", path.display());
                let can_retry = crate::dataplane::io_can_retry(&error);
                DataplaneError::Unavailable(Cause::new(
                    NeedsWritableSysctls(crate::dataplane::IoError {
                        context,
                        source: error,
                    }),
                    can_retry,
                ))
            })
    }
    fn observe(&mut self) -> Result<Observed, DataplaneError> {
        let reported = std::mem::take(&mut self.changes);
        let changes = if self.incremental {
            reported
        } else {
            Changes::everything()
        };
        let sources = Sources {
            host: &mut self.host,
            netns_dir: &self.netns_dir,
            others_namespaces: &self.others_namespaces,
            sockets: &mut self.namespaces,
            firewall: self.firewall.as_ref(),
            generation: self.generation.as_mut(),
        };
        observe(sources, &mut self.snapshot, &changes).map_err(|error| {
            // Half read: read everything the next time.
            self.changes = Changes::everything();
            DataplaneError::Observe(error.into())
        })
    }
    fn observe_incrementally(&mut self) {
        self.incremental = true;
    }
    fn changed(&mut self, changes: Changes) {
        self.changes.merge(changes);
    }
    fn read_others_namespaces(&mut self, paths: BTreeSet<String>) {
        // One named for the first time was never read: read it now.
        self.changes.namespaces.extend(
            paths
                .iter()
                .filter(|path| !self.others_namespaces.contains(*path))
                .cloned(),
        );
        self.others_namespaces = paths;
    }
    fn settle(&mut self) -> Result<(), DataplaneError> {
        // A bridge that could not be deleted is still there for the next observation to
        // see (and the next plan to delete again): say why, and go on.
        for (name, deletion) in self.deleting.drain(..) {
            let result = deletion.join().unwrap_or_else(|_| {
                Err(NetlinkError::new(
                    format!("delete link {name}"),
                    std::io::Error::other("the thread panicked"),
                ))
            });
            if let Err(error) = result {
                tracing::warn!(%error, "cannot delete bridge {name}");
            }
        }
        let dying = std::mem::take(&mut self.dying);
        self.changes
            .host_names
            .extend(dying.iter().map(|(_, name)| name.clone()));
        wait_for_dying_links(&mut self.host, dying)
            .map_err(|error| DataplaneError::Observe(observe::ObserveError::Netlink(error).into()))
    }
    fn apply(&mut self, action: &Action) -> Result<(), DataplaneError> {
        self.touches(action);
        crash_point();
        let result = self
            .apply_action(action)
            .map_err(|cause| DataplaneError::action(action, cause));
        crash_point();
        result
    }
}

/// How long the kernel may go without destroying one more of the dying links before
/// [`wait_for_dying_links`] takes it that the rest are held: a process still in their
/// namespace keeps it, and the veth, alive. The kernel destroys dying namespaces in
/// batches: between two, nothing goes for a while (0.7 s seen at N = 3000 on 2 busy cores).
const DYING_STALL: Duration = Duration::from_secs(2);

/// How often [`wait_for_dying_links`] checks every dying link, not only the first.
const DYING_SCAN: Duration = Duration::from_millis(100);

/// Waits until the kernel has destroyed the host ends of veths whose namespace was
/// deleted (`(index, name)` each), so that what follows sees the node without them. The
/// kernel destroys the devices of every dying namespace together, in batches; a link
/// still there after [`DYING_STALL`] without any progress belongs to a namespace some
/// process still uses, and is deleted here, if it is still kudonet's (its other end goes
/// with it). Failing to delete one is logged, not fatal: the next plan deletes it.
fn wait_for_dying_links(host: &mut Netlink, dying: Vec<(u32, String)>) -> Result<(), NetlinkError> {
    // Gone, or its index now names something else: not ours to wait for.
    let alive = |host: &mut Netlink, (index, name): &(u32, String)| {
        Ok::<_, NetlinkError>(
            host.get_link_by_index(*index)?
                .as_ref()
                .and_then(RawLink::parse)
                .is_some_and(|raw| raw.name == *name && raw.link.is_owned()),
        )
    };
    let mut pending: std::collections::VecDeque<(u32, String)> = dying.into();
    let (mut progress, mut scanned) = (Instant::now(), Instant::now());
    while !pending.is_empty() && progress.elapsed() < DYING_STALL {
        let before = pending.len();
        // Mostly in the order their namespaces died: check from the front, and now and
        // then all of them.
        if scanned.elapsed() >= DYING_SCAN {
            let mut still = std::collections::VecDeque::new();
            for link in pending {
                if alive(host, &link)? {
                    still.push_back(link);
                }
            }
            pending = still;
            scanned = Instant::now();
        } else {
            while let Some(link) = pending.front() {
                if alive(host, link)? {
                    break;
                }
                pending.pop_front();
            }
        }
        if pending.len() < before {
            progress = Instant::now();
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for link in pending {
        if alive(host, &link)? {
            tracing::warn!(
                link = %link.1,
                "the namespace of a removed instance is still in use (a process in it?): \
                 deleting its veth"
            );
            if let Err(error) = host.delete_link(link.0, &link.1) {
                tracing::warn!(%error, "the next pass deletes it");
            }
        }
    }
    Ok(())
}

/// A random unicast, locally administered MAC address.
fn random_mac() -> std::io::Result<[u8; 6]> {
    use std::io::Read;
    let mut mac = [0; 6];
    fs::File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// `/proc/sys` cannot be written: the message says what kudonet needs.
#[derive(Debug, thiserror::Error)]
#[error("{0} (kudonet needs a writable /proc/sys/net)")]
struct NeedsWritableSysctls(#[source] crate::dataplane::IoError);

/// A scratch name no other link creation of this or another kudonet uses at the same time:
/// seeded with the process, the clock and a counter (see [`names::scratch_link_name`]).
fn fresh_scratch_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    names::scratch_link_name(&format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}
