//! The cost-based optimizer's model choice, against a backend with a cheap model that is sure
//! and right on easy rows and unsure and wrong on hard ones, and a reference model that is
//! always right: the rule must find the cascade, meet the quality target, keep its statistics,
//! and never run a model for plain EXPLAIN.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::Mutex;

use murakkab::arrow::array::{Array, AsArray};
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

const CHEAP: &str = "smollm2-135m-instruct";
const REFERENCE: &str = "qwen2.5-coder-0.5b-instruct";

/// Rows whose text says "upbeat" are positive, the others negative. The reference model always
/// knows; the cheap one knows with 0.97 on "easy" rows and guesses wrong with 0.55 on "hard".
#[derive(Debug)]
struct TwoModels {
    home: MurakkabHome,
    /// (model, rows) of every scoring call.
    calls: Mutex<Vec<(String, usize)>>,
    /// Whether the cheap model reports itself not resident (its load is part of a plan's cost).
    cheap_cold: bool,
}

impl TwoModels {
    fn new(home: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            home: MurakkabHome::at(home),
            calls: Mutex::new(Vec::new()),
            cheap_cold: false,
        })
    }

    /// Models whose cheap one is never resident.
    fn with_cold_cheap(home: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            home: MurakkabHome::at(home),
            calls: Mutex::new(Vec::new()),
            cheap_cold: true,
        })
    }

    /// Rows scored by `model` so far.
    fn rows(&self, model: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(m, _)| m == model).map(|(_, n)| n).sum()
    }
}

impl AiBackend for TwoModels {
    fn resolve_model(&self, requested: Option<&str>, _task: Task) -> Result<ModelCard, String> {
        let id = requested.filter(|r| *r != "auto").unwrap_or(CHEAP);
        builtin_models().into_iter().find(|c| c.id == id).ok_or(format!("unknown model '{id}'"))
    }

    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        self.resolve_model(Some(REFERENCE), task)
    }

    fn embed(&self, _model: &str, _texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        Err("no embeddings here".into())
    }

    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        _labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        self.calls.lock().unwrap().push((model.to_string(), batch.rows.len()));
        let rows = batch
            .rows
            .iter()
            .map(|r| {
                let positive = r.contains("upbeat");
                let (right, sure) = match (model, r.contains("hard")) {
                    (REFERENCE, _) => (true, 0.9),
                    (_, false) => (true, 0.97),
                    (_, true) => (false, 0.55),
                };
                let first = if positive == right { sure } else { 1.0 - sure };
                Ok(vec![first, 1.0 - first])
            })
            .collect();
        Ok(BatchOutput { rows, truncated: 0 })
    }

    fn complete(
        &self,
        _model: &str,
        _batch: &ChatBatch,
        _options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        Err("no generation here".into())
    }

    /// The mood of each row: the reference always right, the cheap model wrong on hard rows.
    fn extract(
        &self,
        model: &str,
        batch: &ChatBatch,
        _fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        self.calls.lock().unwrap().push((format!("extract {model}"), batch.rows.len()));
        let rows = batch
            .rows
            .iter()
            .map(|r| {
                let upbeat = r.contains("upbeat") != (model == CHEAP && r.contains("hard"));
                let mood = if upbeat { "Upbeat" } else { "gloomy " };
                Ok(vec![Some(FieldValue::Text(mood.to_string()))])
            })
            .collect();
        Ok(BatchOutput { rows, truncated: 0 })
    }

    fn count_tokens(&self, _model: &str, text: &str) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    fn context_length(&self, _model: &str) -> Result<usize, String> {
        Ok(400)
    }

    fn is_loaded(&self, model: &str) -> bool {
        !(self.cheap_cold && model == CHEAP)
    }

    fn home(&self) -> &MurakkabHome {
        &self.home
    }
}

async fn session(backend: &Arc<TwoModels>, home: &std::path::Path, cache: bool) -> Session {
    let backend: Arc<dyn AiBackend> = Arc::clone(backend) as Arc<dyn AiBackend>;
    Session::builder()
        .home(home)
        .threads(2)
        .ai_backend(backend)
        .result_cache(cache)
        .build()
        .await
        .unwrap()
}

