//! The library's desired-state directory: where it lives, what the library writes there,
//! and writing it so that an invalid request leaves it as it was.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cidr::Ipv4Inet;

use super::error::NetworkError;
use super::inet::with_prefix;
use crate::spec::{self, Node};

/// Environment variable naming the library's desired-state directory.
pub const STATE_DIR_ENV: &str = "KUDONET_STATE_DIR";
/// The library's desired-state directory when [`STATE_DIR_ENV`] is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kudonet/desired-state";
/// Environment variable naming the netns directory (what `--netns-dir` is to the CLI).
pub const NETNS_DIR_ENV: &str = "KUDONET_NETNS_DIR";
/// The netns directory when [`NETNS_DIR_ENV`] is not set.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

/// Environment variable naming the firewall backend (what `--firewall` is to the CLI):
/// `iptables` (the default) or `nftables`.
pub const FIREWALL_ENV: &str = "KUDONET_FIREWALL";

/// The file recording the node, relative to the state directory.
pub(crate) const NODE_FILE: &str = "node.yaml";
/// The folder of the instance files, relative to the state directory.
pub(crate) const INSTANCES_DIR: &str = "instances";

fn from_env(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Where the library works, read from the environment at each call.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub state_dir: PathBuf,
    pub netns_dir: PathBuf,
    /// [`FIREWALL_ENV`] as set, if set and not empty.
    pub firewall: Option<String>,
}

impl Config {
    pub fn from_env() -> Config {
        Config {
            state_dir: from_env(STATE_DIR_ENV, DEFAULT_STATE_DIR),
            netns_dir: from_env(NETNS_DIR_ENV, DEFAULT_NETNS_DIR),
            firewall: std::env::var(FIREWALL_ENV)
                .ok()
                .filter(|value| !value.is_empty()),
        }
    }

    /// The firewall backend [`FIREWALL_ENV`] names (iptables when unset): the library must
    /// use the one `kudonet run` uses on the node, or each would undo the other's rules.
    pub fn firewall(&self) -> Result<crate::spec::FirewallBackend, NetworkError> {
        match self.firewall.as_deref() {
            None | Some("iptables") => Ok(crate::spec::FirewallBackend::Iptables),
            Some("nftables") => Ok(crate::spec::FirewallBackend::Nftables),
            Some(other) => Err(NetworkError::InvalidRequest {
                reason: format!("{FIREWALL_ENV}={other:?}: expected iptables or nftables"),
            }),
        }
    }

    pub fn node_file(&self) -> PathBuf {
        self.state_dir.join(NODE_FILE)
    }

    /// The file of `instance` (whose id must be a DNS label: it becomes a file name).
    pub fn instance_file(&self, instance: &str) -> PathBuf {
        self.state_dir.join(instance_relative(instance))
    }
}

fn instance_relative(instance: &str) -> PathBuf {
    Path::new(INSTANCES_DIR).join(format!("{instance}.yaml"))
}

/// The node recorded in the state directory, if any.
pub(crate) fn recorded_node(config: &Config) -> Result<Option<Node>, NetworkError> {
    let path = config.node_file();
    if !path.exists() {
        return Ok(None);
    }
    let spec = spec::load(&path).map_err(|diagnostics| NetworkError::InvalidState {
        state_dir: config.state_dir.clone(),
        reason: one_line(&diagnostics.to_string()),
    })?;
    match spec.nodes.as_slice() {
        [node] => Ok(Some(node.clone())),
        _ => Err(NetworkError::InvalidState {
            state_dir: config.state_dir.clone(),
            reason: format!("{} must hold exactly one Node", path.display()),
        }),
    }
}

/// The recorded node, which must be `node_id`.
pub(crate) fn require_node(config: &Config, node_id: &str) -> Result<Node, NetworkError> {
    let node = recorded_node(config)?.ok_or_else(|| NetworkError::NodeNotSetUp {
        state_dir: config.state_dir.clone(),
    })?;
    check_same_node(config, node_id, &node)?;
    Ok(node)
}

pub(crate) fn check_same_node(
    config: &Config,
    node_id: &str,
    recorded: &Node,
) -> Result<(), NetworkError> {
    if recorded.name == node_id {
        Ok(())
    } else {
        Err(NetworkError::DifferentNode {
            requested: node_id.to_string(),
            recorded: recorded.name.clone(),
            state_dir: config.state_dir.clone(),
        })
    }
}

/// The ids of the instances recorded in the state directory (an Instance's `id`, else its
/// name).
pub(crate) fn recorded_instances(config: &Config) -> Result<Vec<String>, NetworkError> {
    let spec = spec::load(&config.state_dir).map_err(|diagnostics| NetworkError::InvalidState {
        state_dir: config.state_dir.clone(),
        reason: one_line(&diagnostics.to_string()),
    })?;
    Ok(spec
        .instances
        .into_iter()
        .map(|instance| instance.id.unwrap_or(instance.name))
        .collect())
}

