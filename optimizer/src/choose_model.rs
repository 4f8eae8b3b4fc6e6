//! Rule: choose the model of each label-scoring AI call from a sample of its input.
//!
//! For every `ai_filter` / `ai_classify` call left at `model => 'auto'` with a constant
//! condition or label list, the rule compares the plans the pulled models allow — a smaller
//! model alone, a cascade from a smaller model to the reference model, or the reference model
//! (the largest that can score labels) — and writes the cheapest one, by
//! `murakkab.objective`, whose agreement with the reference model meets
//! `murakkab.quality_target` at 95% confidence (a one-sided Wilson bound, see `quality`):
//!
//! ```text
//! before: AiMap: ai_classify(uci.text, make_array(positive, negative)) AS __ai_1
//! after:  AiMap: ai_classify(uci.text, make_array(positive, negative),
//!                            cascade(smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, 0.93))
//!                AS __ai_1; ai_classify: cascade(...) for balanced: est. rows=3000, ...
//! ```
//!
//! How the estimate is made: the call's input is run (a seeded uniform sample of `6·√n` of its `n`
//! rows, between `murakkab.optimizer.sample_rows` and four times that; only the first rows, up to
//! twice that least sample, when another AI call sits below, so that call is not run over the whole
//! input for a sample) and every candidate scores the sample. When an encoder is pulled, a proxy
//! model (logistic regression on the rows' embeddings, `proxy_training`) is trained first on the
//! reference's answers and is a candidate too, its agreement measured out of fold. A smaller model
//! scores its first 16 rows, and the rest only if, settling at best the share of those rows its
//! most confident answers allow, it could save more than the rest of the sample costs on the rows
//! the proxy would still leave to the reference (`worth_finishing`); when even agreeing on every
//! row it could not, it scores none. The answers go through the result cache, so the sampled rows
//! are not computed again when the query runs, and the figures persist under `MURAKKAB_HOME/stats`,
//! keyed by the function, its condition or labels, the lineage of the column (the plan below the
//! call) and the candidate models, so a repeated workload skips the sampling. Costs come from the
//! device profile (`murakkab calibrate`, or defaults from model size) and the sample's token
//! counts.
//!
//! Does not apply: with `murakkab.optimizer.enabled = false`; to calls that name a model or a
//! cascade; to per-row conditions or label lists. `ai_extract` calls at `auto` with a constant
//! schema are decided in the same pass, one model for every row (`extract_choice`: generation
//! has no label probability to cascade on); `ai_complete` is not (free text has no agreement
//! to measure). Under plain EXPLAIN nothing is sampled: recorded
//! statistics still decide, otherwise the note says the choice is made when the query runs.
//! When the input is too small for a sample to pay for itself, the reference model is used.
//!
//! The guarantee: the chosen plan's agreement with the reference model over the rows it
//! answers has a 95% lower bound at or above the target, holding for every plan the decision
//! tried together (thresholds are tested as fixed sequences, and the sequences share the 5%
//! in shares fixed before the sample, the proxy's 80%: `quality::MissRateShares`; after a
//! smaller model's first look, on the rows after it, among the candidates that finished:
//! `tested_outcomes`). When the sample was drawn in this query from the whole input, the
//! bound counts that input as the population (finite population correction) and, for a
//! cascade, the sampled rows' known reference answers (`quality::AgreementBound`); from
//! recorded statistics it is the sample's Wilson bound. Rows unlike the sample (a drifting
//! input) are not covered, which is why the statistics are keyed by the plan below the call.
//!
//! Predicates: an `ai_classify` the query only compares with one label (`compared_label`) is
//! decided on "that label or not" (agreement and a stage's confidence, written into the plan as
//! `cascade(..., target=label)`), and a plan for a predicate (that classify, or an `ai_filter`)
//! must also give the kept answer (the label; 'yes') on `murakkab.quality_target` of the
//! sampled rows where the reference gives it, judged by the rule of succession ([`Kept::meets`]):
//! agreement alone would let a rare answer be traded away.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::Session;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Expr, Extension, FetchType, LogicalPlan, LogicalPlanBuilder, SkipType, lit,
};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use futures::StreamExt;
use murakkab_catalog::{
    CandidateOutcome, ConsideredPlan, DeviceProfile, LabelCallStats, ModelCard, PROXY_PREFIX,
    PlanChoices, SmallInput, StatsStore, Task,
};
use murakkab_compiler::{AiMap, MurakkabOptions, OverBudget};
use murakkab_udfs::{
    AiBackend, AiContext, AiWarnings, Cascade, FieldType, ModelPlan, answers_agree, best_label,
    parse_schema, prompts, stage_confidence,
};

use crate::compared_label::compared_labels;
use crate::cost_model::{Cost, RowTokens, embed_row_cost, label_row_cost, load_cost};
use crate::order_predicates::PredicateOrderer;
use crate::proxy_training::{out_of_fold, train};
use crate::quality::{
    AgreementBound, MissRateShares, Z_95, cheap_plans, families, two_stage_plans,
    wilson_lower_bound,
};
use crate::sampling::{PrioritySample, row_priorities};
use crate::semantic_join::SemanticJoin;

/// Rows per forward batch of the model runtime (the unit of the estimate's `calls`).
pub(crate) const FORWARD_BATCH_ROWS: usize = 16;
/// The largest sample, as a multiple of `murakkab.optimizer.sample_rows`.
const MAX_SAMPLE_FACTOR: usize = 4;
/// Fewest labelled sample rows a proxy is trained on.
const PROXY_MIN_ROWS: usize = 24;
/// Folds of the out-of-fold estimate of a proxy's agreement.
const PROXY_FOLDS: usize = 5;
/// Fewest sampled rows on which one answer to all is worth a warning.
const ONE_ANSWER_MIN_ROWS: usize = 32;

/// Chooses models for label-scoring calls; see the module doc.
#[derive(Debug)]
pub struct ModelChooser {
    pub(crate) backend: Arc<dyn AiBackend>,
    warnings: Arc<AiWarnings>,
    pub(crate) store: StatsStore,
}

/// What a call asks the model, besides the row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Instruction {
    /// `ai_filter`'s condition.
    Condition(String),
    /// `ai_classify`'s labels.
    Labels(Vec<String>),
    /// `ai_extract`'s fields (decided by `extract_choice`).
    Schema(Vec<(String, FieldType)>),
}

/// A filter's answers as `compared_label` reads them and notes name them, in the order of its
/// labels (the condition holding, then its negation).
const FILTER_ANSWERS: [&str; 2] = ["yes", "no"];

impl Instruction {
    /// The labels a label-scoring call scores (none for an extraction).
    fn labels(&self) -> Vec<String> {
        match self {
            Self::Condition(c) => prompts::filter_labels(c),
            Self::Labels(l) => l.clone(),
            Self::Schema(_) => Vec::new(),
        }
    }

    /// The answer at `index` as a note or warning names it: the label, or 'yes' / 'no' for a
    /// filter (whose labels are the condition and its negation, as statements).
    fn answer_name(&self, index: usize) -> Option<String> {
        match self {
            Self::Condition(_) => FILTER_ANSWERS.get(index).map(|a| a.to_string()),
            _ => self.labels().get(index).cloned(),
        }
    }

    /// The instruction in a statistics key, with its prompt's version: answers recorded
    /// under another wording say nothing about this one's.
    fn key(&self) -> String {
        let version = match self {
            Self::Condition(_) => prompts::FILTER.version,
            Self::Labels(_) => prompts::CLASSIFY.version,
            Self::Schema(_) => prompts::EXTRACT.version,
        };
        format!("{self:?} prompt v{version}")
    }

    /// The prompts the call's function builds for `texts` (so sampled answers are the ones the
    /// query would compute, and land in the result cache under the same keys).
    pub(crate) fn prompt(&self, texts: &[String]) -> murakkab_udfs::ChatBatch {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        match self {
            Self::Condition(_) => prompts::filter(&texts),
            Self::Labels(l) => prompts::classify(&texts, l),
            Self::Schema(fields) => prompts::extract(&texts, fields),
        }
    }
}

/// One call the rule may decide.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) key: String,
    pub(crate) function: String,
    text: Expr,
    pub(crate) instruction: Instruction,
    input: LogicalPlan,
    /// At most this many rows will be pulled through the call (a LIMIT above it).
    pub(crate) limit: Option<usize>,
    /// The call's map reads in a top-k's key order until enough rows pass
    /// (`TopKOverAiFilter`): how many rows it reads is not known before it runs.
    pub(crate) in_key_order: bool,
    /// The one label an `ai_classify` answer is only compared with (`compared_label`): its
    /// cascades and agreement are about that label or not.
    pub(crate) compared_label: Option<String>,
    /// The index of the answer a predicate keeps, whose rows a plan must keep (`kept_share`):
    /// the compared label; 'yes' for an `ai_filter`, 'no' when the query keeps only the rows
    /// it rejects (`WHERE NOT ai_filter(...)`).
    kept_answer: Option<usize>,
}

impl Site {
    /// The index of [`Site::compared_label`] among the call's labels.
    fn target_index(&self) -> Option<usize> {
        self.compared_label.as_ref().and(self.kept_answer)
    }

    /// Why the call's rows do not pay for a sample, when what reads them says so before it
    /// runs: a small LIMIT, or a top-k that reads until enough rows pass.
    pub(crate) fn not_worth_a_sample(&self, sample_rows: usize) -> Option<String> {
        if let Some(limit) = self.limit.filter(|&l| l < 2 * sample_rows) {
            return Some(format!("LIMIT {limit}: too few rows for a sample to pay off"));
        }
        self.in_key_order.then(|| {
            "read in key order until enough rows pass a top-k: not sampled, as a sample of the \
             whole input would mostly be rows the query does not read"
                .to_string()
        })
    }

    /// The label [`Site::kept_answer`] names.
    fn kept_answer_label(&self) -> Option<String> {
        self.instruction.answer_name(self.kept_answer?)
    }
}

/// The plan chosen for a call and the note EXPLAIN shows.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    /// The SQL function decided for.
    pub(crate) function: String,
    pub(crate) plan: ModelPlan,
    pub(crate) note: String,
    /// The call's estimated time and energy under `plan`, when it was estimated.
    pub(crate) estimate: Option<Cost>,
    /// The least-energy plan whatever its quality (what `over_budget = 'degrade'` runs), with
    /// its estimate and estimated quality.
    pub(crate) cheapest: Option<(ModelPlan, Cost, f64)>,
    /// Rows the estimate is for.
    pub(crate) rows: u64,
    /// Every plan weighed, for reports (persisted beside the statistics).
    pub(crate) considered: Option<PlanChoices>,
}

