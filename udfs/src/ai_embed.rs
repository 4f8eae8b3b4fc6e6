//! `ai_embed(text [, model])`: a unit-length embedding vector.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, FixedSizeListBuilder, Float32Builder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};
use murakkab_catalog::Task;

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::docs::ai_doc;

const NAME: &str = "ai_embed";
const PARAMS: &[Param] = &[required("text", Kind::Text), optional("model", Kind::ConstText)];

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "The text's embedding: a unit-length FixedSizeList<Float32> whose length is the model's \
         width (384 for all-minilm-l6-v2). Compare vectors with cosine_similarity. NULL text: NULL.",
        "ai_embed(text [, model => 'auto'])",
        "> SELECT arrow_typeof(ai_embed('hello'));\n\
         +-----------------------------------------------------------+\n\
         | FixedSizeList(384 x Float32)                              |\n\
         +-----------------------------------------------------------+",
        &[
            ("text", "The text to embed."),
            ("model", "'auto' (default: all-minilm-l6-v2) or an embedding model id."),
        ],
    )
});

/// The `ai_embed` function.
#[derive(Debug)]
pub struct AiEmbed {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiEmbed {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

args::impl_eq_by_context!(AiEmbed);

/// The vector type of embeddings of width `dim`.
pub fn vector_type(dim: usize) -> DataType {
    DataType::new_fixed_size_list(DataType::Float32, dim as i32, true)
}

impl ScalarUDFImpl for AiEmbed {
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
        plan_err!("{NAME}: the return type depends on the model; use return_field_from_args")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args::check_constants(NAME, PARAMS, args.scalar_arguments)?;
        let model = args::literal_text(args.scalar_arguments, 1);
        let card = args::check_model(NAME, &self.context, model.as_deref(), Task::Embed)?;
        let Some(dim) = card.embedding_dim else {
            return plan_err!("{NAME}: model '{}' does not declare its embedding width", card.id);
        };
        Ok(Arc::new(Field::new(NAME, vector_type(dim), true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let texts = args::texts(&call.args, 0, rows)?;
        let DataType::FixedSizeList(_, dim) = call.return_field.data_type() else {
            return exec_err!("{NAME}: unexpected return type {}", call.return_field.data_type());
        };
        let dim = *dim as usize;
        let model = args::const_text(&call.args, 1);
        let keys = (0..rows).map(|i| (!texts.is_null(i)).then(|| texts.value(i))).collect();
        let values = args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
            let card = self.context.backend.resolve_model(model.as_deref(), Task::Embed)?;
            let batch: Vec<&str> = reps.iter().map(|&r| texts.value(r)).collect();
            self.context.backend.embed(&card.id, &batch)
        })?;
        let mut out = FixedSizeListBuilder::with_capacity(
            Float32Builder::with_capacity(rows * dim),
            dim as i32,
            rows,
        );
        for v in values {
            match v {
                Some(v) if v.len() == dim => {
                    out.values().append_slice(&v);
                    out.append(true);
                }
                Some(v) => {
                    return exec_err!(
                        "{NAME}: the model returned {} values, expected {dim}",
                        v.len()
                    );
                }
                None => {
                    out.values().append_nulls(dim);
                    out.append(false);
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
