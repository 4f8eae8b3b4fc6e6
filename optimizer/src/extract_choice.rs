//! The choose-model rule for `ai_extract`: the cheapest model whose extracted values agree
//! with the reference model's often enough.
//!
//! ```text
//! before: AiMap: ai_extract(drugs.review, {"condition": "text"}) AS __ai_1
//! after:  AiMap: ai_extract(drugs.review, {"condition": "text"}, smollm2-135m-instruct)
//!                AS __ai_1; ai_extract: smollm2-135m-instruct for balanced (sampled, 64-row
//!                sample): est. rows=979, ..., quality=0.969 (>= 0.915 at 95%), ...
//! ```
//!
//! The call's input is sampled as for label-scoring calls (`choose_model`: the same seeded
//! reservoir, so the sampled rows' answers land in the result cache and are not computed again
//! when the query runs; above another AI call, the first rows, no more of them than an input of
//! that many rows would sample). Every pulled model that can generate extracts the sample; a row
//! agrees when every field's value equals the reference's (the largest generating model):
//! text compared trimmed and case-insensitively, numbers exactly. The chosen plan is the
//! cheapest model by `murakkab.objective` (prompt tokens through a forward pass, the
//! reference's answer length in decode steps, loading a model not yet resident) whose
//! agreement has a one-sided Wilson lower bound at or above `murakkab.quality_target`, the
//! candidates sharing the 5% (Bonferroni, so the bound holds for all at once at 95%); the
//! reference itself always qualifies. Statistics persist (`ExtractCallStats`), so a
//! repeated workload skips the sampling.
//!
//! Does not apply as a cascade: generation has no label probability to accept a cheap answer
//! on, so a plan is one model for every row. Does not apply to `ai_complete` (free text has no
//! equality to agree on). The guarantee is the label rule's: agreement with the reference on
//! the sample, not correctness.

use std::sync::Arc;

use datafusion::common::runtime::SpawnedTask;
use datafusion::common::{DataFusionError, Result};
use murakkab_catalog::{
    CandidateOutcome, ConsideredPlan, ExtractCallStats, ModelCard, PlanChoices,
};
use murakkab_udfs::{AiBackend, FieldType, FieldValue, ModelPlan};

use crate::choose_model::{
    Choice, Decision, FORWARD_BATCH_ROWS, Instruction, ModelChooser, Pass, Site, considered,
    extract_sample_size, load_of, sampling_pays,
};
use crate::cost_model::{Cost, generate_row_cost};
use crate::quality::{wilson_lower_bound, z_for_families};

/// Generated tokens assumed per row before any answer is seen (to decide whether sampling pays).
const ASSUMED_OUTPUT_TOKENS: f64 = 16.0;

/// One row's extracted values (`None`: the model gave no usable answer).
type Extracted = Option<Vec<Option<FieldValue>>>;

impl ModelChooser {
    /// The model plan of an `ai_extract` call at `auto`; see the module doc.
    pub(crate) async fn decide_extract(
        &self,
        site: &Site,
        fields: &[(String, FieldType)],
        pass: &Pass<'_>,
    ) -> Result<Decision> {
        let function = &site.function;
        if let Some(stats) = self.store.extract_stats(&site.key) {
            let decision = choose_extract_plan(site, &stats, pass, "recorded");
            self.record_choices(site, &decision);
            return Ok(decision);
        }
        let Some(reference) = pass.generators.last() else {
            let note = format!("{function}: no pulled model can generate");
            return Ok(Decision::plain(ModelPlan::Auto, note));
        };
        let reference_plan = ModelPlan::Model(reference.id.clone());
        if pass.generators.len() < 2 {
            let note =
                format!("{function}: {reference_plan} (the only pulled model that can generate)");
            return Ok(Decision::plain(reference_plan, note));
        }
        if let Some(why) = site.not_worth_a_sample(pass.options.sample_rows) {
            let note = format!("{function}: {reference_plan} ({why})");
            return Ok(Decision::plain(reference_plan, note));
        }
        if !pass.may_sample {
            return Ok(self.undecided(site, reference_plan, pass));
        }
        let started = std::time::Instant::now();
        let sample = self.sample(site, pass, extract_sample_size).await?;
        if sample.texts.is_empty() {
            return Ok(Decision::plain(
                reference_plan.clone(),
                format!("{function}: {reference_plan} (empty input)"),
            ));
        }
        // An extraction scores no labels: its row's prompt is all it reads.
        let tokens = self.mean_sample_tokens(site, &sample, reference).await?.prompt;
        let row_cost = |card: &ModelCard| {
            generate_row_cost(
                &pass.profile.speed(card),
                tokens,
                ASSUMED_OUTPUT_TOKENS,
                &pass.options,
            )
            .value(pass.options.objective, &pass.options)
        };
        if sample.complete
            && !sampling_pays(&sample, sample.texts.len(), &pass.generators, row_cost)
        {
            let rows = sample.input_rows;
            let note = format!(
                "{function}: {reference_plan} (input of {rows} rows too small for a sample to pay off)"
            );
            self.record_small_input(site, rows);
            return Ok(Decision { rows, ..Decision::plain(reference_plan, note) });
        }
        let backend = Arc::clone(&self.backend);
        let job = ExtractJob {
            function: function.clone(),
            texts: sample.texts.clone(),
            instruction: site.instruction.clone(),
            fields: fields.to_vec(),
            models: pass.generators.iter().map(|c| c.id.clone()).collect(),
            input_rows: sample.input_rows,
            tokens,
        };
        let stats = SpawnedTask::spawn_blocking(move || job.run(backend.as_ref()))
            .join()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        if let Err(e) = self.store.save_extract_stats(&site.key, &stats) {
            tracing::warn!("could not store optimizer statistics: {e}");
        }
        let mut decision = choose_extract_plan(site, &stats, pass, "sampled");
        self.record_choices(site, &decision);
        decision.note.push_str(&format!("; sampling took {:.1}s", started.elapsed().as_secs_f64()));
        Ok(decision)
    }
}