impl Decision {
    /// A decision without estimates.
    pub(crate) fn plain(plan: ModelPlan, note: String) -> Self {
        Self {
            function: String::new(),
            plan,
            note,
            estimate: None,
            cheapest: None,
            rows: 0,
            considered: None,
        }
    }
}

/// Rows drawn from a call's input.
pub(crate) struct Sample {
    pub(crate) texts: Vec<String>,
    /// Rows of the input seen; all of them when `complete`.
    pub(crate) input_rows: u64,
    pub(crate) complete: bool,
}

/// Everything one planning pass decides with.
pub(crate) struct Pass<'a> {
    session: &'a dyn Session,
    /// Says which models are resident (loading the others is part of a plan's cost).
    backend: &'a dyn AiBackend,
    pub(crate) options: MurakkabOptions,
    pub(crate) profile: DeviceProfile,
    /// Models that can score labels, smallest first.
    candidates: Vec<ModelCard>,
    reference: ModelCard,
    /// Models that can generate, smallest first (`ai_extract`'s candidates).
    pub(crate) generators: Vec<ModelCard>,
    /// The encoder proxies are trained on, if one is pulled.
    encoder: Option<ModelCard>,
    pub(crate) may_sample: bool,
}

impl ModelChooser {
    /// A chooser that samples with the functions' backend, keeps its statistics under the
    /// backend's home and reports budget warnings with the functions' warnings.
    pub fn new(context: &AiContext) -> Self {
        let store = StatsStore::new(context.backend.home());
        Self {
            backend: Arc::clone(&context.backend),
            warnings: Arc::clone(&context.warnings),
            store,
        }
    }

