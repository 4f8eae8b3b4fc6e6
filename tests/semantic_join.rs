//! The semantic-join rule against a backend whose answers are known: texts carry a key number,
//! the encoder puts equal keys at similarity 1 and others near 0, and the judge says two
//! records match when their keys are equal. The rule must block (a few candidates per row
//! instead of every pair), return exactly the pairs of the unoptimized cross join, keep its
//! statistics, and leave the join alone when the judge also accepts dissimilar pairs.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use murakkab::arrow::array::{AsArray, RecordBatch};
use murakkab::arrow::datatypes::Int64Type;
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

const JUDGE: &str = "smollm2-135m-instruct";
const ENCODER: &str = "all-minilm-l6-v2";
const DIMENSIONS: usize = 384;

/// Numbers in `text`, in order.
fn numbers(text: &str) -> Vec<usize> {
    text.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect()
}

#[derive(Debug)]
struct Keys {
    home: MurakkabHome,
    /// Also accept one pair in `lenient` whatever the keys (a judge that matches far pairs).
    lenient: Option<usize>,
    /// Pairs judged so far.
    judged: Mutex<usize>,
}

impl Keys {
    fn new(home: &std::path::Path, lenient: Option<usize>) -> Arc<Self> {
        Arc::new(Self { home: MurakkabHome::at(home), lenient, judged: Mutex::new(0) })
    }

    fn judged(&self) -> usize {
        *self.judged.lock().unwrap()
    }
}

impl AiBackend for Keys {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        let id = match (requested.filter(|r| *r != "auto"), task) {
            (Some(id), _) => id,
            (None, Task::Embed) => ENCODER,
            (None, _) => JUDGE,
        };
        builtin_models().into_iter().find(|c| c.id == id).ok_or(format!("unknown model '{id}'"))
    }

    /// A text's key (its first number) picks its direction: equal keys have similarity 1.
    fn embed(&self, _model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        let rows = texts
            .iter()
            .map(|t| {
                let key = numbers(t).first().copied().unwrap_or(0);
                let mut v = vec![0.0f32; DIMENSIONS];
                v[key % DIMENSIONS] = 1.0;
                Ok(v)
            })
            .collect();
        Ok(BatchOutput { rows, truncated: 0 })
    }

    fn score_labels(
        &self,
        _model: &str,
        batch: &ChatBatch,
        _labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        let mut judged = self.judged.lock().unwrap();
        let rows = batch
            .rows
            .iter()
            .map(|r| {
                *judged += 1;
                // "left <key> <row> right <key> <row>"
                let n = numbers(r);
                let same = n.len() >= 4 && n[0] == n[2];
                let lenient = self.lenient.is_some_and(|every| (n[1] + n[3]).is_multiple_of(every));
                Ok(if same || lenient { vec![0.9, 0.1] } else { vec![0.1, 0.9] })
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

async fn session(backend: &Arc<Keys>, home: &std::path::Path, optimizer: bool) -> Session {
    let backend: Arc<dyn AiBackend> = Arc::clone(backend) as Arc<dyn AiBackend>;
    let db = Session::builder()
        .home(home)
        .threads(2)
        .ai_backend(backend)
        .result_cache(false)
        .build()
        .await
        .unwrap();
    // 40 left records with keys 1..40; 120 right records, two per key 1..60.
    db.sql("CREATE VIEW l AS SELECT v AS id, v AS key FROM generate_series(1, 40) AS s(v)")
        .await
        .unwrap();
    db.sql(
        "CREATE VIEW r AS SELECT v AS id, (v % 60) + 1 AS key FROM generate_series(1, 120) AS s(v)",
    )
    .await
    .unwrap();
    if !optimizer {
        db.sql("SET murakkab.optimizer.enabled = false").await.unwrap();
    }
    db
}

const QUERY: &str = "SELECT l.id AS left_id, r.id AS right_id FROM l JOIN r \
    ON ai_filter('left ' || l.key || ' ' || l.id || ' right ' || r.key || ' ' || r.id, \
    'The two records are the same') ORDER BY left_id, right_id";

async fn pairs(db: &Session, sql: &str) -> Vec<(i64, i64)> {
    let batches: Vec<RecordBatch> = db.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let (l, r) =
                (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_primitive::<Int64Type>());
            (0..b.num_rows()).map(|i| (l.value(i), r.value(i))).collect::<Vec<_>>()
        })
        .collect()
}

async fn plan_text(db: &Session, sql: &str) -> String {
    let batches: Vec<RecordBatch> = db.sql(sql).await.unwrap().collect().await.unwrap();
    murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn a_join_on_an_ai_filter_asks_about_the_nearest_candidates_only() {
    let home = tempfile::tempdir().unwrap();
    let naive_backend = Keys::new(home.path(), None);
    let naive = session(&naive_backend, home.path(), false).await;
    let expected = pairs(&naive, QUERY).await;
    assert_eq!(expected.len(), 80, "two right records per left key");
    assert_eq!(naive_backend.judged(), 40 * 120);

    let backend = Keys::new(home.path(), None);
    let db = session(&backend, home.path(), true).await;
    assert_eq!(pairs(&db, QUERY).await, expected);
    // The sample: 16 rows x (16 nearest + 8 farther); then 2 nearest per row for all 40.
    let judged = backend.judged();
    assert!(judged <= 16 * 24 + 40 * 2, "judged {judged} pairs, not {}", 40 * 120);

    // Recorded: EXPLAIN shows the blocking without asking anything.
    let backend = Keys::new(home.path(), None);
    let db = session(&backend, home.path(), true).await;
    let plan = plan_text(&db, &format!("EXPLAIN {QUERY}")).await;
    assert!(
        plan.contains("semantic join (recorded): 2 nearest of 120 per row by embedding similarity"),
        "{plan}"
    );
    assert!(plan.contains("80 pairs instead of 4800"), "{plan}");
    assert!(plan.contains("__rank <= UInt64(2)"), "{plan}");
    assert_eq!(backend.judged(), 0);
}

#[tokio::test]
async fn a_judge_that_accepts_far_pairs_keeps_the_full_join() {
    let home = tempfile::tempdir().unwrap();
    // One pair in seven is accepted whatever the keys: ~14% of all pairs, mostly far apart.
    let backend = Keys::new(home.path(), Some(7));
    let db = session(&backend, home.path(), true).await;
    let got = pairs(&db, QUERY).await;
    let naive_backend = Keys::new(home.path(), Some(7));
    let naive = session(&naive_backend, home.path(), false).await;
    assert_eq!(got, pairs(&naive, QUERY).await);
    let plan = plan_text(&db, &format!("EXPLAIN {QUERY}")).await;
    assert!(plan.contains("semantic join (recorded): not blocked: the 16 nearest hold"), "{plan}");
}

#[tokio::test]
async fn plain_explain_asks_nothing_and_says_when_blocking_is_chosen() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keys::new(home.path(), None);
    let db = session(&backend, home.path(), true).await;
    let plan = plan_text(&db, &format!("EXPLAIN {QUERY}")).await;
    assert!(plan.contains("blocking chosen from a sample when the query runs"), "{plan}");
    assert_eq!(backend.judged(), 0);
}
