//! A deadline for work that cannot be interrupted: the model call of a chunk runs on a blocking
//! thread, and a hung call (a stuck device, a runaway generation) never yields. The caller stops
//! waiting at the deadline and moves on; the work is told to stop through its cancellation flag
//! and its result, if it ever comes, is dropped.
//!
//! The timer is a plain thread parked on a channel rather than `tokio::time`: a Murakkab session
//! may run on a runtime built without the time driver (embedded use), where `tokio::time` panics.
//! The thread wakes as soon as the work is done, so finished chunks do not leave timers behind.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use futures::future::{Either, select};

/// `work`'s output, or `None` if `limit` passed first. No limit: waits for the work.
pub async fn within<T>(work: impl Future<Output = T>, limit: Option<Duration>) -> Option<T> {
    let Some(limit) = limit else {
        return Some(work.await);
    };
    let (fired, on_fire) = futures::channel::oneshot::channel::<()>();
    let (done, on_done) = mpsc::channel::<()>();
    let timer = std::thread::Builder::new().name("murakkab-deadline".into()).spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = on_done.recv_timeout(limit) {
            let _ = fired.send(());
        }
    });
    if timer.is_err() {
        // No thread for the timer: run without a deadline rather than fail the query.
        return Some(work.await);
    }
    let work = std::pin::pin!(work);
    match select(work, on_fire).await {
        Either::Left((output, _)) => {
            drop(done);
            Some(output)
        }
        Either::Right((_, _)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_work_finishes_and_slow_work_is_abandoned() {
        let fast = futures::executor::block_on(within(async { 7 }, Some(Duration::from_secs(5))));
        assert_eq!(fast, Some(7));
        let never = futures::future::pending::<i32>();
        let started = std::time::Instant::now();
        let slow = futures::executor::block_on(within(never, Some(Duration::from_millis(50))));
        assert_eq!(slow, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(futures::executor::block_on(within(async { 1 }, None)), Some(1));
    }
}