    /// `plan` with a model plan written into every call the rule applies to.
    pub async fn choose(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<LogicalPlan> {
        let options = MurakkabOptions::from_config(session.config_options());
        // Plain SQL pays for one walk of its plan, nothing more.
        if !options.optimizer_enabled || !contains_ai_map(plan)? {
            return Ok(plan.clone());
        }
        let candidates = self.backend.candidate_models(Task::ScoreLabels);
        let Some(reference) = candidates.last().cloned() else { return Ok(plan.clone()) };
        let encoder =
            self.backend.candidate_models(Task::Embed).into_iter().find(|c| c.can(Task::Embed));
        let generators = self.backend.candidate_models(Task::Generate);
        // Built once: `rewrite` must find each call under the key `sites` gave it.
        let keys = KeyContext::new(plan, &candidates, &generators, encoder.as_ref())?;
        let sites = sites(plan, &keys)?;
        if sites.is_empty() {
            return Ok(plan.clone());
        }
        let pass = Pass {
            session,
            backend: self.backend.as_ref(),
            options,
            profile: DeviceProfile::load(self.backend.home())
                .with_matrix_units(self.backend.has_matrix_units()),
            candidates,
            reference,
            generators,
            encoder,
            // Plain EXPLAIN shows the plan without running anything.
            may_sample: !matches!(plan, LogicalPlan::Explain(_)),
        };
        let mut decisions: HashMap<String, Decision> = HashMap::new();
        for site in sites {
            if !decisions.contains_key(&site.key) {
                let decision = self.decide(&site, &pass).await?;
                let decision = Decision { function: site.function.clone(), ..decision };
                decisions.insert(site.key.clone(), decision);
            }
        }
        self.enforce_budget(&mut decisions, &pass.options)?;
        rewrite(plan, &decisions, &keys)
    }

    /// `murakkab.max_energy_j`: refuses a query estimated to use more, or switches every call to
    /// its least-energy plan with a warning (`murakkab.over_budget`).
    fn enforce_budget(
        &self,
        decisions: &mut HashMap<String, Decision>,
        options: &MurakkabOptions,
    ) -> Result<()> {
        let budget = options.max_energy_j;
        let total: f64 = decisions.values().filter_map(|d| d.estimate).map(|c| c.joules).sum();
        if budget <= 0.0 || total <= budget {
            return Ok(());
        }
        let mut parts: Vec<String> = decisions
            .values()
            .filter_map(|d| d.estimate.map(|c| format!("{} {:.0} J", d.function, c.joules)))
            .collect();
        parts.sort();
        if options.over_budget == OverBudget::Refuse {
            return Err(DataFusionError::Plan(format!(
                "estimated energy {total:.0} J ({}) exceeds murakkab.max_energy_j = {budget} J; \
                 raise the budget, lower murakkab.quality_target, or SET murakkab.over_budget = \
                 'degrade' to run the cheapest plan",
                parts.join(", ")
            )));
        }
        for decision in decisions.values_mut() {
            let Some((plan, cost, quality)) = decision.cheapest.clone() else { continue };
            let function = decision.function.clone();
            let message = format!(
                "estimated energy {total:.0} J over murakkab.max_energy_j = {budget} J: ran the \
                 cheapest plan, {plan} (estimated {:.0} J, agreement with the reference {quality:.3})",
                cost.joules
            );
            self.warnings.record(&function, &message, decision.rows as usize, None);
            decision.note = format!("{function}: {plan} (over budget: {message})");
            decision.plan = plan;
            decision.estimate = Some(cost);
        }
        Ok(())
    }

    async fn decide(&self, site: &Site, pass: &Pass<'_>) -> Result<Decision> {
        if let Instruction::Schema(fields) = &site.instruction {
            return self.decide_extract(site, fields, pass).await;
        }
        if let Some(stats) = self.store.label_stats(&site.key) {
            let bound = AgreementBound::sample(Z_95);
            let mut decision = choose_plan(site, &stats, pass, "recorded", &bound);
            self.notice_one_answer(site, &stats, &mut decision);
            self.record_choices(site, &decision);
            return Ok(decision);
        }
        let reference = ModelPlan::Model(pass.reference.id.clone());
        if pass.candidates.len() < 2 {
            let note = format!(
                "{}: {reference} (the only pulled model that can score labels)",
                site.function
            );
            return Ok(Decision::plain(reference, note));
        }
        if let Some(why) = site.not_worth_a_sample(pass.options.sample_rows) {
            let note = format!("{}: {reference} ({why})", site.function);
            return Ok(Decision::plain(reference, note));
        }
        if !pass.may_sample {
            return Ok(self.undecided(site, reference, pass));
        }
        let started = std::time::Instant::now();
        let sample = self.sample(site, pass, label_sample_size).await?;
        if sample.texts.is_empty() {
            let note = format!("{}: {reference} (empty input)", site.function);
            return Ok(Decision::plain(reference, note));
        }
        let tokens = self.mean_sample_tokens(site, &sample, &pass.reference).await?;
        let label_cost = |card: &ModelCard| {
            label_row_cost(&pass.profile.speed(card), tokens, &pass.options)
                .value(pass.options.objective, &pass.options)
        };
        let charged = pass.options.sample_rows;
        if sample.complete && !sampling_pays(&sample, charged, &pass.candidates, label_cost) {
            let rows = sample.input_rows;
            let per_row =
                label_row_cost(&pass.profile.speed(&pass.reference), tokens, &pass.options);
            let estimate = per_row.times(rows as f64);
            let note = format!(
                "{}: {reference} (input of {rows} rows too small for a sample to pay off): \
                 time={:.1}s, energy={:.0}J",
                site.function, estimate.seconds, estimate.joules
            );
            self.record_small_input(site, rows);
            return Ok(Decision {
                estimate: Some(estimate),
                rows,
                ..Decision::plain(reference, note)
            });
        }
        let row_cost = pass.candidates.iter().map(|c| (c.id.clone(), label_cost(c))).collect();
        let stats = self.measure(site, &sample, tokens, row_cost, pass).await?;
        if let Err(e) = self.store.save_label_stats(&site.key, &stats) {
            tracing::warn!("could not store optimizer statistics: {e}");
        }
        // The input just counted is the population the plan answers, and the sample's
        // reference answers, if cached, are what a cascade gives those rows.
        let bound = AgreementBound {
            z: Z_95,
            population: sample.complete.then_some(sample.input_rows),
            sample_answers_known: self.sample_answers_known(site, &sample, &stats, pass),
        };
        let mut decision = choose_plan(site, &stats, pass, "sampled", &bound);
        self.notice_one_answer(site, &stats, &mut decision);
        self.record_choices(site, &decision);
        decision.note.push_str(&format!("; sampling took {:.1}s", started.elapsed().as_secs_f64()));
        Ok(decision)
    }

    /// Plain `EXPLAIN`'s decision for a call with no statistics: the reference, when the last
    /// run found the input too small for a sample ([`SmallInput`]), else `auto` with a note
    /// that the query's run will choose.
    pub(crate) fn undecided(&self, site: &Site, reference: ModelPlan, pass: &Pass<'_>) -> Decision {
        if let Some(small) = self.store.small_input(&site.key) {
            let rows = small.input_rows;
            let note = format!(
                "{}: {reference} (input of {rows} rows too small for a sample to pay off when \
                 the query last ran)",
                site.function
            );
            return Decision { rows, ..Decision::plain(reference, note) };
        }
        let note = format!(
            "{}: model chosen from a sample (at least {} rows) when the query runs",
            site.function, pass.options.sample_rows
        );
        Decision::plain(ModelPlan::Auto, note)
    }

    /// Remembers that the call's input of `rows` was too small for a sample (see
    /// [`Self::undecided`]).
    pub(crate) fn record_small_input(&self, site: &Site, rows: u64) {
        if let Err(e) = self.store.save_small_input(&site.key, &SmallInput { input_rows: rows }) {
            tracing::warn!("could not store optimizer statistics: {e}");
        }
    }

    /// Says so in the note and as a warning when the reference gave every sampled row the same
    /// answer (an `ai_filter` that never passes a row, say): any plan then agrees with it, the
    /// result likely is not what the query meant, and a model that never varies is no basis
    /// for a proxy.
    fn notice_one_answer(&self, site: &Site, stats: &LabelCallStats, decision: &mut Decision) {
        let Some(label) = stats.one_answer(ONE_ANSWER_MIN_ROWS) else { return };
        let Some(answer) = site.instruction.answer_name(label) else { return };
        let rows = stats.reference_rows;
        let message = format!(
            "the reference model, {}, answered '{answer}' on all {rows} sampled rows; check the \
             {} against the data",
            stats.reference,
            if matches!(site.instruction, Instruction::Condition(_)) {
                "condition"
            } else {
                "labels"
            }
        );
        decision.note.push_str(&format!(" ({message})"));
        self.warnings.record(&site.function, &message, rows, None);
    }

    /// Whether the reference's answers on every sampled row it answered are in the result
    /// cache (a lookup that runs no model and counts no cache hits).
    fn sample_answers_known(
        &self,
        site: &Site,
        sample: &Sample,
        stats: &LabelCallStats,
        pass: &Pass<'_>,
    ) -> bool {
        let prompt = site.instruction.prompt(&sample.texts);
        let known =
            self.backend.known_label_rows(&pass.reference.id, &prompt, &site.instruction.labels());
        stats.reference_rows > 0 && known >= stats.reference_rows
    }

    /// Mean tokens of a sampled row's prompt part for `site`, by `model`'s tokenizer (on a
    /// blocking thread: the tokenizer may load the model).
    pub(crate) async fn mean_sample_tokens(
        &self,
        site: &Site,
        sample: &Sample,
        model: &ModelCard,
    ) -> Result<RowTokens> {
        let backend = Arc::clone(&self.backend);
        let (texts, instruction) = (sample.texts.clone(), site.instruction.clone());
        let model = model.id.clone();
        SpawnedTask::spawn_blocking(move || {
            mean_tokens(backend.as_ref(), &model, &texts, &instruction)
        })
        .join()
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// Persists the plans weighed for `site` (a report's Pareto plot reads them).
    pub(crate) fn record_choices(&self, site: &Site, decision: &Decision) {
        if let Some(choices) = &decision.considered
            && let Err(e) = self.store.save_plan_choices(&site.key, choices)
        {
            tracing::warn!("could not store the optimizer's plan choices: {e}");
        }
    }

    /// Draws the sample: the rows of least seeded priority over the whole input (the same rows
    /// whatever order its partitions deliver them in, see `sampling`), or from its first rows
    /// when an AI call sits below (so that call is not run over every row for a sample).
    ///
    /// `size` says how many rows to keep of an input of `n` rows, between
    /// `murakkab.optimizer.sample_rows` and four times that ([`label_sample_size`],
    /// [`extract_sample_size`]).
    pub(crate) async fn sample(
        &self,
        site: &Site,
        pass: &Pass<'_>,
        size: SampleSize,
    ) -> Result<Sample> {
        let least = pass.options.sample_rows;
        let most = MAX_SAMPLE_FACTOR * least;
        let ai_below = contains_ai_map(&site.input)?;
        // The text, then the input row's columns, whose values set the row's priority (as
        // `order_predicates` does over the same input, so both draw the same rows). Not the
        // answers of AI calls below: planning this projection plans those calls again, and an
        // answer column the projection shows would be planned as shown (`compared_label`), under
        // another statistics key than the query's, so sampled twice.
        let answers = answer_columns(&site.input)?;
        let row: Vec<Expr> = site
            .input
            .schema()
            .columns()
            .into_iter()
            .filter(|c| !answers.contains(&c.name))
            .map(Expr::Column)
            .collect();
        let projection = LogicalPlanBuilder::from(site.input.clone())
            .project(std::iter::once(site.text.clone().alias("__sample_text")).chain(row))?
            .build()?;
        let physical: Arc<dyn ExecutionPlan> =
            pass.session.create_physical_plan(&projection).await?;
        let mut stream = execute_stream(physical, pass.session.task_ctx())?;
        let mut sample = PrioritySample::new(most);
        // With an AI call below, the sample is the first rows, read up to twice the least
        // sample: an input that ends before that is seen whole (the sample is complete, and
        // whether sampling pays can be judged); one that goes on is sampled as an input of the
        // rows read would be. The AI work below goes through the result cache, so the query
        // reuses it.
        let mut complete = true;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let priorities = row_priorities(&batch.columns()[1..])?;
            let column = cast(batch.column(0), &DataType::Utf8)?;
            let column = column.as_string::<i32>();
            for (i, &priority) in priorities.iter().enumerate() {
                if !column.is_null(i) {
                    sample.offer(priority, || column.value(i).to_string());
                }
            }
            if ai_below && sample.len() >= 2 * least {
                complete = false;
                break;
            }
        }
        let seen = sample.seen();
        let mut texts = sample.into_sorted();
        texts.truncate(size(seen, least, most));
        Ok(Sample { texts, input_rows: seen, complete })
    }

    /// Scores the sample with every candidate and compares each with the reference; trains a
    /// proxy on the sample's embeddings when an encoder is pulled. `row_cost` is a row's cost on
    /// each candidate by the objective (it decides whether a candidate finishes the sample).
    async fn measure(
        &self,
        site: &Site,
        sample: &Sample,
        tokens: RowTokens,
        row_cost: HashMap<String, f64>,
        pass: &Pass<'_>,
    ) -> Result<LabelCallStats> {
        let backend = Arc::clone(&self.backend);
        let job = MeasureJob {
            function: site.function.clone(),
            texts: sample.texts.clone(),
            instruction: site.instruction.clone(),
            models: pass.candidates.iter().map(|c| c.id.clone()).collect(),
            reference: pass.reference.id.clone(),
            encoder: pass.encoder.as_ref().map(|c| c.id.clone()),
            proxy_id: StatsStore::id_of(&site.key),
            input_rows: sample.input_rows,
            tokens,
            row_cost,
            quality_target: pass.options.quality_target,
            target: site.target_index(),
        };
        SpawnedTask::spawn_blocking(move || measure_blocking(backend.as_ref(), &job))
            .join()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    }
}

/// What measuring a sample needs, owned so it can move to a blocking thread.
struct MeasureJob {
    function: String,
    texts: Vec<String>,
    instruction: Instruction,
    models: Vec<String>,
    reference: String,
    encoder: Option<String>,
    proxy_id: String,
    input_rows: u64,
    tokens: RowTokens,
    /// A row's cost on each candidate, by the objective.
    row_cost: HashMap<String, f64>,
    quality_target: f64,
    /// The index of the label the answer is only compared with: agreement and confidence are
    /// then about that label or not (`murakkab_udfs::stage_confidence`).
    target: Option<usize>,
}

/// Rows to sample from an input of `n` rows, within `least..=most`.
pub(crate) type SampleSize = fn(u64, usize, usize) -> usize;

/// A label call's sample: `6·√n` of its `n` input rows, within `least..=most`.
///
/// A larger sample trains a better proxy and narrows the agreement bound, so a cascade may
/// settle more rows; it costs the reference on the sampled rows the cascade would have settled
/// (the sample's own answers are reused). Both effects make the best size grow like the square
/// root of the input. Replaying the optimizer's rule offline (a proxy trained on the sample's
/// reference answers, out-of-fold thresholds under the Wilson bound at z = 2.326, 16 seeded
/// draws per cell) on qwen2.5-0.5b's answers for 1,000 UCI sentences and 1,112 BBC headlines,
/// the share of rows the reference computes (sample included) was least at 96 sampled rows of
/// 220, 128–160 of 400 and 160–192 of 1,000, for sentiment, five topics and a good-news filter
/// alike; 6·√n gives 89, 120 and 190. The old rule, 5% of the input, sampled 64 rows at all
/// three sizes, where the reference still computed 72–92% of 400 rows against 50–75% at 128.
pub(crate) fn label_sample_size(input_rows: u64, least: usize, most: usize) -> usize {
    let size = (6.0 * (input_rows as f64).sqrt()).round() as usize;
    size.clamp(least, most)
}

/// An extraction's sample: 5% of its `n` input rows, within `least..=most`. Extraction compares
/// whole models (no proxy, no cascade), and every sampled row costs each candidate a generation.
pub(crate) fn extract_sample_size(input_rows: u64, least: usize, most: usize) -> usize {
    (usize::try_from(input_rows).unwrap_or(usize::MAX) / 20).clamp(least, most)
}

/// Rows a smaller candidate scores first; the rest of the sample only if [`worth_finishing`].
const FIRST_LOOK_ROWS: usize = 16;

/// Whether scoring the rest of the sample with a smaller candidate can pay for itself, judged
/// from its first rows: `first_look` holds its confidence and whether it agreed with the
/// reference on each.
///
/// A cascade meeting the target `τ` settles the rows the candidate is most confident on, as
/// long as the wrong answers among them stay within the `1 − τ` the target allows. So for each
/// share `k/n` of the first rows, most confident first, with the 95% upper bound `q̄ₖ` of their
/// agreement, the candidate can at best settle `sₖ = k/n` when `sₖ · (1 − q̄ₖ) ≤ 1 − τ`, and
/// `s` is the largest such share (all rows when every share passes). Each row after the sample
/// then saves at most `s · c_ref − c` (the reference's cost on the rows settled, less the
/// candidate's on every row). When that, over the rows after the sample, is less than what the
/// rest of the sample costs on the candidate, the candidate cannot be worth finishing.
///
/// The bound is optimistic (an upper bound per share, the best share taken, escalated rows
/// costing more than the reference's share, no load cost), so it stops only candidates that
/// are hopeless for this input. Ranking by confidence matters where a candidate is confidently
/// wrong: on SpamAssassin subjects smollm2-135m agreed with qwen2.5-0.5b on 5 of its first 16
/// rows, but its four most confident rows held three of the disagreements, so at most a
/// quarter of rows could be settled (agreement alone said 65%), and the 48 more rows it would
/// have scored (1.6 s of a 20 s query) could not pay.
///
/// `escalated` is the share of rows still left to the reference by the proxy (trained first,
/// on the sample's embeddings: [`proxy_escalation`]), or 1 without one. The candidate can then
/// at best take over the reference's work on those rows (as the middle stage of a cascade
/// after the proxy), so the saving per row is scaled by it. On 428 UCI sentences the proxy
/// left about a third of rows, and smollm2-135m, which had scored all 124 sampled rows (2.6 s
/// with its load, of a 12 s query) without making the chosen plan, stopped after 16; with an
/// empty `first_look` (every row settled, at best) it is not sampled at all there: by the
/// cost model, the third of rows it could take over from qwen2.5-0.5b could not pay for the
/// 124 rows it would score.
fn worth_finishing(
    first_look: &[(f32, bool)],
    rest_of_sample: usize,
    rows_after_sample: f64,
    cost: f64,
    reference_cost: f64,
    quality_target: f64,
    escalated: f64,
) -> bool {
    let settled = settleable_share(first_look, quality_target);
    let best_saving = rows_after_sample * escalated * (settled * reference_cost - cost);
    best_saving > rest_of_sample as f64 * cost
}

/// The share of rows the proxy's best single-stage cascade would still send to the reference:
/// one less the share it settles, judged by the 95% *lower* bound of each share's agreement
/// (out of fold), so that the proxy is not credited with more than the sample shows and a
/// candidate is not stopped on the proxy's luck.
fn proxy_escalation(proxy: &CandidateOutcome, quality_target: f64) -> f64 {
    let ranked = answered_rows(proxy);
    if ranked.is_empty() {
        return 1.0;
    }
    1.0 - share_within_target(&ranked, quality_target, |agreeing, looked| {
        wilson_lower_bound(agreeing, looked, Z_95)
    })
}

/// A candidate's sampled rows as (confidence, agrees with the reference), the input of
/// [`settleable_share`] and [`proxy_escalation`].
fn answered_rows(outcome: &CandidateOutcome) -> Vec<(f32, bool)> {
    outcome.confidence.iter().copied().zip(outcome.agrees.iter().copied()).collect()
}

/// The largest share of rows, most confident first, that a cascade meeting `quality_target`
/// could settle by the 95% upper bound of each share's agreement (see [`worth_finishing`]).
fn settleable_share(first_look: &[(f32, bool)], quality_target: f64) -> f64 {
    share_within_target(first_look, quality_target, |agreeing, looked| {
        1.0 - wilson_lower_bound(looked - agreeing, looked, Z_95)
    })
}

/// The largest share of `rows` (confidence, agrees), most confident first, whose wrong answers
/// stay within the `1 − quality_target` allowed, with `agreement(agreeing, looked)` bounding
/// the agreement of each leading share.
fn share_within_target(
    rows: &[(f32, bool)],
    quality_target: f64,
    agreement: impl Fn(usize, usize) -> f64,
) -> f64 {
    let n = rows.len();
    if n == 0 {
        return 1.0;
    }
    let mut ranked = rows.to_vec();
    // Ties cannot be split by a threshold; agreeing rows first is the optimistic reading.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    let allowed_wrong = 1.0 - quality_target;
    let mut agreeing = 0;
    let mut best = 0.0;
    for (k, &(_, agrees)) in ranked.iter().enumerate() {
        agreeing += usize::from(agrees);
        let looked = k + 1;
        let share = looked as f64 / n as f64;
        if share * (1.0 - agreement(agreeing, looked)) <= allowed_wrong + 1e-12 {
            best = share;
        }
    }
    best
}

fn measure_blocking(backend: &dyn AiBackend, job: &MeasureJob) -> Result<LabelCallStats> {
    let answers = |model: &str, texts: &[String]| {
        let started = std::time::Instant::now();
        let scored = score_sample(backend, model, texts, &job.instruction);
        tracing::debug!(
            "{}: scored {} sampled rows with {model} in {:.1}s",
            job.function,
            texts.len(),
            started.elapsed().as_secs_f64()
        );
        scored
    };
    let truth = answers(&job.reference, &job.texts).map_err(|e| {
        DataFusionError::Execution(format!("{}: sampling {}: {e}", job.function, job.reference))
    })?;
    // The proxy first: it costs an embedding per sampled row, and what it settles bounds what
    // a smaller model could still save (`worth_finishing`).
    let started = std::time::Instant::now();
    let proxy = job.encoder.as_deref().and_then(|e| proxy_outcome(backend, job, e, &truth));
    if proxy.is_some() {
        tracing::debug!(
            "{}: proxy trained and measured in {:.1}s",
            job.function,
            started.elapsed().as_secs_f64()
        );
    } else {
        tracing::debug!("{}: no proxy (no encoder, too few rows or one answer)", job.function);
    }
    let escalated = proxy.as_ref().map_or(1.0, |p| proxy_escalation(p, job.quality_target));
    let mut candidates = Vec::new();
    let n = job.texts.len();
    let rows_after_sample = job.input_rows.saturating_sub(n as u64) as f64;
    let reference_cost = job.row_cost.get(&job.reference).copied();
    for model in job.models.iter().filter(|m| **m != job.reference) {
        let mut outcome =
            CandidateOutcome { model: model.clone(), confidence: Vec::new(), agrees: Vec::new() };
        let first = FIRST_LOOK_ROWS.min(n);
        // Whether scoring `rest` more sampled rows can pay, given the first look's rows (true
        // when the costs are unknown).
        let costs = job.row_cost.get(model).copied().zip(reference_cost);
        let can_pay = |first_look: &[(f32, bool)], rest: usize| {
            costs.is_none_or(|(cost, reference_cost)| {
                worth_finishing(
                    first_look,
                    rest,
                    rows_after_sample,
                    cost,
                    reference_cost,
                    job.quality_target,
                    escalated,
                )
            })
        };
        // Not even a first look when agreeing on every row could not pay for the sample: with
        // the proxy settling most rows, little is left for a smaller model to take over.
        if first < n && !can_pay(&[], n) {
            tracing::debug!(
                "{}: {model} not sampled: agreeing on every row, it could not pay for the \
                 {n}-row sample on the {:.0}% of rows left to the reference",
                job.function,
                escalated * 100.0
            );
            continue;
        }
        let Ok(head) = answers(model, &job.texts[..first]) else { continue };
        add_agreement(&mut outcome, &head, &truth[..first], job.target);
        let first_look = answered_rows(&outcome);
        let hopeless = first < n && !first_look.is_empty() && !can_pay(&first_look, n - first);
        if hopeless {
            tracing::debug!(
                "{}: {model} agreed on {} of {} rows; the rest of the sample cannot pay off",
                job.function,
                outcome.agrees.iter().filter(|&&a| a).count(),
                outcome.agrees.len()
            );
        } else if first < n {
            let Ok(tail) = answers(model, &job.texts[first..]) else { continue };
            add_agreement(&mut outcome, &tail, &truth[first..], job.target);
        }
        candidates.push(outcome);
    }
    candidates.extend(proxy);
    let answered: Vec<&Vec<f32>> = truth.iter().flatten().collect();
    let mut answer_counts = vec![0; job.instruction.labels().len()];
    for p in &answered {
        if let Some(count) = answer_counts.get_mut(best_label(p)) {
            *count += 1;
        }
    }
    let first = answer_counts.first().copied().unwrap_or(0);
    let reference_answers = answered.iter().map(|p| best_label(p)).collect();
    Ok(LabelCallStats {
        input_rows: job.input_rows,
        reference: job.reference.clone(),
        mean_row_tokens: job.tokens.prompt,
        mean_statement_tokens: job.tokens.statements,
        first_label_rate: first as f64 / answered.len().max(1) as f64,
        candidates,
        reference_rows: answered.len(),
        answer_counts,
        reference_answers,
    })
}

/// Adds a candidate's `answers` on sampled rows to its outcome, against the reference's (on
/// "the `target` label or not" when there is one).
fn add_agreement(
    outcome: &mut CandidateOutcome,
    answers: &[Option<Vec<f32>>],
    truth: &[Option<Vec<f32>>],
    target: Option<usize>,
) {
    for (mine, theirs) in answers.iter().zip(truth) {
        // A row the reference could not answer says nothing about agreement.
        let Some(theirs) = theirs else { continue };
        outcome.confidence.push(mine.as_ref().map_or(0.0, |p| stage_confidence(p, target)));
        outcome.agrees.push(mine.as_ref().is_some_and(|p| answers_agree(p, theirs, target)));
    }
}

/// Trains a proxy on the sample's embeddings and the reference's answers and reports its
/// out-of-fold agreement; `None` when the sample cannot train one (no encoder output, too few
/// rows, a single label).
fn proxy_outcome(
    backend: &dyn AiBackend,
    job: &MeasureJob,
    encoder: &str,
    truth: &[Option<Vec<f32>>],
) -> Option<CandidateOutcome> {
    // What the reference said decides whether a proxy can be trained at all: checked before
    // embedding the sample (on 120 spam subjects, all answered 'no', embedding them took 0.4 s
    // of planning, the encoder's load included, for nothing).
    let answered: Vec<usize> = truth.iter().flatten().map(|t| best_label(t)).collect();
    let distinct: std::collections::HashSet<usize> = answered.iter().copied().collect();
    if answered.len() < PROXY_MIN_ROWS || distinct.len() < 2 {
        return None;
    }
    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
    let mut embeddings: Vec<Option<Vec<f32>>> = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let out = backend.embed(encoder, chunk).ok()?;
        embeddings.extend(out.rows.into_iter().map(std::result::Result::ok));
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (e, t) in embeddings.iter().zip(truth) {
        if let (Some(e), Some(t)) = (e, t) {
            xs.push(e.clone());
            ys.push(best_label(t));
        }
    }
    let n_labels = job.instruction.labels().len();
    // Again over the rows that were embedded (a row whose embedding failed drops out).
    let distinct: std::collections::HashSet<usize> = ys.iter().copied().collect();
    if xs.len() < PROXY_MIN_ROWS || distinct.len() < 2 {
        return None;
    }
    let predicted = out_of_fold(&xs, &ys, n_labels, PROXY_FOLDS);
    let proxy = train(encoder, &xs, &ys, n_labels);
    if let Err(e) = proxy.save(backend.home(), &job.proxy_id) {
        tracing::warn!("could not store proxy model: {e}");
        return None;
    }
    let mut outcome = CandidateOutcome {
        model: format!("{PROXY_PREFIX}{}", job.proxy_id),
        confidence: Vec::new(),
        agrees: Vec::new(),
    };
    // Out of fold, in the rows' order: the rows trained on are those embedded and answered.
    let mut predicted = predicted.into_iter();
    let answers: Vec<Option<Vec<f32>>> = embeddings
        .iter()
        .zip(truth)
        .map(|(e, t)| if e.is_some() && t.is_some() { predicted.next() } else { None })
        .collect();
    add_agreement(&mut outcome, &answers, truth, job.target);
    Some(outcome)
}

/// Whether sampling can save more than it costs: the rows after the sample, moved from the
/// reference (the last of `candidates`) to the cheapest (the first) at best, against the
/// sample computed by both; `cost` is a row's cost on a model by the objective.
///
/// The sample is charged at both models' cost although the reference's sample answers are not
/// wasted (those rows would cost the reference anyway). That is deliberate: "at best" is
/// optimistic (a cascade escalates rows, the smaller models and the encoder must load, the
/// proxy embeds every row), and the exact accounting, `(n − s)(r − c) > s · c`, was measured
/// to lose: at 100 UCI rows it sampled, and the first run took 21.0 s against 14.3 s for the
/// reference alone (`MURAKKAB_BENCH_ONLY=uci-sentiment cargo bench --profile dev --bench
/// workflows`, 2026-12-03); the charge here puts the break-even near three samples of input
/// (at 220 rows sampling gains 5.0x → 6.9x).
///
/// `charged_rows` is how much of the sample the charge covers: all of an extraction's (every
/// candidate generates on every sampled row), but only `murakkab.optimizer.sample_rows` of a
/// label call's. Rows a label sample holds beyond that (see [`label_sample_size`]) are the
/// reference's answers reused in the result and training rows for the proxy; a smaller model
/// scores them only when its first rows say it can pay (`worth_finishing`). Charging them too
/// made a 428-row UCI input, sampled at 124 rows, skip the sample and its cascade.
pub(crate) fn sampling_pays(
    sample: &Sample,
    charged_rows: usize,
    candidates: &[ModelCard],
    cost: impl Fn(&ModelCard) -> f64,
) -> bool {
    let (Some(cheapest), Some(reference)) = (candidates.first(), candidates.last()) else {
        return false;
    };
    let (c, r) = (cost(cheapest), cost(reference));
    let n = sample.input_rows as f64;
    let s = charged_rows.min(sample.texts.len()) as f64;
    (n - s) * (r - c) > s * (r + c)
}

/// Each sampled row's label probabilities under `model` (`None` where the row failed).
fn score_sample(
    backend: &dyn AiBackend,
    model: &str,
    texts: &[String],
    instruction: &Instruction,
) -> std::result::Result<Vec<Option<Vec<f32>>>, String> {
    // One call: the runtime sorts the rows by length into its row batches.
    let scored = backend.score_labels(model, &instruction.prompt(texts), &instruction.labels())?;
    Ok(scored.rows.into_iter().map(std::result::Result::ok).collect())
}

/// Mean tokens of a sampled row's prompt part (its text in its block) and of the labels scored
/// whole after it, by `model`'s tokenizer.
fn mean_tokens(
    backend: &dyn AiBackend,
    model: &str,
    texts: &[String],
    instruction: &Instruction,
) -> RowTokens {
    let batch = instruction.prompt(texts);
    let count = |t: &str| backend.count_tokens(model, t).unwrap_or(t.len() / 4);
    let total: usize = batch.rows.iter().map(|r| count(r)).sum();
    // Labels scored whole (a filter's two statements) run through the model on every row too,
    // at their own speed: on short texts they are most of the work (spam subjects: the filter
    // takes about twice as long as a yes/no answer).
    let statements: usize =
        if batch.whole_labels { instruction.labels().iter().map(|l| count(l)).sum() } else { 0 };
    RowTokens {
        prompt: total as f64 / batch.rows.len().max(1) as f64,
        statements: statements as f64,
    }
}

/// The cheapest plan meeting the target, with its note.
fn choose_plan(
    site: &Site,
    stats: &LabelCallStats,
    pass: &Pass<'_>,
    source: &str,
    bound: &AgreementBound,
) -> Decision {
    let card = |id: &str| pass.candidates.iter().find(|c| c.id == id);
    let options = &pass.options;
    let objective = options.objective;
    let reference_card = card(&stats.reference).unwrap_or(&pass.reference);
    let tokens =
        RowTokens { prompt: stats.mean_row_tokens, statements: stats.mean_statement_tokens };
    let row_cost = |c: &ModelCard| label_row_cost(&pass.profile.speed(c), tokens, options);
    let reference_cost = row_cost(reference_card);
    let mut best = Choice {
        plan: ModelPlan::Model(reference_card.id.clone()),
        cost: reference_cost,
        quality: 1.0,
        quality_lower: 1.0,
        escalated: None,
        stage_rows: 1.0,
    };
    // Each cheaper candidate with its per-row cost (a proxy costs its encoder's embedding).
    let proxy_cost = pass.encoder.as_ref().map(|e| embed_row_cost(&pass.profile.speed(e), options));
    let tested = tested_outcomes(stats);
    let cheap: Vec<(&CandidateOutcome, Cost)> = tested
        .iter()
        .filter_map(|outcome| {
            let cost = if outcome.model.starts_with(PROXY_PREFIX) {
                proxy_cost?
            } else {
                row_cost(card(&outcome.model)?)
            };
            Some((outcome, cost))
        })
        .collect();
    let value = |c: Cost| c.value(objective, options);
    // Two cheap stages, the cheaper first: what the first is unsure of, the second may know.
    let pairs: Vec<_> = cheap
        .iter()
        .flat_map(|&a| cheap.iter().map(move |&b| (a, b)))
        .filter(|(a, b)| value(a.1) < value(b.1))
        .collect();
    // Every plan below is tested on the one sample: the bound holds for all of them together.
    // The miss rate is shared out over every sequence that could be tested, counted from the
    // candidates' costs before the sample: whether a smaller model is sampled at all depends on
    // how the proxy did on it (`quality::MissRateShares`).
    let stage_values: Vec<f64> = pass
        .candidates
        .iter()
        .filter(|c| c.id != reference_card.id)
        .map(|c| value(row_cost(c)))
        .chain(proxy_cost.map(value))
        .collect();
    let smaller_models = stage_values.len() - usize::from(proxy_cost.is_some());
    let possible_pairs: usize =
        stage_values.iter().map(|a| stage_values.iter().filter(|&b| a < b).count()).sum();
    let shares =
        MissRateShares::new(proxy_cost.is_some(), families(smaller_models, possible_pairs));
    let (proxy_bound, other_bound) = (bound.for_share(shares.proxy), bound.for_share(shares.other));
    let rows = stats.input_rows as f64;
    // Plans compare by their cost over every row plus loading the models that are not resident.
    let total = |choice: &Choice| choice.cost.times(rows).plus(load_of(&choice.plan, pass));
    let mut cheapest: (ModelPlan, Cost, f64) = (best.plan.clone(), total(&best), 1.0);
    let mut weighed: Vec<ConsideredPlan> = vec![considered(&best, total(&best))];
    // The sampled rows whose reference answer is the one a predicate keeps, as tested.
    let kept_rows = kept_answer_rows(site, stats);
    // The reference keeps every one.
    let mut best_keeps = kept_share(kept_rows.as_deref(), &[]);
    let mut consider = |choice: Choice, keeps: Kept| {
        let choice_total = total(&choice);
        weighed.push(considered(&choice, choice_total));
        if choice_total.joules < cheapest.1.joules {
            cheapest = (choice.plan.clone(), choice_total, choice.quality);
        }
        if choice.quality_lower >= options.quality_target
            && keeps.meets(options.quality_target)
            && value(choice_total) < value(total(&best))
        {
            best = choice;
            best_keeps = keeps;
        }
    };
    let reference_id = &reference_card.id;
    for &(outcome, cheap_cost) in &cheap {
        let bound =
            if outcome.model.starts_with(PROXY_PREFIX) { &proxy_bound } else { &other_bound };
        for option in cheap_plans(outcome, bound) {
            let keeps = kept_share(kept_rows.as_deref(), &[(outcome, option.threshold)]);
            consider(
                Choice {
                    plan: match option.threshold {
                        None => ModelPlan::Model(outcome.model.clone()),
                        Some(threshold) => ModelPlan::Cascade(Cascade {
                            stages: vec![(outcome.model.clone(), threshold)],
                            reference: reference_id.clone(),
                            target: site.compared_label.clone(),
                        }),
                    },
                    cost: cheap_cost.plus(reference_cost.times(option.escalated)),
                    quality: option.quality,
                    quality_lower: option.quality_lower,
                    escalated: option.threshold.map(|_| option.escalated),
                    stage_rows: 1.0 + option.threshold.map_or(0.0, |_| option.escalated),
                },
                keeps,
            );
        }
    }
    for &((first, first_cost), (second, second_cost)) in &pairs {
        for option in two_stage_plans(first, second, &other_bound) {
            let cost = first_cost
                .plus(second_cost.times(option.reach_second))
                .plus(reference_cost.times(option.escalated));
            let stages = [(first, Some(option.thresholds.0)), (second, Some(option.thresholds.1))];
            let keeps = kept_share(kept_rows.as_deref(), &stages);
            consider(
                Choice {
                    plan: ModelPlan::Cascade(Cascade {
                        stages: vec![
                            (first.model.clone(), option.thresholds.0),
                            (second.model.clone(), option.thresholds.1),
                        ],
                        reference: reference_id.clone(),
                        target: site.compared_label.clone(),
                    }),
                    cost,
                    quality: option.quality,
                    quality_lower: option.quality_lower,
                    escalated: Some(option.escalated),
                    stage_rows: 1.0 + option.reach_second + option.escalated,
                },
                keeps,
            );
        }
    }
    let chosen = best.plan.to_string();
    for plan in &mut weighed {
        plan.chosen = plan.plan == chosen;
    }
    let load = load_of(&best.plan, pass);
    let total = total(&best);
    let reference_plan = ModelPlan::Model(reference_card.id.clone());
    let reference_total = reference_cost.times(rows).plus(load_of(&reference_plan, pass));
    // Forward batches of FORWARD_BATCH_ROWS rows and row tokens read,
    // over every stage the plan runs.
    let model_rows = rows * best.stage_rows;
    let mut note = format!(
        "{}: {} for {objective} ({source}, {}-row sample): est. rows={}, calls={:.0}, tokens={:.0}",
        site.function,
        best.plan,
        stats.sample_rows(),
        stats.input_rows,
        (model_rows / FORWARD_BATCH_ROWS as f64).ceil(),
        model_rows * tokens.total()
    );
    if let Some(escalated) = best.escalated {
        note.push_str(&format!(", escalated={:.0}%", escalated * 100.0));
    }
    note.push_str(&format!(", quality={:.3} (>= {:.3} at 95%)", best.quality, best.quality_lower));
    if let (Some(rows), Some(answer)) = (&kept_rows, site.kept_answer_label()) {
        let count = rows.iter().filter(|&&k| k).count();
        note.push_str(&format!(", keeps {} of the {count} sampled '{answer}'", best_keeps.kept));
    }
    note.push_str(&format!(", time={:.1}s, energy={:.0}J", total.seconds, total.joules));
    if load.seconds > 0.0 {
        note.push_str(&format!(" (incl. loading: {:.1}s, {:.0}J)", load.seconds, load.joules));
    }
    if !matches!(&best.plan, ModelPlan::Model(m) if *m == reference_card.id) {
        note.push_str(&format!(
            "; reference alone: time={:.1}s, energy={:.0}J",
            reference_total.seconds, reference_total.joules
        ));
    }
    let (cheap_plan, cheap_cost, cheap_quality) = cheapest;
    Decision {
        function: site.function.clone(),
        plan: best.plan,
        note,
        estimate: Some(total),
        cheapest: Some((cheap_plan, cheap_cost, cheap_quality)),
        rows: stats.input_rows,
        considered: Some(PlanChoices {
            function: site.function.clone(),
            objective: objective.to_string(),
            quality_target: options.quality_target,
            rows: stats.input_rows,
            plans: weighed,
        }),
    }
}

/// The sampled rows each candidate's plans are tested on: all of them, or, when a smaller model
/// took a first look, the rows after it, without the candidates that stopped there.
///
/// Whether a smaller model finishes the sample is decided from its first rows' agreement
/// (`worth_finishing`), so those rows decide which candidates share the 5% of the bound. Were
/// they tested too, the 95% would no longer be guaranteed: the same rows would pick the
/// families and test them. Given whatever the first look decided, the rows after it are still
/// a uniform sample of the input, so testing only those is fair to the candidates that
/// finished. A candidate that stopped cannot show the target on its 16 rows anyway (16 of 16
/// is a lower bound of 0.855 at z = 1.645). The shares of the 5% do not follow which candidates
/// finished: they are fixed from the candidates' costs before the sample
/// (`quality::MissRateShares`), the proxy's at 80% (z = 1.751). A smaller model that could
/// not pay even agreeing on every row is not sampled at all, so no first look takes rows from
/// the test (on 428 UCI reviews: 124 tested rows instead of 108, the proxy's threshold 0.825 →
/// 0.739, 84 → 57 rows escalated). A sample no longer than the first look stopped nothing,
/// and is tested whole.
fn tested_outcomes(stats: &LabelCallStats) -> Vec<CandidateOutcome> {
    let skipped = untested_rows(stats);
    if skipped == 0 {
        return stats.candidates.clone();
    }
    stats
        .candidates
        .iter()
        .filter(|c| c.agrees.len() > skipped)
        .map(|c| CandidateOutcome {
            model: c.model.clone(),
            confidence: c.confidence.iter().skip(skipped).copied().collect(),
            agrees: c.agrees.iter().skip(skipped).copied().collect(),
        })
        .collect()
}

/// The leading sampled rows [`tested_outcomes`] leaves out: a smaller model's first look.
fn untested_rows(stats: &LabelCallStats) -> usize {
    let first_look = stats.candidates.iter().any(|c| !c.model.starts_with(PROXY_PREFIX));
    if !first_look || stats.reference_rows <= FIRST_LOOK_ROWS { 0 } else { FIRST_LOOK_ROWS }
}

/// For a call whose answer is read as one answer or not (an `ai_filter`, whose 'yes' rows
/// pass; an `ai_classify` compared with one label), whether each tested sampled row's
/// reference answer is that answer; `None` for other calls and for records written before the
/// reference's answers were kept.
fn kept_answer_rows(site: &Site, stats: &LabelCallStats) -> Option<Vec<bool>> {
    let kept = site.kept_answer?;
    if stats.reference_answers.len() != stats.reference_rows {
        return None;
    }
    let skipped = untested_rows(stats);
    Some(stats.reference_answers.iter().skip(skipped).map(|&a| a == kept).collect())
}

/// How many of the sampled rows whose reference answer a predicate keeps a plan keeps too.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Kept {
    kept: usize,
    total: usize,
}

