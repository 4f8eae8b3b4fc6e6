//! The embedded API: every way to bring data in, and the errors a caller can cause.

// Test helpers unwrap: a panic here is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use murakkab::arrow::array::{Int64Array, RecordBatch, StringArray};
use murakkab::arrow::util::pretty::pretty_format_batches;
use murakkab::{Session, user_message};

async fn session(home: &std::path::Path) -> Session {
    Session::builder().home(home).threads(2).memory_limit(256 << 20).build().await.unwrap()
}

fn sample() -> RecordBatch {
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        ("text", Arc::new(StringArray::from(vec![Some("good"), None, Some("bad")])) as _),
    ])
    .unwrap()
}

async fn scalar(db: &Session, sql: &str) -> String {
    let batches = db.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string().lines().nth(3).unwrap().to_string()
}

#[tokio::test]
async fn every_file_format_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    db.register_batch("mem", sample()).await.unwrap();
    for (format, ext) in
        [("PARQUET", "parquet"), ("CSV", "csv"), ("JSON", "json"), ("ARROW", "arrow")]
    {
        let path = dir.path().join(format!("data.{ext}"));
        db.sql(&format!("COPY mem TO '{}' STORED AS {format}", path.display()))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let name = format!("t_{ext}");
        match ext {
            "parquet" => db.register_parquet(&name, &path).await.unwrap(),
            "csv" => db.register_csv(&name, &path).await.unwrap(),
            "json" => db.register_json(&name, &path).await.unwrap(),
            _ => db.register_arrow(&name, &path).await.unwrap(),
        }
        let row = scalar(&db, &format!("SELECT count(*), sum(id), count(text) FROM {name}")).await;
        assert_eq!(
            row.split('|').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            ["3", "6", "2"],
            "{format}"
        );
    }
}

#[tokio::test]
async fn missing_files_name_the_table_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    let err = db.register_parquet("reviews", dir.path().join("nope.parquet")).await.unwrap_err();
    let msg = user_message(&err);
    assert!(msg.contains("cannot register table 'reviews'"), "{msg}");
    assert!(msg.contains("nope.parquet"), "{msg}");
}

#[tokio::test]
async fn a_bad_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    let path = dir.path().join("broken.parquet");
    std::fs::write(&path, b"this is not parquet").unwrap();
    let err = db.register_parquet("broken", &path).await.unwrap_err();
    let msg = user_message(&err);
    assert!(msg.contains("registering table 'broken'"), "{msg}");
}

#[tokio::test]
async fn zero_batches_need_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    let err = db.register_batches("empty", vec![]).await.unwrap_err();
    assert!(user_message(&err).contains("zero batches"));
}

#[tokio::test]
async fn options_are_visible_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    assert_eq!(db.options().threads, 2);
    db.sql("SET murakkab.objective = 'carbon'").await.unwrap().collect().await.unwrap();
    assert_eq!(db.options().objective, murakkab::Objective::Carbon);
}

#[tokio::test]
async fn functions_list_puts_murakkab_first_with_docs() {
    let dir = tempfile::tempdir().unwrap();
    let db = session(dir.path()).await;
    let functions = db.functions();
    let ours: Vec<&str> =
        functions.iter().take_while(|f| f.murakkab).map(|f| f.name.as_str()).collect();
    for name in [
        "ai_classify",
        "ai_complete",
        "ai_embed",
        "ai_extract",
        "ai_filter",
        "ai_search",
        "ai_similarity",
        "ai_summarize_agg",
        "cosine_similarity",
    ] {
        assert!(ours.contains(&name), "{name} missing from {ours:?}");
    }
    for f in functions.iter().filter(|f| f.murakkab) {
        let example = f.example.as_deref().unwrap_or("");
        assert!(example.contains(&format!("{}(", f.name)), "{} has no example", f.name);
    }
    assert!(functions.iter().any(|f| f.name == "count" && !f.murakkab));
}

#[tokio::test]
async fn memory_limit_bounds_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db =
        Session::builder().home(dir.path()).threads(1).memory_limit(1 << 20).build().await.unwrap();
    // Collecting ~100 MB of strings into one array cannot spill and cannot fit in 1 MiB: the
    // query must fail with "resources exhausted" instead of growing past the limit.
    let result = db
        .sql("SELECT array_agg(repeat('x', 100) || value) FROM generate_series(1, 1000000)")
        .await
        .unwrap()
        .collect()
        .await;
    let err = result.expect_err("a 100 MB aggregate under a 1 MiB limit must fail");
    assert!(user_message(&err).contains("resources exhausted"), "{}", user_message(&err));
}
