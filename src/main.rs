//! The `kudonet` command line: parse, call the library, print, map outcomes to exit codes
//! (0 done, 1 failed or invalid, 2 usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};

use kudonet::dataplane::Dataplane;
use kudonet::kernel::KernelDataplane;
use kudonet::observed::Observed;
use kudonet::plan::{count_effects, plan};
use kudonet::reconcile::{self, Failure, StatusDocument, load_desired};
use kudonet::{privileges, spec};

/// The command line's own modules.
mod cli {
    pub(crate) mod progress;
}

use cli::progress::{self, Report};

/// kudonet: a declarative network controller for container-like instances.
///
/// Reads YAML files describing nodes and instances from a directory and makes this node's
/// network match them: a bridge, a namespace and veth pair per instance, routes and iptables
/// rules in kudonet's own KUDO-* chains. Nothing kudonet did not create is changed.
#[derive(Debug, Parser)]
#[command(name = "kudonet", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Where instance namespaces are mounted (as `ip netns` does).
    #[arg(long, global = true, default_value = "/run/netns", value_name = "PATH")]
    netns_dir: PathBuf,

    /// Which firewall holds kudonet's rules: iptables (KUDO-* chains in iptables and
    /// ip6tables) or nftables (its own table `inet kudonet`, written over netlink). The
    /// other one is cleared of kudonet's rules.
    #[arg(long, global = true, value_enum, default_value_t = Firewall::Iptables)]
    firewall: Firewall,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// More output (-v: each action apply and teardown take, and info logs; -vv: debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Only errors: no log line below an error, no progress line.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Firewall {
    Iptables,
    Nftables,
}

