//! Rule: an AI call that a map below has already computed, for the same rows, is read from that
//! map's column instead of being computed again (the "computed once" half of fusion).
//!
//! SQL cannot name a `SELECT` alias in `WHERE`, so a query that filters on a model's answer and
//! also shows it writes the call twice, and each becomes a map of its own:
//!
//! Before (`SELECT ai_classify(text, [...]) AS label FROM uci
//!          WHERE ai_classify(text, [...]) = 'positive'`):
//! ```text
//! Projection: __ai_1 AS label
//!   AiMap: ai_classify(uci.text, [...]) AS __ai_1
//!     Projection: uci.text                         (the filter's columns: __ai_0 dropped)
//!       Filter: __ai_0 = 'positive'
//!         AiMap: ai_classify(uci.text, [...]) AS __ai_0
//!           TableScan: uci
//! ```
//! After:
//! ```text
//! Projection: __ai_1 AS label
//!   Projection: uci.text, __ai_0 AS __ai_1
//!     Projection: uci.text, __ai_0                 (__ai_0 carried up)
//!       Filter: __ai_0 = 'positive'
//!         AiMap: ai_classify(uci.text, [...]) AS __ai_0
//!           TableScan: uci
//! ```
//! Besides the second pass of the model over every row that passed, two maps are two model
//! choices: the optimizer could pick a cascade for one and the reference model for the other,
//! and a row kept as `positive` could then show `negative`. One map answers once.
//!
//! Exact: between the two maps stand only nodes that pass input rows through unchanged
//! (filters, sorts, limits, projections, subquery aliases, other maps), so every row the upper
//! call sees is a row the lower call answered, and the arguments are compared after the
//! projections' expressions are substituted in, so they read the same values. The same call
//! twice in one node was already computed once (`LiftAiCalls`). A sampled `ai_complete`
//! (`temperature > 0`) written twice is answered once too: one question about a row, one
//! answer, as the result cache would give it anyway.
//!
//! Does not apply through aggregates, joins, unions or windows (a row above is not one row
//! below); when the arguments call a volatile function that is not a model (`random()`: two
//! evaluations differ); or with `murakkab.optimizer.enabled = false` (the naive baseline
//! computes every call as written).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr_rewriter::replace_col;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, Projection, UserDefinedLogicalNodeCore, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use murakkab_compiler::{MODEL_FUNCTIONS, MurakkabOptions};

use crate::choose_model::as_ai_map;
use crate::top_k_below_ai_map::through_projection;

/// Reads an AI call from the column of an identical call computed below.
#[derive(Debug, Default)]
pub struct ReuseAiColumns;

/// Whether `e` calls a volatile function other than a model (whose two evaluations differ).
fn calls_volatile_non_model(e: &Expr) -> bool {
    e.exists(|x| {
        Ok(matches!(x, Expr::ScalarFunction(f)
            if !MODEL_FUNCTIONS.contains(&f.name())
                && f.func.signature().volatility == Volatility::Volatile))
    })
    .unwrap_or(true)
}

/// `plan` rewritten so its output also carries a column holding `call` (an expression over
/// `plan`'s output) as a map below computed it, and that column; `None` where no identical call
/// is found below through row-preserving nodes.
fn carry(plan: &LogicalPlan, call: &Expr) -> Result<Option<(LogicalPlan, Column)>> {
    if let Some(map) = as_ai_map(plan) {
        let found = map.calls.iter().find_map(|c| match c {
            Expr::Alias(a) if *a.expr == *call => Some(a.name.clone()),
            _ => None,
        });
        if let Some(name) = found {
            return Ok(Some((plan.clone(), Column::from_name(name))));
        }
        // A call reading this map's own outputs cannot be found below it.
        if call.column_refs().iter().any(|c| !map.input.schema().has_column(c)) {
            return Ok(None);
        }
        let Some((input, column)) = carry(&map.input, call)? else { return Ok(None) };
        let map = map.with_exprs_and_inputs(map.calls.clone(), vec![input])?;
        return Ok(Some((LogicalPlan::Extension(Extension { node: Arc::new(map) }), column)));
    }
    match plan {
        LogicalPlan::Projection(p) => {
            let below = through_projection(call.clone(), p)?;
            let Some((input, column)) = carry(&p.input, &below)? else { return Ok(None) };
            let mut exprs = p.expr.clone();
            if !exprs.contains(&Expr::Column(column.clone())) {
                // A column of that name that is something else: do not shadow it.
                if p.schema.has_column(&column) {
                    return Ok(None);
                }
                exprs.push(Expr::Column(column.clone()));
            }
            let projection = Projection::try_new(exprs, Arc::new(input))?;
            Ok(Some((LogicalPlan::Projection(projection), column)))
        }
        LogicalPlan::SubqueryAlias(s) => {
            // Same columns, requalified: read the call in the input's names.
            let (outer, inner) = (s.schema.columns(), s.input.schema().columns());
            let renamed: HashMap<&Column, &Column> = outer.iter().zip(&inner).collect();
            let below = replace_col(call.clone(), &renamed)?;
            let Some((input, column)) = carry(&s.input, &below)? else { return Ok(None) };
            let plan = plan.with_new_exprs(plan.expressions(), vec![input])?;
            Ok(Some((plan, Column::new(Some(s.alias.clone()), column.name))))
        }
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            let Some((input, column)) = carry(plan.inputs()[0], call)? else { return Ok(None) };
            Ok(Some((plan.with_new_exprs(plan.expressions(), vec![input])?, column)))
        }
        _ => Ok(None),
    }
}

impl OptimizerRule for ReuseAiColumns {
    fn name(&self) -> &str {
        "murakkab_reuse_ai_columns"
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
        if !MurakkabOptions::from_config(&config.options()).optimizer_enabled {
            return Ok(Transformed::no(plan));
        }
        let Some(map) = as_ai_map(&plan) else { return Ok(Transformed::no(plan)) };
        let mut input = map.input.clone();
        let mut kept = Vec::new();
        let mut outputs = Vec::with_capacity(map.calls.len());
        for call in &map.calls {
            let reused = match call {
                Expr::Alias(a) if !calls_volatile_non_model(&a.expr) => carry(&input, &a.expr)?,
                _ => None,
            };
            let name = call.schema_name().to_string();
            match reused {
                Some((carrying, column)) => {
                    input = carrying;
                    outputs.push(Expr::Column(column).alias(name));
                }
                None => {
                    kept.push(call.clone());
                    outputs.push(Expr::Column(Column::from_name(name)));
                }
            }
        }
        if kept.len() == map.calls.len() {
            return Ok(Transformed::no(plan));
        }
        let below = if kept.is_empty() {
            input
        } else {
            let map = map.rebuilt(input, kept)?;
            LogicalPlan::Extension(Extension { node: Arc::new(map) })
        };
        // The map's own output: its input's columns, then one per call, in order.
        let exprs: Vec<Expr> =
            map.input.schema().columns().into_iter().map(Expr::Column).chain(outputs).collect();
        Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(below))?)))
    }
}
