//! Murakkab: SQL over your data that can call AI models, planned by a cost-based optimizer.
//!
//! This crate is the embedded API and the one place where the DataFusion session is assembled
//! (see `session_state.rs`). A [`Session`] runs SQL over Parquet, CSV, newline-delimited JSON and
//! Arrow IPC files and over in-memory Arrow batches; results are DataFusion `DataFrame`s.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use murakkab::arrow::array::{Int64Array, RecordBatch, StringArray};
//! use murakkab::arrow::util::pretty::pretty_format_batches;
//!
//! let dir = tempfile::tempdir()?;
//! let db = murakkab::Session::builder().home(dir.path()).build().await?;
//!
//! // Write a small Parquet file, then query it by name.
//! let batch = RecordBatch::try_from_iter([
//!     ("id", std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
//!     ("review", std::sync::Arc::new(StringArray::from(vec!["great", "awful", "fine"])) as _),
//! ])?;
//! let path = dir.path().join("data.parquet");
//! db.register_batch("staging", batch).await?;
//! db.sql(&format!("COPY staging TO '{}' STORED AS PARQUET", path.display())).await?.collect().await?;
//!
//! db.register_parquet("t", &path).await?;
//! let batches = db.sql("SELECT count(*) AS n, max(review) AS last FROM t").await?.collect().await?;
//! assert_eq!(pretty_format_batches(&batches)?.to_string().lines().nth(3), Some("| 3 | great |"));
//! # Ok(()) }
//! ```
//!
//! Options that shape the session (home directory, threads, memory limit) are set once with
//! [`Session::builder`]; per-query options are SQL: `SET murakkab.objective = 'energy'`.

pub mod carbon_schedule;
mod energy_report;
mod error;
mod functions;
pub mod job;
pub mod job_keys;
mod model_threads;
mod session;
mod session_state;

pub use datafusion::arrow;
pub use datafusion::prelude::DataFrame;
pub use energy_report::{EnergyReport, EnergySource};
pub use error::user_message;
pub use functions::{FunctionInfo, FunctionKind};
pub use model_threads::init_model_threads;
pub use murakkab_catalog as catalog;
pub use murakkab_compiler::{
    CarbonSeries, MurakkabOptions, Objective, OnError, OverBudget, Priority,
};
pub use murakkab_exec::energy::ModelWork;
pub use murakkab_udfs::{
    AiBackend, AiWarning, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue,
};
pub use session::{Session, SessionBuilder};

/// The error type of every fallible call: DataFusion's, so Murakkab and DataFusion errors compose.
pub type Error = datafusion::error::DataFusionError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
