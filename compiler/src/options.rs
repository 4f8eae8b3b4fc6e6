//! The `murakkab` configuration namespace, set with `SET murakkab.key = value`.
//!
//! Written by hand rather than with DataFusion's `extensions_options!` macro so that a wrong key
//! or value gets a message that lists what is valid, and enumerated values are checked on `SET`
//! instead of failing later inside a query.

use std::any::Any;
use std::fmt;
use std::str::FromStr;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};

use crate::carbon_series::CarbonSeries;

/// What the optimizer minimises once the quality target is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// Time and energy weighed equally (their geometric mean): the default.
    #[default]
    Balanced,
    /// Wall-clock time of the query.
    Latency,
    /// Joules consumed.
    Energy,
    /// Grams of CO2e emitted (energy times the grid's carbon intensity at run time).
    Carbon,
}

/// What happens when a row's model call fails or its output cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The row's value becomes NULL and a warning is counted.
    #[default]
    Null,
    /// The query fails.
    Fail,
}

/// What happens when a query's estimated energy exceeds `murakkab.max_energy_j`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverBudget {
    /// The query fails before its main work, with the estimate.
    #[default]
    Refuse,
    /// The cheapest plan runs whatever its estimated quality, with a warning.
    Degrade,
}

/// Scheduling class of a query's model work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Served first: the shell and the embedded API.
    #[default]
    Interactive,
    /// Fills idle capacity: `murakkab run`.
    Batch,
}

/// Implements `FromStr`/`Display` for a keyword enum from one table, so parsing, printing and
/// the list of valid values in error messages cannot drift apart.
macro_rules! keyword_enum {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted keyword, in declaration order.
            pub const KEYWORDS: &'static [&'static str] = &[$($word),+];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $word),+ })
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!("expected one of {}", Self::KEYWORDS.join(", "))),
                }
            }
        }
    };
}

keyword_enum!(Objective {
    Balanced => "balanced",
    Latency => "latency",
    Energy => "energy",
    Carbon => "carbon",
});
keyword_enum!(OnError { Null => "null", Fail => "fail" });
keyword_enum!(Priority { Interactive => "interactive", Batch => "batch" });
keyword_enum!(OverBudget { Refuse => "refuse", Degrade => "degrade" });

/// The `murakkab.*` session options.
#[derive(Debug, Clone, PartialEq)]
pub struct MurakkabOptions {
    /// See [`Objective`].
    pub objective: Objective,
    /// Minimum estimated agreement with the reference model, in (0, 1].
    pub quality_target: f64,
    /// Whether the cost-based AI rules run at all.
    pub optimizer_enabled: bool,
    /// Fewest rows sampled to estimate a call's quality per candidate model (label calls sample
    /// more from larger inputs, up to four times this).
    pub sample_rows: usize,
    /// Most joules a query's AI calls may be estimated to use; 0 for no limit.
    pub max_energy_j: f64,
    /// See [`OverBudget`].
    pub over_budget: OverBudget,
    /// See [`OnError`].
    pub on_error: OnError,
    /// Seconds one chunk of an AI operator's model work may take before its rows become NULL
    /// (or the query fails under `on_error = 'fail'`); 0 for no limit.
    pub model_timeout_s: f64,
    /// Grid carbon intensity used to turn joules into grams of CO2e.
    pub carbon_intensity_g_per_kwh: f64,
    /// A `timestamp,g_per_kwh` series whose value at the time of the work replaces
    /// `carbon_intensity_g_per_kwh`; empty for none.
    pub carbon_intensity_file: String,
    /// The readings of `carbon_intensity_file`, parsed once when it is set.
    pub carbon_series: Option<CarbonSeries>,
    /// Threads for model execution; 0 picks a default for this machine.
    pub threads: usize,
    /// Bytes the session's memory pool holds for query operators and models together; 0 for
    /// no limit. Fixed when the session starts (`--memory-limit`, `Session::builder()`).
    pub memory_limit: usize,
    /// See [`Priority`].
    pub priority: Priority,
    /// Watts of one fully busy core above idle, for the energy model used where no hardware
    /// counter is readable. Default 4 W: an AMD EPYC 64-core/128-thread part draws about 280 W at
    /// full load (2.2 W per hardware thread) and memory and I/O add about as much again under
    /// inference's memory traffic.
    pub cpu_watts_per_core: f64,
    /// Idle watts per core the process may use, charged while model work runs. Default 0.8 W:
    /// such a server idles near 100 W, 0.8 W per hardware thread.
    pub idle_watts_per_core: f64,
    /// Whether AI calls are batched, deduplicated and served from caches. Off (with the
    /// optimizer off) is the naive baseline: one row per model call, nothing reused.
    pub batching: bool,
}

