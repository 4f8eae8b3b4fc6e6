//! Rule: a join on an AI predicate becomes embedding blocking plus the predicate on the
//! candidates.
//!
//! `JOIN ... ON ai_filter(<left text> || <right text>, 'same restaurant')` has no key to hash
//! on: as written it is a cross join that asks the model about every pair (533 x 331 Fodors x
//! Zagat records: 176,423 model calls). Most pairs are obviously not matches, and an encoder
//! can say which: this rule embeds each side's part of the text once (n + m encoder calls),
//! keeps each left row's `k` most similar right rows, and asks the predicate only about those:
//!
//! ```text
//! before: Filter: __ai_0
//!           AiMap: ai_filter('A: ' || f.name || ' B: ' || z.name, 'same restaurant') AS __ai_0
//!             Cross Join: f, z
//! after:  Projection: <the columns the filter had>
//!           Filter: __ai_0
//!             AiMap: ai_filter(...) AS __ai_0; semantic join: 3 nearest of 331 per row ...
//!               Projection: f.*, z.*
//!                 Filter: __rank <= 3
//!                   WindowAggr: row_number() PARTITION BY __left_row ORDER BY __sim DESC AS __rank
//!                     Projection: f.*, __left_row, z.*, cosine_similarity(__left_vec, __right_vec) AS __sim
//!                       Cross Join
//!                         AiMap: ai_embed(concat_ws(' ', f.name)) AS __left_vec
//!                           WindowAggr: row_number() AS __left_row
//!                             TableScan: f
//!                         AiMap: ai_embed(concat_ws(' ', z.name)) AS __right_vec
//!                           TableScan: z
//! ```
//!
//! The text is split at its concatenations: the parts that read only left columns make the left
//! text, those that read only right columns the right text (literals are dropped: they are the
//! same for every pair).
//!
//! How `k` is chosen (to meet `murakkab.quality_target` as recall): a seeded sample of left rows
//! (`SAMPLE_LEFT_ROWS`, drawn from the rows numbered in order of their text, so the same rows
//! whatever order the input's partitions deliver them in) is asked about its `MAX_K` nearest right rows and about evenly spaced
//! farther ones (`FAR_PAIRS_PER_ROW`), on the reference model. The farther pairs estimate the
//! matches blocking would miss beyond `MAX_K`; `k` is the fewest nearest whose share of all
//! estimated matches reaches the target. The answers go through the result cache (the sampled
//! near pairs are not asked again), and the figures persist under `MURAKKAB_HOME/stats`.
//!
//! The guarantee is on the sample: recall against the predicate's own answers (not against
//! ground truth), estimated from `SAMPLE_LEFT_ROWS` rows, so with few matches in the sample
//! the estimate is coarse. Pairs that are matches for the model but far apart for the encoder
//! are what blocking loses; the far-pair estimate is there to notice a judge that accepts
//! dissimilar pairs, in which case the join is left as it was.
//!
//! Does not apply: with the optimizer off; to joins other than inner joins without equi-keys or
//! other conditions; to inputs that call a model themselves (counting and sampling them would run
//! it); to predicates whose text does not split into a left and a right part; when
//! no encoder is pulled; when the right input has no more rows than `MAX_K` (no pairs to save);
//! when the sample holds fewer than `MIN_MATCHES` matches (no evidence for any `k`); when no
//! `k <= MAX_K` meets the target. Plain EXPLAIN uses recorded statistics only.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use datafusion::catalog::Session;
use datafusion::common::{Column, DFSchemaRef, Result};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprFunctionExt, Extension, Filter, JoinType, LogicalPlan,
    LogicalPlanBuilder, Operator, cast, col, lit,
};
use datafusion::physical_plan::collect;
use murakkab_catalog::{BlockingStats, StatsStore, Task};
use murakkab_compiler::{AiMap, MurakkabOptions};
use murakkab_udfs::{AiBackend, AiContext, ModelPlan};

use crate::choose_model::{
    as_ai_map, call_is_auto, contains_ai_map, function_call, lineage, skip_column_projections,
    with_model,
};
use crate::sampling::Reservoir;

/// The most nearest candidates per left row the rule considers.
pub const MAX_K: usize = 16;
/// Left rows whose candidates are asked about while choosing `k`.
const SAMPLE_LEFT_ROWS: usize = 16;
/// Farther pairs per sampled row, evenly spaced by rank beyond `MAX_K`.
const FAR_PAIRS_PER_ROW: usize = 8;
/// Fewest matches in the sample for any `k` to be chosen.
const MIN_MATCHES: usize = 3;

