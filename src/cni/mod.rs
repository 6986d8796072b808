//! The kudonet binary as a CNI plugin: when the environment holds `CNI_COMMAND`, the binary
//! speaks the Container Network Interface protocol (versions 0.4.0, 1.0.0 and 1.1.0)
//! instead of its command line. docs/cni.md says what users see.
//!
//! An attachment (a container id and an interface name, on a network) is an Instance of
//! the desired state like any other: ADD writes its document,
//! `<stateDir>/cni/<network name>/<instance name>.yaml`, validated with the rest of the
//! directory and written atomically, then converges the node for that instance under the
//! node's change lock, as the library does; DEL removes the document and converges again;
//! CHECK plans without changing anything; GC removes the documents of attachments the
//! runtime no longer lists. The instance lives in the runtime's namespace (`netns:`, which
//! kudonet never creates or deletes) on the interface the runtime names (`interface:`). A
//! `kudonet run` watching the same directory sees the documents and keeps the attachments
//! as it keeps every instance; the plugin works without one too.
//!
//! The instance name is [`document::instance_name`]: `<short id>-<interface>-<hash>`.
//!
//! # Errors
//!
//! A failed command prints the CNI error document on stdout, `{"cniVersion": ..., "code":
//! N, "msg": ..., "details": ...}`, and exits 1; logs go to stderr. The codes:
//!
//! | code | msg | when |
//! | --- | --- | --- |
//! | 1 | `incompatible CNI versions` | the configuration names no version kudonet speaks |
//! | 1 | `config version does not allow GC` (or `STATUS`) | GC or STATUS with a version before 1.1.0 |
//! | 2 | `unsupported field KEY: "VALUE"` | a MAC address requested (`CNI_ARGS MAC`, `args.cni.mac`, `runtimeConfig.mac`); a port protocol other than tcp and udp |
//! | 3 | `container unknown` | CHECK of an attachment kudonet has no document of |
//! | 4 | `required env variables [NAMES] missing` | a variable the command needs is unset or empty |
//! | 4 | `unknown CNI_COMMAND: FOO` | |
//! | 4 | `invalid characters in CNI_CONTAINERID`, `invalid CNI_IFNAME` (also: that interface exists in the namespace), `invalid CNI_NETNS`, `invalid CNI_ARGS`, `invalid KUDONET_FIREWALL` | a variable kudonet cannot use (CNI_NETNS: missing, or not a network namespace); the details say why |
//! | 5 | `cannot read stdin`, `I/O failure` | reading stdin, the state directory or the lock folder failed |
//! | 6 | `cannot decode the network configuration`, `cannot decode prevResult` | stdin is not JSON, or a key kudonet reads has the wrong type |
//! | 7 | `missing network name`, `invalid characters in network name`, `invalid stateDir`, `invalid firewall`, `invalid runtimeConfig...`, `required prevResult missing`, `invalid prevResult`, `missing cni.dev/valid-attachments` | the configuration is unusable |
//! | 11 | `try again later` | another kudonet held the node's lock for 30 s |
//! | 50 | `plugin not available` | STATUS: the state directory has no valid Node for this machine |
//! | 100 | `node not set up` | ADD, CHECK: the state directory has no valid Node for this machine |
//! | 101 | `request refused` | the attachment's document would make the desired state invalid: an address outside the node's subnet or taken, a host port another instance publishes, an instance name another attachment holds |
//! | 102 | `not converged` | the node could not be made to match (a kernel failure, an interface of that name already in the namespace); ADD has removed the attachment again |
//! | 103 | `check failed` | CHECK: something of the attachment differs |
//! | 104 | `missing privileges` | the process may not change the node (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN) |

mod commands;
pub(crate) mod document;
pub(crate) mod error;
pub(crate) mod request;
pub(crate) mod result;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};

use error::{CniError, INCOMPATIBLE_VERSION, IO_FAILURE};
use request::{Command, Version};

pub use document::instance_name;

/// The environment variable that makes the binary a CNI plugin.
pub const COMMAND_ENV: &str = request::COMMAND;

