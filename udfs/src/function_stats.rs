//! Per-thread counters of what the AI functions did besides calling the backend: rows answered
//! by deduplication, rows that got a warning, and what a cascade settled or escalated. The
//! operator that evaluates a function reads them before and after, like the executor's call
//! counters, to show them in EXPLAIN ANALYZE and to size its next chunk.

use std::cell::Cell;

/// Function-side work on this thread so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Rows that shared an identical input with an earlier row of the same call.
    pub dedup_hits: u64,
    /// Rows that were cut to fit the context or came back NULL for lack of a usable answer.
    pub warned_rows: u64,
    /// Rows a cascade's cheap model was unsure of and sent on to its reference model.
    pub escalated_rows: u64,
    /// Rows a cascade's cheaper stage answered, which its reference model never saw.
    pub settled_rows: u64,
}

impl FunctionStats {
    /// The work done between `earlier` and `self`.
    pub fn since(self, earlier: FunctionStats) -> FunctionStats {
        FunctionStats {
            dedup_hits: self.dedup_hits - earlier.dedup_hits,
            warned_rows: self.warned_rows - earlier.warned_rows,
            escalated_rows: self.escalated_rows - earlier.escalated_rows,
            settled_rows: self.settled_rows - earlier.settled_rows,
        }
    }
}

thread_local! {
    static STATS: Cell<FunctionStats> = const {
        Cell::new(FunctionStats { dedup_hits: 0, warned_rows: 0, escalated_rows: 0, settled_rows: 0 })
    };
}

/// This thread's counters.
pub fn function_stats() -> FunctionStats {
    STATS.with(Cell::get)
}

/// Adds to this thread's counters.
pub(crate) fn record(f: impl FnOnce(&mut FunctionStats)) {
    STATS.with(|s| {
        let mut stats = s.get();
        f(&mut stats);
        s.set(stats);
    });
}
