//! The AI SQL functions of Murakkab: names, signatures, argument checks, return types, prompts
//! and documentation, one file per function.
//!
//! Functions here describe *what* a call means; running a model is a backend's job
//! ([`AiBackend`], implemented by the executor crate). That split keeps prompts and types in one
//! readable place and lets the compiler lift AI calls into plan nodes the optimizer can rewrite.

mod ai_classify;
mod ai_complete;
mod ai_embed;
mod ai_extract;
mod ai_filter;
mod ai_search;
mod ai_similarity;
mod ai_summarize_agg;
mod args;
mod backend;
mod checked_backend;
mod cosine_similarity;
mod docs;
mod embedding_store;
mod function_stats;
mod model_plan;
pub mod prompts;
mod statement;
mod summary_accumulators;
pub mod vector_math;
mod warnings;

use std::sync::Arc;

use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

pub use ai_classify::AiClassify;
pub use ai_complete::{AiComplete, DEFAULT_MAX_TOKENS};
pub use ai_embed::{AiEmbed, vector_type};
pub use ai_extract::{AiExtract, parse_schema};
pub use ai_filter::AiFilter;
pub use ai_search::AiSearch;
pub use ai_similarity::AiSimilarity;
pub use ai_summarize_agg::AiSummarizeAgg;
pub use args::AiContext;
pub use backend::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, reuse_allowed,
    with_reuse,
};
pub use checked_backend::CheckedBackend;
pub use cosine_similarity::CosineSimilarity;
pub use docs::DOC_SECTION;
pub use function_stats::{FunctionStats, function_stats};
pub use model_plan::{
    Cascade, ModelPlan, answers_agree, best_label, stage_confidence, top_probability,
};
pub use warnings::{AiWarning, AiWarnings};

/// Every scalar function this crate provides, ready to register in a session whose models run
/// on `context`'s backend.
pub fn scalar_functions(context: &Arc<AiContext>) -> Vec<Arc<ScalarUDF>> {
    let c = || Arc::clone(context);
    vec![
        Arc::new(ScalarUDF::from(CosineSimilarity::new())),
        Arc::new(ScalarUDF::from(AiComplete::new(c()))),
        Arc::new(ScalarUDF::from(AiFilter::new(c()))),
        Arc::new(ScalarUDF::from(AiClassify::new(c()))),
        Arc::new(ScalarUDF::from(AiEmbed::new(c()))),
        Arc::new(ScalarUDF::from(AiSimilarity::new(c()))),
        Arc::new(ScalarUDF::from(AiExtract::new(c()))),
    ]
}

/// Every aggregate function this crate provides (`ai_summarize_agg`).
pub fn aggregate_functions(context: &Arc<AiContext>) -> Vec<Arc<AggregateUDF>> {
    vec![Arc::new(AggregateUDF::from(AiSummarizeAgg::new(Arc::clone(context))))]
}

/// The documentation of each table function, by SQL name.
pub fn table_function_docs() -> Vec<(&'static str, &'static datafusion::logical_expr::Documentation)>
{
    vec![("ai_search", &ai_search::DOC)]
}

/// Every table function this crate provides, by SQL name (`ai_search`).
pub fn table_functions(
    context: &Arc<AiContext>,
) -> Vec<(&'static str, Arc<dyn datafusion::catalog::TableFunctionImpl>)> {
    vec![("ai_search", Arc::new(AiSearch::new(Arc::clone(context))))]
}
