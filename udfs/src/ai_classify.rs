//! `ai_classify(text, labels [, model])`: the most likely of the given labels.
//!
//! Every label is scored as the start of the answer (multi-token labels exactly) and the most
//! probable one is returned, so the answer is always one of the labels.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ListArray, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::docs::ai_doc;
use crate::model_plan::{self, ModelPlan, ScoringRows};
use crate::prompts;

const NAME: &str = "ai_classify";
const PARAMS: &[Param] = &[
    required("text", Kind::Text),
    required("labels", Kind::TextList),
    optional("model", Kind::ConstText),
];

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "The label that best describes the text, chosen by scoring every label with a language \
         model (never by parsing free text): the result is always one of the labels. NULL text \
         or NULL labels: NULL.",
        "ai_classify(text, labels [, model => 'auto'])",
        "> SELECT ai_classify('The battery died after a week.', ['positive', 'negative']) AS label;\n\
         +-----------+\n\
         | label     |\n\
         +-----------+\n\
         | negative  |\n\
         +-----------+",
        &[
            ("text", "The text to classify."),
            ("labels", "The candidate labels, a list of strings such as ['sport', 'politics']."),
            (
                "model",
                "'auto' (default: the optimizer chooses), a model id that can score labels (see \\models), or 'cascade(cheap_model, reference_model, threshold)'; 'cascade(..., target=label)' keeps a cheap model's answer where it is sure whether the answer is that label (for a call only compared with it).",
            ),
        ],
    )
});

/// The `ai_classify` function.
#[derive(Debug)]
pub struct AiClassify {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiClassify {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiClassify);

/// Each row's labels (`None` for a NULL list), checked: at least one, none NULL or empty.
fn label_lists(call: &ScalarFunctionArgs) -> Result<Vec<Option<Vec<String>>>> {
    let rows = call.number_rows;
    let array = call.args[1].to_array(rows)?;
    let array = cast(&array, &DataType::new_list(DataType::Utf8, true))?;
    let Some(lists) = array.as_any().downcast_ref::<ListArray>() else {
        return exec_err!("{NAME}: labels must be a list of strings");
    };
    (0..rows)
        .map(|i| {
            if lists.is_null(i) {
                return Ok(None);
            }
            let values = lists.value(i);
            let Some(values) = values.as_any().downcast_ref::<StringArray>() else {
                return exec_err!("{NAME}: labels must be a list of strings");
            };
            if values.is_empty() {
                return exec_err!("{NAME}: labels must hold at least one label, got []");
            }
            let mut labels = Vec::with_capacity(values.len());
            for j in 0..values.len() {
                if values.is_null(j) || values.value(j).trim().is_empty() {
                    return exec_err!("{NAME}: labels must not be NULL or empty strings");
                }
                labels.push(values.value(j).to_string());
            }
            Ok(Some(labels))
        })
        .collect()
}

impl ScalarUDFImpl for AiClassify {
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

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args::check_constants(NAME, PARAMS, args.scalar_arguments)?;
        let model = args::literal_text(args.scalar_arguments, 2);
        model_plan::check_plan(NAME, &self.context, model.as_deref())?;
        Ok(Arc::new(Field::new(NAME, DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let texts = args::texts(&call.args, 0, rows)?;
        let labels = label_lists(&call)?;
        let plan = ModelPlan::parse(args::const_text(&call.args, 2).as_deref())
            .map_err(|e| datafusion::common::exec_datafusion_err!("{NAME}: model: {e}"))?;
        let keys = (0..rows)
            .map(|i| match &labels[i] {
                Some(l) if !texts.is_null(i) => Some((texts.value(i), l.clone())),
                _ => None,
            })
            .collect();
        let values = args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
            // One scoring call per distinct label set (usually exactly one).
            args::score_in_groups(
                reps,
                |r| labels[r].clone().unwrap_or_default(),
                |label_set, rows| {
                    let scoring = ScoringRows {
                        rows,
                        texts: rows.iter().map(|&r| texts.value(r)).collect(),
                        prompt: |subset: &[usize]| {
                            let batch: Vec<&str> = subset.iter().map(|&r| texts.value(r)).collect();
                            prompts::classify(&batch, label_set)
                        },
                    };
                    let config = &call.config_options;
                    model_plan::score_with_plan(&self.context, config, &plan, &scoring, label_set)
                },
                |label_set, p| label_set[model_plan::best_label(&p)].clone(),
            )
        })?;
        let mut out = StringBuilder::with_capacity(rows, rows * 8);
        for v in values {
            out.append_option(v);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
