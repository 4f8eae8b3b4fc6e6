//! A top-k over AI filters (`TopKOverAiFilter`), against a backend whose answers are known
//! (`keyword_backend`): the optimized plan must return exactly the rows of the unoptimized one
//! while the model sees the rows in key order until k pass, not every row.

#![allow(clippy::unwrap_used)]

mod keyword_backend;

use keyword_backend::{Keywords, ids, plan_text, run, session};

/// The ids (1..=1000) ending in 3, in `order`, after `skip`, `k` of them.
fn rain_ids(descending: bool, skip: usize, k: usize) -> Vec<i64> {
    let mut ids: Vec<i64> = (1..=1000).filter(|v| v % 10 == 3).collect();
    if descending {
        ids.reverse();
    }
    ids.into_iter().skip(skip).take(k).collect()
}

#[tokio::test]
async fn the_model_reads_rows_in_key_order_until_k_pass_and_the_rows_are_the_same() {
    let home = tempfile::tempdir().unwrap();
    let query = "SELECT id FROM notes WHERE ai_filter(text, 'It mentions rain') \
                 ORDER BY id DESC LIMIT 5";

    let backend = Keywords::new(home.path());
    let naive = session(&backend, home.path(), false).await;
    assert_eq!(ids(&run(&naive, query).await), rain_ids(true, 0, 5));
    assert_eq!(backend.rows("rain"), 1000, "the naive plan asks about every row");

    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    assert_eq!(ids(&run(&db, query).await), rain_ids(true, 0, 5));
    // Rows 1000 down to 953 hold the five; chunks of 16 and 32 rows read exactly those 48.
    assert_eq!(backend.rows("rain"), 48);

    // Plain EXPLAIN shows the plan and runs no model.
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    let plan = plan_text(&db, &format!("EXPLAIN {query}")).await;
    assert!(plan.contains("in key order until 5 rows pass __ai_0"), "{plan}");
    assert_eq!(backend.rows("rain"), 0);
}

#[tokio::test]
async fn an_offset_counts_toward_the_rows_read_and_ties_keep_one_valid_answer() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    let query = "SELECT id FROM notes WHERE ai_filter(text, 'It mentions rain') \
                 ORDER BY id LIMIT 3 OFFSET 40";
    assert_eq!(ids(&run(&db, query).await), rain_ids(false, 40, 3));
    assert!(backend.rows("rain") < 1000, "read {} rows", backend.rows("rain"));

    // Every row ties on the key: any 4 rows that pass are a valid answer.
    let tied = "SELECT id FROM notes WHERE ai_filter(text, 'It mentions rain') \
                ORDER BY length('x') LIMIT 4";
    let rows = ids(&run(&db, tied).await);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|id| id % 10 == 3), "{rows:?}");
}

#[tokio::test]
async fn a_chain_of_ai_filters_stops_at_the_top_and_keeps_its_order_rule() {
    let home = tempfile::tempdir().unwrap();
    // Written broad first: the city condition passes every row, the rain one a tenth.
    let query = "SELECT id FROM notes WHERE ai_filter(text, 'It names a city') \
                 AND ai_filter(text, 'It mentions rain') ORDER BY id LIMIT 5";

    let backend = Keywords::new(home.path());
    let naive = session(&backend, home.path(), false).await;
    assert_eq!(ids(&run(&naive, query).await), rain_ids(false, 0, 5));

    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    assert_eq!(ids(&run(&db, query).await), rain_ids(false, 0, 5));
    let (city, rain) = (backend.rows("city"), backend.rows("rain"));
    assert!(city + rain < 200, "city {city} rows, rain {rain}: the chain must stop early");

    let plan = plan_text(&db, &format!("EXPLAIN VERBOSE {query}")).await;
    assert!(plan.contains("under a top-k, read until 5 rows pass"), "{plan}");
    let physical = &plan[plan.find("physical_plan").unwrap()..];
    assert!(physical.contains("in key order until 5 rows pass"), "{physical}");
}

#[tokio::test]
async fn a_top_k_by_similarity_embeds_every_row_and_asks_the_filter_in_that_order() {
    let home = tempfile::tempdir().unwrap();
    // The notes most like 'note 0' are the lowest numbers (see `Keywords::embed`).
    let query = "SELECT id FROM notes WHERE ai_filter(text, 'It mentions rain') \
                 ORDER BY ai_similarity(text, 'note 0') DESC LIMIT 5";

    let backend = Keywords::new(home.path());
    let naive = session(&backend, home.path(), false).await;
    assert_eq!(ids(&run(&naive, query).await), rain_ids(false, 0, 5));
    // The naive plan asks the filter about every note and embeds the 100 that pass.
    assert_eq!(backend.rows("rain"), 1000);

    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    assert_eq!(ids(&run(&db, query).await), rain_ids(false, 0, 5));
    // Every note is embedded (the sort needs all of them); the filter reads 16 + 32 notes.
    assert_eq!(backend.rows("rain"), 48);
    assert!(backend.rows("embed") >= 1000, "embedded {} texts", backend.rows("embed"));

    let plan = plan_text(&db, &format!("EXPLAIN {query}")).await;
    let filter_at = plan.find("in key order until 5 rows pass").unwrap();
    let similarity_at = plan.rfind("ai_similarity").unwrap();
    assert!(filter_at < similarity_at, "the similarity map must sit below the filter:\n{plan}");
}
