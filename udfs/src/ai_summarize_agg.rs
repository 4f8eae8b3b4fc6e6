//! `ai_summarize_agg(text [, model])`: one summary of all the texts in a group.
//!
//! Any group size: the texts are packed into chunks that fit the model's context (map), each
//! chunk is summarised (all chunks in one batched generation), and the partial summaries are
//! summarised again until one is left (reduce).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, ListArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature};
use datafusion::physical_expr::expressions::Literal;
use murakkab_catalog::Task;

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::backend::CompletionOptions;
use crate::docs::ai_doc;
use crate::prompts;

const NAME: &str = "ai_summarize_agg";
const PARAMS: &[Param] = &[required("text", Kind::Text), optional("model", Kind::ConstText)];
/// Tokens of one summary.
const SUMMARY_TOKENS: usize = 120;
/// Most input tokens per chunk: below the context of every model, and small enough that one
/// chunk's prefill stays a few seconds on a CPU.
const MAX_CHUNK_TOKENS: usize = 2048;
/// Tokens set aside for the instruction and chat markers.
const INSTRUCTION_TOKENS: usize = 96;

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "An aggregate: one short summary of all the texts in a group, of any size (map-reduce \
         over chunks that fit the model's context). NULL texts are skipped; a group with no \
         text gives NULL.",
        "ai_summarize_agg(text [, model => 'auto'])",
        "> SELECT product, ai_summarize_agg(review) AS summary FROM reviews GROUP BY product;\n\
         -- one row per product: the product and a two-to-three-sentence summary of all its\n\
         -- reviews, however many there are",
        &[
            ("text", "The texts to summarise (one per row)."),
            ("model", "'auto' (default) or a model id that can generate (see \\models)."),
        ],
    )
});

/// The `ai_summarize_agg` aggregate.
#[derive(Debug)]
pub struct AiSummarizeAgg {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiSummarizeAgg {
    /// The aggregate over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiSummarizeAgg);

impl AggregateUDFImpl for AiSummarizeAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        args::coerce(NAME, PARAMS, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("texts", DataType::new_list(DataType::Utf8, true), true))])
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let model = match acc_args.exprs.get(1) {
            None => None,
            Some(e) => match e.downcast_ref::<Literal>().map(|l| l.value()) {
                Some(
                    ScalarValue::Utf8(m) | ScalarValue::Utf8View(m) | ScalarValue::LargeUtf8(m),
                ) => m.clone(),
                Some(v) if v.is_null() => None,
                _ => return exec_err!("{NAME}: argument 'model' must be a constant string"),
            },
        };
        let card = args::check_model(NAME, &self.context, model.as_deref(), Task::Generate)?;
        Ok(Box::new(SummarizeAccumulator {
            context: Arc::clone(&self.context),
            model: card.id,
            texts: Vec::new(),
            bytes: 0,
        }))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// Collects a group's texts; summarises them when the group is complete.
#[derive(Debug)]
struct SummarizeAccumulator {
    context: Arc<AiContext>,
    model: String,
    texts: Vec<String>,
    bytes: usize,
}

impl SummarizeAccumulator {
    fn push_strings(&mut self, array: &ArrayRef) -> Result<()> {
        let strings = cast(array, &DataType::Utf8)?;
        let Some(strings) = strings.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{NAME}: expected text");
        };
        for s in strings.iter().flatten() {
            self.bytes += s.len();
            self.texts.push(s.to_string());
        }
        Ok(())
    }

    /// Packs texts into chunks of at most `budget` tokens (a longer text is a chunk alone and
    /// is cut to fit by the backend, with a warning).
    fn chunks(&self, texts: Vec<String>, budget: usize) -> Result<Vec<Vec<String>>, String> {
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut used = 0;
        for text in texts {
            let tokens = self.context.backend.count_tokens(&self.model, &text)? + 2;
            if chunks.is_empty() || used + tokens > budget {
                chunks.push(Vec::new());
                used = 0;
            }
            used += tokens;
            if let Some(last) = chunks.last_mut() {
                last.push(text);
            }
        }
        Ok(chunks)
    }

    fn summarize(&self) -> Result<Option<String>, String> {
        let backend = &self.context.backend;
        let budget = backend
            .context_length(&self.model)?
            .saturating_sub(SUMMARY_TOKENS + INSTRUCTION_TOKENS)
            .clamp(64, MAX_CHUNK_TOKENS);
        let options = CompletionOptions { max_tokens: SUMMARY_TOKENS, temperature: 0.0, seed: 0 };
        let mut texts = self.texts.clone();
        loop {
            let chunks = self.chunks(texts, budget)?;
            let batches: Vec<_> = chunks.iter().map(|c| prompts::summarize(c)).collect();
            // One generation call for every chunk of this level: they are batched together.
            let merged = crate::backend::ChatBatch {
                shared: batches.first().map(|b| b.shared.clone()).unwrap_or_default(),
                rows: batches.into_iter().flat_map(|b| b.rows).collect(),
                calibration_row: None,
            };
            let out = backend.complete(&self.model, &merged, &options)?;
            self.context.warnings.record(
                NAME,
                "prompt longer than the model's context, cut in the middle",
                out.truncated,
                None,
            );
            let summaries: Vec<String> = out.rows.into_iter().collect::<Result<Vec<_>, _>>()?;
            if summaries.len() <= 1 {
                return Ok(summaries.into_iter().next().filter(|s| !s.is_empty()));
            }
            texts = summaries;
        }
    }
}

impl Accumulator for SummarizeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        match values.first() {
            Some(array) => self.push_strings(array),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first().and_then(|s| s.as_any().downcast_ref::<ListArray>())
        else {
            return exec_err!("{NAME}: unexpected partial state");
        };
        for i in 0..lists.len() {
            if !lists.is_null(i) {
                self.push_strings(&lists.value(i))?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> =
            self.texts.iter().map(|t| ScalarValue::Utf8(Some(t.clone()))).collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.texts.is_empty() {
            return Ok(ScalarValue::Utf8(None));
        }
        match self.summarize() {
            Ok(summary) => Ok(ScalarValue::Utf8(summary)),
            Err(e) if e.contains("not pulled") || e.contains("unknown model") => {
                exec_err!("{NAME}: {e}")
            }
            Err(e) => {
                self.context.warnings.record(NAME, "no usable model output, NULL", 1, Some(e));
                Ok(ScalarValue::Utf8(None))
            }
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes + self.texts.capacity() * 24
    }
}
