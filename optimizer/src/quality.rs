//! Quality without labels: how often a cheaper plan agrees with the reference model, estimated
//! on a sample with a one-sided lower confidence bound (the approach of LOTUS and Abacus).
//!
//! The bound is Wilson's score interval. The reference model's own answers count as correct by
//! definition, so a plan's quality is its agreement with the reference on the sample.
//!
//! One decision tries many plans on one sample and keeps the cheapest whose bound clears the
//! target, so the 95% must hold for all of them together, not for each alone. Two facts make
//! that affordable (the "learn then test" argument of Angelopoulos et al., 2021):
//! - along one candidate's thresholds, from the most cautious down, the sample's agreement only
//!   falls (each lower threshold keeps a row the reference answered before), so the passing
//!   thresholds are a prefix of that fixed sequence, and testing it costs one test's error, not
//!   one per threshold;
//! - the sequences one decision tries are few and fixed before any agreement is looked at: one
//!   per cheap candidate, and for a two-stage cascade one per first-stage threshold
//!   ([`FIRST_STAGE_THRESHOLDS`] of them, over every second-stage threshold). Their error is
//!   split among them ([`families`], [`z_for_families`]: Bonferroni). A label decision gives the
//!   proxy's sequence a fixed [`PROXY_SHARE`] of it and splits the rest evenly over every other
//!   sequence that could be tested ([`MissRateShares`]), counted before the sample is drawn:
//!   which smaller models get sampled depends on how the proxy did on it, so shares that
//!   followed the sequences actually tested would not add up to 5% over all samples.
//!
//! Simulated (`simulation` below: 400-row inputs, 64-row samples, two cheap candidates of
//! varying skill), picking across up to 48 × 48 two-stage thresholds at an uncorrected z
//! missed the target in 13–17% of decisions; with the correction, at most 5%.

use murakkab_catalog::CandidateOutcome;

/// The share of decisions allowed to miss the quality target: guarantees hold at 95%.
pub const MISS_RATE: f64 = 0.05;

/// z for a one-sided 95% bound.
pub const Z_95: f64 = 1.645;

/// First-stage thresholds a two-stage cascade tries: the quartiles of the first stage's
/// confidence on the sample (it keeps about three quarters, half or a quarter of the rows).
pub const FIRST_STAGE_THRESHOLDS: usize = 3;

/// How many sequences of plans one decision tests: one per cheap candidate, one per
/// first-stage threshold of each ordered pair of them.
pub fn families(candidates: usize, pairs: usize) -> usize {
    candidates + pairs * FIRST_STAGE_THRESHOLDS
}

/// z of the one-sided bound each of `families` sequences is tested at, so that all hold
/// together at 1 − [`MISS_RATE`].
pub fn z_for_families(families: usize) -> f64 {
    normal_quantile(1.0 - MISS_RATE / families.max(1) as f64)
}

/// The share of the miss rate a label decision's proxy sequence is tested at when other
/// sequences could be tested too. The proxy settles most rows in practice (the smaller models
/// are rarely sampled past a first look beside it), so it holds most of the 5%: z = 1.751
/// rather than 1.645 alone, where an even split with one smaller model and one pair would
/// give it 2.326.
pub const PROXY_SHARE: f64 = 0.8;

/// z of the one-sided bound a sequence holding `share` of the miss rate is tested at.
pub fn z_for_share(share: f64) -> f64 {
    normal_quantile(1.0 - MISS_RATE * share.clamp(1e-12, 1.0))
}

/// How one label decision shares the miss rate, fixed before its sample is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MissRateShares {
    /// The proxy's sequence's share (when a proxy could be trained).
    pub proxy: f64,
    /// Each other sequence's share.
    pub other: f64,
}

impl MissRateShares {
    /// The shares when a proxy could be trained (`proxy`) beside `others` other sequences
    /// that could be tested: [`PROXY_SHARE`] for the proxy when there are others, all of it
    /// when there are none; the rest split evenly.
    pub fn new(proxy: bool, others: usize) -> Self {
        let proxy_share = match (proxy, others) {
            (false, _) => 0.0,
            (true, 0) => 1.0,
            (true, _) => PROXY_SHARE,
        };
        Self { proxy: proxy_share, other: (1.0 - proxy_share) / others.max(1) as f64 }
    }
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

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

    /// The same bound at the z that lets `families` sequences of plans hold together at 95%
    /// ([`z_for_families`]).
    pub fn for_families(self, families: usize) -> Self {
        Self { z: z_for_families(families), ..self }
    }

