//! Reading a desired-state directory: which files count, reading them within limits, and
//! parsing their YAML documents. Validation of what they mean is in `validate`.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::{Budget, MessageFormatter, Options, Spanned};

use super::diagnostic::{Diagnostic, Origin, Position};
use super::raw::RawDocument;

/// Files larger than this are rejected unread: desired state is small, and the daemon runs as root.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Folders nested deeper than this below DIR are not entered (a symlink farm cannot stall us).
const MAX_DIR_DEPTH: usize = 32;

/// Our documents nest three levels deep (document, `ports`, a port); anything much deeper is hostile.
const MAX_YAML_DEPTH: usize = 16;

/// Events replayed through aliases, per document: plenty for a few shared port lists.
const MAX_ALIAS_EVENTS: usize = 10_000;

/// A desired-state file as read from disk.
#[derive(Debug)]
pub(super) struct SourceFile {
    pub path: PathBuf,
    pub text: Arc<str>,
}

/// A parsed document and the file it came from (an index into `Loaded::files`).
#[derive(Debug)]
pub(super) struct Document {
    pub file: usize,
    pub raw: Spanned<RawDocument>,
}

#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub files: Vec<SourceFile>,
    pub documents: Vec<Document>,
    pub diagnostics: Vec<Diagnostic>,
    /// The names (when readable) of Node documents that failed to parse.
    pub broken_nodes: Vec<Option<String>>,
}

/// Reads every desired-state file below `root` (or `root` itself, when it is a file).
pub(super) fn load(root: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    for path in state_files(root, &mut loaded.diagnostics) {
        match read_text(&path) {
            Ok(text) => {
                let file = loaded.files.len();
                parse_documents(&path, file, &text, &mut loaded);
                loaded.files.push(SourceFile {
                    path,
                    text: text.into(),
                });
            }
            Err(diagnostic) => loaded.diagnostics.push(diagnostic),
        }
    }
    loaded
}

/// Whether a file name is desired state: `*.yaml` or `*.yml`, not hidden. Editor leftovers
/// (`x.yaml~`, `.x.yaml.swp`, `x.yaml.tmp`) fail one of these two tests.
pub fn is_state_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The desired-state files below `root`, sorted, following symlinks (ConfigMap mounts are
/// symlinks into a hidden `..data` folder) but never entering a folder twice.
pub fn state_files(root: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    state_tree(root, diagnostics).files
}

/// What a load reads: the folders it lists (`root` included) and the files it parses.
#[derive(Debug, Default)]
pub(super) struct StateTree {
    pub folders: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
}

pub(super) fn state_tree(root: &Path, diagnostics: &mut Vec<Diagnostic>) -> StateTree {
    let mut tree = StateTree::default();
    match fs::metadata(root) {
        Ok(metadata) if metadata.is_file() => tree.files.push(root.to_path_buf()),
        Ok(metadata) if metadata.is_dir() => {
            let mut visited = HashSet::from([(metadata.dev(), metadata.ino())]);
            walk(root, 0, &mut visited, &mut tree, diagnostics);
        }
        Ok(_) => diagnostics.push(Diagnostic::new(
            Origin::path(root),
            "not a directory or a regular file",
        )),
        Err(error) => diagnostics.push(Diagnostic::new(
            Origin::path(root),
            format!("cannot read desired-state directory: {error}"),
        )),
    }
    tree
}

fn walk(
    dir: &Path,
    depth: usize,
    visited: &mut HashSet<(u64, u64)>,
    tree: &mut StateTree,
    diagnostics: &mut Vec<Diagnostic>,
) {
    tree.folders.push(dir.to_path_buf());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            diagnostics.push(Diagnostic::new(
                Origin::path(dir),
                format!("cannot list folder: {error}"),
            ));
            return;
        }
    };
    let mut names: Vec<_> = entries
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let name_text = name.to_string_lossy();
        if name_text.starts_with('.') {
            continue;
        }
        let path = dir.join(&name);
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            // A dangling link that looks like state is an error; any other is not ours to judge.
            Err(error) if is_state_file_name(&name_text) => {
                diagnostics.push(Diagnostic::new(
                    Origin::path(&path),
                    format!("cannot read: {error}"),
                ));
                continue;
            }
            Err(_) => continue,
        };
        if metadata.is_dir() {
            if depth + 1 >= MAX_DIR_DEPTH {
                diagnostics.push(Diagnostic::new(
                    Origin::path(&path),
                    format!("folders nested more than {MAX_DIR_DEPTH} levels deep are not read"),
                ));
            } else if visited.insert((metadata.dev(), metadata.ino())) {
                walk(&path, depth + 1, visited, tree, diagnostics);
            }
        } else if metadata.is_file() && is_state_file_name(&name_text) {
            tree.files.push(path);
        }
    }
}

