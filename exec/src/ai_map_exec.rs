//! `AiMapExec`: the physical operator of an [`AiMap`] node.
//!
//! It streams: the input is re-cut into chunks ([`CHUNK_ROWS`] rows first, doubling up to
//! [`MAX_CHUNK_ROWS`], in rows a full model computes: see [`MAX_CHUNK_SCALE`]), the AI calls are
//! evaluated on one chunk at a time and the chunk goes out with its new columns before the next
//! is started. So the first rows reach the user after one
//! small chunk, a satisfied `LIMIT` (or a dropped stream) stops the model after at most one more
//! chunk, and memory stays bounded by one input batch and one chunk. EXPLAIN ANALYZE shows
//! rows, the models called, model calls and their mean rows, rows the model computed, cache and
//! dedup hits, tokens in and out, rows with warnings, the model time (`elapsed_compute`, summed
//! over partitions, which wait on each other for the device), the wall time while any partition
//! was evaluating (`model_wall`: what the optimizer's `time=` estimate is compared with), CPU
//! time, and energy and gCO2e (measured or modeled).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr, ScalarFunctionExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use murakkab_compiler::{MurakkabOptions, OnError, Priority};
use murakkab_udfs::{AiWarnings, function_stats};

use crate::call_stats;
use crate::scheduler::{with_cancellation, with_priority};

/// Rows of the first model chunk: the decoder's row batch, so the first rows reach the user
/// after one row batch of model work.
pub const CHUNK_ROWS: usize = 16;
/// The largest chunk: chunks double from [`CHUNK_ROWS`] up to this. A bigger chunk gives the
/// model runtime more rows to sort by length before it cuts them into row batches, so less of
/// each batch is padding, and fewer calls each pay the per-call work (the instruction's cache
/// lookup, the calibration row). Label scoring of 230 UCI sentences with Qwen (batching on,
/// optimizer off): 28.0 s of model time in 16-row chunks, 20.8 s in 64, 17.9 s in 256.
/// Doubling keeps the first rows as early as before and bounds the model work done past a
/// satisfied `LIMIT` by the work already delivered (while the share of rows a full model
/// computes holds; see [`MAX_CHUNK_SCALE`]).
pub const MAX_CHUNK_ROWS: usize = 256;
/// How many times more rows than [`ChunkSizes`] names a chunk may hold when the chunk before
/// it needed a full model for only some of its rows (a cascade settling most of them on its
/// proxy, answers from the result cache, duplicates): the sizes count rows a full model
/// computes, so a cascade's reference still gets batches of the size the doubling intends.
/// On 428 UCI reviews, a proxy cascade escalating 29% sent its reference batches of 5, 9, 19,
/// 37 and 14 rows in chunks of 16 to 256; the first chunk, whose share is not known yet, keeps
/// its 16 rows.
pub const MAX_CHUNK_SCALE: usize = 8;
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
    /// The models the calls ran on, filled in during execution for EXPLAIN ANALYZE.
    models: Arc<Mutex<Vec<String>>>,
    /// Rows of the first and the largest chunk: set by the session's options when executed.
    chunk_sizes: Arc<Mutex<ChunkSizes>>,
    /// The session's grid intensity (g/kWh), set when executed, for EXPLAIN ANALYZE.
    carbon_intensity: SharedF64,
    /// Wall time while any of its partitions was evaluating a chunk, for EXPLAIN ANALYZE.
    busy: BusyClock,
    /// The optimizer's choices and estimates for the calls, shown beside the actual figures.
    notes: Vec<String>,
    /// The optimizer's estimate of the calls' model time, ms.
    estimated_ms: Option<u64>,
    /// Set under a top-k over an AI filter (`TopKOverAiFilter`): the input is read in this
    /// order, as one stream.
    key_order: Option<KeyOrder>,
}

