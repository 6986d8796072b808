//! What makes the controller reconcile: the desired-state directory changing, kernel events
//! on the node and inside instance namespaces, the periodic resync, SIGHUP, a retry coming
//! due. Triggers are level-based and coalesced: a producer sets the flag of its kind of work
//! in [`Triggers`] and wakes the loop, which takes every flag at once. However many events
//! arrive during a long pass, none is lost: a file change noted while a pass runs makes the
//! next pass read the directory again, right after.
//! Kernel events also say what changed (a link of the node, a namespace), so that a pass
//! they start reads only that; the resync reads everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::kernel::events::Listener;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// The controller started: the first pass rebuilds everything (after a reboot too).
    Startup,
    /// Something changed below the desired-state directory.
    Files,
    /// A link, address or route changed, a namespace appeared or vanished, or the
    /// nf_tables ruleset changed.
    Kernel,
    /// inotify dropped events (its queue overflowed): the directory is read again and the
    /// pass reads everything. (A netlink overrun is noted in the kernel changes instead.)
    Overrun,
    /// The periodic full resync: catches what raises no event (legacy iptables, sysctls)
    /// or events missed.
    Resync,
    /// SIGHUP.
    Hangup,
    /// A failing instance's (or the node's) backoff ran out.
    Retry,
}

/// What a pass must do for the triggers that started it. Triggers combine: a pass does
/// the work any of them requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Work {
    /// Read the desired-state directory again.
    pub reload: bool,
    /// Read every link and namespace of the node; otherwise only what kernel events named.
    pub read_everything: bool,
    /// The desired state is known to have changed, or a pass over it was asked for (start,
    /// SIGHUP): what the pass applies converges to it rather than repairs drift.
    pub desired_changed: bool,
    /// Asked for by the operator or the start: the pass runs even while the node as a
    /// whole is backing off.
    pub asked: bool,
    /// A failing instance's or the node's backoff ran out: what the pass applies retries
    /// it rather than repairs someone else's change.
    pub retry: bool,
}

impl Work {
    /// Whether what the pass applies repairs changes made behind kudonet's back.
    pub fn repairs(self) -> bool {
        !self.desired_changed && !self.retry
    }
}

impl std::ops::BitOr for Work {
    type Output = Work;

    fn bitor(self, other: Work) -> Work {
        Work {
            reload: self.reload || other.reload,
            read_everything: self.read_everything || other.read_everything,
            desired_changed: self.desired_changed || other.desired_changed,
            asked: self.asked || other.asked,
            retry: self.retry || other.retry,
        }
    }
}

impl Trigger {
    /// What a pass started by this trigger must do: the one place that says it.
    pub fn work(self) -> Work {
        let none = Work::default();
        match self {
            Trigger::Startup | Trigger::Hangup => Work {
                reload: true,
                read_everything: true,
                desired_changed: true,
                asked: true,
                ..none
            },
            Trigger::Files => Work {
                reload: true,
                desired_changed: true,
                ..none
            },
            // Events may have been lost, file events among them: read everything again, and
            // count it as a change of the desired state (not a repair of drift).
            Trigger::Overrun => Work {
                reload: true,
                read_everything: true,
                desired_changed: true,
                ..none
            },
            Trigger::Resync => Work {
                reload: true,
                read_everything: true,
                ..none
            },
            // Only what the events named.
            Trigger::Kernel => none,
            Trigger::Retry => Work {
                read_everything: true,
                retry: true,
                ..none
            },
        }
    }

    /// Whether this is a known change of the desired state (or a request to read it): the
    /// node cannot be called converged until a pass has applied it.
    pub fn is_change(self) -> bool {
        self.work().desired_changed
    }

    /// How long to wait for more triggers before acting: editors and agents write files in
    /// bursts; kernel events come in tight groups.
    fn quiet(self) -> Duration {
        match self {
            Trigger::Files => Duration::from_millis(150),
            _ => Duration::from_millis(20),
        }
    }
}