/// What measuring a sample needs, owned so it can move to a blocking thread.
struct ExtractJob {
    function: String,
    texts: Vec<String>,
    instruction: Instruction,
    fields: Vec<(String, FieldType)>,
    /// Generating models, smallest first; the last is the reference.
    models: Vec<String>,
    input_rows: u64,
    tokens: f64,
}

impl ExtractJob {
    /// Extracts the sample with every model and compares each with the reference.
    fn run(&self, backend: &dyn AiBackend) -> Result<ExtractCallStats> {
        let Some((reference, cheaper)) = self.models.split_last() else {
            return Err(DataFusionError::Plan(format!("{}: no model to sample", self.function)));
        };
        let truth = self.extract(backend, reference).map_err(|e| {
            DataFusionError::Execution(format!("{}: sampling {reference}: {e}", self.function))
        })?;
        let mut candidates = Vec::new();
        for model in cheaper {
            // A model that fails the whole sample is no candidate.
            let Ok(answers) = self.extract(backend, model) else { continue };
            let mut outcome = CandidateOutcome {
                model: model.clone(),
                confidence: Vec::new(),
                agrees: Vec::new(),
            };
            for (mine, theirs) in answers.iter().zip(&truth) {
                // A row the reference could not answer says nothing about agreement.
                let Some(theirs) = theirs else { continue };
                outcome.confidence.push(if mine.is_some() { 1.0 } else { 0.0 });
                outcome.agrees.push(mine.as_ref().is_some_and(|m| same_values(m, theirs)));
            }
            candidates.push(outcome);
        }
        let answered: Vec<&Vec<Option<FieldValue>>> = truth.iter().flatten().collect();
        let output_tokens: usize = answered
            .iter()
            .map(|values| {
                let json = as_json(&self.fields, values);
                backend.count_tokens(reference, &json).unwrap_or(json.len() / 4)
            })
            .sum();
        Ok(ExtractCallStats {
            input_rows: self.input_rows,
            reference: reference.clone(),
            mean_row_tokens: self.tokens,
            mean_output_tokens: output_tokens as f64 / answered.len().max(1) as f64,
            candidates,
        })
    }

    /// Each sampled row's values under `model`, in one call (the runtime sorts the rows by
    /// length into its row batches).
    fn extract(
        &self,
        backend: &dyn AiBackend,
        model: &str,
    ) -> std::result::Result<Vec<Extracted>, String> {
        let extracted =
            backend.extract(model, &self.instruction.prompt(&self.texts), &self.fields)?;
        Ok(extracted.rows.into_iter().map(std::result::Result::ok).collect())
    }
}

/// Whether two rows' values are the same answer: text trimmed and case-insensitive, numbers
/// and booleans exact, NULL equal only to NULL.
fn same_values(a: &[Option<FieldValue>], b: &[Option<FieldValue>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(FieldValue::Text(x)), Some(FieldValue::Text(y))) => {
                x.trim().to_lowercase() == y.trim().to_lowercase()
            }
            (x, y) => x == y,
        })
}