/// Reads a file as UTF-8 text within `MAX_FILE_BYTES`, bounding memory even if it grows meanwhile.
fn read_text(path: &Path) -> Result<String, Diagnostic> {
    let cannot_read = |error: std::io::Error| {
        Diagnostic::new(Origin::path(path), format!("cannot read: {error}"))
    };
    let file = fs::File::open(path).map_err(cannot_read)?;
    let too_large = |size: u64| {
        Diagnostic::new(
            Origin::path(path),
            format!("file is {size} bytes, over the limit of {MAX_FILE_BYTES} bytes (16 MiB)"),
        )
    };
    let size = file.metadata().map_err(cannot_read)?.len();
    if size > MAX_FILE_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|error| {
        let bytes = error.as_bytes();
        let valid = error.utf8_error().valid_up_to();
        Diagnostic::new(
            Origin::at(path, byte_position(bytes, valid)),
            format!("file is not valid UTF-8 (byte 0x{:02x})", bytes[valid]),
        )
    })
}

/// The line and column of a byte offset; columns count characters of the valid prefix.
fn byte_position(bytes: &[u8], offset: usize) -> Position {
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count() as u64
        + 1;
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    Position { line, column }
}

fn parser_options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    // A 16 MiB file may legitimately hold tens of thousands of instances in one stream;
    // aliases stay at the parser's conservative defaults, which stop alias bombs.
    budget.max_documents = 1_000_000;
    budget.max_events = 8_000_000;
    budget.max_nodes = 4_000_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    // Our documents have no use for large alias expansions: stop a bomb long before it
    // costs noticeable time, also when a document is read leniently for its kind.
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    options
}

fn parse_documents(path: &Path, file: usize, text: &str, loaded: &mut Loaded) {
    let mut reader = text.as_bytes();
    let documents =
        serde_saphyr::read_with_options::<_, Spanned<RawDocument>>(&mut reader, parser_options());
    let mut outlines = None;
    for (index, result) in documents.enumerate() {
        match result {
            Ok(raw) => loaded.documents.push(Document { file, raw }),
            Err(error) => {
                let mut diagnostic = yaml_diagnostic(path, text, &error);
                let outlines = outlines.get_or_insert_with(|| outlines_of(text));
                let outline = outlines.get(index).cloned().unwrap_or_default();
                if let (Some(field), Some(kind)) =
                    (unknown_document_field(&diagnostic.message), &outline.kind)
                {
                    diagnostic.message = unknown_field_message(field, kind);
                }
                // A broken Node still exists: it must not also cause "no Node" or
                // "Node does not exist" errors.
                if outline.kind.as_deref() == Some("Node") {
                    loaded.broken_nodes.push(outline.name);
                }
                loaded.diagnostics.push(diagnostic);
            }
        }
    }
}

/// The field serde rejected at the top of a document, if that is what `message` says. Serde
/// only knows the union of all kinds' fields; the caller rephrases with the document's kind.
fn unknown_document_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    expected
        .contains("expected one of apiVersion, kind,")
        .then_some(field)
}

/// The `kind` and `name` of a document, when they are strings.
#[derive(Debug, Clone, Default)]
struct Outline {
    kind: Option<String>,
    name: Option<String>,
}

/// The outline of each non-empty document of `text`, read leniently (other fields and
/// values of other types ignored), in the order the strict parse yields them.
fn outlines_of(text: &str) -> Vec<Outline> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    #[derive(serde::Deserialize)]
    struct Lenient {
        kind: Option<Text>,
        name: Option<Text>,
    }
    let text_of = |value: Option<Text>| match value {
        Some(Text::Text(text)) => Some(text),
        _ => None,
    };
    let mut reader = text.as_bytes();
    serde_saphyr::read_with_options::<_, Lenient>(&mut reader, parser_options())
        .map(|document| {
            document
                .map(|document| Outline {
                    kind: text_of(document.kind),
                    name: text_of(document.name),
                })
                .unwrap_or_default()
        })
        .collect()
}

