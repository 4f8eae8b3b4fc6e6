//! Bad model output: a backend that answers with NaN and negative probabilities, vectors of the
//! wrong length, empty, enormous and looping text, values of the wrong type and batches with a
//! row missing. Every AI function must survive all of it: no panic, no failed query, the
//! affected rows NULL with a warning, the well-behaved rows in the same batch answered.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use murakkab::arrow::array::{Array, AsArray, RecordBatch};
use murakkab::arrow::compute::cast;
use murakkab::arrow::datatypes::DataType;
use murakkab::catalog::{ModelCard, MurakkabHome, Task, builtin_models};
use murakkab::{
    AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue, Session,
};

/// The row texts, each naming how the backend misbehaves on it; `fine` rows get good answers.
const ROWS: &[&str] = &[
    "fine one",
    "nan",
    "short",
    "negative",
    "zero",
    "infinite",
    "empty",
    "huge",
    "loop",
    "wrongtype",
    "fine two",
];

/// MiniLM's width, as its card says.
const WIDTH: usize = 384;

#[derive(Debug)]
struct Garbage {
    home: MurakkabHome,
}

/// Which misbehaviour a row asks for (its text sits inside the prompt).
fn kind(row: &str) -> &'static str {
    ROWS.iter().rev().find(|k| row.contains(*k)).copied().unwrap_or("fine")
}

/// A batch containing a "drop" row is answered with one row fewer than asked.
fn shape<T>(rows: &[String], answer: impl Fn(&str) -> T) -> BatchOutput<T> {
    let mut out: Vec<Result<T, String>> = rows.iter().map(|r| Ok(answer(kind(r)))).collect();
    if rows.iter().any(|r| r.contains("drop")) {
        out.pop();
    }
    BatchOutput { rows: out, truncated: 0 }
}

impl AiBackend for Garbage {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        let id = match (requested, task) {
            (Some(id), _) if id != "auto" => id,
            (_, Task::Embed) => "all-minilm-l6-v2",
            _ => "smollm2-135m-instruct",
        };
        builtin_models().into_iter().find(|c| c.id == id).ok_or(format!("unknown model '{id}'"))
    }

    fn embed(&self, _model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        let rows: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        Ok(shape(&rows, |k| match k {
            "nan" => vec![f32::NAN; WIDTH],
            "short" => vec![1.0; 3],
            "zero" => vec![0.0; WIDTH],
            "infinite" => vec![f32::INFINITY; WIDTH],
            "empty" => Vec::new(),
            "huge" => vec![5.0; WIDTH], // not unit length: renormalised, not refused
            _ => {
                let mut v = vec![0.0; WIDTH];
                v[k.len() % WIDTH] = 1.0;
                v
            }
        }))
    }

    fn score_labels(
        &self,
        _model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        let n = labels.len();
        Ok(shape(&batch.rows, |k| match k {
            "nan" => vec![f32::NAN; n],
            "short" => vec![1.0],
            "negative" => (0..n).map(|i| if i == 0 { -1.0 } else { 2.0 }).collect(),
            "zero" => vec![0.0; n],
            "infinite" => vec![f32::INFINITY; n],
            "empty" => Vec::new(),
            _ => (0..n).map(|i| if i == 0 { 0.9 } else { 0.1 / (n - 1) as f32 }).collect(),
        }))
    }

    fn complete(
        &self,
        _model: &str,
        batch: &ChatBatch,
        options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        Ok(shape(&batch.rows, |k| match k {
            "empty" => String::new(),
            "huge" => "x".repeat(1 << 20),
            "loop" => format!("The answer is{}", " the answer is".repeat(options.max_tokens)),
            "nan" => "\u{0}\u{7}\u{1b}[31m{\"truncated\": ".into(), // odd but a string: kept
            _ => "a fine summary".into(),
        }))
    }

    fn extract(
        &self,
        _model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        Ok(shape(&batch.rows, |k| match k {
            "wrongtype" => fields.iter().map(|_| Some(FieldValue::Text("seven".into()))).collect(),
            "short" => Vec::new(),
            "nan" => fields.iter().map(|_| Some(FieldValue::Float(f64::NAN))).collect(),
            _ => fields
                .iter()
                .map(|(_, t)| match t {
                    FieldType::Integer => Some(FieldValue::Integer(7)),
                    FieldType::Float => Some(FieldValue::Float(2.5)),
                    FieldType::Boolean => Some(FieldValue::Boolean(true)),
                    FieldType::Text => Some(FieldValue::Text("ok".into())),
                })
                .collect(),
        }))
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

async fn session(home: &std::path::Path) -> Session {
    let backend: Arc<dyn AiBackend> = Arc::new(Garbage { home: MurakkabHome::at(home) });
    let db = Session::builder().home(home).threads(1).ai_backend(backend).build().await.unwrap();
    let values: Vec<String> =
        ROWS.iter().enumerate().map(|(i, r)| format!("({i}, 'row: {r}')")).collect();
    db.sql(&format!(
        "CREATE TABLE t AS SELECT * FROM (VALUES {}) AS v(id, body)",
        values.join(", ")
    ))
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    db
}

/// The query's single result column as text per row (NULL as `None`), in `id` order.
async fn answers(db: &Session, expr: &str) -> Vec<Option<String>> {
    let sql = format!("SELECT {expr} AS a FROM t ORDER BY id");
    let batches: Vec<RecordBatch> = db
        .sql(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for batch in batches {
        let column = batch.column(0);
        let text = if matches!(column.data_type(), DataType::List(_) | DataType::FixedSizeList(..))
        {
            cast(
                &murakkab::arrow::compute::kernels::length::length(column).unwrap(),
                &DataType::Utf8,
            )
            .unwrap()
        } else {
            cast(column, &DataType::Utf8).unwrap()
        };
        let text = text.as_string::<i32>();
        out.extend((0..text.len()).map(|i| (!text.is_null(i)).then(|| text.value(i).to_string())));
    }
    out
}

/// Rows whose answer is NULL, by their misbehaviour name.
fn null_rows(answers: &[Option<String>]) -> Vec<&'static str> {
    answers.iter().zip(ROWS).filter(|(a, _)| a.is_none()).map(|(_, r)| *r).collect()
}

#[tokio::test]
async fn every_function_survives_every_bad_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "ai_filter",
            "ai_filter(body, 'is fine')",
            &["nan", "short", "negative", "zero", "infinite", "empty"],
        ),
        (
            "ai_classify",
            "ai_classify(body, ['a', 'b', 'c'])",
            &["nan", "short", "negative", "zero", "infinite", "empty"],
        ),
        ("ai_complete", "ai_complete(body)", &["empty", "huge", "loop"]),
        (
            "ai_extract",
            r#"ai_extract(body, '{"n": "int", "p": "float"}')['p']"#,
            &["nan", "short", "wrongtype"],
        ),
        ("ai_embed", "ai_embed(body)", &["nan", "short", "zero", "infinite", "empty"]),
        (
            "ai_similarity",
            "ai_similarity(body, 'row: fine one')",
            &["nan", "short", "zero", "infinite", "empty"],
        ),
    ];
    let mut tried = 0;
    for (function, expr, expected_null) in cases {
        let got = answers(&db, expr).await;
        assert_eq!(got.len(), ROWS.len(), "{function}");
        assert_eq!(&null_rows(&got), expected_null, "{function}: {got:?}");
        tried += expected_null.len();
        let warnings: Vec<String> = db.take_warnings().iter().map(|w| w.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w.starts_with(&format!(
                "{function}: {} rows: no usable model output, NULL",
                expected_null.len()
            ))),
            "{function}: {warnings:?}"
        );
    }
    assert!(tried >= 25, "{tried} bad answers tried");
    // Renormalised, not refused: the "huge" embedding (norm 14) is unit length now.
    let norms = answers(&db, "cosine_similarity(ai_embed(body), ai_embed(body))").await;
    assert_eq!(
        norms[7].as_deref().map(|s| s.starts_with("0.99") || s.starts_with('1')),
        Some(true)
    );
    db.take_warnings();
}

