//! What a successful command prints: the ADD result in the request's version (merged with
//! a `prevResult` when kudonet is not first in a chain), and the VERSION answer; and
//! reading a `prevResult` back for CHECK.

use std::net::IpAddr;

use cidr::IpInet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{CniError, DECODING_FAILURE, INVALID_CONFIG};
use super::request::{SUPPORTED_VERSIONS, Version, quote};
use crate::spec::Family;

/// An interface of the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address, `0a:1b:...`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `CNI_NETNS` for the container's interface; absent on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of the result: on which interface (an index into `interfaces`), and its
/// gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Ip {
    /// 0.4.0 only: `"4"` or `"6"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Route {
    dst: &'static str,
}

/// What kudonet made of an attachment, as the ADD result reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The bridge the host end is a port of, the host end, and the container's interface,
    /// in that order (the reference bridge plugin's).
    pub interfaces: [Interface; 3],
    /// The container interface's addresses, each with its gateway (the node's address of
    /// that family).
    pub addresses: Vec<(IpInet, Option<IpAddr>)>,
}

/// An entry of a result list: kudonet's own (fields in the specification's order), or one
/// of `prevResult` as it came.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Entry<T> {
    Ours(T),
    Passed(Value),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultDocument {
    cni_version: &'static str,
    interfaces: Vec<Entry<Interface>>,
    ips: Vec<Entry<Ip>>,
    routes: Vec<Entry<Route>>,
    dns: Value,
    /// Keys of `prevResult` kudonet does not know, kept.
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A `prevResult` as far as kudonet reads it.
#[derive(Debug, Default, Deserialize)]
struct PreviousResult {
    #[serde(default)]
    interfaces: Vec<Value>,
    #[serde(default)]
    ips: Vec<Value>,
    #[serde(default)]
    routes: Vec<Value>,
    dns: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

fn previous(prev_result: &Value) -> Result<PreviousResult, CniError> {
    PreviousResult::deserialize(prev_result).map_err(|error| {
        CniError::new(DECODING_FAILURE, "cannot decode prevResult").details(error.to_string())
    })
}

/// The ADD result in `version`: `attached` after what `prev_result` holds, if given (its
/// interface indexes shifted past the earlier interfaces), a default route for each family
/// the container got an address of.
pub fn add_result(
    version: Version,
    attached: &Attached,
    prev_result: Option<&Value>,
) -> Result<String, CniError> {
    let mut prev = match prev_result {
        Some(value) => previous(value)?,
        None => PreviousResult::default(),
    };
    prev.other.remove("cniVersion");
    let offset = prev.interfaces.len();
    let container = offset + 2;
    let mut interfaces: Vec<Entry<Interface>> =
        prev.interfaces.into_iter().map(Entry::Passed).collect();
    interfaces.extend(attached.interfaces.iter().cloned().map(Entry::Ours));
    let mut ips: Vec<Entry<Ip>> = prev.ips.into_iter().map(Entry::Passed).collect();
    let mut routes: Vec<Entry<Route>> = prev.routes.into_iter().map(Entry::Passed).collect();
    for family in Family::ALL {
        let of_family: Vec<&(IpInet, Option<IpAddr>)> = attached
            .addresses
            .iter()
            .filter(|(address, _)| Family::of(address.address()) == family)
            .collect();
        for (address, gateway) in &of_family {
            ips.push(Entry::Ours(Ip {
                version: (version == Version::V0_4_0).then_some(match family {
                    Family::Ipv4 => "4",
                    Family::Ipv6 => "6",
                }),
                address: format!("{address:#}"),
                gateway: gateway.map(|gateway| gateway.to_string()),
                interface: container,
            }));
        }
        if !of_family.is_empty() {
            routes.push(Entry::Ours(Route {
                dst: match family {
                    Family::Ipv4 => "0.0.0.0/0",
                    Family::Ipv6 => "::/0",
                },
            }));
        }
    }
    let document = ResultDocument {
        cni_version: version.as_str(),
        interfaces,
        ips,
        routes,
        dns: prev.dns.unwrap_or_else(|| Value::Object(Map::new())),
        other: prev.other,
    };
    Ok(serde_json::to_string(&document).expect("JSON values serialise"))
}

/// The VERSION answer: the request's version (kudonet's newest when it named none it
/// speaks of) and the versions kudonet speaks.
pub fn version_result(stated: Option<&str>) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct VersionResult<'a> {
        cni_version: &'a str,
        supported_versions: [&'static str; 3],
    }
    serde_json::to_string(&VersionResult {
        cni_version: stated.unwrap_or(Version::NEWEST.as_str()),
        supported_versions: SUPPORTED_VERSIONS,
    })
    .expect("strings serialise")
}

/// The addresses `prev_result` gives the container's interface `ifname` in `netns` (for
/// CHECK): an interface of that name and sandbox must be listed.
pub fn container_addresses(
    prev_result: &Value,
    ifname: &str,
    netns: &str,
) -> Result<Vec<IpInet>, CniError> {
    let prev = previous(prev_result)?;
    let index = prev
        .interfaces
        .iter()
        .position(|interface| {
            interface.get("name").and_then(Value::as_str) == Some(ifname)
                && interface.get("sandbox").and_then(Value::as_str) == Some(netns)
        })
        .ok_or_else(|| {
            CniError::new(INVALID_CONFIG, "invalid prevResult").details(format!(
                "no interface {} in sandbox {}",
                quote(ifname),
                quote(netns)
            ))
        })?;
    let mut addresses = Vec::new();
    for ip in &prev.ips {
        if ip.get("interface").and_then(Value::as_u64) != Some(index as u64) {
            continue;
        }
        let text = ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let address = text.parse::<IpInet>().map_err(|_| {
            CniError::new(INVALID_CONFIG, "invalid prevResult")
                .details(format!("address {}: not an IP/prefix", quote(text)))
        })?;
        addresses.push(address);
    }
    addresses.sort_by_key(|address| (Family::of(address.address()), address.address()));
    Ok(addresses)
}

/// A MAC address as results write it: `0a:1b:2c:3d:4e:5f`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        let interface = |name: &str, mac: &str, sandbox: Option<&str>| Interface {
            name: name.into(),
            mac: Some(mac.into()),
            sandbox: sandbox.map(str::to_string),
        };
        Attached {
            interfaces: [
                interface("kudo0", "aa:00:00:00:00:01", None),
                interface("kv0000000000001", "aa:00:00:00:00:02", None),
                interface("eth0", "0a:00:00:00:00:03", Some("/run/netns/c1")),
            ],
            addresses: vec![
                (
                    "10.0.0.2/24".parse().unwrap(),
                    Some("10.0.0.1".parse().unwrap()),
                ),
                (
                    "fd00:10::2/64".parse().unwrap(),
                    Some("fd00:10::1".parse().unwrap()),
                ),
            ],
        }
    }

    const INTERFACES: &str = r#""interfaces":[{"name":"kudo0","mac":"aa:00:00:00:00:01"},{"name":"kv0000000000001","mac":"aa:00:00:00:00:02"},{"name":"eth0","mac":"0a:00:00:00:00:03","sandbox":"/run/netns/c1"}]"#;

    #[test]
    fn results_take_the_shape_of_the_requests_version() {
        assert_eq!(
            add_result(Version::V1_0_0, &attached(), None).unwrap(),
            format!(
                r#"{{"cniVersion":"1.0.0",{INTERFACES},"ips":[{{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":2}},{{"address":"fd00:10::2/64","gateway":"fd00:10::1","interface":2}}],"routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}],"dns":{{}}}}"#
            )
        );
        assert_eq!(
            add_result(Version::V0_4_0, &attached(), None).unwrap(),
            format!(
                r#"{{"cniVersion":"0.4.0",{INTERFACES},"ips":[{{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1","interface":2}},{{"version":"6","address":"fd00:10::2/64","gateway":"fd00:10::1","interface":2}}],"routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}],"dns":{{}}}}"#
            )
        );
    }

    #[test]
    fn a_previous_result_comes_first_and_shifts_the_interface_index() {
        let prev: Value = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"dummy0","sandbox":"/run/netns/c1"}],
                "ips":[{"address":"192.168.5.2/24","interface":0}],"dns":{"nameservers":["10.0.0.53"]},"custom":1}"#,
        )
        .unwrap();
        let mut only_v4 = attached();
        only_v4.addresses.truncate(1);
        let result: Value =
            serde_json::from_str(&add_result(Version::V1_1_0, &only_v4, Some(&prev)).unwrap())
                .unwrap();
        assert_eq!(
            result,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "dummy0", "sandbox": "/run/netns/c1"},
                    {"name": "kudo0", "mac": "aa:00:00:00:00:01"},
                    {"name": "kv0000000000001", "mac": "aa:00:00:00:00:02"},
                    {"name": "eth0", "mac": "0a:00:00:00:00:03", "sandbox": "/run/netns/c1"},
                ],
                "ips": [
                    {"address": "192.168.5.2/24", "interface": 0},
                    {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 3},
                ],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"nameservers": ["10.0.0.53"]},
                "custom": 1,
            })
        );
        assert_eq!(
            add_result(Version::V1_0_0, &only_v4, Some(&Value::from(3)))
                .unwrap_err()
                .to_string(),
            "cannot decode prevResult; invalid type: integer `3`, expected struct PreviousResult"
        );
    }

    #[test]
    fn check_reads_the_container_interfaces_addresses_from_the_previous_result() {
        let prev: Value =
            serde_json::from_str(&add_result(Version::V1_0_0, &attached(), None).unwrap()).unwrap();
        assert_eq!(
            container_addresses(&prev, "eth0", "/run/netns/c1").unwrap(),
            [
                "10.0.0.2/24".parse::<IpInet>().unwrap(),
                "fd00:10::2/64".parse().unwrap()
            ]
        );
        assert_eq!(
            container_addresses(&prev, "eth1", "/run/netns/c1")
                .unwrap_err()
                .to_string(),
            "invalid prevResult; no interface \"eth1\" in sandbox \"/run/netns/c1\""
        );
    }

    #[test]
    fn version_answers_in_the_requests_version() {
        assert_eq!(
            version_result(Some("1.0.0")),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_result(None),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