impl Kept {
    /// Whether the plan keeps `target` of the rows the reference keeps, judged by the rule of
    /// succession: `(kept + 1) / (total + 2)`, the mean of the kept share under a uniform prior.
    /// A 95% bound on the 10 or so such rows of a 127-row sample could not be met by any plan
    /// but the reference; the bare share could, and failed: at 1,112 BBC headlines a cascade
    /// keeping 9 of the 10 sampled 'business' rows (0.900, the target) kept 82 of the 93 the
    /// reference keeps (0.882). The rule asks 8 of 8, 17 of 18 or 26 of 28; no such rows at
    /// all: nothing seen to lose, the agreement bound alone decides.
    fn meets(self, target: f64) -> bool {
        self.total == 0 || (self.kept + 1) as f64 / (self.total + 2) as f64 >= target
    }
}

/// Of `kept_rows` (the rows whose reference answer a predicate keeps), those on which a plan
/// gives that answer too: rows no stage settles go to the reference, which gives it; `stages`
/// are the cheap stages in order with their thresholds (`None`: settles every row).
///
/// The agreement bound alone lets a plan trade a rare answer away: with 'sport' the reference's
/// answer on 8% of 445 BBC headlines, a proxy calling every headline "not sport" agrees on 92%.
/// A cascade must therefore also keep `murakkab.quality_target` of the rows the reference
/// keeps ([`Kept::meets`]).
fn kept_share(kept_rows: Option<&[bool]>, stages: &[(&CandidateOutcome, Option<f32>)]) -> Kept {
    let Some(kept_rows) = kept_rows else { return Kept::default() };
    let (mut kept, mut total) = (0, 0);
    for (row, _) in kept_rows.iter().enumerate().filter(|(_, k)| **k) {
        total += 1;
        let settled = stages.iter().find_map(|(outcome, threshold)| {
            let confidence = *outcome.confidence.get(row)?;
            threshold.is_none_or(|t| confidence >= t).then(|| outcome.agrees.get(row).copied())
        });
        // Unsettled (or unmeasured) rows go to the reference.
        kept += usize::from(settled.flatten().unwrap_or(true));
    }
    Kept { kept, total }
}

