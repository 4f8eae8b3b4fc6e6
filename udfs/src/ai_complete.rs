//! `ai_complete(prompt [, model, max_tokens, temperature, seed])`: generated text.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};
use murakkab_catalog::Task;

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::backend::CompletionOptions;
use crate::docs::ai_doc;
use crate::prompts;

const NAME: &str = "ai_complete";
const PARAMS: &[Param] = &[
    required("prompt", Kind::Text),
    optional("model", Kind::ConstText),
    optional("max_tokens", Kind::ConstInt),
    optional("temperature", Kind::ConstFloat),
    optional("seed", Kind::ConstInt),
];
/// Default cap on generated tokens.
pub const DEFAULT_MAX_TOKENS: i64 = 128;

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "Generates text that answers the prompt. Greedy (deterministic) unless temperature > 0; \
         with a temperature, the same seed and prompt give the same text. NULL prompt: NULL.",
        "ai_complete(prompt [, model => 'auto', max_tokens => 128, temperature => 0, seed => 0])",
        "> SELECT ai_complete('What is the capital of France? Answer in one word.',\n\
                            max_tokens => 8) AS answer;\n\
         +---------------------------------+\n\
         | answer                          |\n\
         +---------------------------------+\n\
         | The capital of France is Paris. |\n\
         +---------------------------------+",
        &[
            ("prompt", "The prompt: text or a text column."),
            ("model", "'auto' (default) or a model id that can generate (see \\models)."),
            ("max_tokens", "Most tokens to generate, 1 to 4096 (default 128)."),
            ("temperature", "0 (default) for greedy decoding; up to 2 for seeded sampling."),
            ("seed", "Seed for sampling (default 0)."),
        ],
    )
});

/// The `ai_complete` function.
#[derive(Debug)]
pub struct AiComplete {
    signature: Signature,
    context: Arc<AiContext>,
}

impl AiComplete {
    /// The function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context }
    }
}

crate::args::impl_eq_by_context!(AiComplete);

impl ScalarUDFImpl for AiComplete {
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
        let model = args::literal_text(args.scalar_arguments, 1);
        args::check_model(NAME, &self.context, model.as_deref(), Task::Generate)?;
        Ok(Arc::new(Field::new(NAME, DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, call: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = call.number_rows;
        let prompts = args::texts(&call.args, 0, rows)?;
        let options = CompletionOptions {
            max_tokens: args::const_int(
                NAME,
                "max_tokens",
                &call.args,
                2,
                DEFAULT_MAX_TOKENS,
                1..=4096,
            )? as usize,
            temperature: args::const_float(NAME, "temperature", &call.args, 3, 0.0, 0.0..=2.0)?,
            seed: args::const_int(NAME, "seed", &call.args, 4, 0, 0..=i64::MAX)? as u64,
        };
        let model = args::const_text(&call.args, 1);
        let keys = (0..rows).map(|i| (!prompts.is_null(i)).then(|| prompts.value(i))).collect();
        let values = args::run_distinct(NAME, &self.context, &call.config_options, keys, |reps| {
            let card = args::model_for(
                &self.context,
                &call.config_options,
                model.as_deref(),
                Task::Generate,
            )?;
            let texts: Vec<&str> = reps.iter().map(|&r| prompts.value(r)).collect();
            self.context.backend.complete(&card.id, &prompts::complete(&texts), &options)
        })?;
        let mut out = StringBuilder::with_capacity(rows, rows * 16);
        for v in values {
            out.append_option(v);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
