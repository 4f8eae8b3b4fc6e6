//! `ai_summarize_agg(text [, model])`: one summary of all the texts in a group.
//!
//! Any group size: map-reduce over chunks that fit the model's context, every group's chunks of
//! one level batched together (`summary_accumulators`).
//!
//! The model and the batching are fixed at planning time, by the expression simplifier (the one
//! place a logical aggregate sees the session's options): `auto` becomes the reference, the
//! largest pulled generating model, with the optimizer on or off (a summary has no agreement
//! to measure a cheaper model by, see `args::model_for`), and `murakkab.exec.batching` /
//! `murakkab.on_error` are read once. The call keeps its column
//! name; EXPLAIN shows what was fixed:
//!
//! ```text
//! before: Aggregate: groupBy=[[drugs.condition]], aggr=[[ai_summarize_agg(drugs.review)]]
//! after (optimizer and batching off, the naive baseline):
//!         Aggregate: groupBy=[[drugs.condition]], aggr=[[ai_summarize_agg(drugs.review)
//!           [model: qwen2.5-coder-0.5b-instruct, one chunk per call]]]
//! ```

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Expr, GroupsAccumulator, Signature,
    udaf_default_display_name,
};
use datafusion::physical_expr::expressions::Literal;
use murakkab_catalog::Task;

use crate::args::{self, AiContext, Kind, Param, optional, required};
use crate::docs::ai_doc;
use crate::summary_accumulators::{SummaryAccumulator, SummaryGroups, SummaryPlan};

const NAME: &str = "ai_summarize_agg";
const PARAMS: &[Param] = &[required("text", Kind::Text), optional("model", Kind::ConstText)];

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    ai_doc(
        "An aggregate: one short summary of all the texts in a group, of any size (map-reduce \
         over chunks that fit the model's context; every group's chunks are generated in one \
         batch). NULL texts are skipped; a group with no text gives NULL.",
        "ai_summarize_agg(text [, model => 'auto'])",
        "> SELECT product, ai_summarize_agg(review) AS summary FROM reviews GROUP BY product;\n\
         -- one row per product: the product and a two-to-three-sentence summary of all its\n\
         -- reviews, however many there are",
        &[
            ("text", "The texts to summarise (one per row)."),
            ("model", "'auto' (default) or a model id that can generate (see \\models)."),
        ],
    )
});

/// The `ai_summarize_agg` aggregate.
#[derive(Debug)]
pub struct AiSummarizeAgg {
    signature: Signature,
    context: Arc<AiContext>,
    /// Set by planning (see the module doc); `None` until the simplifier has run, in which case
    /// the accumulators run the named model or the reference, batched.
    plan: Option<SummaryPlan>,
}

impl AiSummarizeAgg {
    /// The aggregate over `context`'s backend.
    pub fn new(context: Arc<AiContext>) -> Self {
        Self { signature: args::signature(PARAMS), context, plan: None }
    }

    /// The model and batching of a call whose arguments are `args`, under `config`.
    fn plan_for(
        &self,
        args: &[Expr],
        config: &datafusion::common::config::ConfigOptions,
    ) -> Result<SummaryPlan> {
        let literal = match args.get(1) {
            None => None,
            Some(Expr::Literal(value, _)) => Some(value),
            Some(_) => return plan_err!("{NAME}: argument 'model' must be a constant string"),
        };
        let requested = requested_model(literal)?;
        let card = args::model_for(&self.context, config, requested.as_deref(), Task::Generate)
            .map_err(|e| datafusion::common::plan_datafusion_err!("{NAME}: {e}"))?;
        Ok(SummaryPlan {
            model: card.id,
            batching: args::batching_enabled(config),
            fail_on_error: args::fail_on_error(config),
        })
    }

    /// The plan the accumulators run: the one planning fixed, or the named model (`auto`: the
    /// reference), batched.
    fn plan_or_default(&self, acc_args: &AccumulatorArgs) -> Result<SummaryPlan> {
        if let Some(plan) = &self.plan {
            return Ok(plan.clone());
        }
        let literal = match acc_args.exprs.get(1) {
            None => None,
            Some(e) => match e.downcast_ref::<Literal>() {
                Some(l) => Some(l.value()),
                None => return plan_err!("{NAME}: argument 'model' must be a constant string"),
            },
        };
        let card = match requested_model(literal)? {
            Some(model) => args::check_model(NAME, &self.context, Some(&model), Task::Generate)?,
            // `auto` is the reference, as in `args::model_for`.
            None => self
                .context
                .backend
                .largest_model(Task::Generate)
                .map_err(|e| datafusion::common::plan_datafusion_err!("{NAME}: {e}"))?,
        };
        Ok(SummaryPlan { model: card.id, batching: true, fail_on_error: false })
    }
}

/// The model a constant `model` argument names (`None`: absent or NULL, i.e. `auto`).
fn requested_model(literal: Option<&ScalarValue>) -> Result<Option<String>> {
    match literal {
        None => Ok(None),
        Some(ScalarValue::Utf8(m) | ScalarValue::Utf8View(m) | ScalarValue::LargeUtf8(m)) => {
            Ok(m.clone())
        }
        Some(v) if v.is_null() => Ok(None),
        Some(_) => plan_err!("{NAME}: argument 'model' must be a constant string"),
    }
}

impl PartialEq for AiSummarizeAgg {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.context, &other.context) && self.plan == other.plan
    }
}
impl Eq for AiSummarizeAgg {}
impl std::hash::Hash for AiSummarizeAgg {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        NAME.hash(state);
        self.plan.hash(state);
    }
}

impl AggregateUDFImpl for AiSummarizeAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        args::coerce(NAME, PARAMS, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("texts", DataType::new_list(DataType::Utf8, true), true))])
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let plan = self.plan_or_default(&acc_args)?;
        Ok(Box::new(SummaryAccumulator::new(Arc::clone(&self.context), plan)))
    }

    fn groups_accumulator_supported(&self, acc_args: AccumulatorArgs) -> bool {
        !acc_args.is_distinct
    }

    fn create_groups_accumulator(
        &self,
        acc_args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let plan = self.plan_or_default(&acc_args)?;
        Ok(Box::new(SummaryGroups::new(Arc::clone(&self.context), plan)))
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        if self.plan.is_some() {
            return None;
        }
        let context = Arc::clone(&self.context);
        Some(Box::new(move |call: AggregateFunction, info| {
            let unplanned = AiSummarizeAgg::new(Arc::clone(&context));
            let plan = unplanned.plan_for(&call.params.args, info.config_options())?;
            let planned = AiSummarizeAgg { plan: Some(plan), ..unplanned };
            Ok(Expr::AggregateFunction(AggregateFunction {
                func: Arc::new(AggregateUDF::new_from_impl(planned)),
                params: call.params,
            }))
        }))
    }

    /// EXPLAIN shows what planning fixed (column names use `schema_name`, unchanged).
    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        let call = udaf_default_display_name(self, params)?;
        Ok(match &self.plan {
            None => call,
            Some(plan) => {
                let batching = if plan.batching { "groups batched" } else { "one chunk per call" };
                format!("{call} [model: {}, {batching}]", plan.model)
            }
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}
