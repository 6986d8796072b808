//! The controller loop of `kudonet run`: it keeps the node matching the desired-state
//! directory. Level-triggered: whatever woke it (a file, a kernel event, the resync timer,
//! SIGHUP, a retry coming due), a pass reads the directory if needed, observes the node,
//! and converges it. A pass reads again only the links and namespaces that kernel events
//! named (see `observe::kernel::Changes`), except at start, on a resync, SIGHUP, a retry
//! or after events were lost, when it reads every link and namespace.
//!
//! Safety rules: an invalid or missing directory never changes the node (the last valid
//! desired state stays in force); one failing instance is retried with capped exponential
//! backoff while the others converge; SIGTERM/SIGINT finish the current pass and leave the
//! network in place.

pub mod backoff;
pub mod metrics;
pub mod triggers;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

use crate::dataplane::iptables::Iptables;
use crate::dataplane::kernel::KernelDataplane;
use crate::lock::{self, NodeLock};
use crate::observe::kernel::Changes;
use crate::reconcile::{
    self, InstanceStatus, Outcome, Phase, StatusDocument, instance_of, load_desired,
};
use crate::spec::Desired;
use backoff::Backoff;
use metrics::Metrics;
use triggers::{Batch, DirWatcher, KernelEvents, Trigger, debounce};

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
}

/// The key failures of the node as a whole (the bridge, the firewall) are backed off under.
const NODE_KEY: &str = "";

struct Controller {
    options: Options,
    sender: mpsc::Sender<Trigger>,
    /// The last valid desired state: what stays in force while the directory is invalid.
    desired: Option<Desired>,
    /// Why the directory is invalid now, one line each; empty when valid.
    errors: Vec<String>,
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
pub async fn run(options: Options) -> Result<(), String> {
    // First of all: a SIGTERM during start-up must stop the controller cleanly too, not
    // kill it with the default disposition.
    let mut terminate = signal(SignalKind::terminate()).map_err(|error| error.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|error| error.to_string())?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|error| error.to_string())?;
    // A pass waiting for the change lock (an apply holding it) must not hold up a shutdown:
    // the wait polls this flag, which SIGTERM and SIGINT raise. The loop below sees the
    // same signals through its own streams once the pass has given up.
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let mut terminate = signal(SignalKind::terminate()).map_err(|error| error.to_string())?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|error| error.to_string())?;
        let stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            stopping.store(true, Ordering::SeqCst);
        });
    }
    let (sender, mut receiver) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new());
    if let Some(address) = options.metrics_addr {
        let listener = metrics::bind(address).await?;
        info!(%address, "serving /metrics, /healthz and /readyz");
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            options.resync * 3 + Duration::from_secs(30),
        ));
    }
    let mut dataplane = KernelDataplane::new(&options.netns_dir, Iptables::new())
        .map_err(|error| error.to_string())?;
    let _ = std::fs::create_dir_all(&options.netns_dir);
    let netns_watcher = DirWatcher::new(&options.netns_dir, false, sender.clone(), Trigger::Kernel)
        .map_err(|error| warn!(dir = %options.netns_dir.display(), %error, "cannot watch the netns directory"))
        .ok();
    let kernel_events = KernelEvents::start(sender.clone())
        .map_err(|error| warn!(%error, "cannot subscribe to kernel events; relying on the resync"))
        .ok();
    if kernel_events.is_some() {
        // Events say what changed: a pass they start reads only that.
        dataplane.observe_incrementally();
    }
    let mut controller = Controller {
        lock: None,
        sender: sender.clone(),
        desired: None,
        errors: Vec::new(),
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
    let _ = sender.try_send(Trigger::Startup);

    loop {
        let retry = controller.backoff.next_retry(Instant::now());
        let first = tokio::select! {
            biased;
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => Trigger::Hangup,
            Some(trigger) = receiver.recv() => trigger,
            _ = resync.tick() => Trigger::Resync,
            () = sleep_until_option(retry) => Trigger::Retry,
        };
        let batch = debounce(&mut receiver, first).await;
        controller.pass(&batch).await?;
    }
    info!("stopping; the network stays as it is");
    Ok(())
}

