//! Rule: a top-k (`ORDER BY ... LIMIT k`) over an AI filter, whose keys do not depend on the
//! filter's answers, sorts the input first and asks the model about rows in key order until k
//! rows pass, instead of asking about every row and then keeping k.
//!
//! Before (`SELECT id FROM bbc WHERE ai_filter(headline, 'Good news') ORDER BY id DESC LIMIT
//! 20`):
//! ```text
//! Sort: bbc.id DESC NULLS FIRST, fetch=20
//!   Projection: bbc.id
//!     Filter: __ai_0
//!       AiMap: ai_filter(bbc.headline, Good news) AS __ai_0    (every row reaches the model)
//!         TableScan: bbc
//! ```
//! After:
//! ```text
//! Sort: bbc.id DESC NULLS FIRST, fetch=20
//!   Projection: bbc.id
//!     Filter: __ai_0
//!       AiMap: ai_filter(...) AS __ai_0; in key order until 20 rows pass __ai_0
//!         Sort: bbc.id DESC NULLS FIRST                         (relational, no model)
//!           TableScan: bbc
//! ```
//! The map reads the sorted rows as one stream, in chunks (`AiMapExec`), and stops pulling
//! once 20 of its rows satisfy the filter above it: those are the first 20 passing rows in key
//! order, so the top sort keeps exactly the rows the plan before keeps (with ties in the keys,
//! one of the valid answers, as for any top-k). The model sees about `k / selectivity` rows
//! plus the rest of the last chunk. The top sort stays: it costs k rows and does not depend on
//! how the rows above the map are partitioned.
//!
//! A key that is an embedding similarity (`ORDER BY ai_similarity(headline, 'oil prices') DESC
//! LIMIT 20`) is computed by a map of its own above the filter, on the rows that pass: that map
//! moves below the filter, so every row is embedded and sorted and the filter asks in that
//! order. Embedding a headline with MiniLM costs a fraction of asking qwen2.5 about it, so
//! this is worth it whenever the filter would stop before the end: on all 2,225 BBC headlines,
//! the 20 business ones most like 'oil prices' embedded all 2,225 (3.7 s) and classified 112,
//! where the plan before classified all 2,225 and embedded the ~270 business ones. Only maps of
//! `ai_similarity` / `ai_embed` calls move (by kind: the rule sees no costs).
//!
//! A chain of AI filters (`WHERE p1 AND p2`, stacked by `LiftAiCalls`) is sorted below its
//! lowest map; every map of the chain reads in key order and the top one stops, so the maps
//! below stop too (each pulls a chunk at a time). `order_predicates` may still reorder such a
//! chain, without a sample (one of the whole input would mostly be rows the query never reads);
//! it keeps the reading order and moves the stop to the new top map. It leaves a chain over a
//! moved embedding map as it is (its input calls a model).
//!
//! Does not apply when a key reads an AI column other than an embedding's (`ORDER BY
//! ai_classify(...)`); when anything but projections (and a view's or subquery's name) stands
//! between the sort and the filter, or anything but those, filters and AI maps between the
//! filter and the plan the keys can be computed on; when the sort has no limit
//! (`TopKBelowAiMap` handles a top-k right above a map); or with `murakkab.optimizer.enabled =
//! false` (the naive baseline asks about every row).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{
    Expr, Extension, Filter, LogicalPlan, Projection, Sort, SortExpr, SubqueryAlias,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use murakkab_compiler::{AiMap, MurakkabOptions, StopAfter};

use crate::choose_model::function_call;
use crate::top_k_below_ai_map::through_projection;

/// Sorts the input of an AI filter under a top-k and stops its map at k passing rows.
#[derive(Debug, Default)]
pub struct TopKOverAiFilter;

