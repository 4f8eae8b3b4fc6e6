//! Requests being computed right now, so that a concurrent identical request waits for the
//! first one's answer instead of computing it again.
//!
//! Partitions of one query run at once: the two partitions of a cross join each see every row
//! of its build side, and without this both embedded every one of those texts (567 embeddings
//! for 291 distinct texts in the workflow benchmark's semantic search). A caller claims the
//! keys no one else is computing, computes those, releases them (waking the waiters), and only
//! then waits for the keys others hold: every waiter waits on a computation that is already
//! running and never waits itself, so no cycle of waits can form.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Keys being computed, shared by every caller of one cache.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    keys: Mutex<HashSet<String>>,
    released: Condvar,
}

/// The keys one caller claimed; released (and waiters woken) when dropped, whether the
/// computation succeeded, failed or panicked.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    owner: &'a InFlight,
    keys: Vec<String>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims every key of `wanted` not already in flight. Returns the claim and, for each
    /// wanted key, whether this caller holds it (`false`: another caller is computing it).
    pub(crate) fn claim<'a>(&'a self, wanted: &[&str]) -> (Claim<'a>, Vec<bool>) {
        let mut keys = self.lock();
        let mut mine: HashSet<&str> = HashSet::new();
        let held = wanted
            .iter()
            .map(|&key| {
                if mine.contains(key) {
                    true
                } else if keys.contains(key) {
                    false
                } else {
                    keys.insert(key.to_string());
                    mine.insert(key);
                    true
                }
            })
            .collect();
        let claim = Claim { owner: self, keys: mine.into_iter().map(str::to_string).collect() };
        (claim, held)
    }

    /// Returns once none of `keys` is in flight.
    pub(crate) fn wait_for(&self, keys: &[&str]) {
        let mut held = self.lock();
        while keys.iter().any(|k| held.contains(*k)) {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut keys = self.owner.lock();
        for key in &self.keys {
            keys.remove(key);
        }
        drop(keys);
        self.owner.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_by_one_caller_until_released() {
        let flight = InFlight::default();
        let (first, held) = flight.claim(&["a", "b", "a"]);
        assert_eq!(held, vec![true, true, true]);
        let (second, held) = flight.claim(&["b", "c"]);
        assert_eq!(held, vec![false, true]);
        drop(first);
        // "b" is free again; "c" is still the second caller's.
        flight.wait_for(&["a", "b"]);
        let (_third, held) = flight.claim(&["b", "c"]);
        assert_eq!(held, vec![true, false]);
        drop(second);
        flight.wait_for(&["c"]);
    }

    #[test]
    fn a_waiter_wakes_when_the_holder_releases() {
        let flight = std::sync::Arc::new(InFlight::default());
        let (claim, _) = flight.claim(&["k"]);
        let waiter = {
            let flight = std::sync::Arc::clone(&flight);
            std::thread::spawn(move || flight.wait_for(&["k"]))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(claim);
        waiter.join().unwrap();
    }
}