    /// The same bound for a sequence holding `share` of the miss rate ([`z_for_share`]).
    pub fn for_share(self, share: f64) -> Self {
        Self { z: z_for_share(share), ..self }
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
/// The plans are one fixed sequence (see the module doc): test them at the z that
/// [`z_for_families`] gives the decision, and keep the cheapest that passes.
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

/// The first stage's thresholds: its confidence's quartiles on the sample, chosen from the
/// confidences alone (not from agreement), so the sequences they start are fixed in advance.
fn first_stage_thresholds(confidence: &[f32]) -> Vec<f32> {
    let mut all = confidence.to_vec();
    all.sort_by(f32::total_cmp);
    let mut chosen: Vec<f32> = (1..=FIRST_STAGE_THRESHOLDS)
        .map(|k| all[k * all.len() / (FIRST_STAGE_THRESHOLDS + 1)])
        .collect();
    chosen.dedup();
    chosen
}

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

/// The two-stage cascades of `first` then `second` (their outcomes are over the same sampled
/// rows, in the same order): at each of the first stage's [`FIRST_STAGE_THRESHOLDS`]
/// thresholds, every second-stage threshold. For a fixed first threshold the sample's
/// agreement only falls as the second lowers, so each first threshold is one sequence of
/// [`families`].
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
    for t1 in first_stage_thresholds(&first.confidence[..n]) {
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

#[cfg(test)]
mod simulation {
    //! The guarantee, checked the way it is stated: over many inputs, how often does the plan
    //! a decision picks miss the target on the whole input?

    use super::*;
    use crate::sampling::SplitMix64;

    /// Input rows, sampled rows and simulated decisions per scenario.
    const INPUT: usize = 400;
    const SAMPLE: usize = 64;
    const DECISIONS: usize = 400;
    const TARGET: f64 = 0.9;
    /// Per-row cost of the two cheap candidates (a proxy, a small model); the reference costs 1.
    const COST: [f64; 2] = [0.05, 0.3];

    fn uniform(rng: &mut SplitMix64) -> f64 {
        rng.below(1 << 30) as f64 / (1u64 << 30) as f64
    }

    /// One input row: each candidate's confidence and whether it agrees with the reference.
    struct Row {
        confidence: [f32; 2],
        agrees: [bool; 2],
    }

    /// A candidate's agreement rises linearly with its confidence (uniform in 0.5..1): from
    /// `low` at 0.5 to `high` at 1.
    #[derive(Clone, Copy)]
    struct Skill {
        low: f64,
        high: f64,
    }

    fn input(rng: &mut SplitMix64, skills: [Skill; 2]) -> Vec<Row> {
        (0..INPUT)
            .map(|_| {
                let mut row = Row { confidence: [0.0; 2], agrees: [false; 2] };
                for (m, skill) in skills.iter().enumerate() {
                    let c = 0.5 + 0.5 * uniform(rng);
                    let p = skill.low + (skill.high - skill.low) * (c - 0.5) / 0.5;
                    row.confidence[m] = c as f32;
                    row.agrees[m] = uniform(rng) < p;
                }
                row
            })
            .collect()
    }

    /// The cheapest plan whose bound clears the target, as `choose_plan` picks it: its cost,
    /// its stages (candidate, threshold), whether it is a cascade and how many stages it has.
    fn decide(outcomes: &[CandidateOutcome; 2], bound: &AgreementBound) -> Option<Plan> {
        let bound = bound.for_families(families(2, 1));
        let mut best: Option<Plan> = None;
        let mut consider = |plan: Plan, lower: f64| {
            if lower >= TARGET && best.as_ref().is_none_or(|b| plan.cost < b.cost) {
                best = Some(plan);
            }
        };
        for (m, outcome) in outcomes.iter().enumerate() {
            for p in cheap_plans(outcome, &bound) {
                let stages = vec![(m, p.threshold.unwrap_or(f32::MIN))];
                let plan =
                    Plan { cost: COST[m] + p.escalated, stages, cascade: p.threshold.is_some() };
                consider(plan, p.quality_lower);
            }
        }
        for p in two_stage_plans(&outcomes[0], &outcomes[1], &bound) {
            let cost = COST[0] + COST[1] * p.reach_second + p.escalated;
            let stages = vec![(0, p.thresholds.0), (1, p.thresholds.1)];
            consider(Plan { cost, stages, cascade: true }, p.quality_lower);
        }
        best
    }

    struct Plan {
        cost: f64,
        stages: Vec<(usize, f32)>,
        cascade: bool,
    }

    /// The plan's agreement over the whole input (a cascade answers sampled rows with the
    /// reference's known answers).
    fn agreement(plan: &Plan, rows: &[Row], sampled: &[bool]) -> f64 {
        let agreeing = rows
            .iter()
            .zip(sampled)
            .filter(|&(row, &sampled)| {
                if sampled && plan.cascade {
                    return true;
                }
                let kept = plan.stages.iter().find(|&&(m, t)| row.confidence[m] >= t);
                kept.is_none_or(|&(m, _)| row.agrees[m])
            })
            .count();
        agreeing as f64 / rows.len() as f64
    }

    #[test]
    fn the_chosen_plan_misses_the_target_in_at_most_five_percent_of_inputs() {
        // From a weak proxy beside a fair small model to two fair ones. Picking across 48 × 48
        // two-stage thresholds at z = 1.645 missed in 13-17% of these decisions.
        let scenarios = [
            [Skill { low: 0.3, high: 1.0 }, Skill { low: 0.5, high: 1.0 }],
            [Skill { low: 0.5, high: 1.0 }, Skill { low: 0.6, high: 1.0 }],
            [Skill { low: 0.6, high: 0.95 }, Skill { low: 0.7, high: 1.0 }],
            [Skill { low: 0.7, high: 0.95 }, Skill { low: 0.75, high: 1.0 }],
        ];
        let mut two_stage = 0;
        for (s, skills) in scenarios.into_iter().enumerate() {
            let mut rng = SplitMix64(7 + s as u64);
            let (mut missed, mut cheap) = (0, 0);
            for _ in 0..DECISIONS {
                let rows = input(&mut rng, skills);
                // A uniform sample without replacement (a partial shuffle).
                let mut order: Vec<usize> = (0..INPUT).collect();
                for i in 0..SAMPLE {
                    let j = i + rng.below((INPUT - i) as u64) as usize;
                    order.swap(i, j);
                }
                let mut sampled = vec![false; INPUT];
                for &i in &order[..SAMPLE] {
                    sampled[i] = true;
                }
                let outcome = |m: usize| CandidateOutcome {
                    model: m.to_string(),
                    confidence: order[..SAMPLE].iter().map(|&i| rows[i].confidence[m]).collect(),
                    agrees: order[..SAMPLE].iter().map(|&i| rows[i].agrees[m]).collect(),
                };
                let bound = AgreementBound {
                    z: Z_95,
                    population: Some(INPUT as u64),
                    sample_answers_known: true,
                };
                let Some(plan) = decide(&[outcome(0), outcome(1)], &bound) else { continue };
                cheap += 1;
                two_stage += usize::from(plan.stages.len() == 2);
                missed += usize::from(agreement(&plan, &rows, &sampled) < TARGET);
            }
            let rate = missed as f64 / DECISIONS as f64;
            assert!(rate <= MISS_RATE, "scenario {s}: missed the target in {rate:.3} of inputs");
            assert!(cheap > DECISIONS / 2, "scenario {s}: a cheap plan was chosen {cheap} times");
        }
        assert!(two_stage > 0, "two-stage cascades were tried and sometimes chosen");
    }

    #[test]
    fn the_normal_quantile_matches_known_values() {
        for (p, z) in [(0.5, 0.0), (0.95, 1.644_854), (0.99, 2.326_348), (0.999, 3.090_232)] {
            assert!((normal_quantile(p) - z).abs() < 1e-5, "{p}: {}", normal_quantile(p));
            assert!((normal_quantile(1.0 - p) + z).abs() < 1e-5);
        }
        assert!((z_for_families(1) - Z_95).abs() < 1e-3);
        assert!((z_for_families(5) - 2.326_348).abs() < 1e-5);
        assert!((z_for_share(PROXY_SHARE) - 1.750_686).abs() < 1e-5);
    }

    #[test]
    fn a_proxy_holds_a_fixed_share_of_the_miss_rate_and_the_shares_add_up() {
        let alone = MissRateShares::new(true, 0);
        assert_eq!(alone.proxy, 1.0);
        let beside = MissRateShares::new(true, 4);
        assert_eq!(beside.proxy, PROXY_SHARE);
        assert!((beside.proxy + 4.0 * beside.other - 1.0).abs() < 1e-12);
        let without = MissRateShares::new(false, 5);
        assert_eq!(without.proxy, 0.0);
        assert!((5.0 * without.other - 1.0).abs() < 1e-12);
    }
}