/// The one-time cost of loading the models `plan` runs that are not resident (a proxy runs
/// on the encoder).
pub(crate) fn load_of(plan: &ModelPlan, pass: &Pass<'_>) -> Cost {
    let mut cards: Vec<&ModelCard> = plan
        .models()
        .into_iter()
        .filter_map(|id| {
            if id.starts_with(PROXY_PREFIX) {
                pass.encoder.as_ref()
            } else {
                pass.candidates.iter().chain(&pass.generators).find(|c| c.id == id)
            }
        })
        .collect();
    cards.sort_by(|a, b| a.id.cmp(&b.id));
    cards.dedup_by(|a, b| a.id == b.id);
    cards
        .into_iter()
        .filter(|card| !pass.backend.is_loaded(&card.id))
        .map(|card| load_cost(&pass.profile.speed(card), card.parameters, &pass.options))
        .fold(Cost::default(), Cost::plus)
}

/// A weighed plan with its estimates over all its rows (`total`, loads included).
pub(crate) fn considered(choice: &Choice, total: Cost) -> ConsideredPlan {
    ConsideredPlan {
        plan: choice.plan.to_string(),
        seconds: total.seconds,
        joules: total.joules,
        quality: choice.quality,
        quality_lower: choice.quality_lower,
        chosen: false,
    }
}

