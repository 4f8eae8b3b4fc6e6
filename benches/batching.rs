//! What batching, prefix sharing, deduplication and the result cache buy, before any optimizer
//! rule: `ai_classify` with smollm2 over UCI sentences in the naive baseline and batched.
//!
//! `cargo bench --profile dev --bench batching` (needs `scripts/fetch-data.sh` and
//! smollm2-135m-instruct pulled; `MURAKKAB_BENCH_ROWS` sets the row count, default 1,000).
//! Every mode runs in one process on the same weights and 2 threads, in a scratch home whose
//! models directory links to the real one, so the result cache starts empty:
//!
//! - **naive**: `murakkab.optimizer.enabled = false` and `murakkab.exec.batching = false` — one
//!   row per model call, no deduplication, no cached prefix, no result cache;
//! - **batched, first run**: the defaults, with an empty result cache (it is filled as it goes);
//! - **batched, second run**: the same query again, answered from the result cache.
//!
//! Each mode is one pass over all rows (a pass takes minutes, so per-row noise averages out);
//! the model is loaded before any timing. Also reported: how often batched and naive agree.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use murakkab::Session;
use murakkab::arrow::array::{Array, AsArray};
use murakkab::catalog::{ModelStatus, MurakkabHome, find_model};

const MODEL: &str = "smollm2-135m-instruct";
const DATA: &str = "data/uci-sentiment.jsonl";

/// Seconds for the query and its answers in row order.
async fn classify(db: &Session, rows: usize) -> (f64, Vec<Option<String>>) {
    let sql = format!(
        "SELECT ai_classify(text, ['positive', 'negative'], model => '{MODEL}') AS label \
         FROM (SELECT text FROM uci ORDER BY id LIMIT {rows})"
    );
    let started = Instant::now();
    let batches = db.sql(&sql).await.unwrap().collect().await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let labels = batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    (seconds, labels)
}

async fn session(home: &std::path::Path, naive: bool) -> Session {
    let db = Session::builder().home(home).threads(2).build().await.unwrap();
    db.register_json("uci", DATA).await.unwrap();
    if naive {
        db.sql("SET murakkab.optimizer.enabled = false").await.unwrap();
        db.sql("SET murakkab.exec.batching = false").await.unwrap();
    }
    db
}

#[allow(unsafe_code)]
fn main() {
    // SAFETY: first thing in main, before any thread starts.
    unsafe { murakkab::init_model_threads(Some(2)) };
    let home = MurakkabHome::from_env();
    if !find_model(&home, MODEL).is_ok_and(|c| c.status(&home) == ModelStatus::Pulled) {
        println!("skipped: run `murakkab models pull {MODEL}`");
        return;
    }
    if !std::path::Path::new(DATA).exists() {
        println!("skipped: run scripts/fetch-data.sh");
        return;
    }
    let rows: usize =
        std::env::var("MURAKKAB_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let scratch = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(home.models_dir(), scratch.path().join("models")).unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let naive_db = session(scratch.path(), true).await;
        classify(&naive_db, 2).await; // load the model
        let (naive, naive_labels) = classify(&naive_db, rows).await;
        let db = session(scratch.path(), false).await;
        let (first, labels) = classify(&db, rows).await;
        let (second, cached_labels) = classify(&db, rows).await;
        assert_eq!(labels, cached_labels, "the cache returns what was computed");
        let agree = labels.iter().zip(&naive_labels).filter(|(a, b)| a == b).count();
        println!("ai_classify, {MODEL}, {rows} UCI sentences, 2 threads:");
        println!("  naive (one row per call)   {naive:8.2} s  {:8.1} rows/s", rows as f64 / naive);
        println!("  batched, first run         {first:8.2} s  {:8.1} rows/s", rows as f64 / first);
        println!(
            "  batched, second run        {second:8.3} s  {:8.1} rows/s",
            rows as f64 / second
        );
        println!("  batching speedup           {:8.1}x", naive / first);
        println!("  cache speedup (2nd vs 1st) {:8.1}x", first / second);
        println!("  batched agrees with naive  {agree}/{rows} rows");
    });
}
