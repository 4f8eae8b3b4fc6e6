//! Quality of the AI functions on real labeled data (../shared/DATASETS.md, fetched into `data/`
//! by `scripts/fetch-data.sh`), with the real models that are pulled.
//!
//! Floors are loose: they catch a broken prompt, tokenizer or scorer, not a model's limits.
//! Every accuracy is printed (`cargo test --test quality -- --nocapture`). By default only
//! smollm2-135m-instruct runs (the CI model); `MURAKKAB_QUALITY_MODELS=id,id` picks others.
//! Without the models or the data the test is skipped with a message, unless
//! `MURAKKAB_REQUIRE_REAL_MODELS=1`, which makes that a failure.

#![allow(clippy::unwrap_used)]
// Accuracies are reported on stderr.
#![allow(clippy::print_stderr)]

use std::path::Path;

use murakkab::Session;
use murakkab::arrow::array::AsArray;
use murakkab::arrow::datatypes::Float64Type;
use murakkab::catalog::{ModelStatus, MurakkabHome, find_model};

const DATA: [&str; 3] =
    ["data/uci-sentiment.jsonl", "data/bbc-news.jsonl", "data/spam-assassin.jsonl"];

fn pulled(home: &MurakkabHome, id: &str) -> bool {
    find_model(home, id).is_ok_and(|c| c.status(home) == ModelStatus::Pulled)
}

async fn scalar(db: &Session, sql: &str) -> f64 {
    let batches = db.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Float64Type>().value(0)
}

/// The floor for `measure` with `model`. Measured (2026-12-05, these samples), uci classify /
/// uci filter 'positive' / uci filter 'negative' / bbc classify / spam filter: smollm2 0.900 /
/// 0.900 / 0.693 / 0.317 / 0.443; qwen2.5-coder-0.5b 0.947 / 0.880 / 0.893 / 0.535 / 0.511.
/// No spam floor: neither model tells spam from an email's subject and start (with the
/// earlier yes/no filter smollm2 scored 0.664 there, but 0.344 on 'The review is negative' in
/// `benches/prompt_wording.rs`: its answer followed the wording more than the text).
fn floor(measure: &str, model: &str) -> f64 {
    match (measure, model) {
        ("uci ai_classify accuracy", _) => 0.8,
        ("uci ai_filter accuracy" | "uci ai_filter negative accuracy", _) => 0.6,
        ("bbc ai_classify accuracy", _) => 0.25,
        _ => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accuracy_on_labeled_data() {
    let home = MurakkabHome::from_env();
    let models: Vec<String> = std::env::var("MURAKKAB_QUALITY_MODELS")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|_| vec!["smollm2-135m-instruct".to_string()]);
    let missing_data: Vec<&str> = DATA.iter().copied().filter(|d| !Path::new(d).exists()).collect();
    let missing_models: Vec<&String> = models.iter().filter(|m| !pulled(&home, m)).collect();
    if !missing_data.is_empty() || !missing_models.is_empty() {
        let why = format!(
            "missing data {missing_data:?} (run scripts/fetch-data.sh) or models {missing_models:?} \
             (run murakkab models pull)"
        );
        assert!(std::env::var("MURAKKAB_REQUIRE_REAL_MODELS").as_deref() != Ok("1"), "{why}");
        eprintln!("skipping the quality test: {why}");
        return;
    }
    // No result cache: every answer comes from the model, so a rerun measures the model again.
    let db = Session::builder().threads(2).result_cache(false).build().await.unwrap();
    for (name, path) in [("uci", DATA[0]), ("bbc", DATA[1]), ("spam", DATA[2])] {
        db.sql(&format!("CREATE EXTERNAL TABLE {name}_all STORED AS JSON LOCATION '{path}'"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    }
    // Fixed samples: 150 sentences, 100 articles (headline and first 300 characters), 100 emails
    // (subject and first 500 characters of the body).
    for sql in [
        "CREATE TABLE uci AS SELECT text, label = 1 AS positive FROM uci_all WHERE id % 20 = 7",
        "CREATE TABLE bbc AS SELECT headline || '. ' || substr(body, 1, 300) AS text, topic FROM bbc_all WHERE id % 22 = 5",
        "CREATE TABLE spam AS SELECT 'Subject: ' || subject || chr(10) || substr(body, 1, 500) AS text, spam FROM spam_all WHERE id % 60 = 7",
    ] {
        db.sql(sql).await.unwrap().collect().await.unwrap();
    }
    let mut failures = Vec::new();
    for model in &models {
        let m = format!("model => '{model}'");
        let measures = [
            (
                "uci ai_classify accuracy",
                format!(
                    "SELECT avg(CASE WHEN ai_classify(text, ['positive', 'negative'], {m}) = CASE WHEN positive THEN 'positive' ELSE 'negative' END THEN 1.0 ELSE 0.0 END) FROM uci"
                ),
            ),
            (
                "uci ai_filter accuracy",
                format!(
                    "SELECT avg(CASE WHEN ai_filter(text, 'the review is positive', {m}) = positive THEN 1.0 ELSE 0.0 END) FROM uci"
                ),
            ),
            (
                "uci ai_filter negative accuracy",
                format!(
                    "SELECT avg(CASE WHEN ai_filter(text, 'the review is negative', {m}) = NOT positive THEN 1.0 ELSE 0.0 END) FROM uci"
                ),
            ),
            (
                "bbc ai_classify accuracy",
                format!(
                    "SELECT avg(CASE WHEN ai_classify(text, ['business', 'entertainment', 'politics', 'sports', 'tech'], {m}) = topic THEN 1.0 ELSE 0.0 END) FROM bbc"
                ),
            ),
            (
                "spam ai_filter balanced accuracy",
                format!(
                    "SELECT (avg(CASE WHEN spam THEN (p = spam)::double END) + avg(CASE WHEN NOT spam THEN (p = spam)::double END)) / 2 FROM (SELECT spam, ai_filter(text, 'the email is spam', {m}) AS p FROM spam)"
                ),
            ),
        ];
        for (measure, sql) in measures {
            let started = std::time::Instant::now();
            let value = scalar(&db, &sql).await;
            let floor = floor(measure, model);
            eprintln!(
                "quality: {model:30} {measure:34} {value:.3} (floor {floor}, {:.1} s)",
                started.elapsed().as_secs_f64()
            );
            if value < floor {
                failures.push(format!("{model}: {measure} {value:.3} < {floor}"));
            }
        }
    }
    assert!(failures.is_empty(), "below the floor: {failures:?}");
}
