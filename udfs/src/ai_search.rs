//! `ai_search(table, column, query, k [, model])`: the table's top-k rows by semantic
//! similarity to the query, with a `score` column.
//!
//! Exact search: every row's text is embedded (once: vectors persist under `MURAKKAB_HOME`, see
//! [`crate::embedding_store`]) and compared with the query's embedding by a dot product of unit
//! vectors; the k best rows come back, best first. The work happens when the plan executes,
//! never while planning, so `EXPLAIN` costs nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, TableReference, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::TaskContext;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use futures::StreamExt;
use murakkab_catalog::Task;

use crate::args::AiContext;
use crate::embedding_store::{self, TextKey};
use crate::vector_math::{dot, top_k};

const NAME: &str = "ai_search";
const USAGE: &str = "ai_search('table', 'column', 'query', k [, 'model'])";
/// Rows embedded per backend call (bounds memory and lets warnings point at progress).
const EMBED_CHUNK: usize = 512;
/// Largest k accepted.
const MAX_K: i64 = 100_000;

/// What `\functions` shows for `ai_search` (table functions carry no documentation of their own).
pub static DOC: std::sync::LazyLock<datafusion::logical_expr::Documentation> =
    std::sync::LazyLock::new(|| {
        crate::docs::ai_doc(
            "A table: the k rows of a table whose text column is most similar in meaning to the \
             query (exact cosine similarity of embeddings), best first, with a score column. \
             The column's embeddings are computed once and kept under MURAKKAB_HOME; after the \
             data changes only new texts are embedded. Rows with NULL text are left out.",
            USAGE,
            "> SELECT id, body, round(score, 2) AS score FROM ai_search('notes', 'body', 'slow service', 2);\n\
             +----+-----------------------------------------------+-------+\n\
             | id | body                                          | score |\n\
             +----+-----------------------------------------------+-------+\n\
             | 2  | Service at the restaurant was painfully slow. | 0.61  |\n\
             | 4  | Shipping took three weeks.                    | 0.31  |\n\
             +----+-----------------------------------------------+-------+",
            &[
                ("table", "The table's name, a string."),
                ("column", "The text column to search, a string."),
                ("query", "What to look for, a string."),
                ("k", "How many rows to return, 1 to 100000."),
                ("model", "An embedding model id (default all-minilm-l6-v2)."),
            ],
        )
    });

/// The `ai_search` table function.
#[derive(Debug)]
pub struct AiSearch {
    context: Arc<AiContext>,
}

impl AiSearch {
    /// The table function over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { context }
    }
}

fn literal<'a>(exprs: &'a [Expr], index: usize, what: &str) -> Result<&'a ScalarValue> {
    match exprs.get(index) {
        Some(Expr::Literal(value, _)) if !value.is_null() => Ok(value),
        Some(other) => plan_err!("{NAME}: {what} must be a constant, got {other}; use {USAGE}"),
        None => plan_err!("{NAME}: missing {what}; use {USAGE}"),
    }
}

fn literal_text(exprs: &[Expr], index: usize, what: &str) -> Result<String> {
    match literal(exprs, index, what)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Ok(s.clone()),
        other => plan_err!("{NAME}: {what} must be a string, got {other}; use {USAGE}"),
    }
}

