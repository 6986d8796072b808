//! The controller loop of `kudonet run`: it keeps the node matching the desired-state
//! directory. Level-triggered: whatever woke it (a file, a kernel event, the resync timer,
//! SIGHUP, a retry coming due), a pass reads the directory if needed, observes the node,
//! and converges it. A pass reads again only the links and namespaces that kernel events
//! named (see `dataplane::Changes`), except at start, on a resync, SIGHUP, a retry
//! or after events were lost, when it reads every link and namespace.
//!
//! Safety rules: an invalid or missing directory never changes the node (the last valid
//! desired state stays in force); one failing instance is retried with capped exponential
//! backoff while the others converge; so is the node as a whole when node-level work fails
//! or does not stick, and meanwhile only a change of the directory, SIGHUP or the retry
//! start a pass; SIGTERM/SIGINT finish the current pass and leave the network in place.
//!
//! Ready (`/readyz`) means: the last pass converged the node as a whole, and no change of
//! the directory is waiting or being applied.

pub(crate) mod backoff;
mod error;
pub(crate) mod metrics;
pub mod triggers;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

use crate::dataplane::Changes;
use crate::dataplane::Dataplane;
use crate::kernel::KernelDataplane;
use crate::kernel::events::KernelEvents;
use crate::lock::{self, NodeLock};
use crate::plan::Scope;
use crate::reconcile::{
    self, InstanceStatus, NoProgress, Outcome, Phase, StatusDocument, load_desired,
};
use crate::spec::Desired;
use backoff::Backoff;
pub use error::ControllerError;
use metrics::Metrics;
use triggers::{DirWatcher, Trigger, Triggers, Work};

/// How `kudonet run` was asked to behave.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub node: Option<String>,
    pub netns_dir: PathBuf,
    pub lock_dir: PathBuf,
    /// The period of the full resync.
    pub resync: Duration,
    /// Where to write the status document after every pass.
    pub status_file: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    /// Which firewall holds kudonet's rules.
    pub firewall: crate::spec::FirewallBackend,
}

/// How a scope is named in the logs: the instance's name, empty for the node as a whole
/// (whose failures, of the bridge, sysctls, the firewall or reading the node at all, are
/// backed off like an instance's).
fn log_name(scope: &Scope) -> &str {
    scope.instance_name().unwrap_or_default()
}

struct Controller {
    options: Options,
    triggers: Arc<Triggers>,
    /// The last valid desired state: what stays in force while the directory is invalid.
    desired: Option<Desired>,
    /// Why the directory is invalid now, one line each; empty when valid.
    errors: Vec<String>,
    /// The node-wide conditions seen by the last pass.
    conditions: Vec<reconcile::Condition>,
    /// The spec of `desired`, for the checks that need the machine.
    spec: Option<crate::spec::Spec>,
    /// Why the desired state is invalid on this machine (a node subnet its uplink uses), as
    /// found by the last pass, one line each; nothing was changed for it.
    machine_errors: Vec<String>,
    backoff: Backoff,
    /// Moved into the blocking pool for each pass and back.
    dataplane: Option<KernelDataplane>,
    lock: Option<NodeLock>,
    metrics: Arc<Metrics>,
    /// The watch on DIR (with DIR's inode), or on its parent while DIR is missing (`None`).
    desired_watcher: Option<(Option<u64>, DirWatcher)>,
    kernel_events: Option<KernelEvents>,
    _netns_watcher: Option<DirWatcher>,
    /// Raised by SIGTERM or SIGINT: ends a pass's wait for the change lock.
    stopping: Arc<AtomicBool>,
}

