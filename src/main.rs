//! The `kudonet` command line: parse, call the library, print, map outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kudonet::spec;

/// kudonet: a declarative network controller for container-like instances.
///
/// Reads YAML files describing nodes and instances from a directory and makes this node's
/// network match them: a bridge, a namespace and veth pair per instance, routes and iptables
/// rules in kudonet's own KUDO-* chains.
#[derive(Debug, Parser)]
#[command(name = "kudonet", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a desired-state directory; needs no privileges and changes nothing.
    ///
    /// Reads every *.yaml and *.yml file below DIR (hidden entries and editor leftovers are
    /// skipped, symlinks followed) and reports every problem at once, one per line, as
    /// FILE:LINE:COLUMN: message. Exits 0 when the directory is valid, 1 otherwise.
    /// Files or folders that users other than root can write are reported as warnings
    /// (apply and run refuse them).
    Validate {
        /// The desired-state directory (or a single YAML file).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { dir } => validate(&dir),
    }
}

fn validate(dir: &std::path::Path) -> ExitCode {
    for warning in spec::unsafe_permissions(dir) {
        eprintln!("warning: {warning}");
    }
    match spec::load(dir) {
        Ok(spec) => {
            println!(
                "{}: valid ({} node{}, {} instance{}{})",
                dir.display(),
                spec.nodes.len(),
                plural(spec.nodes.len()),
                spec.instances.len(),
                plural(spec.instances.len()),
                if spec.cluster.is_some() {
                    ", cluster"
                } else {
                    ""
                },
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            ExitCode::FAILURE
        }
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}