/// A candidate plan and its estimates.
pub(crate) struct Choice {
    pub(crate) plan: ModelPlan,
    pub(crate) cost: Cost,
    pub(crate) quality: f64,
    pub(crate) quality_lower: f64,
    pub(crate) escalated: Option<f64>,
    /// Rows computed by a model per input row, over every stage (1 for a single model).
    pub(crate) stage_rows: f64,
}

/// The calls of every AI node in `plan` the rule may decide.
fn sites(plan: &LogicalPlan, keys: &KeyContext) -> Result<Vec<Site>> {
    let mut found = Vec::new();
    collect_sites(plan, None, keys, &mut found)?;
    Ok(found)
}

/// What a site's key and target depend on besides its call and input.
struct KeyContext {
    /// The models a decision depends on (`model_set`).
    models: String,
    /// The labels answer columns are only compared with (`compared_label`).
    compared: HashMap<String, String>,
}

impl KeyContext {
    fn new(
        plan: &LogicalPlan,
        candidates: &[ModelCard],
        generators: &[ModelCard],
        encoder: Option<&ModelCard>,
    ) -> Result<Self> {
        Ok(Self {
            models: model_set(candidates, generators, encoder),
            compared: compared_labels(plan)?,
        })
    }
}

/// Walks `node`, knowing the `limit` on the rows a streaming ancestor will ever pull from it
/// (a LIMIT above it with only row-by-row nodes between).
fn collect_sites(
    node: &LogicalPlan,
    limit: Option<usize>,
    keys: &KeyContext,
    found: &mut Vec<Site>,
) -> Result<()> {
    if let Some(map) = as_ai_map(node) {
        found.extend(
            map.calls.iter().filter_map(|c| site_of(c, &map.input, keys)).map(|site| Site {
                limit,
                in_key_order: map.in_key_order,
                ..site
            }),
        );
    }
    let limit = match node {
        LogicalPlan::Limit(l) => match (l.get_skip_type()?, l.get_fetch_type()?) {
            (SkipType::Literal(skip), FetchType::Literal(Some(fetch))) => Some(skip + fetch),
            _ => None,
        },
        // A sort reads all its input whatever its fetch; a top-k on plain columns sits below
        // the map already (`TopKBelowAiMap`), where the sample sees only k rows.
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            limit
        }
        LogicalPlan::Extension(_) if as_ai_map(node).is_some() => limit,
        _ => None,
    };
    for input in node.inputs() {
        collect_sites(input, limit, keys, found)?;
    }
    Ok(())
}

/// How `plan` reads in a statistics key: its indented display, without the optimizer's notes
/// and estimates on AI maps. Those say how a decision was reached ("sampled", "recorded", a
/// selectivity measured), so they differ between the run that sampled and the next although
/// the rows are the same: keyed with them, an AI call above another one (the second of two
/// AI predicates) was sampled again on the second run and found its statistics only on the
/// third.
pub(crate) fn lineage(plan: &LogicalPlan) -> String {
    let bare = plan.clone().transform_up(|node| {
        let Some(map) =
            as_ai_map(&node).filter(|m| !m.notes.is_empty() || m.estimated_ms.is_some())
        else {
            return Ok(Transformed::no(node));
        };
        let map = AiMap::try_new(map.input.clone(), map.calls.clone())?;
        Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(map) })))
    });
    match bare {
        Ok(bare) => bare.data.display_indent().to_string(),
        Err(_) => plan.display_indent().to_string(),
    }
}

pub(crate) fn as_ai_map(node: &LogicalPlan) -> Option<&AiMap> {
    match node {
        LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<AiMap>(),
        _ => None,
    }
}