/// Runs the controller until SIGTERM or SIGINT. Errors are the fatal ones: another
/// controller holds the node, or the metrics address cannot be bound.
pub async fn run(options: Options) -> Result<(), ControllerError> {
    // First of all: a SIGTERM during start-up must stop the controller cleanly too, not
    // kill it with the default disposition.
    let mut terminate = signal(SignalKind::terminate()).map_err(ControllerError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ControllerError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ControllerError::Signals)?;
    let triggers = Triggers::new();
    // A pass waiting for the change lock (an apply holding it) must not hold up a shutdown:
    // the wait polls this flag, which SIGTERM and SIGINT raise. The loop below sees the
    // same signals through its own streams once the pass has given up.
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let mut terminate = signal(SignalKind::terminate()).map_err(ControllerError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ControllerError::Signals)?;
        let stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            stopping.store(true, Ordering::SeqCst);
        });
    }
    let metrics = Arc::new(Metrics::new());
    if let Some(address) = options.metrics_addr {
        let listener = metrics::bind(address)?;
        info!(%address, "serving /metrics, /healthz and /readyz");
        let (ready_metrics, ready_triggers) = (metrics.clone(), triggers.clone());
        metrics::spawn(
            listener,
            metrics.clone(),
            options.resync * 3 + Duration::from_secs(30),
            // Ready: the last pass converged the node as a whole, and no change of the
            // desired state is waiting or being applied.
            Arc::new(move || {
                ready_metrics.ready.load(Ordering::Relaxed) && !ready_triggers.change_pending()
            }),
        )?;
    }
    let mut dataplane = KernelDataplane::for_backend(&options.netns_dir, options.firewall)?;
    let _ = std::fs::create_dir_all(&options.netns_dir);
    let netns_watcher = DirWatcher::new(&options.netns_dir, false, &triggers, Trigger::Kernel)
        .map_err(|error| warn!(dir = %options.netns_dir.display(), %error, "cannot watch the netns directory"))
        .ok();
    let kernel_events = KernelEvents::start(&triggers)
        .map_err(|error| warn!(%error, "cannot subscribe to kernel events; relying on the resync"))
        .ok();
    if let Some(events) = &kernel_events {
        // Events say what changed: a pass they start reads only that.
        dataplane.observe_incrementally();
        // The event reader's socket inside a namespace being deleted would keep it alive.
        let events = events.clone();
        dataplane.on_namespace_release(move |path| events.forget_namespace(path));
    }
    let mut controller = Controller {
        lock: None,
        triggers: triggers.clone(),
        desired: None,
        errors: Vec::new(),
        conditions: Vec::new(),
        spec: None,
        machine_errors: Vec::new(),
        backoff: Backoff::default(),
        dataplane: Some(dataplane),
        metrics,
        desired_watcher: None,
        kernel_events,
        _netns_watcher: netns_watcher,
        options,
        stopping,
    };
    if let Some(node) = controller.options.node.clone() {
        controller.lock_node(&node)?;
    }
    controller.watch_desired();

    let mut resync = tokio::time::interval_at(
        Instant::now() + controller.options.resync,
        controller.options.resync,
    );
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    triggers.set(Trigger::Startup);

    loop {
        let now = Instant::now();
        let retry = controller.backoff.next_retry(now);
        // While the node as a whole backs off, only a change of the desired state (which
        // may be the fix), SIGHUP or the retry start a pass: kernel events and the resync
        // wait for the retry, which reads everything anyway.
        let node_waits = controller.backoff.held_back(now).contains(&Scope::Node);
        let eligible = move |trigger: Trigger| {
            !node_waits || !matches!(trigger, Trigger::Kernel | Trigger::Resync)
        };
        let due = triggers.due(eligible);
        tokio::select! {
            biased;
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => triggers.set(Trigger::Hangup),
            _ = resync.tick() => triggers.set(Trigger::Resync),
            () = sleep_until_option(retry) => triggers.set(Trigger::Retry),
            () = sleep_until_option(due) => {
                let batch = triggers.take(eligible);
                let result = controller.pass(batch.work(), node_waits).await;
                triggers.finished();
                result?;
            }
            () = triggers.notified() => {}
        }
    }
    info!("stopping; the network stays as it is");
    Ok(())
}

/// What the kernel events received since the last pass named, or everything.
fn changes_since_last_pass(events: Option<&KernelEvents>, everything: bool) -> Changes {
    let named = events.map(KernelEvents::take_changes);
    match named {
        Some(named) if !everything => named,
        _ => Changes::everything(),
    }
}

