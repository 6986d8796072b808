//! The desired state: the YAML model of docs/file-format.md, loading a directory, and validation.
//!
//! Pure except for reading files. Every problem is reported with its file and position.

mod diagnostic;
mod load;
mod model;
mod permissions;
mod raw;
mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics, Invalid, Origin, Position};
pub use load::{MAX_FILE_BYTES, is_state_file_name, state_files};
pub use model::*;
pub use permissions::unsafe_permissions;
pub use validate::{check_instance_id, check_node_name, is_dns_label, port_number};

/// Loads and validates the desired-state directory (or single file) at `root`.
///
/// Returns every problem at once, sorted by file and position.
pub fn load(root: &Path) -> Result<Spec, Diagnostics> {
    let loaded = load::load(root);
    validate::validate(root, &loaded).map_err(Diagnostics)
}
