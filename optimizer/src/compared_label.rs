//! Which `ai_classify` answers a query only compares with one label.
//!
//! `WHERE ai_classify(headline, ['business', ..., 'sport', 'tech']) = 'sport'` needs to know of
//! each row whether its answer is 'sport', not which of the other four it is. A cascade for such
//! a call can keep a cheap stage's answer where the stage is sure of that much
//! (`cascade(..., target=sport)`, see `murakkab_udfs::ModelPlan`), and its agreement with the
//! reference is measured the same way: both 'sport', or both not. On qwen2.5-0.5b's answers for
//! 1,112 BBC headlines, a proxy trained on 120 of 445 rows settled 44% of the rows judged by its
//! top label and 93% judged as "sport or not", both at a 90% agreement target (offline replay,
//! 30 seeded draws).
//!
//! Before (the answer column `__ai_1` is read only by the comparison):
//! ```text
//! Projection: bbc.id
//!   Projection: bbc.id, __ai_1
//!     Filter: __ai_1 = Utf8("sport")
//!       AiMap: ai_classify(bbc.headline, [business, ..., sport, tech]) AS __ai_1
//! ```
//! After `choose_model` (the call's note gives the estimates):
//! ```text
//!       AiMap: ai_classify(bbc.headline, [...], cascade(proxy:…, qwen2.5-…, 0.93, target=sport))
//! ```
//! Does not apply when the answer column is read anywhere but in filter conditions as
//! `column = 'label'` joined by AND / OR: shown (it reaches the query's output, a subquery's,
//! or a projection under another name), grouped, sorted, joined on, passed to another function,
//! compared with a second label, or under a NOT, a `<>` or a CASE. Shown, grouped or sorted,
//! the cheap stages' other labels would be seen, which nothing checks against the reference;
//! negated, the rows the query keeps would be the others, not the ones `choose_model` makes
//! sure to keep.

use std::collections::HashMap;

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

use crate::choose_model::{as_ai_map, function_call, literal_string};

/// For each `ai_classify` answer column of `plan` (its name) that the plan reads only in filter
/// conditions, as `column = 'label'` with one label, joined to the rest by AND / OR: that
/// label. A row then passes on "the label or not" alone, and passing rows are the ones whose
/// answer is the label, the rows `choose_model` must keep (`kept_share`). Under a NOT, in a CASE,
/// or compared with `<>`, the kept rows would be the others, so such reads count as other reads.
/// For an `ai_filter` answer read only as a condition (through AND / OR): 'yes', or 'no' when it
/// is read only under NOT (`WHERE NOT ai_filter(...)` keeps the rows answered 'no').
pub(crate) fn compared_labels(plan: &LogicalPlan) -> Result<HashMap<String, String>> {
    let mut uses: HashMap<String, Use> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        for name in predicate_columns(node) {
            uses.entry(name).or_insert(Use::Unread);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if uses.is_empty() {
        return Ok(HashMap::new());
    }
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Filter(filter) = node {
            return note_condition(&filter.predicate, &mut uses)
                .map(|()| TreeNodeRecursion::Continue);
        }
        for expr in node.expressions() {
            // A projection passing a column on unchanged does not read it; whether it is shown
            // in the end is `shown_columns`' question.
            if matches!(node, LogicalPlan::Projection(_)) && matches!(expr, Expr::Column(_)) {
                continue;
            }
            note_other_reads(&expr, &mut uses)?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    shown_columns(plan, true, &mut uses)?;
    Ok(uses
        .into_iter()
        .filter_map(|(name, u)| match u {
            Use::Compared(label) => Some((name, label)),
            Use::Unread | Use::Other => None,
        })
        .collect())
}

/// How a query reads an answer column.
#[derive(Debug, Clone, PartialEq)]
enum Use {
    /// Not read at all (nothing to narrow: the plan drops it or `choose_model` sees no filter).
    Unread,
    /// Only compared with this label.
    Compared(String),
    /// Read some other way.
    Other,
}

impl Use {
    fn compared_with(&mut self, label: &str) {
        *self = match self {
            Self::Unread => Self::Compared(label.to_string()),
            Self::Compared(l) if l == label => Self::Compared(label.to_string()),
            _ => Self::Other,
        };
    }
}

/// The output columns of `node`'s `ai_classify` and `ai_filter` calls, when it is an AI map.
fn predicate_columns(node: &LogicalPlan) -> Vec<String> {
    let Some(map) = as_ai_map(node) else { return Vec::new() };
    let is_predicate = |call: &Expr| {
        function_call(call).is_some_and(|f| matches!(f.func.name(), "ai_classify" | "ai_filter"))
    };
    map.calls
        .iter()
        .zip(map.output_names())
        .filter_map(|(call, name)| is_predicate(call).then_some(name))
        .collect()
}

/// Records how a filter's `condition` reads each answer column in `uses`: `column = 'label'`
/// reached through AND / OR only is a comparison; so is an `ai_filter`'s answer alone (with
/// 'yes') or under NOT (with 'no'); any other read is other.
fn note_condition(condition: &Expr, uses: &mut HashMap<String, Use>) -> Result<()> {
    let answer = |e: &Expr| match e {
        Expr::Column(c) if uses.contains_key(&c.name) => Some(c.name.clone()),
        _ => None,
    };
    let filter_answer = match condition {
        Expr::Not(inner) => answer(inner).map(|name| (name, "no")),
        e => answer(e).map(|name| (name, "yes")),
    };
    if let Some((name, kept)) = filter_answer
        && let Some(u) = uses.get_mut(&name)
    {
        u.compared_with(kept);
        return Ok(());
    }
    match condition {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And | Operator::Or, right }) => {
            note_condition(left, uses)?;
            note_condition(right, uses)
        }
        _ => match comparison(condition) {
            Some((name, label)) if uses.contains_key(&name) => {
                if let Some(u) = uses.get_mut(&name) {
                    u.compared_with(&label);
                }
                Ok(())
            }
            _ => note_other_reads(condition, uses),
        },
    }
}

