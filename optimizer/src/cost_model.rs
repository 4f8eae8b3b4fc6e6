//! The cost of an AI call's rows on a model: seconds and joules, from the device profile, and
//! the single number the objective compares plans by.
//!
//! Label scoring is one batched forward pass over each row's tokens (the shared instruction is
//! computed once per batch), so a row costs its tokens over the model's prefill speed; labels
//! scored whole (`ai_filter`'s statements) add their tokens at the slower statement speed
//! `murakkab calibrate` measures (about two thirds of the prefill speed: every token after a
//! statement's first is scored against the whole vocabulary). Energy
//! follows the same modeled power as the executor's meter where no hardware counter exists:
//! every model thread busy at `energy.cpu_watts_per_core` plus `energy.idle_watts_per_core`.

use murakkab_catalog::{LABEL_ROW_OVERHEAD_TOKENS, ModelSpeed};
use murakkab_compiler::{MurakkabOptions, Objective};

/// Time and energy of some model work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Joules.
    pub joules: f64,
}

impl Cost {
    /// This cost `times` over.
    pub fn times(self, times: f64) -> Cost {
        Cost { seconds: self.seconds * times, joules: self.joules * times }
    }

    /// The sum of two costs.
    pub fn plus(self, other: Cost) -> Cost {
        Cost { seconds: self.seconds + other.seconds, joules: self.joules + other.joules }
    }

    /// The value `objective` minimises. Balanced is the geometric mean of seconds and joules, so
    /// halving either counts the same; carbon is joules at the session's grid intensity.
    pub fn value(self, objective: Objective, options: &MurakkabOptions) -> f64 {
        match objective {
            Objective::Latency => self.seconds,
            Objective::Energy => self.joules,
            Objective::Carbon => self.joules * options.carbon_intensity_now() / 3.6e6,
            Objective::Balanced => (self.seconds * self.joules).sqrt(),
        }
    }
}

/// Model threads the options give (0: every core).
pub fn model_threads(options: &MurakkabOptions) -> usize {
    if options.threads > 0 {
        options.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Modeled watts while the model threads are busy.
pub fn busy_watts(options: &MurakkabOptions) -> f64 {
    model_threads(options) as f64 * (options.cpu_watts_per_core + options.idle_watts_per_core)
}

/// The tokens a label-scored row costs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowTokens {
    /// The row's own prompt: its text in its block (the shared instruction is once per batch).
    pub prompt: f64,
    /// The labels scored whole after it (a filter's statement and its negation; 0 for labels
    /// told apart by their first token).
    pub statements: f64,
}

impl RowTokens {
    /// All of them, as read.
    pub fn total(self) -> f64 {
        self.prompt + self.statements
    }
}

/// The cost of scoring one row of `tokens` on a model of `speed`.
pub fn label_row_cost(speed: &ModelSpeed, tokens: RowTokens, options: &MurakkabOptions) -> Cost {
    let overhead = LABEL_ROW_OVERHEAD_TOKENS as f64;
    let seconds = (tokens.prompt + overhead) / speed.prefill_tokens_per_s.max(1e-9)
        + tokens.statements / speed.statement_speed().max(1e-9);
    Cost { seconds, joules: seconds * busy_watts(options) }
}

/// The cost of one generating row on a model of `speed`: its prompt's `row_tokens` through a
/// forward pass, then `generated_tokens` decode steps.
pub fn generate_row_cost(
    speed: &ModelSpeed,
    row_tokens: f64,
    generated_tokens: f64,
    options: &MurakkabOptions,
) -> Cost {
    let seconds = generated_tokens / speed.decode_tokens_per_s.max(1e-9);
    let prompt = RowTokens { prompt: row_tokens, statements: 0.0 };
    label_row_cost(speed, prompt, options)
        .plus(Cost { seconds, joules: seconds * busy_watts(options) })
}

/// The one-time cost of loading a model of `speed` and `parameters` that is not resident:
/// reading and converting its weights runs on one thread, so it is priced at one core's
/// watts, not every model thread's (which is why a plan that loads a small model can be the
/// energy objective's choice and not the latency objective's).
pub fn load_cost(speed: &ModelSpeed, parameters: u64, options: &MurakkabOptions) -> Cost {
    let seconds = speed.load_seconds(parameters);
    Cost { seconds, joules: seconds * (options.cpu_watts_per_core + options.idle_watts_per_core) }
}

/// The cost of embedding one row on an encoder of `speed` (what a proxy model costs; its
/// logistic regression is negligible beside it).
pub fn embed_row_cost(speed: &ModelSpeed, options: &MurakkabOptions) -> Cost {
    let seconds = 1.0 / speed.embeddings_per_s.max(1e-9);
    Cost { seconds, joules: seconds * busy_watts(options) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigger_models_and_longer_rows_cost_more_and_objectives_read_their_part() {
        let options = MurakkabOptions { threads: 2, ..Default::default() };
        let small = ModelSpeed::default_for(135_000_000);
        let large = ModelSpeed::default_for(494_000_000);
        let prompt = |prompt| RowTokens { prompt, statements: 0.0 };
        let a = label_row_cost(&small, prompt(20.0), &options);
        assert!(label_row_cost(&large, prompt(20.0), &options).seconds > 2.0 * a.seconds);
        assert!(label_row_cost(&small, prompt(200.0), &options).seconds > a.seconds);
        assert!((a.joules - a.seconds * 2.0 * 4.8).abs() < 1e-9);
        let c = Cost { seconds: 2.0, joules: 8.0 };
        assert_eq!(c.value(Objective::Latency, &options), 2.0);
        assert_eq!(c.value(Objective::Energy, &options), 8.0);
        assert_eq!(c.value(Objective::Balanced, &options), 4.0);
        assert!((c.value(Objective::Carbon, &options) - 8.0 * 475.0 / 3.6e6).abs() < 1e-12);
        assert_eq!(c.times(2.0).plus(c), Cost { seconds: 6.0, joules: 24.0 });
    }

    #[test]
    fn statements_cost_their_measured_speed_and_old_profiles_derive_it() {
        let options = MurakkabOptions { threads: 2, ..Default::default() };
        let measured = ModelSpeed {
            prefill_tokens_per_s: 2000.0,
            statement_tokens_per_s: 500.0,
            ..ModelSpeed::default_for(494_000_000)
        };
        let tokens = RowTokens { prompt: 26.0, statements: 10.0 };
        let cost = label_row_cost(&measured, tokens, &options);
        assert!((cost.seconds - (40.0 / 2000.0 + 10.0 / 500.0)).abs() < 1e-12);
        // A profile stored before statements were measured reads 0: the prefill speed over
        // the default ratio.
        let old = ModelSpeed { statement_tokens_per_s: 0.0, ..measured };
        let derived = 2000.0 / murakkab_catalog::STATEMENT_TOKEN_COST;
        assert!((old.statement_speed() - derived).abs() < 1e-9);
        assert!(label_row_cost(&old, tokens, &options).seconds > 40.0 / 2000.0 + 10.0 / 2000.0);
        assert_eq!(tokens.total(), 36.0);
    }
}
