//! Sysctls under `/proc/sys`.

use std::fs;
use std::path::Path;

/// The file of a sysctl under /proc/sys. Interface names may contain dots, so the device
/// part of a per-interface sysctl (`net.ipv4.conf.<device>.<setting>`,
/// `net.ipv4.neigh.<device>.<setting>`) is kept whole.
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    let root = Path::new("/proc/sys");
    for prefix in ["net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh."] {
        if let Some(rest) = key.strip_prefix(prefix)
            && let Some((device, setting)) = rest.rsplit_once('.')
        {
            return root
                .join(prefix.trim_end_matches('.').replace('.', "/"))
                .join(device)
                .join(setting);
        }
    }
    root.join(key.replace('.', "/"))
}

pub(crate) fn read_sysctl(key: &str) -> std::io::Result<String> {
    Ok(fs::read_to_string(sysctl_path(key))?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_of_a_per_interface_sysctl_keeps_its_dots() {
        for (key, path) in [
            ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
            (
                "net.ipv4.conf.br.1.route_localnet",
                "/proc/sys/net/ipv4/conf/br.1/route_localnet",
            ),
            (
                "net.ipv4.neigh.br.1.proxy_delay",
                "/proc/sys/net/ipv4/neigh/br.1/proxy_delay",
            ),
            (
                "net.ipv6.conf.kudo-seg1.disable_ipv6",
                "/proc/sys/net/ipv6/conf/kudo-seg1/disable_ipv6",
            ),
        ] {
            assert_eq!(sysctl_path(key), Path::new(path), "{key}");
        }
    }
}
