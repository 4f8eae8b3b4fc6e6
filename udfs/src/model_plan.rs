//! What the `model` argument of a label-scoring call (`ai_filter`, `ai_classify`) may say:
//! `auto`, one model id, or a cascade of two models.
//!
//! `cascade(cheap, reference, threshold)` scores every row with `cheap` and keeps its answer
//! where the cheap model's most probable label has probability at least `threshold`; the other
//! rows (and rows the cheap model could not answer) are scored again with `reference`, whose
//! answer is final. The optimizer writes cascades into plans (its `choose_model` rule, which
//! also picks the threshold); a user may write one by hand. Because the plan is an ordinary
//! argument, EXPLAIN shows it and a plan sent to another process keeps it.

use std::fmt;

use datafusion::common::config::ConfigOptions;
use murakkab_catalog::{PROXY_PREFIX, ProxyModel, Task};

use crate::args::{self, AiContext};
use crate::backend::{BatchOutput, ChatBatch};
use crate::function_stats;

/// How a label-scoring call picks its model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelPlan {
    /// The optimizer's or the default choice.
    Auto,
    /// One model for every row.
    Model(String),
    /// A cheap model first, a reference model for the rows it is unsure of.
    Cascade(Cascade),
}

/// A two-model cascade; see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    /// Scores every row.
    pub cheap: String,
    /// Scores the rows whose cheap answer is below `threshold`.
    pub reference: String,
    /// Lowest top-label probability at which the cheap answer is kept, in [0, 1].
    pub threshold: f32,
}

impl ModelPlan {
    /// Parses a `model` argument; `None` (not given) is `auto`.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let Some(text) = text.map(str::trim) else { return Ok(Self::Auto) };
        if text.is_empty() || text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let lower = text.to_ascii_lowercase();
        let Some(inner) = lower
            .strip_prefix("cascade(")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(|_| &text["cascade(".len()..text.len() - 1])
        else {
            return Ok(Self::Model(text.to_string()));
        };
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let [cheap, reference, threshold] = parts[..] else {
            return Err(format!(
                "expected cascade(cheap_model, reference_model, threshold), got '{text}'"
            ));
        };
        let threshold: f32 =
            threshold.parse().ok().filter(|t: &f32| (0.0..=1.0).contains(t)).ok_or_else(|| {
                format!("cascade threshold must be a number in [0, 1], got '{threshold}'")
            })?;
        if cheap.is_empty() || reference.is_empty() {
            return Err(format!("cascade needs two model ids, got '{text}'"));
        }
        Ok(Self::Cascade(Cascade {
            cheap: cheap.to_string(),
            reference: reference.to_string(),
            threshold,
        }))
    }

    /// The models the plan names (none for `auto`).
    pub fn models(&self) -> Vec<&str> {
        match self {
            Self::Auto => vec![],
            Self::Model(m) => vec![m.as_str()],
            Self::Cascade(c) => vec![c.cheap.as_str(), c.reference.as_str()],
        }
    }
}

impl fmt::Display for ModelPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Model(m) => f.write_str(m),
            Self::Cascade(c) => write!(f, "cascade({}, {}, {})", c.cheap, c.reference, c.threshold),
        }
    }
}

/// Checks at planning time that every model a plan names exists and can score labels.
pub(crate) fn check_plan(
    function: &str,
    context: &AiContext,
    model: Option<&str>,
) -> datafusion::error::Result<()> {
    let plan = ModelPlan::parse(model)
        .map_err(|e| datafusion::common::plan_datafusion_err!("{function}: model: {e}"))?;
    match plan {
        ModelPlan::Auto => {
            args::check_model(function, context, None, Task::ScoreLabels).map(|_| ())
        }
        _ => {
            for id in plan.models() {
                if let Some(proxy) = id.strip_prefix(PROXY_PREFIX) {
                    ProxyModel::load(context.backend.home(), proxy)
                        .map_err(|e| datafusion::common::plan_datafusion_err!("{function}: {e}"))?;
                } else {
                    args::check_model(function, context, Some(id), Task::ScoreLabels)?;
                }
            }
            Ok(())
        }
    }
}

/// The rows of one scoring call: which rows, their texts, and how to prompt any subset.
pub(crate) struct ScoringRows<'a, P: Fn(&[usize]) -> ChatBatch> {
    /// Row indices in the function's input.
    pub rows: &'a [usize],
    /// Each row's own text, aligned with `rows` (what a proxy model embeds).
    pub texts: Vec<&'a str>,
    /// Builds the prompt batch for any subset of the rows (the reference model of a cascade
    /// sees only the rows it is asked about).
    pub prompt: P,
}