/// Turns joins on an AI predicate into blocking plus the predicate; see the module doc.
#[derive(Debug)]
pub struct SemanticJoin {
    backend: Arc<dyn AiBackend>,
    store: StatsStore,
}

/// A join on an AI predicate the rule may rewrite.
#[derive(Debug, Clone)]
struct Site {
    /// The filter's predicate (reads the call's output).
    predicate: Expr,
    /// The call, aliased to its output column.
    call: Expr,
    /// Notes already on the call's map.
    notes: Vec<String>,
    left: LogicalPlan,
    right: LogicalPlan,
    /// The parts of the call's text that read each side, joined by spaces.
    left_text: Expr,
    right_text: Expr,
    /// The columns the filter produced (the rewrite restores them).
    top_schema: DFSchemaRef,
}

/// What the rule decided for a site.
#[derive(Debug, Clone)]
struct Decision {
    k: Option<usize>,
    note: String,
}

impl SemanticJoin {
    /// A rule that samples with the functions' backend and keeps its statistics under the
    /// backend's home.
    pub fn new(context: &AiContext) -> Self {
        Self {
            backend: Arc::clone(&context.backend),
            store: StatsStore::new(context.backend.home()),
        }
    }

    /// `plan` with each join on an AI predicate blocked where a sample shows it keeps the
    /// matches.
    pub async fn rewrite(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<LogicalPlan> {
        let options = MurakkabOptions::from_config(session.config_options());
        if !options.optimizer_enabled || !contains_ai_map(plan)? {
            return Ok(plan.clone());
        }
        let mut sites = Vec::new();
        collect_sites(plan, &mut sites);
        if sites.is_empty() {
            return Ok(plan.clone());
        }
        let Ok(encoder) = self.backend.resolve_model(None, Task::Embed) else {
            return Ok(plan.clone());
        };
        let models: Vec<String> = self
            .backend
            .candidate_models(Task::ScoreLabels)
            .into_iter()
            .map(|c| c.id)
            .chain([encoder.id.clone()])
            .collect();
        let models = models.join(",");
        let may_sample = !matches!(plan, LogicalPlan::Explain(_));
        let mut decisions = HashMap::new();
        for site in sites {
            let key = site_key(&site, &models);
            if let std::collections::hash_map::Entry::Vacant(slot) = decisions.entry(key) {
                let decision = self
                    .decide(&site, slot.key(), session, &options, may_sample, &encoder.id)
                    .await?;
                slot.insert(decision);
            }
        }
        rewrite(plan, &decisions, session, &models, &encoder.id)
    }

    async fn decide(
        &self,
        site: &Site,
        key: &str,
        session: &dyn Session,
        options: &MurakkabOptions,
        may_sample: bool,
        encoder: &str,
    ) -> Result<Decision> {
        if let Some(stats) = self.store.blocking_stats(key) {
            return Ok(decision_from(&stats, options, "recorded"));
        }
        if !may_sample {
            let note = "semantic join: blocking chosen from a sample when the query runs".into();
            return Ok(Decision { k: None, note });
        }
        let left_rows = count_rows(&site.left, session).await?;
        let right_rows = count_rows(&site.right, session).await?;
        if right_rows <= MAX_K as u64 {
            let note = format!(
                "semantic join: not blocked ({right_rows} right rows: no more than {MAX_K} \
                 candidates to choose from)"
            );
            return Ok(Decision { k: None, note });
        }
        let stats = self.sample(site, session, options, (left_rows, right_rows), encoder).await?;
        if let Err(e) = self.store.save_blocking_stats(key, &stats) {
            tracing::warn!("could not store optimizer statistics: {e}");
        }
        Ok(decision_from(&stats, options, "sampled"))
    }

    /// Asks the predicate about the sampled left rows' nearest and some farther candidates.
    async fn sample(
        &self,
        site: &Site,
        session: &dyn Session,
        options: &MurakkabOptions,
        (left_rows, right_rows): (u64, u64),
        encoder: &str,
    ) -> Result<BlockingStats> {
        let mut reservoir = Reservoir::new(SAMPLE_LEFT_ROWS);
        let mut picked: Vec<u64> = Vec::new();
        for row in 1..=left_rows {
            match reservoir.offer() {
                Some(slot) if slot == picked.len() => picked.push(row),
                Some(slot) => picked[slot] = row,
                None => {}
            }
        }
        let step = ((right_rows as usize).saturating_sub(MAX_K) / FAR_PAIRS_PER_ROW).max(1);
        let ranked = candidates(site, session, None, Some(&picked), encoder)?;
        let rank = col("__rank");
        let near = rank.clone().lt_eq(lit(MAX_K as u64));
        let far = (rank.clone() % lit(step as u64)).eq(lit(0u64));
        let wanted = near.or(far);
        // The reference model answers, as `choose_model` compares candidates with it.
        let call = match self.backend.candidate_models(Task::ScoreLabels).last() {
            Some(card) if call_is_auto(&site.call) => {
                with_model(&site.call, &ModelPlan::Model(card.id.clone()))
            }
            _ => site.call.clone(),
        };
        let pairs = LogicalPlanBuilder::from(ranked).filter(wanted)?.build()?;
        let map = AiMap::try_new(pairs, vec![call])?;
        let answered =
            LogicalPlanBuilder::from(LogicalPlan::Extension(Extension { node: Arc::new(map) }))
                .project(vec![
                    col("__rank"),
                    Expr::IsTrue(Box::new(site.predicate.clone())).alias("__passed"),
                ])?
                .build()?;
        let physical = session.create_physical_plan(&answered).await?;
        let batches = collect(physical, session.task_ctx()).await?;
        let mut matches_within = vec![0usize; MAX_K];
        let (mut far_asked, mut far_matched) = (0usize, 0usize);
        for batch in &batches {
            let ranks = datafusion::arrow::compute::cast(batch.column(0), &DataType::UInt64)?;
            let ranks = ranks.as_primitive::<UInt64Type>();
            let passed = batch.column(1).as_boolean();
            for i in 0..batch.num_rows() {
                let (r, p) = (ranks.value(i) as usize, passed.is_valid(i) && passed.value(i));
                if r <= MAX_K {
                    if p {
                        matches_within[r - 1] += 1;
                    }
                } else {
                    far_asked += 1;
                    far_matched += usize::from(p);
                }
            }
        }
        for i in 1..MAX_K {
            matches_within[i] += matches_within[i - 1];
        }
        let near_matches = matches_within[MAX_K - 1];
        let far_pairs = (right_rows as usize).saturating_sub(MAX_K) * picked.len();
        let far_matches = if far_asked == 0 {
            0.0
        } else {
            far_matched as f64 / far_asked as f64 * far_pairs as f64
        };
        let mut stats = BlockingStats {
            left_rows,
            right_rows,
            sample_rows: picked.len(),
            near_matches,
            matches_within,
            far_matches,
            k: None,
        };
        stats.k = choose_k(&stats, options.quality_target);
        Ok(stats)
    }
}

/// The fewest nearest candidates whose estimated recall meets `target`.
fn choose_k(stats: &BlockingStats, target: f64) -> Option<usize> {
    if stats.near_matches < MIN_MATCHES {
        return None;
    }
    let total = stats.near_matches as f64 + stats.far_matches;
    stats.matches_within.iter().position(|&m| m as f64 >= target * total).map(|i| i + 1)
}

/// The decision and its EXPLAIN note from the statistics.
fn decision_from(stats: &BlockingStats, options: &MurakkabOptions, source: &str) -> Decision {
    let total = stats.near_matches as f64 + stats.far_matches;
    let recall = |k: usize| stats.matches_within[k - 1] as f64 / total.max(1e-9);
    // Statistics recorded under another target: choose again from the same counts.
    let k = choose_k(stats, options.quality_target);
    let note = match k {
        Some(k) => format!(
            "semantic join ({source}): {k} nearest of {} per row by embedding similarity, \
             est. recall {:.2} (target {}; {} matches among {} sampled rows' {MAX_K} nearest, \
             {:.1} estimated farther); {} pairs instead of {}",
            stats.right_rows,
            recall(k),
            options.quality_target,
            stats.near_matches,
            stats.sample_rows,
            stats.far_matches,
            stats.left_rows * k as u64,
            stats.left_rows * stats.right_rows
        ),
        None if stats.near_matches < MIN_MATCHES => format!(
            "semantic join ({source}): not blocked: {} matches in {} sampled rows' {MAX_K} \
             nearest candidates, fewer than {MIN_MATCHES} to choose k from",
            stats.near_matches, stats.sample_rows
        ),
        None => format!(
            "semantic join ({source}): not blocked: the {MAX_K} nearest hold an estimated {:.2} \
             of the matches, below the target {} ({:.1} of {:.1} estimated farther away)",
            recall(MAX_K),
            options.quality_target,
            stats.far_matches,
            total
        ),
    };
    Decision { k, note }
}

/// The pairs of `site`'s inputs, ranked per left row by the similarity of their texts'
/// embeddings (`__rank`, from 1), with the left row's number (`__left_row`); only the `k`
/// nearest per left row when `k` is given, and only the left rows numbered in `only_left` when
/// given (a sample: its other rows are neither embedded nor paired). Columns: the join's, then
/// the three helpers.
fn candidates(
    site: &Site,
    session: &dyn Session,
    k: Option<usize>,
    only_left: Option<&[u64]>,
    encoder: &str,
) -> Result<LogicalPlan> {
    let function = |name: &str| {
        session.scalar_functions().get(name).cloned().ok_or_else(|| {
            datafusion::common::DataFusionError::Plan(format!("semantic join: no function {name}"))
        })
    };
    let (embed, cosine) = (function("ai_embed")?, function("cosine_similarity")?);
    let embed_call = |text: Expr| {
        let args = vec![text, lit(encoder)];
        Expr::ScalarFunction(ScalarFunction { func: Arc::clone(&embed), args })
    };
    // A sample numbers the left rows by their text, so the same numbers pick the same rows
    // whatever order the input's partitions deliver them in (rows of equal text pair alike).
    let number = match only_left {
        Some(_) => row_number().order_by(vec![site.left_text.clone().sort(true, false)]).build()?,
        None => row_number(),
    };
    let mut numbered =
        LogicalPlanBuilder::from(site.left.clone()).window(vec![number.alias("__left_row")])?;
    if let Some(rows) = only_left {
        let rows = rows.iter().map(|&r| lit(r)).collect();
        numbered = numbered.filter(col("__left_row").in_list(rows, false))?;
    }
    let numbered = numbered.build()?;
    let left =
        AiMap::try_new(numbered, vec![embed_call(site.left_text.clone()).alias("__left_vec")])?;
    let right = AiMap::try_new(
        site.right.clone(),
        vec![embed_call(site.right_text.clone()).alias("__right_vec")],
    )?;
    let joined =
        LogicalPlanBuilder::from(LogicalPlan::Extension(Extension { node: Arc::new(left) }))
            .cross_join(LogicalPlan::Extension(Extension { node: Arc::new(right) }))?
            .build()?;
    let mut columns: Vec<Expr> = joined
        .schema()
        .columns()
        .into_iter()
        .filter(|c| c.relation.is_some() || c.name == "__left_row")
        .map(Expr::Column)
        .collect();
    columns.push(
        Expr::ScalarFunction(ScalarFunction {
            func: cosine,
            args: vec![col("__left_vec"), col("__right_vec")],
        })
        .alias("__sim"),
    );
    let rank = row_number()
        .partition_by(vec![col("__left_row")])
        .order_by(vec![col("__sim").sort(false, false)])
        .build()?
        .alias("__rank");
    let ranked = LogicalPlanBuilder::from(joined).project(columns)?.window(vec![rank])?;
    match k {
        Some(k) => ranked.filter(col("__rank").lt_eq(lit(k as u64)))?.build(),
        None => ranked.build(),
    }
}

/// Rows of `plan`.
async fn count_rows(plan: &LogicalPlan, session: &dyn Session) -> Result<u64> {
    let counted = LogicalPlanBuilder::from(plan.clone())
        .aggregate(Vec::<Expr>::new(), vec![datafusion::functions_aggregate::count::count(lit(1))])?
        .build()?;
    let batches =
        collect(session.create_physical_plan(&counted).await?, session.task_ctx()).await?;
    let counted = batches
        .first()
        .map(|b| datafusion::arrow::compute::cast(b.column(0), &DataType::UInt64))
        .transpose()?;
    Ok(counted.map_or(0, |c| c.as_primitive::<UInt64Type>().value(0)))
}

/// The key of a site's statistics: the call, the predicate, both inputs and the models.
fn site_key(site: &Site, models: &str) -> String {
    format!(
        "semantic join v1 ({})\n{}\n{}\n{models}\n{}\n--\n{}",
        murakkab_udfs::prompts::label_wordings(),
        site.call,
        site.predicate,
        lineage(&site.left),
        lineage(&site.right)
    )
}

/// The operands of a chain of string concatenations (`||` or `concat`).
fn concat_parts(expr: &Expr, parts: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::StringConcat, right }) => {
            concat_parts(left, parts);
            concat_parts(right, parts);
        }
        Expr::ScalarFunction(f) if f.func.name() == "concat" => {
            f.args.iter().for_each(|a| concat_parts(a, parts));
        }
        other => parts.push(other.clone()),
    }
}