/// 1,000 reviews, one in ten hard for the cheap model, half of them upbeat.
const REVIEWS: &str = "CREATE VIEW reviews AS SELECT v AS id, 'review ' || v || ' ' || \
    CASE WHEN v % 10 = 0 THEN 'hard ' ELSE 'easy ' END || \
    CASE WHEN v % 2 = 0 THEN 'upbeat' ELSE 'gloomy' END AS text \
    FROM generate_series(1, 1000) AS s(v)";

const CLASSIFY: &str =
    "SELECT id, ai_classify(text, ['positive', 'negative']) AS label FROM reviews ORDER BY id";

async fn run(db: &Session, sql: &str) -> Vec<murakkab::arrow::array::RecordBatch> {
    db.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn text_of(db: &Session, sql: &str) -> String {
    let batches = run(db, sql).await;
    murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

fn labels(batches: &[murakkab::arrow::array::RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let l = b.column(1).as_string::<i32>();
            (0..l.len()).map(|i| l.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect()
}

fn truth() -> Vec<String> {
    (1..=1000).map(|v| if v % 2 == 0 { "positive" } else { "negative" }.to_string()).collect()
}

#[tokio::test]
async fn a_cascade_meets_the_quality_target_at_a_fraction_of_the_reference_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    assert!(
        plan.contains(&format!("cascade({CHEAP}, {REFERENCE}, 0.9")),
        "the cheap model alone misses 1 row in 10, so only a cascade meets 0.9:\n{plan}"
    );
    assert!(plan.contains("est. rows=1000"), "{plan}");
    assert!(plan.contains("escalated_rows="), "{plan}");
    // The 190 sampled rows (6·√1000) come from the cache; checking that they are there counts
    // no hits.
    assert!(plan.contains("cache_hits=190,"), "{plan}");
    // Every answer is the reference's: hard rows were escalated, easy ones were right.
    assert_eq!(labels(&run(&db, CLASSIFY).await), truth());
    // Sample: 190 rows on each model. Run: 1,000 on the cheap one (the sampled rows from the
    // cache), the ~80 hard rows outside the sample on the reference.
    let reference_rows = backend.rows(REFERENCE);
    assert!((190..=300).contains(&reference_rows), "reference scored {reference_rows} rows");
    assert_eq!(backend.rows(CHEAP), 1000);
    // Every plan weighed is recorded for reports; the chosen one is the cheapest that meets
    // the target, and the reference alone is among them at quality 1.
    let choices =
        murakkab::catalog::StatsStore::new(&murakkab::catalog::MurakkabHome::at(dir.path()))
            .plan_choices();
    assert_eq!(choices.len(), 1);
    let plans = &choices[0].plans;
    let chosen: Vec<_> = plans.iter().filter(|p| p.chosen).collect();
    assert_eq!(chosen.len(), 1, "{plans:?}");
    assert!(chosen[0].plan.starts_with("cascade(") && chosen[0].quality_lower >= 0.9);
    assert!(plans.iter().any(|p| p.plan == REFERENCE && p.quality == 1.0));
    let cheaper_and_good =
        plans.iter().filter(|p| p.quality_lower >= 0.9 && p.joules < chosen[0].joules).count();
    assert_eq!(cheaper_and_good, 0, "a cheaper plan also met the target");
}

#[tokio::test]
async fn a_cheap_model_wrong_on_its_first_sampled_rows_is_not_measured_on_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    // Every row hard: the cheap model is wrong on all of them.
    let all_hard = REVIEWS.replace("CASE WHEN v % 10 = 0 THEN 'hard ' ELSE 'easy ' END", "'hard '");
    run(&db, &all_hard).await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    assert!(plan.contains(&format!("ai_classify: {REFERENCE} for balanced")), "{plan}");
    assert!(plan.contains("190-row sample"), "the reference scored the whole sample:\n{plan}");
    assert_eq!(backend.rows(CHEAP), 16, "the cheap model stopped after its first look");

    // One row in ten hard: its first 16 rows promise a cascade, so it scores the other 174.
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    run(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    let calls = backend.calls.lock().unwrap().clone();
    let cheap: Vec<usize> = calls.iter().filter(|(m, _)| m == CHEAP).map(|(_, n)| *n).collect();
    assert_eq!(cheap[..2], [16, 174], "{calls:?}");
}

#[tokio::test]
async fn statistics_persist_so_a_repeated_query_skips_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    {
        let db = session(&backend, dir.path(), false).await;
        run(&db, REVIEWS).await;
        run(&db, CLASSIFY).await;
    }
    let stats: Vec<String> = std::fs::read_dir(dir.path().join("stats"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("label-"))
        .collect();
    assert_eq!(stats.len(), 1, "one record for the one call");
    backend.calls.lock().unwrap().clear();
    // A new session without the result cache: nothing is sampled, so the reference model
    // sees exactly the 100 hard rows.
    let db = session(&backend, dir.path(), false).await;
    run(&db, REVIEWS).await;
    assert_eq!(labels(&run(&db, CLASSIFY).await), truth());
    assert_eq!(backend.rows(REFERENCE), 100);
    assert_eq!(backend.rows(CHEAP), 1000);
}

#[tokio::test]
async fn a_target_no_sample_can_prove_keeps_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    run(&db, "SET murakkab.quality_target = 1.0").await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    assert!(plan.contains(&format!("ai_classify: {REFERENCE} for balanced")), "{plan}");
    assert!(!plan.contains("cascade("), "{plan}");
}

#[tokio::test]
async fn plain_explain_runs_no_model_and_says_when_the_choice_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let plan = text_of(&db, &format!("EXPLAIN {CLASSIFY}")).await;
    assert!(
        plan.contains("model chosen from a sample (at least 64 rows) when the query runs"),
        "{plan}"
    );
    assert!(backend.calls.lock().unwrap().is_empty(), "EXPLAIN ran a model");
    // Once the statistics exist, EXPLAIN shows the choice, still without running anything.
    run(&db, CLASSIFY).await;
    backend.calls.lock().unwrap().clear();
    let plan = text_of(&db, &format!("EXPLAIN {CLASSIFY}")).await;
    assert!(plan.contains("cascade("), "{plan}");
    assert!(plan.contains("(recorded, 190-row sample)"), "{plan}");
    assert!(backend.calls.lock().unwrap().is_empty(), "EXPLAIN ran a model");
}

#[tokio::test]
async fn after_a_run_too_small_to_sample_plain_explain_shows_the_model_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let small = "SELECT id, ai_classify(text, ['positive', 'negative']) AS label FROM reviews \
                 WHERE id <= 80 ORDER BY id";
    let before = text_of(&db, &format!("EXPLAIN {small}")).await;
    assert!(before.contains("when the query runs"), "{before}");
    let ran = text_of(&db, &format!("EXPLAIN ANALYZE {small}")).await;
    assert!(ran.contains("(input of 80 rows too small for a sample to pay off)"), "{ran}");
    backend.calls.lock().unwrap().clear();
    let after = text_of(&db, &format!("EXPLAIN {small}")).await;
    let note = format!(
        "ai_classify: {REFERENCE} (input of 80 rows too small for a sample to pay off when the \
         query last ran)"
    );
    assert!(after.contains(&note), "{after}");
    assert!(!after.contains("when the query runs"), "{after}");
    assert!(backend.calls.lock().unwrap().is_empty(), "EXPLAIN ran a model");
}