/// Scores the rows under `plan`, counting the rows a cascade sent on to its reference model.
pub(crate) fn score_with_plan<P: Fn(&[usize]) -> ChatBatch>(
    context: &AiContext,
    config: &ConfigOptions,
    plan: &ModelPlan,
    scoring: &ScoringRows<'_, P>,
    labels: &[String],
) -> Result<BatchOutput<Vec<f32>>, String> {
    let rows = scoring.rows;
    let cascade = match plan {
        ModelPlan::Auto => {
            let card = args::model_for(context, config, None, Task::ScoreLabels)?;
            return context.backend.score_labels(&card.id, &(scoring.prompt)(rows), labels);
        }
        ModelPlan::Model(id) => return score_on(context, id, scoring, labels),
        ModelPlan::Cascade(c) => c,
    };
    let mut first = score_on(context, &cascade.cheap, scoring, labels)?;
    let unsure: Vec<usize> = first
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().map_or(true, |p| top_probability(p) < cascade.threshold))
        .map(|(slot, _)| slot)
        .collect();
    if unsure.is_empty() {
        return Ok(first);
    }
    let unsure_rows: Vec<usize> = unsure.iter().map(|&slot| rows[slot]).collect();
    let second = context.backend.score_labels(
        &cascade.reference,
        &(scoring.prompt)(&unsure_rows),
        labels,
    )?;
    function_stats::record(|s| s.escalated_rows += unsure.len() as u64);
    for (slot, answer) in unsure.into_iter().zip(second.rows) {
        first.rows[slot] = answer;
    }
    Ok(first)
}

/// Scores every row on one model: a language model, or a proxy (`proxy:<id>`) over the rows'
/// embeddings.
fn score_on<P: Fn(&[usize]) -> ChatBatch>(
    context: &AiContext,
    model: &str,
    scoring: &ScoringRows<'_, P>,
    labels: &[String],
) -> Result<BatchOutput<Vec<f32>>, String> {
    let Some(id) = model.strip_prefix(PROXY_PREFIX) else {
        return context.backend.score_labels(model, &(scoring.prompt)(scoring.rows), labels);
    };
    let proxy = ProxyModel::load(context.backend.home(), id)?;
    if proxy.weights.len() != labels.len() {
        return Err(format!(
            "proxy '{id}' was trained for {} labels, the call has {}",
            proxy.weights.len(),
            labels.len()
        ));
    }
    let embedded = context.backend.embed(&proxy.encoder, &scoring.texts)?;
    let rows = embedded
        .rows
        .into_iter()
        .map(|row| {
            row.and_then(|v| {
                proxy.predict(&v).ok_or_else(|| format!("proxy '{id}': embedding size differs"))
            })
        })
        .collect();
    Ok(BatchOutput { rows, truncated: 0 })
}

/// The probability of the most likely label.
pub fn top_probability(probabilities: &[f32]) -> f32 {
    probabilities.iter().copied().fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_print_back() {
        assert_eq!(ModelPlan::parse(None), Ok(ModelPlan::Auto));
        assert_eq!(ModelPlan::parse(Some(" AUTO ")), Ok(ModelPlan::Auto));
        assert_eq!(ModelPlan::parse(Some("smollm2")), Ok(ModelPlan::Model("smollm2".into())));
        let plan = ModelPlan::parse(Some("Cascade(a, b, 0.85)")).unwrap();
        assert_eq!(
            plan,
            ModelPlan::Cascade(Cascade {
                cheap: "a".into(),
                reference: "b".into(),
                threshold: 0.85
            })
        );
        assert_eq!(plan.to_string(), "cascade(a, b, 0.85)");
        assert_eq!(ModelPlan::parse(Some(&plan.to_string())), Ok(plan));
    }

    #[test]
    fn malformed_cascades_say_what_is_expected() {
        assert_eq!(
            ModelPlan::parse(Some("cascade(a, b)")).unwrap_err(),
            "expected cascade(cheap_model, reference_model, threshold), got 'cascade(a, b)'"
        );
        assert_eq!(
            ModelPlan::parse(Some("cascade(a, b, 1.5)")).unwrap_err(),
            "cascade threshold must be a number in [0, 1], got '1.5'"
        );
        assert!(ModelPlan::parse(Some("cascade(, b, 0.5)")).is_err());
    }
}
