//! `ai_similarity(a, b [, model])`: cosine similarity of two texts' embeddings.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, Float64Builder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};
use murakkab_catalog::Task;

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::docs::ai_doc;

const NAME: &str = "ai_similarity";
const PARAMS: &[Param] =
    &[required("a", Kind::Text), required("b", Kind::Text), optional("model", Kind::ConstText)];

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "Cosine similarity (-1 to 1) of the two texts' embeddings; each distinct text is embedded \
         once. NULL a or b: NULL.",
        "ai_similarity(a, b [, model => 'auto'])",
        "> SELECT round(ai_similarity('A man is eating food.', 'A man is eating a piece of bread.'), 4) AS similarity;\n\
         +--------------------+\n\
         | similarity         |\n\
         +--------------------+\n\
         | 0.7553             |\n\
         +--------------------+",
        &[
            ("a", "The first text."),
            ("b", "The second text."),
            ("model", "'auto' (default: all-minilm-l6-v2) or an embedding model id."),
        ],
    )
});

/// The `ai_similarity` function.
#[derive(Debug)]
pub struct AiSimilarity {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiSimilarity {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiSimilarity);

impl ScalarUDFImpl for AiSimilarity {
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
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args::check_constants(NAME, PARAMS, args.scalar_arguments)?;
        let model = args::literal_text(args.scalar_arguments, 2);
        args::check_model(NAME, &self.context, model.as_deref(), Task::Embed)?;
        Ok(Arc::new(Field::new(NAME, DataType::Float64, true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let a = args::texts(&call.args, 0, rows)?;
        let b = args::texts(&call.args, 1, rows)?;
        let model = args::const_text(&call.args, 2);
        // Every distinct text of either side is embedded once.
        let both = |i: usize| !a.is_null(i) && !b.is_null(i);
        let mut keys = Vec::with_capacity(2 * rows);
        for i in 0..rows {
            keys.push(both(i).then(|| a.value(i)));
            keys.push(both(i).then(|| b.value(i)));
        }
        let text_of = |k: usize| if k.is_multiple_of(2) { a.value(k / 2) } else { b.value(k / 2) };
        let vectors =
            args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
                let card = args::model_for(
                    &self.context,
                    &call.config_options,
                    model.as_deref(),
                    Task::Embed,
                )?;
                let batch: Vec<&str> = reps.iter().map(|&k| text_of(k)).collect();
                self.context.backend.embed(&card.id, &batch)
            })?;
        let mut out = Float64Builder::with_capacity(rows);
        for i in 0..rows {
            match (&vectors[2 * i], &vectors[2 * i + 1]) {
                (Some(x), Some(y)) if x.len() == y.len() => {
                    out.append_value(crate::vector_math::cosine(x, y))
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
