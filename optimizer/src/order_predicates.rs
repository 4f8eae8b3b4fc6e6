//! Rule: order a conjunction's AI predicates by cost / (1 − selectivity).
//!
//! `LiftAiCalls` turns `WHERE p1 AND p2` (each calling a model) into stacked filters, so a row
//! reaches the second model only if it passed the first. Which goes first decides how many rows
//! each model sees: running predicate `i` on every row that passed those below costs
//! `Σ cost_i · Π_{j<i} selectivity_j`, which is least when the predicates are sorted by
//! `cost_i / (1 − selectivity_i)` (the classic rank of expensive-predicate ordering): cheap
//! predicates that drop many rows first. The selectivities and costs come from a sample:
//!
//! ```text
//! before: Filter: __ai_1                    (written first: passes 45% of rows)
//!           AiMap: ai_filter(bbc.headline, 'The headline reports good news') AS __ai_1
//!             Filter: __ai_0 = 'sport'      (written second: passes 23% of rows)
//!               AiMap: ai_classify(bbc.headline, [business, ..., tech]) AS __ai_0
//!                 TableScan: bbc
//! after:  Projection: <the columns the top filter had>
//!           Filter: __ai_1
//!             AiMap: ai_filter(...) AS __ai_1; order: 2 of 2, passes 45%, 30 ms/row
//!               Filter: __ai_0 = 'sport'
//!                 AiMap: ai_classify(...) AS __ai_0; order: 1 of 2, passes 23%, 30 ms/row
//!                   TableScan: bbc
//! ```
//! (The `before` shows the stack as written, the costlier order; the lifted form puts the
//! written-last predicate lowest when they tie on kind, which this rule then reconsiders.)
//!
//! How: the chain's input (the plan below the lowest map) is read once and a seeded uniform
//! sample of `murakkab.optimizer.sample_rows` rows drawn (the rows of least priority, a seeded
//! hash of each row's values; see `sampling`) — the same rows `choose_model` samples first, so the answers computed here are cache hits there and when the query runs. Every
//! predicate is evaluated on the sample (label-scoring calls left at `auto` on the reference
//! model, the largest that can score labels); its selectivity is the share of sampled rows that
//! pass, and its cost per row comes from the cost model: the rows' tokens over the model's
//! calibrated speeds, plus the tokens it generated over the decode speed. The figures persist
//! under `MURAKKAB_HOME/stats` (keyed by the predicate, its calls, the candidate models and the
//! plan below), so a repeated workload orders without sampling; plain EXPLAIN uses recorded
//! figures only.
//!
//! Exact: reordering a conjunction does not change which rows pass (each predicate sees only
//! its own row), so the result is the same; only the work differs. Assumes the predicates are
//! independent (selectivities are measured on the chain's input, not conditioned on each
//! other).
//!
//! Does not apply: with `murakkab.optimizer.enabled = false` (the naive baseline computes every
//! call for every row); to fewer than two stacked AI predicates; when a predicate or call reads
//! another predicate's AI column (a nested call); when the input below the chain calls a model
//! itself (sampling it would run that model). When the input has fewer than four samples' worth
//! of rows per predicate, where the sample costs more than a better order can save, label
//! predicates are ordered by the share of their answers they pass (`ordering_without_sample`)
//! and others keep the written order.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, interleave_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::Session;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DFSchemaRef, DataFusionError, Result};
use datafusion::logical_expr::{
    Expr, Extension, Filter, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;
use murakkab_catalog::{DeviceProfile, ModelCard, PredicateStats, StatsStore, Task};
use murakkab_compiler::{AiMap, MurakkabOptions, StopAfter};
use murakkab_udfs::{AiBackend, AiContext, ModelPlan};

use crate::choose_model::{
    as_ai_map, call_is_auto, contains_ai_map, function_call, lineage, literal_string,
    literal_strings, skip_column_projections, with_model,
};
use crate::compared_label::comparison;
use crate::cost_model::{Cost, RowTokens, embed_row_cost, generate_row_cost, label_row_cost};
use crate::sampling::{PrioritySample, row_priorities};

/// Inputs with fewer rows than this many samples per predicate keep the written order. The
/// sample asks every predicate about every sampled row (`m · s` calls), while a better order
/// saves about `n · c · |s_1 - s_2|` — a quarter of a pass over the input for typical
/// selectivities — so it pays from about `4 · m · s` rows. (Measured: at 278 BBC rows and two
/// predicates, the sample cost more than the better order saved.)
const MIN_INPUT_SAMPLES_PER_PREDICATE: u64 = 4;

/// Orders stacked AI predicates; see the module doc.
#[derive(Debug)]
pub struct PredicateOrderer {
    backend: Arc<dyn AiBackend>,
    store: StatsStore,
}

/// One AI predicate of a chain: the filter's predicate and the map computing its calls.
#[derive(Debug, Clone)]
struct Link {
    predicate: Expr,
    calls: Vec<Expr>,
    notes: Vec<String>,
    /// Its map reads in a top-k's key order (`TopKOverAiFilter`), stopping at this many
    /// passing rows if it is the chain's top map.
    key_order: Option<Option<usize>>,
}

/// Stacked filters over AI maps with a plain input: `Filter(AiMap(Filter(AiMap(base))))`.
#[derive(Debug, Clone)]
struct Chain {
    /// Bottom first, as written after lifting.
    links: Vec<Link>,
    /// The plan below the lowest map.
    base: LogicalPlan,
    /// The columns the chain's top filter produced (the rebuilt chain restores them).
    top_schema: DFSchemaRef,
    /// Under a top-k over the chain (`TopKOverAiFilter`): every map reads in key order and
    /// the top one stops once this many rows pass. The rebuilt chain keeps that, the stop
    /// moving to its new top.
    top_k: Option<usize>,
}

/// The order decided for a chain.
#[derive(Debug, Clone)]
struct Ordering {
    /// Indices into the chain's links, bottom first.
    order: Vec<usize>,
    /// A note per link (by its index in the chain), shown by EXPLAIN on its map.
    notes: Vec<String>,
}

impl PredicateOrderer {
    /// An orderer that samples with the functions' backend and keeps its statistics under the
    /// backend's home.
    pub fn new(context: &AiContext) -> Self {
        Self {
            backend: Arc::clone(&context.backend),
            store: StatsStore::new(context.backend.home()),
        }
    }

    /// `plan` with every chain of AI predicates in the order of least expected cost.
    pub async fn order(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<LogicalPlan> {
        let options = MurakkabOptions::from_config(session.config_options());
        if !options.optimizer_enabled || !contains_ai_map(plan)? {
            return Ok(plan.clone());
        }
        let mut chains = Vec::new();
        collect_chains(plan, &mut chains);
        if chains.is_empty() {
            return Ok(plan.clone());
        }
        let labels = self.backend.candidate_models(Task::ScoreLabels);
        let models: Vec<&str> = labels.iter().map(|c| c.id.as_str()).collect();
        let pass = Pass {
            session,
            options: options.clone(),
            profile: DeviceProfile::load(self.backend.home())
                .with_matrix_units(self.backend.has_matrix_units()),
            reference: labels.last().cloned(),
            models: models.join(","),
            may_sample: !matches!(plan, LogicalPlan::Explain(_)),
        };
        let mut decisions = HashMap::new();
        for chain in chains {
            let key = chain_key(&chain);
            if !decisions.contains_key(&key)
                && let Some(ordering) = self.decide(&chain, &pass).await?
            {
                decisions.insert(key, ordering);
            }
        }
        rewrite(plan, &decisions)
    }

    async fn decide(&self, chain: &Chain, pass: &Pass<'_>) -> Result<Option<Ordering>> {
        if !chain.reorderable() {
            return Ok(None);
        }
        let keys: Vec<String> =
            (0..chain.links.len()).map(|i| link_key(chain, i, &pass.models)).collect();
        let recorded: Option<Vec<PredicateStats>> =
            keys.iter().map(|k| self.store.predicate_stats(k)).collect();
        if let Some(stats) = recorded {
            return Ok(Some(ordering_from(&stats, pass, "recorded")));
        }
        let n = chain.links.len();
        if let Some(rows) = chain.top_k {
            return Ok(Some(ordering_without_sample(chain, Unsampled::TopK(rows))));
        }
        if !pass.may_sample {
            // The order a small input runs in (which plain EXPLAIN cannot tell from a large one
            // without reading it), so the plan shown is the one such a query runs.
            return Ok(Some(ordering_without_sample(chain, Unsampled::NotYet)));
        }
        let least = pass.options.sample_rows;
        let (sample, input_rows) = self.sample(chain, pass, least).await?;
        if input_rows < MIN_INPUT_SAMPLES_PER_PREDICATE * n as u64 * least as u64 {
            return Ok(Some(ordering_without_sample(chain, Unsampled::TooSmall(input_rows))));
        }
        let mut stats = Vec::with_capacity(n);
        for link in &chain.links {
            let measured = self.measure(chain, link, &sample, pass).await?;
            stats.push(PredicateStats { input_rows, ..measured });
        }
        for (key, s) in keys.iter().zip(&stats) {
            if let Err(e) = self.store.save_predicate_stats(key, s) {
                tracing::warn!("could not store optimizer statistics: {e}");
            }
        }
        Ok(Some(ordering_from(&stats, pass, "sampled")))
    }

    /// A seeded uniform sample of `least` rows of the chain's input, and the input's row count.
    async fn sample(
        &self,
        chain: &Chain,
        pass: &Pass<'_>,
        least: usize,
    ) -> Result<(RecordBatch, u64)> {
        let physical = pass.session.create_physical_plan(&chain.base).await?;
        let schema = physical.schema();
        let mut stream = execute_stream(physical, pass.session.task_ctx())?;
        let mut drawn = PrioritySample::new(least);
        // Kept rows are copied out of each batch (`take`), so the input's batches are not held.
        let mut kept: Vec<RecordBatch> = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let priorities = row_priorities(batch.columns())?;
            let mut rows: Vec<u32> = Vec::new();
            for (row, &priority) in priorities.iter().enumerate() {
                // A kept row's place: (copied batch, row within it).
                drawn.offer(priority, || {
                    rows.push(row as u32);
                    (kept.len(), rows.len() - 1)
                });
            }
            if !rows.is_empty() {
                let indices = datafusion::arrow::array::UInt32Array::from(rows);
                kept.push(take_record_batch(&batch, &indices)?);
            }
        }
        let seen = drawn.seen();
        let slots = drawn.into_sorted();
        let batches: Vec<&RecordBatch> = kept.iter().collect();
        let sample = if batches.is_empty() {
            RecordBatch::new_empty(schema)
        } else {
            interleave_record_batch(&batches, &slots)?
        };
        Ok((sample, seen))
    }

    /// Evaluates `link` on the sample: the share of rows that pass and the cost of a row.
    async fn measure(
        &self,
        chain: &Chain,
        link: &Link,
        sample: &RecordBatch,
        pass: &Pass<'_>,
    ) -> Result<PredicateStats> {
        let base_schema = chain.base.schema();
        let mut calls = Vec::with_capacity(link.calls.len());
        for call in &link.calls {
            let (model, kind) = self.call_model(call, pass.reference.as_ref())?;
            // An `auto` label call runs on the reference, as `choose_model` samples it.
            let call = match (&kind, &model) {
                (CallKind::Labels, Some(card)) if call_is_auto(call) => {
                    with_model(call, &ModelPlan::Model(card.id.clone()))
                }
                _ => call.clone(),
            };
            let name = call.schema_name().to_string();
            let text = match function_call(&call).and_then(|f| f.args.first()) {
                Some(arg) => Some(pass.session.create_physical_expr(arg.clone(), base_schema)?),
                None => None,
            };
            // A filter's condition and its negation are scored whole after every row.
            let statements = match function_call(&call) {
                Some(f) if f.func.name() == "ai_filter" => f
                    .args
                    .get(1)
                    .and_then(literal_string)
                    .flatten()
                    .map(|condition| murakkab_udfs::prompts::filter_labels(&condition))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let expr = pass.session.create_physical_expr(call, base_schema)?;
            calls.push(SampledCall { name, expr, text, model, kind, statements });
        }
        let map = AiMap::try_new(chain.base.clone(), link.calls.clone())?;
        let predicate =
            pass.session.create_physical_expr(link.predicate.clone(), map.schema().as_ref())?;
        let job = MeasureJob {
            backend: Arc::clone(&self.backend),
            sample: sample.clone(),
            calls,
            predicate,
            profile: pass.profile.clone(),
            options: pass.options.clone(),
        };
        SpawnedTask::spawn_blocking(move || job.run())
            .join()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    }

    /// The model a call runs on when sampled, and what kind of work it is.
    fn call_model(
        &self,
        call: &Expr,
        reference: Option<&ModelCard>,
    ) -> Result<(Option<ModelCard>, CallKind)> {
        let Some(f) = function_call(call) else { return Ok((None, CallKind::Other)) };
        let (kind, task, model_arg) = match f.func.name() {
            "ai_filter" | "ai_classify" => (CallKind::Labels, Task::ScoreLabels, 2),
            "ai_complete" => (CallKind::Generate, Task::Generate, 1),
            "ai_extract" => (CallKind::Generate, Task::Generate, 2),
            "ai_embed" => (CallKind::Embed(1), Task::Embed, 1),
            "ai_similarity" => (CallKind::Embed(2), Task::Embed, 2),
            _ => return Ok((None, CallKind::Other)),
        };
        let named = f.args.get(model_arg).and_then(literal_string).flatten();
        let card = match (named, &kind) {
            (Some(m), _) if !m.trim().eq_ignore_ascii_case("auto") => {
                // A cascade runs most rows on its first stage: cost it there.
                let plan = ModelPlan::parse(Some(&m)).unwrap_or(ModelPlan::Auto);
                plan.models().first().and_then(|id| self.backend.resolve_model(Some(id), task).ok())
            }
            (_, CallKind::Labels) => reference.cloned(),
            // `auto` generation runs on the reference (`args::model_for`), embeddings on the
            // default encoder.
            (_, CallKind::Generate) => self.backend.largest_model(task).ok(),
            _ => self.backend.resolve_model(None, task).ok(),
        };
        Ok((card, kind))
    }
}

/// Everything one planning pass decides with.
struct Pass<'a> {
    session: &'a dyn Session,
    options: MurakkabOptions,
    profile: DeviceProfile,
    reference: Option<ModelCard>,
    /// The candidate models, as they enter the statistics key.
    models: String,
    may_sample: bool,
}

/// What a call costs per row.
#[derive(Debug, Clone, Copy)]
enum CallKind {
    /// Scores labels: its row's tokens through a forward pass.
    Labels,
    /// Generates: its prompt's tokens, then the generated tokens one step at a time.
    Generate,
    /// Embeds this many texts per row.
    Embed(usize),
    /// Calls no model the cost model knows.
    Other,
}

/// One call of a link, ready to run on the sample.
struct SampledCall {
    name: String,
    expr: Arc<dyn PhysicalExpr>,
    /// Its row text (the first argument), whose tokens decide its cost.
    text: Option<Arc<dyn PhysicalExpr>>,
    model: Option<ModelCard>,
    kind: CallKind,
    /// The labels it scores whole after each row (a filter's statement and its negation).
    statements: Vec<String>,
}

/// Evaluating one link on the sample, owned so it can move to a blocking thread (the calls
/// block on the models).
struct MeasureJob {
    backend: Arc<dyn AiBackend>,
    sample: RecordBatch,
    calls: Vec<SampledCall>,
    predicate: Arc<dyn PhysicalExpr>,
    profile: DeviceProfile,
    options: MurakkabOptions,
}

impl MeasureJob {
    fn run(self) -> Result<PredicateStats> {
        let rows = self.sample.num_rows();
        let mut fields: Vec<Field> =
            self.sample.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = self.sample.columns().to_vec();
        let mut per_row = Cost::default();
        for call in &self.calls {
            let values = call.expr.evaluate(&self.sample)?.into_array(rows)?;
            fields.push(Field::new(&call.name, values.data_type().clone(), true));
            per_row = per_row.plus(self.row_cost(call, &values)?);
            columns.push(values);
        }
        let extended = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let passed = self.predicate.evaluate(&extended)?.into_array(rows)?;
        let passed = cast(&passed, &DataType::Boolean)?;
        let passed = passed.as_boolean();
        let count = (0..passed.len()).filter(|&i| passed.is_valid(i) && passed.value(i)).count();
        Ok(PredicateStats {
            input_rows: 0,
            sample_rows: rows,
            selectivity: if rows == 0 { 1.0 } else { count as f64 / rows as f64 },
            seconds_per_row: per_row.seconds,
            joules_per_row: per_row.joules,
        })
    }

    /// A call's mean cost per sampled row under the cost model.
    fn row_cost(&self, call: &SampledCall, values: &dyn Array) -> Result<Cost> {
        let Some(card) = &call.model else { return Ok(Cost::default()) };
        let speed = self.profile.speed(card);
        let tokens = |array: &dyn Array| -> Result<f64> {
            let text = cast(array, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            let total: usize = text
                .iter()
                .flatten()
                .map(|t| self.backend.count_tokens(&card.id, t).unwrap_or(t.len() / 4))
                .sum();
            Ok(total as f64 / text.len().max(1) as f64)
        };
        let input_tokens = match &call.text {
            Some(text) => {
                tokens(&text.evaluate(&self.sample)?.into_array(self.sample.num_rows())?)?
            }
            None => 0.0,
        };
        Ok(match call.kind {
            CallKind::Labels => {
                let count = |t: &String| {
                    self.backend.count_tokens(&card.id, t).unwrap_or(t.len() / 4) as f64
                };
                let statements = call.statements.iter().map(count).sum();
                let tokens = RowTokens { prompt: input_tokens, statements };
                label_row_cost(&speed, tokens, &self.options)
            }
            CallKind::Generate => {
                // Generated tokens: the answers' own (a struct's fields read as JSON text).
                let generated = match values.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => tokens(values)?,
                    _ => 16.0,
                };
                generate_row_cost(&speed, input_tokens, generated, &self.options)
            }
            CallKind::Embed(texts) => embed_row_cost(&speed, &self.options).times(texts as f64),
            CallKind::Other => Cost::default(),
        })
    }
}

/// The order of least expected cost under the objective, with a note per link.
fn ordering_from(stats: &[PredicateStats], pass: &Pass<'_>, source: &str) -> Ordering {
    let objective = pass.options.objective;
    let value = |s: &PredicateStats| {
        Cost { seconds: s.seconds_per_row, joules: s.joules_per_row }
            .value(objective, &pass.options)
    };
    let rank = |s: &PredicateStats| {
        if s.selectivity >= 1.0 { f64::INFINITY } else { value(s) / (1.0 - s.selectivity) }
    };
    let mut order: Vec<usize> = (0..stats.len()).collect();
    // Stable: ties keep the written order.
    order.sort_by(|&a, &b| rank(&stats[a]).total_cmp(&rank(&stats[b])));
    let expected = |order: &[usize]| {
        let mut reaching = 1.0;
        let mut total = 0.0;
        for &i in order {
            total += reaching * stats[i].seconds_per_row;
            reaching *= stats[i].selectivity;
        }
        total
    };
    let written: Vec<usize> = (0..stats.len()).collect();
    let (ours, theirs) = (expected(&order), expected(&written));
    let n = stats.len();
    let notes = (0..n)
        .map(|i| {
            let position = order.iter().position(|&o| o == i).unwrap_or(i) + 1;
            let s = &stats[i];
            let mut note = format!(
                "order: {position} of {n} by cost/(1-selectivity) ({source}): passes {:.0}%, \
                 {:.1} ms/row",
                100.0 * s.selectivity,
                1000.0 * s.seconds_per_row
            );
            if position == n && order != written {
                note.push_str(&format!(
                    "; est. {:.1} ms per input row vs {:.1} ms as written",
                    1000.0 * ours,
                    1000.0 * theirs
                ));
            }
            note
        })
        .collect();
    Ordering { order, notes }
}

/// The order of a chain whose input is too small for a sample to pay off: by the share of its
/// possible answers each predicate passes, when every predicate is one label call left at
/// `auto` (so all run on the same reference model, at about the same cost per row) tested for
/// one answer. `ai_filter(...)` passes one of its two answers, `ai_classify(..., k labels) =
/// 'x'` one of `k`: with no sample, each answer is taken as equally likely (the textbook
/// default of one over the number of distinct values). Otherwise the written order.
///
/// Plain EXPLAIN, which runs nothing, shows this order too ([`Unsampled::NotYet`]): it is the one
/// a small input runs in, and a large one's sample decides when the query runs.
///
/// Measured on the sport workflow (`WHERE ai_filter(headline, 'good news') AND
/// ai_classify(headline, [5 topics]) = 'sport'` over 445 BBC headlines): the reference passed
/// 18% of rows on the filter (with the yes/no filter wording before 2026-12-05; 91% with the
/// statements since, unvalidated either way: the data has no good-news labels) and 8% on the
/// classify, so the classify first is the better order
/// too, and its cascade (about "sport or not", `compared_label`) settles most rows cheaply.
fn ordering_without_sample(chain: &Chain, why: Unsampled) -> Ordering {
    let n = chain.links.len();
    let shares: Option<Vec<(f64, String)>> = chain.links.iter().map(answer_share).collect();
    let why = match why {
        Unsampled::TooSmall(rows) => {
            format!(" (input of {rows} rows too small for a sample to pay off)")
        }
        Unsampled::NotYet => "; ordered from a sample when the query runs".to_string(),
        Unsampled::TopK(rows) => format!(
            " (under a top-k, read until {rows} rows pass: a sample of the whole input would \
             cost more than the rows read)"
        ),
    };
    // Without a share for each, or when all are alike, nothing argues against the writer.
    let shares = shares.filter(|s| s.iter().any(|(share, _)| *share != s[0].0));
    let Some(shares) = shares else {
        let notes = (0..n).map(|i| format!("order: {} of {n} as written{why}", i + 1)).collect();
        return Ordering { order: (0..n).collect(), notes };
    };
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: ties keep the written order.
    order.sort_by(|&a, &b| shares[a].0.total_cmp(&shares[b].0));
    let notes = (0..n)
        .map(|i| {
            let position = order.iter().position(|&o| o == i).unwrap_or(i) + 1;
            format!("order: {position} of {n} by answers passed, {}{why}", shares[i].1)
        })
        .collect();
    Ordering { order, notes }
}

/// Why a chain is ordered without a sample.
enum Unsampled {
    /// Its input has this many rows, too few for a sample to pay off.
    TooSmall(u64),
    /// Plain EXPLAIN: nothing is run, so the input's size is not known.
    NotYet,
    /// The chain is read in a top-k's key order until this many rows pass.
    TopK(usize),
}

/// The share of its possible answers `link`'s predicate passes, and how that reads, when the
/// link is one label call at `auto` tested for one answer.
fn answer_share(link: &Link) -> Option<(f64, String)> {
    let [call] = link.calls.as_slice() else { return None };
    let Expr::Alias(alias) = call else { return None };
    let f = function_call(call)?;
    if !call_is_auto(call) {
        return None;
    }
    match (f.func.name(), &link.predicate) {
        ("ai_filter", Expr::Column(c)) if c.name == alias.name => {
            Some((0.5, "passes 1 of 2 answers".to_string()))
        }
        ("ai_classify", predicate) => {
            let (column, label) = comparison(predicate)?;
            let labels = literal_strings(f.args.get(1)?)?;
            if column != alias.name || !labels.contains(&label) {
                return None;
            }
            let k = labels.len();
            Some((1.0 / k as f64, format!("passes 1 of {k} labels")))
        }
        _ => None,
    }
}

/// The key of the statistics of link `i` of `chain`.
fn link_key(chain: &Chain, i: usize, models: &str) -> String {
    let link = &chain.links[i];
    let calls: Vec<String> = link.calls.iter().map(ToString::to_string).collect();
    format!(
        "predicate v1 ({})\n{}\n{}\n{models}\n{}",
        murakkab_udfs::prompts::label_wordings(),
        link.predicate,
        calls.join("\n"),
        lineage(&chain.base)
    )
}

/// The key a chain's decision is found under when the plan is rewritten.
fn chain_key(chain: &Chain) -> String {
    let links: Vec<String> = (0..chain.links.len()).map(|i| link_key(chain, i, "")).collect();
    links.join("\n--\n")
}

/// The link whose filter is `node`, and the plan below its map.
fn link_at(node: &LogicalPlan) -> Option<(Link, &LogicalPlan)> {
    let LogicalPlan::Filter(f) = node else { return None };
    let map = as_ai_map(skip_column_projections(&f.input))?;
    let link = Link {
        predicate: f.predicate.clone(),
        calls: map.calls.clone(),
        notes: map.notes.clone(),
        key_order: map.in_key_order.then(|| map.stop_after.as_ref().map(|s| s.rows)),
    };
    Some((link, &map.input))
}

impl Chain {
    /// The chain whose top filter is `node`, if two or more AI predicates are stacked there.
    fn at(node: &LogicalPlan) -> Option<Chain> {
        let mut links = Vec::new();
        let mut below = node;
        while let Some((link, input)) = link_at(below) {
            links.push(link);
            below = skip_column_projections(input);
        }
        links.reverse();
        // Under a top-k every map reads in key order and the top one stops.
        let top_k = match links.last().and_then(|l| l.key_order) {
            Some(Some(rows)) if links.iter().all(|l| l.key_order.is_some()) => Some(rows),
            _ => None,
        };
        (links.len() >= 2).then(|| Chain {
            links,
            base: below.clone(),
            top_schema: Arc::clone(node.schema()),
            top_k,
        })
    }

    /// Whether the links may run in any order: each reads only the input's columns and its
    /// own calls' outputs, and the input calls no model.
    fn reorderable(&self) -> bool {
        let base = self.base.schema();
        let own_outputs = |link: &Link| -> Vec<String> {
            link.calls.iter().map(|c| c.schema_name().to_string()).collect()
        };
        let calls_read_base = |link: &Link| {
            link.calls.iter().all(|c| c.column_refs().iter().all(|col| base.has_column(col)))
        };
        let predicate_reads = |link: &Link| {
            let own = own_outputs(link);
            link.predicate.column_refs().iter().all(|col| {
                base.has_column(col) || (col.relation.is_none() && own.contains(&col.name))
            })
        };
        !contains_ai_map(&self.base).unwrap_or(true)
            && self.links.iter().all(|l| calls_read_base(l) && predicate_reads(l))
    }

    /// The chain over `base` with its links in `ordering`, producing the columns it did.
    fn rebuild(&self, base: LogicalPlan, ordering: &Ordering) -> Result<LogicalPlan> {
        let mut plan = base;
        for (position, &i) in ordering.order.iter().enumerate() {
            let link = &self.links[i];
            let mut notes = link.notes.clone();
            notes.push(ordering.notes[i].clone());
            let mut map = AiMap::try_new(plan, link.calls.clone())?.with_notes(notes);
            if let Some(rows) = self.top_k {
                let top = position + 1 == ordering.order.len();
                let stop = top.then(|| StopAfter { predicate: link.predicate.clone(), rows });
                map = map.in_key_order(stop);
            }
            let map = LogicalPlan::Extension(Extension { node: Arc::new(map) });
            plan = LogicalPlan::Filter(Filter::try_new(link.predicate.clone(), Arc::new(map))?);
        }
        let columns: Vec<Expr> = self.top_schema.columns().into_iter().map(Expr::Column).collect();
        LogicalPlanBuilder::from(plan).project(columns)?.build()
    }
}

/// Every chain in `plan`, outermost first; a chain's own links are not searched again.
fn collect_chains(plan: &LogicalPlan, found: &mut Vec<Chain>) {
    if let Some(chain) = Chain::at(plan) {
        collect_chains(&chain.base, found);
        found.push(chain);
        return;
    }
    for input in plan.inputs() {
        collect_chains(input, found);
    }
}

/// `plan` with each decided chain rebuilt in its order.
fn rewrite(plan: &LogicalPlan, decisions: &HashMap<String, Ordering>) -> Result<LogicalPlan> {
    if let Some(chain) = Chain::at(plan)
        && let Some(ordering) = decisions.get(&chain_key(&chain))
    {
        let base = rewrite(&chain.base, decisions)?;
        return chain.rebuild(base, ordering);
    }
    let inputs: Vec<LogicalPlan> =
        plan.inputs().into_iter().map(|i| rewrite(i, decisions)).collect::<Result<_>>()?;
    if inputs.is_empty() {
        return Ok(plan.clone());
    }
    plan.with_new_exprs(plan.expressions(), inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(selectivity: f64, ms: f64) -> PredicateStats {
        PredicateStats {
            input_rows: 1000,
            sample_rows: 64,
            selectivity,
            seconds_per_row: ms / 1000.0,
            joules_per_row: ms / 100.0,
        }
    }

    #[test]
    fn the_rank_puts_cheap_selective_predicates_first() {
        let session = datafusion::prelude::SessionContext::new().state();
        let pass = Pass {
            session: &session,
            options: MurakkabOptions::default(),
            profile: DeviceProfile::default(),
            reference: None,
            models: String::new(),
            may_sample: true,
        };
        // Same cost: the more selective first.
        let o = ordering_from(&[stats(0.5, 10.0), stats(0.2, 10.0)], &pass, "sampled");
        assert_eq!(o.order, vec![1, 0]);
        assert!(o.notes[0].starts_with("order: 2 of 2"), "{}", o.notes[0]);
        assert!(
            o.notes[0].contains("est. 12.0 ms per input row vs 15.0 ms as written"),
            "{}",
            o.notes[0]
        );
        // A cheap predicate that drops few rows beats a costly one that drops many:
        // 1/(1-0.9)=10 vs 50/(1-0.1)=55.6.
        let o = ordering_from(&[stats(0.1, 50.0), stats(0.9, 1.0)], &pass, "sampled");
        assert_eq!(o.order, vec![1, 0]);
        // Everything passes: last, whatever it costs.
        let o = ordering_from(&[stats(1.0, 0.1), stats(0.5, 100.0)], &pass, "sampled");
        assert_eq!(o.order, vec![1, 0]);
        // Ties keep the written order.
        let o = ordering_from(&[stats(0.3, 5.0), stats(0.3, 5.0)], &pass, "sampled");
        assert_eq!(o.order, vec![0, 1]);
        assert!(!o.notes[1].contains("as written"), "{}", o.notes[1]);
    }
}
