//! Quality without labels: how often a cheaper plan agrees with the reference model, estimated
//! on a sample with a one-sided lower confidence bound (the approach of LOTUS and Abacus).
//!
//! The bound is Wilson's score interval. The reference model's own answers count as correct by
//! definition, so a plan's quality is its agreement with the reference on the sample.

use murakkab_catalog::CandidateOutcome;

/// z for a one-sided 95% bound.
pub const Z_95: f64 = 1.645;

/// The lower end of the Wilson score interval for `successes` of `n` at `z`.
pub fn wilson_lower_bound(successes: usize, n: usize, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    wilson_lower(successes as f64 / n as f64, n as f64, z)
}

/// Wilson's lower end for proportion `p` over an effective sample size `n`.
fn wilson_lower(p: f64, n: f64, z: f64) -> f64 {
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

/// How agreement on the sample bounds agreement over the rows the query answers.
///
/// Without a population this is Wilson's bound on the sample. With one — the call's input
/// rows, counted while this query drew the sample, so they are the rows the plan will
/// answer — two exact facts tighten it:
/// - the sample was drawn without replacement from those `N` rows, so the sample proportion's
///   variance shrinks by `(N − n) / (N − 1)` (the finite population correction, applied as
///   Wilson's bound over the effective size `n (N − 1) / (N − n)`); a sample of every row is
///   the population itself;
/// - when the sample's reference answers are in the result cache, a cascade answers those
///   rows with them (`AiBackend::known_label_scores`), so the result's agreement is exactly
///   the plan's agreement over all rows plus `n / N` times its disagreement on the sample:
///   `A = p_N + (n / N)(1 − p_s)`, and the bound on `p_N` gives one on `A`.
///
/// At 220 rows and a 64-row sample, a cascade agreeing on 61 sampled rows is bounded at
/// 0.915 instead of 0.888.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgreementBound {
    /// z of the one-sided bound.
    pub z: f64,
    /// The input rows the sample was drawn from, when drawn by this query.
    pub population: Option<u64>,
    /// Whether the reference's answers on the sampled rows are known to the cascade.
    pub sample_answers_known: bool,
}

impl AgreementBound {
    /// Wilson's bound on the sample alone.
    pub fn sample(z: f64) -> Self {
        Self { z, population: None, sample_answers_known: false }
    }

    /// The lower bound on agreement over the answered rows for `correct` of `n` sampled rows;
    /// `cascade` says whether the plan ends at the reference (and so uses known answers).
    pub fn lower(&self, correct: usize, n: usize, cascade: bool) -> f64 {
        let Some(population) = self.population.map(|p| p as f64).filter(|&p| p > 0.0) else {
            return wilson_lower_bound(correct, n, self.z);
        };
        if n == 0 {
            return 0.0;
        }
        let sampled = n as f64;
        let p = correct as f64 / sampled;
        let bound = if population <= sampled {
            p
        } else {
            wilson_lower(p, sampled * (population - 1.0) / (population - sampled), self.z)
        };
        let known = if cascade && self.sample_answers_known {
            (sampled / population).min(1.0) * (1.0 - p)
        } else {
            0.0
        };
        (bound + known).clamp(0.0, 1.0)
    }
}

/// A way to answer with a cheap model, measured on the sample.
#[derive(Debug, Clone, PartialEq)]
pub struct CheapPlan {
    /// Keep the cheap answer when its top-label probability is at least this; `None` keeps
    /// every cheap answer (the cheap model alone).
    pub threshold: Option<f32>,
    /// Share of rows sent on to the reference model.
    pub escalated: f64,
    /// Agreement with the reference on the sample.
    pub quality: f64,
    /// Its lower confidence bound.
    pub quality_lower: f64,
}

/// Every plan `candidate` allows: the model alone, and a cascade at each distinct confidence
/// seen on the sample (rows at or above it keep the cheap answer, the rest go to the
/// reference, whose answer agrees with itself).
///
/// The thresholds are chosen on the same sample the bound is computed from, so the stated
/// confidence is approximate (slightly optimistic); a larger sample narrows the gap.
pub fn cheap_plans(candidate: &CandidateOutcome, bound: &AgreementBound) -> Vec<CheapPlan> {
    let n = candidate.agrees.len();
    if n == 0 {
        return Vec::new();
    }
    let agreeing = candidate.agrees.iter().filter(|&&a| a).count();
    let mut plans = vec![CheapPlan {
        threshold: None,
        escalated: 0.0,
        quality: agreeing as f64 / n as f64,
        quality_lower: bound.lower(agreeing, n, false),
    }];
    let mut thresholds: Vec<f32> = candidate.confidence.clone();
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    for t in thresholds {
        let mut correct = 0;
        let mut escalated = 0;
        for (&c, &a) in candidate.confidence.iter().zip(&candidate.agrees) {
            if c >= t {
                correct += usize::from(a);
            } else {
                escalated += 1;
                correct += 1;
            }
        }
        plans.push(CheapPlan {
            threshold: Some(t),
            escalated: escalated as f64 / n as f64,
            quality: correct as f64 / n as f64,
            quality_lower: bound.lower(correct, n, true),
        });
    }
    plans
}

/// A two-stage cascade measured on the sample: `first` keeps rows at or above `thresholds.0`,
/// `second` keeps the rest at or above `thresholds.1`, the reference answers what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct TwoStagePlan {
    /// The thresholds of the first and second stage.
    pub thresholds: (f32, f32),
    /// Share of rows the second stage scores.
    pub reach_second: f64,
    /// Share of rows the reference scores.
    pub escalated: f64,
    /// Agreement with the reference on the sample.
    pub quality: f64,
    /// Its lower confidence bound.
    pub quality_lower: f64,
}