impl Default for MurakkabOptions {
    fn default() -> Self {
        Self {
            objective: Objective::default(),
            quality_target: 0.9,
            optimizer_enabled: true,
            sample_rows: 64,
            max_energy_j: 0.0,
            over_budget: OverBudget::default(),
            on_error: OnError::default(),
            model_timeout_s: 0.0,
            // Roughly the world-average grid intensity of recent years; set the local value.
            carbon_intensity_g_per_kwh: 475.0,
            carbon_intensity_file: String::new(),
            carbon_series: None,
            threads: 0,
            memory_limit: 0,
            priority: Priority::default(),
            cpu_watts_per_core: 4.0,
            idle_watts_per_core: 0.8,
            batching: true,
        }
    }
}

/// One documented key: the single source for `SET`, `SHOW ALL` and error messages.
struct OptionDoc {
    key: &'static str,
    description: &'static str,
}

const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        key: "objective",
        description: "What the optimizer minimises once the quality target is met: balanced (time and energy weighed equally), latency, energy or carbon.",
    },
    OptionDoc {
        key: "quality_target",
        description: "Minimum estimated agreement of an AI call's answers with the reference model, between 0 (exclusive) and 1.",
    },
    OptionDoc {
        key: "optimizer.enabled",
        description: "Whether Murakkab's cost-based AI rules (model choice, ordering, cascades, fusion) run.",
    },
    OptionDoc {
        key: "optimizer.sample_rows",
        description: "Fewest rows of an AI call's input sampled to estimate each candidate model's agreement with the reference model (at least 8); a label call samples 6·√n of its n input rows, up to four times this; the answers are kept in the result cache.",
    },
    OptionDoc {
        key: "max_energy_j",
        description: "Most joules a query's AI calls may be estimated to use (after the optimizer's sample); 0: no limit.",
    },
    OptionDoc {
        key: "over_budget",
        description: "When the estimate exceeds max_energy_j: refuse (the query fails with the estimate) or degrade (the cheapest plan runs whatever its quality, with a warning).",
    },
    OptionDoc {
        key: "on_error",
        description: "When a row's model call fails or its output cannot be parsed: null (the value becomes NULL and a warning is counted) or fail (the query fails).",
    },
    OptionDoc {
        key: "model_timeout_s",
        description: "Seconds one chunk of an AI operator's model work may take; past it the chunk's AI values become NULL with a warning (or the query fails under on_error = 'fail') and the model work is cancelled. Chunks stay at 16 rows while it is set (otherwise they grow to 256). 0: no limit.",
    },
    OptionDoc {
        key: "carbon_intensity_g_per_kwh",
        description: "Grid carbon intensity in grams CO2e per kWh, used to report emissions; must be >= 0.",
    },
    OptionDoc {
        key: "carbon_intensity_file",
        description: "CSV of timestamp,g_per_kwh (RFC 3339 or Unix seconds); when set, emissions use the reading in force when the work ran instead of carbon_intensity_g_per_kwh. Empty: none.",
    },
    OptionDoc {
        key: "memory_limit",
        description: "Bytes of memory the session's queries and models may hold together (model weights, key/value caches, operators); 0: no limit. Read-only: set when the session starts (murakkab --memory-limit 2G, or Session::builder().memory_limit).",
    },
    OptionDoc {
        key: "threads",
        description: "Threads for model execution; 0 chooses a default for this machine.",
    },
    OptionDoc {
        key: "priority",
        description: "Scheduling class of this session's model work: interactive (served first) or batch (uses idle capacity).",
    },
    OptionDoc {
        key: "energy.cpu_watts_per_core",
        description: "Watts of one busy core above idle, for modeled energy where no hardware counter (RAPL) is readable; must be >= 0.",
    },
    OptionDoc {
        key: "energy.idle_watts_per_core",
        description: "Idle watts per usable core, charged while model work runs, for modeled energy; must be >= 0.",
    },
    OptionDoc {
        key: "exec.batching",
        description: "Whether AI calls are batched, deduplicated and answered from the result cache; false (with optimizer.enabled = false) is the naive baseline of one row per model call.",
    },
];

impl MurakkabOptions {
    /// Grams CO2e per kWh at `unix_seconds`: from the `carbon_intensity_file` series when set,
    /// otherwise `carbon_intensity_g_per_kwh`.
    pub fn carbon_intensity_at(&self, unix_seconds: i64) -> f64 {
        self.carbon_series.as_ref().map_or(self.carbon_intensity_g_per_kwh, |s| s.at(unix_seconds))
    }

