//! Desired-state directories as a root-run kudonet accepts them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A desired-state directory as a root-run kudonet accepts it (and others can read): `state`
/// inside a private temporary folder (so that its parent, watched while it is missing, is
/// quiet), both mode 0755, files mode 0644.
pub struct StateDir {
    root: tempfile::TempDir,
    path: String,
}

impl StateDir {
    /// An empty directory.
    pub fn empty() -> StateDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = root.path().join("state").display().to_string();
        let state = StateDir { root, path };
        state.create();
        state
    }

    /// A directory holding `yaml` as node.yaml.
    pub fn new(yaml: &str) -> StateDir {
        let state = StateDir::empty();
        state.write("node.yaml", yaml);
        state
    }

    /// Creates the directory (again, after a test removed it).
    pub fn create(&self) {
        std::fs::create_dir(self.dir()).unwrap();
        std::fs::set_permissions(self.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The directory, DIR.
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// DIR as an argument.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `file` in DIR.
    pub fn file(&self, file: &str) -> PathBuf {
        self.dir().join(file)
    }

    /// Writes `file` in place (not atomically).
    pub fn write(&self, file: &str, yaml: &str) {
        write_file(&self.file(file), yaml);
    }

    /// Writes `file` as agents do: a hidden temporary file, renamed over it.
    pub fn replace(&self, file: &str, yaml: &str) {
        let temporary = self.file(&format!(".{file}.tmp"));
        write_file(&temporary, yaml);
        std::fs::rename(&temporary, self.file(file)).unwrap();
    }

    /// A folder beside DIR, for files DIR links to.
    pub fn outside(&self) -> PathBuf {
        self.beside("elsewhere")
    }

    /// `name` in the private folder that holds DIR.
    pub fn beside(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

/// Writes `content` to `path`, mode 0644.
pub fn write_file(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The dual-stack node of the kernel tests: web publishes TCP 8080 -> 80 and UDP 5353 -> 53
/// on every address of each family; db publishes nothing.
pub const DUAL_STACK: &str = r#"
kind: Node
name: node-a
cidr: [10.0.0.1/24, "fd00:10::1/64"]
---
kind: Instance
name: web
address: [10.0.0.2/24, "fd00:10::2/64"]
ports:
  - hostPort: 8080
    instancePort: 80
  - hostPort: 5353
    instancePort: 53
    protocol: udp
---
kind: Instance
name: db
address: [10.0.0.3/24, "fd00:10::3/64"]
"#;
