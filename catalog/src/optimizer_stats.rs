//! Statistics the optimizer learned from samples, persisted under `MURAKKAB_HOME/stats` so a
//! repeated workload skips the sampling.
//!
//! A record is keyed by everything that decides its answers: the function, its prompt (condition
//! or labels), the lineage of the column it reads (a fingerprint of the plan below the call) and
//! the candidate models. One JSON file per key, written atomically; an unreadable file is treated
//! as absent (the sample is simply taken again).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::MurakkabHome;

/// What a sample taught about one label-scoring call (`ai_filter`, `ai_classify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelCallStats {
    /// Rows of the call's input when it was sampled (the population the sample was drawn from).
    pub input_rows: u64,
    /// The model every candidate is compared with: the largest that can score labels.
    pub reference: String,
    /// Mean tokens of a row's own text (the shared instruction is computed once per batch). In
    /// records written before `mean_statement_tokens` was kept, a filter's statements too.
    pub mean_row_tokens: f64,
    /// Mean tokens of the labels scored whole after each row: a filter's statement and its
    /// negation (0 for `ai_classify`, and in records written before it was kept).
    #[serde(default)]
    pub mean_statement_tokens: f64,
    /// Share of sampled rows whose reference answer is the first label (for `ai_filter`, the
    /// estimated selectivity: the fraction of rows that pass).
    pub first_label_rate: f64,
    /// One entry per cheaper candidate, each over the same sampled rows.
    pub candidates: Vec<CandidateOutcome>,
    /// Rows the reference answered in the sample (0 in records written before it was kept).
    #[serde(default)]
    pub reference_rows: usize,
    /// How many sampled rows the reference gave each label, in the call's label order (empty in
    /// records written before it was kept).
    #[serde(default)]
    pub answer_counts: Vec<usize>,
    /// The reference's answer (label index) on each sampled row it answered, in the order of
    /// the candidates' rows (empty in records written before it was kept).
    #[serde(default)]
    pub reference_answers: Vec<usize>,
}

/// How one candidate model did on the sampled rows, row by row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateOutcome {
    /// The candidate model's id.
    pub model: String,
    /// The probability of the candidate's top label on each sampled row (0 where it failed).
    pub confidence: Vec<f32>,
    /// Whether the candidate's answer equals the reference's on each sampled row. A candidate
    /// the optimizer stopped measuring early (it could not pay for the rest of the sample) has
    /// entries for the sample's first rows only, in the same order as the others'.
    pub agrees: Vec<bool>,
}

impl LabelCallStats {
    /// The label index the reference gave every sampled row, when it gave one answer to all of
    /// at least `min_rows` rows: a sign the condition or labels do not fit the data.
    pub fn one_answer(&self, min_rows: usize) -> Option<usize> {
        let total: usize = self.answer_counts.iter().sum();
        let mut given = self.answer_counts.iter().enumerate().filter(|&(_, &c)| c > 0);
        match (given.next(), given.next()) {
            (Some((label, _)), None) if total >= min_rows => Some(label),
            _ => None,
        }
    }

    /// Rows in the sample: those the reference answered (a candidate that could not pay for
    /// the whole sample stops after its first rows).
    pub fn sample_rows(&self) -> usize {
        self.candidates.iter().map(|c| c.agrees.len()).fold(self.reference_rows, usize::max)
    }
}

/// What a sample taught about one `ai_extract` call: how often each cheaper model's values
/// equal the reference model's, and how many tokens a row reads and generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractCallStats {
    /// Rows of the call's input when it was sampled.
    pub input_rows: u64,
    /// The model every candidate is compared with: the largest that can generate.
    pub reference: String,
    /// Mean tokens of a row's prompt part (its text in its block).
    pub mean_row_tokens: f64,
    /// Mean tokens of the reference's answers (the generated JSON).
    pub mean_output_tokens: f64,
    /// One entry per cheaper candidate over the sampled rows the reference answered
    /// (`confidence` is 1 where the candidate answered, 0 where it failed).
    pub candidates: Vec<CandidateOutcome>,
}

impl ExtractCallStats {
    /// Rows in the sample that the reference answered.
    pub fn sample_rows(&self) -> usize {
        self.candidates.first().map_or(0, |c| c.agrees.len())
    }
}

/// What a sample taught about one AI predicate of a conjunction: how many rows pass it and
/// what a row costs (the predicate-ordering rule ranks by cost / (1 - selectivity)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredicateStats {
    /// Rows of the input when it was sampled.
    pub input_rows: u64,
    /// Rows in the sample.
    pub sample_rows: usize,
    /// Share of the sampled rows that passed.
    pub selectivity: f64,
    /// Estimated model seconds per row.
    pub seconds_per_row: f64,
    /// Estimated joules per row.
    pub joules_per_row: f64,
}

