//! What a runtime asks: the command and the attachment from the environment, the network
//! configuration from stdin, the addresses, ports and MAC it requests (CNI_ARGS, `args`,
//! `runtimeConfig`). Parsing only: nothing here touches the node.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use cidr::IpInet;
use serde::Deserialize;
use serde_json::Value;

use super::error::{
    CniError, DECODING_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENVIRONMENT,
    UNSUPPORTED_FIELD,
};
use crate::compat::store::{DEFAULT_NETNS_DIR, DEFAULT_STATE_DIR, FIREWALL_ENV, NETNS_DIR_ENV};
use crate::spec::{self, FirewallBackend, Protocol, PublishedPort};

/// The CNI versions kudonet speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A CNI version kudonet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.4.0: each `ips` entry carries `"version": "4"` or `"6"`.
    V0_4_0,
    /// 1.0.0.
    V1_0_0,
    /// 1.1.0: adds GC and STATUS; results as 1.0.0's.
    V1_1_0,
}

impl Version {
    /// The newest version kudonet speaks.
    pub const NEWEST: Version = Version::V1_1_0;

    fn parse(text: &str) -> Option<Version> {
        match text {
            "0.4.0" => Some(Version::V0_4_0),
            "1.0.0" => Some(Version::V1_0_0),
            "1.1.0" => Some(Version::V1_1_0),
            _ => None,
        }
    }

    /// As the protocol writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

/// The operation `CNI_COMMAND` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it (best effort, idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Remove the attachments a runtime no longer knows (1.1.0).
    Gc,
    /// Whether an ADD could succeed (1.1.0).
    Status,
    /// Which versions the plugin speaks.
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Command> {
        match text {
            "ADD" => Some(Command::Add),
            "DEL" => Some(Command::Del),
            "CHECK" => Some(Command::Check),
            "GC" => Some(Command::Gc),
            "STATUS" => Some(Command::Status),
            "VERSION" => Some(Command::Version),
            _ => None,
        }
    }

    /// The environment variables the command cannot do without (CNI_PATH is never one:
    /// kudonet delegates to no other plugin).
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CONTAINER_ID, NETNS, IFNAME],
            Command::Del => &[CONTAINER_ID, IFNAME],
            Command::Gc | Command::Status | Command::Version => &[],
        }
    }
}

/// The variable naming the command.
pub const COMMAND: &str = "CNI_COMMAND";
const CONTAINER_ID: &str = "CNI_CONTAINERID";
const NETNS: &str = "CNI_NETNS";
const IFNAME: &str = "CNI_IFNAME";
const ARGS: &str = "CNI_ARGS";

/// One attachment of a container to the network: what ADD, DEL and CHECK are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: String,
    /// `CNI_NETNS`: the container's network namespace; empty when DEL was given none.
    pub netns: String,
}

/// The command and the attachment, read from the environment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// For ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_ARGS`, as given (empty when unset).
    pub args: String,
}

/// Reads the environment through `getenv` (the process's, in `run`): a missing required
/// variable, or one that is not usable, is code 4 naming it.
pub fn environment(getenv: &dyn Fn(&str) -> Option<OsString>) -> Result<Environment, CniError> {
    let text = |name: &str| -> Result<String, CniError> {
        match getenv(name) {
            None => Ok(String::new()),
            Some(value) => value.into_string().map_err(|value| {
                CniError::new(INVALID_ENVIRONMENT, format!("invalid {name}"))
                    .details(format!("{value:?} is not UTF-8"))
            }),
        }
    };
    let command_text = text(COMMAND)?;
    if command_text.is_empty() {
        return Err(missing(&[COMMAND]));
    }
    let command = Command::parse(&command_text).ok_or_else(|| {
        CniError::new(
            INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND: {command_text}"),
        )
    })?;
    let mut values = std::collections::BTreeMap::new();
    for name in [CONTAINER_ID, NETNS, IFNAME, ARGS] {
        values.insert(name, text(name)?);
    }
    let absent: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|name| values[name].is_empty())
        .collect();
    if !absent.is_empty() {
        return Err(missing(&absent));
    }
    let attachment = match command {
        Command::Add | Command::Del | Command::Check => {
            let container_id = values[CONTAINER_ID].clone();
            check_container_id(&container_id)?;
            let ifname = values[IFNAME].clone();
            check_ifname(&ifname)?;
            Some(Attachment {
                container_id,
                ifname,
                netns: values[NETNS].clone(),
            })
        }
        Command::Gc | Command::Status | Command::Version => None,
    };
    Ok(Environment {
        command,
        attachment,
        args: values[ARGS].clone(),
    })
}