/// The names of the columns AI maps in `plan` compute.
fn answer_columns(plan: &LogicalPlan) -> Result<Vec<String>> {
    let mut names = Vec::new();
    plan.apply(|node| {
        if let Some(map) = as_ai_map(node) {
            names.extend(map.output_names());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(names)
}

pub(crate) fn contains_ai_map(plan: &LogicalPlan) -> Result<bool> {
    plan.exists(|node| Ok(as_ai_map(node).is_some()))
}

/// The call inside an `AiMap` entry (each is aliased to its output column).
pub(crate) fn function_call(call: &Expr) -> Option<&ScalarFunction> {
    match call {
        Expr::Alias(alias) => function_call(&alias.expr),
        Expr::ScalarFunction(f) => Some(f),
        _ => None,
    }
}

/// The models a decision depends on, as they enter the statistics key (each once).
fn model_set(
    candidates: &[ModelCard],
    generators: &[ModelCard],
    encoder: Option<&ModelCard>,
) -> String {
    let mut ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
    for generator in generators {
        if !ids.contains(&generator.id.as_str()) {
            ids.push(&generator.id);
        }
    }
    ids.extend(encoder.map(|e| e.id.as_str()));
    ids.join(",")
}

fn site_of(call: &Expr, input: &LogicalPlan, keys: &KeyContext) -> Option<Site> {
    let f = function_call(call)?;
    let function = f.func.name().to_string();
    if !call_is_auto(call) {
        return None;
    }
    let instruction = match function.as_str() {
        "ai_filter" => Instruction::Condition(literal_string(f.args.get(1)?)??),
        "ai_classify" => Instruction::Labels(literal_strings(f.args.get(1)?)?),
        "ai_extract" => Instruction::Schema(parse_schema(&literal_string(f.args.get(1)?)??).ok()?),
        _ => return None,
    };
    let text = f.args.first()?.clone();
    let compared = match call {
        Expr::Alias(a) => keys.compared.get(&a.name),
        _ => None,
    };
    let compared_label = match &instruction {
        Instruction::Labels(labels) => compared.filter(|t| labels.contains(t)).cloned(),
        _ => None,
    };
    let labels = instruction.labels();
    let kept_answer = match &instruction {
        Instruction::Condition(_) => {
            Some(compared.and_then(|c| FILTER_ANSWERS.iter().position(|a| a == c)).unwrap_or(0))
        }
        Instruction::Labels(_) => {
            compared_label.as_ref().and_then(|c| labels.iter().position(|l| l == c))
        }
        Instruction::Schema(_) => None,
    };
    let models = &keys.models;
    let mut key = format!(
        "label-call v1\n{function}\n{}\n{text}\n{models}\n{}",
        instruction.key(),
        lineage(input)
    );
    if let Some(label) = &compared_label {
        // Agreement on "the label or not" is not agreement on the label itself.
        key.push_str(&format!("\ncompared with {label}"));
    }
    let input = input.clone();
    Some(Site {
        key,
        function,
        text,
        instruction,
        input,
        limit: None,
        in_key_order: false,
        compared_label,
        kept_answer,
    })
}

/// `Some(value)` for a string literal (`Some(None)` for a NULL one), `None` for anything else.
pub(crate) fn literal_string(expr: &Expr) -> Option<Option<String>> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                Some(s.clone())
            }
            ScalarValue::Null => Some(None),
            _ => None,
        },
        Expr::Cast(c) => literal_string(&c.expr),
        _ => None,
    }
}

/// The strings of a constant list: a list literal or `make_array` of string literals.
pub(crate) fn literal_strings(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::Literal(ScalarValue::List(list), _) if list.len() == 1 && !list.is_null(0) => {
            let values = cast(&list.value(0), &DataType::Utf8).ok()?;
            let values = values.as_string::<i32>();
            (0..values.len())
                .map(|i| (!values.is_null(i)).then(|| values.value(i).to_string()))
                .collect()
        }
        Expr::ScalarFunction(f) if f.func.name() == "make_array" => {
            f.args.iter().map(|a| literal_string(a).flatten()).collect()
        }
        Expr::Cast(c) => literal_strings(&c.expr),
        _ => None,
    }
}

/// Writes each decided plan into its call and its note onto its node.
fn rewrite(
    plan: &LogicalPlan,
    decisions: &HashMap<String, Decision>,
    keys: &KeyContext,
) -> Result<LogicalPlan> {
    // Top-down, so each node's key is computed over its input before that input is rewritten,
    // exactly as `sites` computed it.
    plan.clone()
        .transform_down(|node| {
            let Some(map) = as_ai_map(&node) else { return Ok(Transformed::no(node)) };
            let mut notes = map.notes.clone();
            let mut estimated_ms = map.estimated_ms;
            let mut calls = Vec::with_capacity(map.calls.len());
            let mut changed = false;
            for call in &map.calls {
                let decision =
                    site_of(call, &map.input, keys).and_then(|site| decisions.get(&site.key));
                let Some(decision) = decision else {
                    calls.push(call.clone());
                    continue;
                };
                notes.push(decision.note.clone());
                if let Some(cost) = decision.estimate {
                    let ms = (cost.seconds * 1000.0).round() as u64;
                    estimated_ms = Some(estimated_ms.unwrap_or(0) + ms);
                }
                changed = true;
                calls.push(if decision.plan == ModelPlan::Auto {
                    call.clone()
                } else {
                    with_model(call, &decision.plan)
                });
            }
            if !changed {
                return Ok(Transformed::no(node));
            }
            let map = map
                .rebuilt(map.input.clone(), calls)?
                .with_notes(notes)
                .with_estimate(estimated_ms);
            Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(map) })))
        })
        .map(|t| t.data)
}

/// Whether a label-scoring call's model argument is absent, NULL or `auto`.
pub(crate) fn call_is_auto(call: &Expr) -> bool {
    let Some(f) = function_call(call) else { return false };
    match f.args.get(2) {
        None => true,
        Some(arg) => match literal_string(arg) {
            Some(Some(model)) => matches!(ModelPlan::parse(Some(&model)), Ok(ModelPlan::Auto)),
            Some(None) => true,
            None => false,
        },
    }
}

/// `node` without the projections above it that only pick columns.
pub(crate) fn skip_column_projections(mut node: &LogicalPlan) -> &LogicalPlan {
    while let LogicalPlan::Projection(p) = node
        && p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
    {
        node = p.input.as_ref();
    }
    node
}

/// `call` with its `model` argument set to `plan`.
pub(crate) fn with_model(call: &Expr, plan: &ModelPlan) -> Expr {
    match call {
        Expr::Alias(alias) => {
            let mut alias = alias.clone();
            alias.expr = Box::new(with_model(&alias.expr, plan));
            Expr::Alias(alias)
        }
        Expr::ScalarFunction(f) => {
            let mut args = f.args.clone();
            while args.len() < 3 {
                args.push(lit(ScalarValue::Utf8(None)));
            }
            args[2] = lit(plan.to_string());
            Expr::ScalarFunction(ScalarFunction { func: Arc::clone(&f.func), args })
        }
        other => other.clone(),
    }
}

/// DataFusion's query planner with the sampling rules in front: plans go through
/// [`PredicateOrderer::order`], [`SemanticJoin::rewrite`] and then [`ModelChooser::choose`]
/// before physical planning (model choice last, so each model is chosen for the rows that will
/// actually reach it).
pub struct ChoosingQueryPlanner {
    inner: Arc<dyn QueryPlanner + Send + Sync>,
    orderer: PredicateOrderer,
    joins: SemanticJoin,
    chooser: ModelChooser,
}

impl ChoosingQueryPlanner {
    /// Orders predicates with `orderer`, blocks joins on AI predicates with `joins`, chooses
    /// models with `chooser`, then plans with `inner`.
    pub fn new(
        inner: Arc<dyn QueryPlanner + Send + Sync>,
        orderer: PredicateOrderer,
        joins: SemanticJoin,
        chooser: ModelChooser,
    ) -> Self {
        Self { inner, orderer, joins, chooser }
    }
}

impl fmt::Debug for ChoosingQueryPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChoosingQueryPlanner").finish_non_exhaustive()
    }
}

