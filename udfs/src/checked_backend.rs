//! The backend contract, enforced: whatever a model (or a backend) returns, the functions see
//! either a value of the promised shape or a row error.
//!
//! Small models misbehave: probabilities that are NaN or of the wrong length, embeddings of
//! another width, empty answers, answers far longer than `max_tokens` allows, repetition loops,
//! extracted values of the wrong type, or a batch answered with too few rows. Each of these would
//! be a panic (an index out of bounds), a silent wrong answer, or a poisoned result cache entry
//! further on. [`CheckedBackend`] wraps any backend and turns every such value into an `Err` for
//! that row only, so the row becomes NULL with a warning (or fails the query under
//! `murakkab.on_error = 'fail'`) and its neighbours are unaffected. The session puts it beneath
//! the result cache, so only checked answers are ever cached.

use std::sync::Arc;

use murakkab_catalog::{ModelCard, MurakkabHome, Task};

use crate::backend::{AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue};

/// Bytes per generated token a completion may average before it is not believed; generous,
/// since byte-level vocabularies have long tokens (runs of spaces, repeated punctuation).
const MAX_BYTES_PER_TOKEN: usize = 64;
/// A completion ending in this many or more copies of one unit is a repetition loop.
const LOOP_REPEATS: usize = 8;
/// The longest repeating unit looked for, in characters.
const LOOP_UNIT_CHARS: usize = 64;
/// How far embedding norms may stray from 1 before they are renormalised rather than trusted.
const NORM_TOLERANCE: f32 = 1e-3;

/// An [`AiBackend`] that checks every answer of the backend it wraps.
#[derive(Debug)]
pub struct CheckedBackend {
    inner: Arc<dyn AiBackend>,
}

impl CheckedBackend {
    /// Checks the answers of `inner`.
    pub fn new(inner: Arc<dyn AiBackend>) -> Self {
        Self { inner }
    }
}

/// Checks each `Ok` row with `check`, and a batch with the wrong row count as failed rows.
fn check_rows<T>(
    output: BatchOutput<T>,
    expected_rows: usize,
    mut check: impl FnMut(T) -> Result<T, String>,
) -> BatchOutput<T> {
    if output.rows.len() != expected_rows {
        let why = format!(
            "the model returned {} results for a batch of {expected_rows} rows",
            output.rows.len()
        );
        return BatchOutput {
            rows: (0..expected_rows).map(|_| Err(why.clone())).collect(),
            truncated: output.truncated,
        };
    }
    BatchOutput {
        rows: output.rows.into_iter().map(|r| r.and_then(&mut check)).collect(),
        truncated: output.truncated,
    }
}

/// Label probabilities must be one finite, non-negative number per label with a positive sum;
/// they are renormalised to sum to one.
fn check_probabilities(mut p: Vec<f32>, labels: usize) -> Result<Vec<f32>, String> {
    if p.len() != labels {
        return Err(format!("{} label probabilities for {labels} labels", p.len()));
    }
    if let Some(bad) = p.iter().find(|v| !v.is_finite() || **v < 0.0) {
        return Err(format!("label probability {bad} is not a finite non-negative number"));
    }
    let sum: f32 = p.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return Err("label probabilities are all zero".into());
    }
    p.iter_mut().for_each(|v| *v /= sum);
    Ok(p)
}

/// Embeddings must be non-empty, finite, not all zero, and of one width per batch; they are
/// brought to unit length when the backend did not.
fn check_embedding(mut v: Vec<f32>, width: Option<usize>) -> Result<Vec<f32>, String> {
    if v.is_empty() {
        return Err("an empty embedding".into());
    }
    if let Some(width) = width.filter(|w| *w != v.len()) {
        return Err(format!("an embedding of width {} in a batch of width {width}", v.len()));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err("an embedding with a NaN or infinite component".into());
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err("an all-zero embedding".into());
    }
    if (norm - 1.0).abs() > NORM_TOLERANCE {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(v)
}

/// A completion must say something, fit what `max_tokens` allows, and not be a loop.
fn check_completion(text: String, options: &CompletionOptions) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("an empty answer".into());
    }
    let limit = options.max_tokens.max(1).saturating_mul(MAX_BYTES_PER_TOKEN);
    if text.len() > limit {
        return Err(format!(
            "an answer of {} bytes, more than max_tokens = {} allows",
            text.len(),
            options.max_tokens
        ));
    }
    if let Some((unit, times)) = repetition_loop(&text) {
        let unit: String = unit.chars().take(24).collect();
        return Err(format!("a repetition loop ({unit:?} {times} times)"));
    }
    Ok(text)
}