fn missing(names: &[&str]) -> CniError {
    CniError::new(
        INVALID_ENVIRONMENT,
        format!("required env variables [{}] missing", names.join(",")),
    )
}

/// Container ids and network names: a letter or digit, then letters, digits, `_`, `.`
/// and `-` (the CNI specification's rule).
pub fn is_cni_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_container_id(id: &str) -> Result<(), CniError> {
    if is_cni_name(id) {
        Ok(())
    } else {
        Err(
            CniError::new(INVALID_ENVIRONMENT, "invalid characters in CNI_CONTAINERID").details(
                format!(
                    "{}: a container id starts with a letter or digit, followed by letters, \
                     digits, _, . and -",
                    quote(id)
                ),
            ),
        )
    }
}

/// The rules of Linux interface names: 1 to 15 bytes, not `.` or `..`, without `/`, `:`
/// or whitespace.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.len() > crate::names::MAX_INTERFACE_NAME {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains /, :, whitespace or a control character")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(CniError::new(INVALID_ENVIRONMENT, "invalid CNI_IFNAME")
            .details(format!("interface name {} {problem}", quote(name)))),
    }
}

/// A JSON (and YAML) double-quoted string.
pub fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialise")
}

/// The network configuration on stdin, as far as kudonet reads it; every other key is
/// ignored (`type`, `capabilities`, `ipam`, `dns`...), as CNI plugins do.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    cni_version: Option<String>,
    cni_versions: Option<Vec<String>>,
    name: Option<String>,
    state_dir: Option<String>,
    firewall: Option<String>,
    runtime_config: Option<RuntimeConfig>,
    args: Option<ConfigArgs>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `runtimeConfig`: what the runtime passes for the capabilities a plugin declares.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    port_mappings: Option<Vec<PortMapping>>,
    ips: Option<Vec<String>>,
    mac: Option<String>,
}

/// One of `runtimeConfig.portMappings`, as the portmap plugin reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: i64,
    container_port: i64,
    protocol: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

/// `args`: `args.cni.ips` and `args.cni.mac` (CONVENTIONS.md).
#[derive(Debug, Default, Deserialize)]
struct ConfigArgs {
    cni: Option<CniConfigArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct CniConfigArgs {
    ips: Option<Vec<String>>,
    mac: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The network configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The version the request is answered in.
    pub version: Version,
    /// The network's name: the folder of its documents.
    pub network: String,
    /// The desired-state directory (`stateDir`).
    pub state_dir: PathBuf,
    /// Where named namespaces are (`KUDONET_NETNS_DIR`).
    pub netns_dir: PathBuf,
    /// Which firewall holds kudonet's rules.
    pub firewall: FirewallBackend,
    /// `prevResult`, if given.
    pub prev_result: Option<Value>,
    /// GC: the attachments still valid, as (container id, interface name).
    pub valid_attachments: Option<Vec<(String, String)>>,
    raw_requests: Requests,
}

/// What ADD may request besides the attachment itself.
#[derive(Debug, Clone, Default)]
struct Requests {
    ports: Option<Vec<PortMappingValues>>,
    runtime_ips: Option<Vec<String>>,
    runtime_mac: Option<String>,
    args_ips: Option<Vec<String>>,
    args_mac: Option<String>,
}

#[derive(Debug, Clone)]
struct PortMappingValues {
    host_port: i64,
    container_port: i64,
    protocol: Option<String>,
    host_ip: Option<String>,
}

/// The `cniVersion` a request's stdin names, if it is JSON with one: what an error
/// document is written in when the request is not understood further.
pub fn stated_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    Some(value.get("cniVersion")?.as_str()?.to_string())
}