/// How a map under a top-k reads its input.
#[derive(Debug, Clone)]
struct KeyOrder {
    /// The order the input must arrive in (the top-k's keys, sorted below the map).
    ordering: LexOrdering,
    /// Stop pulling input once this many output rows satisfy the predicate (the filter over
    /// the map): those rows include the top k that pass.
    stop: Option<(Arc<dyn PhysicalExpr>, usize)>,
}

impl AiMapExec {
    /// This operator with the optimizer's notes and time estimate (ms) attached.
    pub fn with_notes(mut self, notes: Vec<String>, estimated_ms: Option<u64>) -> Self {
        self.notes = notes;
        self.estimated_ms = estimated_ms;
        self
    }

    /// This operator reading its input in the order the input has now (the top-k's keys), as
    /// one stream, and, with `stop`, ending once that many of its output rows satisfy the
    /// predicate. An input with no order is read as before: nothing would guarantee that the
    /// rows read first are the top ones, so nothing stops.
    pub fn in_key_order(self, stop: Option<(Arc<dyn PhysicalExpr>, usize)>) -> Self {
        let Some(ordering) = self.input.output_ordering().cloned() else { return self };
        self.with_key_order(Some(KeyOrder { ordering, stop }))
    }

    /// Whether this operator reads its input in a top-k's key order (see [`Self::in_key_order`]).
    pub fn reads_in_key_order(&self) -> bool {
        self.key_order.is_some()
    }

    fn with_key_order(mut self, key_order: Option<KeyOrder>) -> Self {
        if key_order.is_some() {
            // The rows keep the input's order (which the requirement below makes the keys'); the
            // appended columns do not change it.
            let mut properties = self.properties.as_ref().clone();
            properties.eq_properties = EquivalenceProperties::new_with_orderings(
                Arc::clone(&self.schema),
                self.input.output_ordering().cloned(),
            );
            self.properties = Arc::new(properties);
        }
        self.key_order = key_order;
        self
    }

    /// The optimizer's estimate of this operator's model time, seconds.
    pub fn estimated_seconds(&self) -> Option<f64> {
        self.estimated_ms.map(|ms| ms as f64 / 1000.0)
    }

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
            models: Arc::new(Mutex::new(Vec::new())),
            chunk_sizes: Arc::new(Mutex::new(ChunkSizes::growing(CHUNK_ROWS, MAX_CHUNK_ROWS))),
            carbon_intensity: SharedF64::new(0.0),
            busy: BusyClock::default(),
            notes: Vec::new(),
            estimated_ms: None,
            key_order: None,
        })
    }
}

/// The optimizer's estimate of the model time of every AI operator in `plan`, summed; `None`
/// when it estimated none of them.
pub fn estimated_model_seconds(plan: &Arc<dyn ExecutionPlan>) -> Option<f64> {
    let own = plan.downcast_ref::<AiMapExec>().and_then(AiMapExec::estimated_seconds);
    plan.children().into_iter().filter_map(estimated_model_seconds).chain(own).reduce(|a, b| a + b)
}

impl DisplayAs for AiMapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let chunk_rows = self.chunk_sizes.lock().map(|c| c.to_string()).unwrap_or_default();
        write!(f, "AiMapExec: chunk_rows={chunk_rows}, calls=[")?;
        for (i, (expr, name)) in self.calls.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{expr} AS {name}")?;
        }
        write!(f, "]")?;
        match self.key_order.as_ref().map(|o| &o.stop) {
            Some(Some((predicate, rows))) => {
                write!(f, ", in key order until {rows} rows pass {predicate}")?
            }
            Some(None) => write!(f, ", in key order")?,
            None => {}
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        // After execution (EXPLAIN ANALYZE): what ran, and how full the model's batches were.
        let models = self.models.lock().map(|m| m.join(", ")).unwrap_or_default();
        if !models.is_empty() {
            write!(f, ", models=[{models}]")?;
        }
        let wall = self.busy.total();
        if !wall.is_zero() {
            write!(f, ", model_wall={:.2}s", wall.as_secs_f64())?;
        }
        let metrics = self.metrics.clone_inner();
        let calls = metrics.sum_by_name("model_calls").map_or(0, |v| v.as_usize());
        let rows = metrics.sum_by_name("model_rows").map_or(0, |v| v.as_usize());
        if calls > 0 {
            write!(f, ", mean_batch_rows={:.1}", rows as f64 / calls as f64)?;
        }
        if let Some(mj) = metrics.sum_by_name("energy_mj").map(|v| v.as_usize()).filter(|&j| j > 0)
        {
            let joules = mj as f64 / 1000.0;
            let intensity = self.carbon_intensity.get();
            let grams = crate::energy::grams_co2e(joules, intensity);
            let source = if crate::energy::rapl_available() { "measured" } else { "modeled" };
            write!(f, ", energy={joules:.2}J ({source}), co2e={:.3}mg", grams * 1000.0)?;
        }
        Ok(())
    }
}