/// At most this many thresholds per stage are tried (quantiles of the sample's confidences).
const MAX_THRESHOLDS: usize = 48;

/// Candidate thresholds of one stage: the distinct confidences, thinned to quantiles.
fn thresholds_of(confidence: &[f32]) -> Vec<f32> {
    let mut all = confidence.to_vec();
    all.sort_by(f32::total_cmp);
    all.dedup();
    if all.len() <= MAX_THRESHOLDS {
        return all;
    }
    (0..MAX_THRESHOLDS).map(|i| all[i * (all.len() - 1) / (MAX_THRESHOLDS - 1)]).collect()
}

/// Every two-stage cascade of `first` then `second` (their outcomes are over the same sampled
/// rows, in the same order). The same caveat as [`cheap_plans`] applies to the bound.
pub fn two_stage_plans(
    first: &CandidateOutcome,
    second: &CandidateOutcome,
    bound: &AgreementBound,
) -> Vec<TwoStagePlan> {
    let n = first.agrees.len().min(second.agrees.len());
    if n == 0 {
        return Vec::new();
    }
    let mut plans = Vec::new();
    for t1 in thresholds_of(&first.confidence[..n]) {
        for t2 in thresholds_of(&second.confidence[..n]) {
            let (mut correct, mut second_rows, mut reference_rows) = (0, 0, 0);
            for i in 0..n {
                if first.confidence[i] >= t1 {
                    correct += usize::from(first.agrees[i]);
                } else if second.confidence[i] >= t2 {
                    second_rows += 1;
                    correct += usize::from(second.agrees[i]);
                } else {
                    second_rows += 1;
                    reference_rows += 1;
                    correct += 1;
                }
            }
            plans.push(TwoStagePlan {
                thresholds: (t1, t2),
                reach_second: second_rows as f64 / n as f64,
                escalated: reference_rows as f64 / n as f64,
                quality: correct as f64 / n as f64,
                quality_lower: bound.lower(correct, n, true),
            });
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_bound_matches_known_values() {
        // 45 of 50 at z = 1.645: about 0.808.
        assert!((wilson_lower_bound(45, 50, Z_95) - 0.808).abs() < 0.002);
        assert_eq!(wilson_lower_bound(0, 0, Z_95), 0.0);
        assert!(wilson_lower_bound(50, 50, Z_95) < 1.0, "a perfect sample is still a sample");
        assert!(wilson_lower_bound(500, 500, Z_95) > wilson_lower_bound(50, 50, Z_95));
    }

    #[test]
    fn a_sample_of_a_small_input_bounds_it_tighter_and_known_answers_count() {
        let alone = AgreementBound::sample(Z_95);
        let drawn = AgreementBound { population: Some(220), ..alone };
        let known = AgreementBound { sample_answers_known: true, ..drawn };
        // 61 of 64 agree (0.953).
        let (a, d, k) =
            (alone.lower(61, 64, true), drawn.lower(61, 64, true), known.lower(61, 64, true));
        assert!((a - 0.888).abs() < 0.001, "{a}");
        assert!(d > a + 0.01, "{d}: a third of the input sampled");
        assert!((k - d - 64.0 / 220.0 * 3.0 / 64.0).abs() < 1e-9, "{k}: the 3 misses are fixed");
        // Only cascades read known answers; a sample of every row is the population.
        assert_eq!(known.lower(61, 64, false), d);
        assert!((drawn.lower(61, 64, false) - drawn.lower(61, 64, true)).abs() < 1e-12);
        let whole = AgreementBound { population: Some(64), ..alone };
        assert!((whole.lower(61, 64, false) - 61.0 / 64.0).abs() < 1e-12);
        // A large input is almost the sample alone.
        let large = AgreementBound { population: Some(1_000_000), ..alone };
        assert!((large.lower(61, 64, false) - a).abs() < 1e-3);
    }

    #[test]
    fn cascades_trade_escalations_for_agreement() {
        // Confident rows agree, unsure rows do not.
        let candidate = CandidateOutcome {
            model: "small".into(),
            confidence: vec![0.99, 0.98, 0.97, 0.6, 0.55],
            agrees: vec![true, true, true, false, false],
        };
        let plans = cheap_plans(&candidate, &AgreementBound::sample(Z_95));
        assert_eq!(plans[0].threshold, None);
        assert!((plans[0].quality - 0.6).abs() < 1e-9);
        let at_97 = plans.iter().find(|p| p.threshold == Some(0.97)).unwrap();
        assert!((at_97.quality - 1.0).abs() < 1e-9, "the unsure rows went to the reference");
        assert!((at_97.escalated - 0.4).abs() < 1e-9);
        let at_99 = plans.iter().find(|p| p.threshold == Some(0.99)).unwrap();
        assert!(at_99.escalated > at_97.escalated);
    }

    #[test]
    fn a_second_stage_catches_what_the_first_is_unsure_of() {
        // The first stage is sure of rows 0-2, the second of rows 3-4, nobody of row 5.
        let first = CandidateOutcome {
            model: "proxy".into(),
            confidence: vec![0.99, 0.99, 0.99, 0.5, 0.5, 0.5],
            agrees: vec![true, true, true, false, false, false],
        };
        let second = CandidateOutcome {
            model: "small".into(),
            confidence: vec![0.6, 0.6, 0.6, 0.9, 0.9, 0.6],
            agrees: vec![true, true, true, true, true, false],
        };
        let plans = two_stage_plans(&first, &second, &AgreementBound::sample(Z_95));
        let best = plans.iter().find(|p| p.thresholds == (0.99, 0.9)).unwrap();
        assert!((best.quality - 1.0).abs() < 1e-9);
        assert!((best.reach_second - 0.5).abs() < 1e-9);
        assert!((best.escalated - 1.0 / 6.0).abs() < 1e-9);
    }
}