/// A YAML double-quoted scalar (JSON strings are YAML): names can never be read as numbers,
/// booleans or anything but the string they are.
pub(crate) fn quote(value: &str) -> String {
    serde_json::to_string(value).expect("strings serialise")
}

/// A document the library writes, and which request value each of its lines records, so that
/// a problem found in it is reported in the caller's terms rather than as a file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document {
    pub content: String,
    /// The request value each line (1-based) records, if any.
    values: Vec<Option<String>>,
}

impl Document {
    /// A document whose first line is `header` (a comment).
    pub(crate) fn new(header: &str) -> Document {
        let mut document = Document {
            content: String::new(),
            values: Vec::new(),
        };
        document.line(header, None);
        document
    }

    /// A document of `content` as it is, recording no request value (to put back what a
    /// file held).
    pub(crate) fn verbatim(content: String) -> Document {
        let values = vec![None; content.lines().count()];
        Document { content, values }
    }

    /// Appends the line `text`, which records the request value `value`, if any.
    pub(crate) fn line(&mut self, text: &str, value: Option<&str>) {
        self.content.push_str(text);
        self.content.push('\n');
        self.values.push(value.map(str::to_string));
    }

    /// The request value recorded on `line` (1-based).
    fn value_at(&self, line: u64) -> Option<&str> {
        let index = usize::try_from(line).ok()?.checked_sub(1)?;
        self.values.get(index)?.as_deref()
    }
}

/// The Node document recorded for `setup_node`.
/// The Node document recorded for `setup_node`; `ipv6` is an IPv6 cidr the node already
/// had (the original API is IPv4: a node made dual stack in its file stays so).
pub(crate) fn node_document(
    node_id: &str,
    cidr: Ipv4Inet,
    ipv6: Option<cidr::Ipv6Inet>,
) -> Document {
    let mut document =
        Document::new("# Recorded by the kudonet library (kudonet::node::setup_node).");
    document.line("kind: Node", None);
    let id = format!("node_id {}", quote(node_id));
    document.line(&format!("name: {}", quote(node_id)), Some(&id));
    let cidr = with_prefix(cidr);
    let line = match ipv6 {
        Some(ipv6) => format!("cidr: [{cidr}, \"{ipv6:#}\"]"),
        None => format!("cidr: {cidr}"),
    };
    document.line(&line, Some(&format!("node_ip_cidr {cidr}")));
    document
}

/// A port published by an instance, as recorded: host port to instance port, both TCP and
/// UDP.
pub(crate) type PortPair = (u16, u16);

/// The Instance document recorded for `setup_instance`: `name` is the Instance name of
/// `instance_id` (see [`super::instance_name`]); an id that is not that name is recorded as
/// `id`, which names the namespace.
pub(crate) fn instance_document(
    instance_id: &str,
    name: &str,
    node_id: &str,
    address: Ipv4Inet,
    ports: &[PortPair],
) -> Document {
    let mut document =
        Document::new("# Recorded by the kudonet library (kudonet::instance::setup_instance).");
    document.line("kind: Instance", None);
    let id = format!("instance_id {}", quote(instance_id));
    document.line(&format!("name: {}", quote(name)), Some(&id));
    if name != instance_id {
        document.line(&format!("id: {}", quote(instance_id)), Some(&id));
    }
    document.line(
        &format!("node: {}", quote(node_id)),
        Some(&format!("node_id {}", quote(node_id))),
    );
    let address = with_prefix(address);
    document.line(
        &format!("address: {address}"),
        Some(&format!("instance_ip_cidr {address}")),
    );
    if !ports.is_empty() {
        document.line("ports:", None);
        for (index, (host, instance)) in ports.iter().enumerate() {
            let port = format!("ports[{index}] (source {host}, destination {instance})");
            for protocol in ["tcp", "udp"] {
                document.line(&format!("  - hostPort: {host}"), Some(&port));
                document.line(&format!("    instancePort: {instance}"), Some(&port));
                document.line(&format!("    protocol: {protocol}"), Some(&port));
            }
        }
    }
    document
}

/// A change to the state directory.
#[derive(Debug)]
pub(crate) enum Change {
    /// Write a document to a file (relative to the state directory).
    Write {
        relative: PathBuf,
        document: Document,
    },
}

impl Change {
    pub fn node(node_id: &str, cidr: Ipv4Inet, ipv6: Option<cidr::Ipv6Inet>) -> Change {
        Change::Write {
            relative: PathBuf::from(NODE_FILE),
            document: node_document(node_id, cidr, ipv6),
        }
    }

