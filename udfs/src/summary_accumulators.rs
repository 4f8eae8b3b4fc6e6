//! The accumulators of `ai_summarize_agg`, and the map-reduce they share.
//!
//! A group's texts are packed into chunks that fit the model's context (map), each chunk is
//! summarised, and the partial summaries are summarised again until one is left (reduce).
//! The [`SummaryGroups`] accumulator (used under `GROUP BY`) runs every group's chunks of one
//! level in a single batched generation call, so a thousand small groups cost a few batched
//! calls rather than a thousand single-row ones; [`SummaryAccumulator`] is the one-group case
//! (no `GROUP BY`). Under `murakkab.exec.batching = false` (the naive baseline) every chunk is
//! its own call with reuse of earlier work turned off.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, ListArray, ListBuilder, StringArray, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use crate::args::AiContext;
use crate::backend::{BatchOutput, ChatBatch, CompletionOptions, with_reuse};
use crate::prompts;

const NAME: &str = "ai_summarize_agg";
/// Tokens of one summary.
const SUMMARY_TOKENS: usize = 120;
/// Most input tokens per chunk: below the context of every model, and small enough that one
/// chunk's prefill stays a few seconds on a CPU.
const MAX_CHUNK_TOKENS: usize = 2048;
/// Tokens set aside for the instruction and chat markers.
const INSTRUCTION_TOKENS: usize = 96;

/// What planning fixed for a call: the model (`auto` resolved under the session's options),
/// whether chunks are batched, and whether a failed group fails the query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SummaryPlan {
    pub model: String,
    pub batching: bool,
    pub fail_on_error: bool,
}

/// Summarises each group of texts; one outcome per group (`None` for a group with no text).
/// An unknown or unpulled model fails the query; a group whose model output is unusable is
/// NULL with a warning, or fails the query under `on_error = 'fail'`.
fn summarize_groups(
    context: &AiContext,
    plan: &SummaryPlan,
    groups: Vec<Vec<String>>,
) -> Result<Vec<Option<String>>> {
    match map_reduce(context, plan, groups) {
        Ok(outcomes) => {
            let failed = outcomes.iter().filter(|o| o.is_err()).count();
            let first = outcomes.iter().find_map(|o| o.as_ref().err().cloned());
            if failed > 0 {
                if plan.fail_on_error {
                    return exec_err!(
                        "{NAME}: {failed} group(s) failed ({}); set murakkab.on_error = 'null' \
                         to return NULL for them instead",
                        first.unwrap_or_default()
                    );
                }
                context.warnings.record(NAME, "no usable model output, NULL", failed, first);
            }
            Ok(outcomes.into_iter().map(|o| o.ok().flatten()).collect())
        }
        Err(e) => exec_err!("{NAME}: {e}"),
    }
}

/// The map-reduce over every group at once: each level's chunks, of all groups still above
/// one text, go to the model together.
fn map_reduce(
    context: &AiContext,
    plan: &SummaryPlan,
    groups: Vec<Vec<String>>,
) -> Result<Vec<Result<Option<String>, String>>, String> {
    let mut outcomes: Vec<Result<Option<String>, String>> = vec![Ok(None); groups.len()];
    // (group, its texts at this level) for the groups still being summarised.
    let mut pending: Vec<(usize, Vec<String>)> =
        groups.into_iter().enumerate().filter(|(_, texts)| !texts.is_empty()).collect();
    if pending.is_empty() {
        // No text: no model is asked anything (or loaded).
        return Ok(outcomes);
    }
    let budget = context
        .backend
        .context_length(&plan.model)?
        .saturating_sub(SUMMARY_TOKENS + INSTRUCTION_TOKENS)
        .clamp(64, MAX_CHUNK_TOKENS);
    while !pending.is_empty() {
        let mut owners = Vec::new();
        let mut prompts = Vec::new();
        for (group, texts) in &pending {
            for chunk in chunks(context, &plan.model, texts, budget)? {
                owners.push(*group);
                prompts.push(prompts::summarize(&chunk));
            }
        }
        let out = match generate(context, plan, prompts) {
            Ok(out) => out,
            Err(e) if e.contains("not pulled") || e.contains("unknown model") => return Err(e),
            // A failed call (a timeout, a broken batch) fails the groups it was for.
            Err(e) => {
                pending.iter().for_each(|(group, _)| outcomes[*group] = Err(e.clone()));
                break;
            }
        };
        context.warnings.record(
            NAME,
            "prompt longer than the model's context, cut in the middle",
            out.truncated,
            None,
        );
        let mut next: Vec<(usize, Vec<String>)> = Vec::new();
        let mut failed: Vec<usize> = Vec::new();
        for (group, row) in owners.into_iter().zip(out.rows) {
            match row {
                Ok(summary) => match next.last_mut() {
                    Some((g, texts)) if *g == group => texts.push(summary),
                    _ => next.push((group, vec![summary])),
                },
                Err(e) => {
                    if failed.last() != Some(&group) {
                        failed.push(group);
                        outcomes[group] = Err(e);
                    }
                }
            }
        }
        pending = Vec::new();
        for (group, summaries) in next {
            if failed.contains(&group) {
                continue;
            }
            if summaries.len() == 1 {
                outcomes[group] = Ok(summaries.into_iter().next().filter(|s| !s.is_empty()));
            } else {
                pending.push((group, summaries));
            }
        }
    }
    Ok(outcomes)
}

