//! Reading the kernel, for assertions: links, addresses, namespaces, the firewall.

use serde_json::Value;

use super::sandbox::{run, run_ok, sh};

/// `ip -j -d link show dev NAME` (in namespace `netns`), or None when there is no such link.
pub fn link(netns: Option<&str>, name: &str) -> Option<Value> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "-d", "link", "show", "dev", name]);
    let output = run("ip", &args);
    if !output.status.success() {
        return None;
    }
    let links: Value = serde_json::from_slice(&output.stdout).unwrap();
    Some(links[0].clone())
}

pub fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|flag| flag == "UP")
}

/// The IPv4 addresses of a link, as `ADDRESS/PREFIX` (none when there is no such link).
pub fn addresses(netns: Option<&str>, name: &str) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "-4", "addr", "show", "dev", name]);
    let output = run("ip", &args);
    if !output.status.success() {
        return Vec::new();
    }
    let links: Value = serde_json::from_slice(&output.stdout).unwrap();
    links[0]["addr_info"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .map(|info| format!("{}/{}", info["local"].as_str().unwrap(), info["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of /run/netns (none when it does not exist).
pub fn namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// iptables-save of nat and filter, without comments and counters.
pub fn firewall() -> String {
    sh("iptables-save -t nat | grep -v '^#'; iptables-save -t filter | grep -v '^#'")
}

/// Names of the links of the node (or of `netns`), in ifindex order.
pub fn link_names(netns: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-j", "link", "show"]);
    let links: Value = serde_json::from_str(&run_ok("ip", &args)).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|link| link["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// Which firewall a test runs kudonet with (`--firewall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    Iptables,
    Nftables,
}

impl Firewall {
    /// The value of `--firewall`.
    pub fn name(self) -> &'static str {
        match self {
            Firewall::Iptables => "iptables",
            Firewall::Nftables => "nftables",
        }
    }

    /// `args` followed by `--firewall NAME` (a global option: it may follow the command).
    pub fn args<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--firewall", self.name()]);
        all
    }
}

/// `nft list table inet kudonet`, or None when there is no such table.
pub fn nft_kudonet() -> Option<String> {
    nft_table("inet kudonet")
}

/// `nft list table FAMILY NAME` (`table` is "FAMILY NAME"), or None when there is no such
/// table.
pub fn nft_table(table: &str) -> Option<String> {
    let mut args = vec!["list", "table"];
    args.extend(table.split(' '));
    let output = run("nft", &args);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The lines of `iptables-save` (`ip6tables-save` with `ipv6`), comments left out, that name
/// a chain of kudonet's (`KUDO-`), in their order.
pub fn kudo_lines(ipv6: bool) -> String {
    let save = if ipv6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    sh(&format!("{save} | grep -v '^#' | grep -e KUDO- || true"))
}

/// What `kudo_lines` reads in nftables mode from a family whose FORWARD chain drops by
/// policy (Docker's): kudonet's owned KUDO-FORWARD chain and its marked jump, nothing else.
pub const KUDO_FORWARD_ONLY: &str = "\
:KUDO-FORWARD - [0:0]
-A FORWARD -m comment --comment kudonet -j KUDO-FORWARD
-A KUDO-FORWARD -i kudo0 -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUDO-FORWARD -o kudo0 -m conntrack --ctstate DNAT -j ACCEPT
";
