//! How fast each model runs on this machine: the cost model's input.
//!
//! `murakkab calibrate` measures every pulled model and stores the figures in
//! `MURAKKAB_HOME/stats/device-profile.json`. A model that was not measured gets a default from
//! its parameter count, fitted to `murakkab calibrate` on this project's 2-core AMD EPYC:
//! label-scoring prefill at about 1.8e11 parameter-tokens per second (SmolLM2-135M 1,177 tok/s,
//! Qwen2.5-0.5B 475), decode at about 1.2e10 (65 and 38 tok/s), an encoder at about 9e9
//! parameter-embeddings per second (MiniLM-L6, 23M parameters: 410 short texts/s).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ModelCard, MurakkabHome};

/// Tokens a label-scored row adds besides its own text: the chat template around it, the
/// question and the label scored after it. `murakkab calibrate` counts them when it measures
/// prefill speed and the cost model adds them when it prices a row, so both agree.
pub const LABEL_ROW_OVERHEAD_TOKENS: usize = 14;

/// Measured or default speeds of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelSpeed {
    /// Prompt tokens per second through a batched forward pass (what label scoring costs).
    pub prefill_tokens_per_s: f64,
    /// Tokens of labels scored whole (`ai_filter`'s statement and its negation) per second, on
    /// top of the row's prompt pass: every token after the first is scored against the whole
    /// vocabulary, in passes of a few tokens per row. 0 where not measured (profiles stored
    /// before it was): [`Self::statement_speed`] then derives it from the prefill speed.
    #[serde(default)]
    pub statement_tokens_per_s: f64,
    /// Generated tokens per second at batch 1.
    pub decode_tokens_per_s: f64,
    /// Embeddings per second at batch 64 (encoders; 0 for decoders).
    pub embeddings_per_s: f64,
    /// Whether these figures were measured here (`murakkab calibrate`) or are defaults.
    #[serde(default)]
    pub measured: bool,
    /// Seconds to load the model from its files into memory (what the first use in a process
    /// costs); `None` when not measured, then estimated from its size ([`Self::load_seconds`]).
    #[serde(default)]
    pub load_seconds: Option<f64>,
}

impl ModelSpeed {
    /// The default for a model of `parameters` parameters.
    ///
    /// Prefill speed falls more slowly than size grows (a narrow model keeps the cores less
    /// busy per weight): `murakkab calibrate` on this project's 2-core machine, on the f32
    /// path (`MURAKKAB_AMX=0`), measured label scoring at 1,008 tokens/s for SmolLM2-135M and
    /// 441 for Qwen2.5-0.5B (2026-12-04, two runs averaged, each row counted as the cost model
    /// counts it), a 2.3x gap for 3.7x the parameters, which `281 · (10⁹ / p)^0.637` fits.
    /// Inverse proportion to size had made the small model's rows look 27% of the large one's
    /// cost instead of 39%, so cascades and samples through it looked cheaper than they run.
    pub fn default_for(parameters: u64) -> Self {
        let p = parameters.max(1) as f64;
        let prefill_tokens_per_s = 281.0 * (1e9 / p).powf(0.637);
        Self {
            prefill_tokens_per_s,
            statement_tokens_per_s: prefill_tokens_per_s / STATEMENT_TOKEN_COST,
            decode_tokens_per_s: 1.2e10 / p,
            embeddings_per_s: 9.0e9 / p,
            measured: false,
            load_seconds: None,
        }
    }

    /// The default for a model of `parameters` parameters where prompt passes run on matrix
    /// units (AMX tiles, bf16): the prefill speed interpolated (log-log) between what
    /// `murakkab calibrate` measured on this project's 2-core Sapphire Rapids machine
    /// ([`AMX_PREFILL_MEASURED`]), beyond them along the nearest segment. One power law does not
    /// fit both ends: a narrow model's passes spend more of their time outside the products
    /// (1.65x the time for 3.7x the parameters from SmolLM2-135M to Qwen2.5-0.5B), while from
    /// Qwen2.5-0.5B to -1.5B time grows with size (3.0x for 3.1x); the power law fitted to the
    /// two small models had priced Qwen2.5-1.5B at 1,298 tokens/s, about twice its speed. An
    /// encoder's projections run on the matrix units too: its embeddings at
    /// [`AMX_EMBED_SCALE`] parameter-embeddings per second. Decode does not use them and keeps
    /// [`Self::default_for`]'s figure.
    pub fn default_with_matrix_units(parameters: u64) -> Self {
        let p = parameters.max(1) as f64;
        let prefill_tokens_per_s = interpolate_log_log(&AMX_PREFILL_MEASURED, p);
        Self {
            prefill_tokens_per_s,
            statement_tokens_per_s: prefill_tokens_per_s / STATEMENT_TOKEN_COST,
            embeddings_per_s: AMX_EMBED_SCALE / p,
            ..Self::default_for(parameters)
        }
    }

