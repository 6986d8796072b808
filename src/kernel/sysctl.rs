//! Sysctls under `/proc/sys`.

use std::fs;
use std::path::Path;

/// The file of a sysctl under /proc/sys. Interface names may contain dots, so the device
/// part of `net.ipv4.conf.<device>.<setting>` is kept whole.
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    let root = Path::new("/proc/sys");
    if let Some(rest) = key.strip_prefix("net.ipv4.conf.")
        && let Some((device, setting)) = rest.rsplit_once('.')
    {
        return root.join("net/ipv4/conf").join(device).join(setting);
    }
    root.join(key.replace('.', "/"))
}

pub(crate) fn read_sysctl(key: &str) -> std::io::Result<String> {
    Ok(fs::read_to_string(sysctl_path(key))?.trim().to_string())
}