/// One generation over every prompt: a single batched call, or one call per prompt for the
/// naive baseline.
fn generate(
    context: &AiContext,
    plan: &SummaryPlan,
    prompts: Vec<ChatBatch>,
) -> Result<BatchOutput<String>, String> {
    let options = CompletionOptions { max_tokens: SUMMARY_TOKENS, temperature: 0.0, seed: 0 };
    let backend = &context.backend;
    if plan.batching {
        // Every prompt has the same instruction: one batch shares its prefix.
        let merged = ChatBatch {
            shared: prompts.first().map(|b| b.shared.clone()).unwrap_or_default(),
            rows: prompts.into_iter().flat_map(|b| b.rows).collect(),
            calibration_row: None,
            whole_labels: false,
        };
        let expected = merged.rows.len();
        let out = backend.complete(&plan.model, &merged, &options)?;
        if out.rows.len() != expected {
            return Err(format!(
                "the model returned {} results for {expected} inputs",
                out.rows.len()
            ));
        }
        return Ok(out);
    }
    let mut out = BatchOutput { rows: Vec::with_capacity(prompts.len()), truncated: 0 };
    for prompt in &prompts {
        let one = with_reuse(false, || backend.complete(&plan.model, prompt, &options))?;
        if one.rows.len() != 1 {
            return Err(format!("the model returned {} results for 1 input", one.rows.len()));
        }
        out.rows.extend(one.rows);
        out.truncated += one.truncated;
    }
    Ok(out)
}

/// Packs texts into chunks of at most `budget` tokens (a longer text is a chunk alone and is
/// cut to fit by the backend, with a warning).
fn chunks(
    context: &AiContext,
    model: &str,
    texts: &[String],
    budget: usize,
) -> Result<Vec<Vec<String>>, String> {
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut used = 0;
    for text in texts {
        let tokens = context.backend.count_tokens(model, text)? + 2;
        if chunks.is_empty() || used + tokens > budget {
            chunks.push(Vec::new());
            used = 0;
        }
        used += tokens;
        if let Some(last) = chunks.last_mut() {
            last.push(text.clone());
        }
    }
    Ok(chunks)
}

/// The non-NULL strings of `array`, with their row numbers.
fn strings(array: &ArrayRef) -> Result<Vec<(usize, String)>> {
    let strings = cast(array, &DataType::Utf8)?;
    let Some(strings) = strings.as_any().downcast_ref::<StringArray>() else {
        return exec_err!("{NAME}: expected text");
    };
    Ok(strings.iter().enumerate().filter_map(|(i, s)| Some((i, s?.to_string()))).collect())
}

fn partial_state(lists: &[ArrayRef]) -> Result<&ListArray> {
    match lists.first().and_then(|s| s.as_any().downcast_ref::<ListArray>()) {
        Some(lists) => Ok(lists),
        None => exec_err!("{NAME}: unexpected partial state"),
    }
}

fn texts_list(groups: &[Vec<String>]) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for texts in groups {
        for t in texts {
            builder.values().append_value(t);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

/// Collects one group's texts (an aggregate without `GROUP BY`).
#[derive(Debug)]
pub(crate) struct SummaryAccumulator {
    context: Arc<AiContext>,
    plan: SummaryPlan,
    texts: Vec<String>,
    bytes: usize,
}

impl SummaryAccumulator {
    pub fn new(context: Arc<AiContext>, plan: SummaryPlan) -> Self {
        Self { context, plan, texts: Vec::new(), bytes: 0 }
    }

    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.texts.push(text);
    }
}

impl Accumulator for SummaryAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(array) = values.first() {
            strings(array)?.into_iter().for_each(|(_, s)| self.push(s));
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = partial_state(states)?;
        for i in (0..lists.len()).filter(|&i| !lists.is_null(i)) {
            strings(&lists.value(i))?.into_iter().for_each(|(_, s)| self.push(s));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> =
            self.texts.iter().map(|t| ScalarValue::Utf8(Some(t.clone()))).collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let texts = std::mem::take(&mut self.texts);
        let summary = summarize_groups(&self.context, &self.plan, vec![texts])?;
        Ok(ScalarValue::Utf8(summary.into_iter().next().flatten()))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes + self.texts.capacity() * 24
    }
}

/// Collects every group's texts (an aggregate under `GROUP BY`) and summarises all groups
/// together when they are emitted.
#[derive(Debug)]
pub(crate) struct SummaryGroups {
    context: Arc<AiContext>,
    plan: SummaryPlan,
    groups: Vec<Vec<String>>,
    bytes: usize,
}

impl SummaryGroups {
    pub fn new(context: Arc<AiContext>, plan: SummaryPlan) -> Self {
        Self { context, plan, groups: Vec::new(), bytes: 0 }
    }

    fn push(&mut self, group: usize, text: String) {
        self.bytes += text.len();
        self.groups[group].push(text);
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<String>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.bytes = self.groups.iter().flatten().map(String::len).sum();
        taken
    }
}

impl GroupsAccumulator for SummaryGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let Some(array) = values.first() else { return Ok(()) };
        for (row, text) in strings(array)? {
            if opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                self.push(group_indices[row], text);
            }
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let lists = partial_state(values)?;
        for row in (0..lists.len()).filter(|&i| !lists.is_null(i)) {
            for (_, text) in strings(&lists.value(row))? {
                self.push(group_indices[row], text);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = self.take(emit_to);
        let summaries = summarize_groups(&self.context, &self.plan, groups)?;
        Ok(Arc::new(StringArray::from(summaries)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![texts_list(&self.take(emit_to))])
    }

    /// Each input row as its own partial state: a list of its text (empty when NULL or
    /// filtered out), so DataFusion can skip partial aggregation of many small groups.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(array) = values.first() else { return exec_err!("{NAME}: expected text") };
        let mut rows = vec![Vec::new(); array.len()];
        for (row, text) in strings(array)? {
            if opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                rows[row].push(text);
            }
        }
        Ok(vec![texts_list(&rows)])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes + self.groups.capacity() * 24
    }
}