/// Node-wide work a pass still finds needed after converging: a pass tries every node-level
/// action it plans, so what remains was undone (a bridge name the planner takes for a crash
/// leftover, another program fighting kudonet). `None` when the node as a whole converged.
fn undone_node_work(outcome: &Outcome) -> Option<String> {
    let action = outcome
        .remaining
        .node_actions()
        .find(|action| !action.is_best_effort())?;
    Some(format!(
        "{}: still needed after it was applied: something undoes it",
        action.summary()
    ))
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    fn lock_node(&mut self, node: &str) -> Result<(), ControllerError> {
        if self.lock.is_none() {
            self.lock = Some(lock::controller_lock(&self.options.lock_dir, node)?);
        }
        Ok(())
    }

    /// (Re)establishes the watch on the desired-state directory: at start, when DIR was
    /// replaced (a new inode: `mv new DIR`), and while DIR does not exist (not checked out or
    /// mounted yet), when its parent is watched for its arrival instead.
    fn watch_desired(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let dir = &self.options.dir;
        let inode = std::fs::metadata(dir)
            .ok()
            .filter(|meta| meta.is_dir())
            .map(|meta| meta.ino());
        if matches!(&self.desired_watcher, Some((watched, _)) if inode.is_some() && *watched == inode)
        {
            return;
        }
        let parent = dir
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let watch = |path: &Path, recursive| {
            DirWatcher::new(path, recursive, &self.triggers, Trigger::Files).ok()
        };
        self.desired_watcher = match inode.and_then(|_| watch(dir, true)) {
            Some(watcher) => Some((inode, watcher)),
            None => watch(parent, false).map(|watcher| (None, watcher)),
        };
    }

    /// Reads the directory; keeps the last valid desired state when it is invalid.
    /// `desired`, read from DIR and valid, is what is in force from now on.
    fn accept_desired(&mut self, spec: crate::spec::Spec, desired: Desired) {
        if !self.errors.is_empty() {
            info!("the desired state is valid again");
        }
        self.errors.clear();
        self.desired = Some(desired);
        self.spec = Some(spec);
        self.metrics
            .desired_valid
            .set(i64::from(self.machine_errors.is_empty()));
    }

    fn reload(&mut self) {
        match load_desired(&self.options.dir, self.options.node.as_deref()) {
            Ok((spec, mut desired)) => {
                desired.firewall = self.options.firewall;
                self.accept_desired(spec, desired);
            }
            Err(problem) => {
                let errors: Vec<String> = problem.to_string().lines().map(str::to_string).collect();
                if errors != self.errors {
                    for line in &errors {
                        error!("invalid desired state, nothing changed: {line}");
                    }
                }
                self.errors = errors;
            }
        }
        // What the last pass found invalid on this machine stands until a pass says otherwise.
        self.metrics.desired_valid.set(i64::from(
            self.errors.is_empty() && self.machine_errors.is_empty(),
        ));
    }

    /// One pass doing `work`, what the triggers taken require. `node_waits`: the node as a
    /// whole is backing off, and the batch holds no retry: the node is left alone unless
    /// the desired state changed or SIGHUP asked for a pass.
    async fn pass(&mut self, work: Work, node_waits: bool) -> Result<(), ControllerError> {
        let started = std::time::Instant::now();
        if work.reload {
            let (before, errors_before) = (self.desired.clone(), self.errors.clone());
            self.watch_desired();
            self.reload();
            if node_waits && !work.asked && self.desired == before {
                if self.errors != errors_before {
                    self.finish_pass(started, None, Vec::new()).await?;
                }
                return Ok(());
            }
        }
        let Some(desired) = self.desired.clone() else {
            // Never valid since start: nothing is in force but what the kernel has.
            self.metrics.count_reconcile("invalid");
            self.finish_pass(started, None, Vec::new()).await?;
            return Ok(());
        };
        self.lock_node(&desired.node.name)?;
        let held_back = self.backoff.held_back(Instant::now());
        let mut dataplane = self
            .dataplane
            .take()
            .expect("the dataplane is back after every pass");
        let job_desired = desired.clone();
        let job_held_back = held_back.clone();
        let lock_dir = self.options.lock_dir.clone();
        let (events, everything) = (self.kernel_events.clone(), work.read_everything);
        let stopping = self.stopping.clone();
        let triggers = self.triggers.clone();
        let (dir, node, firewall) = (
            self.options.dir.clone(),
            self.options.node.clone(),
            self.options.firewall,
        );
        let (dataplane, result, reread) = tokio::task::spawn_blocking(move || {
            // Library calls and applies may change the node between passes, never during one.
            // The wait lasts as long as the holder keeps the lock, or until SIGTERM/SIGINT.
            let wait = lock::Wait {
                until: None,
                stop: &|| stopping.load(Ordering::SeqCst),
            };
            let mut waited = false;
            let waiting = |held: &lock::LockError| {
                waited = true;
                info!("waiting for the change lock: {held}");
            };
            let mut reread = None;
            let result = match lock::wait_lock(&lock_dir, &job_desired.node.name, wait, waiting) {
                Ok(change) => {
                    // Taken once the lock is held: what others change from now on raises
                    // events noted for the next pass.
                    dataplane.changed(changes_since_last_pass(events.as_ref(), everything));
                    // Whoever held the lock since this controller's last pass (a library
                    // call, an apply) may have changed DIR before releasing it, whether this
                    // pass waited for it or came just after: converging what was read before
                    // would undo their change until the next pass. Read DIR again then, under
                    // the lock.
                    if waited || change.others_held_it() || triggers.change_waiting() {
                        reread = match load_desired(&dir, node.as_deref()) {
                            // Under this node's lock: another node's DIR waits for its pass.
                            Ok((spec, mut desired))
                                if desired.node.name == job_desired.node.name =>
                            {
                                desired.firewall = firewall;
                                Some((spec, desired))
                            }
                            Ok(_) => None,
                            Err(problem) => {
                                // The next pass reports it; this one converges what was valid.
                                info!("the desired state changed under the lock and is invalid: {problem}");
                                None
                            }
                        };
                    }
                    let desired = reread.as_ref().map_or(&job_desired, |(_, desired)| desired);
                    Ok(reconcile::converge(
                        &mut dataplane,
                        desired,
                        &job_held_back,
                        &mut NoProgress,
                    ))
                }
                Err(error) => Err(error),
            };
            (dataplane, result, reread)
        })
        .await
        .map_err(ControllerError::Pass)?;
        self.dataplane = Some(dataplane);
        let mut work = work;
        let desired = match reread {
            Some((spec, reread)) => {
                // What changed came from DIR, not from behind kudonet's back.
                work.desired_changed |= reread != desired;
                self.accept_desired(spec, reread.clone());
                reread
            }
            None => desired,
        };

        match result {
            Err(lock::LockError::Interrupted { .. }) => {
                // Nothing was changed; the loop sees the signal and stops.
                info!("stopped while waiting for the change lock");
            }
            Err(error) => {
                error!("cannot lock the node: {error}");
                self.metrics.count_reconcile("failed");
                self.finish_pass(started, None, Vec::new()).await?;
            }
            Ok(Ok(outcome)) => {
                let statuses = self.account(&desired, work, &held_back, &outcome);
                self.finish_pass(started, Some(&outcome), statuses).await?;
            }
            Ok(Err(problem)) => {
                // Nothing could be done on the node: back off as for a failed action.
                let delay = self.backoff.failed(
                    &Scope::Node,
                    Instant::now(),
                    problem.to_string(),
                    problem.can_retry(),
                );
                error!(retry_in = ?delay, "cannot converge the node: {problem}");
                self.metrics.ready.store(false, Ordering::Relaxed);
                self.metrics.count_reconcile("failed");
                self.finish_pass(started, None, Vec::new()).await?;
            }
        }
        Ok(())
    }

    /// Backoff, metrics and logs for a pass's outcome; returns the instances' status.
    /// `held_back` are the failing objects the pass left alone.
    fn account(
        &mut self,
        desired: &Desired,
        work: Work,
        held_back: &BTreeSet<Scope>,
        outcome: &Outcome,
    ) -> Vec<InstanceStatus> {
        let now = Instant::now();
        let mut failed = BTreeSet::new();
        for failure in &outcome.failures {
            if failure.action.is_best_effort() {
                // Reported as a node condition; the node works without it.
                warn!("{}", failure.error);
                continue;
            }
            let key = &failure.scope;
            if failed.insert(key.clone()) {
                let delay = self.backoff.failed(
                    key,
                    now,
                    failure.error.to_string(),
                    failure.error.can_retry(),
                );
                warn!(instance = %log_name(key), retry_in = ?delay, "{}", failure.error);
            }
        }
        // Node-wide work that succeeded yet is still needed after the pass (something
        // undoes it: a name the planner takes for a crash leftover, another program) fails
        // too: retrying at once would only loop on kudonet's own kernel events.
        if !failed.contains(&Scope::Node)
            && let Some(error) = undone_node_work(outcome)
        {
            failed.insert(Scope::Node);
            let delay = self.backoff.failed(&Scope::Node, now, error.clone(), true);
            warn!(retry_in = ?delay, "the node does not converge: {error}");
        }
        // Failing objects this pass tried again without failure have recovered (node-wide
        // actions are never held back: a pass tries them whenever it runs).
        let recovered: Vec<Scope> = self
            .backoff
            .failing()
            .filter(|key| !failed.contains(*key) && (key.is_node() || !held_back.contains(*key)))
            .cloned()
            .collect();
        for key in &recovered {
            info!(instance = %log_name(key), "recovered");
            self.backoff.succeeded(key);
        }
        for action in &outcome.applied {
            self.metrics
                .actions
                .get_or_create(&metrics::KindLabel {
                    kind: action.kind().to_string(),
                })
                .inc();
        }
        if !outcome.applied.is_empty() {
            let (applied, failed) = (outcome.applied.len(), outcome.failures.len());
            match (work.desired_changed, outcome.converged()) {
                (true, true) => info!(applied, "converged the node to the desired state"),
                (false, true) => info!(applied, "repaired changes made behind kudonet's back"),
                (_, false) => info!(
                    applied,
                    failed, "applied what could be; the node does not match yet"
                ),
            }
            // A retry of a failing instance is not a repair of someone else's change.
            if work.repairs() {
                self.metrics.drift_repairs.inc();
            }
        }
        for conflict in &outcome.remaining.conflicts {
            warn!("conflict: {conflict}");
        }
        let conditions = reconcile::node_conditions(desired, &outcome.observed, &outcome.remaining);
        // Told once when they appear, not at every pass.
        for condition in conditions.iter().filter(|c| !self.conditions.contains(c)) {
            if condition.kind != "Conflict" {
                warn!("node condition {condition}");
            }
        }
        self.metrics.set_conditions(&conditions);
        self.conditions = conditions;
        // The planner changed nothing for a node whose subnet its uplink uses; report it
        // like an invalid file, at the Node's cidr.
        let machine_errors: Vec<String> = self
            .spec
            .as_ref()
            .and_then(|spec| reconcile::check_against_node(spec, desired, &outcome.observed).err())
            .map(|problem| problem.to_string().lines().map(str::to_string).collect())
            .unwrap_or_default();
        if machine_errors != self.machine_errors {
            for line in &machine_errors {
                error!("invalid desired state on this node, nothing changed: {line}");
            }
        }
        self.machine_errors = machine_errors;
        self.metrics.desired_valid.set(i64::from(
            self.errors.is_empty() && self.machine_errors.is_empty(),
        ));
        let mut statuses = reconcile::instance_status(
            desired,
            &outcome.observed,
            &self.options.netns_dir,
            &outcome.failures,
        );
        for status in &mut statuses {
            if let Some(error) = self.backoff.last_error(&Scope::instance(&status.name)) {
                status.phase = Phase::Failed;
                status.message = error.to_string();
            }
        }
        self.show_node_failure(&mut statuses);
        if let Some(events) = &self.kernel_events {
            // kudonet's namespaces, and those of others its instances live in (named by
            // their path, which joined to the netns directory is itself).
            let others = desired.others_namespaces();
            let namespaces: Vec<(String, PathBuf)> = outcome
                .observed
                .namespaces
                .iter()
                .filter(|(name, namespace)| namespace.owned || others.contains(*name))
                .map(|(name, _)| (name.clone(), self.options.netns_dir.join(name)))
                .collect();
            if events.watch_namespaces(&namespaces) {
                // Read them once more, now that their events are followed.
                self.triggers.set(Trigger::Kernel);
            }
        }
        self.metrics.count_reconcile(if outcome.converged() {
            "converged"
        } else {
            "failed"
        });
        // Ready once the node itself (bridge, firewall, routes) is in place: one broken
        // instance, reported as Failed, must not keep the whole node unready.
        let node_ok = !failed.contains(&Scope::Node)
            && outcome
                .remaining
                .conflicts
                .iter()
                .all(|c| !c.scope.is_node());
        self.metrics.ready.store(node_ok, Ordering::Relaxed);
        if outcome.converged() {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.metrics.last_success.set(unix.as_secs_f64());
        }
        statuses
    }

    /// While the node as a whole fails, no instance is shown Ready: its network depends on
    /// the bridge, sysctls, firewall and routes of the node.
    fn show_node_failure(&self, statuses: &mut [InstanceStatus]) {
        let Some(error) = self.backoff.last_error(&Scope::Node) else {
            return;
        };
        for status in statuses.iter_mut().filter(|s| s.phase == Phase::Ready) {
            status.phase = Phase::Failed;
            status.message = format!("the node as a whole failed: {error}");
        }
    }

    /// Status file and timing, after every pass.
    async fn finish_pass(
        &mut self,
        started: std::time::Instant,
        outcome: Option<&Outcome>,
        statuses: Vec<InstanceStatus>,
    ) -> Result<(), ControllerError> {
        self.metrics
            .set_phases(statuses.iter().map(|status| status.phase));
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok(mut last) = self.metrics.last_pass.lock() {
            *last = Some(std::time::Instant::now());
        }
        let Some(path) = self.options.status_file.clone() else {
            return Ok(());
        };
        if self.triggers.change_waiting() {
            // The desired state changed during this pass: a document of the state before
            // it would pass for a converged node. The next pass, about to start, writes it.
            return Ok(());
        }
        let mut instances = if outcome.is_some() {
            statuses
        } else {
            let mut instances = self.instances_in_force().await?;
            self.show_node_failure(&mut instances);
            instances
        };
        if !self.errors.is_empty() {
            for instance in instances
                .iter_mut()
                .filter(|instance| instance.message.is_empty())
            {
                instance.message =
                    "desired state invalid: the last valid state stays in force".to_string();
            }
        }
        let document = StatusDocument {
            node: self
                .desired
                .as_ref()
                .map(|desired| desired.node.name.clone())
                .or_else(|| self.options.node.clone())
                .unwrap_or_default(),
            valid: self.errors.is_empty()
                && self.machine_errors.is_empty()
                && self.desired.is_some(),
            errors: self
                .errors
                .iter()
                .chain(&self.machine_errors)
                .cloned()
                .collect(),
            observed_at: reconcile::timestamp(),
            conditions: self.conditions.clone(),
            instances,
        };
        if let Err(problem) = write_atomically(&path, &document) {
            warn!(path = %path.display(), %problem, "cannot write the status file");
        }
        Ok(())
    }

    /// What the kernel has of kudonet's instances, for a status file written while no
    /// desired state was ever valid. Read in the blocking pool, as a pass does.
    async fn instances_in_force(&mut self) -> Result<Vec<InstanceStatus>, ControllerError> {
        use crate::dataplane::Dataplane;
        let mut dataplane = self
            .dataplane
            .take()
            .expect("the dataplane is back after every pass");
        let netns_dir = self.options.netns_dir.clone();
        let (dataplane, instances) = tokio::task::spawn_blocking(move || {
            dataplane.changed(Changes::everything());
            let instances = match dataplane.observe() {
                Ok(observed) => reconcile::instances_in_force(&observed, &netns_dir),
                Err(_) => Vec::new(),
            };
            (dataplane, instances)
        })
        .await
        .map_err(ControllerError::ReadNode)?;
        self.dataplane = Some(dataplane);
        Ok(instances)
    }
}

