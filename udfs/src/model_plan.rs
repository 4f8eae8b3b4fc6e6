//! What the `model` argument of a label-scoring call (`ai_filter`, `ai_classify`) may say:
//! `auto`, one model id, or a cascade of models.
//!
//! `cascade(m1, ..., mk, reference, t1, ..., tk)` scores every row with `m1` and keeps its answer
//! where `m1`'s most probable label has probability at least `t1`; the other rows (and rows
//! `m1` could not answer) go on to `m2` with `t2`, and so on; what no stage is sure of is scored
//! by `reference`, whose answer is final. The optimizer writes cascades into plans (its
//! `choose_model` rule, which also picks the thresholds); a user may write one by hand. Because
//! the plan is an ordinary argument, EXPLAIN shows it and a plan sent to another process keeps
//! it. A model id may name a proxy model (`proxy:<id>`, see `murakkab_catalog::ProxyModel`).
//!
//! `cascade(..., target=<label>)` is for an `ai_classify` whose answer only matters as "is it
//! `<label>` or not" (the optimizer writes it when the answer column is only compared with
//! `<label>`): a cheap stage then keeps its answer where it is sure of that, i.e. where its
//! probability of `<label>` (when `<label>` is its answer) or of any other label (when it is
//! not) is at least the threshold. A stage five-way unsure of 'politics' against 'business' is
//! still sure the headline is not 'sport'. Rows whose answer is not `<label>` then carry the
//! cheap stage's best other label, which is not checked against the reference.

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

/// A cascade; see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct Cascade {
    /// The cheap stages in order: each model and the lowest top-label probability at which
    /// its answer is kept, in [0, 1].
    pub stages: Vec<(String, f32)>,
    /// Scores the rows no stage was sure of.
    pub reference: String,
    /// The one label whose presence the stages must be sure of (see the module doc); `None`:
    /// sure of the answer itself.
    pub target: Option<String>,
}

/// How a `cascade(...)` names its target label: its last part, `target=<label>`.
const TARGET_PREFIX: &str = "target=";

impl ModelPlan {
    /// Parses a `model` argument; `None` (not given) is `auto`.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let Some(text) = text.map(str::trim) else { return Ok(Self::Auto) };
        if text.is_empty() || text.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        const OPEN: &str = "cascade(";
        let is_cascade = text.len() > OPEN.len()
            && text[..OPEN.len()].eq_ignore_ascii_case(OPEN)
            && text.ends_with(')');
        if !is_cascade {
            return Ok(Self::Model(text.to_string()));
        }
        let inner = &text[OPEN.len()..text.len() - 1];
        let mut parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let target = match parts.last() {
            Some(last)
                if last.len() >= TARGET_PREFIX.len()
                    && last[..TARGET_PREFIX.len()].eq_ignore_ascii_case(TARGET_PREFIX) =>
            {
                let label = last[TARGET_PREFIX.len()..].trim();
                if label.is_empty() {
                    return Err(format!("cascade target needs a label after '=', got '{text}'"));
                }
                let label = label.to_string();
                parts.pop();
                Some(label)
            }
            _ => None,
        };
        if parts.len() < 3 || parts.len().is_multiple_of(2) {
            return Err(format!(
                "expected cascade(cheap_model, ..., reference_model, threshold, ... \
                 [, target=label]) with one threshold per cheap model, got '{text}'"
            ));
        }
        let stages = parts.len() / 2;
        let (models, thresholds) = parts.split_at(stages + 1);
        if models.iter().any(|m| m.is_empty()) {
            return Err(format!("cascade needs a model id in every model position, got '{text}'"));
        }
        let thresholds = thresholds
            .iter()
            .map(|t| {
                t.parse().ok().filter(|t: &f32| (0.0..=1.0).contains(t)).ok_or_else(|| {
                    format!("cascade threshold must be a number in [0, 1], got '{t}'")
                })
            })
            .collect::<Result<Vec<f32>, String>>()?;
        Ok(Self::Cascade(Cascade {
            stages: models[..stages].iter().map(|m| m.to_string()).zip(thresholds).collect(),
            reference: models[stages].to_string(),
            target,
        }))
    }

    /// The models the plan names (none for `auto`).
    pub fn models(&self) -> Vec<&str> {
        match self {
            Self::Auto => vec![],
            Self::Model(m) => vec![m.as_str()],
            Self::Cascade(c) => {
                c.stages.iter().map(|(m, _)| m.as_str()).chain([c.reference.as_str()]).collect()
            }
        }
    }
}