#[tokio::test]
async fn with_the_optimizer_off_or_a_model_named_nothing_is_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), false).await;
    run(&db, REVIEWS).await;
    let named = CLASSIFY.replace("])", &format!("], model => '{CHEAP}')"));
    run(&db, &named).await;
    assert_eq!((backend.rows(CHEAP), backend.rows(REFERENCE)), (1000, 0));
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    assert_eq!(labels(&run(&db, CLASSIFY).await), truth());
    assert_eq!((backend.rows(CHEAP), backend.rows(REFERENCE)), (1000, 1000));
    assert!(!dir.path().join("stats").exists(), "no statistics were gathered");
}

/// A cascade takes the reference's answer wherever it is already known (here from an earlier
/// query; on a first run, the optimizer's sample) instead of a cheaper stage's guess.
#[tokio::test]
async fn a_cascade_answers_rows_the_reference_already_answered_with_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let first_hundred = CLASSIFY
        .replace("])", &format!("], model => '{REFERENCE}')"))
        .replace("ORDER BY", "WHERE id <= 100 ORDER BY");
    run(&db, &first_hundred).await;
    // Threshold 0.5: the cheap model's wrong 0.55 on hard rows is accepted.
    let cascade =
        CLASSIFY.replace("])", &format!("], model => 'cascade({CHEAP}, {REFERENCE}, 0.5)')"));
    let answers = labels(&run(&db, &cascade).await);
    let wrong: Vec<usize> =
        (0..1000).filter(|&i| answers[i] != truth()[i]).map(|i| i + 1).collect();
    assert_eq!(wrong, (110..=1000).step_by(10).collect::<Vec<_>>(), "hard rows after 100 only");
    assert_eq!(backend.rows(CHEAP), 900, "the cheap model never sees the known rows");
    assert_eq!(backend.rows(REFERENCE), 100);
}

