//! Errors about the desired-state files, each pointing at a file and a position in it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column, as editors count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The line, from 1.
    pub line: u64,
    /// The column, from 1.
    pub column: u64,
}

impl Position {
    /// The first line and column of a file.
    pub const START: Position = Position { line: 1, column: 1 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A place in the desired state: a file and, for problems with its content, a position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// The file (or folder).
    pub file: PathBuf,
    /// The position in it; `None` for a problem with the file itself.
    pub position: Option<Position>,
}

impl Origin {
    /// A position in `file`.
    pub fn at(file: &Path, position: Position) -> Origin {
        Origin {
            file: file.to_path_buf(),
            position: Some(position),
        }
    }

    /// `file` itself, with no position.
    pub fn path(file: &Path) -> Origin {
        Origin {
            file: file.to_path_buf(),
            position: None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A file name may hold a newline: escaped, it cannot forge another diagnostic line.
        write!(f, "{}", shown_path(&self.file))?;
        if let Some(position) = self.position {
            write!(f, ":{position}")?;
        }
        Ok(())
    }
}

/// One problem found in the desired state, printed as `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Where the problem is.
    pub origin: Origin,
    /// What the problem is, in one line.
    pub message: String,
}

impl Diagnostic {
    /// A problem at `origin`; the message is made one line.
    pub fn new(origin: Origin, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            origin,
            message: one_line(&message.into()),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Every problem found, in file and position order. Displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in file and position order.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Messages quote user input, which may hold newlines or terminal escapes: keep each
/// diagnostic on one line and harmless to print.
fn one_line(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_string();
    }
    let mut line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_debug());
        } else {
            line.push(c);
        }
    }
    line
}

/// A path for a message, on one line: control characters (a newline in a file name) are
/// escaped as in Rust strings, so a name cannot forge another line of output.
pub fn shown_path(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// Quotes a user-supplied value for a message, escaping anything unprintable.
pub fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// A value that breaks a rule of the desired state (docs/file-format.md), and which rule, in
/// one line. The validator reports it at the value's position ([`Diagnostic`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for String {
    fn from(invalid: Invalid) -> String {
        invalid.0
    }
}