    /// Grams CO2e per kWh now.
    pub fn carbon_intensity_now(&self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.carbon_intensity_at(now)
    }

    /// The options of a session, or the defaults if the extension was not registered.
    pub fn from_config(config: &ConfigOptions) -> Self {
        config.extensions.get::<Self>().cloned().unwrap_or_default()
    }

    /// Every key with its prefix, for messages and listings.
    pub fn keys() -> impl Iterator<Item = String> {
        OPTIONS.iter().map(|o| format!("{}.{}", Self::PREFIX, o.key))
    }

    fn value_of(&self, key: &str) -> String {
        match key {
            "objective" => self.objective.to_string(),
            "quality_target" => self.quality_target.to_string(),
            "optimizer.enabled" => self.optimizer_enabled.to_string(),
            "optimizer.sample_rows" => self.sample_rows.to_string(),
            "max_energy_j" => self.max_energy_j.to_string(),
            "over_budget" => self.over_budget.to_string(),
            "on_error" => self.on_error.to_string(),
            "model_timeout_s" => self.model_timeout_s.to_string(),
            "carbon_intensity_g_per_kwh" => self.carbon_intensity_g_per_kwh.to_string(),
            "carbon_intensity_file" => self.carbon_intensity_file.clone(),
            "threads" => self.threads.to_string(),
            "memory_limit" => self.memory_limit.to_string(),
            "priority" => self.priority.to_string(),
            "exec.batching" => self.batching.to_string(),
            "energy.cpu_watts_per_core" => self.cpu_watts_per_core.to_string(),
            "energy.idle_watts_per_core" => self.idle_watts_per_core.to_string(),
            _ => String::new(),
        }
    }
}

fn invalid(key: &str, value: &str, expected: impl fmt::Display) -> DataFusionError {
    DataFusionError::Configuration(format!(
        "invalid value '{value}' for {}.{key}: {expected}",
        MurakkabOptions::PREFIX
    ))
}

fn parse<T: FromStr>(key: &str, value: &str, expected: &str) -> Result<T> {
    value.trim().parse().map_err(|_| invalid(key, value, expected))
}

fn watts(key: &str, value: &str) -> Result<f64> {
    let v: f64 = parse(key, value, "expected a number of watts")?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(key, value, "expected a finite number of watts >= 0"));
    }
    Ok(v)
}

impl ConfigExtension for MurakkabOptions {
    const PREFIX: &'static str = "murakkab";
}