/// Runs the command the environment names, reading stdin and writing the result (or the
/// error document) on stdout, as a runtime expects; returns the exit code.
pub fn run() -> u8 {
    let getenv = |name: &str| std::env::var_os(name);
    let command = getenv(COMMAND_ENV);
    // VERSION from a terminal has no configuration to wait for.
    let stdin = if command.as_deref() == Some("VERSION".as_ref()) && std::io::stdin().is_terminal()
    {
        Ok(Vec::new())
    } else {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    };
    let (outcome, version) = execute(&getenv, stdin);
    let (text, code) = match outcome {
        Ok(None) => return 0,
        Ok(Some(result)) => (result, 0),
        Err(error) => {
            tracing::error!("{error}");
            (error.document(&version), 1)
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    code
}

/// Runs the command: its output on success (if it has one), or the error; and the
/// version an error document is written in (the request's as far as it is known).
fn execute(
    getenv: &dyn Fn(&str) -> Option<OsString>,
    stdin: std::io::Result<Vec<u8>>,
) -> (Result<Option<String>, CniError>, String) {
    let stated = stdin.as_deref().ok().and_then(request::stated_version);
    let mut version = stated
        .clone()
        .unwrap_or_else(|| Version::NEWEST.as_str().into());
    let outcome = (|| {
        let environment = request::environment(getenv)?;
        if environment.command == Command::Version {
            return Ok(Some(result::version_result(stated.as_deref())));
        }
        let stdin = stdin.map_err(|error| {
            CniError::new(IO_FAILURE, "cannot read stdin").details(error.to_string())
        })?;
        let config = request::config(&stdin, getenv)?;
        version = config.version.as_str().to_string();
        let attachment = environment.attachment.as_ref();
        match environment.command {
            Command::Add => {
                commands::add(&config, attachment.expect("ADD has one"), &environment.args)
                    .map(Some)
            }
            Command::Del => commands::del(&config, attachment.expect("DEL has one")).map(|()| None),
            Command::Check => {
                commands::check(&config, attachment.expect("CHECK has one")).map(|()| None)
            }
            Command::Gc => {
                since_1_1_0(&config, "GC")?;
                commands::gc(&config).map(|()| None)
            }
            Command::Status => {
                since_1_1_0(&config, "STATUS")?;
                commands::status(&config).map(|()| None)
            }
            Command::Version => unreachable!("answered above"),
        }
    })();
    (outcome, version)
}

/// GC and STATUS came with 1.1.0: a configuration of an earlier version does not allow
/// them (the reference plugins' answer).
fn since_1_1_0(config: &request::Config, command: &str) -> Result<(), CniError> {
    if config.version >= Version::V1_1_0 {
        return Ok(());
    }
    Err(CniError::new(
        INCOMPATIBLE_VERSION,
        format!("config version does not allow {command}"),
    )
    .details(format!(
        "config is {}, {command} needs 1.1.0",
        request::quote(config.version.as_str())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    fn document(pairs: &'static [(&'static str, &'static str)], stdin: &str) -> String {
        let (outcome, version) = execute(&env(pairs), Ok(stdin.as_bytes().to_vec()));
        match outcome {
            Ok(output) => output.unwrap_or_default(),
            Err(error) => error.document(&version),
        }
    }

    #[test]
    fn errors_are_documents_in_the_requests_version() {
        assert_eq!(
            document(
                &[("CNI_COMMAND", "FOO")],
                r#"{"cniVersion":"1.0.0","name":"n"}"#
            ),
            r#"{"cniVersion":"1.0.0","code":4,"msg":"unknown CNI_COMMAND: FOO"}"#
        );
        assert_eq!(
            document(&[("CNI_COMMAND", "STATUS")], "{"),
            r#"{"cniVersion":"1.1.0","code":6,"msg":"cannot decode the network configuration","details":"EOF while parsing an object at line 1 column 1"}"#
        );
        assert_eq!(
            document(
                &[("CNI_COMMAND", "GC")],
                r#"{"cniVersion":"1.0.0","name":"n"}"#
            ),
            r#"{"cniVersion":"1.0.0","code":1,"msg":"config version does not allow GC","details":"config is \"1.0.0\", GC needs 1.1.0"}"#
        );
        assert_eq!(
            document(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#),
            r#"{"cniVersion":"0.4.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
        // VERSION needs no configuration.
        assert_eq!(
            document(&[("CNI_COMMAND", "VERSION")], ""),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