    pub fn instance(name: &str, document: Document) -> Change {
        Change::Write {
            relative: instance_relative(name),
            document,
        }
    }
}

/// Creates `dir` and its missing parents, mode 0755.
fn create_dir(dir: &Path) -> Result<(), NetworkError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(NetworkError::io("create folder", dir))
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

fn scratch_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    )
}

/// Validates the state directory as it would be after `change`, then makes the change
/// atomically. An invalid result leaves the directory untouched. Returns whether a file
/// changed (rewriting identical content is skipped, so a watching `kudonet run` is not
/// woken for nothing).
pub(crate) fn commit(config: &Config, change: &Change) -> Result<bool, NetworkError> {
    let Change::Write { relative, document } = change;
    let content = &document.content;
    let target = config.state_dir.join(relative);
    if fs::read_to_string(&target).is_ok_and(|current| &current == content) {
        return Ok(false);
    }
    create_dir(&config.state_dir)?;
    validate_with(config, relative, document)?;
    let folder = target.parent().expect("a file in the state directory");
    create_dir(folder)?;
    let name = target
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    // Hidden and not `.yaml`: readers of the directory skip it until the rename.
    let temporary = folder.join(format!(".{name}.{}.tmp", scratch_suffix()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(content.as_bytes())?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(NetworkError::io("write", &temporary)(error));
    }
    fs::rename(&temporary, &target).map_err(|error| {
        let _ = fs::remove_file(&temporary);
        NetworkError::io("write", &target)(error)
    })?;
    Ok(true)
}

/// Where the requested document is staged, in the scratch copy of the state directory.
const STAGED_REQUEST: &str = "~~kudonet-request.yaml";

/// Loads a copy of the state directory with `relative` set to `document`, in a hidden
/// scratch folder inside it (which loads of the directory skip), and reports what is wrong
/// with the copy as an invalid request, in the caller's terms (see [`caller_terms`]).
fn validate_with(
    config: &Config,
    relative: &Path,
    document: &Document,
) -> Result<(), NetworkError> {
    let scratch = config
        .state_dir
        .join(format!(".kudonet-staging-{}", scratch_suffix()));
    let result = (|| {
        DirBuilder::new()
            .mode(0o700)
            .create(&scratch)
            .map_err(NetworkError::io("create folder", &scratch))?;
        let mut ignored = Vec::new();
        for file in spec::state_files(&config.state_dir, &mut ignored) {
            let Ok(inside) = file.strip_prefix(&config.state_dir) else {
                continue;
            };
            if inside == relative {
                continue;
            }
            let copy = scratch.join(inside);
            if let Some(parent) = copy.parent() {
                fs::create_dir_all(parent).map_err(NetworkError::io("create folder", parent))?;
            }
            fs::copy(&file, &copy).map_err(NetworkError::io("copy", &file))?;
        }
        // Loaded last (`~` sorts after letters and digits), so that a clash between the request
        // and a recorded file is reported at the request, which is what the caller can change.
        let staged = scratch.join(STAGED_REQUEST);
        fs::write(&staged, &document.content).map_err(NetworkError::io("write", &staged))?;
        spec::load(&scratch).map(drop).map_err(|diagnostics| {
            let problems: Vec<String> = diagnostics
                .iter()
                .map(|diagnostic| caller_terms(diagnostic, &scratch, document))
                .collect();
            NetworkError::invalid(problems.join("; "))
        })
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// A problem found in the staged directory, said in the terms of the request: the request
/// value the problem is about (`instance_ip_cidr 10.0.0.2/32: ...`) rather than the line of a
/// file the caller never wrote, and other recorded files by what they record (`instance
/// "web"`, `node "node"`) rather than by path and position.
fn caller_terms(diagnostic: &spec::Diagnostic, scratch: &Path, document: &Document) -> String {
    let message = without_positions(&diagnostic.message, scratch);
    let file = diagnostic.origin.file.strip_prefix(scratch).ok();
    if file == Some(Path::new(STAGED_REQUEST)) {
        let value = diagnostic
            .origin
            .position
            .and_then(|position| document.value_at(position.line));
        match value {
            Some(value) => format!("{value}: {message}"),
            None => message,
        }
    } else {
        match file {
            Some(file) => format!("{}: {message}", recorded_what(&scratch.join(file))),
            None => message,
        }
    }
}

/// `message` with each ` at FILE:LINE:COLUMN` naming a file of the staged directory replaced
/// by what that file records.
fn without_positions(message: &str, scratch: &Path) -> String {
    let marker = format!(" at {}/", scratch.display());
    let mut text = message.to_string();
    while let Some(start) = text.find(&marker) {
        let rest = &text[start + 4..];
        // The path runs to the `:LINE:COLUMN` after it.
        let end = rest.find(':').unwrap_or(rest.len());
        let path = PathBuf::from(&rest[..end]);
        let after = rest[end..]
            .trim_start_matches(|c: char| c == ':' || c.is_ascii_digit())
            .to_string();
        let what = recorded_what(&path);
        // "published by Instance "api" at ..." already says who.
        let replacement = if text[..start].contains(" by Instance ") {
            String::new()
        } else {
            format!(" by {what}")
        };
        text = format!("{}{replacement}{after}", &text[..start]);
    }
    text
}

/// A field of a document the library wrote (`name:`, `id:`), unquoted.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.trim();
        serde_json::from_str::<String>(value)
            .ok()
            .or_else(|| Some(value.to_string()))
    })
}

fn is_kind(text: &str, kind: &str) -> bool {
    let line = format!("kind: {kind}");
    text.lines().any(|l| l.trim_end() == line)
}

/// The instance id recorded in the library's file for Instance `name`, if there is one.
pub(crate) fn recorded_instance_id(config: &Config, name: &str) -> Option<String> {
    let text = fs::read_to_string(config.instance_file(name)).ok()?;
    is_kind(&text, "Instance").then(|| field(&text, "id:").or_else(|| field(&text, "name:")))?
}

/// What a file of the library's state directory records, in the caller's terms.
fn recorded_what(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    if is_kind(&text, "Node") {
        let name = field(&text, "name:").unwrap_or_default();
        format!("node {}", quote(&name))
    } else if is_kind(&text, "Instance") {
        let id = field(&text, "id:")
            .or_else(|| field(&text, "name:"))
            .unwrap_or_default();
        format!("instance {}", quote(&id))
    } else {
        path.file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }
}

/// Removes a file the library wrote; a missing one is fine. Returns whether it existed.
pub(crate) fn remove(path: &Path) -> Result<bool, NetworkError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(NetworkError::io("remove", path)(error)),
    }
}

