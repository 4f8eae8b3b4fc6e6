//! The rule that lifts AI calls out of projections and filters into [`AiMap`] nodes.
//!
//! Before:
//! ```text
//! Projection: t.id, ai_classify(t.body, [a, b]) AS label
//!   Filter: t.id > 3 AND ai_filter(t.body, 'x')
//!     TableScan: t
//! ```
//! After:
//! ```text
//! Projection: t.id, __ai_1 AS label
//!   AiMap: ai_classify(t.body, [a, b]) AS __ai_1
//!     Projection: t.id, t.body            (the filter's own columns, the AI column dropped)
//!       Filter: __ai_0
//!         AiMap: ai_filter(t.body, 'x') AS __ai_0
//!           Filter: t.id > 3              (pushed below by DataFusion: fewer model calls)
//!             TableScan: t
//! ```
//! A conjunction of AI predicates (`WHERE ai_filter(a, 'x') AND ai_filter(b, 'y')`) becomes one
//! map and filter per conjunct, stacked, when the optimizer is on: a row reaches the second
//! model only if it passed the first (see `lift_from_filter`).
//!
//! Aggregates are handled the same way: AI calls in grouping expressions and aggregate arguments
//! move into a map below the aggregate, and a projection above restores the output names.
//!
//! Joins: a call in a join condition that reads one input's columns only is computed by a map
//! on that input (for every join type: it is only a precomputed column), so an equi-join on an
//! AI-derived key stays a hash join. In an inner join, a conjunct whose call reads both inputs
//! becomes a filter above the join, lifted like any filter:
//! ```text
//! Inner Join: a.id = b.a_id Filter: ai_filter(a.x || b.y, 'match')
//! ```
//! becomes
//! ```text
//! Projection: a.*, b.*
//!   Filter: __ai_0
//!     AiMap: ai_filter(a.x || b.y, 'match') AS __ai_0
//!       Inner Join: a.id = b.a_id
//! ```
//! (Turning such a predicate into embedding blocking plus a filter on the candidates is the
//! optimizer's semantic-join rule.) In an outer join such a call stays in the join condition and
//! runs as a plain function, since a filter above would drop the unmatched rows.
//!
//! Sorts too: `ORDER BY ai_classify(t.body, [a, b])` sorts on a map's column, and a projection
//! above the sort drops that column again:
//! ```text
//! Projection: t.id, t.body
//!   Sort: __ai_0 ASC NULLS LAST
//!     AiMap: ai_classify(t.body, [a, b]) AS __ai_0
//!       TableScan: t
//! ```
//! so the optimizer chooses the sort key's model like any other call's (a sort key computed by
//! a different model than the filter or projection asking the same question could disagree
//! with them), and the calls stream to the model in chunks.
//!
//! Only calls whose arguments hold no other AI call are lifted in one pass; a nested call is
//! lifted by the next pass of the optimizer's fixed-point loop, into a map above the first. Calls
//! in window functions are left in place: they still run, as plain functions (not streamed in
//! chunks).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, Filter, Join, JoinType, LogicalPlan, Projection, Sort, SortExpr,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use crate::ai_map::AiMap;

/// The scalar functions that call a model and are lifted.
pub const MODEL_FUNCTIONS: &[&str] =
    &["ai_complete", "ai_filter", "ai_classify", "ai_extract", "ai_embed", "ai_similarity"];

fn is_model_call(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if MODEL_FUNCTIONS.contains(&f.name()))
}

fn contains_model_call(e: &Expr) -> bool {
    e.exists(|x| Ok(is_model_call(x))).unwrap_or(false)
}

/// Lifts AI calls into `AiMap` nodes.
#[derive(Debug, Default)]
pub struct LiftAiCalls;

/// Replaces the innermost AI calls in `exprs` by columns, returning the calls (aliased).
fn extract_calls(exprs: Vec<Expr>, next_id: &mut usize) -> Result<(Vec<Expr>, Vec<Expr>)> {
    extract_calls_where(exprs, next_id, |_| true)
}

