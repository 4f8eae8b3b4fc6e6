//! The batcher: concurrent requests for the same model and the same work merge into one batch.
//!
//! Every request (a chunk of rows from one operator, of any partition or query in the process)
//! is queued with a key that says what may share a forward pass: the model, the shared
//! instruction and the operation's parameters. Then it waits for the device. Whichever request
//! gets the device first *leads*: it takes every queued request with its key and scheduling
//! class (up to [`MAX_MERGED_ROWS`] rows), runs them as one batch and hands each requester its
//! rows' results. A request that finds its results ready when its turn comes returns at once.
//!
//! So requests merge exactly when they would otherwise wait: there is no timer, and a lone
//! interactive row is never held back (its maximum wait is zero). Requests of different classes
//! are not merged, so an interactive row never rides in a batch job's larger batch. Requests
//! whose query was cancelled while queued are dropped by the leader, not computed; if the
//! leader itself is cancelled mid-batch, the others' requests go back to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use murakkab_compiler::Priority;

use crate::scheduler::{self, device_turn};

/// Most rows one merged batch takes (the leader's own request always goes in whole).
pub(crate) const MAX_MERGED_ROWS: usize = 32;

/// One row's outcome.
pub(crate) type RowResult<T> = Result<T, String>;

/// Where a leader leaves a follower's results.
type Slot<T> = Arc<Mutex<Option<Vec<RowResult<T>>>>>;

#[derive(Debug)]
struct Request<K, R, T> {
    key: K,
    priority: Priority,
    rows: Vec<R>,
    slot: Slot<T>,
    cancel: Option<Arc<AtomicBool>>,
}

/// Queued requests of one kind of work (label scoring, generation, embedding).
#[derive(Debug)]
pub(crate) struct Batcher<K, R, T> {
    pending: Mutex<Vec<Request<K, R, T>>>,
}

fn locked<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    // Requests and slots hold only finished values; a panic elsewhere leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a merged batch did, for the leader's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// This request ran the batch (with `merged` other requests in it).
    Led { merged: usize },
    /// Another request's batch computed these rows.
    Followed,
}

impl<K: PartialEq + Clone, R: Clone, T> Batcher<K, R, T> {
    pub(crate) fn new() -> Self {
        Self { pending: Mutex::new(Vec::new()) }
    }

    /// The results of `rows` under `key`, in order, computed by `run` (on these rows merged
    /// with other queued requests of the same key and class) or by another request's leader.
    /// `run` gets the device; it must return one result per row it is given.
    pub(crate) fn submit(
        &self,
        key: K,
        rows: Vec<R>,
        run: impl FnOnce(&[R]) -> Vec<RowResult<T>>,
    ) -> (Vec<RowResult<T>>, Role) {
        if !murakkab_udfs::reuse_allowed() {
            // The naive baseline: each call is its own batch.
            let _device = device_turn();
            return (run(&rows), Role::Led { merged: 0 });
        }
        let slot: Slot<T> = Arc::new(Mutex::new(None));
        let priority = scheduler::current_priority();
        let count = rows.len();
        locked(&self.pending).push(Request {
            key: key.clone(),
            priority,
            rows,
            slot: Arc::clone(&slot),
            cancel: scheduler::current_cancellation(),
        });
        let _device = device_turn();
        if let Some(done) = locked(&slot).take() {
            return (done, Role::Followed);
        }
        let group = self.take_group(&key, priority, &slot);
        let merged_rows: Vec<R> = group.iter().flat_map(|r| r.rows.iter().cloned()).collect();
        let mut results = run(&merged_rows).into_iter();
        if scheduler::cancelled() {
            // Our query is gone; the others' rows may not have been computed: queue them again.
            let mut pending = locked(&self.pending);
            let mine = group.into_iter().filter(|r| !Arc::ptr_eq(&r.slot, &slot));
            pending.extend(mine);
            let cancelled = crate::ModelError::Cancelled.to_string();
            return ((0..count).map(|_| Err(cancelled.clone())).collect(), Role::Led { merged: 0 });
        }
        let merged = group.len() - 1;
        let mut own = Vec::new();
        for request in group {
            let part: Vec<RowResult<T>> = (&mut results)
                .take(request.rows.len())
                .chain(std::iter::repeat_with(|| Err("the model returned no result".to_string())))
                .take(request.rows.len())
                .collect();
            if Arc::ptr_eq(&request.slot, &slot) {
                own = part;
            } else {
                *locked(&request.slot) = Some(part);
            }
        }
        (own, Role::Led { merged })
    }