/// Marks every answer column in `uses` that `expr` reads as read otherwise.
fn note_other_reads(expr: &Expr, uses: &mut HashMap<String, Use>) -> Result<()> {
    expr.apply(|e| {
        if let Expr::Column(c) = e
            && let Some(u) = uses.get_mut(&c.name)
        {
            *u = Use::Other;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// `(column, label)` for `column = 'label'` or `'label' = column`.
pub(crate) fn comparison(e: &Expr) -> Option<(String, String)> {
    let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = e else {
        return None;
    };
    let column = |e: &Expr| match e {
        Expr::Column(c) => Some(c.name.clone()),
        _ => None,
    };
    let label = |e: &Expr| literal_string(e).flatten();
    column(left).zip(label(right)).or_else(|| column(right).zip(label(left)))
}

/// Marks as read otherwise every name that reaches a shown output: the query's, or a
/// subquery's (whose rows an outer expression reads). Only a projection and an aggregate
/// choose their output columns (a name they keep is in their own schema, checked there);
/// every other node shows what its inputs show.
fn shown_columns(node: &LogicalPlan, shown: bool, uses: &mut HashMap<String, Use>) -> Result<()> {
    if shown {
        for field in node.schema().fields() {
            if let Some(u) = uses.get_mut(field.name()) {
                *u = Use::Other;
            }
        }
    }
    node.apply_subqueries(|subquery| {
        shown_columns(subquery, true, uses)?;
        Ok(TreeNodeRecursion::Continue)
    })?;
    let passes_inputs = !matches!(node, LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_));
    for input in node.inputs() {
        shown_columns(input, shown && passes_inputs, uses)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};

    #[test]
    fn a_comparison_reads_either_way_round() {
        let eq = col("__ai_1").eq(lit("sport"));
        assert_eq!(comparison(&eq), Some(("__ai_1".into(), "sport".into())));
        let flipped = lit("sport").eq(col("__ai_1"));
        assert_eq!(comparison(&flipped), Some(("__ai_1".into(), "sport".into())));
        assert_eq!(comparison(&col("__ai_1").not_eq(lit("sport"))), None);
        assert_eq!(comparison(&col("__ai_1").gt(lit("sport"))), None);
        assert_eq!(comparison(&col("__ai_1").eq(col("b"))), None);
    }

    #[test]
    fn one_label_through_and_or_stays_compared_anything_else_does_not() {
        let fresh = || -> HashMap<String, Use> { [("__ai_1".to_string(), Use::Unread)].into() };
        let sport = || col("__ai_1").eq(lit("sport"));
        let mut uses = fresh();
        note_condition(&sport().and(col("x").gt(lit(1))), &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Compared("sport".into()));
        note_condition(&col("x").gt(lit(1)).or(lit("sport").eq(col("__ai_1"))), &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Compared("sport".into()));
        // A second label, a negation, a `<>` or a read in a projection are other reads.
        note_condition(&col("__ai_1").eq(lit("tech")), &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Other);
        for other in [!sport(), col("__ai_1").not_eq(lit("sport"))] {
            let mut uses = fresh();
            note_condition(&other, &mut uses).unwrap();
            assert_eq!(uses["__ai_1"], Use::Other, "{other}");
        }
        let mut uses = fresh();
        note_other_reads(&sport(), &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Other);
    }

    #[test]
    fn a_filter_answer_keeps_yes_alone_and_no_under_not() {
        let fresh = || -> HashMap<String, Use> { [("__ai_0".to_string(), Use::Unread)].into() };
        let mut uses = fresh();
        note_condition(&col("__ai_0").and(col("x").gt(lit(1))), &mut uses).unwrap();
        assert_eq!(uses["__ai_0"], Use::Compared("yes".into()));
        let mut uses = fresh();
        note_condition(&(!col("__ai_0")).or(col("x").gt(lit(1))), &mut uses).unwrap();
        assert_eq!(uses["__ai_0"], Use::Compared("no".into()));
        // Both ways in one query: neither answer alone is what it keeps.
        note_condition(&col("__ai_0"), &mut uses).unwrap();
        assert_eq!(uses["__ai_0"], Use::Other);
    }

    #[test]
    fn a_column_that_reaches_the_output_is_shown() {
        let plan = LogicalPlanBuilder::empty(true)
            .project(vec![lit("x").alias("__ai_1"), lit(1).alias("id")])
            .unwrap()
            .build()
            .unwrap();
        let mut uses: HashMap<String, Use> = [("__ai_1".to_string(), Use::Unread)].into();
        shown_columns(&plan, true, &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Other);
        let dropped = LogicalPlanBuilder::from(plan)
            .filter(col("__ai_1").eq(lit("sport")))
            .unwrap()
            .project(vec![col("id")])
            .unwrap()
            .build()
            .unwrap();
        let mut uses: HashMap<String, Use> = [("__ai_1".to_string(), Use::Unread)].into();
        shown_columns(&dropped, true, &mut uses).unwrap();
        assert_eq!(uses["__ai_1"], Use::Unread);
    }
}
