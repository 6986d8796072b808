//! The error document a CNI plugin prints on stdout when a command fails, and the codes
//! kudonet uses (the table is in the module documentation of [`super`]).

use serde::Serialize;

use crate::compat::error::NetworkError;

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// A field kudonet does not support (the message names its key and value).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// The container (the attachment) is unknown.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// An environment variable is missing or invalid (the message names it).
pub const INVALID_ENVIRONMENT: u32 = 4;
/// Reading stdin, or reading or writing the state directory, failed.
pub const IO_FAILURE: u32 = 5;
/// stdin is not the JSON a CNI configuration is.
pub const DECODING_FAILURE: u32 = 6;
/// The network configuration is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// Another kudonet holds the node's lock: try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// STATUS: the plugin cannot serve ADD.
pub const NOT_AVAILABLE: u32 = 50;
/// kudonet: the state directory has no valid Node for this machine.
pub const NODE_NOT_SET_UP: u32 = 100;
/// kudonet: the attachment's document would make the desired state invalid.
pub const REQUEST_REFUSED: u32 = 101;
/// kudonet: the node could not be made to match the desired state.
pub const NOT_CONVERGED: u32 = 102;
/// kudonet: CHECK found the attachment differing from what it should be.
pub const CHECK_FAILED: u32 = 103;
/// kudonet: the process lacks the privileges to change the node.
pub const MISSING_PRIVILEGES: u32 = 104;

/// A failed command, as the CNI error document says it: a code, a short message and,
/// when there is more to say, details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// One of the codes of this module.
    pub code: u32,
    /// What failed, in a few words.
    pub msg: String,
    /// Why, naming the value or object concerned.
    pub details: Option<String>,
}

impl CniError {
    /// An error without details.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// The same error with `details`.
    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// The error document, in `version` (the request's, when it is known), one line.
    pub fn document(&self, version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Document<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        serde_json::to_string(&Document {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: self.details.as_deref(),
        })
        .expect("strings and numbers serialise")
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.details {
            Some(details) => write!(f, "{}; {details}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

/// A library error in CNI terms.
impl From<NetworkError> for CniError {
    fn from(error: NetworkError) -> CniError {
        let (code, msg) = match &error {
            NetworkError::InvalidRequest { .. } => (REQUEST_REFUSED, "request refused"),
            NetworkError::MissingPrivileges { .. } => (MISSING_PRIVILEGES, "missing privileges"),
            NetworkError::NodeNotSetUp { .. }
            | NetworkError::DifferentNode { .. }
            | NetworkError::NodeInUse { .. }
            | NetworkError::InvalidState { .. } => (NODE_NOT_SET_UP, "node not set up"),
            NetworkError::Busy { .. } => (TRY_AGAIN_LATER, "try again later"),
            NetworkError::Dataplane(_) | NetworkError::NotConverged { .. } => {
                (NOT_CONVERGED, "not converged")
            }
            NetworkError::Io { .. } => (IO_FAILURE, "I/O failure"),
        };
        CniError::new(code, msg).details(error.to_string())
    }
}
