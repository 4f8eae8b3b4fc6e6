//! Interactive latency while a batch job runs, with and without the device scheduler's classes.
//!
//! `cargo bench --profile dev --bench priorities` (needs smollm2-135m-instruct pulled). In one
//! process: a batch session labels sentences with `ai_classify` while an interactive session
//! asks for one row every 300 ms. Reported: the interactive latency alone, during the batch job
//! when the job runs at batch priority, and during it when both are interactive (first come,
//! first served); and the batch job's rows/s alone and shared. The result cache is off.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use murakkab::catalog::{ModelStatus, MurakkabHome, find_model};
use murakkab::{Priority, Session};

const MODEL: &str = "smollm2-135m-instruct";
const BATCH_ROWS: usize = 320;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn session(priority: Priority) -> Session {
    Session::builder().priority(priority).result_cache(false).threads(1).build().await.unwrap()
}

/// Seconds to classify `n` distinct sentences at `priority`.
fn batch_job(priority: Priority, n: usize) -> f64 {
    runtime().block_on(async {
        let db = session(priority).await;
        let started = Instant::now();
        let sql = format!(
            "SELECT sum(length(label)) FROM (SELECT ai_classify('Review ' || v || ': the battery \
             life is ' || CASE WHEN v % 2 = 0 THEN 'great' ELSE 'poor' END || ' and shipping took ' \
             || v || ' days.', ['positive', 'negative'], model => '{MODEL}') AS label \
             FROM generate_series(1, {n}) AS s(v))"
        );
        db.sql(&sql).await.unwrap().collect().await.unwrap();
        started.elapsed().as_secs_f64()
    })
}

/// Latencies of `count` one-row interactive queries, one every 300 ms.
fn interactive_latencies(priority: Priority, count: usize, tag: &str) -> Vec<f64> {
    runtime().block_on(async {
        let db = session(priority).await;
        let mut out = Vec::new();
        for i in 0..count {
            let sql = format!(
                "SELECT ai_classify('{tag} question {i}: is this phone any good?', \
                 ['positive', 'negative'], model => '{MODEL}')"
            );
            let started = Instant::now();
            db.sql(&sql).await.unwrap().collect().await.unwrap();
            out.push(started.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        out
    })
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn shared(batch_priority: Priority, tag: &str) -> (Vec<f64>, f64) {
    let job = std::thread::spawn(move || batch_job(batch_priority, BATCH_ROWS));
    std::thread::sleep(Duration::from_millis(500));
    let latencies = interactive_latencies(Priority::Interactive, 12, tag);
    (latencies, job.join().unwrap())
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
    batch_job(Priority::Batch, 16); // load the model once
    let alone = interactive_latencies(Priority::Interactive, 12, "alone");
    let batch_alone = batch_job(Priority::Batch, BATCH_ROWS);
    let (with_classes, batch_shared) = shared(Priority::Batch, "classes");
    let (fifo, batch_fifo) = shared(Priority::Interactive, "fifo");
    println!("interactive one-row ai_classify latency (s), {MODEL}, 2 threads:");
    for (name, l) in [
        ("alone", &alone),
        ("during batch job, job at batch priority", &with_classes),
        ("during batch job, no classes (both interactive)", &fifo),
    ] {
        println!("  {name:50} p50 {:.3}  p95 {:.3}", percentile(l, 0.5), percentile(l, 0.95));
    }
    println!("batch job, {BATCH_ROWS} rows:");
    println!(
        "  alone                                    {:.1} rows/s",
        BATCH_ROWS as f64 / batch_alone
    );
    println!(
        "  shared, at batch priority                {:.1} rows/s",
        BATCH_ROWS as f64 / batch_shared
    );
    println!(
        "  shared, no classes                       {:.1} rows/s",
        BATCH_ROWS as f64 / batch_fifo
    );
}
