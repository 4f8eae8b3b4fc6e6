//! The AI functions' contracts, checked against a scripted backend that misbehaves on purpose:
//! failed rows become NULL with a warning (or an error under `on_error = 'fail'`), and so do a
//! hung call's past `murakkab.model_timeout_s`; identical inputs are computed once, an empty
//! input never reaches the backend, and a large group is summarised by map-reduce.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use murakkab::arrow::array::{Array, AsArray};
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

/// Answers by rules on the row text: rows containing "bad" fail, rows containing "long" are
/// reported as truncated, a batch with a "hang" row blocks until released. Counts every row
/// it is asked about.
#[derive(Debug)]
struct Scripted {
    home: MurakkabHome,
    rows_seen: AtomicUsize,
    complete_calls: AtomicUsize,
    /// The models generation was asked to run, in call order.
    complete_models: std::sync::Mutex<Vec<String>>,
    /// Backend calls of any kind.
    calls: AtomicUsize,
    /// The models label scoring was asked to run, in call order.
    scoring_models: std::sync::Mutex<Vec<String>>,
    /// Time each row takes, like a model would.
    per_row: std::time::Duration,
    /// A batch with a "hang" row blocks until this is set (at most 30 s, so a failing test
    /// still ends); `hung` counts such batches.
    release: std::sync::atomic::AtomicBool,
    hung: AtomicUsize,
}

impl Scripted {
    fn new(home: &std::path::Path) -> Arc<Self> {
        Self::slow(home, std::time::Duration::ZERO)
    }

    fn slow(home: &std::path::Path, per_row: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            home: MurakkabHome::at(home),
            rows_seen: AtomicUsize::new(0),
            complete_calls: AtomicUsize::new(0),
            complete_models: std::sync::Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            scoring_models: std::sync::Mutex::new(Vec::new()),
            per_row,
            release: std::sync::atomic::AtomicBool::new(false),
            hung: AtomicUsize::new(0),
        })
    }

    fn answer<T>(&self, batch: &ChatBatch, f: impl Fn(&str) -> T) -> BatchOutput<T> {
        self.rows_seen.fetch_add(batch.rows.len(), Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.per_row * batch.rows.len() as u32);
        if batch.rows.iter().any(|r| r.contains("hang")) {
            self.hung.fetch_add(1, Ordering::SeqCst);
            let started = std::time::Instant::now();
            while !self.release.load(Ordering::SeqCst)
                && started.elapsed() < std::time::Duration::from_secs(30)
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        BatchOutput {
            truncated: batch.rows.iter().filter(|r| r.contains("long")).count(),
            rows: batch
                .rows
                .iter()
                .map(|r| if r.contains("bad") { Err("garbage output".into()) } else { Ok(f(r)) })
                .collect(),
        }
    }
}