/// The cancellation of one stream's model work. Each chunk gets its own flag, so a chunk that
/// passes `murakkab.model_timeout_s` can be stopped alone; dropping the stream stops the chunk
/// in flight and every later one.
#[derive(Debug, Clone, Default)]
struct StreamCancel {
    /// Set when the stream is dropped; the flag of the chunk in flight, if any.
    state: Arc<Mutex<(bool, Option<Arc<AtomicBool>>)>>,
}

impl StreamCancel {
    /// A flag for the next chunk, already set if the stream is gone.
    fn chunk_flag(&self) -> Arc<AtomicBool> {
        let Ok(mut state) = self.state.lock() else {
            return Arc::new(AtomicBool::new(true));
        };
        let flag = Arc::new(AtomicBool::new(state.0));
        state.1 = Some(Arc::clone(&flag));
        flag
    }

    fn cancel(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = true;
            if let Some(flag) = &state.1 {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Cancels its stream's model work when dropped.
#[derive(Debug)]
struct CancelOnDrop(StreamCancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The operator's own metrics, beside DataFusion's baseline (rows out, compute time).
#[derive(Debug, Clone)]
struct AiMetrics {
    /// Chunks evaluated, times AI expressions.
    chunks: Count,
    /// Calls into a model (a forward batch each).
    model_calls: Count,
    /// Rows the model computed.
    model_rows: Count,
    /// Rows answered from the result cache.
    cache_hits: Count,
    /// Rows answered by an identical row of the same chunk.
    dedup_hits: Count,
    /// Rows cut to fit the context or left NULL for lack of a usable answer.
    warned_rows: Count,
    /// Rows a cascade's cheap model was unsure of, sent on to the reference model.
    escalated_rows: Count,
    /// Prompt tokens read.
    tokens_in: Count,
    /// Tokens generated.
    tokens_out: Count,
    /// Process CPU time during this operator's model turns, ms.
    cpu_ms: Count,
    /// Energy of this operator's model turns, mJ (measured or modeled, see `crate::energy`).
    energy_mj: Count,
}

impl AiMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            chunks: counter("chunks"),
            model_calls: counter("model_calls"),
            model_rows: counter("model_rows"),
            cache_hits: counter("cache_hits"),
            dedup_hits: counter("dedup_hits"),
            warned_rows: counter("warned_rows"),
            escalated_rows: counter("escalated_rows"),
            tokens_in: counter("tokens_in"),
            tokens_out: counter("tokens_out"),
            cpu_ms: counter("cpu_ms"),
            energy_mj: counter("energy_mj"),
        }
    }
}

/// What evaluating a chunk needs, shared by the chunks of one stream.
#[derive(Debug, Clone)]
struct ChunkContext {
    calls: Vec<(Arc<dyn PhysicalExpr>, String)>,
    schema: SchemaRef,
    baseline: BaselineMetrics,
    metrics: AiMetrics,
    models: Arc<Mutex<Vec<String>>>,
    priority: Priority,
    cancel: StreamCancel,
    power: crate::energy::CpuPowerModel,
    /// `murakkab.model_timeout_s`, when set.
    timeout: Option<Duration>,
    on_error: OnError,
    /// The session's warnings, for chunks that time out (the functions record their own).
    warnings: Option<Arc<AiWarnings>>,
    /// What share of the last chunk's rows a full model computed, for the next chunk's size.
    full_model_share: SharedF64,
    /// The operator's clock of time with any partition evaluating.
    busy: BusyClock,
}

/// Wall time during which at least one of an operator's partitions was evaluating a chunk:
/// the union of their intervals. Partitions queue on the device for their model calls, so
/// `elapsed_compute`, their sum, counts the waiting too (about twice the wall time over two
/// partitions), which made it no measure to hold an estimate against.
#[derive(Debug, Clone, Default)]
struct BusyClock(Arc<Mutex<BusyState>>);

#[derive(Debug, Default)]
struct BusyState {
    evaluating: usize,
    since: Option<std::time::Instant>,
    total: Duration,
}

impl BusyClock {
    /// Starts a partition's interval; it ends when the guard drops.
    fn enter(&self) -> BusyGuard {
        if let Ok(mut state) = self.0.lock() {
            if state.evaluating == 0 {
                state.since = Some(std::time::Instant::now());
            }
            state.evaluating += 1;
        }
        BusyGuard(self.clone())
    }

