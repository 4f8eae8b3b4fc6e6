//! `AiMap`: the logical node an AI call is lifted into.
//!
//! `AiMap` passes its input's rows through and appends one column per AI call (named
//! `__ai_<n>`). The expressions that used the calls read those columns instead. As a node of its
//! own, the AI work is visible to EXPLAIN and to rules, and its physical operator owns how the
//! model is driven (chunking, streaming, metrics).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::common::{DFSchema, DFSchemaRef, Result};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, UserDefinedLogicalNodeCore};

/// Where a map under a top-k stops reading: once `rows` of its output rows satisfy
/// `predicate` (the filter right above it, over the map's output columns). Its input is read in
/// the top-k's key order, so those rows include the top k that pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct StopAfter {
    /// The condition the rows must satisfy.
    pub predicate: Expr,
    /// How many rows must satisfy it.
    pub rows: usize,
}

/// Input rows plus one column per AI call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AiMap {
    /// The rows the calls read.
    pub input: LogicalPlan,
    /// The calls, each aliased to the column it produces.
    pub calls: Vec<Expr>,
    /// What the optimizer decided and estimated for the calls (shown by EXPLAIN).
    pub notes: Vec<String>,
    /// The optimizer's estimate of the calls' model time, in milliseconds, where it made one.
    pub estimated_ms: Option<u64>,
    /// Reads its input in the input's order, as one stream (a map in a chain under a top-k
    /// whose keys sort the input below the chain: see `TopKOverAiFilter`).
    pub in_key_order: bool,
    /// Stops reading its input once enough of its rows pass the filter above (the top map of
    /// such a chain).
    pub stop_after: Option<StopAfter>,
    schema: DFSchemaRef,
}

impl AiMap {
    /// A map of `calls` (each an `Expr::Alias` around an AI function call) over `input`.
    pub fn try_new(input: LogicalPlan, calls: Vec<Expr>) -> Result<Self> {
        let mut fields: Vec<_> =
            input.schema().iter().map(|(q, f)| (q.cloned(), Arc::clone(f))).collect();
        for call in &calls {
            let (qualifier, field) = call.to_field(input.schema())?;
            fields.push((qualifier, field));
        }
        let schema = DFSchema::new_with_metadata(fields, input.schema().metadata().clone())?;
        Ok(Self {
            input,
            calls,
            notes: Vec::new(),
            estimated_ms: None,
            in_key_order: false,
            stop_after: None,
            schema: Arc::new(schema),
        })
    }

    /// This map's calls over `input` with the same notes, estimate and reading order: for rules
    /// that rewrite a map's calls or input and must not drop what other rules decided.
    pub fn rebuilt(&self, input: LogicalPlan, calls: Vec<Expr>) -> Result<Self> {
        let mut map = Self::try_new(input, calls)?
            .with_notes(self.notes.clone())
            .with_estimate(self.estimated_ms);
        map.in_key_order = self.in_key_order;
        map.stop_after = self.stop_after.clone();
        Ok(map)
    }

    /// This map reading its input in key order, stopping as `stop_after` says (if at all).
    pub fn in_key_order(mut self, stop_after: Option<StopAfter>) -> Self {
        self.in_key_order = true;
        self.stop_after = stop_after;
        self
    }

    /// This map with the optimizer's notes attached.
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// This map with the optimizer's time estimate attached.
    pub fn with_estimate(mut self, estimated_ms: Option<u64>) -> Self {
        self.estimated_ms = estimated_ms;
        self
    }

    /// The names of the columns the calls produce.
    pub fn output_names(&self) -> Vec<String> {
        self.calls.iter().map(|c| c.schema_name().to_string()).collect()
    }
}

impl PartialOrd for AiMap {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.input.partial_cmp(&other.input) {
            Some(Ordering::Equal) => match self.calls.partial_cmp(&other.calls) {
                Some(Ordering::Equal) => {
                    (&self.notes, self.estimated_ms, self.in_key_order, &self.stop_after)
                        .partial_cmp(&(
                            &other.notes,
                            other.estimated_ms,
                            other.in_key_order,
                            &other.stop_after,
                        ))
                }
                ordering => ordering,
            },
            ordering => ordering,
        }
    }
}

impl UserDefinedLogicalNodeCore for AiMap {
    fn name(&self) -> &str {
        "AiMap"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.calls.clone()
    }

    /// Filters on the input's columns may move below the map (fewer rows reach the model);
    /// filters on the calls' results may not.
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        self.output_names().into_iter().collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AiMap: ")?;
        for (i, call) in self.calls.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{call}")?;
        }
        if let Some(stop) = &self.stop_after {
            write!(f, "; in key order until {} rows pass {}", stop.rows, stop.predicate)?;
        } else if self.in_key_order {
            write!(f, "; in key order")?;
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::common::DataFusionError::Internal("AiMap needs one input".into())
        })?;
        self.rebuilt(input, exprs)
    }
}