impl AiBackend for Scripted {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        let id = match (requested, task) {
            (Some(id), _) if id != "auto" => id,
            (_, Task::Embed) => "all-minilm-l6-v2",
            _ => "smollm2-135m-instruct",
        };
        builtin_models().into_iter().find(|c| c.id == id).ok_or(format!("unknown model '{id}'"))
    }

    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        let id = if task == Task::Embed { "auto" } else { "qwen2.5-coder-0.5b-instruct" };
        self.resolve_model(Some(id), task)
    }

    fn embed(&self, _model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        let batch = ChatBatch {
            shared: String::new(),
            rows: texts.iter().map(|t| t.to_string()).collect(),
            calibration_row: None,
            whole_labels: false,
        };
        Ok(self.answer(&batch, |t| {
            let mut v = vec![0.0; 384];
            v[t.len() % 384] = 1.0;
            v
        }))
    }

    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        self.scoring_models.lock().unwrap().push(model.to_string());
        // The first label, or the last for a row that says "nope".
        Ok(self.answer(batch, |r| {
            let mut p = vec![0.0; labels.len()];
            p[if r.contains("nope") { labels.len() - 1 } else { 0 }] = 1.0;
            p
        }))
    }

    fn complete(
        &self,
        model: &str,
        batch: &ChatBatch,
        _options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        self.complete_calls.fetch_add(1, Ordering::SeqCst);
        self.complete_models.lock().unwrap().push(model.to_string());
        Ok(self.answer(batch, |r| format!("summary of {} chars", r.len())))
    }

    fn extract(
        &self,
        _model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        Ok(self.answer(batch, |_| {
            fields
                .iter()
                .map(|(_, t)| match t {
                    FieldType::Integer => Some(FieldValue::Integer(7)),
                    _ => None,
                })
                .collect()
        }))
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

/// Runs one statement and collects its rows.
async fn run(db: &Session, sql: &str) -> Vec<murakkab::arrow::array::RecordBatch> {
    db.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn session(backend: &Arc<Scripted>, home: &std::path::Path) -> Session {
    let backend: Arc<dyn AiBackend> = Arc::clone(backend) as Arc<dyn AiBackend>;
    Session::builder().home(home).threads(1).ai_backend(backend).build().await.unwrap()
}

#[tokio::test]
async fn failed_rows_become_null_with_a_warning_and_neighbours_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let batches = run(&db, "SELECT ai_complete(t) AS a FROM (VALUES ('good'), ('bad row'), ('long text'), (NULL)) AS v(t)").await;
    let a = batches[0].column(0).as_string::<i32>();
    assert_eq!(a.value(0), "summary of 4 chars");
    assert!(a.is_null(1), "the failing row is NULL");
    assert!(!a.is_null(2), "a truncated prompt still has an answer");
    assert!(a.is_null(3), "NULL in, NULL out");
    let warnings: Vec<String> = db.take_warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            "ai_complete: 1 row: no usable model output, NULL (first: row 2: garbage output)",
            "ai_complete: 1 row: prompt longer than the model's context, cut in the middle",
        ]
    );
    assert!(db.take_warnings().is_empty(), "taking warnings clears them");
}

#[tokio::test]
async fn on_error_fail_turns_a_failed_row_into_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    run(&db, "SET murakkab.on_error = 'fail'").await;
    let err = db
        .sql("SELECT ai_filter(t, 'is fine') FROM (VALUES ('good'), ('bad')) AS v(t)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "ai_filter: 1 row(s) failed (row 2: garbage output); set murakkab.on_error = 'null'"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn identical_inputs_are_computed_once_and_empty_inputs_never() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    run(&db, "SELECT ai_classify(t, ['a', 'b']) FROM (VALUES ('x'), ('x'), ('y'), ('x')) AS v(t)")
        .await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 2);
    run(&db, "SELECT ai_classify(t, ['a', 'b']) FROM (VALUES ('x')) AS v(t) WHERE false").await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn extract_fills_typed_fields_and_leaves_unknown_ones_null() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let batches = run(&db, r#"SELECT ai_extract('x', '{"n": "int", "s": "text"}')['n'] AS n, ai_extract('x', '{"n": "int", "s": "text"}')['s'] AS s"#).await;
    let n = batches[0].column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>();
    assert_eq!(n.value(0), 7);
    assert!(batches[0].column(1).is_null(0));
}

#[tokio::test]
async fn free_text_at_auto_runs_the_reference_model_and_a_named_model_runs_as_named() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    // The optimizer is on: it has no agreement to measure free text by, so `auto` must not
    // become a cheaper model unchecked.
    run(&db, "SELECT ai_complete(t) FROM (VALUES ('x'), ('y')) AS v(t)").await;
    assert_eq!(*backend.complete_models.lock().unwrap(), ["qwen2.5-coder-0.5b-instruct"]);
    backend.complete_models.lock().unwrap().clear();
    run(&db, "SELECT ai_complete(t, 'smollm2-135m-instruct') FROM (VALUES ('z')) AS v(t)").await;
    assert_eq!(*backend.complete_models.lock().unwrap(), ["smollm2-135m-instruct"]);
}

#[tokio::test]
async fn a_large_group_is_summarised_by_map_reduce() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    // 200 texts of 12 words against a 400-token context: several chunks, then a reduce step.
    let batches = run(&db, "SELECT ai_summarize_agg('one two three four five six seven eight nine ten eleven ' || v) FROM generate_series(1, 200) AS s(v)").await;
    let summary = batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(summary.starts_with("summary of"), "{summary}");
    let calls = backend.complete_calls.load(Ordering::SeqCst);
    assert!(calls >= 2, "map and reduce need at least two generation calls, made {calls}");
    assert!(backend.rows_seen.load(Ordering::SeqCst) > 2, "the map step has several chunks");
}