/// Whether a pass started by `batch` reads the whole node: at start, on a resync, on
/// SIGHUP, after dropped events, and on a retry. Others read what kernel events named.
fn reads_everything(batch: &Batch) -> bool {
    batch.0.iter().any(|trigger| {
        matches!(
            trigger,
            Trigger::Startup
                | Trigger::Resync
                | Trigger::Hangup
                | Trigger::Overrun
                | Trigger::Retry
        )
    })
}

/// What the kernel events received since the last pass named, or everything.
fn changes_since_last_pass(events: Option<&KernelEvents>, everything: bool) -> Changes {
    let named = events.map(KernelEvents::take_changes);
    match named {
        Some(named) if !everything => named,
        _ => Changes::everything(),
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    fn lock_node(&mut self, node: &str) -> Result<(), String> {
        if self.lock.is_none() {
            self.lock = Some(
                lock::controller_lock(&self.options.lock_dir, node)
                    .map_err(|error| error.to_string())?,
            );
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
            DirWatcher::new(path, recursive, self.sender.clone(), Trigger::Files).ok()
        };
        self.desired_watcher = match inode.and_then(|_| watch(dir, true)) {
            Some(watcher) => Some((inode, watcher)),
            None => watch(parent, false).map(|watcher| (None, watcher)),
        };
    }

    /// Reads the directory; keeps the last valid desired state when it is invalid.
    fn reload(&mut self) {
        match load_desired(&self.options.dir, self.options.node.as_deref()) {
            Ok((_, desired)) => {
                if !self.errors.is_empty() {
                    info!("the desired state is valid again");
                }
                self.errors.clear();
                self.desired = Some(desired);
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
        self.metrics
            .desired_valid
            .set(i64::from(self.errors.is_empty()));
    }

    async fn pass(&mut self, batch: &Batch) -> Result<(), String> {
        let started = std::time::Instant::now();
        if batch.reloads() {
            self.watch_desired();
            self.reload();
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
        let (events, everything) = (self.kernel_events.clone(), reads_everything(batch));
        let stopping = self.stopping.clone();
        let (dataplane, result) = tokio::task::spawn_blocking(move || {
            // Library calls and applies may change the node between passes, never during one.
            // The wait lasts as long as the holder keeps the lock, or until SIGTERM/SIGINT.
            let wait = lock::Wait {
                until: None,
                stop: &|| stopping.load(Ordering::SeqCst),
            };
            let waiting = |held: &lock::LockError| info!("waiting for the change lock: {held}");
            let result = match lock::wait_lock(&lock_dir, &job_desired.node.name, wait, waiting) {
                Ok(_change) => {
                    // Taken once the lock is held: what others change from now on raises
                    // events noted for the next pass.
                    dataplane.changed(changes_since_last_pass(events.as_ref(), everything));
                    Ok(reconcile::converge(
                        &mut dataplane,
                        &job_desired,
                        &job_held_back,
                        |_| {},
                    ))
                }
                Err(error) => Err(error),
            };
            (dataplane, result)
        })
        .await
        .map_err(|error| format!("reconcile task failed: {error}"))?;
        self.dataplane = Some(dataplane);

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
                let statuses = self.account(&desired, batch, &held_back, &outcome);
                self.finish_pass(started, Some(&outcome), statuses).await?;
            }
            Ok(Err(problem)) => {
                error!("cannot read the node: {problem}");
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
        batch: &Batch,
        held_back: &BTreeSet<String>,
        outcome: &Outcome,
    ) -> Vec<InstanceStatus> {
        let now = Instant::now();
        let mut failed = BTreeSet::new();
        for failure in &outcome.failures {
            let key = instance_of(&failure.action, desired)
                .unwrap_or(NODE_KEY)
                .to_string();
            if failed.insert(key.clone()) {
                let delay = self.backoff.failed(&key, now, failure.error.to_string());
                warn!(instance = %key, retry_in = ?delay, "{}", failure.error);
            }
        }
        // Failing objects this pass tried again without failure have recovered.
        let recovered: Vec<String> = self
            .backoff
            .failing()
            .filter(|key| !failed.contains(*key) && !held_back.contains(*key))
            .map(str::to_string)
            .collect();
        for key in &recovered {
            info!(instance = %key, "recovered");
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
        let desired_changed = batch
            .0
            .iter()
            .any(|trigger| matches!(trigger, Trigger::Startup | Trigger::Files | Trigger::Hangup));
        // A retry of a failing instance is not a repair of someone else's change.
        let repair = !desired_changed && !batch.0.contains(&Trigger::Retry);
        if !outcome.applied.is_empty() {
            let (applied, failed) = (outcome.applied.len(), outcome.failures.len());
            match (desired_changed, outcome.converged()) {
                (true, true) => info!(applied, "converged the node to the desired state"),
                (false, true) => info!(applied, "repaired changes made behind kudonet's back"),
                (_, false) => info!(
                    applied,
                    failed, "applied what could be; the node does not match yet"
                ),
            }
            if repair {
                self.metrics.drift_repairs.inc();
            }
        }
        for conflict in &outcome.remaining.conflicts {
            warn!("conflict: {conflict}");
        }
        let mut statuses = reconcile::instance_status(
            desired,
            &outcome.observed,
            &self.options.netns_dir,
            &outcome.failures,
        );
        for status in &mut statuses {
            if let Some(error) = self.backoff.last_error(&status.name) {
                status.phase = Phase::Failed;
                status.message = error.to_string();
            }
        }
        if let Some(events) = &self.kernel_events {
            let namespaces: Vec<PathBuf> = outcome
                .observed
                .namespaces
                .iter()
                .filter(|(_, namespace)| namespace.owned)
                .map(|(name, _)| self.options.netns_dir.join(name))
                .collect();
            if events.watch_namespaces(&namespaces) {
                // Read them once more, now that their events are followed.
                let _ = self.sender.try_send(Trigger::Kernel);
            }
        }
        self.metrics.count_reconcile(if outcome.converged() {
            "converged"
        } else {
            "failed"
        });
        // Ready once the node itself (bridge, firewall, routes) is in place: one broken
        // instance, reported as Failed, must not keep the whole node unready.
        let node_ok = !failed.contains(NODE_KEY)
            && outcome
                .remaining
                .conflicts
                .iter()
                .all(|c| c.instance.is_some());
        self.metrics.ready.store(node_ok, Ordering::Relaxed);
        if outcome.converged() {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.metrics.last_success.set(unix.as_secs_f64());
        }
        statuses
    }

    /// Status file and timing, after every pass.
    async fn finish_pass(
        &mut self,
        started: std::time::Instant,
        outcome: Option<&Outcome>,
        statuses: Vec<InstanceStatus>,
    ) -> Result<(), String> {
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
        let mut instances = if outcome.is_some() {
            statuses
        } else {
            self.instances_in_force().await?
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
            valid: self.errors.is_empty() && self.desired.is_some(),
            errors: self.errors.clone(),
            observed_at: reconcile::timestamp(),
            instances,
        };
        if let Err(problem) = write_atomically(&path, &document) {
            warn!(path = %path.display(), %problem, "cannot write the status file");
        }
        Ok(())
    }

    /// What the kernel has of kudonet's instances, for a status file written while no
    /// desired state was ever valid. Read in the blocking pool, as a pass does.
    async fn instances_in_force(&mut self) -> Result<Vec<InstanceStatus>, String> {
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
        .map_err(|error| format!("reading the node failed: {error}"))?;
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
