//! Row-level problems the AI functions did not turn into errors, counted so the shell and the
//! embedded API can report them after a result.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One kind of problem in one function, with how many rows it affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiWarning {
    /// The SQL function, e.g. `ai_filter`.
    pub function: String,
    /// What happened, e.g. `prompt longer than the context, cut in the middle`.
    pub message: String,
    /// Rows affected.
    pub rows: usize,
    /// The first row's detail, if there is one.
    pub example: Option<String>,
}

impl std::fmt::Display for AiWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = if self.rows == 1 { "1 row".to_string() } else { format!("{} rows", self.rows) };
        write!(f, "{}: {rows}: {}", self.function, self.message)?;
        if let Some(example) = &self.example {
            write!(f, " (first: {example})")?;
        }
        Ok(())
    }
}

/// (function, message) -> (rows, first example).
type Counts = BTreeMap<(String, String), (usize, Option<String>)>;

/// Warnings counted since they were last taken. Shared by a session's functions.
#[derive(Debug, Default)]
pub struct AiWarnings {
    counts: Mutex<Counts>,
}

impl AiWarnings {
    /// Counts `rows` rows of `message` in `function`; `example` is kept for the first report.
    pub fn record(&self, function: &str, message: &str, rows: usize, example: Option<String>) {
        if rows == 0 {
            return;
        }
        crate::function_stats::record(|s| s.warned_rows += rows as u64);
        if let Ok(mut counts) = self.counts.lock() {
            let entry =
                counts.entry((function.to_string(), message.to_string())).or_insert((0, None));
            entry.0 += rows;
            if entry.1.is_none() {
                entry.1 = example;
            }
        }
    }

    /// The warnings counted so far, clearing them.
    pub fn take(&self) -> Vec<AiWarning> {
        let Ok(mut counts) = self.counts.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *counts)
            .into_iter()
            .map(|((function, message), (rows, example))| AiWarning {
                function,
                message,
                rows,
                example,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_per_function_and_message_and_clear_on_take() {
        let w = AiWarnings::default();
        w.record("ai_filter", "model output unusable", 2, Some("row 3".into()));
        w.record("ai_filter", "model output unusable", 1, Some("row 9".into()));
        w.record("ai_complete", "prompt cut", 0, None);
        let taken = w.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].to_string(), "ai_filter: 3 rows: model output unusable (first: row 3)");
        assert!(w.take().is_empty());
    }
}