#[tokio::test]
async fn every_group_is_summarised_in_one_batched_call_and_the_naive_plan_asks_per_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query = "SELECT g, ai_summarize_agg(t) AS s FROM (VALUES (1, 'a b'), (2, 'c d e'), \
                 (1, 'f'), (3, NULL), (4, 'g')) AS v(g, t) GROUP BY g ORDER BY g";
    let summaries = |batches: &[murakkab::arrow::array::RecordBatch]| -> Vec<Option<String>> {
        let s = batches[0].column(1).as_string::<i32>();
        (0..s.len()).map(|i| s.is_valid(i).then(|| s.value(i).to_string())).collect()
    };
    let batched = summaries(&run(&db, query).await);
    assert_eq!(backend.complete_calls.load(Ordering::SeqCst), 1, "three groups, one call");
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 3);
    assert!(batched[2].is_none(), "a group with no text is NULL");
    assert_ne!(batched[0], batched[1], "each group gets its own summary");
    // Each group's summary is the one it gets alone.
    let alone = run(&db, "SELECT ai_summarize_agg(t) FROM (VALUES ('a b'), ('f')) AS v(t)").await;
    assert_eq!(Some(alone[0].column(0).as_string::<i32>().value(0).to_string()), batched[0]);
    // `auto` is the reference, the largest generating model: nothing checks a summary's quality
    // on a cheaper one.
    assert_eq!(*backend.complete_models.lock().unwrap(), ["qwen2.5-coder-0.5b-instruct"]);
    let plan = format!("{:?}", run(&db, &format!("EXPLAIN {query}")).await);
    assert!(plan.contains("[model: qwen2.5-coder-0.5b-instruct, groups batched]"), "{plan}");

    // The naive baseline: the same model, and every chunk is its own call.
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    run(&db, "SET murakkab.exec.batching = false").await;
    backend.complete_models.lock().unwrap().clear();
    let plan = format!("{:?}", run(&db, &format!("EXPLAIN {query}")).await);
    assert!(plan.contains("[model: qwen2.5-coder-0.5b-instruct, one chunk per call]"), "{plan}");
    let naive = summaries(&run(&db, query).await);
    assert_eq!(naive, batched, "the scripted backend answers by prompt, whatever the model");
    assert_eq!(
        *backend.complete_models.lock().unwrap(),
        ["qwen2.5-coder-0.5b-instruct"; 3],
        "one call per group's chunk, on the largest model"
    );
}

#[tokio::test]
async fn the_same_query_twice_makes_no_model_calls_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let query = "SELECT ai_classify(t, ['a', 'b']), ai_complete(t), ai_embed(t), \
                 ai_extract(t, '{\"n\": \"int\"}') FROM (VALUES ('x'), ('y'), ('bad')) AS v(t)";
    let db = session(&backend, dir.path()).await;
    run(&db, query).await;
    let first = backend.rows_seen.load(Ordering::SeqCst);
    assert_eq!(first, 12, "four functions over three rows");
    // A new session on the same home: the answers come from disk. Only the failing row (never
    // cached) is asked again, once per function.
    let db = session(&backend, dir.path()).await;
    run(&db, query).await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst) - first, 4);
    // Without the cache every row goes to the model again.
    let backend_dyn: Arc<dyn AiBackend> = Arc::clone(&backend) as Arc<dyn AiBackend>;
    let db = Session::builder()
        .home(dir.path())
        .ai_backend(backend_dyn)
        .result_cache(false)
        .build()
        .await
        .unwrap();
    run(&db, query).await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst) - first, 16);
}

#[tokio::test]
async fn naive_mode_calls_the_largest_model_once_per_row_with_no_dedup_or_cache() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query =
        "SELECT ai_classify(t, ['a', 'b']) FROM (VALUES ('x'), ('x'), ('y'), ('x')) AS v(t)";
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    run(&db, "SET murakkab.exec.batching = false").await;
    for round in 1..=2 {
        run(&db, query).await;
        assert_eq!(backend.calls.load(Ordering::SeqCst), 4 * round, "one call per row, no cache");
        assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 4 * round, "no dedup");
    }
    assert!(
        backend.scoring_models.lock().unwrap().iter().all(|m| m == "qwen2.5-coder-0.5b-instruct"),
        "auto means the largest pulled model with the optimizer off"
    );
    // Batching on again: two distinct rows in one call. Four rows are too few for a sample to
    // pay off, so the optimizer keeps the reference model. The naive runs wrote nothing to the
    // cache, so both rows reach the model.
    run(&db, "SET murakkab.exec.batching = true").await;
    run(&db, "SET murakkab.optimizer.enabled = true").await;
    run(&db, query).await;
    assert_eq!(backend.calls.load(Ordering::SeqCst), 9);
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 10);
    assert_eq!(
        backend.scoring_models.lock().unwrap().last().unwrap(),
        "qwen2.5-coder-0.5b-instruct"
    );
}

