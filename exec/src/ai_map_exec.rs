//! `AiMapExec`: the physical operator of an [`AiMap`] node.
//!
//! It streams: each input batch is cut into chunks of [`CHUNK_ROWS`] rows, the AI calls are
//! evaluated on one chunk at a time and the chunk goes out with its new columns before the next
//! is started. So the first rows reach the user after one chunk, a satisfied `LIMIT` (or a
//! dropped stream) stops the model after at most one more chunk, and memory stays bounded by
//! one input batch. EXPLAIN ANALYZE shows rows, model batches, rows the model computed, cache
//! hits, tokens in and out, and the model time (`elapsed_compute`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use murakkab_compiler::{MurakkabOptions, Priority};

use crate::call_stats;
use crate::scheduler::{with_cancellation, with_priority};

/// Rows per model chunk: the decoder's row batch, so chunking costs no batching. Bigger chunks
/// did not help: 3,000 UCI sentences through ai_embed took 23.9 s in 16-row chunks and 28.7 s
/// in 64-row chunks (more padding to each chunk's longest text); label scoring 13.8 s vs 14.9 s
/// for 300 rows.
pub const CHUNK_ROWS: usize = 16;
/// Rows per model chunk at batch priority: smaller, so an interactive call waits less for the
/// batch chunk that holds the device.
pub const BATCH_CHUNK_ROWS: usize = 8;

/// Appends the AI calls' columns to every input row, a chunk at a time.
#[derive(Debug)]
pub struct AiMapExec {
    input: Arc<dyn ExecutionPlan>,
    calls: Vec<(Arc<dyn PhysicalExpr>, String)>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl AiMapExec {
    /// The operator over `input`; each call produces the column of the given name.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        calls: Vec<(Arc<dyn PhysicalExpr>, String)>,
    ) -> Result<Self> {
        let input_schema = input.schema();
        let mut fields: Vec<Field> =
            input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (expr, name) in &calls {
            let field = expr.return_field(&input_schema)?;
            fields.push(field.as_ref().clone().with_name(name));
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, input_schema.metadata().clone()));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            calls,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for AiMapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AiMapExec: chunk_rows={CHUNK_ROWS}, calls=[")?;
        for (i, (expr, name)) in self.calls.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{expr} AS {name}")?;
        }
        write!(f, "]")
    }
}

/// Sets its flag when dropped.
#[derive(Debug)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The operator's own metrics, beside DataFusion's baseline (rows out, compute time).
#[derive(Debug, Clone)]
struct AiMetrics {
    /// Calls made (one per AI expression per chunk).
    model_batches: Count,
    /// Rows the model computed.
    model_rows: Count,
    /// Rows answered from the result cache.
    cache_hits: Count,
    /// Prompt tokens read.
    tokens_in: Count,
    /// Tokens generated.
    tokens_out: Count,
}

impl AiMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            model_batches: counter("model_batches"),
            model_rows: counter("model_rows"),
            cache_hits: counter("cache_hits"),
            tokens_in: counter("tokens_in"),
            tokens_out: counter("tokens_out"),
        }
    }
}

/// Evaluates the calls on one chunk and appends their columns.
fn map_chunk(
    chunk: &RecordBatch,
    calls: &[(Arc<dyn PhysicalExpr>, String)],
    schema: &SchemaRef,
    baseline: &BaselineMetrics,
    metrics: &AiMetrics,
    priority: Priority,
    cancel: &Arc<AtomicBool>,
) -> Result<RecordBatch> {
    let timer = baseline.elapsed_compute().timer();
    let mut columns = chunk.columns().to_vec();
    for (expr, _) in calls {
        // The model calls inside take their turn on the device in the session's class, on this
        // thread, so this thread's counters tell what they cost.
        let before = call_stats::current();
        let values =
            with_cancellation(cancel, || with_priority(priority, || expr.evaluate(chunk)))?;
        let work = call_stats::current().since(before);
        columns.push(values.into_array(chunk.num_rows())?);
        metrics.model_batches.add(1);
        metrics.model_rows.add(work.model_rows as usize);
        metrics.cache_hits.add(work.cache_hits as usize);
        metrics.tokens_in.add(work.tokens_in as usize);
        metrics.tokens_out.add(work.tokens_out as usize);
    }
    timer.done();
    baseline.record_output(chunk.num_rows());
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

impl ExecutionPlan for AiMapExec {
    fn name(&self) -> &'static str {
        "AiMapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for (expr, _) in &self.calls {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.pop() else {
            return exec_err!("AiMapExec needs one input");
        };
        Ok(Arc::new(AiMapExec::try_new(input, self.calls.clone())?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let priority = context
            .session_config()
            .options()
            .extensions
            .get::<MurakkabOptions>()
            .map(|o| o.priority)
            .unwrap_or_default();
        let chunk_rows = if priority == Priority::Batch { BATCH_CHUNK_ROWS } else { CHUNK_ROWS };
        let input = self.input.execute(partition, context)?;
        let calls = self.calls.clone();
        let schema = Arc::clone(&self.schema);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let ai_metrics = AiMetrics::new(&self.metrics, partition);
        // Set when this stream is dropped (LIMIT satisfied, Ctrl-C, an error elsewhere): the
        // model work in flight stops at its next forward pass.
        let cancel = Arc::new(AtomicBool::new(false));
        let on_drop = CancelOnDrop(Arc::clone(&cancel));
        let out_schema = Arc::clone(&schema);
        // Each input batch becomes a stream of chunks; `flat_map` pulls them one at a time, so
        // nothing past the chunk being consumed is computed.
        let stream = input.flat_map(move |batch| {
            let _owned_by_the_stream = &on_drop;
            let cancel = Arc::clone(&cancel);
            let calls = calls.clone();
            let schema = Arc::clone(&schema);
            let baseline = baseline.clone();
            let ai_metrics = ai_metrics.clone();
            let chunks: Vec<Result<RecordBatch>> = match batch {
                Err(e) => vec![Err(e)],
                Ok(batch) => (0..batch.num_rows())
                    .step_by(chunk_rows)
                    .map(|start| Ok(batch.slice(start, chunk_rows.min(batch.num_rows() - start))))
                    .collect(),
            };
            futures::stream::iter(chunks).then(move |chunk| {
                let (calls, schema, baseline, ai_metrics, cancel) = (
                    calls.clone(),
                    Arc::clone(&schema),
                    baseline.clone(),
                    ai_metrics.clone(),
                    Arc::clone(&cancel),
                );
                async move {
                    let chunk = chunk?;
                    // Model work runs off the async threads, so dropping this stream (which
                    // drops the await below and sets `cancel`) takes effect at once and the
                    // work in flight stops at its next forward pass.
                    SpawnedTask::spawn_blocking(move || {
                        map_chunk(
                            &chunk,
                            &calls,
                            &schema,
                            &baseline,
                            &ai_metrics,
                            priority,
                            &cancel,
                        )
                    })
                    .join()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                }
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