impl ExtensionOptions for MurakkabOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "objective" => self.objective = value.parse().map_err(|e| invalid(key, value, e))?,
            "quality_target" => {
                let v: f64 = parse(key, value, "expected a number between 0 and 1")?;
                if !(v > 0.0 && v <= 1.0) {
                    return Err(invalid(
                        key,
                        value,
                        "expected a number greater than 0 and at most 1",
                    ));
                }
                self.quality_target = v;
            }
            "optimizer.enabled" => {
                self.optimizer_enabled = parse(key, value, "expected true or false")?
            }
            "optimizer.sample_rows" => {
                let v: usize = parse(key, value, "expected a whole number of rows >= 8")?;
                if v < 8 {
                    return Err(invalid(key, value, "expected a whole number of rows >= 8"));
                }
                self.sample_rows = v;
            }
            "max_energy_j" => {
                let v: f64 = parse(key, value, "expected a number of joules >= 0")?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(key, value, "expected a finite number of joules >= 0"));
                }
                self.max_energy_j = v;
            }
            "over_budget" => {
                self.over_budget = value.parse().map_err(|e| invalid(key, value, e))?
            }
            "on_error" => self.on_error = value.parse().map_err(|e| invalid(key, value, e))?,
            "model_timeout_s" => {
                let v: f64 = parse(key, value, "expected a number of seconds >= 0")?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(key, value, "expected a finite number of seconds >= 0"));
                }
                self.model_timeout_s = v;
            }
            "carbon_intensity_g_per_kwh" => {
                let v: f64 = parse(key, value, "expected a number of grams CO2e per kWh")?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(key, value, "expected a finite number >= 0"));
                }
                self.carbon_intensity_g_per_kwh = v;
            }
            "carbon_intensity_file" => {
                let path = value.trim();
                self.carbon_series = if path.is_empty() {
                    None
                } else {
                    Some(
                        CarbonSeries::read(std::path::Path::new(path))
                            .map_err(|e| invalid(key, value, e))?,
                    )
                };
                self.carbon_intensity_file = path.to_string();
            }
            "threads" => self.threads = parse(key, value, "expected a whole number >= 0")?,
            "memory_limit" => {
                return Err(DataFusionError::Configuration(format!(
                    "{}.memory_limit is fixed when the session starts (it sizes the memory pool \
                     models and queries share); start murakkab with --memory-limit {value} or use \
                     Session::builder().memory_limit(bytes)",
                    Self::PREFIX
                )));
            }
            "priority" => self.priority = value.parse().map_err(|e| invalid(key, value, e))?,
            "exec.batching" => self.batching = parse(key, value, "expected true or false")?,
            "energy.cpu_watts_per_core" => self.cpu_watts_per_core = watts(key, value)?,
            "energy.idle_watts_per_core" => self.idle_watts_per_core = watts(key, value)?,
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown option '{}.{key}'; valid options are: {}",
                    Self::PREFIX,
                    Self::keys().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        OPTIONS
            .iter()
            .map(|o| ConfigEntry {
                key: format!("{}.{}", Self::PREFIX, o.key),
                value: Some(self.value_of(o.key)),
                description: o.description,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_key_can_be_set_and_read_back() {
        let mut o = MurakkabOptions::default();
        let values = [
            ("objective", "energy"),
            ("quality_target", "0.75"),
            ("optimizer.enabled", "false"),
            ("optimizer.sample_rows", "32"),
            ("max_energy_j", "500"),
            ("over_budget", "degrade"),
            ("on_error", "fail"),
            ("model_timeout_s", "2.5"),
            ("carbon_intensity_g_per_kwh", "350"),
            ("carbon_intensity_file", ""),
            ("threads", "2"),
            ("priority", "batch"),
            ("exec.batching", "false"),
            ("energy.cpu_watts_per_core", "6.5"),
            ("energy.idle_watts_per_core", "1.5"),
        ];
        // Every key but the read-only memory_limit.
        assert_eq!(values.len() + 1, OPTIONS.len());
        let err = o.set("memory_limit", "1G").unwrap_err().to_string();
        assert!(
            err.contains("fixed when the session starts") && err.contains("--memory-limit 1G"),
            "{err}"
        );
        for (k, v) in values {
            o.set(k, v).expect(k);
            assert_eq!(o.value_of(k), v, "{k}");
        }
        assert_eq!(o.objective, Objective::Energy);
        assert!(!o.optimizer_enabled);
    }

    #[test]
    fn a_carbon_series_file_replaces_the_fixed_intensity_at_its_hour() {
        let dir = std::env::temp_dir().join(format!("murakkab-carbon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("grid.csv");
        std::fs::write(&file, "timestamp,g_per_kwh\n1000,200\n2000,50\n").unwrap();
        let mut o = MurakkabOptions::default();
        assert_eq!(o.carbon_intensity_at(1500), 475.0, "no file: the fixed value");
        o.set("carbon_intensity_file", file.to_str().unwrap()).unwrap();
        assert_eq!(o.carbon_intensity_at(1500), 200.0);
        assert_eq!(o.carbon_intensity_at(2500), 50.0);
        o.set("carbon_intensity_file", "").unwrap();
        assert_eq!(o.carbon_intensity_at(2500), 475.0, "cleared");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_key_lists_valid_ones() {
        let err = MurakkabOptions::default().set("objectiv", "energy").unwrap_err().to_string();
        assert!(err.contains("unknown option 'murakkab.objectiv'"), "{err}");
        assert!(err.contains("murakkab.objective"), "{err}");
        assert!(err.contains("murakkab.quality_target"), "{err}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let mut o = MurakkabOptions::default();
        let err = o.set("objective", "speed").unwrap_err().to_string();
        assert!(err.contains("expected one of balanced, latency, energy, carbon"), "{err}");
        let err = o.set("quality_target", "1.5").unwrap_err().to_string();
        assert!(err.contains("murakkab.quality_target"), "{err}");
        assert!(o.set("quality_target", "0").is_err());
        assert!(o.set("threads", "-1").is_err());
        assert!(o.set("carbon_intensity_g_per_kwh", "NaN").is_err());
        let err = o.set("carbon_intensity_file", "/no/such/file.csv").unwrap_err().to_string();
        assert!(err.contains("cannot read carbon intensity file '/no/such/file.csv'"), "{err}");
        assert_eq!(o, MurakkabOptions::default(), "a rejected SET changes nothing");
    }
}
