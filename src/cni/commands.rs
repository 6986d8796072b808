//! The commands that read or change the node: ADD, DEL, CHECK, GC and STATUS, through the
//! library's state directory, lock and converge.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::document::{self, Recorded, instance_name, read_recorded};
use super::error::{
    CHECK_FAILED, CniError, INVALID_CONFIG, INVALID_ENVIRONMENT, IO_FAILURE, MISSING_PRIVILEGES,
    NODE_NOT_SET_UP, NOT_AVAILABLE, NOT_CONVERGED, REQUEST_REFUSED, TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
};
use super::request::{AddressText, Attachment, Config, RequestedAddress, quote};
use super::result::{self, Attached, Interface, mac_text};
use crate::compat::{self, store};
use crate::dataplane::Dataplane;
use crate::kernel::KernelDataplane;
use crate::kernel::attachment::{check_network_namespace, read_attachment};
use crate::lock::{LockError, NodeLock};
use crate::plan::{Scope, plan};
use crate::reconcile::{DesiredError, load_desired};
use crate::spec::{Desired, Family, Instance, Node};
use crate::{names, privileges};

/// The library's view of the state directory, as this configuration names it.
fn store_config(config: &Config) -> store::Config {
    store::Config {
        state_dir: config.state_dir.clone(),
        netns_dir: config.netns_dir.clone(),
        firewall: Some(config.firewall.to_string()),
    }
}

/// The desired state of this machine's node, as `kudonet apply` would choose it.
fn desired(config: &Config, code: u32, msg: &str) -> Result<Desired, CniError> {
    match load_desired(&config.state_dir, None) {
        Ok((_, mut desired)) => {
            desired.firewall = config.firewall;
            Ok(desired)
        }
        Err(error) => {
            // Diagnostics name their files; the choice of node names none.
            let details = match error {
                DesiredError::Node(reason) => {
                    format!("stateDir {}: {reason}", config.state_dir.display())
                }
                other => store::one_line(&other.to_string()),
            };
            Err(CniError::new(code, msg).details(details))
        }
    }
}

fn node(config: &Config) -> Result<Node, CniError> {
    desired(config, NODE_NOT_SET_UP, "node not set up").map(|desired| desired.node)
}

fn require_privileges(command: &str) -> Result<(), CniError> {
    privileges::require(&format!("kudonet (CNI {command})"), privileges::NODE_ADMIN).map_err(
        |missing| {
            CniError::new(MISSING_PRIVILEGES, "missing privileges").details(missing.to_string())
        },
    )
}

/// Takes the node's change lock, waiting for its holder as the library does.
fn lock_node(node: &str) -> Result<NodeLock, CniError> {
    compat::wait_for_node(node, |held| tracing::info!("waiting: {held}")).map_err(|error| {
        match error {
            LockError::Held { .. } | LockError::Interrupted { .. } => {
                CniError::new(TRY_AGAIN_LATER, "try again later").details(error.to_string())
            }
            other => CniError::new(IO_FAILURE, "I/O failure").details(other.to_string()),
        }
    })
}