/// Like [`extract_calls`], for the innermost calls that `accept` says may be lifted.
fn extract_calls_where(
    exprs: Vec<Expr>,
    next_id: &mut usize,
    accept: impl Fn(&Expr) -> bool,
) -> Result<(Vec<Expr>, Vec<Expr>)> {
    let mut calls: Vec<Expr> = Vec::new();
    let mut out = Vec::with_capacity(exprs.len());
    for expr in exprs {
        let rewritten = expr
            .transform_up(|e| {
                if is_model_call(&e) {
                    let Expr::ScalarFunction(f) = &e else { return Ok(Transformed::no(e)) };
                    // A call whose argument was lifted in this round (its children are
                    // rewritten first) reads a column this map produces: it waits for the
                    // next pass and a map above.
                    let reads_lifted = |a: &Expr| {
                        a.column_refs().iter().any(|c| {
                            c.relation.is_none()
                                && calls
                                    .iter()
                                    .any(|call| matches!(call, Expr::Alias(x) if x.name == c.name))
                        })
                    };
                    if f.args.iter().any(|a| contains_model_call(a) || reads_lifted(a))
                        || !accept(&e)
                    {
                        return Ok(Transformed::no(e));
                    }
                    // The same call twice in one node is computed once.
                    let existing = calls.iter().find_map(|c| match c {
                        Expr::Alias(a) if *a.expr == e => Some(a.name.clone()),
                        _ => None,
                    });
                    let name = existing.unwrap_or_else(|| {
                        let name = format!("__ai_{next_id}");
                        *next_id += 1;
                        calls.push(e.clone().alias(name.clone()));
                        name
                    });
                    return Ok(Transformed::new(
                        Expr::Column(Column::from_name(name)),
                        true,
                        TreeNodeRecursion::Jump,
                    ));
                }
                Ok(Transformed::no(e))
            })?
            .data;
        out.push(rewritten);
    }
    Ok((out, calls))
}