/// Writes the document to a temporary file beside `path` and renames it over `path`, so a
/// reader never sees half a document.
fn write_atomically(path: &Path, document: &StatusDocument) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_string_pretty(document).map_err(std::io::Error::other)?;
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    // A leftover of a killed run goes first; `create_new` (O_EXCL) then refuses to follow
    // a symlink someone may have planted there, so root never writes through one.
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temporary)?;
    file.write_all(json.as_bytes())?;
    file.write_all(b"\n")?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::LinkRef;
    use crate::plan::Action;

    #[test]
    fn node_level_work_left_after_a_pass_is_a_node_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.yaml"),
            "kind: Node\nname: node-a\ncidr: 10.0.0.1/24\n---\nkind: Instance\nname: web\naddress: 10.0.0.2\n",
        )
        .unwrap();
        let (_, desired) = load_desired(dir.path(), None).unwrap();
        let mut outcome = Outcome::default();
        assert_eq!(undone_node_work(&outcome), None);
        // An instance's leftover work is the instance's (its own backoff), not the node's.
        // The planner's own steps, scope included, for these actions.
        let planned = crate::plan::plan(&desired, &crate::observed::Observed::default());
        let step = |action: Action| {
            planned
                .steps
                .iter()
                .find(|step| step.action == action)
                .cloned()
                .expect("the planner plans it")
        };
        outcome.remaining.steps.push(step(Action::CreateNamespace {
            name: "kudo-web".into(),
        }));
        assert_eq!(undone_node_work(&outcome), None);
        outcome.remaining.steps.push(step(Action::SetUp {
            link: LinkRef {
                netns: None,
                name: "kudo0".into(),
            },
        }));
        assert_eq!(
            undone_node_work(&outcome).as_deref(),
            Some("~ link kudo0: up: still needed after it was applied: something undoes it")
        );
    }
}