impl TableFunctionImpl for AiSearch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if !(4..=5).contains(&exprs.len()) {
            return plan_err!("{NAME} expects {USAGE}, got {} arguments", exprs.len());
        }
        let table = literal_text(exprs, 0, "the table name")?;
        let column = literal_text(exprs, 1, "the column name")?;
        let query = literal_text(exprs, 2, "the query")?;
        let k = match literal(exprs, 3, "k")?.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(k))) if (1..=MAX_K).contains(&k) => k as usize,
            _ => return plan_err!("{NAME}: k must be an integer from 1 to {MAX_K}"),
        };
        let model =
            if exprs.len() == 5 { Some(literal_text(exprs, 4, "the model")?) } else { None };
        let card = crate::args::check_model(NAME, &self.context, model.as_deref(), Task::Embed)?;
        let Some(dim) = card.embedding_dim else {
            return plan_err!("{NAME}: model '{}' does not declare its embedding width", card.id);
        };
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{NAME}: needs a Murakkab session");
        };
        let reference = TableReference::from(table.as_str());
        let schema_provider = state.schema_for_ref(reference.clone())?;
        // Catalog lookups are async in general but immediate for registered tables.
        let inner = futures::executor::block_on(schema_provider.table(reference.table()))?
            .ok_or_else(|| DataFusionError::Plan(format!("{NAME}: no table named '{table}'")))?;
        let inner_schema = inner.schema();
        let Some((column_index, field)) = inner_schema.column_with_name(&column) else {
            let names: Vec<&str> =
                inner_schema.fields().iter().map(|f| f.name().as_str()).collect();
            return plan_err!(
                "{NAME}: table '{table}' has no column '{column}'; its columns are: {}",
                names.join(", ")
            );
        };
        if !matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
            return plan_err!("{NAME}: column '{column}' must be text, got {}", field.data_type());
        }
        if inner_schema.column_with_name("score").is_some() {
            return plan_err!("{NAME}: table '{table}' already has a column named 'score'");
        }
        let mut fields: Vec<Field> =
            inner_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("score", DataType::Float64, false));
        let spec = SearchSpec {
            context: Arc::clone(&self.context),
            table,
            column,
            column_index,
            query,
            k,
            model: card.id,
            dim,
        };
        Ok(Arc::new(SearchTable {
            inner,
            spec: Arc::new(spec),
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

/// What one search asks for.
#[derive(Debug)]
struct SearchSpec {
    context: Arc<AiContext>,
    table: String,
    column: String,
    column_index: usize,
    query: String,
    k: usize,
    model: String,
    dim: usize,
}

impl SearchSpec {
    /// The vectors of `texts`, from the store where present, embedding and saving the rest.
    fn vectors(&self, texts: &[&str]) -> Result<HashMap<TextKey, Vec<f32>>> {
        let backend = &self.context.backend;
        let path = embedding_store::store_path(
            backend.home().root(),
            &self.model,
            &self.table,
            &self.column,
        );
        let mut stored = embedding_store::load(&path, self.dim);
        let mut wanted: HashMap<TextKey, &str> = HashMap::with_capacity(texts.len());
        for t in texts {
            wanted.entry(embedding_store::text_key(t)).or_insert(t);
        }
        let missing: Vec<(TextKey, &str)> = wanted
            .iter()
            .filter(|(k, _)| !stored.contains_key(*k))
            .map(|(k, t)| (*k, *t))
            .collect();
        let stale = stored.keys().any(|k| !wanted.contains_key(k));
        let mut failed = 0;
        let mut first_failure = None;
        for chunk in missing.chunks(EMBED_CHUNK) {
            let batch: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            let out = backend.embed(&self.model, &batch).or_else(|e| exec_err!("{NAME}: {e}"))?;
            self.context.warnings.record(
                NAME,
                "text longer than the model's context, cut to fit",
                out.truncated,
                None,
            );
            for ((key, _), vector) in chunk.iter().zip(out.rows) {
                match vector {
                    Ok(v) if v.len() == self.dim => {
                        stored.insert(*key, v);
                    }
                    Ok(v) => {
                        failed += 1;
                        first_failure.get_or_insert(format!(
                            "{} values, expected {}",
                            v.len(),
                            self.dim
                        ));
                    }
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert(e);
                    }
                }
            }
        }
        self.context.warnings.record(NAME, "row not embedded, left out", failed, first_failure);
        if !missing.is_empty() || stale {
            stored.retain(|k, _| wanted.contains_key(k));
            if let Err(e) = embedding_store::save(&path, self.dim, &stored) {
                self.context.warnings.record(
                    NAME,
                    "embeddings could not be saved for reuse",
                    1,
                    Some(format!("{}: {e}", path.display())),
                );
            }
        }
        Ok(stored)
    }

    /// The top-k rows of `batches` with their scores, best first (ties: earlier row first).
    fn rank(
        &self,
        schema: &SchemaRef,
        out_schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<RecordBatch> {
        let batch = concat_batches(schema, batches)?;
        let texts = cast(batch.column(self.column_index), &DataType::Utf8)?;
        let Some(texts) = texts.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{NAME}: column '{}' is not text", self.column);
        };
        let present: Vec<&str> = texts.iter().flatten().collect();
        if present.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(out_schema)));
        }
        let vectors = self.vectors(&present)?;
        let query = self
            .context
            .backend
            .embed(&self.model, &[self.query.as_str()])
            .or_else(|e| exec_err!("{NAME}: {e}"))?
            .rows
            .pop()
            .and_then(|r| r.ok())
            .ok_or_else(|| {
                DataFusionError::Execution(format!("{NAME}: the query could not be embedded"))
            })?;
        let scored: Vec<(u32, f64)> = texts
            .iter()
            .enumerate()
            .filter_map(|(row, text)| {
                let v = vectors.get(&embedding_store::text_key(text?))?;
                Some((row as u32, dot(v, &query)))
            })
            .collect();
        let scored = top_k(scored, self.k);
        let rows = UInt32Array::from(scored.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        let top = take_record_batch(&batch, &rows)?;
        let mut columns: Vec<ArrayRef> = top.columns().to_vec();
        columns
            .push(Arc::new(Float64Array::from(scored.iter().map(|(_, s)| *s).collect::<Vec<_>>())));
        Ok(RecordBatch::try_new(Arc::clone(out_schema), columns)?)
    }
}