/// The nodes between the sort and the plan its keys are computed on, top first.
enum Step<'a> {
    Projection(&'a Projection),
    /// A view's or subquery's name (`SubqueryAlias`): the same columns, requalified.
    Alias(&'a SubqueryAlias),
    Filter(&'a Filter),
    Map(&'a AiMap),
    /// A map above the filters whose calls only embed (`ai_similarity`, `ai_embed`): the keys
    /// may read it, and it moves below the chain, where the sort needs its column.
    KeyMap(&'a AiMap),
}

/// Whether every call of `map` only embeds text (a small encoder's work, a fraction of a label
/// test's or a generation's on the same row).
fn embeds_only(map: &AiMap) -> bool {
    map.calls.iter().all(|call| {
        function_call(call).is_some_and(|f| matches!(f.func.name(), "ai_similarity" | "ai_embed"))
    })
}

/// The steps below the sort and the plan under them; `None` unless the first step that is not
/// a projection is a filter over an AI map (through projections of plain columns, which the
/// filter's predicate can be evaluated over the map's output through).
fn chain_below(input: &LogicalPlan) -> Option<(Vec<Step<'_>>, &LogicalPlan)> {
    let mut steps = Vec::new();
    let mut node = input;
    let mut saw_filter = false;
    loop {
        match node {
            LogicalPlan::Projection(p) => {
                steps.push(Step::Projection(p));
                node = &p.input;
            }
            LogicalPlan::SubqueryAlias(a) => {
                steps.push(Step::Alias(a));
                node = &a.input;
            }
            LogicalPlan::Filter(f) => {
                saw_filter = true;
                steps.push(Step::Filter(f));
                node = &f.input;
            }
            LogicalPlan::Extension(e) => match e.node.as_any().downcast_ref::<AiMap>() {
                Some(map) if saw_filter => {
                    steps.push(Step::Map(map));
                    node = &map.input;
                }
                Some(map) if embeds_only(map) => {
                    steps.push(Step::KeyMap(map));
                    node = &map.input;
                }
                _ => break,
            },
            _ => break,
        }
    }
    let first_map = steps.iter().position(|s| matches!(s, Step::Map(_)))?;
    let first_filter = steps.iter().position(|s| matches!(s, Step::Filter(_)))?;
    let between_are_projections = steps[first_filter + 1..first_map]
        .iter()
        .all(|s| matches!(s, Step::Projection(_) | Step::Alias(_)));
    // A `Step::Map` is only taken after a filter, so `first_filter < first_map` holds.
    between_are_projections.then_some((steps, node))
}

/// `expr` over an alias's columns rewritten to its input's (the same columns, in order).
fn through_alias(expr: Expr, alias: &SubqueryAlias) -> Result<Expr> {
    let renamed: HashMap<Column, Column> =
        alias.schema.columns().into_iter().zip(alias.input.schema().columns()).collect();
    Ok(expr
        .transform(|e| match &e {
            Expr::Column(c) => match renamed.get(c) {
                Some(inner) => Ok(Transformed::yes(Expr::Column(inner.clone()))),
                None => Ok(Transformed::no(e)),
            },
            _ => Ok(Transformed::no(e)),
        })?
        .data)
}

/// `expr` rewritten through `steps` (top first) to the columns below them, or `None` if it
/// reads the output of a filter's map on the way (a `Step::Map`).
fn through_steps(mut expr: Expr, steps: &[Step<'_>]) -> Option<Expr> {
    for step in steps {
        match step {
            Step::Projection(p) => expr = through_projection(expr, p).ok()?,
            Step::Alias(a) => expr = through_alias(expr, a).ok()?,
            Step::Map(map) => {
                let outputs = map.output_names();
                if expr.column_refs().iter().any(|c| outputs.contains(&c.name)) {
                    return None;
                }
            }
            Step::Filter(_) | Step::KeyMap(_) => {}
        }
    }
    Some(expr)
}

/// The key maps with their calls over `base` (bottom first); `None` if a call reads a filter's
/// answer or a column `base` lacks.
fn key_maps_at_base<'a>(
    steps: &[Step<'a>],
    base: &LogicalPlan,
) -> Option<Vec<(&'a AiMap, Vec<Expr>)>> {
    let mut maps = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let Step::KeyMap(map) = step else { continue };
        let mut calls = Vec::with_capacity(map.calls.len());
        for call in &map.calls {
            let call = through_steps(call.clone(), &steps[i + 1..])?;
            if call.column_refs().iter().any(|c| !base.schema().has_column(c)) {
                return None;
            }
            calls.push(call);
        }
        maps.push((*map, calls));
    }
    maps.reverse();
    Some(maps)
}

/// The names of the columns the key maps among `steps` add.
fn key_columns(steps: &[Step<'_>]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::KeyMap(map) => Some(map.output_names()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The sort's keys below the steps, or `None` if one reads a filter's answer, or a column
/// neither `base` nor a key map has.
fn keys_at_base(sort: &Sort, steps: &[Step<'_>], base: &LogicalPlan) -> Option<Vec<SortExpr>> {
    let key_columns = key_columns(steps);
    let mut keys = Vec::with_capacity(sort.expr.len());
    for key in &sort.expr {
        let expr = through_steps(key.expr.clone(), steps)?;
        let known = |c: &&Column| base.schema().has_column(c) || key_columns.contains(&c.name);
        if !expr.column_refs().iter().all(known) {
            return None;
        }
        keys.push(SortExpr { expr, ..key.clone() });
    }
    Some(keys)
}

/// The steps rebuilt over `input` (bottom first), every map in key order and the top one
/// stopping after `rows` rows pass the filter over it; key maps are left out (they are below
/// `input` now) and projections keep their columns.
fn rebuild(steps: &[Step<'_>], input: LogicalPlan, rows: usize) -> Result<LogicalPlan> {
    let key_columns = key_columns(steps);
    let top_map = steps.iter().position(|s| matches!(s, Step::Map(_)));
    let stop_predicate = steps.iter().find_map(|s| match s {
        Step::Filter(f) => Some(f.predicate.clone()),
        _ => None,
    });
    let mut plan = input;
    for (i, step) in steps.iter().enumerate().rev() {
        plan = match step {
            Step::Projection(p) => {
                let mut exprs = p.expr.clone();
                for name in &key_columns {
                    if !p.schema.fields().iter().any(|f| f.name() == name) {
                        exprs.push(Expr::Column(Column::from_name(name)));
                    }
                }
                LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?)
            }
            Step::KeyMap(_) => plan,
            Step::Alias(a) => {
                LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(plan), a.alias.clone())?)
            }
            Step::Filter(f) => {
                LogicalPlan::Filter(Filter::try_new(f.predicate.clone(), Arc::new(plan))?)
            }
            Step::Map(map) => {
                let stop = (Some(i) == top_map)
                    .then(|| stop_predicate.clone().map(|predicate| StopAfter { predicate, rows }))
                    .flatten();
                let map = map.rebuilt(plan, map.calls.clone())?.in_key_order(stop);
                LogicalPlan::Extension(Extension { node: Arc::new(map) })
            }
        };
    }
    Ok(plan)
}

impl OptimizerRule for TopKOverAiFilter {
    fn name(&self) -> &str {
        "murakkab_top_k_over_ai_filter"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !MurakkabOptions::from_config(&config.options()).optimizer_enabled {
            return Ok(Transformed::no(plan));
        }
        let LogicalPlan::Sort(sort) = &plan else { return Ok(Transformed::no(plan)) };
        let Some(fetch) = sort.fetch else { return Ok(Transformed::no(plan)) };
        let Some((steps, base)) = chain_below(&sort.input) else {
            return Ok(Transformed::no(plan));
        };
        let already = steps.iter().any(|s| matches!(s, Step::Map(m) if m.in_key_order));
        if already || fetch == 0 {
            return Ok(Transformed::no(plan));
        }
        let (Some(keys), Some(key_maps)) =
            (keys_at_base(sort, &steps, base), key_maps_at_base(&steps, base))
        else {
            return Ok(Transformed::no(plan));
        };
        // A key map the keys do not read stays where it is (`TopKBelowAiMap` moves the top-k
        // below it first).
        let read: Vec<String> =
            keys.iter().flat_map(|k| k.expr.column_refs()).map(|c| c.name.clone()).collect();
        if key_maps.iter().any(|(map, _)| !map.output_names().iter().any(|n| read.contains(n))) {
            return Ok(Transformed::no(plan));
        }
        let mut below = base.clone();
        for (map, calls) in key_maps {
            below =
                LogicalPlan::Extension(Extension { node: Arc::new(map.rebuilt(below, calls)?) });
        }
        let sorted = LogicalPlan::Sort(Sort { expr: keys, input: Arc::new(below), fetch: None });
        // A plan this rule cannot rebuild is left as it was: the rule saves work, it must not
        // fail a query.
        let Ok(input) = rebuild(&steps, sorted, fetch) else {
            return Ok(Transformed::no(plan));
        };
        Ok(Transformed::yes(LogicalPlan::Sort(Sort {
            expr: sort.expr.clone(),
            input: Arc::new(input),
            fetch: sort.fetch,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::expr::ScalarFunction;
    use datafusion::logical_expr::{
        ColumnarValue, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
        Volatility, col, lit, table_scan,
    };
    use datafusion::optimizer::OptimizerContext;

    fn scan() -> LogicalPlan {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]);
        table_scan(Some("t"), &schema, None).unwrap().build().unwrap()
    }

    /// `Filter: __ai_0` over a map of `text` (standing in for an AI call) over `input`.
    fn ai_filter(input: LogicalPlan, n: usize) -> LogicalPlan {
        let name = format!("__ai_{n}");
        let map = AiMap::try_new(input, vec![col("t.text").eq(lit("yes")).alias(&name)]).unwrap();
        LogicalPlanBuilder::from(LogicalPlan::Extension(Extension { node: Arc::new(map) }))
            .filter(col(name.as_str()))
            .unwrap()
            .build()
            .unwrap()
    }

    fn optimized(plan: LogicalPlan) -> String {
        let rewritten = TopKOverAiFilter.rewrite(plan, &OptimizerContext::new()).unwrap().data;
        rewritten.display_indent().to_string()
    }

    fn top_k(input: LogicalPlan, key: &str, fetch: usize) -> LogicalPlan {
        LogicalPlanBuilder::from(input)
            .project(vec![col("t.id")])
            .unwrap()
            .sort_with_limit(vec![col(key).sort(false, true)], Some(fetch))
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn the_input_is_sorted_below_the_map_which_stops_at_k_passing_rows() {
        let plan = top_k(ai_filter(scan(), 0), "t.id", 5);
        let expected = "\
Sort: t.id DESC NULLS FIRST, fetch=5
  Projection: t.id
    Filter: __ai_0
      AiMap: t.text = Utf8(\"yes\") AS __ai_0; in key order until 5 rows pass __ai_0
        Sort: t.id DESC NULLS FIRST
          TableScan: t";
        assert_eq!(optimized(plan), expected);
    }

    #[test]
    fn a_chain_of_ai_filters_is_sorted_below_its_lowest_map() {
        let plan = top_k(ai_filter(ai_filter(scan(), 0), 1), "t.id", 5);
        let expected = "\
Sort: t.id DESC NULLS FIRST, fetch=5
  Projection: t.id
    Filter: __ai_1
      AiMap: t.text = Utf8(\"yes\") AS __ai_1; in key order until 5 rows pass __ai_1
        Filter: __ai_0
          AiMap: t.text = Utf8(\"yes\") AS __ai_0; in key order
            Sort: t.id DESC NULLS FIRST
              TableScan: t";
        assert_eq!(optimized(plan), expected);
    }

    #[test]
    fn keys_on_an_ai_column_no_limit_or_no_filter_leave_the_plan() {
        // ORDER BY the AI answer itself.
        let by_answer = LogicalPlanBuilder::from(ai_filter(scan(), 0))
            .sort_with_limit(vec![col("__ai_0").sort(false, true)], Some(5))
            .unwrap()
            .build()
            .unwrap();
        let before = by_answer.display_indent().to_string();
        assert_eq!(optimized(by_answer), before);
        // No limit: every row is needed anyway.
        let unlimited = LogicalPlanBuilder::from(ai_filter(scan(), 0))
            .sort(vec![col("t.id").sort(true, true)])
            .unwrap()
            .build()
            .unwrap();
        let before = unlimited.display_indent().to_string();
        assert_eq!(optimized(unlimited), before);
        // A map with no filter over it (TopKBelowAiMap's case).
        let map =
            AiMap::try_new(scan(), vec![col("t.text").eq(lit("yes")).alias("__ai_0")]).unwrap();
        let plain = top_k(LogicalPlan::Extension(Extension { node: Arc::new(map) }), "t.id", 5);
        let before = plain.display_indent().to_string();
        assert_eq!(optimized(plain), before);
    }

    #[test]
    fn a_key_read_from_an_embedding_map_moves_that_map_below_the_filter() {
        let udf = Arc::new(ScalarUDF::from(FakeSimilarity::new()));
        let similarity =
            Expr::ScalarFunction(ScalarFunction::new_udf(udf, vec![col("t.text"), lit("oil")]))
                .alias("__ai_1");
        let map = AiMap::try_new(ai_filter(scan(), 0), vec![similarity]).unwrap();
        let plan =
            LogicalPlanBuilder::from(LogicalPlan::Extension(Extension { node: Arc::new(map) }))
                .sort_with_limit(vec![col("__ai_1").sort(false, true)], Some(5))
                .unwrap()
                .build()
                .unwrap();
        let expected = "\
Sort: __ai_1 DESC NULLS FIRST, fetch=5
  Filter: __ai_0
    AiMap: t.text = Utf8(\"yes\") AS __ai_0; in key order until 5 rows pass __ai_0
      Sort: __ai_1 DESC NULLS FIRST
        AiMap: ai_similarity(t.text, Utf8(\"oil\")) AS __ai_1
          TableScan: t";
        assert_eq!(optimized(plan), expected);
    }

    /// A stand-in with `ai_similarity`'s name (the rule goes by the name).
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct FakeSimilarity(Signature);

    impl FakeSimilarity {
        fn new() -> Self {
            Self(Signature::any(2, Volatility::Immutable))
        }
    }

    impl ScalarUDFImpl for FakeSimilarity {
        fn name(&self) -> &str {
            "ai_similarity"
        }

        fn signature(&self) -> &Signature {
            &self.0
        }

        fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
            Ok(DataType::Float32)
        }

        fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
            datafusion::common::not_impl_err!("a stand-in")
        }
    }

    #[test]
    fn applied_once() {
        let plan = top_k(ai_filter(scan(), 0), "t.id", 5);
        let once = TopKOverAiFilter.rewrite(plan, &OptimizerContext::new()).unwrap().data;
        let twice = TopKOverAiFilter.rewrite(once.clone(), &OptimizerContext::new()).unwrap();
        assert!(!twice.transformed);
        assert_eq!(twice.data, once);
    }
}