/// Each side's parts of `text` joined by spaces, if every part reads one side or none.
fn split_text(text: &Expr, left: &LogicalPlan, right: &LogicalPlan) -> Option<(Expr, Expr)> {
    let mut parts = Vec::new();
    concat_parts(text, &mut parts);
    let reads = |e: &Expr, plan: &LogicalPlan| {
        e.column_refs().iter().all(|c: &&Column| plan.schema().has_column(c))
    };
    let (mut left_parts, mut right_parts) = (Vec::new(), Vec::new());
    for part in parts {
        if part.column_refs().is_empty() {
            continue;
        }
        let part = cast(part, DataType::Utf8);
        if reads(&part, left) {
            left_parts.push(part);
        } else if reads(&part, right) {
            right_parts.push(part);
        } else {
            return None;
        }
    }
    if left_parts.is_empty() || right_parts.is_empty() {
        return None;
    }
    let joined =
        |parts: Vec<Expr>| datafusion::functions::string::expr_fn::concat_ws(lit(" "), parts);
    Some((joined(left_parts), joined(right_parts)))
}

impl Site {
    /// The site whose filter is `node`: a filter over one label-scoring call that reads both
    /// sides of an inner join without keys or conditions.
    fn at(node: &LogicalPlan) -> Option<Site> {
        let LogicalPlan::Filter(f) = node else { return None };
        let map = as_ai_map(skip_column_projections(&f.input))?;
        let [call] = map.calls.as_slice() else { return None };
        let LogicalPlan::Join(join) = skip_column_projections(&map.input) else { return None };
        if join.join_type != JoinType::Inner || !join.on.is_empty() || join.filter.is_some() {
            return None;
        }
        // Counting and sampling the inputs must not run a model of their own.
        if contains_ai_map(&join.left).unwrap_or(true)
            || contains_ai_map(&join.right).unwrap_or(true)
        {
            return None;
        }
        let function = function_call(call)?;
        if !matches!(function.func.name(), "ai_filter" | "ai_classify") {
            return None;
        }
        let output = call.schema_name().to_string();
        let predicate_reads_call =
            f.predicate.column_refs().iter().all(|c| c.relation.is_none() && c.name == output);
        if !predicate_reads_call {
            return None;
        }
        let (left_text, right_text) = split_text(function.args.first()?, &join.left, &join.right)?;
        Some(Site {
            predicate: f.predicate.clone(),
            call: call.clone(),
            notes: map.notes.clone(),
            left: join.left.as_ref().clone(),
            right: join.right.as_ref().clone(),
            left_text,
            right_text,
            top_schema: Arc::clone(node.schema()),
        })
    }