#[tokio::test]
async fn a_hand_written_cascade_runs_and_a_malformed_one_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), false).await;
    run(&db, REVIEWS).await;
    let cascade =
        CLASSIFY.replace("])", &format!("], model => 'cascade({CHEAP}, {REFERENCE}, 0.9)')"));
    assert_eq!(labels(&run(&db, &cascade).await), truth());
    assert_eq!((backend.rows(CHEAP), backend.rows(REFERENCE)), (1000, 100));
    let err = db
        .sql(&CLASSIFY.replace("])", "], model => 'cascade(a, b, 2)')"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ai_classify: model: cascade threshold must be a number in [0, 1], got '2'"),
        "{err}"
    );
    let err = db
        .sql(&CLASSIFY.replace("])", &format!("], model => 'cascade(nope, {REFERENCE}, 0.5)')")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ai_classify: unknown model 'nope'"), "{err}");
}

#[tokio::test]
async fn an_energy_budget_refuses_with_the_estimate_or_degrades_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    run(&db, "SET murakkab.max_energy_j = 0.5").await;
    let err = db.sql(CLASSIFY).await.unwrap().collect().await.unwrap_err().to_string();
    assert!(err.contains("estimated energy "), "{err}");
    assert!(err.contains("(ai_classify "), "{err}");
    assert!(err.contains("exceeds murakkab.max_energy_j = 0.5 J"), "{err}");
    run(&db, "SET murakkab.over_budget = 'degrade'").await;
    let answers = labels(&run(&db, CLASSIFY).await);
    assert_eq!(answers.len(), 1000);
    let warnings: Vec<String> = db.take_warnings().iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("ai_classify: 1000 rows: estimated energy ")
            && w.contains(&format!("ran the cheapest plan, {CHEAP}"))),
        "{warnings:?}"
    );
    // The cheap model alone: the hard rows are wrong.
    let right = answers.iter().zip(truth()).filter(|(a, t)| **a == *t).count();
    assert_eq!(right, 900);
}

#[tokio::test]
async fn the_time_estimate_reaches_a_carbon_aware_job() {
    use murakkab::carbon_schedule::{Clock, FakeClock};
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    let clock = FakeClock::at(1_000_000);
    let mut spec = murakkab::job::JobSpec::new(dir.path().join("out"));
    spec.carbon_schedule = Some(murakkab::job::CarbonSchedule {
        deadline_s: 3600,
        forecast: murakkab::CarbonSeries::parse("timestamp,g_per_kwh\n0,100\n").unwrap(),
    });
    spec.clock = clock as std::sync::Arc<dyn Clock>;
    let script = format!("{REVIEWS}; {CLASSIFY}");
    murakkab::job::run_job(&db, &script, &spec, &murakkab::job::NoProgress).await.unwrap();
    let schedule = murakkab::job::Manifest::read(&spec.output).unwrap().schedule.unwrap();
    assert!(schedule.estimated_seconds > 0.0, "{schedule:?}");
}

/// Loading runs on one thread, the model on all of them: a plan that must load the cheap model
/// can cost more time than the resident reference yet less energy. Here (2 threads, 20 tokens a
/// row, 1,000 rows) the reference costs 100 s; the cascade ~30 s of scoring plus a 100 s load,
/// which weighs 100 s for latency but only 50 s of two-thread power for energy.
#[tokio::test]
async fn loading_a_model_makes_latency_and_energy_choose_different_plans() {
    let home = tempfile::tempdir().unwrap();
    let stats = home.path().join("stats");
    std::fs::create_dir_all(&stats).unwrap();
    let profile = format!(
        r#"{{"threads": 2, "models": {{
            "{CHEAP}": {{"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 100.0,
                        "embeddings_per_s": 0.0, "measured": true, "load_seconds": 100.0}},
            "{REFERENCE}": {{"prefill_tokens_per_s": 200.0, "decode_tokens_per_s": 20.0,
                        "embeddings_per_s": 0.0, "measured": true, "load_seconds": 5.0}}}}}}"#
    );
    std::fs::write(stats.join("device-profile.json"), profile).unwrap();
    let backend = TwoModels::with_cold_cheap(home.path());
    let db = session(&backend, home.path(), true).await;
    db.sql(REVIEWS).await.unwrap();

    db.sql("SET murakkab.objective = 'latency'").await.unwrap();
    run(&db, CLASSIFY).await;
    let plan = text_of(&db, &format!("EXPLAIN {CLASSIFY}")).await;
    assert!(plan.contains(&format!("ai_classify: {REFERENCE} for latency (recorded")), "{plan}");

    db.sql("SET murakkab.objective = 'energy'").await.unwrap();
    let plan = text_of(&db, &format!("EXPLAIN {CLASSIFY}")).await;
    assert!(plan.contains(&format!("cascade({CHEAP}")), "{plan}");
    assert!(plan.contains("for energy (recorded"), "{plan}");
    assert!(plan.contains("(incl. loading: 100.0s, 480J)"), "{plan}");
}

