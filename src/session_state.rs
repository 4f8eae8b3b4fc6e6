//! The one place where Murakkab's DataFusion session is assembled.
//!
//! Everything that shapes how SQL is planned and run is wired here, with the reason beside it,
//! so the pipeline can be read top to bottom in one file. Other modules never build a
//! `SessionState` of their own.

use std::sync::Arc;

use datafusion::catalog::TableFunction;
use datafusion::error::Result;
use datafusion::execution::context::SessionContext;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use murakkab_catalog::MurakkabHome;
use murakkab_compiler::{LiftAiCalls, MurakkabOptions};
use murakkab_exec::{CachedBackend, KeyOrderStreams, ModelRuntime, MurakkabQueryPlanner};
use murakkab_optimizer::{
    ChoosingQueryPlanner, ModelChooser, PredicateOrderer, ReuseAiColumns, SemanticJoin,
    TopKBelowAiMap, TopKOverAiFilter,
};
use murakkab_udfs::{AiBackend, AiContext, AiWarnings, CheckedBackend};

use crate::session::SessionBuilder;

/// The backend the AI functions run on: the in-process models (or the one the embedder gave),
/// behind the persistent result cache unless it is turned off.
fn ai_backend(
    options: &SessionBuilder,
    home: &MurakkabHome,
    pool: Arc<dyn MemoryPool>,
) -> Arc<dyn AiBackend> {
    // The models' weights and batches count against the same pool as the query's operators.
    let inner = options
        .ai_backend
        .clone()
        .unwrap_or_else(|| Arc::new(ModelRuntime::new(home.clone()).with_memory_pool(pool)));
    // Checked beneath the cache, so that only answers of the promised shape are cached.
    let checked: Arc<dyn AiBackend> = Arc::new(CheckedBackend::new(inner));
    if options.result_cache { Arc::new(CachedBackend::new(checked, home)) } else { checked }
}

/// Builds the context for a session from its fixed options. The AI functions run their models
/// from `home` and count row-level warnings into `warnings`.
pub(crate) fn new_context(
    options: &SessionBuilder,
    home: &MurakkabHome,
    warnings: &Arc<AiWarnings>,
) -> Result<SessionContext> {
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    let murakkab = MurakkabOptions {
        threads,
        priority: options.priority,
        memory_limit: options.memory_limit.unwrap_or(0),
        ..MurakkabOptions::default()
    };

    let config = SessionConfig::new()
        // SHOW ALL, SHOW TABLES, DESCRIBE and the shell's \d read information_schema.
        .with_information_schema(true)
        // One partition per thread: plain SQL uses every core the user gave us.
        .with_target_partitions(threads)
        // `SET murakkab.* = ...` is checked by this extension; SHOW ALL lists its keys.
        .with_option_extension(murakkab)
        // The AI operators report rows they gave up on (timeouts) beside the functions' own.
        .with_extension(Arc::clone(warnings));

    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = options.memory_limit {
        // A fair pool: spilling operators share the limit instead of the first one taking all.
        runtime = runtime.with_memory_limit(bytes, 1.0);
    }

    let runtime = runtime.build_arc()?;
    let backend = ai_backend(options, home, Arc::clone(&runtime.memory_pool));
    let ai = Arc::new(AiContext { backend, warnings: Arc::clone(warnings) });
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        // DataFusion's file formats (CREATE EXTERNAL TABLE ... STORED AS PARQUET|CSV|JSON|ARROW),
        // built-in functions, and its analyzer, logical and physical optimizer rules, unchanged
        // and in DataFusion's order. Murakkab's one rule below touches only plans with AI
        // calls, so plain SQL is planned exactly as DataFusion plans it (the plain_sql
        // benchmark holds us to that).
        .with_default_features()
        // AI calls in projections and filters are lifted into AiMap nodes, after DataFusion's
        // rules in each optimizer pass: by then cheap filters sit as low as they can, and the
        // AiMap lets filters on its input's columns keep moving below it (fewer model calls).
        .with_optimizer_rule(Arc::new(LiftAiCalls))
        // A call a map below already answered for the same rows is read from its column.
        .with_optimizer_rule(Arc::new(ReuseAiColumns))
        .with_optimizer_rule(Arc::new(TopKBelowAiMap))
        // A top-k over an AI filter sorts first and stops the model at k passing rows.
        .with_optimizer_rule(Arc::new(TopKOverAiFilter))
        // Physical planning starts with predicate ordering, semantic joins and model choice (which sample the data below an AI call,
        // so it cannot be a logical rule: those are synchronous and see no rows), then
        // DataFusion's physical planner plus the planner for Murakkab's nodes (AiMap ->
        // AiMapExec, which streams chunks to the model).
        // After DataFusion's physical rules: the maps a top-k reads in key order keep one
        // stream each, so the stop at the top reaches the maps below.
        .with_physical_optimizer_rule(Arc::new(KeyOrderStreams))
        .with_query_planner(Arc::new(ChoosingQueryPlanner::new(
            Arc::new(MurakkabQueryPlanner),
            PredicateOrderer::new(&ai),
            SemanticJoin::new(&ai),
            ModelChooser::new(&ai),
        )));
    // Murakkab's SQL functions, registered after DataFusion's so a name clash resolves to ours.
    // They run models in-process through the executor's runtime (the shared model registry).
    builder
        .scalar_functions()
        .get_or_insert_with(Vec::new)
        .extend(murakkab_udfs::scalar_functions(&ai));
    builder
        .aggregate_functions()
        .get_or_insert_with(Vec::new)
        .extend(murakkab_udfs::aggregate_functions(&ai));
    for (name, function) in murakkab_udfs::table_functions(&ai) {
        builder
            .table_functions()
            .get_or_insert_with(Default::default)
            .insert(name.to_string(), Arc::new(TableFunction::new(name.to_string(), function)));
    }

    // Querying a file path directly (`SELECT * FROM 'data.parquet'`) resolves through the URL
    // table catalog; it reads only what the query names.
    Ok(SessionContext::new_with_state(builder.build()).enable_url_table())
}