#[tokio::test]
async fn a_batch_answered_with_a_row_missing_is_null_and_the_query_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    db.sql("INSERT INTO t VALUES (11, 'row: drop')").await.unwrap().collect().await.unwrap();
    let sql =
        "SELECT count(*) AS rows, count(a) AS answered FROM (SELECT ai_complete(body) AS a FROM t)";
    let batches = db.sql(sql).await.unwrap().collect().await.unwrap();
    let rows =
        batches[0].column(0).as_primitive::<murakkab::arrow::datatypes::Int64Type>().value(0);
    let answered =
        batches[0].column(1).as_primitive::<murakkab::arrow::datatypes::Int64Type>().value(0);
    assert_eq!(rows, 12);
    // Empty, huge, loop and the short batch's rows (the batch may hold only the `drop` row).
    assert!(answered <= 8, "{answered} answered");
    let warnings: Vec<String> = db.take_warnings().iter().map(|w| w.to_string()).collect();
    let expected = format!("ai_complete: {} rows: no usable model output, NULL", rows - answered);
    assert!(warnings.iter().any(|w| w.starts_with(&expected)), "{warnings:?}");
    // The other misbehaviours and a short batch together, for every function, never panic.
    for expr in [
        "ai_filter(body, 'x')",
        "ai_classify(body, ['a', 'b'])",
        r#"ai_extract(body, '{"n": "int"}')"#,
        "ai_embed(body)",
        "ai_summarize_agg(body)",
    ] {
        db.sql(&format!("SELECT {expr} FROM t")).await.unwrap().collect().await.unwrap();
    }
    // Retrieval over a table whose bad rows cannot be embedded ranks the others.
    let found = db
        .sql("SELECT body FROM ai_search('t', 'body', 'row: fine one', 3)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(found.iter().map(|b| b.num_rows()).sum::<usize>() <= 3);
}