/// "unknown field" for a field of no kind, naming what the document's kind accepts and the
/// closest of those when it looks like a typo.
pub(super) fn unknown_field_message(field: &str, kind: &str) -> String {
    let Some(allowed) = super::validate::fields_of(kind) else {
        return format!("unknown field `{field}`");
    };
    let mut message = format!(
        "unknown field `{field}` in {} {kind}, expected one of {}",
        article(kind),
        allowed.join(", ")
    );
    if let Some(close) = allowed.iter().find(|name| is_typo_of(field, name)) {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    message
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

/// Whether `a` is `b` with one or two letters wrong, missing, extra or swapped, or another case.
fn is_typo_of(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (
        a.to_lowercase().chars().collect(),
        b.to_lowercase().chars().collect(),
    );
    // Optimal string alignment distance: Levenshtein plus adjacent transpositions.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()] <= 2
}

fn yaml_diagnostic(path: &Path, text: &str, error: &serde_saphyr::Error) -> Diagnostic {
    let position = error
        .location()
        .map(|location| Position {
            line: location.line().max(1),
            column: location.column().max(1),
        })
        .unwrap_or(Position::START);
    let message = match error {
        serde_saphyr::Error::Budget { breach, .. } => budget_message(breach),
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. }
        | serde_saphyr::Error::AliasReplayCounterOverflow { .. } => ALIAS_BOMB.to_string(),
        _ => {
            let message = serde_saphyr::DefaultMessageFormatter.format_message(error);
            // The parser's own limit (deeper than our budget, which a streaming read does
            // not always reach first): do not claim our number.
            if message.contains("recursion limit exceeded") {
                "nesting too deep (recursion limit exceeded)".to_string()
            } else if let Some(hint) = unquoted_ipv6_hint(text, position, &message) {
                hint
            } else {
                type_message(text, position, &message).unwrap_or_else(|| message.into_owned())
            }
        }
    };
    Diagnostic::new(Origin::at(path, position), message)
}

/// An IPv6 address ending in `::` written unquoted (`hostIp: ::`, `address: fd00:10::`):
/// YAML reads its last colon as another key's, and says only "mapping values are not
/// allowed". The message, with the fix.
fn unquoted_ipv6_hint(text: &str, position: Position, message: &str) -> Option<String> {
    if !message.contains("mapping values are not allowed") {
        return None;
    }
    let line = text.lines().nth((position.line as usize).checked_sub(1)?)?;
    let value = line.split_once(": ")?.1.trim();
    let value = value.strip_prefix("- ").unwrap_or(value).trim();
    (value.ends_with("::") && value.parse::<std::net::Ipv6Addr>().is_ok()).then(|| {
        format!("{message}: an IPv6 address ending in `::` must be quoted, as in \"{value}\"")
    })
}

const ALIAS_BOMB: &str = "document too large once aliases are expanded (alias bomb?)";

/// Rephrases the parser's terse type errors (`invalid i64`, `expected string scalar`) as what
/// the field at `position` must be, naming the field when it is written on that line.
fn type_message(text: &str, position: Position, message: &str) -> Option<String> {
    let expected = match message {
        "expected string scalar" => "a string",
        "expected sequence start" => "a list",
        "expected mapping start" => "a mapping",
        "invalid boolean" => "true or false",
        _ if message.starts_with("invalid i") || message.starts_with("invalid u") => "an integer",
        _ => return None,
    };
    let line = text.lines().nth((position.line as usize).checked_sub(1)?)?;
    let before: String = line
        .chars()
        .take((position.column as usize).saturating_sub(1))
        .collect();
    let key = before
        .trim_end()
        .strip_suffix(':')
        .map(|key| key.trim_start().trim_start_matches("- ").trim())
        .filter(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()));
    Some(match key {
        Some(key) => format!("`{key}` must be {expected}"),
        None if position.column == 1 && expected == "a mapping" => {
            "a document must be a mapping of fields, such as `kind: Node`".to_string()
        }
        None => format!("expected {expected}"),
    })
}

fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach;
    match breach {
        BudgetBreach::Depth { .. } => format!("nesting deeper than {MAX_YAML_DEPTH} levels"),
        BudgetBreach::Aliases { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::Nodes { .. }
        | BudgetBreach::Events { .. } => ALIAS_BOMB.to_string(),
        other => format!("document exceeds the parser's limits ({other:?})"),
    }
}
