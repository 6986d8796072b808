//! Hostile desired-state directories: the input is split at 0xFF bytes (never valid UTF-8,
//! so a separator cannot hide a YAML construct) into up to four files, written below a
//! scratch folder on tmpfs, then loaded with `kudonet::spec::load`. It must return (libFuzzer's
//! `-timeout` bounds the time, `-rss_limit_mb` the memory) and never panic. When the
//! directory is valid, the plan of each of its nodes, applied on the in-memory dataplane,
//! must converge: the next plan is empty.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use kudonet::dataplane::Dataplane;
use kudonet::dataplane::memory::MemoryDataplane;
use kudonet::plan::plan;

/// Where the files go, relative to the scratch folder: nested and both extensions, so that
/// the directory walk is exercised too.
const FILES: [&str; 4] = ["a.yaml", "sub/b.yml", "c.yaml", "sub/deeper/d.yaml"];

/// A scratch folder of this process: below `$KUDONET_FUZZ_DIR` (set by `fuzz/run`, which
/// removes it afterwards), else below /dev/shm (tmpfs: a fuzzer writes files all the time).
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let base = std::env::var_os("KUDONET_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("kudonet-fuzz-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub/deeper")).expect("a scratch folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let mut parts = data.splitn(FILES.len(), |byte| *byte == 0xFF);
    for name in FILES {
        let path = dir.join(name);
        match parts.next() {
            Some(content) => fs::write(&path, content).expect("write a scratch file"),
            None => {
                let _ = fs::remove_file(&path);
            }
        }
    }

    let Ok(spec) = kudonet::spec::load(dir) else {
        return;
    };
    for node in &spec.nodes {
        let desired = spec.desired_for(node);
        let first = plan(&desired, &Default::default());
        let mut dataplane = MemoryDataplane::default();
        if let Err(error) = dataplane.apply_all(&first.to_actions()) {
            panic!("the plan of a valid directory fails: {error}\n{first}");
        }
        let second = plan(&desired, &dataplane.state);
        assert!(
            second.is_empty(),
            "a valid directory does not converge in one pass:\n{second}"
        );
    }
});