/// Reads the network configuration: JSON (else code 6), a usable `name` (else code 7), a
/// version kudonet speaks (else code 1), then kudonet's own keys. `getenv` gives the
/// defaults the environment holds (netns directory, firewall).
pub fn config(stdin: &[u8], getenv: &dyn Fn(&str) -> Option<OsString>) -> Result<Config, CniError> {
    let raw: RawConfig = serde_json::from_slice(stdin).map_err(|error| {
        CniError::new(DECODING_FAILURE, "cannot decode the network configuration")
            .details(error.to_string())
    })?;
    let network = match raw.name.as_deref() {
        None | Some("") => return Err(CniError::new(INVALID_CONFIG, "missing network name")),
        Some(name) if !is_cni_name(name) => {
            return Err(
                CniError::new(INVALID_CONFIG, "invalid characters in network name").details(
                    format!(
                        "{}: a network name starts with a letter or digit, followed by \
                         letters, digits, _, . and -",
                        quote(name)
                    ),
                ),
            );
        }
        Some(name) => name.to_string(),
    };
    let version = select_version(raw.cni_version.as_deref(), raw.cni_versions.as_deref())?;
    let state_dir = match raw.state_dir.as_deref() {
        None => PathBuf::from(DEFAULT_STATE_DIR),
        Some(dir) if dir.starts_with('/') => PathBuf::from(dir),
        Some(dir) => {
            return Err(CniError::new(INVALID_CONFIG, "invalid stateDir")
                .details(format!("{}: not an absolute path", quote(dir))));
        }
    };
    let firewall = match raw.firewall.as_deref() {
        Some(name) => firewall(name).ok_or_else(|| {
            CniError::new(INVALID_CONFIG, "invalid firewall")
                .details(format!("{}: expected iptables or nftables", quote(name)))
        })?,
        None => match getenv(FIREWALL_ENV).filter(|value| !value.is_empty()) {
            None => FirewallBackend::Iptables,
            Some(value) => value.to_str().and_then(firewall).ok_or_else(|| {
                CniError::new(INVALID_ENVIRONMENT, format!("invalid {FIREWALL_ENV}"))
                    .details(format!("{value:?}: expected iptables or nftables"))
            })?,
        },
    };
    let netns_dir = getenv(NETNS_DIR_ENV)
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_NETNS_DIR), PathBuf::from);
    let runtime = raw.runtime_config.unwrap_or_default();
    let args = raw.args.and_then(|args| args.cni).unwrap_or_default();
    Ok(Config {
        version,
        network,
        state_dir,
        netns_dir,
        firewall,
        prev_result: raw.prev_result.filter(|value| !value.is_null()),
        valid_attachments: raw.valid_attachments.map(|list| {
            list.into_iter()
                .map(|attachment| (attachment.container_id, attachment.ifname))
                .collect()
        }),
        raw_requests: Requests {
            ports: runtime.port_mappings.map(|mappings| {
                mappings
                    .into_iter()
                    .map(|mapping| PortMappingValues {
                        host_port: mapping.host_port,
                        container_port: mapping.container_port,
                        protocol: mapping.protocol,
                        host_ip: mapping.host_ip,
                    })
                    .collect()
            }),
            runtime_ips: runtime.ips,
            runtime_mac: runtime.mac,
            args_ips: args.ips,
            args_mac: args.mac,
        },
    })
}

fn firewall(name: &str) -> Option<FirewallBackend> {
    match name {
        "iptables" => Some(FirewallBackend::Iptables),
        "nftables" => Some(FirewallBackend::Nftables),
        _ => None,
    }
}

/// The highest version of `cniVersion` and `cniVersions` that kudonet speaks.
fn select_version(stated: Option<&str>, listed: Option<&[String]>) -> Result<Version, CniError> {
    let best = stated
        .into_iter()
        .chain(listed.unwrap_or_default().iter().map(String::as_str))
        .filter_map(Version::parse)
        .max();
    best.ok_or_else(|| {
        let supports = SUPPORTED_VERSIONS
            .iter()
            .map(|version| quote(version))
            .collect::<Vec<_>>()
            .join(", ");
        let config = match (stated, listed) {
            (Some(stated), _) => format!("config is {}", quote(stated)),
            (None, Some(listed)) => format!(
                "config lists [{}]",
                listed
                    .iter()
                    .map(|v| quote(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, None) => "config has no cniVersion".to_string(),
        };
        CniError::new(INCOMPATIBLE_VERSION, "incompatible CNI versions")
            .details(format!("{config}, plugin supports [{supports}]"))
    })
}

/// An address a runtime requests for the attachment, and where it asked for it (for
/// messages: `runtimeConfig.ips[0] "10.0.0.9"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedAddress {
    /// The address, with its prefix length if the request gave one.
    pub address: AddressText,
    /// Where the request gave it.
    pub source: String,
}

/// An address as requested: with or without a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressText {
    /// `10.0.0.9`: the node's prefix length applies.
    Bare(IpAddr),
    /// `10.0.0.9/24`.
    WithPrefix(IpInet),
}

