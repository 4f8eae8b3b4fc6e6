//! Row identity for resumable jobs: which key values are already durable in complete parts.
//!
//! A job's query can produce its rows in a different order on every run (partitions race), so
//! "the first N rows are done" means nothing after a crash. What is stable is a key: one or more
//! output columns whose values name a row. The writer drops every row whose key is already in a
//! complete part, and refuses a key value twice, so each row lands exactly once however often
//! the job is killed and resumed. Keys are compared in Arrow's row format, which is exact for
//! every type (no hashing collisions, no string formatting).

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::{Expr, col, lit};

/// Above this many done keys the query is not given a `NOT IN` list (planning cost); the writer
/// still drops done rows, and the result cache answers their model calls.
const MAX_PUSHED_KEYS: usize = 50_000;

/// The key columns of a job and the key values already written.
pub struct DoneKeys {
    columns: Vec<String>,
    indices: Vec<usize>,
    converter: RowConverter,
    seen: HashSet<Box<[u8]>>,
    /// Keys read from the parts of earlier runs (a subset of `seen`).
    earlier: HashSet<Box<[u8]>>,
    /// Single-column keys of earlier runs (up to one past the limit), for the pushed filter.
    done_values: Vec<ScalarValue>,
}

impl std::fmt::Debug for DoneKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoneKeys")
            .field("columns", &self.columns)
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl DoneKeys {
    /// Key tracking for `columns` of a query whose output is `schema`; errors name a missing
    /// column and list the output's columns.
    pub fn new(columns: &[String], schema: &SchemaRef) -> Result<Self> {
        let mut indices = Vec::with_capacity(columns.len());
        let mut fields = Vec::with_capacity(columns.len());
        for name in columns {
            let Ok(index) = schema.index_of(name) else {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(DataFusionError::Plan(format!(
                    "job key column '{name}' is not an output column of the job's query; its columns are: {}",
                    names.join(", ")
                )));
            };
            indices.push(index);
            fields.push(SortField::new(schema.field(index).data_type().clone()));
        }
        Ok(Self {
            columns: columns.to_vec(),
            indices,
            converter: RowConverter::new(fields)?,
            seen: HashSet::new(),
            earlier: HashSet::new(),
            done_values: Vec::new(),
        })
    }

    /// Key values already written.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key has been written yet.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records the keys of a complete part file (written by an earlier run of the job).
    pub fn load_part(&mut self, path: &Path) -> Result<u64> {
        let file = File::open(path).map_err(|e| {
            DataFusionError::IoError(e).context(format!("reading job part '{}'", path.display()))
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let part_schema = Arc::clone(builder.schema());
        let mut leaves = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            let index = part_schema.index_of(name).map_err(|_| {
                DataFusionError::Execution(format!(
                    "job part '{}' has no key column '{name}'; the output was written by a different query",
                    path.display()
                ))
            })?;
            leaves.push(index);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), leaves);
        let mut rows = 0u64;
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            let arrays: Vec<ArrayRef> = self
                .columns
                .iter()
                .map(|name| batch.column_by_name(name).cloned())
                .collect::<Option<_>>()
                .ok_or_else(|| DataFusionError::Internal("projected key column missing".into()))?;
            let converted = self.converter.convert_columns(&arrays)?;
            for (i, row) in converted.iter().enumerate() {
                self.earlier.insert(row.as_ref().into());
                let listable = arrays.len() == 1 && self.done_values.len() <= MAX_PUSHED_KEYS;
                if self.seen.insert(row.as_ref().into()) && listable {
                    self.done_values.push(ScalarValue::try_from_array(&arrays[0], i)?);
                }
            }
        }
        Ok(rows)
    }

    /// A filter that keeps only rows not yet written, for the optimizer to push below the AI
    /// calls when the key passes through them; `None` when there is nothing to skip, the key
    /// has several columns, or the list would be too long to plan.
    pub fn pending_filter(&self) -> Option<Expr> {
        if self.done_values.is_empty()
            || self.columns.len() != 1
            || self.done_values.len() > MAX_PUSHED_KEYS
        {
            return None;
        }
        let key = col(datafusion::common::Column::new_unqualified(&self.columns[0]));
        let list = self.done_values.iter().cloned().map(lit).collect();
        // A NULL key is kept so that the writer can name it as an error.
        Some(key.clone().is_null().or(key.in_list(list, true)))
    }

    /// The rows of `batch` whose key is not in an earlier run's parts, recording their keys. A
    /// NULL key, or a key value twice in this run's output, is an error: exactly-once needs a
    /// unique key.
    pub fn take_new(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> =
            self.indices.iter().map(|&i| Arc::clone(batch.column(i))).collect();
        for (name, array) in self.columns.iter().zip(&arrays) {
            if array.null_count() > 0 {
                return Err(DataFusionError::Execution(format!(
                    "job key column '{name}' is NULL in a row; a resumable job needs a key that is never NULL"
                )));
            }
        }
        let converted = self.converter.convert_columns(&arrays)?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for (i, row) in converted.iter().enumerate() {
            let new = self.seen.insert(row.as_ref().into());
            if !new && !self.earlier.contains(row.as_ref()) {
                return Err(self.duplicate_error(&arrays, i));
            }
            keep.push(new);
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
    }

    fn duplicate_error(&self, arrays: &[ArrayRef], row: usize) -> DataFusionError {
        let value: Vec<String> = arrays
            .iter()
            .map(|a| ScalarValue::try_from_array(a, row).map(|v| v.to_string()).unwrap_or_default())
            .collect();
        DataFusionError::Execution(format!(
            "job key ({}) is not unique: the value ({}) appears in more than one row; choose a unique key with --key",
            self.columns.join(", "),
            value.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[Option<i64>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, false),
        ]));
        let values: Vec<String> = ids.iter().map(|i| format!("{i:?}")).collect();
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(values))],
        )
        .unwrap()
    }

    fn write_part(dir: &Path, b: &RecordBatch) -> std::path::PathBuf {
        let path = dir.join("part.parquet");
        let file = File::create(&path).unwrap();
        let mut writer =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, b.schema(), None).unwrap();
        writer.write(b).unwrap();
        writer.close().unwrap();
        path
    }

    #[test]
    fn drops_rows_of_earlier_parts_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = batch(&[Some(1), Some(2)]);
        let mut keys = DoneKeys::new(&["id".into()], &earlier.schema()).unwrap();
        assert_eq!(keys.load_part(&write_part(dir.path(), &earlier)).unwrap(), 2);
        // A resumed run skips rows already written.
        let kept = keys.take_new(&batch(&[Some(2), Some(3)])).unwrap();
        assert_eq!(kept.num_rows(), 1);
        assert_eq!(keys.len(), 3);
        // A repetition within this run means the key is not unique.
        let err = keys.take_new(&batch(&[Some(3)])).unwrap_err().to_string();
        assert!(err.contains("not unique") && err.contains("(3)"), "{err}");
        let err = keys.take_new(&batch(&[None])).unwrap_err().to_string();
        assert!(err.contains("'id' is NULL"), "{err}");
    }

    #[test]
    fn names_a_missing_key_column() {
        let b = batch(&[Some(1)]);
        let err = DoneKeys::new(&["row_id".into()], &b.schema()).unwrap_err().to_string();
        assert!(err.contains("'row_id'") && err.contains("id, v"), "{err}");
    }

    #[test]
    fn filter_lists_done_keys() {
        let b = batch(&[Some(7)]);
        let mut keys = DoneKeys::new(&["id".into()], &b.schema()).unwrap();
        assert!(keys.pending_filter().is_none());
        let dir = tempfile::tempdir().unwrap();
        keys.load_part(&write_part(dir.path(), &b)).unwrap();
        let filter = keys.pending_filter().unwrap().to_string();
        assert!(filter.contains("NOT IN") && filter.contains('7'), "{filter}");
    }
}