/// The rows of a two-column (INT, TEXT) result as `id:text` strings, NULL as `-`.
fn pairs(batches: &[murakkab::arrow::array::RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<murakkab::arrow::datatypes::Int32Type>();
        let texts = b.column(1);
        for i in 0..b.num_rows() {
            let text = if texts.is_null(i) {
                "-".to_string()
            } else {
                murakkab::arrow::util::display::array_value_to_string(texts, i).unwrap()
            };
            out.push(format!("{}:{text}", ids.value(i)));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn ai_calls_in_join_conditions_are_lifted_and_keep_the_join_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    run(&db, "CREATE TABLE a (id INT, x TEXT) AS VALUES (1, 'apple'), (2, 'pear'), (3, 'plum')")
        .await;
    run(&db, "CREATE TABLE b (a_id INT, y TEXT) AS VALUES (1, 'red'), (2, 'nope'), (3, 'green')")
        .await;

    // A predicate over both inputs of an inner join: a filter above the join, over a map.
    let both = "SELECT a.id, b.y FROM a JOIN b ON a.id = b.a_id AND ai_filter(a.x || ' ' || b.y, 'matches')";
    let plan = explain(&db, both).await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let (filter, map, join) =
        (at("Filter: __ai_"), at("AiMap: ai_filter"), at("Inner Join: a.id = b.a_id"));
    assert!(filter.is_some() && map.is_some() && join.is_some(), "{plan}");
    assert!(filter < map && map < join, "filter above map above join: {plan}");
    assert!(!plan.contains("Filter: ai_filter"), "no AI call left in place: {plan}");
    assert_eq!(pairs(&run(&db, both).await), ["1:red", "3:green"]);

    // An AI-derived equi-join key is computed on its side; the join stays a hash join.
    let key = "SELECT a.id, b.y FROM a JOIN b ON ai_classify(a.x, ['red', 'green']) = b.y";
    let plan = explain(&db, key).await;
    assert!(plan.contains("HashJoinExec"), "{plan}");
    assert!(plan.contains("AiMapExec"), "{plan}");
    assert_eq!(pairs(&run(&db, key).await), ["1:red", "2:red", "3:red"]);

    // Outer joins keep their unmatched rows: a one-sided call is precomputed on its input...
    let one_sided =
        "SELECT a.id, b.y FROM a LEFT JOIN b ON a.id = b.a_id AND ai_filter(b.y, 'is a colour')";
    assert!(explain(&db, one_sided).await.contains("AiMap: ai_filter(b.y"));
    assert_eq!(pairs(&run(&db, one_sided).await), ["1:red", "2:-", "3:green"]);
    // ...and a call over both inputs stays in the condition, evaluated as a plain function.
    let outer =
        "SELECT a.id, b.y FROM a LEFT JOIN b ON a.id = b.a_id AND ai_filter(a.x || b.y, 'ok')";
    assert_eq!(pairs(&run(&db, outer).await), ["1:red", "2:-", "3:green"]);
}

#[tokio::test]
async fn order_by_limit_on_plain_columns_reaches_the_model_with_k_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    run(&db, "CREATE TABLE t AS SELECT v AS id, 'row ' || v AS body FROM generate_series(1, 500) AS s(v)")
        .await;
    let top = "SELECT id, ai_complete(body) AS answer FROM t ORDER BY id DESC LIMIT 5";
    let plan = explain(&db, top).await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let map = lines.iter().position(|l| l.starts_with("AiMap:")).unwrap();
    assert!(lines[map + 1].starts_with("Sort: t.id DESC NULLS FIRST, fetch=5"), "{plan}");
    let batches = run(&db, top).await;
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>().values().to_vec()
        })
        .collect();
    assert_eq!(ids, [500, 499, 498, 497, 496]);
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 5, "only the top five reach the model");

    // Ordering by the AI column needs every row's answer: nothing moves.
    let by_answer = "SELECT id, ai_complete(body) AS answer FROM t ORDER BY answer LIMIT 5";
    let plan = explain(&db, by_answer).await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let map = lines.iter().position(|l| l.starts_with("AiMap:")).unwrap();
    assert!(!lines[map + 1].starts_with("Sort:"), "{plan}");
    // With the optimizer off (the naive baseline) the rule does not apply.
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    let plan = explain(&db, top).await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let map = lines.iter().position(|l| l.starts_with("AiMap:")).unwrap();
    assert!(!lines[map + 1].starts_with("Sort:"), "{plan}");
}

