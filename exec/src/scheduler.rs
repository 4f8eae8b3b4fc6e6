//! The device scheduler: one model call on the device at a time per process, interactive work
//! first (the DeepPool idea on one machine).
//!
//! On a CPU two concurrent forward passes only fight over the same cores and caches, so model
//! calls take turns. Whose turn is next is decided by class: while an interactive call waits, no
//! batch call starts; batch calls use the device whenever no interactive call wants it. A call
//! is one chunk of rows (about half a second for smollm2), so an interactive query waits at most
//! for the batch chunk already running.
//!
//! The class of the calls a thread makes is set with [`with_priority`] around them (the AI
//! operators do this from the session's `murakkab.priority`); calls made elsewhere count as
//! interactive.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use murakkab_compiler::Priority;

thread_local! {
    static CURRENT: Cell<Priority> = const { Cell::new(Priority::Interactive) };
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's model calls cancellable through `flag`: once it is set, the
/// runtime stops between forward passes (a decode step, a row batch) with
/// [`crate::ModelError::Cancelled`]. The AI operators set the flag when their stream is dropped.
pub fn with_cancellation<R>(flag: &Arc<AtomicBool>, f: impl FnOnce() -> R) -> R {
    let previous = CANCEL.with(|c| c.replace(Some(Arc::clone(flag))));
    let result = f();
    CANCEL.with(|c| *c.borrow_mut() = previous);
    result
}

/// Whether the work this thread is doing has been cancelled.
pub(crate) fn cancelled() -> bool {
    CANCEL.with(|c| c.borrow().as_ref().is_some_and(|f| f.load(Ordering::Relaxed)))
}

/// The cancellation flag of the work on this thread, if any (to check it from another thread).
pub(crate) fn current_cancellation() -> Option<Arc<AtomicBool>> {
    CANCEL.with(|c| c.borrow().clone())
}

/// The class of this thread's model calls.
pub(crate) fn current_priority() -> Priority {
    CURRENT.with(Cell::get)
}

/// Runs `f` with this thread's model calls in class `priority`.
pub fn with_priority<R>(priority: Priority, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(priority));
    let result = f();
    CURRENT.with(|c| c.set(previous));
    result
}

#[derive(Debug, Default)]
struct State {
    busy: bool,
    interactive_waiting: usize,
}

#[derive(Debug, Default)]
struct Scheduler {
    state: Mutex<State>,
    turn: Condvar,
}

static SCHEDULER: std::sync::LazyLock<Scheduler> = std::sync::LazyLock::new(Scheduler::default);

/// The device, held until dropped; the turn's time and energy are metered.
#[derive(Debug)]
pub(crate) struct DeviceTurn {
    /// Meters the turn; it stops when the turn is dropped (just after the device is released,
    /// as fields drop after `Drop::drop`: the overlap is one lock release).
    _meter: crate::energy::TurnMeter,
}

fn lock(s: &Scheduler) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves nothing half-done in `State` worth protecting.
    s.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for this thread's turn on the device.
pub(crate) fn device_turn() -> DeviceTurn {
    let s = &*SCHEDULER;
    let priority = CURRENT.with(Cell::get);
    let mut state = lock(s);
    match priority {
        Priority::Interactive => {
            state.interactive_waiting += 1;
            while state.busy {
                state = s.turn.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.interactive_waiting -= 1;
        }
        Priority::Batch => {
            while state.busy || state.interactive_waiting > 0 {
                state = s.turn.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    state.busy = true;
    drop(state);
    DeviceTurn { _meter: crate::energy::TurnMeter::start() }
}

impl Drop for DeviceTurn {
    fn drop(&mut self) {
        let s = &*SCHEDULER;
        lock(s).busy = false;
        s.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_waiting_interactive_call_goes_before_waiting_batch_calls() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let holder = device_turn(); // the device is busy
        let started = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for (name, priority) in [("batch-1", Priority::Batch), ("batch-2", Priority::Batch)] {
            let (order, started) = (Arc::clone(&order), Arc::clone(&started));
            threads.push(std::thread::spawn(move || {
                with_priority(priority, || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _turn = device_turn();
                    order.lock().unwrap().push(name);
                })
            }));
        }
        while started.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        let interactive = {
            let order = Arc::clone(&order);
            std::thread::spawn(move || {
                let _turn = device_turn();
                order.lock().unwrap().push("interactive");
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(holder);
        interactive.join().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(order.lock().unwrap()[0], "interactive");
    }
}
