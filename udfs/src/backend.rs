//! The interface between the AI functions and whatever runs the models.
//!
//! The functions in this crate decide *what* to ask (prompts, labels, output types); a backend
//! decides *how* (which weights, batching, chat formatting, token budgets). The executor crate
//! provides the real backend; keeping the seam here keeps the dependency direction of DESIGN.md
//! (udfs never depend on exec) and lets tests substitute a backend that misbehaves on purpose.

use std::fmt::Debug;

use murakkab_catalog::{ModelCard, MurakkabHome, Task};

/// A batch of chat prompts that share a beginning.
///
/// Each row's user message is `shared + rows[i]`; the backend wraps it in the model's chat
/// template and computes `shared` once for the whole batch (prefix sharing). `shared` should end
/// at a line break so the split does not change tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatBatch {
    /// The start of every row's user message: the instruction.
    pub shared: String,
    /// The rest of each row's user message: the row's text in its delimited block, the question.
    pub rows: Vec<String>,
    /// For label scoring: a row with no content (an empty text block). When set, each row's
    /// label probabilities are divided by this row's and renormalised (contextual calibration,
    /// Zhao et al. 2021), so a label the model prefers whatever the text says does not win
    /// by default.
    pub calibration_row: Option<String>,
    /// For label scoring: score every token of each label. Otherwise each label is scored up to
    /// its first token that no other label shares, which tells single words apart at less cost
    /// but would drop the words after "not" in a statement and its negation (`ai_filter`).
    pub whole_labels: bool,
}

/// What a backend returns for a batch: one outcome per row, in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput<T> {
    /// `Err` holds why this row has no usable value; other rows are unaffected.
    pub rows: Vec<Result<T, String>>,
    /// Rows whose prompt was longer than the context and was cut in the middle to fit.
    pub truncated: usize,
}

/// Limits for free generation.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionOptions {
    /// Most new tokens per row.
    pub max_tokens: usize,
    /// 0 for greedy decoding; above 0, seeded sampling at this temperature.
    pub temperature: f64,
    /// Seed for sampling; the same seed and prompt give the same text.
    pub seed: u64,
}

/// The type of one field `ai_extract` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Free text.
    Text,
    /// A whole number (64-bit).
    Integer,
    /// A decimal number.
    Float,
    /// true or false.
    Boolean,
}

/// One typed value produced by `ai_extract`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A text field.
    Text(String),
    /// An integer field.
    Integer(i64),
    /// A decimal field.
    Float(f64),
    /// A boolean field.
    Boolean(bool),
}

/// Runs models for the AI functions. Calls block the calling thread until the batch is done.
pub trait AiBackend: Send + Sync + Debug {
    /// The card of the model to use for `task`: `requested` is a model id, or `None` / `auto`
    /// for the default. Unknown ids and models that cannot do `task` are errors that list the
    /// alternatives.
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String>;

    /// The largest pulled model that can do `task`: what `auto` means with the optimizer off
    /// (the naive baseline's reference model). Defaults to the `auto` choice.
    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        self.resolve_model(None, task)
    }

    /// Pulled models that can do `task`, smallest first: the optimizer's candidates. Defaults
    /// to the `auto` choice and the largest model.
    fn candidate_models(&self, task: Task) -> Vec<ModelCard> {
        let mut cards: Vec<ModelCard> = [self.resolve_model(None, task), self.largest_model(task)]
            .into_iter()
            .flatten()
            .collect();
        cards.sort_by_key(|c| c.parameters);
        cards.dedup_by(|a, b| a.id == b.id);
        cards
    }

    /// Unit-length embedding vectors of `texts`.
    fn embed(&self, model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String>;

    /// For each row, the probability of each label as the start of the answer.
    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String>;

    /// The label probabilities `score_labels` would return for the rows of `batch` that
    /// `model` has already answered (a result cache), without running anything; `None` for the
    /// others. A cascade gives those rows the reference model's known answer rather than a
    /// cheaper stage's guess (the optimizer's sample is such rows). Defaults to none known.
    fn known_label_scores(
        &self,
        _model: &str,
        batch: &ChatBatch,
        _labels: &[String],
    ) -> Vec<Option<Vec<f32>>> {
        vec![None; batch.rows.len()]
    }

    /// How many rows of `batch` [`AiBackend::known_label_scores`] would answer, running and
    /// counting nothing: what the optimizer checks before it credits a cascade with the
    /// sample's known reference answers. Defaults to none.
    fn known_label_rows(&self, _model: &str, _batch: &ChatBatch, _labels: &[String]) -> usize {
        0
    }

    /// The generated answer of each row.
    fn complete(
        &self,
        model: &str,
        batch: &ChatBatch,
        options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String>;

    /// One value (or NULL) per field for each row, generated under a constraint so every value
    /// has its field's type.
    fn extract(
        &self,
        model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String>;

    /// Tokens of `text` for `model` (to plan chunking).
    fn count_tokens(&self, model: &str, text: &str) -> Result<usize, String>;

    /// Tokens of context `model` can attend to.
    fn context_length(&self, model: &str) -> Result<usize, String>;

    /// Whether `model` is resident, so using it costs no load. Defaults to yes (a backend that
    /// does not know has no load to price).
    fn is_loaded(&self, _model: &str) -> bool {
        true
    }

    /// Whether prompt passes run on matrix units (AMX tiles), which makes them several times
    /// faster than the f32 GEMM the cost model's default speeds were fitted on. Defaults to no.
    fn has_matrix_units(&self) -> bool {
        false
    }

    /// The home directory (for persisted embeddings).
    fn home(&self) -> &MurakkabHome;
}

thread_local! {
    static REUSE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `f` with reuse of earlier work (the result cache, cached shared prefixes) allowed or
/// not for the backend calls it makes on this thread. The functions turn reuse off for the
/// naive baseline (`murakkab.exec.batching = false`); backends read it with [`reuse_allowed`].
pub fn with_reuse<R>(allowed: bool, f: impl FnOnce() -> R) -> R {
    let before = REUSE.with(|r| r.replace(allowed));
    let out = f();
    REUSE.with(|r| r.set(before));
    out
}

/// Whether a backend call on this thread may answer from earlier work.
pub fn reuse_allowed() -> bool {
    REUSE.with(std::cell::Cell::get)
}