/// The table `ai_search(...)` stands for.
#[derive(Debug)]
struct SearchTable {
    inner: Arc<dyn TableProvider>,
    spec: Arc<SearchSpec>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for SearchTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = self.inner.scan(state, None, &[], None).await?;
        let projection =
            projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let projected = Arc::new(self.schema.project(&projection)?);
        Ok(Arc::new(SearchExec::new(
            input,
            Arc::clone(&self.spec),
            Arc::clone(&self.schema),
            projection,
            projected,
        )))
    }
}

/// Reads the whole table, ranks it, and emits the top k rows in one batch.
#[derive(Debug)]
struct SearchExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<SearchSpec>,
    full_schema: SchemaRef,
    projection: Vec<usize>,
    properties: Arc<PlanProperties>,
}

impl SearchExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        spec: Arc<SearchSpec>,
        full_schema: SchemaRef,
        projection: Vec<usize>,
        projected: SchemaRef,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { input, spec, full_schema, projection, properties: Arc::new(properties) }
    }
}

impl DisplayAs for SearchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AiSearchExec: table={}, column={}, k={}, model={}",
            self.spec.table, self.spec.column, self.spec.k, self.spec.model
        )
    }
}

impl ExecutionPlan for SearchExec {
    fn name(&self) -> &'static str {
        "AiSearchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.pop() else {
            return exec_err!("{NAME}: expected one input");
        };
        Ok(Arc::new(SearchExec::new(
            input,
            Arc::clone(&self.spec),
            Arc::clone(&self.full_schema),
            self.projection.clone(),
            Arc::clone(self.properties.eq_properties.schema()),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("{NAME}: has one partition, asked for {partition}");
        }
        let input = Arc::clone(&self.input);
        let spec = Arc::clone(&self.spec);
        let full = Arc::clone(&self.full_schema);
        let projection = self.projection.clone();
        let out_schema = Arc::clone(self.properties.eq_properties.schema());
        let input_schema = input.schema();
        let work = async move {
            let batches = collect(input, context).await?;
            let ranked = spec.rank(&input_schema, &full, &batches)?;
            Ok(ranked.project(&projection)?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, futures::stream::once(work).boxed())))
    }
}