/// The unit and count when `text` ends in [`LOOP_REPEATS`] or more copies of one unit of up to
/// [`LOOP_UNIT_CHARS`] characters that together make at least half the text (a list that
/// legitimately repeats a word a few times is not a loop).
fn repetition_loop(text: &str) -> Option<(&str, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    for unit_len in 1..=LOOP_UNIT_CHARS.min(n / LOOP_REPEATS) {
        let unit_start = chars[n - unit_len].0;
        let unit = &text[unit_start..];
        let mut times = 1;
        let mut end = unit_start;
        while end >= unit.len() && text[..end].ends_with(unit) {
            end -= unit.len();
            times += 1;
        }
        let covered = text.len() - end;
        if times >= LOOP_REPEATS && covered * 2 >= text.len() && !unit.trim().is_empty() {
            return Some((unit, times));
        }
    }
    None
}

/// Extracted values must be one per field, each of its field's type (an integer is accepted
/// for a decimal field and widened).
fn check_fields(
    values: Vec<Option<FieldValue>>,
    fields: &[(String, FieldType)],
) -> Result<Vec<Option<FieldValue>>, String> {
    if values.len() != fields.len() {
        return Err(format!("{} extracted values for {} fields", values.len(), fields.len()));
    }
    values
        .into_iter()
        .zip(fields)
        .map(|(value, (name, ty))| match (value, ty) {
            (None, _) => Ok(None),
            (Some(FieldValue::Integer(i)), FieldType::Float) => {
                Ok(Some(FieldValue::Float(i as f64)))
            }
            (Some(FieldValue::Float(f)), FieldType::Float) if !f.is_finite() => {
                Err(format!("field '{name}' is {f}, not a number"))
            }
            (Some(v @ FieldValue::Text(_)), FieldType::Text)
            | (Some(v @ FieldValue::Integer(_)), FieldType::Integer)
            | (Some(v @ FieldValue::Float(_)), FieldType::Float)
            | (Some(v @ FieldValue::Boolean(_)), FieldType::Boolean) => Ok(Some(v)),
            (Some(v), ty) => Err(format!("field '{name}' should be {ty:?}, the model gave {v:?}")),
        })
        .collect()
}