/// A call whose input, when a query last ran it, was too small for a sample to pay off, so it
/// ran on the reference model. Plain `EXPLAIN` (which runs nothing) shows that decision rather
/// than "chosen when the query runs"; a run decides afresh, since its input may have grown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmallInput {
    /// Rows the call's input had.
    pub input_rows: u64,
}

/// What a sample taught about a join on an AI predicate (the semantic-join rule): how many
/// nearest candidates per row keep the predicate's matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockingStats {
    /// Rows of the join's left and right inputs when it was sampled.
    pub left_rows: u64,
    /// Rows of the right input.
    pub right_rows: u64,
    /// Left rows sampled.
    pub sample_rows: usize,
    /// Matches the predicate found among each sampled row's nearest candidates.
    pub near_matches: usize,
    /// For each k from 1, the matches found within the k nearest (cumulative).
    pub matches_within: Vec<usize>,
    /// Matches estimated beyond the nearest candidates (from evenly spaced farther pairs).
    pub far_matches: f64,
    /// The k chosen: the fewest nearest candidates whose estimated recall meets the target,
    /// or `None` when no k within the examined ones does (the join is left as it is).
    pub k: Option<usize>,
}

/// One plan the optimizer weighed for a call, with its estimates over the call's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsideredPlan {
    /// The plan as the `model` argument writes it (`qwen...`, `cascade(...)`).
    pub plan: String,
    /// Estimated model seconds.
    pub seconds: f64,
    /// Estimated joules.
    pub joules: f64,
    /// Estimated agreement with the reference on the sample.
    pub quality: f64,
    /// Its one-sided 95% lower bound (what the quality target is checked against).
    pub quality_lower: f64,
    /// Whether the optimizer chose it.
    pub chosen: bool,
}

/// Every plan weighed for one call: the data of a quality-vs-cost (Pareto) plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanChoices {
    /// The SQL function.
    pub function: String,
    /// `murakkab.objective` when it chose.
    pub objective: String,
    /// `murakkab.quality_target` when it chose.
    pub quality_target: f64,
    /// Rows the estimates are for.
    pub rows: u64,
    /// The plans, the chosen one marked.
    pub plans: Vec<ConsideredPlan>,
}

/// The persisted statistics under one home directory.
#[derive(Debug, Clone)]
pub struct StatsStore {
    dir: PathBuf,
}

impl StatsStore {
    /// The store of `home`.
    pub fn new(home: &MurakkabHome) -> Self {
        Self { dir: home.stats_dir() }
    }

    /// A short stable id for `key` (names its files and its proxy model).
    pub fn id_of(key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// The record of `kind` (`label`, `extract`, ...) stored under `key`, if one is readable and
    /// stored under exactly `key`.
    fn read_record<T: for<'de> Deserialize<'de>>(&self, kind: &str, key: &str) -> Option<T> {
        let text = std::fs::read_to_string(self.record_path(kind, key)).ok()?;
        let stored: Stored<T> = serde_json::from_str(&text).ok()?;
        (stored.key == key).then_some(stored.stats)
    }

    /// Stores `record` of `kind` under `key`, replacing any earlier one atomically.
    fn save_record<T: Serialize>(&self, kind: &str, key: &str, record: &T) -> std::io::Result<()> {
        let stored = Stored { key: key.to_string(), stats: record };
        self.write_json(&self.record_path(kind, key), &stored)
    }

    fn record_path(&self, kind: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{kind}-{}.json", Self::id_of(key)))
    }

    /// The record stored under `key`, if any is readable.
    pub fn label_stats(&self, key: &str) -> Option<LabelCallStats> {
        self.read_record("label", key)
    }

    /// Stores `stats` under `key`, replacing any earlier record atomically.
    pub fn save_label_stats(&self, key: &str, stats: &LabelCallStats) -> std::io::Result<()> {
        self.save_record("label", key, stats)
    }

    /// The extraction statistics stored under `key`, if any are readable.
    pub fn extract_stats(&self, key: &str) -> Option<ExtractCallStats> {
        self.read_record("extract", key)
    }

    /// Stores extraction statistics under `key`, replacing any earlier record atomically.
    pub fn save_extract_stats(&self, key: &str, stats: &ExtractCallStats) -> std::io::Result<()> {
        self.save_record("extract", key, stats)
    }

    /// The predicate statistics stored under `key`, if any are readable.
    pub fn predicate_stats(&self, key: &str) -> Option<PredicateStats> {
        self.read_record("predicate", key)
    }

    /// Stores predicate statistics under `key`, replacing any earlier record atomically.
    pub fn save_predicate_stats(&self, key: &str, stats: &PredicateStats) -> std::io::Result<()> {
        self.save_record("predicate", key, stats)
    }

    /// The blocking statistics stored under `key`, if any are readable.
    pub fn blocking_stats(&self, key: &str) -> Option<BlockingStats> {
        self.read_record("blocking", key)
    }

    /// Stores blocking statistics under `key`, replacing any earlier record atomically.
    pub fn save_blocking_stats(&self, key: &str, stats: &BlockingStats) -> std::io::Result<()> {
        self.save_record("blocking", key, stats)
    }

    /// The small-input decision stored under `key`, if one is readable.
    pub fn small_input(&self, key: &str) -> Option<SmallInput> {
        self.read_record("small", key)
    }

    /// Stores a small-input decision under `key`, replacing any earlier record atomically.
    pub fn save_small_input(&self, key: &str, small: &SmallInput) -> std::io::Result<()> {
        self.save_record("small", key, small)
    }

    /// Writes `value` as JSON to `path` under the store through a temporary file and a rename,
    /// so a reader sees the old record or the new one, never half of one.
    fn write_json(&self, path: &std::path::Path, value: &impl Serialize) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_string(value).map_err(std::io::Error::other)?;
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, path)
    }
}