async fn explain(db: &Session, sql: &str) -> String {
    let batches = run(db, &format!("EXPLAIN {sql}")).await;
    let plans = batches[0].column(1).as_string::<i32>();
    (0..plans.len()).map(|i| plans.value(i)).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn ai_calls_become_ai_map_nodes_below_which_cheap_filters_move() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    run(&db, "CREATE TABLE t (id INT, body TEXT) AS VALUES (1, 'a'), (5, 'b')").await;
    let plan = explain(
        &db,
        "SELECT id, ai_classify(body, ['x', 'y']) AS label FROM t \
         WHERE id > 3 AND ai_filter(body, 'is fine')",
    )
    .await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {plan}"))
    };
    // Top to bottom: the classify map, the AI filter over its map, the cheap filter below both.
    assert!(position("AiMap: ai_classify") < position("Filter: __ai_0"));
    assert!(position("Filter: __ai_0") < position("AiMap: ai_filter"));
    assert!(position("AiMap: ai_filter") < position("Filter: t.id > Int32(3)"));
    assert!(plan.contains("AiMapExec: chunk_rows=16..256"), "{plan}");
    // Nested calls are lifted one level at a time; the names of output columns are kept.
    let batches = run(&db, "SELECT ai_complete(ai_complete(body)) AS twice, upper(ai_complete(body)) FROM t ORDER BY 1").await;
    let schema = batches[0].schema();
    assert_eq!(schema.field(0).name(), "twice");
    assert_eq!(schema.field(1).name(), "upper(ai_complete(t.body))");
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "summary of 18 chars");
}

#[tokio::test]
async fn limit_stops_the_model_after_a_chunk_or_two() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let rows =
        run(&db, "SELECT ai_complete('row ' || v) FROM generate_series(1, 2000) AS s(v) LIMIT 5")
            .await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    let asked = backend.rows_seen.load(Ordering::SeqCst);
    // The map is one row in, one row out, so the limit moves below it: 5 rows asked (measured).
    assert!(asked <= 16, "LIMIT 5 over 2,000 rows asked the model about {asked} rows");
    let rows = run(
        &db,
        "SELECT v FROM generate_series(1, 2000) AS s(v) WHERE ai_filter('row ' || v, 'ok') LIMIT 3",
    )
    .await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let asked = backend.rows_seen.load(Ordering::SeqCst) - asked;
    // Every row passes here, so the first chunk of 16 satisfies the limit (16 asked, measured);
    // a second partition may have one more chunk in flight.
    assert!(asked <= 32, "LIMIT 3 over an AI filter asked the model about {asked} rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_stops_the_model_work() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    // 10 ms per row: a 16-row chunk takes 160 ms; the whole query would take 20 s.
    let backend = Scripted::slow(dir.path(), std::time::Duration::from_millis(10));
    let db = session(&backend, dir.path()).await;
    let mut stream = db
        .sql("SELECT ai_complete('row ' || v) FROM generate_series(1, 2000) AS s(v)")
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    let dropped = std::time::Instant::now();
    drop(stream);
    // Work already running finishes (one chunk per partition); nothing new starts after that.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after_settling = backend.rows_seen.load(Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), after_settling, "work continued");
    assert!(after_settling <= 4 * 16, "{after_settling} rows asked before the drop settled");
    assert!(dropped.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn explain_analyze_reports_the_ai_operators_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query = "SELECT ai_complete(t) FROM (VALUES ('a'), ('b'), ('c'), ('a'), ('bad')) AS v(t)";
    let analyzed = explain(&db, &format!("ANALYZE {query}")).await;
    let line = analyzed.lines().find(|l| l.contains("AiMapExec")).unwrap_or_default();
    // The scripted backend reports no model calls of its own (the real runtime counts them).
    for metric in ["output_rows=5", "chunks=1", "cache_hits=0", "dedup_hits=1", "warned_rows=1"] {
        assert!(line.contains(metric), "{metric} missing: {line}");
    }
    run(&db, query).await;
    let analyzed = explain(&db, &format!("ANALYZE {query}")).await;
    let line = analyzed.lines().find(|l| l.contains("AiMapExec")).unwrap_or_default();
    assert!(line.contains("cache_hits=3"), "answers come from the cache the third time: {line}");
}

#[tokio::test]
async fn ai_calls_in_aggregates_run_in_a_map_below_them_and_keep_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query = "SELECT ai_classify(t, ['x', 'y']), count(*) AS n, \
                 sum(CASE WHEN ai_filter(t, 'ok') THEN 1 ELSE 0 END) AS passed \
                 FROM (VALUES ('a'), ('b'), ('a')) AS v(t) GROUP BY ai_classify(t, ['x', 'y'])";
    let plan = explain(&db, query).await;
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let aggregate = lines.iter().position(|l| l.starts_with("Aggregate:")).unwrap();
    let map = lines.iter().position(|l| l.starts_with("AiMap:")).unwrap();
    assert!(aggregate < map, "{plan}");
    let batches = run(&db, query).await;
    let schema = batches[0].schema();
    assert!(schema.field(0).name().starts_with("ai_classify("), "{schema:?}");
    assert_eq!(schema.field(1).name(), "n");
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "x");
    assert_eq!(
        batches[0].column(1).as_primitive::<murakkab::arrow::datatypes::Int64Type>().value(0),
        3
    );
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 4, "two distinct texts, two functions");
}