fn io_failure(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> CniError {
    let details = format!("cannot {what} {}", path.display());
    move |error| CniError::new(IO_FAILURE, "I/O failure").details(format!("{details}: {error}"))
}

/// Whether `recorded` is the record of `attachment` (and not of another attachment whose
/// instance name meets its own).
fn is_of(recorded: &Recorded, attachment: &Attachment) -> bool {
    recorded.container_id == attachment.container_id && recorded.ifname == attachment.ifname
}

/// ADD: records the attachment and converges the node for it; prints the result.
pub(super) fn add(
    config: &Config,
    attachment: &Attachment,
    args: &str,
) -> Result<String, CniError> {
    let request = config.add_request(args)?;
    check_network_namespace(Path::new(&attachment.netns)).map_err(|problem| {
        CniError::new(INVALID_ENVIRONMENT, "invalid CNI_NETNS").details(problem)
    })?;
    require_privileges("ADD")?;
    let node = node(config)?;
    let name = instance_name(&attachment.container_id, &attachment.ifname);
    let relative = document::relative_path(&config.network, &name);
    let path = config.state_dir.join(&relative);
    let store = store_config(config);
    let _lock = lock_node(&node.name)?;
    let before = read_recorded(&path).map_err(io_failure("read", &path))?;
    if let Some((recorded, _)) = &before
        && !is_of(recorded, attachment)
    {
        return Err(
            CniError::new(REQUEST_REFUSED, "request refused").details(format!(
                "instance name {} is already attachment (CNI_CONTAINERID {}, CNI_IFNAME {})",
                quote(&name),
                quote(&recorded.container_id),
                quote(&recorded.ifname)
            )),
        );
    }
    // The spec: an interface of that name in the namespace is an error, a repeated ADD
    // included (the runtime calls DEL first).
    if interface_exists(Path::new(&attachment.netns), &attachment.ifname)? {
        return Err(
            CniError::new(INVALID_ENVIRONMENT, "invalid CNI_IFNAME").details(format!(
                "interface {} already exists in {}",
                quote(&attachment.ifname),
                attachment.netns
            )),
        );
    }
    let mut request = request;
    if request.addresses.is_empty() {
        request.addresses = allocate(config, attachment, &name)?;
    }
    let document =
        document::instance_document(&config.network, attachment, &name, &node.name, &request);
    store::commit(
        &store,
        &store::Change::Write {
            relative: relative.clone(),
            document,
        },
    )?;
    if let Err(error) = compat::converge(&store, &node.name, Scope::instance(&name)) {
        roll_back(
            &store,
            &node.name,
            &name,
            &relative,
            before.map(|(_, text)| text),
        );
        return Err(error.into());
    }
    let attached = attached(&node, attachment, &name)?;
    result::add_result(config.version, &attached, config.prev_result.as_ref())
}

/// Whether the namespace at `netns` has an interface named `ifname`.
fn interface_exists(netns: &Path, ifname: &str) -> Result<bool, CniError> {
    crate::kernel::attachment::has_interface(netns, ifname).map_err(|error| {
        CniError::new(IO_FAILURE, "I/O failure").details(format!(
            "cannot read the interfaces of {}: {error}",
            netns.display()
        ))
    })
}

/// The addresses kudonet gives an attachment that asks for none: the lowest free one of
/// each of the node's families, as the planner allocates, decided here under the node's
/// lock and recorded in the document. Recorded, an attachment's address is its own: a
/// later request for it is refused, and what a container does to its own interface (add
/// another container's address, say) never moves anyone.
fn allocate(
    config: &Config,
    attachment: &Attachment,
    name: &str,
) -> Result<Vec<RequestedAddress>, CniError> {
    let mut desired = desired(config, NODE_NOT_SET_UP, "node not set up")?;
    desired.instances.retain(|instance| instance.name != name);
    desired.instances.push(Instance {
        name: name.to_string(),
        id: None,
        node: desired.node.name.clone(),
        addresses: Vec::new(),
        ports: Vec::new(),
        netns: Some(attachment.netns.clone()),
        interface: attachment.ifname.clone(),
    });
    let observed = observe(config, &desired)
        .map_err(|details| CniError::new(NOT_CONVERGED, "not converged").details(details))?;
    let allocation = crate::plan::allocate::allocate(&desired, &observed);
    if let Some((_, why)) = allocation.exhausted.iter().find(|(of, _)| of == name) {
        return Err(CniError::new(REQUEST_REFUSED, "request refused").details(why.clone()));
    }
    Ok(allocation
        .allocated
        .get(name)
        .into_iter()
        .flatten()
        .map(|address| RequestedAddress {
            address: AddressText::WithPrefix(*address),
            source: "the address kudonet allocated".to_string(),
        })
        .collect())
}

/// The node as it is, the namespaces `desired`'s instances live in included; else why not.
fn observe(config: &Config, desired: &Desired) -> Result<crate::observed::Observed, String> {
    KernelDataplane::for_backend(&config.netns_dir, config.firewall)
        .and_then(|mut dataplane| {
            dataplane.read_others_namespaces(desired.others_namespaces());
            dataplane.observe()
        })
        .map_err(|error| format!("cannot observe the node: {error}"))
}

/// Puts the attachment's document back as it was before a failed ADD (none, or the one
/// of an earlier ADD) and converges again, so that a failed ADD leaves nothing behind.
fn roll_back(
    store: &store::Config,
    node: &str,
    name: &str,
    relative: &Path,
    before: Option<String>,
) {
    let restored = match before {
        Some(text) => store::commit(
            store,
            &store::Change::Write {
                relative: relative.to_path_buf(),
                document: store::Document::verbatim(text),
            },
        )
        .map(drop),
        None => store::remove(&store.state_dir.join(relative)).map(drop),
    };
    if let Err(error) = restored.and_then(|()| compat::converge(store, node, Scope::instance(name)))
    {
        tracing::warn!("rolling back instance {name}: {error}");
    }
}

/// What ADD reports: the interfaces and addresses the kernel has for the attachment.
fn attached(node: &Node, attachment: &Attachment, name: &str) -> Result<Attached, CniError> {
    let host = names::host_interface_name(name);
    let links = read_attachment(Path::new(&attachment.netns), &attachment.ifname, &host).map_err(
        |error| {
            CniError::new(IO_FAILURE, "I/O failure")
                .details(format!("cannot read attachment {name} back: {error}"))
        },
    )?;
    let (bridge, bridge_mac) = links.bridge.ok_or_else(|| {
        CniError::new(NOT_CONVERGED, "not converged").details(format!(
            "host interface {host} of instance {name} is on no bridge"
        ))
    })?;
    Ok(Attached {
        interfaces: [
            Interface {
                name: bridge,
                mac: bridge_mac.map(mac_text),
                sandbox: None,
            },
            Interface {
                name: host,
                mac: links.host_mac.map(mac_text),
                sandbox: None,
            },
            Interface {
                name: attachment.ifname.clone(),
                mac: links.container_mac.map(mac_text),
                sandbox: Some(attachment.netns.clone()),
            },
        ],
        addresses: links
            .addresses
            .into_iter()
            .map(|address| (address, node.gateway(Family::of(address.address()))))
            .collect(),
    })
}

/// DEL: removes the attachment's document and converges. Best effort: it succeeds when
/// the attachment is already gone, when its namespace is, and when the state directory
/// has no node to converge (the document alone goes).
pub(super) fn del(config: &Config, attachment: &Attachment) -> Result<(), CniError> {
    let name = instance_name(&attachment.container_id, &attachment.ifname);
    let path = config
        .state_dir
        .join(document::relative_path(&config.network, &name));
    let store = store_config(config);
    let remove = |path: &Path| -> Result<(), CniError> {
        match read_recorded(path).map_err(io_failure("read", path))? {
            // Another attachment's record under the same name: this one has none.
            Some((recorded, _)) if !is_of(&recorded, attachment) => Ok(()),
            _ => store::remove(path).map(drop).map_err(CniError::from),
        }
    };
    require_privileges("DEL")?;
    let node = match node(config) {
        Ok(node) => node,
        Err(error) => {
            tracing::warn!("{error}: removing the document of instance {name} only");
            return remove(&path);
        }
    };
    let _lock = match lock_node(&node.name) {
        Ok(lock) => lock,
        Err(error) => {
            // A runtime may never call DEL again (Podman ignores a failed one): the document
            // goes now, and whoever holds the lock, or the next pass of `kudonet run`,
            // removes the rest.
            remove(&path)?;
            return Err(error);
        }
    };
    remove(&path)?;
    // A DEL fails on a kernel failure removing what was the attachment's (its veth and
    // port rules go in the node's scope once its document is gone), not on a conflict or a
    // difference of the node's: a runtime retries a failed DEL (the kubelet forever), and
    // the node's troubles are not the attachment's.
    let own = Scope::instance(&name);
    compat::converge_reporting(
        &store,
        &node.name,
        &|scope| scope.is_node() || *scope == own,
        &|scope| *scope == own,
    )
    .map_err(CniError::from)
}

/// CHECK: whether the attachment is as it should be, changing nothing: nothing left to do
/// for it or the node, and `prevResult`'s addresses for its interface are its own.
pub(super) fn check(config: &Config, attachment: &Attachment) -> Result<(), CniError> {
    let prev = config.prev_result.as_ref().ok_or_else(|| {
        CniError::new(INVALID_CONFIG, "required prevResult missing")
            .details("CHECK compares the attachment with the result of its ADD")
    })?;
    let name = instance_name(&attachment.container_id, &attachment.ifname);
    let path = config
        .state_dir
        .join(document::relative_path(&config.network, &name));
    match read_recorded(&path).map_err(io_failure("read", &path))? {
        Some((recorded, _)) if is_of(&recorded, attachment) => {}
        _ => {
            return Err(
                CniError::new(UNKNOWN_CONTAINER, "container unknown").details(format!(
                    "no attachment (CNI_CONTAINERID {}, CNI_IFNAME {}) on network {}",
                    quote(&attachment.container_id),
                    quote(&attachment.ifname),
                    quote(&config.network)
                )),
            );
        }
    }
    let expected = result::container_addresses(prev, &attachment.ifname, &attachment.netns)?;
    require_privileges("CHECK")?;
    let desired = desired(config, NODE_NOT_SET_UP, "node not set up")?;
    // Under the lock: a converge going on would show as differences.
    let _lock = lock_node(&desired.node.name)?;
    let failed = |details: String| CniError::new(CHECK_FAILED, "check failed").details(details);
    let observed = observe(config, &desired).map_err(failed)?;
    let planned = plan(&desired, &observed);
    let concerns = |scope: &Scope| scope.is_node() || scope.instance_name() == Some(name.as_str());
    let mut problems: Vec<String> = planned
        .conflicts
        .iter()
        .filter(|conflict| concerns(&conflict.scope))
        .map(|conflict| format!("conflict: {conflict}"))
        .collect();
    problems.extend(
        planned
            .steps
            .iter()
            // Clean-up of what no instance uses is not about this one.
            .filter(|step| {
                concerns(&step.scope) && !(step.scope.is_node() && step.action.is_best_effort())
            })
            .map(|step| format!("still differs: {}", step.action.summary())),
    );
    let instance = desired
        .instances
        .iter()
        .find(|instance| instance.name == name);
    let actual: Vec<cidr::IpInet> = match instance {
        None => {
            problems.push(format!(
                "instance {name} is not on node {:?}",
                desired.node.name
            ));
            Vec::new()
        }
        Some(instance) if !instance.addresses.is_empty() => instance.addresses.clone(),
        Some(_) => planned.allocated.get(&name).cloned().unwrap_or_default(),
    };
    let show = |addresses: &[cidr::IpInet]| {
        if addresses.is_empty() {
            "none".to_string()
        } else {
            addresses
                .iter()
                .map(|address| format!("{address:#}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut actual_sorted = actual.clone();
    actual_sorted.sort_by_key(|address| (Family::of(address.address()), address.address()));
    if instance.is_some() && actual_sorted != expected {
        problems.push(format!(
            "prevResult gives {} the addresses {}, instance {name} has {}",
            attachment.ifname,
            show(&expected),
            show(&actual_sorted)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(failed(problems.join("; ")))
    }
}

/// GC: removes the documents of this network's attachments the runtime no longer lists,
/// then converges the node once. Goes on past errors and reports them all.
pub(super) fn gc(config: &Config) -> Result<(), CniError> {
    let valid: BTreeSet<(String, String)> = config
        .valid_attachments
        .clone()
        .ok_or_else(|| {
            CniError::new(INVALID_CONFIG, "missing cni.dev/valid-attachments")
                .details("GC removes the attachments that list does not name")
        })?
        .into_iter()
        .collect();
    require_privileges("GC")?;
    let node = node(config);
    let _lock = match &node {
        Ok(node) => Some(lock_node(&node.name)?),
        Err(error) => {
            tracing::warn!("{error}: removing documents only");
            None
        }
    };
    let mut errors = Vec::new();
    for path in stale_documents(config, &valid, &mut errors) {
        if let Err(error) = store::remove(&path) {
            errors.push(CniError::from(error));
        }
    }
    if let Ok(node) = &node
        && let Err(error) = compat::converge(&store_config(config), &node.name, Scope::Node)
    {
        errors.push(error.into());
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let details = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            Err(CniError::new(errors[0].code, errors[0].msg.clone()).details(details))
        }
    }
}

/// The documents of this network whose attachment is not in `valid`.
fn stale_documents(
    config: &Config,
    valid: &BTreeSet<(String, String)>,
    errors: &mut Vec<CniError>,
) -> Vec<PathBuf> {
    let dir = document::network_dir(&config.state_dir, &config.network);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            errors.push(io_failure("list", &dir)(error));
            return Vec::new();
        }
    };
    let mut stale = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => {
                errors.push(io_failure("list", &dir)(error));
                continue;
            }
        };
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        if !crate::spec::is_state_file_name(&file_name) {
            continue;
        }
        match read_recorded(&path) {
            Ok(Some((recorded, _))) => {
                if !valid.contains(&(recorded.container_id, recorded.ifname)) {
                    stale.push(path);
                }
            }
            // Not a document of the plugin: someone else's file, kept.
            Ok(None) => {}
            Err(error) => errors.push(io_failure("read", &path)(error)),
        }
    }
    stale.sort();
    stale
}

/// STATUS: whether an ADD could succeed: the state directory has a valid Node for this
/// machine.
pub(super) fn status(config: &Config) -> Result<(), CniError> {
    desired(config, NOT_AVAILABLE, "plugin not available").map(drop)
}