    fn total(&self) -> Duration {
        self.0.lock().map(|state| state.total).unwrap_or_default()
    }
}

/// One partition evaluating a chunk (see [`BusyClock`]).
struct BusyGuard(BusyClock);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.0.lock() {
            state.evaluating = state.evaluating.saturating_sub(1);
            if state.evaluating == 0
                && let Some(since) = state.since.take()
            {
                state.total += since.elapsed();
            }
        }
    }
}

/// An `f64` shared between the operator and its streams (as bits): the session's grid
/// intensity for EXPLAIN ANALYZE, and the share of a chunk's rows a full model computed,
/// written after each chunk and read when the next is cut (see [`MAX_CHUNK_SCALE`]).
#[derive(Debug, Clone)]
struct SharedF64(Arc<std::sync::atomic::AtomicU64>);

impl SharedF64 {
    fn new(value: f64) -> Self {
        Self(Arc::new(std::sync::atomic::AtomicU64::new(value.to_bits())))
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// Evaluates the calls on one chunk and appends their columns; `cancel` stops the model work.
fn map_chunk(
    chunk: &RecordBatch,
    cx: &ChunkContext,
    cancel: &Arc<AtomicBool>,
) -> Result<RecordBatch> {
    let ChunkContext { calls, schema, baseline, metrics, models, priority, power, .. } = cx;
    let priority = *priority;
    let timer = baseline.elapsed_compute().timer();
    let _busy = cx.busy.enter();
    // Models recorded on this pooled thread by other work (the optimizer's sampling) are not
    // this operator's.
    call_stats::take_models();
    let mut columns = chunk.columns().to_vec();
    let rows = chunk.num_rows().max(1);
    let mut full_model_share: f64 = 0.0;
    for (expr, _) in calls {
        // The model calls inside take their turn on the device in the session's class, on this
        // thread, so this thread's counters tell what they cost.
        let before = (call_stats::current(), function_stats());
        let values =
            with_cancellation(cancel, || with_priority(priority, || expr.evaluate(chunk)))?;
        let work = call_stats::current().since(before.0);
        let saved = function_stats().since(before.1);
        columns.push(values.into_array(chunk.num_rows())?);
        metrics.chunks.add(1);
        metrics.model_calls.add(work.model_calls as usize);
        metrics.dedup_hits.add(saved.dedup_hits as usize);
        metrics.warned_rows.add(saved.warned_rows as usize);
        metrics.escalated_rows.add(saved.escalated_rows as usize);
        // Rows neither deduplicated, nor from the cache, nor settled by a cascade's cheaper
        // stage: the ones a full model computed. The most expensive call sets the share.
        let cheap = work.cache_hits + saved.dedup_hits + saved.settled_rows;
        let full = (rows as u64).saturating_sub(cheap);
        full_model_share = full_model_share.max(full as f64 / rows as f64);
        metrics.model_rows.add(work.model_rows as usize);
        metrics.cache_hits.add(work.cache_hits as usize);
        metrics.tokens_in.add(work.tokens_in as usize);
        metrics.tokens_out.add(work.tokens_out as usize);
        metrics.cpu_ms.add((work.cpu_us / 1000) as usize);
        let (joules, _) = work.work().joules(power);
        metrics.energy_mj.add((joules * 1000.0).round() as usize);
    }
    timer.done();
    cx.full_model_share.set(full_model_share);
    let called = call_stats::take_models();
    if let Ok(mut seen) = models.lock() {
        for model in called {
            if !seen.contains(&model) {
                seen.push(model);
            }
        }
    }
    baseline.record_output(chunk.num_rows());
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The rows of a chunk whose model work passed the timeout: their AI values are NULL, with a
/// warning per call, or the query fails under `on_error = 'fail'`.
fn timed_out_chunk(chunk: &RecordBatch, cx: &ChunkContext, limit: Duration) -> Result<RecordBatch> {
    let rows = chunk.num_rows();
    let seconds = limit.as_secs_f64();
    let mut columns = chunk.columns().to_vec();
    for field in cx.schema.fields().iter().skip(chunk.num_columns()) {
        columns.push(new_null_array(field.data_type(), rows));
    }
    for (expr, _) in &cx.calls {
        let function = expr.downcast_ref::<ScalarFunctionExpr>().map_or("AI call", |f| f.name());
        if cx.on_error == OnError::Fail {
            return exec_err!(
                "{function}: model work on {rows} row(s) took longer than murakkab.model_timeout_s = {seconds} s; \
                 set murakkab.on_error = 'null' to return NULL for them instead"
            );
        }
        if let Some(warnings) = &cx.warnings {
            let message =
                format!("model call timed out after {seconds} s (murakkab.model_timeout_s), NULL");
            warnings.record(function, &message, rows, None);
        }
        cx.metrics.warned_rows.add(rows);
    }
    cx.baseline.record_output(rows);
    Ok(RecordBatch::try_new(Arc::clone(&cx.schema), columns)?)
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
        Ok(Arc::new(
            AiMapExec::try_new(input, self.calls.clone())?
                .with_notes(self.notes.clone(), self.estimated_ms)
                .with_key_order(self.key_order.clone()),
        ))
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![self.key_order.as_ref().map(|o| OrderingRequirements::from(o.ordering.clone()))]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.key_order {
            Some(_) => vec![Distribution::SinglePartition],
            None => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![self.key_order.is_some()]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![self.key_order.is_none()]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let options = MurakkabOptions::from_config(context.session_config().options());
        let priority = options.priority;
        // The naive baseline takes one row at a time, so each chunk is one model call per row.
        let chunk_sizes = match (options.batching, priority) {
            (false, _) => ChunkSizes::growing(1, 1),
            (true, Priority::Batch) => ChunkSizes::growing(BATCH_CHUNK_ROWS, BATCH_CHUNK_ROWS),
            // A timeout bounds one chunk's work, so under one chunks keep their first size and
            // the limit means the same for every chunk.
            (true, Priority::Interactive) if options.model_timeout_s > 0.0 => {
                ChunkSizes::growing(CHUNK_ROWS, CHUNK_ROWS)
            }
            (true, Priority::Interactive) => ChunkSizes::growing(CHUNK_ROWS, MAX_CHUNK_ROWS),
        };
        if let Ok(mut shown) = self.chunk_sizes.lock() {
            *shown = chunk_sizes;
        }
        self.carbon_intensity.set(options.carbon_intensity_now());
        let warnings = context.session_config().get_extension::<AiWarnings>();
        let input = self.input.execute(partition, context)?;
        // `cancel` is set when this stream is dropped (LIMIT satisfied, Ctrl-C, an error
        // elsewhere): the model work in flight stops at its next forward pass.
        let cx = ChunkContext {
            calls: self.calls.clone(),
            schema: Arc::clone(&self.schema),
            baseline: BaselineMetrics::new(&self.metrics, partition),
            metrics: AiMetrics::new(&self.metrics, partition),
            models: Arc::clone(&self.models),
            priority,
            cancel: StreamCancel::default(),
            power: crate::energy::CpuPowerModel::from_options(&options),
            timeout: (options.model_timeout_s > 0.0)
                .then(|| Duration::from_secs_f64(options.model_timeout_s)),
            on_error: options.on_error,
            warnings: warnings.clone(),
            full_model_share: SharedF64::new(1.0),
            busy: self.busy.clone(),
        };
        let on_drop = CancelOnDrop(cx.cancel.clone());
        let out_schema = Arc::clone(&self.schema);
        // The input becomes a stream of chunks, pulled one at a time, so nothing past the chunk
        // being consumed is computed.
        let stream = chunks(input, chunk_sizes, cx.full_model_share.clone()).then(move |chunk| {
            let _owned_by_the_stream = &on_drop;
            let cx = cx.clone();
            async move {
                let chunk = chunk?;
                // Model work runs off the async threads, so dropping this stream (which drops
                // the await below and sets the chunk's flag) takes effect at once and the work
                // in flight stops at its next forward pass. So does a timeout.
                let flag = cx.cancel.chunk_flag();
                let (input, work_cx, work_flag) = (chunk.clone(), cx.clone(), Arc::clone(&flag));
                let work =
                    SpawnedTask::spawn_blocking(move || map_chunk(&chunk, &work_cx, &work_flag))
                        .join();
                match crate::deadline::within(work, cx.timeout).await {
                    Some(joined) => joined.map_err(|e| DataFusionError::External(Box::new(e)))?,
                    None => {
                        flag.store(true, Ordering::Relaxed);
                        timed_out_chunk(&input, &cx, cx.timeout.unwrap_or_default())
                    }
                }
            }
        });
        let stop = self.key_order.as_ref().and_then(|o| o.stop.clone());
        Ok(match stop {
            Some((predicate, rows)) => Box::pin(RecordBatchStreamAdapter::new(
                out_schema,
                until_passed(Box::pin(stream), predicate, rows),
            )),
            None => Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)),
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// `chunks` until `rows` of their rows satisfy `predicate`: the chunk that gets there is the
/// last one pulled, so no model work starts past it.
fn until_passed(
    chunks: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    predicate: Arc<dyn PhysicalExpr>,
    rows: usize,
) -> impl futures::Stream<Item = Result<RecordBatch>> {
    futures::stream::unfold((chunks, 0usize, false), move |(mut chunks, passed, done)| {
        let predicate = Arc::clone(&predicate);
        async move {
            if done {
                return None;
            }
            let chunk = match chunks.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e), (chunks, passed, true))),
            };
            match passing_rows(&chunk, predicate.as_ref()) {
                Ok(n) => {
                    let passed = passed + n;
                    Some((Ok(chunk), (chunks, passed, passed >= rows)))
                }
                Err(e) => Some((Err(e), (chunks, passed, true))),
            }
        }
    })
}

/// Rows of `chunk` for which `predicate` is true (NULL counts as false, as in a filter).
fn passing_rows(chunk: &RecordBatch, predicate: &dyn PhysicalExpr) -> Result<usize> {
    let values = predicate.evaluate(chunk)?.into_array(chunk.num_rows())?;
    let Some(values) = values.as_boolean_opt() else {
        return exec_err!("AiMapExec: the stop predicate {predicate} is not boolean");
    };
    Ok(values.true_count())
}

/// `input`'s rows in chunks of `sizes`: small input batches (a join's, a selective filter's)
/// are gathered and large ones cut, so every chunk but the last has its full size. Each chunk
/// is cut after the one before it was evaluated, with the share of its rows a full model
/// computed (`share`) scaling the size.
fn chunks(
    input: SendableRecordBatchStream,
    sizes: ChunkSizes,
    share: SharedF64,
) -> impl futures::Stream<Item = Result<RecordBatch>> {
    let state = (input, None::<RecordBatch>, sizes, false);
    futures::stream::unfold(state, move |(mut input, mut pending, mut sizes, mut done)| {
        let share = share.get();
        async move {
            sizes.observe(share);
            loop {
                let wanted = sizes.wanted();
                let ready = |b: &mut RecordBatch| b.num_rows() >= wanted || done;
                if let Some(batch) = pending.take_if(ready) {
                    let held = batch.num_rows();
                    let take = sizes.take(held);
                    if take < held {
                        pending = Some(batch.slice(take, held - take));
                    }
                    return Some((Ok(batch.slice(0, take)), (input, pending, sizes, done)));
                }
                if done {
                    return None;
                }
                match input.next().await {
                    None => done = true,
                    Some(Err(e)) => return Some((Err(e), (input, None, sizes, true))),
                    Some(Ok(batch)) if batch.num_rows() == 0 => {}
                    Some(Ok(batch)) => {
                        pending = match pending.take() {
                            None => Some(batch),
                            Some(held) => match concat_batches(&batch.schema(), [&held, &batch]) {
                                Ok(joined) => Some(joined),
                                Err(e) => return Some((Err(e.into()), (input, None, sizes, true))),
                            },
                        };
                    }
                }
            }
        }
    })
}

/// The sizes of a stream's chunks: `first` rows, then twice as many each time up to `most`
/// (see [`MAX_CHUNK_ROWS`]), counted in rows a full model computes: growing sizes divide by the
/// share of the last chunk's rows that took one (at most [`MAX_CHUNK_SCALE`] times the rows).
/// Fixed sizes (the naive baseline's one row, batch priority, a timeout) stay in rows.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ChunkSizes {
    first: usize,
    next: usize,
    most: usize,
    /// The share of the last chunk's rows a full model computed (1 until one is known).
    share: f64,
}