/// The first unused `__ai_<n>` number in `plan`'s subtree.
fn first_free_id(plan: &LogicalPlan) -> usize {
    let mut next = 0;
    let _ = plan.apply(|p| {
        for (_, field) in p.schema().iter() {
            if let Some(n) =
                field.name().strip_prefix("__ai_").and_then(|n| n.parse::<usize>().ok())
            {
                next = next.max(n + 1);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    next
}

/// `plan` under an [`AiMap`] of `calls`, or unchanged when there are none.
fn with_map(plan: Arc<LogicalPlan>, calls: Vec<Expr>) -> Result<Arc<LogicalPlan>> {
    if calls.is_empty() {
        return Ok(plan);
    }
    let map = AiMap::try_new(Arc::unwrap_or_clone(plan), calls)?;
    Ok(Arc::new(LogicalPlan::Extension(Extension { node: Arc::new(map) })))
}

/// Whether every column `e` reads belongs to `plan`'s output.
fn reads_only(e: &Expr, plan: &LogicalPlan) -> bool {
    e.column_refs().iter().all(|c| plan.schema().has_column(c))
}

/// A projection of `schema`'s columns from `input` (to restore a node's output columns).
fn project_columns(
    schema: &datafusion::common::DFSchema,
    input: Arc<LogicalPlan>,
) -> Result<LogicalPlan> {
    let columns = schema
        .iter()
        .map(|(q, field)| Expr::Column(Column::new(q.cloned(), field.name())))
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(columns, input)?))
}

fn join_has_model_call(j: &Join) -> bool {
    j.on.iter().any(|(l, r)| contains_model_call(l) || contains_model_call(r))
        || j.filter.as_ref().is_some_and(contains_model_call)
}

/// Lifts the AI calls of a join's condition: one-sided calls into maps on their input, and
/// (inner joins only) conjuncts that read both inputs into a filter above the join. Returns the
/// plan with the join's output columns, and the conjuncts for the filter above.
fn lift_from_join(j: Join) -> Result<(LogicalPlan, Vec<Expr>)> {
    let mut next_id = first_free_id(&j.left).max(first_free_id(&j.right));
    let (left_keys, right_keys): (Vec<Expr>, Vec<Expr>) = j.on.iter().cloned().unzip();
    let (left_keys, mut left_calls) = extract_calls(left_keys, &mut next_id)?;
    let (right_keys, mut right_calls) = extract_calls(right_keys, &mut next_id)?;
    let mut kept = Vec::new();
    let mut above = Vec::new();
    for conjunct in j.filter.clone().map(split_conjunction_owned).unwrap_or_default() {
        if !contains_model_call(&conjunct) {
            kept.push(conjunct);
            continue;
        }
        let (mut rewritten, calls) =
            extract_calls_where(vec![conjunct], &mut next_id, |e| reads_only(e, &j.left))?;
        left_calls.extend(calls);
        let (mut rewritten, calls) =
            extract_calls_where(vec![rewritten.remove(0)], &mut next_id, |e| {
                reads_only(e, &j.right)
            })?;
        right_calls.extend(calls);
        let conjunct = rewritten.remove(0);
        if j.join_type == JoinType::Inner && contains_model_call(&conjunct) {
            above.push(conjunct);
        } else {
            kept.push(conjunct);
        }
    }
    let join = Join::try_new(
        with_map(Arc::clone(&j.left), left_calls)?,
        with_map(Arc::clone(&j.right), right_calls)?,
        left_keys.into_iter().zip(right_keys).collect(),
        conjunction(kept),
        j.join_type,
        j.join_constraint,
        j.null_equality,
        j.null_aware,
    )?;
    let changed = join.schema.fields().len() != j.schema.fields().len();
    let join = Arc::new(LogicalPlan::Join(join));
    if !above.is_empty() {
        // The filter above needs every input column; the caller restores the output columns.
        return Ok((Arc::unwrap_or_clone(join), above));
    }
    let plan = if changed { project_columns(&j.schema, join)? } else { Arc::unwrap_or_clone(join) };
    Ok((plan, above))
}

/// A filter's AI calls in a map below it; a projection above drops their columns again.
///
/// With `one_map_per_conjunct` (the optimizer on), each conjunct that calls a model gets its
/// own map and filter, stacked so a row reaches a conjunct's model only if it passed those
/// below: `WHERE ai_filter(a, 'x') AND ai_filter(b, 'y')` asks the second question only about
/// rows that passed the first. Conjuncts without AI calls go below all of them, and the kinds
/// of call that only score labels go below the ones that generate text. Without it (the naive
/// baseline), one map computes every call for every row.
fn lift_from_filter(f: Filter, one_map_per_conjunct: bool) -> Result<LogicalPlan> {
    let mut next_id = first_free_id(&f.input);
    let input_schema = Arc::clone(f.input.schema());
    let (plain, mut ai): (Vec<Expr>, Vec<Expr>) =
        split_conjunction_owned(f.predicate).into_iter().partition(|c| !contains_model_call(c));
    // Stable: conjuncts of the same cost class keep the order they were written in.
    ai.sort_by_key(generates_text);
    let groups: Vec<Vec<Expr>> =
        if one_map_per_conjunct { ai.into_iter().map(|c| vec![c]).collect() } else { vec![ai] };
    let mut plan = Arc::unwrap_or_clone(f.input);
    if let Some(predicate) = conjunction(plain) {
        plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
    }
    for group in groups {
        let Some(predicate) = conjunction(group) else { continue };
        let (mut predicate, calls) = extract_calls(vec![predicate], &mut next_id)?;
        let map = AiMap::try_new(plan, calls)?;
        plan = LogicalPlan::Filter(Filter::try_new(
            predicate.remove(0),
            Arc::new(LogicalPlan::Extension(Extension { node: Arc::new(map) })),
        )?);
    }
    // The filter's output is its input's columns: drop the AI columns again.
    project_columns(&input_schema, Arc::new(plan))
}

/// Whether the session runs Murakkab's cost-based rules (off: the naive baseline's plan).
fn optimizer_on(config: &dyn OptimizerConfig) -> bool {
    crate::MurakkabOptions::from_config(&config.options()).optimizer_enabled
}

/// Whether `e` calls a function that generates text (far costlier per row than scoring labels).
fn generates_text(e: &Expr) -> bool {
    e.exists(|x| {
        Ok(matches!(x, Expr::ScalarFunction(f) if matches!(f.func.name(), "ai_complete" | "ai_extract")))
    })
    .unwrap_or(false)
}

impl OptimizerRule for LiftAiCalls {
    fn name(&self) -> &str {
        "murakkab_lift_ai_calls"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match plan {
            LogicalPlan::Projection(p) if p.expr.iter().any(contains_model_call) => {
                let mut next_id = first_free_id(&p.input);
                let original_names: Vec<String> =
                    p.expr.iter().map(|e| e.schema_name().to_string()).collect();
                let (exprs, calls) = extract_calls(p.expr.clone(), &mut next_id)?;
                let map = AiMap::try_new(Arc::unwrap_or_clone(p.input), calls)?;
                let input = LogicalPlan::Extension(Extension { node: Arc::new(map) });
                // Keep every output column's name: a rewritten expression is aliased back.
                let exprs = exprs
                    .into_iter()
                    .zip(original_names)
                    .map(|(e, name)| match e {
                        Expr::Alias(_) => e,
                        e if e.schema_name().to_string() == name => e,
                        e => e.alias(name),
                    })
                    .collect();
                let projection = Projection::try_new(exprs, Arc::new(input))?;
                Ok(Transformed::yes(LogicalPlan::Projection(projection)))
            }
            LogicalPlan::Filter(f) if contains_model_call(&f.predicate) => {
                Ok(Transformed::yes(lift_from_filter(f, optimizer_on(config))?))
            }
            LogicalPlan::Aggregate(a)
                if a.group_expr.iter().chain(&a.aggr_expr).any(contains_model_call) =>
            {
                let mut next_id = first_free_id(&a.input);
                let (group, mut calls) = extract_calls(a.group_expr.clone(), &mut next_id)?;
                let (aggregates, more) = extract_calls(a.aggr_expr.clone(), &mut next_id)?;
                calls.extend(more);
                let map = AiMap::try_new(Arc::unwrap_or_clone(a.input), calls)?;
                let input = Arc::new(LogicalPlan::Extension(Extension { node: Arc::new(map) }));
                let aggregate = Aggregate::try_new(input, group, aggregates)?;
                // The aggregate's output names follow its expressions; give the old ones back.
                let renamed = aggregate
                    .schema
                    .iter()
                    .zip(a.schema.iter())
                    .map(|((new_q, new_f), (old_q, old_f))| {
                        Expr::Column(Column::new(new_q.cloned(), new_f.name()))
                            .alias_qualified(old_q.cloned(), old_f.name())
                    })
                    .collect();
                let projection =
                    Projection::try_new(renamed, Arc::new(LogicalPlan::Aggregate(aggregate)))?;
                Ok(Transformed::yes(LogicalPlan::Projection(projection)))
            }
            LogicalPlan::Sort(s) if s.expr.iter().any(|k| contains_model_call(&k.expr)) => {
                let mut next_id = first_free_id(&s.input);
                let schema = Arc::clone(s.input.schema());
                let keys: Vec<Expr> = s.expr.iter().map(|k| k.expr.clone()).collect();
                let (keys, calls) = extract_calls(keys, &mut next_id)?;
                let keys = keys
                    .into_iter()
                    .zip(&s.expr)
                    .map(|(expr, k)| SortExpr { expr: expr.unalias(), ..k.clone() })
                    .collect();
                let sort = Sort { expr: keys, input: with_map(s.input, calls)?, fetch: s.fetch };
                Ok(Transformed::yes(project_columns(&schema, Arc::new(LogicalPlan::Sort(sort)))?))
            }
            LogicalPlan::Join(j) if join_has_model_call(&j) => {
                let schema = Arc::clone(&j.schema);
                let (join, above) = lift_from_join(j)?;
                let Some(predicate) = conjunction(above) else {
                    return Ok(Transformed::yes(join));
                };
                let filter = Filter::try_new(predicate, Arc::new(join))?;
                let lifted = lift_from_filter(filter, optimizer_on(config))?;
                Ok(Transformed::yes(project_columns(&schema, Arc::new(lifted))?))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}