impl fmt::Display for ModelPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Model(m) => f.write_str(m),
            Self::Cascade(c) => {
                write!(f, "cascade(")?;
                for (model, _) in &c.stages {
                    write!(f, "{model}, ")?;
                }
                write!(f, "{}", c.reference)?;
                for (_, threshold) in &c.stages {
                    write!(f, ", {threshold}")?;
                }
                if let Some(target) = &c.target {
                    write!(f, ", {TARGET_PREFIX}{target}")?;
                }
                write!(f, ")")
            }
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
/// A cascade answers rows whose reference answer is already cached with that answer, so the
/// optimizer's sample (scored by the reference to measure the cheaper stages) is not answered
/// again, worse, by a cheaper stage.
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
            return score_on(context, &card.id, scoring, labels);
        }
        ModelPlan::Model(id) => return score_on(context, id, scoring, labels),
        ModelPlan::Cascade(c) => c,
    };
    // The target's index among the labels (a stage's confidence is about it, see the module doc).
    let target = cascade
        .target
        .as_ref()
        .map(|t| {
            labels
                .iter()
                .position(|l| l == t)
                .ok_or_else(|| format!("cascade target '{t}' is not one of the labels {labels:?}"))
        })
        .transpose()?;
    // `pending`: slots (positions in `rows`) no stage has been sure of yet. Rows whose
    // reference answer is already known (the optimizer's sample, an earlier query) take it.
    let mut out: Vec<Result<Vec<f32>, String>> = vec![Err(String::new()); rows.len()];
    let mut known =
        context.backend.known_label_scores(&cascade.reference, &(scoring.prompt)(rows), labels);
    // A backend that answers fewer rows than asked knows nothing of the rest.
    known.resize(rows.len(), None);
    let mut pending: Vec<usize> = Vec::with_capacity(rows.len());
    for (slot, (answer, known)) in out.iter_mut().zip(known).enumerate() {
        match known {
            Some(p) => *answer = Ok(p),
            None => pending.push(slot),
        }
    }
    let mut truncated = 0;
    for (model, threshold) in &cascade.stages {
        if pending.is_empty() {
            break;
        }
        let subset_rows: Vec<usize> = pending.iter().map(|&slot| rows[slot]).collect();
        let subset = ScoringRows {
            rows: &subset_rows,
            texts: pending.iter().map(|&slot| scoring.texts[slot]).collect(),
            prompt: &scoring.prompt,
        };
        let scored = score_on(context, model, &subset, labels)?;
        truncated = truncated.max(scored.truncated);
        let mut unsure = Vec::new();
        let reached = pending.len();
        for (slot, answer) in pending.into_iter().zip(scored.rows) {
            match answer {
                Ok(p) if stage_confidence(&p, target) >= *threshold => out[slot] = Ok(p),
                _ => unsure.push(slot),
            }
        }
        function_stats::record(|s| s.settled_rows += (reached - unsure.len()) as u64);
        pending = unsure;
    }
    if !pending.is_empty() {
        let reference_rows: Vec<usize> = pending.iter().map(|&slot| rows[slot]).collect();
        let subset = ScoringRows {
            rows: &reference_rows,
            texts: pending.iter().map(|&slot| scoring.texts[slot]).collect(),
            prompt: &scoring.prompt,
        };
        let scored = score_on(context, &cascade.reference, &subset, labels)?;
        truncated = truncated.max(scored.truncated);
        function_stats::record(|s| s.escalated_rows += pending.len() as u64);
        for (slot, answer) in pending.into_iter().zip(scored.rows) {
            out[slot] = answer;
        }
    }
    Ok(BatchOutput { rows: out, truncated })
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