    /// Removes and returns the leader's request and the queued ones it can merge, in queue
    /// order. Requests whose query was cancelled are answered with an error and dropped.
    fn take_group(&self, key: &K, priority: Priority, own: &Slot<T>) -> Vec<Request<K, R, T>> {
        let mut pending = locked(&self.pending);
        let mut group = Vec::new();
        let mut rows = 0;
        let mut kept = Vec::with_capacity(pending.len());
        for request in pending.drain(..) {
            let is_own = Arc::ptr_eq(&request.slot, own);
            let cancelled = request.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
            if cancelled && !is_own {
                let error = crate::ModelError::Cancelled.to_string();
                *locked(&request.slot) =
                    Some(request.rows.iter().map(|_| Err(error.clone())).collect());
                continue;
            }
            let fits = rows + request.rows.len() <= MAX_MERGED_ROWS;
            if is_own || (request.key == *key && request.priority == priority && fits) {
                rows += request.rows.len();
                group.push(request);
            } else {
                kept.push(request);
            }
        }
        *pending = kept;
        // The leader's rows first: its own results are then the first ones computed.
        if let Some(i) = group.iter().position(|r| Arc::ptr_eq(&r.slot, own)) {
            let leader = group.remove(i);
            group.insert(0, leader);
        }
        group
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Requests queued while the device is busy run as one batch, each gets its own rows'
    /// results, and a request with another key runs on its own.
    #[test]
    fn waiting_requests_with_one_key_merge_into_one_batch() {
        let batcher: Arc<Batcher<&str, u32, u32>> = Arc::new(Batcher::new());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let holder = device_turn();
        let queued = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> =
            [("a", vec![1, 2]), ("a", vec![3]), ("b", vec![4]), ("a", vec![5, 6])]
                .into_iter()
                .map(|(key, rows)| {
                    let (batcher, batches, queued) =
                        (Arc::clone(&batcher), Arc::clone(&batches), Arc::clone(&queued));
                    std::thread::spawn(move || {
                        queued.fetch_add(1, Ordering::SeqCst);
                        let expected: Vec<u32> = rows.iter().map(|r| r * 10).collect();
                        let (out, _) = batcher.submit(key, rows, |all| {
                            locked(&batches).push(all.to_vec());
                            all.iter().map(|r| Ok(r * 10)).collect()
                        });
                        let out: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
                        assert_eq!(out, expected);
                    })
                })
                .collect();
        while queued.load(Ordering::SeqCst) < 4 || locked(&batcher.pending).len() < 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(holder);
        for t in threads {
            t.join().unwrap();
        }
        let mut sizes: Vec<usize> = locked(&batches).iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, [1, 5], "key a's three requests in one batch, key b alone");
    }

    #[test]
    fn a_lone_request_runs_at_once_and_leads() {
        let batcher: Batcher<u8, u8, u8> = Batcher::new();
        let (out, role) =
            batcher.submit(1, vec![7], |rows| rows.iter().map(|r| Ok(r + 1)).collect());
        assert_eq!(out, [Ok(8)]);
        assert_eq!(role, Role::Led { merged: 0 });
        assert!(locked(&batcher.pending).is_empty());
    }

    #[test]
    fn a_cancelled_queued_request_is_not_computed() {
        let batcher: Batcher<u8, u8, u8> = Batcher::new();
        let flag = Arc::new(AtomicBool::new(true));
        locked(&batcher.pending).push(Request {
            key: 1,
            priority: Priority::Interactive,
            rows: vec![1, 2],
            slot: Arc::new(Mutex::new(None)),
            cancel: Some(Arc::clone(&flag)),
        });
        let (_, role) = batcher.submit(1, vec![3], |rows| {
            assert_eq!(rows, [3], "the cancelled request's rows are not computed");
            rows.iter().map(|r| Ok(*r)).collect()
        });
        assert_eq!(role, Role::Led { merged: 0 });
    }
}