#[async_trait]
impl QueryPlanner for ChoosingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let ordered = self.orderer.order(logical_plan, session_state).await?;
        let blocked = self.joins.rewrite(&ordered, session_state).await?;
        let chosen = self.chooser.choose(&blocked, session_state).await?;
        self.inner.create_physical_plan(&chosen, session_state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_conditions_and_label_lists_are_read_from_expressions() {
        assert_eq!(literal_string(&lit("x")), Some(Some("x".into())));
        assert_eq!(literal_string(&lit(ScalarValue::Utf8(None))), Some(None));
        assert_eq!(literal_string(&lit(1)), None);
        let list = ScalarValue::List(ScalarValue::new_list_nullable(
            &[ScalarValue::from("a"), ScalarValue::from("b")],
            &DataType::Utf8,
        ));
        assert_eq!(literal_strings(&lit(list)), Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn a_candidate_is_measured_on_the_whole_sample_unless_it_cannot_pay() {
        // SmolLM2 costs half a row of Qwen; 48 sampled rows remain after the first 16.
        let worth = |first_look: &[(f32, bool)], rows_after| {
            worth_finishing(first_look, 48, rows_after, 0.034, 0.068, 0.9, 1.0)
        };
        // `agreeing` of 16 rows, the agreeing ones most confident (a perfect ranking) or least.
        let ranked = |agreeing: usize, agreeing_first: bool| -> Vec<(f32, bool)> {
            (0..16)
                .map(|i| {
                    let agrees = if agreeing_first { i < agreeing } else { i >= 16 - agreeing };
                    (1.0 - i as f32 / 32.0, agrees)
                })
                .collect()
        };
        // 3 of 16 (BBC topics), even ranked perfectly: at best 6 of 16 rows settle, saving
        // nothing at any input size.
        assert_eq!(settleable_share(&ranked(3, true), 0.9), 6.0 / 16.0);
        assert!(!worth(&ranked(3, true), 158.0));
        assert!(!worth(&ranked(3, true), 100_000.0));
        // 13 of 16 (UCI sentiment): every share can settle, even with the three wrong answers
        // the most confident: finish.
        assert_eq!(settleable_share(&ranked(13, false), 0.9), 1.0);
        assert!(worth(&ranked(13, false), 158.0));
        // The same candidate after a proxy that leaves the reference a tenth of the rows: it
        // can save at most a tenth as much, too little for the 48 rows before 480 more.
        let after_proxy = |rows_after| {
            worth_finishing(&ranked(13, false), 48, rows_after, 0.034, 0.068, 0.9, 0.1)
        };
        assert!(!after_proxy(304.0));
        assert!(after_proxy(1_000.0));
        // Before any row is looked at (an empty first look: every row settled, at best), with
        // the whole 124-row sample to score: beside a proxy leaving 35% of 304 rows it cannot
        // pay, so it is not sampled; without a proxy it could, so it takes its first look.
        let before_looking =
            |escalated| worth_finishing(&[], 124, 304.0, 0.034, 0.068, 0.9, escalated);
        assert!(!before_looking(0.35));
        assert!(before_looking(1.0));
        // SmolLM2's first 16 SpamAssassin subjects: 5 agree, but three of its four most
        // confident answers are wrong, so at most a quarter of rows settle.
        let spam = [
            (0.72, true),
            (0.52, false),
            (0.55, true),
            (0.68, false),
            (0.67, false),
            (0.73, false),
            (0.53, true),
            (0.59, true),
            (0.78, false),
            (0.57, false),
            (0.66, false),
            (0.67, false),
            (0.74, false),
            (0.62, false),
            (0.58, true),
            (0.56, false),
        ];
        assert_eq!(settleable_share(&spam, 0.9), 0.25);
        assert!(!worth(&spam, 158.0));
        assert!(!worth(&spam, 100_000.0));
        // A candidate that agrees everywhere settles everything; one with nothing looked at is
        // not judged.
        assert_eq!(settleable_share(&ranked(16, true), 0.9), 1.0);
        assert_eq!(settleable_share(&[], 0.9), 1.0);
    }

    #[test]
    fn the_proxys_escalation_is_read_from_the_lower_bound_of_its_agreement() {
        let outcome = |agrees: Vec<bool>| CandidateOutcome {
            model: format!("{PROXY_PREFIX}x"),
            confidence: (0..agrees.len()).map(|i| 1.0 - i as f32 / 1000.0).collect(),
            agrees,
        };
        // 120 rows, the 60 most confident all agreeing, the rest at chance: the lower bound
        // lets the proxy settle some but not all of its agreeing head.
        let head = outcome((0..120).map(|i| i < 60 || i % 2 == 0).collect());
        let escalated = proxy_escalation(&head, 0.9);
        assert!(escalated > 0.3 && escalated < 0.7, "{escalated}");
        // One that always agrees settles everything; one that never does only the tenth of rows
        // the target lets be wrong.
        assert_eq!(proxy_escalation(&outcome(vec![true; 120]), 0.9), 0.0);
        assert!((proxy_escalation(&outcome(vec![false; 120]), 0.9) - 0.9).abs() < 1e-9);
        assert_eq!(proxy_escalation(&outcome(Vec::new()), 0.9), 1.0);
    }

    #[test]
    fn plans_are_tested_on_the_rows_after_a_first_look_without_the_candidates_it_stopped() {
        let outcome = |model: &str, rows: usize| CandidateOutcome {
            model: model.to_string(),
            confidence: (0..rows).map(|i| i as f32).collect(),
            agrees: (0..rows).map(|i| i % 3 > 0).collect(),
        };
        let stats = |candidates: Vec<CandidateOutcome>| LabelCallStats {
            input_rows: 400,
            reference: "big".into(),
            mean_row_tokens: 20.0,
            mean_statement_tokens: 0.0,
            first_label_rate: 0.5,
            candidates,
            reference_rows: 120,
            answer_counts: vec![60, 60],
            reference_answers: (0..120).map(|i| i % 2).collect(),
        };
        // A small model stopped after 16 rows: it is left out, and the proxy is tested on its
        // last 104 rows only.
        let proxy = format!("{PROXY_PREFIX}p");
        let tested = tested_outcomes(&stats(vec![outcome("small", 16), outcome(&proxy, 120)]));
        assert_eq!(tested.len(), 1);
        assert_eq!(tested[0].model, proxy);
        assert_eq!(tested[0].agrees.len(), 104);
        assert_eq!(tested[0].confidence[0], 16.0);
        assert_eq!(tested[0].agrees[..], outcome(&proxy, 120).agrees[16..]);
        // It finished: both stay, on the same 104 rows.
        let tested = tested_outcomes(&stats(vec![outcome("small", 120), outcome(&proxy, 120)]));
        assert_eq!(tested.iter().map(|c| c.agrees.len()).collect::<Vec<_>>(), [104, 104]);
        // No smaller model, no first look: the proxy is tested on every row.
        let tested = tested_outcomes(&stats(vec![outcome(&proxy, 120)]));
        assert_eq!(tested[0].agrees.len(), 120);
    }

    #[test]
    fn a_plan_must_keep_the_rows_whose_answer_a_predicate_keeps() {
        // Ten rows, the reference keeps rows 0, 1 and 2 ('sport'). The proxy settles every row
        // at 0.5 and is wrong on rows 1 and 2 (it calls them not sport, sure at 0.6 and 0.95).
        let kept: Vec<bool> = (0..10).map(|i| i < 3).collect();
        let proxy = CandidateOutcome {
            model: "proxy:p".into(),
            confidence: vec![0.9, 0.6, 0.95, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
            agrees: vec![true, false, false, true, true, true, true, true, true, true],
        };
        // Agreeing on 8 of 10 rows, it keeps 1 of the 3.
        let kept_of = |kept| Kept { kept, total: 3 };
        assert_eq!(kept_share(Some(&kept), &[(&proxy, Some(0.5))]), kept_of(1));
        assert_eq!(kept_share(Some(&kept), &[(&proxy, None)]), kept_of(1));
        // At 0.7 row 1 goes to the reference; at 0.96 rows 1 and 2 do.
        assert_eq!(kept_share(Some(&kept), &[(&proxy, Some(0.7))]), kept_of(2));
        assert_eq!(kept_share(Some(&kept), &[(&proxy, Some(0.96))]), kept_of(3));
        // Row 1, left by the proxy at 0.7, meets a second stage: sure and wrong, it is lost;
        // unsure, it goes on to the reference. Row 2 stays lost to the proxy.
        let mut second = CandidateOutcome {
            model: "small".into(),
            confidence: vec![0.9; 10],
            agrees: (0..10).map(|i| i != 1).collect(),
        };
        let share = |second: &CandidateOutcome| {
            kept_share(Some(&kept), &[(&proxy, Some(0.7)), (second, Some(0.5))])
        };
        assert_eq!(share(&second), kept_of(1));
        second.confidence[1] = 0.3;
        assert_eq!(share(&second), kept_of(2));
        // No kept answer (a five-way label), or none among the sampled rows: nothing to lose.
        assert!(kept_share(None, &[(&proxy, None)]).meets(0.9));
        assert!(kept_share(Some(&[false; 10]), &[(&proxy, None)]).meets(0.9));
    }

    #[test]
    fn keeping_the_target_share_of_a_few_sampled_rows_is_not_enough() {
        let meets = |kept, total| Kept { kept, total }.meets(0.9);
        // 9 of 10 is the target's share but not its evidence (the 1,112-headline case).
        assert!(!meets(9, 10));
        assert!(meets(10, 10));
        // Every one of 7 rows is still too few; 8 are enough.
        assert!(!meets(7, 7));
        assert!(meets(8, 8));
        // One row lost: 18 rows needed, two lost: 28.
        assert!(!meets(16, 17) && meets(17, 18));
        assert!(!meets(25, 27) && meets(26, 28));
        assert!(meets(0, 0));
    }

    #[test]
    fn a_lineage_leaves_out_the_notes_on_ai_maps_below() {
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::logical_expr::{col, table_scan};
        let schema = Schema::new(vec![Field::new("text", DataType::Utf8, true)]);
        let scan = table_scan(Some("t"), &schema, None).unwrap().build().unwrap();
        let map = |notes: Vec<String>| {
            let map = AiMap::try_new(scan.clone(), vec![col("t.text").alias("__ai_0")]).unwrap();
            LogicalPlan::Extension(Extension { node: Arc::new(map.with_notes(notes)) })
        };
        let sampled = map(vec!["order: 1 of 2 (sampled): passes 11%".into()]);
        let recorded = map(vec!["order: 1 of 2 (recorded): passes 11%".into()]);
        assert_ne!(sampled.display_indent().to_string(), recorded.display_indent().to_string());
        assert_eq!(lineage(&sampled), lineage(&recorded));
        assert_eq!(lineage(&sampled), lineage(&map(Vec::new())));
        // What the map computes still counts.
        let other = AiMap::try_new(scan.clone(), vec![col("t.text").alias("__ai_1")]).unwrap();
        let other = LogicalPlan::Extension(Extension { node: Arc::new(other) });
        assert_ne!(lineage(&other), lineage(&sampled));
    }

    #[test]
    fn the_sample_grows_with_the_square_root_of_the_input() {
        assert_eq!(label_sample_size(10, 64, 256), 64);
        assert_eq!(label_sample_size(400, 64, 256), 120);
        assert_eq!(label_sample_size(1_000, 64, 256), 190);
        assert_eq!(label_sample_size(1_000_000, 64, 256), 256);
    }

    #[test]
    fn a_sample_pays_from_about_three_samples_of_input() {
        let cards: Vec<ModelCard> = murakkab_catalog::builtin_models()
            .into_iter()
            .filter(|c| c.id == "smollm2-135m-instruct" || c.id == "qwen2.5-coder-0.5b-instruct")
            .collect();
        assert_eq!(cards[1].id, "qwen2.5-coder-0.5b-instruct", "reference last");
        // The reference costs 3, the small model 1 per row; 64 sampled rows cost 256.
        let cost = |c: &ModelCard| if c.id.starts_with("qwen") { 3.0 } else { 1.0 };
        let sample = |n| Sample { texts: vec![String::new(); 64], input_rows: n, complete: true };
        // 200 rows: 136 rows after the sample save 2 each (272 > 256): pays.
        assert!(sampling_pays(&sample(200), 64, &cards, cost));
        // 100 rows: 36 · 2 = 72, measured to lose on the first run.
        assert!(!sampling_pays(&sample(100), 64, &cards, cost));
        // One model, nothing to choose.
        assert!(!sampling_pays(&sample(10_000), 64, &cards[1..], cost));
        // Only the charged rows of a larger sample count: 136 rows after 64 pay for 64 rows,
        // but 100 rows after 100 cannot pay for 100.
        let larger = Sample { texts: vec![String::new(); 100], input_rows: 200, complete: true };
        assert!(sampling_pays(&larger, 64, &cards, cost));
        assert!(!sampling_pays(&larger, 100, &cards, cost));
    }
}
