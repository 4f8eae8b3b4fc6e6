//! `ai_filter(text, condition [, model])`: does the condition hold for the text.
//!
//! Scored, never parsed: the model's probabilities of describing the text by the condition and
//! by its negation are compared (`prompts::filter`), so the answer is always a boolean and never
//! depends on free text the model might produce.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, BooleanBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::docs::ai_doc;
use crate::model_plan::{self, ModelPlan, ScoringRows};
use crate::prompts;

const NAME: &str = "ai_filter";
const PARAMS: &[Param] = &[
    required("text", Kind::Text),
    required("condition", Kind::Text),
    optional("model", Kind::ConstText),
];

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "True when the condition holds for the text, judged by a language model that weighs the \
         condition against its negation as a description of the text (it never parses free \
         text). Word the condition as a statement: 'the review is negative', 'the email asks for \
         money'. NULL text or condition: NULL.",
        "ai_filter(text, condition [, model => 'auto'])",
        "> SELECT ai_filter('I love this phone, it is great.', 'the review is positive') AS ok;\n\
         +------+\n\
         | ok   |\n\
         +------+\n\
         | true |\n\
         +------+",
        &[
            ("text", "The text to judge."),
            (
                "condition",
                "A statement about the text, e.g. 'the review is positive'; negated by rule ('is' → 'is not', 'mentions' → 'does not mention').",
            ),
            (
                "model",
                "'auto' (default: the optimizer chooses), a model id that can score labels (see \\models), or 'cascade(cheap_model, reference_model, threshold)'.",
            ),
        ],
    )
});

/// The `ai_filter` function.
#[derive(Debug)]
pub struct AiFilter {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiFilter {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiFilter);

impl ScalarUDFImpl for AiFilter {
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
        Ok(DataType::Boolean)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args::check_constants(NAME, PARAMS, args.scalar_arguments)?;
        let model = args::literal_text(args.scalar_arguments, 2);
        model_plan::check_plan(NAME, &self.context, model.as_deref())?;
        Ok(Arc::new(Field::new(NAME, DataType::Boolean, true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let texts = args::texts(&call.args, 0, rows)?;
        let conditions = args::texts(&call.args, 1, rows)?;
        let plan = ModelPlan::parse(args::const_text(&call.args, 2).as_deref())
            .map_err(|e| datafusion::common::exec_datafusion_err!("{NAME}: model: {e}"))?;
        let keys = (0..rows)
            .map(|i| {
                (!texts.is_null(i) && !conditions.is_null(i))
                    .then(|| (texts.value(i), conditions.value(i)))
            })
            .collect();
        let values = args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
            // The condition is in the labels: one scoring call per condition.
            args::score_in_groups(
                reps,
                |r| conditions.value(r),
                |condition, rows| {
                    if condition.trim().is_empty() {
                        return Err("the condition is empty: expected a statement about the \
                                    text, e.g. 'the review is positive'"
                            .into());
                    }
                    let scoring = ScoringRows {
                        rows,
                        texts: rows.iter().map(|&r| texts.value(r)).collect(),
                        prompt: |subset: &[usize]| {
                            let batch: Vec<&str> = subset.iter().map(|&r| texts.value(r)).collect();
                            prompts::filter(&batch)
                        },
                    };
                    let config = &call.config_options;
                    let labels = prompts::filter_labels(condition);
                    model_plan::score_with_plan(&self.context, config, &plan, &scoring, &labels)
                },
                |_, p| p[0] >= p[1],
            )
        })?;
        let mut out = BooleanBuilder::with_capacity(rows);
        for v in values {
            out.append_option(v);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