impl ChunkSizes {
    fn growing(first: usize, most: usize) -> Self {
        let first = first.max(1);
        Self { first, next: first, most: most.max(first), share: 1.0 }
    }

    /// Takes the share of the last chunk's rows that a full model computed.
    fn observe(&mut self, share: f64) {
        if self.most > self.first && share.is_finite() {
            self.share = share.clamp(1.0 / MAX_CHUNK_SCALE as f64, 1.0);
        }
    }

    /// The rows the next chunk wants.
    fn wanted(&self) -> usize {
        (self.next as f64 / self.share).ceil() as usize
    }

    /// The rows of the next chunk when `available` rows are at hand; a full chunk doubles the
    /// next one.
    fn take(&mut self, available: usize) -> usize {
        let wanted = self.wanted();
        let take = wanted.min(available);
        if take == wanted {
            self.next = (self.next * 2).min(self.most);
        }
        take
    }
}

impl fmt::Display for ChunkSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.most == self.first {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}..{}", self.first, self.most)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_clock_counts_overlapping_partitions_once() {
        let clock = BusyClock::default();
        let started = std::time::Instant::now();
        let first = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        drop(first);
        std::thread::sleep(Duration::from_millis(20));
        drop(second);
        let outer = started.elapsed();
        let busy = clock.total();
        // The union of the two intervals: at least the 60 ms slept, never more than the wall
        // time around them (their sum would be at least 20 ms more).
        assert!(busy >= Duration::from_millis(60) && busy <= outer, "{busy:?} of {outer:?}");
        // Idle time between intervals does not count.
        std::thread::sleep(Duration::from_millis(20));
        let again = std::time::Instant::now();
        drop(clock.enter());
        assert!(clock.total() - busy <= again.elapsed());
    }

    fn batch(rows: std::ops::Range<i64>) -> RecordBatch {
        let column: datafusion::arrow::array::ArrayRef =
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(rows));
        RecordBatch::try_from_iter([("v", column)]).unwrap()
    }

    async fn chunk_rows(batches: Vec<RecordBatch>, sizes: ChunkSizes) -> Vec<Vec<i64>> {
        let schema = batches[0].schema();
        let input = futures::stream::iter(batches.into_iter().map(Ok));
        let input: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(schema, input));
        chunks(input, sizes, SharedF64::new(1.0))
            .map(|c| {
                let c = c.unwrap();
                let v = c.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>();
                v.unwrap().values().to_vec()
            })
            .collect()
            .await
    }

    #[test]
    fn chunks_double_gathering_small_batches_and_cutting_large_ones() {
        futures::executor::block_on(chunks_double());
    }

    async fn chunks_double() {
        // A join's output: many small batches, gathered into chunks of 4, 8, 8 and the rest.
        let small: Vec<RecordBatch> = (0..7).map(|i| batch(i * 3..i * 3 + 3)).collect();
        let out = chunk_rows(small, ChunkSizes::growing(4, 8)).await;
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 8, 8, 1]);
        assert_eq!(out.concat(), (0..21).collect::<Vec<i64>>(), "every row once, in order");
        // One large batch (and an empty one) cut into 16, 32, 64 and the rest.
        let large = vec![batch(0..0), batch(0..150)];
        let out = chunk_rows(large, ChunkSizes::growing(16, 64)).await;
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [16, 32, 64, 38]);
        // The naive baseline: one row per chunk.
        let out = chunk_rows(vec![batch(0..3)], ChunkSizes::growing(1, 1)).await;
        assert_eq!(out, [vec![0], vec![1], vec![2]]);
        assert_eq!(ChunkSizes::growing(16, 256).to_string(), "16..256");
        assert_eq!(ChunkSizes::growing(8, 8).to_string(), "8");
    }

    #[test]
    fn chunks_grow_in_rows_a_full_model_computed() {
        let mut sizes = ChunkSizes::growing(16, 256);
        assert_eq!(sizes.take(1000), 16, "the first chunk's share is not known");
        // A cascade settled three quarters of it on its proxy: four times the rows.
        sizes.observe(0.25);
        assert_eq!(sizes.take(1000), 128);
        sizes.observe(0.25);
        assert_eq!(sizes.take(1000), 256);
        // Everything from the cache: at most MAX_CHUNK_SCALE times the rows.
        sizes.observe(0.0);
        assert_eq!(sizes.take(10_000), 128 * MAX_CHUNK_SCALE);
        sizes.observe(1.0);
        assert_eq!(sizes.take(10_000), 256);
        // Fixed sizes stay in rows.
        let mut fixed = ChunkSizes::growing(1, 1);
        fixed.observe(0.25);
        assert_eq!(fixed.take(10), 1);
    }

    #[test]
    fn the_share_a_chunk_reports_sizes_the_next() {
        futures::executor::block_on(async {
            let schema = batch(0..1).schema();
            let input = futures::stream::iter([Ok(batch(0..200))]);
            let input: SendableRecordBatchStream =
                Box::pin(RecordBatchStreamAdapter::new(schema, input));
            let share = SharedF64::new(1.0);
            let mut stream = Box::pin(chunks(input, ChunkSizes::growing(4, 64), share.clone()));
            let mut sizes = Vec::new();
            while let Some(chunk) = stream.next().await {
                sizes.push(chunk.unwrap().num_rows());
                share.set(0.5);
            }
            assert_eq!(sizes, [4, 16, 32, 64, 84]);
        });
    }
}
