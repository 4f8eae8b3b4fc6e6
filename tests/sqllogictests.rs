//! Runs every `tests/sql/*.slt` file through a fresh Murakkab session.
//!
//! SQL behaviour is pinned in these files rather than in Rust, so changing a test needs no
//! recompile. Values print as Arrow displays them, NULL as `NULL`, an empty string as `(empty)`.
//!
//! Files in `tests/sql/` get a fresh temporary home holding the tiny random-weight models
//! `tiny-llama` and `tiny-bert`. Files in `tests/sql/real/` run against the real models pulled
//! into `$MURAKKAB_HOME` (`murakkab models pull --default`); without them they are skipped with
//! a message, unless `MURAKKAB_REQUIRE_REAL_MODELS=1`, which makes that a failure (CI sets it).

// Test helpers unwrap: a panic here is a test failure with its message.
#![allow(clippy::unwrap_used)]
// The runner reports skipped real-model files on stderr.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use murakkab::arrow::array::{Array, RecordBatch};
use murakkab::arrow::datatypes::DataType;
use murakkab::arrow::util::display::{ArrayFormatter, FormatOptions};
use murakkab::catalog::{ModelStatus, MurakkabHome};
use murakkab::{Error, Session};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

struct SltSession {
    session: Session,
    _home: Option<tempfile::TempDir>,
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating()
            || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
        {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn rows_of(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, Error> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, col)| {
                        let text = f.value(row).to_string();
                        if text.is_empty() && !col.is_null(row) {
                            "(empty)".to_string()
                        } else {
                            text
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

#[async_trait]
impl AsyncDB for SltSession {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let frame = self.session.sql(sql).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: schema.fields().iter().map(|f| column_type(f.data_type())).collect(),
            rows: rows_of(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "murakkab"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn slt_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

/// The models `tests/sql/real/*.slt` use.
const REAL_MODELS: [&str; 2] = ["all-minilm-l6-v2", "smollm2-135m-instruct"];

fn real_models_pulled() -> bool {
    let home = MurakkabHome::from_env();
    REAL_MODELS.iter().all(|id| {
        murakkab::catalog::find_model(&home, id)
            .is_ok_and(|card| card.status(&home) == ModelStatus::Pulled)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests() {
    // The run-time value: a target directory shared by two checkouts may hold this binary built
    // in the other one, with the other path compiled in.
    let dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests")
    .join("sql");
    let files = slt_files(&dir);
    assert!(!files.is_empty(), "no .slt files found");
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = Runner::new(|| async {
            let home = tempfile::tempdir().map_err(Error::IoError)?;
            murakkab_exec::tiny_models::install_tiny_models(&MurakkabHome::at(home.path()))
                .map_err(|e| Error::External(Box::new(e)))?;
            let session = Session::builder().home(home.path()).threads(2).build().await?;
            Ok(SltSession { session, _home: Some(home) })
        });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    let real = slt_files(&dir.join("real"));
    if real_models_pulled() {
        for file in &real {
            let mut runner = Runner::new(|| async {
                // No result cache: the pinned answers must come from the models every run.
                let session = Session::builder().threads(2).result_cache(false).build().await?;
                Ok(SltSession { session, _home: None })
            });
            if let Err(e) = runner.run_file_async(file).await {
                failures.push(format!("{}:\n{e}", file.display()));
            }
        }
    } else if std::env::var("MURAKKAB_REQUIRE_REAL_MODELS").as_deref() == Ok("1") {
        failures.push(format!(
            "{} real-model .slt files need {REAL_MODELS:?} pulled into $MURAKKAB_HOME",
            real.len()
        ));
    } else {
        eprintln!(
            "skipping {} real-model .slt files: run `murakkab models pull {}`",
            real.len(),
            REAL_MODELS.join(" ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} .slt files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