    /// The site over its `k` nearest candidates, producing the columns it did.
    fn rebuild(
        &self,
        session: &dyn Session,
        k: usize,
        note: &str,
        encoder: &str,
    ) -> Result<LogicalPlan> {
        let ranked = candidates(self, session, Some(k), None, encoder)?;
        // The join's columns only: the helpers are dropped before the model is asked.
        let columns: Vec<Expr> = ranked
            .schema()
            .columns()
            .into_iter()
            .filter(|c| c.relation.is_some())
            .map(Expr::Column)
            .collect();
        let pairs = LogicalPlanBuilder::from(ranked).project(columns)?.build()?;
        let mut notes = self.notes.clone();
        notes.push(note.to_string());
        let map = AiMap::try_new(pairs, vec![self.call.clone()])?.with_notes(notes);
        let map = LogicalPlan::Extension(Extension { node: Arc::new(map) });
        let filter = LogicalPlan::Filter(Filter::try_new(self.predicate.clone(), Arc::new(map))?);
        let columns: Vec<Expr> = self.top_schema.columns().into_iter().map(Expr::Column).collect();
        LogicalPlanBuilder::from(filter).project(columns)?.build()
    }
}

/// `node` (the site's filter) with `note` on its AI map, the first met going down.
fn with_note(node: &LogicalPlan, note: &str) -> Result<LogicalPlan> {
    if let Some(map) = as_ai_map(node) {
        let mut notes = map.notes.clone();
        notes.push(note.to_string());
        let map = map.clone().with_notes(notes);
        return Ok(LogicalPlan::Extension(Extension { node: Arc::new(map) }));
    }
    match node {
        LogicalPlan::Filter(_) | LogicalPlan::Projection(_) => {
            let inputs =
                node.inputs().into_iter().map(|i| with_note(i, note)).collect::<Result<_>>()?;
            node.with_new_exprs(node.expressions(), inputs)
        }
        _ => Ok(node.clone()),
    }
}