impl StatsStore {
    /// Records the plans weighed for the call under `key` (the last choice wins).
    pub fn save_plan_choices(&self, key: &str, choices: &PlanChoices) -> std::io::Result<()> {
        // Compact JSON (`write_json`): a call can weigh thousands of cascade thresholds.
        self.write_json(&self.dir.join(format!("plans-{}.json", Self::id_of(key))), choices)
    }

    /// Every recorded set of plan choices (unreadable files are skipped), in file-name order.
    pub fn plan_choices(&self) -> Vec<PlanChoices> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("plans-") && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
            .collect()
    }
}

/// The file format: the full key is kept so a hash collision reads as absent.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    key: String,
    stats: T,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> LabelCallStats {
        LabelCallStats {
            input_rows: 100,
            reference: "big".into(),
            mean_row_tokens: 12.5,
            mean_statement_tokens: 9.0,
            first_label_rate: 0.25,
            candidates: vec![CandidateOutcome {
                model: "small".into(),
                confidence: vec![0.9, 0.6],
                agrees: vec![true, false],
            }],
            reference_rows: 2,
            answer_counts: vec![1, 1],
            reference_answers: vec![0, 1],
        }
    }

    #[test]
    fn one_answer_to_every_sampled_row_is_noticed() {
        let mut s = stats();
        assert_eq!(s.one_answer(2), None, "two labels given");
        s.answer_counts = vec![0, 64];
        assert_eq!(s.one_answer(32), Some(1));
        assert_eq!(s.one_answer(100), None, "too few rows to say");
        s.answer_counts = Vec::new();
        assert_eq!(s.one_answer(0), None, "an old record");
    }

    #[test]
    fn records_round_trip_and_unknown_or_corrupt_keys_read_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = StatsStore::new(&MurakkabHome::at(dir.path()));
        assert_eq!(store.label_stats("k"), None);
        store.save_label_stats("k", &stats()).unwrap();
        assert_eq!(store.label_stats("k"), Some(stats()));
        assert_eq!(store.label_stats("other"), None);
        assert_eq!(stats().sample_rows(), 2);
        std::fs::write(store.record_path("label", "k"), "{ not json").unwrap();
        assert_eq!(store.label_stats("k"), None);
        // A record written before statements were counted apart still reads, with none.
        let mut json = serde_json::to_value(Stored { key: "k".into(), stats: stats() }).unwrap();
        json["stats"].as_object_mut().unwrap().remove("mean_statement_tokens");
        std::fs::write(store.record_path("label", "k"), json.to_string()).unwrap();
        let old = LabelCallStats { mean_statement_tokens: 0.0, ..stats() };
        assert_eq!(store.label_stats("k"), Some(old));
    }

    #[test]
    fn plan_choices_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StatsStore::new(&MurakkabHome::at(dir.path()));
        assert!(store.plan_choices().is_empty());
        let choices = PlanChoices {
            function: "ai_filter".into(),
            objective: "balanced".into(),
            quality_target: 0.9,
            rows: 400,
            plans: vec![ConsideredPlan {
                plan: "small".into(),
                seconds: 1.0,
                joules: 8.0,
                quality: 0.95,
                quality_lower: 0.91,
                chosen: true,
            }],
        };
        store.save_plan_choices("k", &choices).unwrap();
        assert_eq!(store.plan_choices(), vec![choices]);
    }
}