    /// Whole-label tokens per second: measured, or the prefill speed over
    /// [`STATEMENT_TOKEN_COST`].
    pub fn statement_speed(&self) -> f64 {
        if self.statement_tokens_per_s > 0.0 {
            self.statement_tokens_per_s
        } else {
            self.prefill_tokens_per_s / STATEMENT_TOKEN_COST
        }
    }

    /// Seconds to load a model of `parameters` parameters: measured, or its f32 weights at
    /// `DEFAULT_LOAD_BYTES_PER_S`.
    pub fn load_seconds(&self, parameters: u64) -> f64 {
        self.load_seconds.unwrap_or(parameters as f64 * 4.0 / DEFAULT_LOAD_BYTES_PER_S)
    }
}

/// Load speed assumed for an uncalibrated model, in bytes of f32 weights per second (measured
/// here: MiniLM 0.22 s, SmolLM2-135M 0.55 s, Qwen2.5-0.5B 7.1 s, i.e. 0.3 to 1 GB/s).
pub const DEFAULT_LOAD_BYTES_PER_S: f64 = 0.5e9;

/// How many prompt tokens' time one token of a label scored whole costs, where not measured:
/// `murakkab calibrate` on this project's 2-core Sapphire Rapids machine (2026-12-05, two runs,
/// the statements of 'The review reports a problem with the product' after 32 short reviews,
/// scored as branches of each row's pass) measured 1,431 and 1,199 statement tokens/s against
/// 2,057 and 2,004 prefill for Qwen2.5-0.5B (1.44, 1.67), 3,190 and 2,930 against 3,674 and
/// 3,729 for SmolLM2-135M (1.15, 1.27). Before the statements ran in the row's pass (one pass
/// per row and then one for its continuations) the ratio was about 2; priced at the prefill
/// speed then, `ai_filter` over 401 SpamAssassin subjects was estimated at 8.5 s for the
/// 12.9 s it took.
pub const STATEMENT_TOKEN_COST: f64 = 1.5;

/// Label-scoring prefill on matrix units as `murakkab calibrate` measured it on this project's
/// 2-core Sapphire Rapids machine, (parameters, tokens/s), each row counted as the cost model
/// counts it: SmolLM2-135M and Qwen2.5-0.5B on 2026-12-04 (the kernel with aligned tiles and the
/// interleaved SiLU epilogue, two runs averaged; 1,008 and 441 with `MURAKKAB_AMX=0`),
/// Qwen2.5-Coder-1.5B on 2026-12-05 (its weights on tiles; three runs: 689, 673, 658).
const AMX_PREFILL_MEASURED: [(f64, f64); 3] =
    [(135_000_000.0, 3327.0), (494_000_000.0, 2015.0), (1_540_000_000.0, 673.0)];

/// `y(x)` on the piecewise power law through `points` (sorted by `x`, at least two): between two
/// points the line through them in log-log space, outside the first or last segment's line.
fn interpolate_log_log(points: &[(f64, f64)], x: f64) -> f64 {
    let last = points.len().saturating_sub(2);
    let i = points.windows(2).position(|w| x <= w[1].0).unwrap_or(last).min(last);
    let ((x0, y0), (x1, y1)) = (points[i], points[i + 1]);
    let slope = (y1 / y0).ln() / (x1 / x0).ln();
    y0 * (x / x0).powf(slope)
}

/// An encoder's parameter-embeddings per second on matrix units: `murakkab calibrate` on this
/// project's 2-core Sapphire Rapids machine (2026-12-05, 1aad3de, texts packed without
/// padding; two runs) measured MiniLM-L6 (22.7M parameters) at 1,485 and 1,438 embeddings/s,
/// and at 1,158 and 1,150 before packing. The f32 default (410/s) had priced a proxy's
/// embeddings at three times their cost.
const AMX_EMBED_SCALE: f64 = 3.3e10;

