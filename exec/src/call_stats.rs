//! Per-thread counters of model work, so an operator can attribute the work its expressions
//! caused: it reads the counters before and after evaluating a chunk on its thread.
//!
//! The backend and the result cache add to them; [`crate::AiMapExec`] turns the differences into
//! its EXPLAIN ANALYZE metrics (model calls, rows sent to the model, cache hits, tokens in and
//! out) and into the list of models it shows.

use std::cell::Cell;

/// Model work done on this thread so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls into a model (one forward batch each, before any row-by-row retry).
    pub model_calls: u64,
    /// Rows the model computed.
    pub model_rows: u64,
    /// Rows answered from the result cache.
    pub cache_hits: u64,
    /// Prompt tokens the model read (the shared instruction counted once per call).
    pub tokens_in: u64,
    /// Tokens the model generated.
    pub tokens_out: u64,
    /// Wall time of model turns, µs (see [`crate::energy`]).
    pub wall_us: u64,
    /// Process CPU time during model turns, µs.
    pub cpu_us: u64,
    /// RAPL energy during model turns, µJ (0 where RAPL is not readable).
    pub measured_uj: u64,
}

impl CallStats {
    /// No work (a `const`, for the statics below).
    const ZERO: CallStats = CallStats {
        model_calls: 0,
        model_rows: 0,
        cache_hits: 0,
        tokens_in: 0,
        tokens_out: 0,
        wall_us: 0,
        cpu_us: 0,
        measured_uj: 0,
    };

    /// `self` and `other` together.
    fn plus(self, other: CallStats) -> CallStats {
        CallStats {
            model_calls: self.model_calls + other.model_calls,
            model_rows: self.model_rows + other.model_rows,
            cache_hits: self.cache_hits + other.cache_hits,
            tokens_in: self.tokens_in + other.tokens_in,
            tokens_out: self.tokens_out + other.tokens_out,
            wall_us: self.wall_us + other.wall_us,
            cpu_us: self.cpu_us + other.cpu_us,
            measured_uj: self.measured_uj + other.measured_uj,
        }
    }

    /// The work done between `earlier` and `self`.
    pub fn since(self, earlier: CallStats) -> CallStats {
        CallStats {
            model_calls: self.model_calls - earlier.model_calls,
            model_rows: self.model_rows - earlier.model_rows,
            cache_hits: self.cache_hits - earlier.cache_hits,
            tokens_in: self.tokens_in - earlier.tokens_in,
            tokens_out: self.tokens_out - earlier.tokens_out,
            wall_us: self.wall_us - earlier.wall_us,
            cpu_us: self.cpu_us - earlier.cpu_us,
            measured_uj: self.measured_uj - earlier.measured_uj,
        }
    }

    /// The energy-relevant part of this work.
    pub fn work(&self) -> crate::energy::ModelWork {
        crate::energy::ModelWork {
            wall_us: self.wall_us,
            cpu_us: self.cpu_us,
            measured_uj: self.measured_uj,
        }
    }
}

thread_local! {
    static STATS: Cell<CallStats> = const { Cell::new(CallStats::ZERO) };
    static MODELS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's counters.
pub fn current() -> CallStats {
    STATS.with(Cell::get)
}

/// The counters of every thread together, since the process started.
static TOTALS: std::sync::Mutex<CallStats> = std::sync::Mutex::new(CallStats::ZERO);

/// Adds to this thread's counters and the process totals.
pub(crate) fn record(f: impl FnOnce(&mut CallStats)) {
    STATS.with(|s| {
        let before = s.get();
        let mut stats = before;
        f(&mut stats);
        s.set(stats);
        let mut totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
        *totals = totals.plus(stats.since(before));
    });
}

/// Model work of every thread since the process started (for reports over whole queries; an
/// operator attributes its own work with [`current`]).
pub fn process_totals() -> CallStats {
    *TOTALS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts `rows` rows sent to `model` reading `tokens` prompt tokens (the forward batch that
/// computes them is counted by whoever runs it, see [`record_batch`]).
pub(crate) fn record_rows(model: &str, rows: usize, tokens: usize) {
    record(|s| {
        s.model_rows += rows as u64;
        s.tokens_in += tokens as u64;
    });
    MODELS.with(|m| {
        let mut m = m.borrow_mut();
        if !m.iter().any(|id| id == model) {
            m.push(model.to_string());
        }
    });
}

/// Counts one forward batch run on this thread.
pub(crate) fn record_batch() {
    record(|s| s.model_calls += 1);
}

/// The models called on this thread since the last take, in first-call order.
pub fn take_models() -> Vec<String> {
    MODELS.with(|m| std::mem::take(&mut *m.borrow_mut()))
}
