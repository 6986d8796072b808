//! An attachment as desired state: its Instance name, its document (one file per
//! attachment, `<stateDir>/cni/<network>/<instance>.yaml`), and reading back which
//! attachment a document records.

use std::fs;
use std::path::{Path, PathBuf};

use super::request::{AddRequest, Attachment, quote};
use crate::compat::store::Document;
use crate::names;

/// The folder of the CNI plugin's documents in the state directory.
pub const CNI_DIR: &str = "cni";

/// The first line of every document the plugin writes.
const HEADER: &str =
    "# Recorded by the kudonet CNI plugin; DEL, CHECK and GC read the next three lines.";

/// The Instance name of an attachment: `<container>-<interface>-<hash>`, where
/// `<container>` is the first 12 characters of the container id's stem (the short id
/// `podman ps` and `docker ps` show), `<interface>` the stem of the interface name, and
/// `<hash>` 8 hex digits of a hash of both (`containerID/ifname`), which keeps attachments
/// whose stems meet apart. A stem is the value lowercased, every character but `a-z` and
/// `0-9` turned into `-`, runs of `-` made one, and `-` trimmed from both ends. The name is
/// a DNS label of at most 37 characters.
pub fn instance_name(container_id: &str, ifname: &str) -> String {
    let container = stem(container_id);
    let container: String = container.chars().take(12).collect();
    let container = container.trim_end_matches('-');
    let interface = stem(ifname);
    let hash = names::fnv1a64(format!("{container_id}/{ifname}").as_bytes()) as u32;
    let hash = format!("{hash:08x}");
    [container, interface.as_str(), hash.as_str()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn stem(value: &str) -> String {
    let mut stem = String::new();
    for c in value.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c != '-' || !stem.ends_with('-') {
            stem.push(c);
        }
    }
    stem.trim_matches('-').to_string()
}

/// The document of an attachment, relative to the state directory.
pub fn relative_path(network: &str, instance: &str) -> PathBuf {
    Path::new(CNI_DIR)
        .join(network)
        .join(format!("{instance}.yaml"))
}

/// The folder of a network's documents.
pub fn network_dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(CNI_DIR).join(network)
}

/// The Instance document of `attachment` on `node`, named `instance`: the attachment as
/// comments (for DEL, CHECK and GC), then the instance: its namespace and interface, the
/// addresses requested (none: kudonet allocates one of each of the node's families) and the
/// published ports. Each line says which request value it records, for messages.
pub fn instance_document(
    network: &str,
    attachment: &Attachment,
    instance: &str,
    node: &str,
    request: &AddRequest,
) -> Document {
    let mut document = Document::new(HEADER);
    document.line(&format!("# network: {}", quote(network)), None);
    document.line(
        &format!("# containerID: {}", quote(&attachment.container_id)),
        None,
    );
    document.line(&format!("# ifname: {}", quote(&attachment.ifname)), None);
    document.line("kind: Instance", None);
    let what = format!(
        "attachment (CNI_CONTAINERID {}, CNI_IFNAME {})",
        quote(&attachment.container_id),
        quote(&attachment.ifname)
    );
    document.line(&format!("name: {}", quote(instance)), Some(&what));
    document.line(&format!("node: {}", quote(node)), None);
    document.line(
        &format!("netns: {}", quote(&attachment.netns)),
        Some(&format!("CNI_NETNS {}", quote(&attachment.netns))),
    );
    if attachment.ifname != names::INSTANCE_INTERFACE {
        document.line(
            &format!("interface: {}", quote(&attachment.ifname)),
            Some(&format!("CNI_IFNAME {}", quote(&attachment.ifname))),
        );
    }
    if !request.addresses.is_empty() {
        let all = request
            .addresses
            .iter()
            .map(|address| address.source.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        document.line("address:", Some(&all));
        for address in &request.addresses {
            document.line(
                &format!("  - {}", quote(&address.address.to_string())),
                Some(&address.source),
            );
        }
    }
    if !request.ports.is_empty() {
        document.line("ports:", None);
        for (port, source) in &request.ports {
            document.line(&format!("  - hostPort: {}", port.host_port), Some(source));
            document.line(
                &format!("    instancePort: {}", port.instance_port),
                Some(source),
            );
            document.line(&format!("    protocol: {}", port.protocol), Some(source));
            if let Some(ip) = port.host_ip {
                document.line(
                    &format!("    hostIp: {}", quote(&ip.to_string())),
                    Some(source),
                );
            }
        }
    }
    document
}

/// Which attachment a document of the plugin records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The network it is attached to.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// Reads which attachment `text` records, if it is a document of the plugin.
pub fn recorded(text: &str) -> Option<Recorded> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut field = |key: &str| -> Option<String> {
        let value = lines.next()?.strip_prefix(&format!("# {key}: "))?;
        serde_json::from_str(value).ok()
    };
    Some(Recorded {
        network: field("network")?,
        container_id: field("containerID")?,
        ifname: field("ifname")?,
    })
}