const EXTRACT: &str =
    "SELECT id, ai_extract(text, '{\"mood\": \"text\"}')['mood'] AS mood FROM reviews ORDER BY id";

/// Extracts the mood of the upbeat reviews among the first `rows` (a filter keeps half, in
/// batches as its chunks finish); the backend and the EXPLAIN ANALYZE plan.
async fn extract_above_a_filter(rows: u32) -> (Arc<TwoModels>, String) {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let query = format!(
        "SELECT id, ai_extract(text, '{{\"mood\": \"text\"}}')['mood'] AS mood FROM reviews \
         WHERE id <= {rows} AND ai_filter(text, 'The review is upbeat') ORDER BY id"
    );
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {query}")).await;
    (backend, plan)
}

#[tokio::test]
async fn an_extraction_over_a_filters_few_rows_is_not_sampled_when_they_fit_a_sample() {
    // 100 kept rows: more than a sample's 64, but all of them, so no sample of a smaller model
    // can pay for itself.
    let (backend, plan) = extract_above_a_filter(200).await;
    let note =
        format!("ai_extract: {REFERENCE} (input of 100 rows too small for a sample to pay off)");
    assert!(plan.contains(&note), "{plan}");
    assert_eq!(backend.rows(&format!("extract {CHEAP}")), 0, "{plan}");
    assert_eq!(backend.rows(&format!("extract {REFERENCE}")), 100, "{plan}");
}

#[tokio::test]
async fn an_extraction_over_a_filters_many_rows_samples_as_many_as_a_whole_input_would() {
    // 200 kept rows: the extraction's sample is the first of them, of unknown total, and each
    // candidate generates on it; it takes the least sample, not all it read.
    let (backend, plan) = extract_above_a_filter(400).await;
    assert!(plan.contains("64-row sample)"), "{plan}");
    assert_eq!(backend.rows(&format!("extract {CHEAP}")), 64, "{plan}");
}

#[tokio::test]
async fn ai_extract_runs_the_cheap_model_only_where_its_values_agree_often_enough() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    // Plain EXPLAIN runs nothing and says when the choice is made.
    let plan = text_of(&db, &format!("EXPLAIN {EXTRACT}")).await;
    assert!(plan.contains("ai_extract: model chosen from a sample"), "{plan}");
    assert!(backend.calls.lock().unwrap().is_empty(), "EXPLAIN ran a model");
    // The cheap model gets 1 row in 10 wrong: agreement ~0.9 cannot prove 0.9 at 95%.
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {EXTRACT}")).await;
    assert!(plan.contains(&format!("ai_extract: {REFERENCE} for balanced (sampled")), "{plan}");
    assert!(plan.contains("generated="), "{plan}");
    let extracted = |model: &str| backend.rows(&format!("extract {model}"));
    assert_eq!(extracted(CHEAP), 64, "the cheap model extracted the sample only");

    // With a lower target it proves, and the statistics decide without a new sample.
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    run(&db, "SET murakkab.quality_target = 0.7").await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {EXTRACT}")).await;
    assert!(plan.contains(&format!("ai_extract: {CHEAP} for balanced (sampled")), "{plan}");
    assert!(plan.contains("reference alone"), "{plan}");
    let extracted = |model: &str| backend.rows(&format!("extract {model}"));
    // The sampled rows come from the result cache: 1,000 cheap rows in all, 64 reference rows.
    assert_eq!((extracted(CHEAP), extracted(REFERENCE)), (1000, 64));
    let moods = labels(&run(&db, EXTRACT).await);
    let right = moods
        .iter()
        .zip(1..)
        .filter(|(m, v)| {
            m.trim().eq_ignore_ascii_case(if v % 2 == 0 { "upbeat" } else { "gloomy" })
        })
        .count();
    assert_eq!(right, 900, "the cheap model's answers: wrong on the 100 hard rows");
    let plan = text_of(&db, &format!("EXPLAIN {EXTRACT}")).await;
    assert!(plan.contains(&format!("ai_extract: {CHEAP} for balanced (recorded")), "{plan}");
}