/// The index of the most likely label (the first of equals).
pub fn best_label(probabilities: &[f32]) -> usize {
    probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

/// The probability of the most likely label.
pub fn top_probability(probabilities: &[f32]) -> f32 {
    probabilities.iter().copied().fold(0.0, f32::max)
}

/// How sure a cascade's cheap stage is of its answer: the probability of its most likely label,
/// or, with a `target` label (its index), of the answer being the target or not (see the
/// module doc).
pub fn stage_confidence(probabilities: &[f32], target: Option<usize>) -> f32 {
    match target.and_then(|t| Some((t, *probabilities.get(t)?))) {
        None => top_probability(probabilities),
        Some((t, p)) if best_label(probabilities) == t => p,
        Some((_, p)) => 1.0 - p,
    }
}

/// Whether two answers agree: the same most likely label, or, with a `target` label, both the
/// target or both not.
pub fn answers_agree(a: &[f32], b: &[f32], target: Option<usize>) -> bool {
    match target {
        None => best_label(a) == best_label(b),
        Some(t) => (best_label(a) == t) == (best_label(b) == t),
    }
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
                stages: vec![("a".into(), 0.85)],
                reference: "b".into(),
                target: None
            })
        );
        assert_eq!(plan.to_string(), "cascade(a, b, 0.85)");
        assert_eq!(ModelPlan::parse(Some(&plan.to_string())), Ok(plan));
        let three = ModelPlan::parse(Some("cascade(proxy:x, a, b, 0.9, 0.6)")).unwrap();
        assert_eq!(three.models(), ["proxy:x", "a", "b"]);
        assert_eq!(three.to_string(), "cascade(proxy:x, a, b, 0.9, 0.6)");
        let targeted = ModelPlan::parse(Some("cascade(proxy:x, b, 0.9, Target= sport)")).unwrap();
        assert_eq!(targeted.models(), ["proxy:x", "b"]);
        assert_eq!(targeted.to_string(), "cascade(proxy:x, b, 0.9, target=sport)");
        assert_eq!(ModelPlan::parse(Some(&targeted.to_string())), Ok(targeted));
    }

    #[test]
    fn malformed_cascades_say_what_is_expected() {
        assert_eq!(
            ModelPlan::parse(Some("cascade(a, b)")).unwrap_err(),
            "expected cascade(cheap_model, ..., reference_model, threshold, ... \
             [, target=label]) with one threshold per cheap model, got 'cascade(a, b)'"
        );
        assert_eq!(
            ModelPlan::parse(Some("cascade(a, b, 1.5)")).unwrap_err(),
            "cascade threshold must be a number in [0, 1], got '1.5'"
        );
        assert!(ModelPlan::parse(Some("cascade(, b, 0.5)")).is_err());
        assert_eq!(
            ModelPlan::parse(Some("cascade(a, b, 0.5, target=)")).unwrap_err(),
            "cascade target needs a label after '=', got 'cascade(a, b, 0.5, target=)'"
        );
        // A target alone does not make up for a missing threshold.
        assert!(ModelPlan::parse(Some("cascade(a, b, target=x)")).is_err());
    }

    #[test]
    fn a_target_label_makes_confidence_and_agreement_binary() {
        // Five topics, 'sport' at 3: unsure between politics and business, sure of not sport.
        let unsure = [0.45, 0.05, 0.45, 0.03, 0.02];
        assert_eq!(stage_confidence(&unsure, None), 0.45);
        assert!((stage_confidence(&unsure, Some(3)) - 0.97).abs() < 1e-6);
        let sport = [0.1, 0.1, 0.1, 0.6, 0.1];
        assert_eq!(stage_confidence(&sport, Some(3)), 0.6);
        // A label index past the list falls back to the top label.
        assert_eq!(stage_confidence(&sport, Some(9)), 0.6);
        let tech = [0.0, 0.0, 0.1, 0.0, 0.9];
        assert!(!answers_agree(&unsure, &tech, None));
        assert!(answers_agree(&unsure, &tech, Some(3)));
        assert!(!answers_agree(&sport, &tech, Some(3)));
    }
}