impl AiBackend for CheckedBackend {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        self.inner.resolve_model(requested, task)
    }

    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        self.inner.largest_model(task)
    }

    fn candidate_models(&self, task: Task) -> Vec<ModelCard> {
        self.inner.candidate_models(task)
    }

    fn is_loaded(&self, model: &str) -> bool {
        self.inner.is_loaded(model)
    }

    fn has_matrix_units(&self) -> bool {
        self.inner.has_matrix_units()
    }

    fn embed(&self, model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        let output = self.inner.embed(model, texts)?;
        // The model card's width; else the batch's most common one, so that one odd row cannot
        // fail the others.
        let card_width =
            self.inner.resolve_model(Some(model), Task::Embed).ok().and_then(|c| c.embedding_dim);
        let mut widths: Vec<usize> =
            output.rows.iter().filter_map(|r| r.as_ref().ok().map(Vec::len)).collect();
        widths.sort_unstable();
        let width = card_width.or_else(|| {
            widths
                .chunk_by(|a, b| a == b)
                .max_by_key(|run| run.len())
                .and_then(|run| run.first().copied())
        });
        Ok(check_rows(output, texts.len(), |v| check_embedding(v, width)))
    }

    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        let output = self.inner.score_labels(model, batch, labels)?;
        Ok(check_rows(output, batch.rows.len(), |p| check_probabilities(p, labels.len())))
    }

    fn complete(
        &self,
        model: &str,
        batch: &ChatBatch,
        options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        let output = self.inner.complete(model, batch, options)?;
        Ok(check_rows(output, batch.rows.len(), |t| check_completion(t, options)))
    }

    fn extract(
        &self,
        model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        let output = self.inner.extract(model, batch, fields)?;
        Ok(check_rows(output, batch.rows.len(), |v| check_fields(v, fields)))
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<usize, String> {
        self.inner.count_tokens(model, text)
    }

    fn context_length(&self, model: &str) -> Result<usize, String> {
        self.inner.context_length(model)
    }

    fn home(&self) -> &MurakkabHome {
        self.inner.home()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(max_tokens: usize) -> CompletionOptions {
        CompletionOptions { max_tokens, temperature: 0.0, seed: 0 }
    }

    #[test]
    fn probabilities_are_checked_and_normalised() {
        assert_eq!(check_probabilities(vec![1.0, 3.0], 2).unwrap(), vec![0.25, 0.75]);
        assert!(
            check_probabilities(vec![1.0], 2).unwrap_err().contains("1 label probabilities for 2")
        );
        assert!(check_probabilities(vec![f32::NAN, 1.0], 2).is_err());
        assert!(check_probabilities(vec![-0.5, 1.0], 2).is_err());
        assert!(check_probabilities(vec![f32::INFINITY, 1.0], 2).is_err());
        assert!(check_probabilities(vec![0.0, 0.0], 2).unwrap_err().contains("all zero"));
    }

    #[test]
    fn embeddings_are_checked_and_normalised() {
        assert_eq!(check_embedding(vec![3.0, 4.0], Some(2)).unwrap(), vec![0.6, 0.8]);
        assert!(check_embedding(vec![1.0], Some(2)).unwrap_err().contains("width 1"));
        assert!(check_embedding(vec![], None).is_err());
        assert!(check_embedding(vec![0.0, 0.0], None).unwrap_err().contains("all-zero"));
        assert!(check_embedding(vec![f32::NAN, 1.0], None).is_err());
    }

    #[test]
    fn loops_empty_and_oversized_completions_are_refused() {
        assert!(check_completion("  \n".into(), &options(8)).unwrap_err().contains("empty"));
        let huge = "x".repeat(8 * MAX_BYTES_PER_TOKEN + 1);
        assert!(check_completion(huge, &options(8)).unwrap_err().contains("max_tokens = 8"));
        let looped = format!("The answer is{}", " the answer is".repeat(20));
        let err = check_completion(looped, &options(256)).unwrap_err();
        assert!(
            err.contains("repetition loop") && err.contains("20 times") || err.contains("21 times"),
            "{err}"
        );
        let single = "no no no no no no no no no no no no".to_string();
        assert!(check_completion(single, &options(64)).unwrap_err().contains("loop"));
        // Ordinary text, and a short list that repeats a word, pass.
        for ok in ["Great battery life.", "yes, yes, yes", "1. a\n2. b\n3. c", "ha ha ha, funny"] {
            assert_eq!(check_completion(ok.into(), &options(64)).unwrap(), ok);
        }
    }

    #[test]
    fn extracted_values_must_have_their_field_types() {
        let fields =
            vec![("price".to_string(), FieldType::Float), ("n".to_string(), FieldType::Integer)];
        let ok = check_fields(vec![Some(FieldValue::Integer(3)), None], &fields).unwrap();
        assert_eq!(ok, vec![Some(FieldValue::Float(3.0)), None]);
        let err =
            check_fields(vec![None, Some(FieldValue::Text("7".into()))], &fields).unwrap_err();
        assert!(err.contains("field 'n' should be Integer"), "{err}");
        assert!(
            check_fields(vec![None], &fields).unwrap_err().contains("1 extracted values for 2")
        );
        assert!(check_fields(vec![Some(FieldValue::Float(f64::NAN)), None], &fields).is_err());
    }

    #[test]
    fn a_short_batch_fails_every_row_of_it() {
        let out = BatchOutput { rows: vec![Ok(1)], truncated: 0 };
        let checked = check_rows(out, 3, Ok);
        assert_eq!(checked.rows.len(), 3);
        assert!(
            checked
                .rows
                .iter()
                .all(|r| r.as_ref().unwrap_err().contains("1 results for a batch of 3"))
        );
    }
}