#[tokio::test]
async fn a_second_ai_predicate_sees_only_the_rows_that_passed_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query = "SELECT t FROM (VALUES ('a'), ('nope b'), ('c nope'), ('d')) AS v(t) \
                 WHERE ai_filter(t, 'one') AND ai_filter(t, 'two') AND t <> 'zzz'";
    let plan = format!("{:?}", run(&db, &format!("EXPLAIN {query}")).await);
    let rows = run(&db, query).await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    // 4 rows asked the first question, the 2 that passed asked the second.
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 6, "{plan}");
    // The naive plan asks both questions of every row.
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    run(&db, "SET murakkab.exec.batching = false").await;
    run(&db, query).await;
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 6 + 8);
}

/// A call written in WHERE, in SELECT and in ORDER BY is one map, answering each row once.
#[tokio::test]
async fn a_call_repeated_in_where_select_and_order_by_is_answered_once_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session(&backend, dir.path()).await;
    let query = "SELECT t, ai_classify(t, ['yes', 'no']) AS c \
                 FROM (VALUES ('a'), ('nope b'), ('c'), ('nope d'), ('e'), ('f')) AS v(t) \
                 WHERE ai_classify(t, ['yes', 'no']) = 'yes' OR t LIKE 'nope d%' \
                 ORDER BY ai_classify(t, ['yes', 'no']) DESC, t";
    let plan = explain(&db, query).await;
    assert_eq!(plan.matches("AiMap:").count(), 1, "{plan}");
    assert!(!plan.contains("Sort: ai_classify"), "the sort key is the map's column: {plan}");
    let text = |batches: Vec<murakkab::arrow::array::RecordBatch>| {
        murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
    };
    let rows = text(run(&db, query).await);
    let expected = [
        "| a      | yes |",
        "| c      | yes |",
        "| e      | yes |",
        "| f      | yes |",
        "| nope d | no  |",
    ];
    let body: Vec<&str> = rows.lines().skip(3).filter(|l| l.starts_with("| ")).collect();
    assert_eq!(body, expected, "{rows}");
    assert_eq!(backend.rows_seen.load(Ordering::SeqCst), 6, "one answer per row: {plan}");
    // The naive baseline computes each of the three calls as written.
    run(&db, "SET murakkab.optimizer.enabled = false").await;
    run(&db, "SET murakkab.exec.batching = false").await;
    assert_eq!(text(run(&db, query).await), rows);
    assert!(backend.rows_seen.load(Ordering::SeqCst) >= 6 + 6 + 5, "naive: every call runs");
}