impl std::fmt::Display for AddressText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressText::Bare(address) => address.fmt(f),
            // `{:#}`: the address as given, not its network.
            AddressText::WithPrefix(inet) => write!(f, "{inet:#}"),
        }
    }
}

fn parse_address(text: &str) -> Option<AddressText> {
    if text.contains('/') {
        text.parse::<IpInet>().ok().map(AddressText::WithPrefix)
    } else {
        text.parse::<IpAddr>().ok().map(AddressText::Bare)
    }
}

/// What ADD asks for besides the attachment: addresses (none: kudonet allocates), and the
/// ports the node publishes to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddRequest {
    /// Requested addresses, from one source: `runtimeConfig.ips`, else `args.cni.ips`, else
    /// CNI_ARGS `IP`.
    pub addresses: Vec<RequestedAddress>,
    /// `runtimeConfig.portMappings`, each with where it was asked.
    pub ports: Vec<(PublishedPort, String)>,
}

/// The keys of CNI_ARGS kudonet reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct CniArgs {
    ip: Option<String>,
    mac: Option<String>,
}

/// Parses CNI_ARGS (`K=V;K=V`) as the reference plugins do: a pair without exactly one `=`
/// is an error, and so is a key kudonet does not know unless `IgnoreUnknown` is `1` or
/// `true` (runtimes set it, since they pass keys for other plugins).
fn cni_args(text: &str) -> Result<CniArgs, CniError> {
    let invalid =
        |details: String| CniError::new(INVALID_ENVIRONMENT, "invalid CNI_ARGS").details(details);
    let mut args = CniArgs::default();
    if text.is_empty() {
        return Ok(args);
    }
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    for pair in text.split(';') {
        let mut parts = pair.split('=');
        let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid(format!("invalid pair {}", quote(pair))));
        };
        match key {
            "IgnoreUnknown" => {
                ignore_unknown = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(invalid(format!(
                            "IgnoreUnknown={value}: expected 1, true, 0 or false"
                        )));
                    }
                }
            }
            "IP" => args.ip = Some(value.to_string()),
            "MAC" => args.mac = Some(value.to_string()),
            _ => unknown.push(quote(pair)),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(invalid(format!(
            "unknown args [{}] (IgnoreUnknown=1 ignores them)",
            unknown.join(", ")
        )));
    }
    Ok(args)
}

impl Config {
    /// What ADD requests: addresses and ports, checked; a MAC address requested in any of
    /// the three places is refused (code 2): kudonet derives MAC addresses from the
    /// instance name, so that a rebuilt interface keeps its own.
    pub fn add_request(&self, cni_args_text: &str) -> Result<AddRequest, CniError> {
        let requests = &self.raw_requests;
        let args = cni_args(cni_args_text)?;
        let macs = [
            ("CNI_ARGS MAC", args.mac.as_deref()),
            ("args.cni.mac", requests.args_mac.as_deref()),
            ("runtimeConfig.mac", requests.runtime_mac.as_deref()),
        ];
        if let Some((key, Some(mac))) = macs
            .into_iter()
            .find(|(_, mac)| mac.is_some_and(|mac| !mac.is_empty()))
        {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                format!("unsupported field {key}: {}", quote(mac)),
            )
            .details("kudonet derives each interface's MAC address from its instance name"));
        }
        let addresses = match (&requests.runtime_ips, &requests.args_ips, &args.ip) {
            (Some(ips), _, _) if !ips.is_empty() => listed_addresses("runtimeConfig.ips", ips)?,
            (_, Some(ips), _) if !ips.is_empty() => listed_addresses("args.cni.ips", ips)?,
            (_, _, Some(ips)) if !ips.is_empty() => ips
                .split(',')
                .map(|text| {
                    let source = format!("CNI_ARGS IP={text}");
                    match parse_address(text) {
                        Some(address) => Ok(RequestedAddress { address, source }),
                        None => Err(CniError::new(INVALID_ENVIRONMENT, "invalid CNI_ARGS")
                            .details(format!("IP={text}: not an IP address or IP/prefix"))),
                    }
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        let mut ports = Vec::new();
        for (index, mapping) in requests.ports.iter().flatten().enumerate() {
            let key = format!("runtimeConfig.portMappings[{index}]");
            ports.push((published_port(&key, mapping)?, port_source(&key, mapping)));
        }
        Ok(AddRequest { addresses, ports })
    }
}

fn listed_addresses(key: &str, list: &[String]) -> Result<Vec<RequestedAddress>, CniError> {
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            let source = format!("{key}[{index}] {}", quote(text));
            match parse_address(text) {
                Some(address) => Ok(RequestedAddress { address, source }),
                None => Err(CniError::new(INVALID_CONFIG, format!("invalid {key}"))
                    .details(format!("{source}: not an IP address or IP/prefix"))),
            }
        })
        .collect()
}