/// Removes every file the library writes: the node file and the instance files.
pub(crate) fn remove_all(config: &Config) -> Result<(), NetworkError> {
    let instances = config.state_dir.join(INSTANCES_DIR);
    match fs::read_dir(&instances) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(NetworkError::io("list", &instances))?;
                let name = entry.file_name();
                if spec::is_state_file_name(&name.to_string_lossy()) {
                    remove(&entry.path())?;
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(NetworkError::io("list", &instances)(error)),
    }
    remove(&config.node_file())?;
    Ok(())
}

/// Several lines as one: `; ` between them.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Protocol, PublishedPort};

    #[test]
    fn recorded_documents_load_as_requested() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(NODE_FILE),
            node_document("123", "10.0.0.1/24".parse().unwrap(), None).content,
        )
        .unwrap();
        fs::create_dir(dir.path().join(INSTANCES_DIR)).unwrap();
        fs::write(
            dir.path().join(instance_relative("web")),
            instance_document(
                "web",
                "web",
                "123",
                "10.0.0.2/24".parse().unwrap(),
                &[(80, 8080)],
            )
            .content,
        )
        .unwrap();
        let spec = spec::load(dir.path()).unwrap();
        assert_eq!(spec.nodes[0].name, "123", "quoted: a string, not a number");
        assert_eq!(spec.nodes[0].bridge, "kudo0");
        let instance = &spec.instances[0];
        assert_eq!(
            (instance.name.as_str(), instance.node.as_str()),
            ("web", "123")
        );
        let port = |protocol| PublishedPort {
            host_port: 80,
            instance_port: 8080,
            protocol,
            host_ip: None,
        };
        assert_eq!(instance.ports, [port(Protocol::Tcp), port(Protocol::Udp)]);
    }

    #[test]
    fn an_invalid_change_leaves_the_directory_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().join("state"),
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            firewall: None,
        };
        assert!(
            commit(
                &config,
                &Change::node("node", "10.0.0.1/24".parse().unwrap(), None)
            )
            .unwrap()
        );
        let outside = instance_document("web", "web", "node", "10.0.1.2/24".parse().unwrap(), &[]);
        let error = commit(&config, &Change::instance("web", outside)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid request: instance_ip_cidr 10.0.1.2/24: address 10.0.1.2 is outside \
             Node \"node\"'s subnet 10.0.0.0/24"
        );
        let mut ignored = Vec::new();
        assert_eq!(
            spec::state_files(&config.state_dir, &mut ignored),
            [config.node_file()]
        );
        let hidden: Vec<_> = fs::read_dir(&config.state_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "scratch left behind: {hidden:?}");
        assert!(
            !commit(
                &config,
                &Change::node("node", "10.0.0.1/24".parse().unwrap(), None)
            )
            .unwrap(),
            "same content: not rewritten"
        );
    }
}
