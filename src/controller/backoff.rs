//! Capped exponential backoff per failing object, so that one broken instance is retried
//! patiently while the others converge.

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
    /// Records a failure of `key` at `now`; returns how long it now waits.
    pub fn failed(&mut self, key: &Scope, now: Instant, error: String) -> Duration {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            retry_at: now,
            last_error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let delay = BASE
            .saturating_mul(1 << (entry.failures - 1).min(16))
            .min(CAP);
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
            .map(|_| backoff.failed(web, start, "boom".into()).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff.last_error(web), Some("boom"));
        backoff.succeeded(web);
        assert_eq!(backoff.failed(web, start, "again".into()), BASE);
    }

    #[test]
    fn only_waiting_objects_are_held_back() {
        let (web, db) = (Scope::instance("web"), Scope::instance("db"));
        let start = Instant::now();
        let mut backoff = Backoff::default();
        backoff.failed(&web, start, "x".into());
        backoff.failed(&db, start, "y".into());
        backoff.failed(&db, start, "y".into());
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
}
