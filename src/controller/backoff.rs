//! Capped exponential backoff per failing object, so that one broken instance is retried
//! patiently while the others converge. A failure that retrying cannot help (a refusal, a
//! missing program, a permission: see `DataplaneError::can_retry`) waits the cap at once.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::plan::Scope;

/// The first retry comes after this long; each failure doubles it.
pub const BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    retry_at: Instant,
    last_error: String,
}

/// Failing objects (an instance, or the node as a whole) and when each may be retried.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<Scope, Entry>,
}

impl Backoff {
    /// Records a failure of `key` at `now`; returns how long it now waits: [`BASE`] doubled
    /// per failure in a row up to [`CAP`], or `CAP` at once when retrying cannot help
    /// (`can_retry` false): such a failure only goes away when the node or the desired state
    /// changes, and a change of the desired state is acted on at once anyway.
    pub fn failed(
        &mut self,
        key: &Scope,
        now: Instant,
        error: String,
        can_retry: bool,
    ) -> Duration {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            retry_at: now,
            last_error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let delay = if can_retry {
            BASE.saturating_mul(1 << (entry.failures - 1).min(16))
                .min(CAP)
        } else {
            CAP
        };
        entry.retry_at = now + delay;
        entry.last_error = error;
        delay
    }

    /// `key` worked: forget its failures.
    pub fn succeeded(&mut self, key: &Scope) {
        self.entries.remove(key);
    }

    /// The objects still waiting at `now`: their actions are left out of a reconcile.
    pub fn held_back(&self, now: Instant) -> BTreeSet<Scope> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.retry_at > now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// When the next waiting object may be retried.
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .map(|entry| entry.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// The last error of `key`, while it is failing.
    pub fn last_error(&self, key: &Scope) -> Option<&str> {
        self.entries.get(key).map(|entry| entry.last_error.as_str())
    }

    /// Every failing object.
    pub fn failing(&self) -> impl Iterator<Item = &Scope> {
        self.entries.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_on_success() {
        let web = &Scope::instance("web");
        let start = Instant::now();
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| backoff.failed(web, start, "boom".into(), true).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.last_error(web), Some("boom"));
        backoff.succeeded(web);
        assert_eq!(backoff.failed(web, start, "again".into(), true), BASE);
    }

    #[test]
    fn only_waiting_objects_are_held_back() {
        let (web, db) = (Scope::instance("web"), Scope::instance("db"));
        let start = Instant::now();
        let mut backoff = Backoff::default();
        backoff.failed(&web, start, "x".into(), true);
        backoff.failed(&db, start, "y".into(), true);
        backoff.failed(&db, start, "y".into(), true);
        assert_eq!(
            backoff.held_back(start),
            BTreeSet::from([db.clone(), web.clone()])
        );
        assert_eq!(backoff.next_retry(start), Some(start + BASE));
        let later = start + Duration::from_millis(1500);
        assert_eq!(backoff.held_back(later), BTreeSet::from([db]));
        assert_eq!(backoff.next_retry(later), Some(start + 2 * BASE));
        assert!(backoff.held_back(start + 3 * BASE).is_empty());
    }

    #[test]
    fn a_failure_retrying_cannot_help_waits_the_cap_at_once() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(
            backoff.failed(&Scope::instance("web"), start, "denied".into(), false),
            CAP
        );
        assert_eq!(
            backoff.held_back(start + CAP / 2),
            BTreeSet::from([Scope::instance("web")])
        );
        // Once it can be retried (another error), doubling goes on from the failures so far.
        assert_eq!(
            backoff.failed(&Scope::instance("web"), start, "busy".into(), true),
            2 * BASE
        );
        backoff.succeeded(&Scope::instance("web"));
        assert_eq!(
            backoff.failed(&Scope::instance("web"), start, "busy".into(), true),
            BASE
        );
    }
}