/// The speeds of the models on this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// Model threads the figures were measured with.
    pub threads: usize,
    /// Measured models by id.
    pub models: BTreeMap<String, ModelSpeed>,
    /// Whether this process's prompt passes run on matrix units, which picks the defaults of
    /// models not measured. A property of the running process, not stored.
    #[serde(skip)]
    pub matrix_units: bool,
}

impl DeviceProfile {
    fn path(home: &MurakkabHome) -> PathBuf {
        home.stats_dir().join("device-profile.json")
    }

    /// The stored profile, or an empty one (every model at its default) when there is none or
    /// it cannot be read.
    pub fn load(home: &MurakkabHome) -> Self {
        std::fs::read_to_string(Self::path(home))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Stores the profile atomically.
    pub fn save(&self, home: &MurakkabHome) -> std::io::Result<()> {
        let path = Self::path(home);
        std::fs::create_dir_all(home.stats_dir())?;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &path)
    }

    /// This profile for a process whose prompt passes do (or do not) run on matrix units.
    pub fn with_matrix_units(self, matrix_units: bool) -> Self {
        Self { matrix_units, ..self }
    }

    /// The speed of `card`'s model: measured if calibrated, else the default for its size (and
    /// for whether prompt passes run on matrix units).
    pub fn speed(&self, card: &ModelCard) -> ModelSpeed {
        self.models.get(&card.id).copied().unwrap_or_else(|| {
            if self.matrix_units {
                ModelSpeed::default_with_matrix_units(card.parameters)
            } else {
                ModelSpeed::default_for(card.parameters)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_units_change_the_prefill_and_embedding_defaults() {
        let (small, large) = (135_000_000, 494_000_000);
        let amx = |p| ModelSpeed::default_with_matrix_units(p);
        assert!((amx(small).prefill_tokens_per_s - 3327.0).abs() < 35.0, "calibrated 3,327");
        assert!((amx(large).prefill_tokens_per_s - 2015.0).abs() < 20.0, "calibrated 2,015");
        let larger = amx(1_540_000_000).prefill_tokens_per_s;
        assert!((larger - 673.0).abs() < 7.0, "{larger}: calibrated 689, 673, 658");
        // Between and beyond the measured sizes the speed falls steadily with size.
        let speeds: Vec<f64> = [50e6, 135e6, 300e6, 494e6, 1e9, 1.54e9, 3e9]
            .iter()
            .map(|&p| amx(p as u64).prefill_tokens_per_s)
            .collect();
        assert!(speeds.windows(2).all(|w| w[0] > w[1]), "{speeds:?}");
        let (between, beyond) = (speeds[4], speeds[6]);
        assert!((673.0..2015.0).contains(&between) && (300.0..400.0).contains(&beyond));
        let minilm = amx(22_700_000).embeddings_per_s;
        assert!((minilm - 1461.0).abs() < 30.0, "{minilm}: calibrated 1,485 and 1,438");
        assert_eq!(
            amx(large).decode_tokens_per_s,
            ModelSpeed::default_for(large).decode_tokens_per_s
        );
        let card = crate::builtin_models()
            .into_iter()
            .find(|c| c.id == "qwen2.5-coder-0.5b-instruct")
            .unwrap();
        let profile = DeviceProfile::default();
        assert_eq!(profile.speed(&card), ModelSpeed::default_for(card.parameters));
        let profile = profile.with_matrix_units(true);
        assert_eq!(profile.speed(&card), ModelSpeed::default_with_matrix_units(card.parameters));
    }

    #[test]
    fn defaults_scale_with_size_and_measurements_win() {
        let small = ModelSpeed::default_for(135_000_000);
        let large = ModelSpeed::default_for(494_000_000);
        let ratio = small.prefill_tokens_per_s / large.prefill_tokens_per_s;
        assert!((2.1..2.5).contains(&ratio), "{ratio}: measured 1,008 / 441 tokens/s");
        assert!(!small.measured);

        let dir = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(dir.path());
        assert_eq!(DeviceProfile::load(&home), DeviceProfile::default());
        let mut profile = DeviceProfile { threads: 2, ..Default::default() };
        let measured = ModelSpeed { measured: true, ..small };
        profile.models.insert("m".into(), measured);
        profile.save(&home).unwrap();
        assert_eq!(DeviceProfile::load(&home), profile);
    }
}
