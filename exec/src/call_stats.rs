//! Per-thread counters of model work, so an operator can attribute the work its expressions
//! caused: it reads the counters before and after evaluating a chunk on its thread.
//!
//! The backend and the result cache add to them; [`crate::AiMapExec`] turns the differences into
//! its EXPLAIN ANALYZE metrics (rows sent to the model, cache hits, tokens in and out).

use std::cell::Cell;

/// Model work done on this thread so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Rows the model computed.
    pub model_rows: u64,
    /// Rows answered from the result cache.
    pub cache_hits: u64,
    /// Prompt tokens the model read (the shared instruction counted once per call).
    pub tokens_in: u64,
    /// Tokens the model generated.
    pub tokens_out: u64,
}

impl CallStats {
    /// The work done between `earlier` and `self`.
    pub fn since(self, earlier: CallStats) -> CallStats {
        CallStats {
            model_rows: self.model_rows - earlier.model_rows,
            cache_hits: self.cache_hits - earlier.cache_hits,
            tokens_in: self.tokens_in - earlier.tokens_in,
            tokens_out: self.tokens_out - earlier.tokens_out,
        }
    }
}

thread_local! {
    static STATS: Cell<CallStats> = const {
        Cell::new(CallStats { model_rows: 0, cache_hits: 0, tokens_in: 0, tokens_out: 0 })
    };
}

/// This thread's counters.
pub fn current() -> CallStats {
    STATS.with(Cell::get)
}

/// Adds to this thread's counters.
pub(crate) fn record(f: impl FnOnce(&mut CallStats)) {
    STATS.with(|s| {
        let mut stats = s.get();
        f(&mut stats);
        s.set(stats);
    });
}
