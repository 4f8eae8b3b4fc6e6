//! Named arguments (`ai_complete(p, max_tokens => 20)`) made positional before planning.
//!
//! DataFusion resolves named arguments itself but requires every parameter before the last one
//! given, so `ai_complete(p, max_tokens => 20)` (skipping `model`) would fail. This rewrite runs
//! on the parsed statement: for each call of a function with parameter names it places the
//! arguments by name and fills skipped optional parameters with NULL, which the AI functions
//! read as "the default".

use datafusion::common::{DataFusionError, Result};
use datafusion::sql::parser::{CopyToSource, Statement};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Value, visit_expressions_mut,
};
use std::ops::ControlFlow;

/// Rewrites every call in `statement` whose function `parameters` knows (by lower-case name) so
/// that all its arguments are positional.
pub fn make_arguments_positional(
    statement: &mut Statement,
    parameters: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<()> {
    match statement {
        Statement::Statement(s) => rewrite(s.as_mut(), parameters),
        Statement::Explain(e) => make_arguments_positional(e.statement.as_mut(), parameters),
        Statement::CopyTo(c) => match &mut c.source {
            CopyToSource::Query(q) => rewrite(q.as_mut(), parameters),
            CopyToSource::Relation(_) => Ok(()),
        },
        Statement::CreateExternalTable(_) | Statement::Reset(_) => Ok(()),
    }
}

fn rewrite<V: datafusion::sql::sqlparser::ast::VisitMut>(
    node: &mut V,
    parameters: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<()> {
    let flow = visit_expressions_mut(node, |expr| {
        if let Expr::Function(f) = expr {
            let name = f.name.to_string().to_lowercase();
            if let (Some(params), FunctionArguments::List(list)) = (parameters(&name), &mut f.args)
                && let Err(e) = place_by_name(&name, &params, &mut list.args)
            {
                return ControlFlow::Break(e);
            }
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn arg_name(arg: &FunctionArg) -> Option<&Ident> {
    match arg {
        FunctionArg::Named { name, .. } => Some(name),
        FunctionArg::ExprNamed { name: Expr::Identifier(name), .. } => Some(name),
        _ => None,
    }
}

fn place_by_name(function: &str, params: &[String], args: &mut Vec<FunctionArg>) -> Result<()> {
    if args.iter().all(|a| matches!(a, FunctionArg::Unnamed(_))) {
        return Ok(());
    }
    let plan_err = |m: String| Err(DataFusionError::Plan(format!("{function}: {m}")));
    let mut slots: Vec<Option<FunctionArgExpr>> = vec![None; params.len()];
    let mut seen_named = false;
    for (i, arg) in std::mem::take(args).into_iter().enumerate() {
        let index = match arg_name(&arg) {
            None if seen_named => {
                return plan_err("positional arguments must come before named ones".into());
            }
            None => i,
            Some(ident) => {
                seen_named = true;
                let wanted = ident.value.to_lowercase();
                match params.iter().position(|p| *p == wanted) {
                    Some(index) => index,
                    None => {
                        return plan_err(format!(
                            "no parameter named '{}'; its parameters are: {}",
                            ident.value,
                            params.join(", ")
                        ));
                    }
                }
            }
        };
        let value = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
            FunctionArg::Unnamed(arg) => arg,
        };
        let Some(slot) = slots.get_mut(index) else {
            return plan_err(format!("takes at most {} arguments", params.len()));
        };
        if slot.is_some() {
            return plan_err(format!("parameter '{}' is given more than once", params[index]));
        }
        *slot = Some(value);
    }
    let last = slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    *args = slots
        .into_iter()
        .take(last)
        .map(|s| {
            FunctionArg::Unnamed(
                s.unwrap_or_else(|| FunctionArgExpr::Expr(Expr::value(Value::Null))),
            )
        })
        .collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn rewritten(sql: &str) -> Result<String> {
        let mut statement = DFParser::parse_sql(sql)?.pop_front().expect("one statement");
        let params = |name: &str| {
            (name == "ai_complete").then(|| {
                ["prompt", "model", "max_tokens", "temperature", "seed"].map(String::from).to_vec()
            })
        };
        make_arguments_positional(&mut statement, &params)?;
        Ok(statement.to_string())
    }

    #[test]
    fn skipped_optional_parameters_become_null() {
        assert_eq!(
            rewritten("SELECT ai_complete(t, max_tokens => 5) FROM x").unwrap(),
            "SELECT ai_complete(t, NULL, 5) FROM x"
        );
        assert_eq!(
            rewritten("EXPLAIN SELECT ai_complete(seed => 1, prompt => t)").unwrap(),
            "EXPLAIN SELECT ai_complete(t, NULL, NULL, NULL, 1)"
        );
    }

    #[test]
    fn mistakes_name_the_function() {
        let err = rewritten("SELECT ai_complete(t, max_token => 5)").unwrap_err().to_string();
        assert!(err.contains("ai_complete: no parameter named 'max_token'"), "{err}");
        let err = rewritten("SELECT ai_complete(t, prompt => 'x')").unwrap_err().to_string();
        assert!(err.contains("parameter 'prompt' is given more than once"), "{err}");
        let err = rewritten("SELECT ai_complete(model => 'm', t)").unwrap_err().to_string();
        assert!(err.contains("positional arguments must come before named ones"), "{err}");
    }

    #[test]
    fn other_functions_are_untouched() {
        assert_eq!(rewritten("SELECT upper(x => 1)").unwrap(), "SELECT upper(x => 1)");
    }
}