/// Every site in `plan`.
fn collect_sites(plan: &LogicalPlan, found: &mut Vec<Site>) {
    if let Some(site) = Site::at(plan) {
        found.push(site);
    }
    for input in plan.inputs() {
        collect_sites(input, found);
    }
}

/// `plan` with each decided site rewritten (blocked, or annotated with why not).
fn rewrite(
    plan: &LogicalPlan,
    decisions: &HashMap<String, Decision>,
    session: &dyn Session,
    models: &str,
    encoder: &str,
) -> Result<LogicalPlan> {
    let inputs: Vec<LogicalPlan> = plan
        .inputs()
        .into_iter()
        .map(|i| rewrite(i, decisions, session, models, encoder))
        .collect::<Result<_>>()?;
    let plan = if inputs.is_empty() {
        plan.clone()
    } else {
        plan.with_new_exprs(plan.expressions(), inputs)?
    };
    let Some(site) = Site::at(&plan) else { return Ok(plan) };
    let Some(decision) = decisions.get(&site_key(&site, models)) else { return Ok(plan) };
    match decision.k {
        Some(k) => site.rebuild(session, k, &decision.note, encoder),
        None => with_note(&plan, &decision.note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(within: &[usize], far: f64) -> BlockingStats {
        let mut matches_within: Vec<usize> = within.to_vec();
        matches_within.resize(MAX_K, *within.last().unwrap_or(&0));
        BlockingStats {
            left_rows: 100,
            right_rows: 300,
            sample_rows: 16,
            near_matches: matches_within[MAX_K - 1],
            matches_within,
            far_matches: far,
            k: None,
        }
    }

    #[test]
    fn k_is_the_fewest_nearest_that_hold_the_target_share_of_the_matches() {
        assert_eq!(choose_k(&stats(&[8, 9, 10], 0.0), 0.9), Some(2));
        assert_eq!(choose_k(&stats(&[10], 0.0), 0.9), Some(1));
        // Matches estimated far away count against every k.
        assert_eq!(choose_k(&stats(&[8, 9, 10], 0.5), 0.9), Some(3));
        assert_eq!(choose_k(&stats(&[8, 9, 10], 5.0), 0.9), None);
        // Too few matches to say anything.
        assert_eq!(choose_k(&stats(&[1, 2], 0.0), 0.9), None);
    }

    #[test]
    fn the_text_splits_at_concatenations_into_each_sides_parts() {
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::logical_expr::table_scan;
        let schema = Schema::new(vec![Field::new("name", DataType::Utf8, true)]);
        let left = table_scan(Some("l"), &schema, None).unwrap().build().unwrap();
        let right = table_scan(Some("r"), &schema, None).unwrap().build().unwrap();
        let concat = |a: Expr, b: Expr| {
            Expr::BinaryExpr(BinaryExpr::new(Box::new(a), Operator::StringConcat, Box::new(b)))
        };
        let text = concat(concat(concat(lit("A: "), col("l.name")), lit(" B: ")), col("r.name"));
        let (l, r) = split_text(&text, &left, &right).unwrap();
        assert!(l.to_string().contains("l.name") && !l.to_string().contains("r.name"), "{l}");
        assert!(r.to_string().contains("r.name") && !r.to_string().contains("l.name"), "{r}");
        // A part reading both sides cannot be split.
        let mixed = col("l.name").eq(col("r.name"));
        assert!(split_text(&cast(mixed, DataType::Utf8), &left, &right).is_none());
        // One side only: nothing to block on.
        assert!(split_text(&col("l.name"), &left, &right).is_none());
    }
}