/// Triggers received together, acted on by one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch(pub BTreeSet<Trigger>);

impl Batch {
    /// What the pass for these triggers must do: what any of them requires.
    pub fn work(&self) -> Work {
        self.0
            .iter()
            .fold(Work::default(), |work, trigger| work | trigger.work())
    }

    pub fn changes(&self) -> bool {
        self.0.iter().any(|trigger| trigger.is_change())
    }
}

/// A burst never delays a reconcile by more than this.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// The work waiting for the controller: one dirty flag per kind of trigger, set by any
/// number of producers (threads included) and taken all at once by the loop. Setting a
/// flag that is already set costs nothing, so nothing is ever dropped for lack of room.
#[derive(Debug, Default)]
pub struct Triggers {
    state: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// Each kind waiting, with when it was first and last set since it was last taken.
    kinds: BTreeMap<Trigger, (Instant, Instant)>,
    /// A batch holding a change of the desired state was taken and its pass has not
    /// finished yet.
    applying_change: bool,
}

impl Triggers {
    pub fn new() -> Arc<Triggers> {
        Arc::new(Triggers::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes `trigger` and wakes the loop.
    pub fn set(&self, trigger: Trigger) {
        let now = Instant::now();
        self.state()
            .kinds
            .entry(trigger)
            .and_modify(|(_, last)| *last = now)
            .or_insert((now, now));
        // Stores a permit when the loop is busy: it looks again as soon as it waits.
        self.wake.notify_one();
    }

    /// Resolves when a trigger was set (possibly before this call, while the loop was busy).
    pub async fn notified(&self) {
        self.wake.notified().await;
    }

    /// When the waiting triggers that `eligible` lets through are due: each kind after its
    /// quiet period since it was last set, but no later than `MAX_DEBOUNCE` after the
    /// first of them was set. `None` when none is waiting.
    pub fn due(&self, eligible: impl Fn(Trigger) -> bool) -> Option<Instant> {
        let state = self.state();
        let waiting = state.kinds.iter().filter(|(kind, _)| eligible(**kind));
        let (mut first, mut quiet_end) = (None::<Instant>, None::<Instant>);
        for (kind, (since, last)) in waiting {
            first = Some(first.map_or(*since, |first| first.min(*since)));
            let end = *last + kind.quiet();
            quiet_end = Some(quiet_end.map_or(end, |quiet_end| quiet_end.max(end)));
        }
        Some(quiet_end?.min(first? + MAX_DEBOUNCE))
    }

    /// Takes (and clears) the waiting triggers that `eligible` lets through; the others
    /// stay set. A batch holding a change counts as being applied until [`finished`].
    ///
    /// [`finished`]: Triggers::finished
    pub fn take(&self, eligible: impl Fn(Trigger) -> bool) -> Batch {
        let mut state = self.state();
        let taken: BTreeSet<Trigger> = state
            .kinds
            .keys()
            .copied()
            .filter(|kind| eligible(*kind))
            .collect();
        state.kinds.retain(|kind, _| !taken.contains(kind));
        let batch = Batch(taken);
        if batch.changes() {
            state.applying_change = true;
        }
        batch
    }

    /// The pass of the last batch taken finished.
    pub fn finished(&self) {
        self.state().applying_change = false;
    }

    /// Whether a change of the desired state is noted and not taken yet.
    pub fn change_waiting(&self) -> bool {
        self.state().kinds.keys().any(|kind| kind.is_change())
    }

    /// Whether a change of the desired state is waiting or being applied: until it is
    /// done, the node is not known to match the desired state.
    pub fn change_pending(&self) -> bool {
        let state = self.state();
        state.applying_change || state.kinds.keys().any(|kind| kind.is_change())
    }
}

/// Kernel events are a [`Trigger::Kernel`].
impl Listener for Triggers {
    fn kernel_changed(&self) {
        self.set(Trigger::Kernel);
    }
}

/// Waits until the triggers `eligible` lets through are due (see [`Triggers::due`]) and
/// takes them.
pub async fn debounce(triggers: &Triggers, eligible: impl Fn(Trigger) -> bool) -> Batch {
    loop {
        match triggers.due(&eligible) {
            Some(due) if due <= Instant::now() => return triggers.take(&eligible),
            Some(due) => {
                tokio::select! {
                    () = sleep_until(due) => {}
                    () = triggers.notified() => {}
                }
            }
            None => triggers.notified().await,
        }
    }
}

/// Watches a directory recursively (the desired state) or not (the netns directory).
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl DirWatcher {
    pub fn new(
        dir: &Path,
        recursive: bool,
        triggers: &Arc<Triggers>,
        trigger: Trigger,
    ) -> notify::Result<DirWatcher> {
        // Weak: a watcher left behind must not keep the loop's state alive.
        let triggers = Arc::downgrade(triggers);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Some(triggers) = triggers.upgrade() else {
                    return;
                };
                match event {
                    // Reading the files (kudonet's own reload among them) changes nothing.
                    Ok(event) if event.kind.is_access() && !event.need_rescan() => {}
                    Ok(event) if !event.need_rescan() => triggers.set(trigger),
                    // Events were lost: whatever they were, this watch's trigger stands.
                    _ => {
                        triggers.set(trigger);
                        triggers.set(Trigger::Overrun);
                    }
                }
            })?;
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode)?;
        Ok(DirWatcher { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_trigger_says_what_work_it_requires_and_a_batch_does_all_of_it() {
        let work = |triggers: &[Trigger]| Batch(triggers.iter().copied().collect()).work();
        let (reload, everything, changed, asked, retry) = (true, true, true, true, true);
        let table = [
            (
                Trigger::Startup,
                Work {
                    reload,
                    read_everything: everything,
                    desired_changed: changed,
                    asked,
                    retry: false,
                },
            ),
            (
                Trigger::Files,
                Work {
                    reload,
                    desired_changed: changed,
                    ..Work::default()
                },
            ),
            (Trigger::Kernel, Work::default()),
            (
                Trigger::Overrun,
                Work {
                    reload,
                    read_everything: everything,
                    desired_changed: changed,
                    ..Work::default()
                },
            ),
            (
                Trigger::Resync,
                Work {
                    reload,
                    read_everything: everything,
                    ..Work::default()
                },
            ),
            (
                Trigger::Hangup,
                Work {
                    reload,
                    read_everything: everything,
                    desired_changed: changed,
                    asked,
                    retry: false,
                },
            ),
            (
                Trigger::Retry,
                Work {
                    read_everything: everything,
                    retry,
                    ..Work::default()
                },
            ),
        ];
        for (trigger, expected) in table {
            assert_eq!(trigger.work(), expected, "{trigger:?}");
            // Readiness waits for exactly the triggers that change the desired state.
            assert_eq!(trigger.is_change(), expected.desired_changed, "{trigger:?}");
        }
        // Kernel events alone read only what they named, and repair drift.
        assert!(work(&[Trigger::Kernel]).repairs());
        assert!(!work(&[Trigger::Kernel]).read_everything);
        // A file change among kernel events is a change of the desired state, not a repair.
        let files = work(&[Trigger::Kernel, Trigger::Files]);
        assert!(files.reload && files.desired_changed && !files.read_everything);
        assert!(!files.repairs());
        // A retry reads everything and is no repair either.
        let retry = work(&[Trigger::Kernel, Trigger::Retry]);
        assert!(retry.read_everything && !retry.reload && !retry.repairs());
        assert_eq!(work(&[]), Work::default());
    }

    fn all(_: Trigger) -> bool {
        true
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_file_events_is_one_batch_after_the_quiet_period() {
        let triggers = Triggers::new();
        let start = Instant::now();
        triggers.set(Trigger::Files);
        let producer = triggers.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                producer.set(Trigger::Files);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            producer.set(Trigger::Kernel);
        });
        let batch = debounce(&triggers, all).await;
        assert_eq!(batch, Batch(BTreeSet::from([Trigger::Files])));
        // Last event at 300 ms, then 150 ms of quiet.
        assert_eq!(start.elapsed(), Duration::from_millis(450));
        assert!(triggers.due(all).is_none(), "the burst was taken whole");
    }

    #[tokio::test(start_paused = true)]
    async fn kernel_events_wait_only_briefly() {
        let triggers = Triggers::new();
        let start = Instant::now();
        triggers.set(Trigger::Kernel);
        let batch = debounce(&triggers, all).await;
        assert_eq!(batch, Batch(BTreeSet::from([Trigger::Kernel])));
        assert!(!batch.work().reload);
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_stream_is_cut_at_the_maximum_delay() {
        let triggers = Triggers::new();
        let start = Instant::now();
        triggers.set(Trigger::Resync);
        let producer = Arc::downgrade(&triggers);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let Some(triggers) = producer.upgrade() else {
                    return;
                };
                triggers.set(Trigger::Kernel);
            }
        });
        let batch = debounce(&triggers, all).await;
        assert_eq!(
            batch,
            Batch(BTreeSet::from([Trigger::Kernel, Trigger::Resync]))
        );
        assert!(batch.work().reload);
        assert_eq!(start.elapsed(), MAX_DEBOUNCE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_change_among_a_flood_of_kernel_events_is_never_lost() {
        // What a long pass does: its own kernel events pile up, then a file changes.
        let triggers = Triggers::new();
        for _ in 0..10_000 {
            triggers.set(Trigger::Kernel);
        }
        triggers.set(Trigger::Files);
        for _ in 0..10_000 {
            triggers.set(Trigger::Kernel);
        }
        assert!(triggers.change_waiting());
        let batch = debounce(&triggers, all).await;
        assert_eq!(
            batch,
            Batch(BTreeSet::from([Trigger::Files, Trigger::Kernel]))
        );
        assert!(batch.work().reload);
        // Taken: being applied until the pass finishes.
        assert!(!triggers.change_waiting());
        assert!(triggers.change_pending());
        // A change noted during that pass is the next batch, right after it.
        triggers.set(Trigger::Files);
        triggers.finished();
        assert!(
            triggers.change_pending(),
            "the new change is still to apply"
        );
        let start = Instant::now();
        let batch = debounce(&triggers, all).await;
        assert_eq!(batch, Batch(BTreeSet::from([Trigger::Files])));
        assert_eq!(start.elapsed(), Duration::from_millis(150));
        triggers.finished();
        assert!(!triggers.change_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn kernel_triggers_wait_while_not_eligible_and_stay_set() {
        // While the node backs off, kernel events wake nothing; a file change does.
        let triggers = Triggers::new();
        let backing_off = |trigger: Trigger| !matches!(trigger, Trigger::Kernel | Trigger::Resync);
        triggers.set(Trigger::Kernel);
        triggers.set(Trigger::Resync);
        assert_eq!(triggers.due(backing_off), None);
        assert!(
            !triggers.change_pending(),
            "kernel events are no change of DIR"
        );
        let producer = triggers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            producer.set(Trigger::Files);
        });
        let start = Instant::now();
        let batch = debounce(&triggers, backing_off).await;
        assert_eq!(batch, Batch(BTreeSet::from([Trigger::Files])));
        assert_eq!(start.elapsed(), Duration::from_millis(5150));
        // Still there for the retry.
        let batch = debounce(&triggers, all).await;
        assert_eq!(
            batch,
            Batch(BTreeSet::from([Trigger::Kernel, Trigger::Resync]))
        );
    }
}
