//! A backend whose answers are known, shared by the optimizer's integration tests:
//! `ai_filter` passes a row when the row's text contains the condition's last word, embeddings
//! order the notes by their number, and every call is counted, so a test can say how many rows
//! reached the model. Its sessions read a view of 1,000 notes: every one names a city, one in
//! ten (ids ending in 3) mentions rain.

#![allow(dead_code)] // each test file uses its own part of it

use std::sync::{Arc, Mutex};

use murakkab::arrow::array::{AsArray, RecordBatch};
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

const MODEL: &str = "smollm2-135m-instruct";
const ENCODER: &str = "all-minilm-l6-v2";

/// One model that always knows: a row passes when it contains the condition's last word.
#[derive(Debug)]
pub struct Keywords {
    home: MurakkabHome,
    /// (condition's keyword, rows) of every scoring call; ("embed", rows) of every embedding
    /// call.
    calls: Mutex<Vec<(String, usize)>>,
}

impl Keywords {
    pub fn new(home: &std::path::Path) -> Arc<Self> {
        Arc::new(Self { home: MurakkabHome::at(home), calls: Mutex::new(Vec::new()) })
    }

    /// Rows scored so far for the condition ending in `keyword`.
    pub fn rows(&self, keyword: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(k, _)| k == keyword).map(|(_, n)| n).sum()
    }
}

/// The last word of a filter's condition: its first label, the statement that it holds (a
/// classify, whose labels are not statements, gets "", which every row holds).
fn keyword(batch: &ChatBatch, labels: &[String]) -> String {
    let condition = if batch.whole_labels { labels.first().map_or("", String::as_str) } else { "" };
    let word = condition.split_whitespace().last().unwrap_or_default();
    word.trim_matches(|c: char| !c.is_alphanumeric()).to_string()
}

impl AiBackend for Keywords {
    fn resolve_model(&self, _requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        let id = if task == Task::Embed { ENCODER } else { MODEL };
        builtin_models().into_iter().find(|c| c.id == id).ok_or("no model".into())
    }

    /// `[1, v / 100, 0, ...]` scaled to unit length for a text that holds `note v`, `[1, 0]` for any
    /// other: the similarity to `'note 0'` falls as the note's number grows.
    fn embed(&self, _model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        self.calls.lock().unwrap().push(("embed".to_string(), texts.len()));
        let number = |t: &str| {
            let v = t.split("note ").nth(1)?.split_whitespace().next()?.parse::<f32>().ok()?;
            Some(v / 100.0)
        };
        // As wide as the encoder's card says (the backend checks it), zeros after two.
        let width = self.resolve_model(None, Task::Embed)?.embedding_dim.unwrap_or(2);
        let rows = texts
            .iter()
            .map(|t| {
                let f = number(t).unwrap_or(0.0);
                let norm = (1.0 + f * f).sqrt();
                let mut v = vec![0.0; width.max(2)];
                v[0] = 1.0 / norm;
                v[1] = f / norm;
                Ok(v)
            })
            .collect();
        Ok(BatchOutput { rows, truncated: 0 })
    }

    fn score_labels(
        &self,
        _model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        let word = keyword(batch, labels);
        self.calls.lock().unwrap().push((word.clone(), batch.rows.len()));
        // The first label when the row holds the word (any row, for a classify), else the last.
        let n = labels.len().max(2);
        let sure = |at: usize| {
            let mut p = vec![0.1 / (n - 1) as f32; n];
            p[at] = 0.9;
            p
        };
        let rows = batch
            .rows
            .iter()
            .map(|r| Ok(sure(if r.contains(&word) { 0 } else { n - 1 })))
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

    fn extract(
        &self,
        _model: &str,
        _batch: &ChatBatch,
        _fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        Err("no extraction here".into())
    }

    fn count_tokens(&self, _model: &str, text: &str) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    fn context_length(&self, _model: &str) -> Result<usize, String> {
        Ok(400)
    }

    fn home(&self) -> &MurakkabHome {
        &self.home
    }
}

pub async fn session(backend: &Arc<Keywords>, home: &std::path::Path, optimizer: bool) -> Session {
    session_with(backend, home, optimizer, false).await
}

/// [`session`], with the result cache (under `home`) between the functions and the backend when
/// `result_cache` is set.
pub async fn session_with(
    backend: &Arc<Keywords>,
    home: &std::path::Path,
    optimizer: bool,
    result_cache: bool,
) -> Session {
    let backend: Arc<dyn AiBackend> = Arc::clone(backend) as Arc<dyn AiBackend>;
    let db = Session::builder()
        .home(home)
        .threads(2)
        .ai_backend(backend)
        .result_cache(result_cache)
        .build()
        .await
        .unwrap();
    // 1,000 notes: every one names a city, one in ten mentions rain.
    db.sql(
        "CREATE VIEW notes AS SELECT v AS id, 'note ' || v || ' from the city' || \
         CASE WHEN v % 10 = 3 THEN ', with rain' ELSE '' END AS text \
         FROM generate_series(1, 1000) AS s(v)",
    )
    .await
    .unwrap();
    if !optimizer {
        db.sql("SET murakkab.optimizer.enabled = false").await.unwrap();
    }
    db
}

pub async fn run(db: &Session, sql: &str) -> Vec<RecordBatch> {
    db.sql(sql).await.unwrap().collect().await.unwrap()
}

pub async fn plan_text(db: &Session, sql: &str) -> String {
    let batches = run(db, sql).await;
    murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

pub fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>();
            (0..c.len()).map(|i| c.value(i)).collect::<Vec<_>>()
        })
        .collect()
}