/// The attachment recorded in the file at `path`: `Ok(None)` when there is no file (or it
/// is not the plugin's).
pub fn read_recorded(path: &Path) -> std::io::Result<Option<(Recorded, String)>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(recorded(&text).map(|recorded| (recorded, text))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::request::{AddressText, RequestedAddress};
    use crate::spec::{Protocol, PublishedPort};

    #[test]
    fn instance_names_are_short_ids_interfaces_and_a_hash() {
        // Pinned: the names of attachments on nodes in the field.
        let podman = "00616f32574a61ef07bbf5b3a42ba0e35f46437aa9a131eee3a3944a80a35563";
        assert_eq!(instance_name(podman, "eth0"), "00616f32574a-eth0-8aa2c8a2");
        assert_eq!(instance_name(podman, "eth1"), "00616f32574a-eth1-8aa2ca55");
        assert_eq!(
            instance_name("Web_Server.1", "Net_1"),
            "web-server-1-net-1-09c4f65c"
        );
        // A cut that ends on `-` drops it; an interface without letters or digits has no
        // stem.
        assert_eq!(
            instance_name("abcdefghijk.lmn", "_"),
            "abcdefghijk-73e9b40c"
        );
        let long = instance_name(&"A".repeat(300), "a-15-chars-name");
        assert_eq!(long, "aaaaaaaaaaaa-a-15-chars-name-c232392a");
        for (id, ifname) in [
            (podman, "eth0"),
            ("Web_Server.1", "Net_1"),
            ("x", "-"),
            ("9", "9"),
        ] {
            let name = instance_name(id, ifname);
            assert!(crate::spec::is_dns_label(&name), "{name}");
        }
        assert_ne!(instance_name("a", "b.c"), instance_name("a", "b-c"));
    }

    fn attachment(ifname: &str) -> Attachment {
        Attachment {
            container_id: "c0ffee".into(),
            ifname: ifname.into(),
            netns: "/run/netns/netns-1".into(),
        }
    }

    #[test]
    fn documents_record_the_attachment_and_what_was_requested() {
        let request = AddRequest {
            addresses: vec![
                RequestedAddress {
                    address: AddressText::Bare("10.0.0.9".parse().unwrap()),
                    source: "runtimeConfig.ips[0] \"10.0.0.9\"".into(),
                },
                RequestedAddress {
                    address: AddressText::WithPrefix("fd00:10::9/64".parse().unwrap()),
                    source: "runtimeConfig.ips[1] \"fd00:10::9/64\"".into(),
                },
            ],
            ports: vec![(
                PublishedPort {
                    host_port: 8080,
                    instance_port: 80,
                    protocol: Protocol::Udp,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                },
                "runtimeConfig.portMappings[0] (hostPort 8080, containerPort 80)".into(),
            )],
        };
        let document = instance_document(
            "net",
            &attachment("net1"),
            "c0ffee-net1-1",
            "node-a",
            &request,
        );
        assert_eq!(
            document.content,
            "# Recorded by the kudonet CNI plugin; DEL, CHECK and GC read the next three lines.
# network: \"net\"
# containerID: \"c0ffee\"
# ifname: \"net1\"
kind: Instance
name: \"c0ffee-net1-1\"
node: \"node-a\"
netns: \"/run/netns/netns-1\"
interface: \"net1\"
address:
  - \"10.0.0.9\"
  - \"fd00:10::9/64\"
ports:
  - hostPort: 8080
    instancePort: 80
    protocol: udp
    hostIp: \"127.0.0.1\"
"
        );
        assert_eq!(
            recorded(&document.content),
            Some(Recorded {
                network: "net".into(),
                container_id: "c0ffee".into(),
                ifname: "net1".into(),
            })
        );
        // eth0 is the default interface; no address: kudonet allocates.
        let plain = instance_document(
            "net",
            &attachment("eth0"),
            "c",
            "node-a",
            &AddRequest::default(),
        );
        assert_eq!(
            plain.content.lines().skip(4).collect::<Vec<_>>(),
            [
                "kind: Instance",
                "name: \"c\"",
                "node: \"node-a\"",
                "netns: \"/run/netns/netns-1\""
            ]
        );
        assert_eq!(recorded("kind: Instance\nname: web\n"), None);
    }
}