/// Rewrites that must not change results (pushdown, conjunct splitting, top-k below the map,
/// dedup, batching) give the same rows with the optimizer on and in the naive baseline.
#[tokio::test]
async fn exact_rewrites_return_the_same_rows_with_the_optimizer_on_and_off() {
    let queries = [
        "SELECT v FROM generate_series(1, 60) AS s(v) \
         WHERE ai_filter('row ' || v || CASE WHEN v % 3 = 0 THEN ' nope' ELSE '' END, 'ok') \
         AND v > 7 AND ai_filter('x' || (v % 7) || CASE WHEN v % 5 = 0 THEN ' nope' ELSE '' END, 'two') \
         ORDER BY v",
        "SELECT v, ai_classify('item ' || v || CASE WHEN v % 4 = 0 THEN ' nope' ELSE '' END, ['a', 'b']) AS c \
         FROM generate_series(1, 50) AS s(v) ORDER BY v LIMIT 7",
        "SELECT ai_classify(CASE WHEN v % 2 = 0 THEN 'nope' ELSE 'fine' END, ['a', 'b']) AS c, count(*) AS n \
         FROM generate_series(1, 40) AS s(v) GROUP BY 1 ORDER BY 1",
        "SELECT a.v, b.w FROM generate_series(1, 12) AS a(v) JOIN generate_series(1, 12) AS b(w) \
         ON a.v = b.w AND ai_filter('pair ' || a.v || CASE WHEN b.w % 3 = 0 THEN ' nope' ELSE '' END, 'match') \
         ORDER BY a.v",
        // The same call in WHERE, SELECT and ORDER BY, through a subquery alias (computed once).
        "SELECT s.v, ai_classify(s.w, ['a', 'b']) AS c FROM \
         (SELECT v, 'item ' || v || CASE WHEN v % 3 = 0 THEN ' nope' ELSE '' END AS w \
          FROM generate_series(1, 30) AS g(v) WHERE ai_classify('item ' || v || CASE WHEN v % 3 = 0 THEN ' nope' ELSE '' END, ['a', 'b']) = 'a' OR v > 20) AS s \
         ORDER BY ai_classify(s.w, ['a', 'b']), s.v",
    ];
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let optimized = session(&backend, dir.path()).await;
    let naive_dir = tempfile::tempdir().unwrap();
    let naive = session(&backend, naive_dir.path()).await;
    run(&naive, "SET murakkab.optimizer.enabled = false").await;
    run(&naive, "SET murakkab.exec.batching = false").await;
    let text = |batches: Vec<murakkab::arrow::array::RecordBatch>| {
        murakkab::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
    };
    for query in queries {
        let on = text(run(&optimized, query).await);
        let off = text(run(&naive, query).await);
        assert_eq!(on, off, "{query}");
        assert!(on.lines().count() > 4, "the query returns rows: {on}");
    }
}

/// 40 rows in chunks of 16 (a timeout keeps chunks at 16); row 20 (second chunk) hangs the model.
const HANGING_QUERY: &str = "SELECT v, ai_complete(CASE WHEN v = 20 THEN 'hang ' ELSE 'row ' END || v) AS a \
                             FROM generate_series(1, 40) AS s(v) ORDER BY v";

async fn session_with_timeout(backend: &Arc<Scripted>, home: &std::path::Path) -> Session {
    let db = session(backend, home).await;
    run(&db, "SET murakkab.model_timeout_s = 0.5").await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_becomes_null_with_a_warning_and_other_chunks_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(dir.path());
    let db = session_with_timeout(&backend, dir.path()).await;
    let started = std::time::Instant::now();
    let batches = run(&db, HANGING_QUERY).await;
    let elapsed = started.elapsed();
    backend.release.store(true, Ordering::SeqCst);
    assert_eq!(backend.hung.load(Ordering::SeqCst), 1);
    // The hang lasts 30 s unless released; the query did not wait for it.
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
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
    let backend = Scripted::new(dir.path());
    let db = session_with_timeout(&backend, dir.path()).await;
    run(&db, "SET murakkab.on_error = 'fail'").await;
    let err = db.sql(HANGING_QUERY).await.unwrap().collect().await.unwrap_err().to_string();
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