/// A row's values as the JSON object the model generated (to count its tokens).
fn as_json(fields: &[(String, FieldType)], values: &[Option<FieldValue>]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .zip(values)
        .map(|((name, _), value)| {
            let value = match value {
                None => serde_json::Value::Null,
                Some(FieldValue::Text(t)) => serde_json::Value::from(t.as_str()),
                Some(FieldValue::Integer(i)) => serde_json::Value::from(*i),
                Some(FieldValue::Float(f)) => serde_json::Value::from(*f),
                Some(FieldValue::Boolean(b)) => serde_json::Value::from(*b),
            };
            (name.clone(), value)
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// The cheapest single-model plan meeting the target, with its note.
fn choose_extract_plan(
    site: &Site,
    stats: &ExtractCallStats,
    pass: &Pass<'_>,
    source: &str,
) -> Decision {
    let options = &pass.options;
    let objective = options.objective;
    let card = |id: &str| pass.generators.iter().find(|c| c.id == id);
    let row_cost = |c: &ModelCard| {
        generate_row_cost(
            &pass.profile.speed(c),
            stats.mean_row_tokens,
            stats.mean_output_tokens,
            options,
        )
    };
    let rows = stats.input_rows as f64;
    let total = |choice: &Choice| choice.cost.times(rows).plus(load_of(&choice.plan, pass));
    let reference_cost = card(&stats.reference).map(row_cost).unwrap_or_default();
    let reference = Choice {
        plan: ModelPlan::Model(stats.reference.clone()),
        cost: reference_cost,
        quality: 1.0,
        quality_lower: 1.0,
        escalated: None,
        stage_rows: 1.0,
    };
    let mut weighed: Vec<(Choice, Cost)> = Vec::new();
    // One test per candidate on the one sample: they share the 5%.
    let z = z_for_families(stats.candidates.len());
    for outcome in &stats.candidates {
        let Some(model) = card(&outcome.model) else { continue };
        let agree = outcome.agrees.iter().filter(|&&a| a).count();
        let n = outcome.agrees.len();
        let choice = Choice {
            plan: ModelPlan::Model(model.id.clone()),
            cost: row_cost(model),
            quality: agree as f64 / n.max(1) as f64,
            quality_lower: wilson_lower_bound(agree, n, z),
            escalated: None,
            stage_rows: 1.0,
        };
        let choice_total = total(&choice);
        weighed.push((choice, choice_total));
    }
    let reference_total = total(&reference);
    weighed.push((reference, reference_total));
    let value = |c: Cost| c.value(objective, options);
    let best = weighed
        .iter()
        .filter(|(c, _)| c.quality_lower >= options.quality_target)
        .min_by(|a, b| value(a.1).total_cmp(&value(b.1)))
        .or(weighed.last());
    let cheapest = weighed.iter().min_by(|a, b| a.1.joules.total_cmp(&b.1.joules));
    let (Some((best, best_total)), Some((cheap, cheap_total))) = (best, cheapest) else {
        return Decision::plain(ModelPlan::Auto, format!("{}: no candidate", site.function));
    };
    let calls = (rows / FORWARD_BATCH_ROWS as f64).ceil();
    let mut note = format!(
        "{}: {} for {objective} ({source}, {}-row sample): est. rows={}, calls={calls:.0}, \
         tokens={:.0}, generated={:.0}, quality={:.3} (>= {:.3} at 95%), time={:.1}s, energy={:.0}J",
        site.function,
        best.plan,
        stats.sample_rows(),
        stats.input_rows,
        rows * stats.mean_row_tokens,
        rows * stats.mean_output_tokens,
        best.quality,
        best.quality_lower,
        best_total.seconds,
        best_total.joules
    );
    let load = load_of(&best.plan, pass);
    if load.seconds > 0.0 {
        note.push_str(&format!(" (incl. loading: {:.1}s, {:.0}J)", load.seconds, load.joules));
    }
    if best.plan != ModelPlan::Model(stats.reference.clone()) {
        note.push_str(&format!(
            "; reference alone: time={:.1}s, energy={:.0}J",
            reference_total.seconds, reference_total.joules
        ));
    }
    let chosen = best.plan.to_string();
    let plans: Vec<ConsideredPlan> = weighed
        .iter()
        .map(|(choice, total)| ConsideredPlan {
            chosen: choice.plan.to_string() == chosen,
            ..considered(choice, *total)
        })
        .collect();
    Decision {
        function: site.function.clone(),
        plan: best.plan.clone(),
        note,
        estimate: Some(*best_total),
        cheapest: Some((cheap.plan.clone(), *cheap_total, cheap.quality)),
        rows: stats.input_rows,
        considered: Some(PlanChoices {
            function: site.function.clone(),
            objective: objective.to_string(),
            quality_target: options.quality_target,
            rows: stats.input_rows,
            plans,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_agree_on_text_up_to_case_and_space_and_on_exact_numbers() {
        let text = |t: &str| Some(FieldValue::Text(t.into()));
        assert!(same_values(&[text(" Pain "), None], &[text("pain"), None]));
        assert!(!same_values(&[text("pain")], &[text("back pain")]));
        assert!(!same_values(&[text("pain"), None], &[text("pain"), Some(FieldValue::Integer(1))]));
        assert!(same_values(&[Some(FieldValue::Float(1.5))], &[Some(FieldValue::Float(1.5))]));
        assert!(!same_values(&[Some(FieldValue::Integer(2))], &[Some(FieldValue::Integer(3))]));
        let fields = [("a".to_string(), FieldType::Text), ("b".to_string(), FieldType::Integer)];
        assert_eq!(as_json(&fields, &[text("x"), None]), r#"{"a":"x","b":null}"#);
    }
}
