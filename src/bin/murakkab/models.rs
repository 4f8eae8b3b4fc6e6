//! `murakkab models list` and the shell's `\models`: one listing, two entry points.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use murakkab::Session;
use murakkab::catalog::{ModelStatus, model_statuses};

use crate::output::{OutputFormat, print_batches};

/// Prints every known model with its tasks, size and whether it is pulled.
pub fn print_list(session: &Session, format: OutputFormat) {
    let rows = model_statuses(session.home());
    let column = |f: &dyn Fn(&murakkab::catalog::ModelCard, ModelStatus) -> String| {
        Arc::new(StringArray::from(rows.iter().map(|(c, s)| f(c, *s)).collect::<Vec<_>>())) as ArrayRef
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
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", n / 1_000_000),
        n => n.to_string(),
    }
}
