//! Physical planning of Murakkab's logical nodes: an `ExtensionPlanner` for [`AiMap`] and the
//! `QueryPlanner` that installs it into DataFusion's default physical planner.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use murakkab_compiler::AiMap;

use crate::ai_map_exec::AiMapExec;

/// Plans `AiMap` as [`AiMapExec`].
#[derive(Debug, Default)]
pub struct AiExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for AiExtensionPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(map) = node.as_any().downcast_ref::<AiMap>() else { return Ok(None) };
        let (Some(logical_input), Some(input)) = (logical_inputs.first(), physical_inputs.first())
        else {
            return Ok(None);
        };
        let mut calls = Vec::with_capacity(map.calls.len());
        for call in &map.calls {
            let (expr, name) = match call {
                Expr::Alias(a) => (a.expr.as_ref(), a.name.clone()),
                other => (other, other.schema_name().to_string()),
            };
            let physical = planner.create_physical_expr(
                expr,
                logical_input.schema(),
                session,
                planning_ctx,
            )?;
            calls.push((physical, name));
        }
        let mut exec = AiMapExec::try_new(Arc::clone(input), calls)?
            .with_notes(map.notes.clone(), map.estimated_ms);
        if map.in_key_order {
            // The filter's predicate over the map's output. Should a rule after
            // `TopKOverAiFilter` have moved a column it reads, the map reads every row (no
            // early stop) and the result is still the filter's.
            let stop = map.stop_after.as_ref().and_then(|stop| {
                let predicate = planner.create_physical_expr(
                    &stop.predicate,
                    node.schema(),
                    session,
                    planning_ctx,
                );
                match predicate {
                    Ok(predicate) => Some((predicate, stop.rows)),
                    Err(e) => {
                        tracing::debug!("AiMap stops at no row count: {e}");
                        None
                    }
                }
            });
            exec = exec.in_key_order(stop);
        }
        Ok(Some(Arc::new(exec)))
    }
}

/// DataFusion's physical planner with Murakkab's extension planners.
#[derive(Debug, Default)]
pub struct MurakkabQueryPlanner;

#[async_trait]
impl QueryPlanner for MurakkabQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner =
            DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(AiExtensionPlanner)]);
        planner.create_physical_plan(logical_plan, session_state).await
    }
}
