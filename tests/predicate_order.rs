//! The predicate-ordering rule, against a backend whose answers are known (`keyword_backend`):
//! `ai_filter` passes a row when the row's text contains the condition's last word. Written broad predicate first,
//! the rule must run the selective one first (measured: far fewer rows reach the second model),
//! give exactly the rows of the unoptimized plan, keep its statistics, and never run a model for
//! plain EXPLAIN.

#![allow(clippy::unwrap_used)]

mod keyword_backend;

use keyword_backend::{Keywords, ids, plan_text, run, session, session_with};

/// Written broad first: the city condition passes every row, the rain one a tenth.
const QUERY: &str = "SELECT id FROM notes WHERE ai_filter(text, 'It names a city') \
    AND ai_filter(text, 'It mentions rain') ORDER BY id";

/// Where in the plan text each condition's map sits (a smaller index is higher in the plan).
fn positions(plan: &str) -> (usize, usize) {
    (plan.find("It names a city").unwrap(), plan.find("It mentions rain").unwrap())
}

#[tokio::test]
async fn the_selective_predicate_runs_first_and_the_rows_are_the_same() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());

    let naive = session(&backend, home.path(), false).await;
    let expected = ids(&run(&naive, QUERY).await);
    assert_eq!(expected, (1..=1000).filter(|v| v % 10 == 3).collect::<Vec<i64>>());
    // The naive plan asks both questions of every row.
    assert_eq!((backend.rows("city"), backend.rows("rain")), (1000, 1000));

    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    assert_eq!(ids(&run(&db, QUERY).await), expected);
    // The sample (64 rows) asks both; then rain goes first over all 1,000 rows and the city
    // question reaches only the ~100 rows that passed it.
    let (city, rain) = (backend.rows("city"), backend.rows("rain"));
    assert!(city <= 64 + 100 + 10, "city scored {city} rows");
    assert!(rain <= 64 + 1000, "rain scored {rain} rows");

    // The statistics persist: EXPLAIN now shows the order without running anything.
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    let plan = plan_text(&db, &format!("EXPLAIN {QUERY}")).await;
    let (city_at, rain_at) = positions(&plan);
    assert!(city_at < rain_at, "the rain map must sit below the city map:\n{plan}");
    let rain_note = &plan[rain_at..];
    assert!(rain_note.contains("order: 1 of 2 by cost/(1-selectivity) (recorded)"), "{plan}");
    let city_note = &plan[city_at..];
    assert!(city_note.contains("order: 2 of 2 by cost/(1-selectivity) (recorded): passes 100%"));
    assert_eq!(backend.rows("city") + backend.rows("rain"), 0);
}

#[tokio::test]
async fn plain_explain_runs_no_model_and_keeps_the_written_order() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    let plan = plan_text(&db, &format!("EXPLAIN {QUERY}")).await;
    assert!(plan.contains("ordered from a sample when the query runs"), "{plan}");
    let (city_at, rain_at) = positions(&plan);
    assert!(rain_at < city_at, "written order: the city map below:\n{plan}");
    assert_eq!(backend.rows("city") + backend.rows("rain"), 0);
}

#[tokio::test]
async fn small_inputs_and_dependent_predicates_keep_the_written_order() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    // 100 rows: fewer than four samples' worth.
    let small = "SELECT id FROM notes WHERE id <= 100 AND ai_filter(text, 'It names a city') \
                 AND ai_filter(text, 'It mentions rain')";
    let plan = plan_text(&db, &format!("EXPLAIN ANALYZE {small}")).await;
    assert!(plan.contains("as written (input of 100 rows too small"), "{plan}");
    assert_eq!(backend.rows("city"), 100, "no sample was scored");
    // The second predicate reads the first's answer: not a conjunction of independent ones.
    let nested = "SELECT id FROM notes WHERE ai_filter(text, 'It names a city') \
                  AND ai_filter(CAST(ai_filter(text, 'It mentions rain') AS VARCHAR), 'It says true')";
    let mut rows = ids(&run(&db, nested).await);
    rows.sort();
    assert_eq!(rows, (1..=1000).filter(|v| v % 10 == 3).collect::<Vec<i64>>());
}

#[tokio::test]
async fn small_inputs_run_the_label_test_passing_fewer_answers_first() {
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());
    let db = session(&backend, home.path(), true).await;
    // A label test passing one of three labels goes below a filter passing one of two
    // answers: with no sample, each answer counts as equally likely. The rows do not change.
    let labels = "SELECT id FROM notes WHERE id <= 100 AND ai_filter(text, 'It names a city') \
                  AND ai_classify(text, ['city', 'town', 'village']) = 'city'";
    let plan = plan_text(&db, &format!("EXPLAIN ANALYZE {labels}")).await;
    let (filter_at, classify_at) =
        (plan.find("ai_filter(").unwrap(), plan.find("ai_classify(").unwrap());
    assert!(filter_at < classify_at, "the classify map must sit below the filter map:\n{plan}");
    let note = "order: 1 of 2 by answers passed, passes 1 of 3 labels (input of 100 rows too \
                small for a sample to pay off)";
    assert!(plan.contains(note), "{plan}");
    // Plain EXPLAIN shows the same order, before any sample.
    let plain = plan_text(&db, &format!("EXPLAIN {labels}")).await;
    let (filter_at, classify_at) =
        (plain.find("ai_filter(").unwrap(), plain.find("ai_classify(").unwrap());
    assert!(filter_at < classify_at, "{plain}");
    assert!(plain.contains("order: 2 of 2 by answers passed, passes 1 of 2 answers; ordered from a sample when the query runs"), "{plain}");
    let mut optimized = ids(&run(&db, labels).await);
    optimized.sort();
    let unoptimized = session(&backend, home.path(), false).await;
    let mut written = ids(&run(&unoptimized, labels).await);
    written.sort();
    assert_eq!(optimized, written);
    assert!(!optimized.is_empty());
}

#[tokio::test]
async fn through_the_result_cache_a_filter_asks_the_same_question() {
    // The cache hands the backend a batch of the rows it lacks: that batch must still ask for
    // the condition's statements scored whole (it once lost the flag, and batched filters
    // scored the statements cut at "not").
    let home = tempfile::tempdir().unwrap();
    let backend = Keywords::new(home.path());
    let db = session_with(&backend, home.path(), false, true).await;
    let rain = "SELECT id FROM notes WHERE ai_filter(text, 'It mentions rain') ORDER BY id";
    let expected: Vec<i64> = (1..=1000).filter(|v| v % 10 == 3).collect();
    assert_eq!(ids(&run(&db, rain).await), expected);
    assert_eq!(backend.rows("rain"), 1000);
    // Again: every answer from the cache.
    assert_eq!(ids(&run(&db, rain).await), expected);
    assert_eq!(backend.rows("rain"), 1000);
}