fn port_source(key: &str, mapping: &PortMappingValues) -> String {
    format!(
        "{key} (hostPort {}, containerPort {})",
        mapping.host_port, mapping.container_port
    )
}

fn published_port(key: &str, mapping: &PortMappingValues) -> Result<PublishedPort, CniError> {
    let port = |field: &str, value: i64| {
        spec::port_number(value).ok_or_else(|| {
            CniError::new(INVALID_CONFIG, format!("invalid {key}.{field}"))
                .details(format!("{value}: a port is a number in 1..=65535"))
        })
    };
    let host_port = port("hostPort", mapping.host_port)?;
    let instance_port = port("containerPort", mapping.container_port)?;
    let protocol = match mapping.protocol.as_deref().map(str::to_ascii_lowercase) {
        None => Protocol::Tcp,
        Some(protocol) if protocol.is_empty() || protocol == "tcp" => Protocol::Tcp,
        Some(protocol) if protocol == "udp" => Protocol::Udp,
        Some(_) => {
            let given = mapping.protocol.as_deref().unwrap_or_default();
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                format!("unsupported field {key}.protocol: {}", quote(given)),
            )
            .details("kudonet publishes tcp and udp ports"));
        }
    };
    let host_ip = match mapping.host_ip.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<IpAddr>() {
            // Every address: what no hostIp means.
            Ok(ip) if ip.is_unspecified() => None,
            Ok(ip) => Some(ip),
            Err(_) => {
                return Err(
                    CniError::new(INVALID_CONFIG, format!("invalid {key}.hostIP"))
                        .details(format!("{}: not an IP address", quote(text))),
                );
            }
        },
    };
    Ok(PublishedPort {
        host_port,
        instance_port,
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    fn error(result: Result<impl std::fmt::Debug, CniError>) -> (u32, String) {
        let error = result.unwrap_err();
        (error.code, error.to_string())
    }

    #[test]
    fn the_environment_names_what_is_missing_or_invalid() {
        assert_eq!(
            error(environment(&env(&[]))),
            (4, "required env variables [CNI_COMMAND] missing".into())
        );
        assert_eq!(
            error(environment(&env(&[("CNI_COMMAND", "FOO")]))),
            (4, "unknown CNI_COMMAND: FOO".into())
        );
        assert_eq!(
            error(environment(&env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0")
            ]))),
            (
                4,
                "required env variables [CNI_CONTAINERID,CNI_NETNS] missing".into()
            )
        );
        // DEL needs no namespace.
        let del = environment(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.attachment.unwrap().netns, "");
        let add = |id: &str, ifname: &str| {
            environment(&env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", "/run/netns/c"),
            ]))
        };
        assert_eq!(
            error(add("a/b", "eth0")),
            (
                4,
                "invalid characters in CNI_CONTAINERID; \"a/b\": a container id starts with a \
                 letter or digit, followed by letters, digits, _, . and -"
                    .into()
            )
        );
        assert_eq!(
            error(add("abc", "eth 0")),
            (
                4,
                "invalid CNI_IFNAME; interface name \"eth 0\" contains /, :, whitespace or a \
                 control character"
                    .into()
            )
        );
        assert_eq!(
            error(add("abc", "a-very-long-name")),
            (
                4,
                "invalid CNI_IFNAME; interface name \"a-very-long-name\" is longer than 15 bytes"
                    .into()
            )
        );
        // VERSION, GC and STATUS need nothing more.
        for command in ["VERSION", "GC", "STATUS"] {
            environment(&env(&[("CNI_COMMAND", command)])).unwrap();
        }
    }

    #[test]
    fn the_config_needs_json_a_name_and_a_version_kudonet_speaks() {
        let none = env(&[]);
        assert_eq!(
            error(config(b"{", &none)),
            (
                6,
                "cannot decode the network configuration; EOF while parsing an object at line 1 \
                 column 1"
                    .into()
            )
        );
        assert_eq!(
            error(config(br#"{"cniVersion":"1.0.0"}"#, &none)),
            (7, "missing network name".into())
        );
        assert_eq!(
            error(config(br#"{"cniVersion":"1.0.0","name":"a/b"}"#, &none)),
            (
                7,
                "invalid characters in network name; \"a/b\": a network name starts with a \
                 letter or digit, followed by letters, digits, _, . and -"
                    .into()
            )
        );
        assert_eq!(
            error(config(br#"{"cniVersion":"9.9.9","name":"n"}"#, &none)),
            (
                1,
                "incompatible CNI versions; config is \"9.9.9\", plugin supports [\"0.4.0\", \
                 \"1.0.0\", \"1.1.0\"]"
                    .into()
            )
        );
        assert_eq!(
            error(config(br#"{"name":"n"}"#, &none)),
            (
                1,
                "incompatible CNI versions; config has no cniVersion, plugin supports \
                 [\"0.4.0\", \"1.0.0\", \"1.1.0\"]"
                    .into()
            )
        );
        // cniVersions: the highest kudonet speaks.
        let picked = config(
            br#"{"cniVersion":"0.3.1","cniVersions":["0.4.0","1.0.0","2.0.0"],"name":"n"}"#,
            &none,
        )
        .unwrap();
        assert_eq!(picked.version, Version::V1_0_0);
        // Defaults, and unknown keys ignored.
        let config = config(
            br#"{"cniVersion":"1.1.0","name":"n","type":"kudonet","ipam":{},"capabilities":{"portMappings":true}}"#,
            &none,
        )
        .unwrap();
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.netns_dir, PathBuf::from(DEFAULT_NETNS_DIR));
        assert_eq!(config.firewall, FirewallBackend::Iptables);
    }

    #[test]
    fn the_firewall_is_the_configs_else_the_environments() {
        let nftables = env(&[("KUDONET_FIREWALL", "nftables")]);
        let stated = |text: &[u8], getenv: &dyn Fn(&str) -> Option<OsString>| {
            config(text, getenv).map(|config| config.firewall)
        };
        assert_eq!(
            stated(br#"{"cniVersion":"1.0.0","name":"n"}"#, &nftables).unwrap(),
            FirewallBackend::Nftables
        );
        assert_eq!(
            stated(
                br#"{"cniVersion":"1.0.0","name":"n","firewall":"iptables"}"#,
                &nftables
            )
            .unwrap(),
            FirewallBackend::Iptables
        );
        assert_eq!(
            error(stated(
                br#"{"cniVersion":"1.0.0","name":"n","firewall":"pf"}"#,
                &nftables
            )),
            (
                7,
                "invalid firewall; \"pf\": expected iptables or nftables".into()
            )
        );
        assert_eq!(
            error(stated(
                br#"{"cniVersion":"1.0.0","name":"n"}"#,
                &env(&[("KUDONET_FIREWALL", "pf")])
            )),
            (
                4,
                "invalid KUDONET_FIREWALL; \"pf\": expected iptables or nftables".into()
            )
        );
        assert_eq!(
            error(stated(
                br#"{"cniVersion":"1.0.0","name":"n","stateDir":"state"}"#,
                &nftables
            )),
            (
                7,
                "invalid stateDir; \"state\": not an absolute path".into()
            )
        );
    }

    fn request(json: &str, args: &str) -> Result<AddRequest, CniError> {
        config(json.as_bytes(), &env(&[]))
            .unwrap()
            .add_request(args)
    }

    #[test]
    fn addresses_come_from_one_source_runtime_config_first() {
        let addresses = |json: &str, args: &str| -> Vec<String> {
            request(json, args)
                .unwrap()
                .addresses
                .iter()
                .map(|a| format!("{} from {}", a.address, a.source))
                .collect()
        };
        let both = r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.0.0.9/24"]},"args":{"cni":{"ips":["10.0.0.8"]}}}"#;
        assert_eq!(
            addresses(both, "IP=10.0.0.7"),
            ["10.0.0.9/24 from runtimeConfig.ips[0] \"10.0.0.9/24\""]
        );
        let args =
            r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.0.0.8","fd00::8"]}}}"#;
        assert_eq!(
            addresses(args, "IP=10.0.0.7"),
            [
                "10.0.0.8 from args.cni.ips[0] \"10.0.0.8\"",
                "fd00::8 from args.cni.ips[1] \"fd00::8\""
            ]
        );
        let plain = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        assert_eq!(
            addresses(plain, "IgnoreUnknown=1;K8S_POD_NAME=c1;IP=10.0.0.7"),
            ["10.0.0.7 from CNI_ARGS IP=10.0.0.7"]
        );
        assert!(addresses(plain, "").is_empty());
        assert_eq!(
            error(request(
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["ten"]}}"#,
                ""
            )),
            (
                7,
                "invalid runtimeConfig.ips; runtimeConfig.ips[0] \"ten\": not an IP address or \
                 IP/prefix"
                    .into()
            )
        );
    }

    #[test]
    fn cni_args_follow_the_reference_plugins() {
        let plain = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        assert_eq!(
            error(request(plain, "K8S_POD_NAME=c1")),
            (
                4,
                "invalid CNI_ARGS; unknown args [\"K8S_POD_NAME=c1\"] (IgnoreUnknown=1 ignores \
                 them)"
                    .into()
            )
        );
        request(plain, "IgnoreUnknown=true;K8S_POD_NAME=c1").unwrap();
        assert_eq!(
            error(request(plain, "IgnoreUnknown=1;A")),
            (4, "invalid CNI_ARGS; invalid pair \"A\"".into())
        );
        assert_eq!(
            error(request(plain, "IP=1=2")),
            (4, "invalid CNI_ARGS; invalid pair \"IP=1=2\"".into())
        );
        assert_eq!(
            error(request(plain, "IP=ten")),
            (
                4,
                "invalid CNI_ARGS; IP=ten: not an IP address or IP/prefix".into()
            )
        );
    }

    #[test]
    fn a_mac_address_request_is_refused_naming_where_it_was_asked() {
        let plain = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        let refusal = |key: &str| {
            (
                2,
                format!(
                    "unsupported field {key}: \"02:00:00:00:00:09\"; kudonet derives each \
                     interface's MAC address from its instance name"
                ),
            )
        };
        assert_eq!(
            error(request(plain, "IgnoreUnknown=1;MAC=02:00:00:00:00:09")),
            refusal("CNI_ARGS MAC")
        );
        assert_eq!(
            error(request(
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"02:00:00:00:00:09"}}"#,
                ""
            )),
            refusal("runtimeConfig.mac")
        );
        assert_eq!(
            error(request(
                r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"mac":"02:00:00:00:00:09"}}}"#,
                ""
            )),
            refusal("args.cni.mac")
        );
    }

    #[test]
    fn port_mappings_are_published_ports() {
        let json = r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
            {"hostPort":9053,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"},
            {"hostPort":9080,"containerPort":80,"hostIP":"0.0.0.0"},
            {"hostPort":9081,"containerPort":81,"protocol":"TCP","hostIP":""}]}}"#;
        let ports: Vec<(PublishedPort, String)> = request(json, "").unwrap().ports;
        let port = |host_port, instance_port, protocol, host_ip: Option<&str>| PublishedPort {
            host_port,
            instance_port,
            protocol,
            host_ip: host_ip.map(|ip| ip.parse().unwrap()),
        };
        assert_eq!(
            ports.iter().map(|(port, _)| *port).collect::<Vec<_>>(),
            [
                port(8080, 80, Protocol::Tcp, None),
                port(9053, 53, Protocol::Udp, Some("127.0.0.1")),
                port(9080, 80, Protocol::Tcp, None),
                port(9081, 81, Protocol::Tcp, None),
            ]
        );
        assert_eq!(
            ports[1].1,
            "runtimeConfig.portMappings[1] (hostPort 9053, containerPort 53)"
        );
        let sctp = r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":8080,"containerPort":80,"protocol":"sctp"}]}}"#;
        assert_eq!(
            error(request(sctp, "")),
            (
                2,
                "unsupported field runtimeConfig.portMappings[0].protocol: \"sctp\"; kudonet \
                 publishes tcp and udp ports"
                    .into()
            )
        );
        let zero = r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":0,"containerPort":80}]}}"#;
        assert_eq!(
            error(request(zero, "")),
            (
                7,
                "invalid runtimeConfig.portMappings[0].hostPort; 0: a port is a number in \
                 1..=65535"
                    .into()
            )
        );
        let mistyped = br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[
            {"hostPort":"80","containerPort":80}]}}"#;
        assert_eq!(error(config(mistyped, &env(&[]))).0, 6);
    }
}
