//! `murakkab.model_timeout_s`: a hung model call turns into NULL with a warning (or an error
//! under `on_error = 'fail'`) and the query goes on; the other chunks are answered.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use murakkab::arrow::array::{Array, AsArray};
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

/// Answers at once, except that a batch with a "hang" row blocks until released (at most 30 s,
/// so a failing test still ends).
#[derive(Debug)]
struct Hanging {
    home: MurakkabHome,
    release: AtomicBool,
    hung: AtomicUsize,
}

impl AiBackend for Hanging {
    fn resolve_model(&self, requested: Option<&str>, _task: Task) -> Result<ModelCard, String> {
        let id = requested.filter(|r| *r != "auto").unwrap_or("smollm2-135m-instruct");
        builtin_models().into_iter().find(|c| c.id == id).ok_or(format!("unknown model '{id}'"))
    }

    fn embed(&self, _model: &str, _texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        Err("not used".into())
    }

    fn score_labels(
        &self,
        _model: &str,
        _batch: &ChatBatch,
        _labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        Err("not used".into())
    }

    fn complete(
        &self,
        _model: &str,
        batch: &ChatBatch,
        _options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        if batch.rows.iter().any(|r| r.contains("hang")) {
            self.hung.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            while !self.release.load(Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(BatchOutput {
            rows: batch.rows.iter().map(|_| Ok("answer".into())).collect(),
            truncated: 0,
        })
    }

    fn extract(
        &self,
        _model: &str,
        _batch: &ChatBatch,
        _fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        Err("not used".into())
    }

    fn count_tokens(&self, _model: &str, text: &str) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    fn context_length(&self, _model: &str) -> Result<usize, String> {
        Ok(4096)
    }

    fn home(&self) -> &MurakkabHome {
        &self.home
    }
}

async fn setup(home: &std::path::Path) -> (Arc<Hanging>, Session) {
    let backend = Arc::new(Hanging {
        home: MurakkabHome::at(home),
        release: AtomicBool::new(false),
        hung: AtomicUsize::new(0),
    });
    let dyn_backend: Arc<dyn AiBackend> = Arc::clone(&backend) as Arc<dyn AiBackend>;
    let db =
        Session::builder().home(home).threads(1).ai_backend(dyn_backend).build().await.unwrap();
    db.sql("SET murakkab.model_timeout_s = 0.5").await.unwrap().collect().await.unwrap();
    (backend, db)
}

/// 40 rows in chunks of 16; row 20 (second chunk) hangs the model.
const QUERY: &str = "SELECT v, ai_complete(CASE WHEN v = 20 THEN 'hang ' ELSE 'row ' END || v) AS a \
                     FROM generate_series(1, 40) AS s(v) ORDER BY v";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_becomes_null_with_a_warning_and_other_chunks_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, db) = setup(dir.path()).await;
    let started = Instant::now();
    let batches = db.sql(QUERY).await.unwrap().collect().await.unwrap();
    let elapsed = started.elapsed();
    backend.release.store(true, Ordering::SeqCst);
    assert_eq!(backend.hung.load(Ordering::SeqCst), 1);
    // The hang lasts 30 s unless released; the query did not wait for it.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let mut nulls = Vec::new();
    for batch in &batches {
        let v = batch.column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>();
        let a = batch.column(1);
        nulls.extend((0..batch.num_rows()).filter(|&i| a.is_null(i)).map(|i| v.value(i)));
    }
    assert_eq!(nulls, (17..=32).collect::<Vec<i64>>(), "the hung chunk's rows, only");
    let warnings: Vec<String> = db.take_warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["ai_complete: 16 rows: model call timed out after 0.5 s (murakkab.model_timeout_s), NULL"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_on_error_fail_a_timeout_fails_the_query_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, db) = setup(dir.path()).await;
    db.sql("SET murakkab.on_error = 'fail'").await.unwrap().collect().await.unwrap();
    let err = db.sql(QUERY).await.unwrap().collect().await.unwrap_err().to_string();
    backend.release.store(true, Ordering::SeqCst);
    assert!(
        err.contains(
            "ai_complete: model work on 16 row(s) took longer than murakkab.model_timeout_s = 0.5 s"
        ),
        "{err}"
    );
    let err = db.sql("SET murakkab.model_timeout_s = -1").await.unwrap_err().to_string();
    assert!(err.contains("invalid value '-1' for murakkab.model_timeout_s"), "{err}");
}
