//! A physical rule: what reads an AI map that reads in a top-k's key order
//! (`TopKOverAiFilter`) pulls one chunk at a time.
//!
//! Two of DataFusion's choices would make a map below the top of a chain of AI filters run
//! ahead of the map that stops (with two filters under `ORDER BY id LIMIT 5`, the lower one
//! asked about all 1,000 rows while the top one stopped after 48):
//! - `EnforceDistribution` splits the one ordered stream out of such a map into partitions for
//!   the filter above it (a `RepartitionExec` with round-robin partitioning, merged back in
//!   order further up), and the repartition pulls its input as fast as it can. It is removed:
//!   the operators above then see one partition; model work is parallel inside each call, so
//!   none is lost.
//! - `FilterExec` gathers the rows that pass into batches of `datafusion.execution.batch_size`
//!   rows before it lets them go, pulling its input until it has that many. Over such a map it
//!   is given a batch size of one row, below which every batch passes through as it comes.
//!
//! ```text
//! before: FilterExec: __ai_1                after: FilterExec: __ai_1 (batch size 1)
//!           RepartitionExec: RoundRobin            AiMapExec: ..., in key order
//!             AiMapExec: ..., in key order
//! ```

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use crate::ai_map_exec::AiMapExec;

/// Whether `plan` is an AI map that reads in a top-k's key order.
fn reads_in_key_order(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<AiMapExec>().is_some_and(AiMapExec::reads_in_key_order)
}

/// Makes what reads an AI map in key order pull a chunk at a time; see the module doc.
#[derive(Debug, Default)]
pub struct KeyOrderStreams;

impl PhysicalOptimizerRule for KeyOrderStreams {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(repartition) = node.downcast_ref::<RepartitionExec>()
                && reads_in_key_order(repartition.input())
                && matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_))
            {
                return Ok(Transformed::yes(Arc::clone(repartition.input())));
            }
            if let Some(filter) = node.downcast_ref::<FilterExec>()
                && reads_in_key_order(filter.input())
                && filter.batch_size() > 1
            {
                return Ok(Transformed::yes(Arc::new(filter.with_batch_size(1)?)));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "murakkab_key_order_streams"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
