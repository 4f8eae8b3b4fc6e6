//! Printing result batches as a table, CSV or JSON.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::{ArrayWriter, LineDelimitedWriter};
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use murakkab::{Error, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl OutputFormat {
    /// Parses the shell's `\format` argument.
    pub fn parse(word: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(word, true).ok()
    }

    /// The names accepted by [`OutputFormat::parse`].
    pub fn names() -> &'static str {
        "table, csv, json, ndjson"
    }
}

/// Writes a whole result in `format`. Statements that return no columns print nothing.
pub fn print_batches(
    out: &mut dyn Write,
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<()> {
    if schema.fields().is_empty() {
        return Ok(());
    }
    match format {
        OutputFormat::Table => {
            let table = pretty_format_batches_with_schema(std::sync::Arc::clone(schema), batches)?;
            writeln!(out, "{table}").map_err(Error::IoError)?;
        }
        OutputFormat::Csv => {
            let mut writer = CsvWriterBuilder::new().with_header(true).build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(std::sync::Arc::clone(schema)))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            drop(writer);
            writeln!(out).map_err(Error::IoError)?;
        }
        OutputFormat::Ndjson => {
            let mut writer = LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    out.flush().map_err(Error::IoError)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn sample() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
            ],
        )
        .expect("valid batch");
        (schema, vec![batch])
    }

    fn render(format: OutputFormat, batches: &[RecordBatch]) -> String {
        let (schema, _) = sample();
        let mut buf = Vec::new();
        print_batches(&mut buf, format, &schema, batches).expect("printed");
        String::from_utf8(buf).expect("utf8")
    }

    #[test]
    fn every_format_renders() {
        let (_, batches) = sample();
        assert_eq!(render(OutputFormat::Csv, &batches), "id,text\n1,\"a,b\"\n2,\n");
        assert_eq!(
            render(OutputFormat::Json, &batches),
            "[{\"id\":1,\"text\":\"a,b\"},{\"id\":2}]\n"
        );
        assert_eq!(
            render(OutputFormat::Ndjson, &batches),
            "{\"id\":1,\"text\":\"a,b\"}\n{\"id\":2}\n"
        );
        assert!(render(OutputFormat::Table, &batches).contains("| 1  | a,b  |"));
    }

    #[test]
    fn empty_results_keep_the_header() {
        assert_eq!(render(OutputFormat::Csv, &[]), "id,text\n");
        assert!(render(OutputFormat::Table, &[]).contains("| id | text |"));
        assert_eq!(render(OutputFormat::Json, &[]), "[]\n");
    }
}