impl From<Firewall> for spec::FirewallBackend {
    fn from(firewall: Firewall) -> Self {
        match firewall {
            Firewall::Iptables => spec::FirewallBackend::Iptables,
            Firewall::Nftables => spec::FirewallBackend::Nftables,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a desired-state directory; needs no privileges and changes nothing.
    ///
    /// Reads every *.yaml and *.yml file below DIR (hidden entries and editor leftovers are
    /// skipped, symlinks followed) and reports every problem at once, one per line, as
    /// FILE:LINE:COLUMN: message. Exits 0 when the directory is valid, 1 otherwise.
    /// Files or folders that users other than root can write are reported as warnings
    /// (apply and plan refuse them).
    Validate {
        /// The desired-state directory (or a single YAML file).
        dir: PathBuf,
    },
    /// Show what `apply` would change on this node, one action a line; changes nothing.
    ///
    /// `+` adds, `~` changes, `-` destroys. Ends with `Plan: N to add, M to change, K to
    /// destroy.`, or `No changes.` when the node matches DIR. Foreign objects in the way are
    /// listed as conflicts.
    Plan {
        dir: PathBuf,
        /// The Node of DIR this machine is (default: the only Node, else the hostname's).
        #[arg(long)]
        node: Option<String>,
    },
    /// Make this node match DIR, once; exit 0 when it does, 1 otherwise (each failure named).
    ///
    /// Ends with `Apply complete: N added, M changed, K destroyed.` or `No changes.`; -v
    /// also prints each action as it is applied (as `plan` lists them). On a terminal, a
    /// line on stderr shows the progress meanwhile and is cleared at the end.
    Apply {
        dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
    /// Show each instance: name, phase (Ready, Pending, Drifted, Failed), address, netns, message.
    Status {
        dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove everything kudonet owns on this node (bridge, veths, namespaces, routes,
    /// chains, jump rules), and nothing else.
    ///
    /// Ends with `Teardown complete: ...` or `No changes.`; -v also prints each removal as
    /// it is done. On a terminal, a line on stderr shows the progress meanwhile.
    Teardown {
        /// Accepted for symmetry with the other commands; ownership is read from the kernel.
        dir: Option<PathBuf>,
        #[arg(long)]
        node: Option<String>,
    },
    /// The controller: keep this node matching DIR, repairing what others change, until
    /// SIGTERM or SIGINT (which leave the network in place).
    ///
    /// Reconciles at start-up (rebuilding the node after a reboot), when DIR changes, on
    /// kernel events about kudonet's objects and iptables, every --resync seconds (which
    /// also catches what raises no event: sysctls, legacy iptables), and on SIGHUP. An invalid DIR never changes the node: the last
    /// valid state stays in force and the errors are reported until DIR is valid again.
    Run {
        dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// Seconds between full resyncs.
        #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        resync: u64,
        /// Write the status document (JSON) here after every reconcile, atomically.
        #[arg(long, value_name = "PATH")]
        status_file: Option<PathBuf>,
        /// Serve Prometheus /metrics, /healthz and /readyz here (e.g. 127.0.0.1:9101).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// A guided tour that leaves the host untouched: in a throwaway network and mount
    /// namespace, apply DIR (default: the bundled example), prove connectivity with real
    /// packets, print the status, and exit (1 if a check failed).
    Demo {
        dir: Option<PathBuf>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the man page (roff, section 8) or a shell completion script, generated from
    /// this command line's own definition, e.g. `kudonet generate man > kudonet.8`.
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Generated {
    /// The man page kudonet(8).
    Man,
    Bash,
    Zsh,
    Fish,
}

fn main() -> ExitCode {
    // A runtime runs the binary as a CNI plugin: the protocol, not the command line
    // (docs/cni.md). Checked before clap, which would answer with usage text.
    if std::env::var_os(kudonet::cni::COMMAND_ENV).is_some() {
        init_cni_logging();
        return ExitCode::from(kudonet::cni::run());
    }
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match &cli.command {
        Command::Validate { dir } => validate(dir),
        Command::Plan { dir, node } => plan_command(&cli, dir, node.as_deref()),
        Command::Apply { dir, node } => apply(&cli, dir, node.as_deref()),
        Command::Status { dir, node, output } => status(&cli, dir, node.as_deref(), *output),
        Command::Teardown { dir, node } => teardown(&cli, dir.as_deref(), node.as_deref()),
        Command::Demo { dir, node } => demo(&cli, dir.as_deref(), node.as_deref()),
        Command::Generate { what } => generate(*what),
        Command::Run {
            dir,
            node,
            resync,
            status_file,
            metrics_addr,
        } => run(
            &cli,
            kudonet::controller::Options {
                dir: dir.clone(),
                node: node.clone(),
                netns_dir: cli.netns_dir.clone(),
                lock_dir: PathBuf::from(kudonet::lock::LOCK_DIR),
                resync: std::time::Duration::from_secs(*resync),
                status_file: status_file.clone(),
                metrics_addr: *metrics_addr,
                firewall: cli.firewall.into(),
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("kudonet: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    // The controller reports what it does; one-shot commands print their own results.
    let daemon = matches!(cli.command, Command::Run { .. });
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        // Other crates' info lines (notify's, say) are noise in a daemon's log.
        (false, 0) if daemon => "warn,kudonet=info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUDONET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs of the CNI plugin: stderr only (stdout is the protocol's), warnings unless
/// `KUDONET_LOG` says otherwise.
fn init_cni_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUDONET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

type CommandResult = Result<ExitCode, String>;

fn generate(what: Generated) -> CommandResult {
    use clap::CommandFactory;
    use clap_complete::Shell;
    use std::io::Write;
    let mut command = Cli::command();
    // Rendered in memory first: writing to a closed pipe is then an error, not a panic.
    let mut text = Vec::new();
    let shell = match what {
        Generated::Man => None,
        Generated::Bash => Some(Shell::Bash),
        Generated::Zsh => Some(Shell::Zsh),
        Generated::Fish => Some(Shell::Fish),
    };
    match shell {
        // A system service's page: section 8, as the systemd unit's Documentation= says.
        None => clap_mangen::Man::new(command)
            .section("8")
            .render(&mut text)
            .map_err(|error| format!("cannot render the man page: {error}"))?,
        Some(shell) => clap_complete::generate(shell, &mut command, "kudonet", &mut text),
    }
    std::io::stdout()
        .write_all(&text)
        .map_err(|error| format!("cannot write to stdout: {error}"))?;
    Ok(ExitCode::SUCCESS)
}

fn validate(dir: &Path) -> CommandResult {
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
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The kernel dataplane of this node, after checking privileges.
fn dataplane(cli: &Cli, command: &str) -> Result<KernelDataplane, String> {
    privileges::require(command, privileges::NODE_ADMIN).map_err(|missing| missing.to_string())?;
    KernelDataplane::for_backend(&cli.netns_dir, cli.firewall.into())
        .map_err(|error| error.to_string())
}

/// What the node has, namespaces of others that `desired` names included.
fn observe(
    dataplane: &mut KernelDataplane,
    desired: Option<&spec::Desired>,
) -> Result<Observed, String> {
    if let Some(desired) = desired {
        dataplane.read_others_namespaces(desired.others_namespaces());
    }
    dataplane.observe().map_err(|error| error.to_string())
}

/// The desired state of DIR for this node, with the firewall backend of `--firewall`.
fn load(
    cli: &Cli,
    dir: &Path,
    node: Option<&str>,
) -> Result<(spec::Spec, spec::Desired), reconcile::DesiredError> {
    let (spec, mut desired) = load_desired(dir, node)?;
    desired.firewall = cli.firewall.into();
    Ok((spec, desired))
}

fn plan_command(cli: &Cli, dir: &Path, node: Option<&str>) -> CommandResult {
    let (spec, desired) = load(cli, dir, node).map_err(|error| error.to_string())?;
    let mut dataplane = dataplane(cli, "plan")?;
    let observed = observe(&mut dataplane, Some(&desired))?;
    reconcile::check_against_node(&spec, &desired, &observed).map_err(|error| error.to_string())?;
    let planned = plan(&desired, &observed);
    print!("{planned}");
    print_warnings(&reconcile::node_conditions(&desired, &observed, &planned));
    Ok(ExitCode::SUCCESS)
}

/// Node conditions other than conflicts (which the plan and the summary print already).
fn print_warnings(conditions: &[reconcile::Condition]) {
    for condition in conditions.iter().filter(|c| c.kind != "Conflict") {
        eprintln!("warning: {condition}");
    }
}

fn apply(cli: &Cli, dir: &Path, node: Option<&str>) -> CommandResult {
    let (_, desired) = load(cli, dir, node).map_err(|error| error.to_string())?;
    let mut dataplane = dataplane(cli, "apply")?;
    let _lock = wait_for_change_lock(&desired.node.name)?;
    // Read again under the lock: whoever held it (a library call) may have changed DIR.
    let (spec, desired) = load(cli, dir, node).map_err(|error| error.to_string())?;
    let mut report = Report::new(cli.verbose > 0, cli.quiet);
    let outcome = reconcile::converge(&mut dataplane, &desired, &Default::default(), &mut report);
    // Cleared before anything else is printed.
    drop(report);
    let outcome = outcome.map_err(|error| error.to_string())?;
    // A node the machine makes invalid was left untouched (its plan is blocked): say why
    // at the Node's cidr, as for any invalid file.
    reconcile::check_against_node(&spec, &desired, &outcome.observed)
        .map_err(|error| error.to_string())?;
    print_warnings(&reconcile::node_conditions(
        &desired,
        &outcome.observed,
        &outcome.remaining,
    ));
    report_outcome(
        "Apply",
        &outcome.applied,
        &outcome.failures,
        &outcome.remaining,
    )
}

fn teardown(cli: &Cli, dir: Option<&Path>, node: Option<&str>) -> CommandResult {
    let mut dataplane = dataplane(cli, "teardown")?;
    // Ownership comes from the kernel; DIR or --node only name the node whose lock to hold,
    // so that a teardown does not race an apply or the controller.
    let node = node.map(str::to_string).or_else(|| {
        let (_, desired) = load_desired(dir?, None).ok()?;
        Some(desired.node.name)
    });
    let _lock = match &node {
        Some(node) => Some(wait_for_change_lock(node)?),
        None => None,
    };
    let mut report = Report::new(cli.verbose > 0, cli.quiet);
    let outcome = reconcile::teardown(&mut dataplane, &mut report);
    drop(report);
    let outcome = outcome.map_err(|error| error.to_string())?;
    report_outcome(
        "Teardown",
        &outcome.applied,
        &outcome.failures,
        &outcome.remaining,
    )
}

/// Set by SIGTERM or SIGINT while a command waits for the change lock.
static STOP_WAITING: AtomicBool = AtomicBool::new(false);

extern "C" fn stop_waiting(_: nix::libc::c_int) {
    STOP_WAITING.store(true, Ordering::SeqCst);
}

/// Takes the node's change lock for `apply` or `teardown`, waiting as long as its holder
/// keeps it (saying so once). SIGTERM or SIGINT end the wait with a one-line reason, before
/// anything was changed; once the lock is held they have their default effect again (an
/// interrupted change converges on the next apply).
fn wait_for_change_lock(node: &str) -> Result<kudonet::lock::NodeLock, String> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let catch = SigAction::new(
        SigHandler::Handler(stop_waiting),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let signals = [Signal::SIGTERM, Signal::SIGINT];
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let previous = signals.map(|signal| unsafe { sigaction(signal, &catch) }.ok());
    let wait = kudonet::lock::Wait {
        until: None,
        stop: &|| STOP_WAITING.load(Ordering::SeqCst),
    };
    let result = kudonet::lock::wait_lock(Path::new(kudonet::lock::LOCK_DIR), node, wait, |held| {
        eprintln!("kudonet: waiting for the lock: {held}")
    });
    for (signal, previous) in signals.into_iter().zip(previous) {
        if let Some(previous) = previous {
            // SAFETY: restores the disposition saved above.
            let _ = unsafe { sigaction(signal, &previous) };
        }
    }
    match result {
        // A signal between taking the lock and restoring the dispositions.
        Ok(_) if STOP_WAITING.load(Ordering::SeqCst) => {
            Err("interrupted before anything was changed".to_string())
        }
        Ok(lock) => Ok(lock),
        Err(error) => Err(error.to_string()),
    }
}

/// Prints the summary of an apply or teardown; exit 1 when the node does not match.
fn report_outcome(
    verb: &str,
    applied: &[kudonet::plan::Action],
    failures: &[Failure],
    remaining: &kudonet::plan::Plan,
) -> CommandResult {
    let (added, changed, destroyed) = count_effects(applied);
    let summary = format!("{added} added, {changed} changed, {destroyed} destroyed");
    let converged = remaining.is_empty() && remaining.conflicts.is_empty();
    if converged {
        if applied.is_empty() {
            println!("No changes.");
        } else {
            println!("{verb} complete: {summary}.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for failure in failures {
        eprintln!("error: {failure}");
    }
    for conflict in &remaining.conflicts {
        eprintln!("conflict: {conflict}");
    }
    for action in remaining.actions() {
        // An action that failed was reported with its error already.
        if !failures.iter().any(|failure| failure.action == *action) {
            eprintln!("still differs: {}", action.summary());
        }
    }
    eprintln!("{verb} incomplete: {summary}; the node does not match the desired state.");
    Ok(ExitCode::FAILURE)
}

fn run(_cli: &Cli, options: kudonet::controller::Options) -> CommandResult {
    privileges::require("run", privileges::NODE_ADMIN).map_err(|missing| missing.to_string())?;
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime
        .block_on(kudonet::controller::run(options))
        .map_err(|error| error.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// glibc gives each thread that allocates its own arena, kept for the life of the process.
/// The controller's threads (namespace readers, the blocking pool) allocate briefly and
/// rarely at once: one arena serves them and keeps the daemon's memory small.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: called while the process has a single thread, before any allocation race.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn demo(cli: &Cli, dir: Option<&Path>, node: Option<&str>) -> CommandResult {
    privileges::require("demo", privileges::NODE_ADMIN).map_err(|missing| missing.to_string())?;
    // Still single-threaded here, as unsharing the mount namespace requires.
    kudonet::demo::enter_sandbox()
        .map_err(|error| format!("cannot create the demo's namespaces: {error}"))?;
    let passed = kudonet::demo::run(
        dir,
        node,
        &cli.netns_dir,
        cli.firewall.into(),
        &mut std::io::stdout(),
    )
    .map_err(|error| format!("demo: {error}"))?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(cli: &Cli, dir: &Path, node: Option<&str>, output: Output) -> CommandResult {
    let desired = load(cli, dir, node);
    let mut dataplane = dataplane(cli, "status")?;
    let observed = observe(
        &mut dataplane,
        desired.as_ref().ok().map(|(_, desired)| desired),
    )?;
    let observed_at = reconcile::timestamp();
    let document = match &desired {
        Ok((spec, desired)) => {
            // A node its uplink's addresses make invalid is reported as the controller does.
            let errors: Vec<String> = reconcile::check_against_node(spec, desired, &observed)
                .err()
                .map(|error| error.to_string().lines().map(str::to_string).collect())
                .unwrap_or_default();
            StatusDocument {
                node: desired.node.name.clone(),
                valid: errors.is_empty(),
                errors,
                observed_at,
                conditions: reconcile::node_conditions(
                    desired,
                    &observed,
                    &plan(desired, &observed),
                ),
                instances: reconcile::instance_status(desired, &observed, &cli.netns_dir, &[]),
            }
        }
        Err(error) => StatusDocument {
            node: node
                .map(str::to_string)
                .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
                .unwrap_or_default(),
            valid: false,
            errors: error.to_string().lines().map(str::to_string).collect(),
            observed_at,
            conditions: Vec::new(),
            instances: reconcile::instances_in_force(&observed, &cli.netns_dir),
        },
    };
    match output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&document).map_err(|error| error.to_string())?
            )
        }
        Output::Text => print_status_table(&document),
    }
    Ok(if document.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_status_table(document: &StatusDocument) {
    for error in &document.errors {
        eprintln!("{error}");
    }
    for condition in &document.conditions {
        println!("Node condition {condition}");
    }
    let rows: Vec<[String; 5]> = document
        .instances
        .iter()
        .map(|i| {
            [
                i.name.clone(),
                i.phase.to_string(),
                i.addresses.join(","),
                i.netns.clone(),
                i.message.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "PHASE", "ADDRESS", "NETNS", "MESSAGE"].map(str::to_string);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        println!("(no instances on node {})", document.node);
    }
}
