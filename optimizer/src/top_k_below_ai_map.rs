//! Rule: a top-k (`ORDER BY ... LIMIT k`) whose keys do not depend on an AI call is applied
//! before the calls too, so the model sees k rows instead of the whole table.
//!
//! Before (`SELECT ai_classify(text, [...]) AS label FROM uci ORDER BY id LIMIT 20`):
//! ```text
//! Projection: label
//!   Sort: uci.id ASC NULLS LAST, fetch=20
//!     Projection: __ai_0 AS label, uci.id
//!       AiMap: ai_classify(uci.text, [...]) AS __ai_0
//!         TableScan: uci                       (3,000 rows reach the model)
//! ```
//! After:
//! ```text
//! Projection: label
//!   Sort: uci.id ASC NULLS LAST, fetch=20
//!     Projection: __ai_0 AS label, uci.id
//!       AiMap: ai_classify(uci.text, [...]) AS __ai_0
//!         Sort: uci.id ASC NULLS LAST, fetch=20  (20 rows reach the model)
//!           TableScan: uci
//! ```
//! The upper sort stays: it restores the order after the map (whose partitions may interleave)
//! and costs k rows. Exact: the k rows kept are the k rows the query returns (with ties in the
//! keys, one of the valid answers, as for any top-k).
//!
//! Does not apply when a key reads an AI column (`ORDER BY label`), when a filter, aggregate,
//! join or anything but projections stands between the sort and the map (those change which
//! rows are the top k), when the sort has no limit, or with `murakkab.optimizer.enabled =
//! false` (the naive baseline then classifies every row, as a plain UDF would).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, Projection, Sort, SortExpr, UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use murakkab_compiler::{AiMap, MurakkabOptions};

/// Pushes a top-k below the AI map it sits over.
#[derive(Debug, Default)]
pub struct TopKBelowAiMap;

/// Rewrites `expr` from a projection's output columns to its input's expressions.
pub(crate) fn through_projection(expr: Expr, projection: &Projection) -> Result<Expr> {
    let by_name: HashMap<Column, Expr> = projection
        .schema
        .iter()
        .zip(&projection.expr)
        .map(|((q, f), e)| (Column::new(q.cloned(), f.name()), e.clone().unalias()))
        .collect();
    Ok(expr
        .transform(|e| match &e {
            Expr::Column(c) => match by_name.get(c) {
                Some(replacement) => Ok(Transformed::yes(replacement.clone())),
                None => Ok(Transformed::no(e)),
            },
            _ => Ok(Transformed::no(e)),
        })?
        .data)
}

/// The projections from the sort's input down to an AI map, and the map; `None` if anything
/// else is in between.
fn projections_then_map(plan: &LogicalPlan) -> Option<(Vec<&Projection>, &AiMap)> {
    let mut projections = Vec::new();
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(p) => {
                projections.push(p);
                node = &p.input;
            }
            LogicalPlan::Extension(e) => {
                let map = e.node.as_any().downcast_ref::<AiMap>()?;
                return Some((projections, map));
            }
            _ => return None,
        }
    }
}

/// Rebuilds `projections` (top first) over `input`.
fn rebuild(projections: &[&Projection], input: LogicalPlan) -> Result<LogicalPlan> {
    projections.iter().rev().try_fold(input, |input, p| {
        Ok(LogicalPlan::Projection(Projection::try_new(p.expr.clone(), Arc::new(input))?))
    })
}

/// The sort's keys in the map's input columns, or `None` if one of them reads an AI column.
fn keys_below_map(sort: &Sort, projections: &[&Projection], map: &AiMap) -> Option<Vec<SortExpr>> {
    let ai_columns = map.output_names();
    let mut keys = Vec::with_capacity(sort.expr.len());
    for key in &sort.expr {
        let mut expr = key.expr.clone();
        for p in projections {
            expr = through_projection(expr, p).ok()?;
        }
        let reads_ai = expr.column_refs().iter().any(|c| ai_columns.contains(&c.name));
        if reads_ai || expr.column_refs().iter().any(|c| !map.input.schema().has_column(c)) {
            return None;
        }
        keys.push(SortExpr { expr, ..key.clone() });
    }
    Some(keys)
}

impl OptimizerRule for TopKBelowAiMap {
    fn name(&self) -> &str {
        "murakkab_top_k_below_ai_map"
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
        let Some((projections, map)) = projections_then_map(&sort.input) else {
            return Ok(Transformed::no(plan));
        };
        // Already below: the map's input is this top-k.
        if matches!(&map.input, LogicalPlan::Sort(s) if s.fetch.is_some_and(|f| f <= fetch)) {
            return Ok(Transformed::no(plan));
        }
        let Some(keys) = keys_below_map(sort, &projections, map) else {
            return Ok(Transformed::no(plan));
        };
        let top_k = LogicalPlan::Sort(Sort {
            expr: keys,
            input: Arc::new(map.input.clone()),
            fetch: Some(fetch),
        });
        let map = map.with_exprs_and_inputs(map.calls.clone(), vec![top_k])?;
        let map = LogicalPlan::Extension(Extension { node: Arc::new(map) });
        let input = rebuild(&projections, map)?;
        Ok(Transformed::yes(LogicalPlan::Sort(Sort {
            expr: sort.expr.clone(),
            input: Arc::new(input),
            fetch: sort.fetch,
        })))
    }
}