#[tokio::test]
async fn a_reference_that_answers_every_sampled_row_alike_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    // Every review gloomy: the reference calls all of them negative.
    let all_gloomy = REVIEWS.replace("'upbeat'", "'gloomy'");
    run(&db, &all_gloomy).await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    let said = format!(
        "the reference model, {REFERENCE}, answered 'negative' on all 190 sampled rows; check the \
         labels against the data"
    );
    assert!(plan.contains(&said), "{plan}");
    let warnings: Vec<String> = db.take_warnings().iter().map(ToString::to_string).collect();
    assert!(warnings.contains(&format!("ai_classify: 190 rows: {said}")), "{warnings:?}");
    // From the recorded statistics, plain EXPLAIN says it too.
    let plan = text_of(&db, &format!("EXPLAIN {CLASSIFY}")).await;
    assert!(plan.contains(&said), "{plan}");

    // Mixed reviews: no such notice.
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {CLASSIFY}")).await;
    assert!(!plan.contains("on all 190 sampled rows"), "{plan}");
    assert!(db.take_warnings().is_empty());
}

#[tokio::test]
async fn a_call_above_another_finds_its_statistics_on_the_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), true).await;
    run(&db, REVIEWS).await;
    let two = "SELECT id FROM reviews WHERE ai_classify(text, ['positive', 'negative']) = \
               'positive' AND ai_filter(text, 'The review is upbeat') ORDER BY id";
    let first = text_of(&db, &format!("EXPLAIN ANALYZE {two}")).await;
    assert!(first.contains("(sampled, "), "{first}");
    // The call above is keyed by the plan below it, whose notes changed from "sampled" to
    // "recorded": the key leaves them out, so the second run samples nothing.
    backend.calls.lock().unwrap().clear();
    let second = text_of(&db, &format!("EXPLAIN ANALYZE {two}")).await;
    assert_eq!(second.matches("(recorded, ").count(), 2, "{second}");
    assert!(!second.contains("(sampled"), "{second}");
}

#[tokio::test]
async fn a_filter_keeps_its_yes_rows_and_a_negated_one_its_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), false).await;
    run(&db, REVIEWS).await;
    // The note names the answer whose sampled rows the plan must keep.
    let kept = "SELECT id FROM reviews WHERE ai_filter(text, 'It is upbeat')";
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {kept}")).await;
    assert!(plan.contains("sampled 'yes'"), "{plan}");
    let negated = "SELECT id FROM reviews WHERE NOT ai_filter(text, 'It sounds upbeat')";
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {negated}")).await;
    assert!(plan.contains("sampled 'no'"), "{plan}");
}

#[tokio::test]
async fn a_label_test_under_a_top_k_runs_the_reference_in_key_order_without_a_sample() {
    let dir = tempfile::tempdir().unwrap();
    let backend = TwoModels::new(dir.path());
    let db = session(&backend, dir.path(), false).await;
    run(&db, REVIEWS).await;
    let top = "SELECT id FROM reviews WHERE ai_classify(text, ['positive', 'negative']) = \
               'positive' ORDER BY id DESC LIMIT 10";
    let plan = text_of(&db, &format!("EXPLAIN ANALYZE {top}")).await;
    assert!(plan.contains("read in key order until enough rows pass a top-k: not sampled"));
    assert!(plan.contains("in key order until 10 rows pass"), "{plan}");
    // The upbeat (positive) reviews are the even ids: 1000 down to 982. The reference read
    // them in chunks of 16 and 32 rows; the cheap model read none.
    assert_eq!((backend.rows(CHEAP), backend.rows(REFERENCE)), (0, 48));
    let ids: Vec<i64> = run(&db, top)
        .await
        .iter()
        .flat_map(|b| {
            b.column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>().values().to_vec()
        })
        .collect();
    assert_eq!(ids, (0..10).map(|i| 1000 - 2 * i).collect::<Vec<i64>>());
}
