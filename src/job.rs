//! Batch jobs: run a SQL script and write its final query's result as numbered Parquet part
//! files plus a manifest, in one output directory.
//!
//! The layout is what makes a long job safe to interrupt: each part is written to a temporary
//! name, flushed to disk and renamed, and the manifest (rewritten the same way after every part)
//! lists only parts that are complete. A reader, or a later `--resume`, trusts the manifest and
//! ignores anything else in the directory.
//!
//! Resuming needs a key (`--key`, or an output column named `id`): the query is run again,
//! rows whose key is in a complete part are dropped (before the AI calls when the key passes
//! through them, see [`crate::job_keys`]), and the rest go to new parts. Model answers computed
//! before the interruption come from the result cache, so finished work is not paid twice.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext, execute_stream};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Session;
use crate::carbon_schedule::{Clock, SystemClock, best_start, pause_until};
use crate::job_keys::DoneKeys;
use murakkab_compiler::CarbonSeries;

/// The manifest's path inside the output directory. It sits in a subdirectory because a
/// directory read as a table (`SELECT * FROM 'out.parquet/'`) takes its file format from the
/// first file listed, in no fixed order, and skips subdirectories: a JSON file beside the parts
/// made some reads fail as "not valid JSON".
pub const MANIFEST_FILE: &str = "_murakkab/manifest.json";
/// The manifest format written by this version.
pub const MANIFEST_FORMAT: &str = "murakkab-job/1";

/// Where and how a job writes.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The output directory (created; it holds `part-NNNNN.parquet` and the manifest).
    pub output: PathBuf,
    /// Rows per part file; each part is durable once written.
    pub rows_per_part: usize,
    /// Replace an existing job output at `output`.
    pub overwrite: bool,
    /// Start in the lowest-carbon window before a deadline; `None` starts at once.
    pub carbon_schedule: Option<CarbonSchedule>,
    /// The clock a schedule waits on.
    pub clock: Arc<dyn Clock>,
    /// Complete an interrupted job at `output` instead of refusing it (starts afresh when
    /// there is none).
    pub resume: bool,
    /// Output columns that identify a row; empty means the column `id` when there is one.
    pub key: Vec<String>,
}

impl JobSpec {
    /// A spec with 100,000 rows per part, no overwrite, starting at once.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            rows_per_part: 100_000,
            overwrite: false,
            carbon_schedule: None,
            clock: Arc::new(SystemClock),
            resume: false,
            key: Vec::new(),
        }
    }
}

/// A deadline and a grid-intensity forecast for a carbon-aware start.
#[derive(Debug, Clone)]
pub struct CarbonSchedule {
    /// Seconds from submission by which the job should be done.
    pub deadline_s: i64,
    /// Forecast grid intensity (`timestamp,g_per_kwh`).
    pub forecast: CarbonSeries,
}

/// What a carbon-aware start decided, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// When the job was submitted, Unix seconds.
    pub submitted_unix: i64,
    /// When it started.
    pub start_unix: i64,
    /// When it had to be done.
    pub deadline_unix: i64,
    /// The optimizer's estimate of its model time, seconds (0 when it made none).
    pub estimated_seconds: f64,
    /// Mean forecast intensity over the run from the chosen start, g/kWh.
    pub forecast_g_per_kwh: f64,
    /// The same had it started at submission.
    pub forecast_at_submission_g_per_kwh: f64,
    /// The estimate did not fit before the deadline, so it started at once.
    pub misses_deadline: bool,
    /// Waits between parts for a cleaner window, in order.
    #[serde(default)]
    pub pauses: Vec<PauseRecord>,
}

/// One wait between parts: the forecast for going on was clearly worse than for a later start
/// that still met the deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// Parts complete when it paused.
    pub after_part: usize,
    /// When it paused, Unix seconds.
    pub from_unix: i64,
    /// When it went on, Unix seconds.
    pub until_unix: i64,
    /// Mean forecast intensity over the rest of the work had it gone on.
    pub going_on_g_per_kwh: f64,
    /// The same from `until_unix`.
    pub after_pause_g_per_kwh: f64,
}

/// Receives progress while a job runs (a progress bar, log lines, or nothing).
pub trait JobProgress: Send + Sync {
    /// The query is planned; `estimated_rows` comes from the plan's statistics when known.
    fn started(&self, _estimated_rows: Option<u64>) {}
    /// `rows` more rows were produced (they are durable once their part is complete).
    fn advanced(&self, _rows: u64) {}
    /// A carbon-aware schedule chose its start; the job waits for it now.
    fn scheduled(&self, _schedule: &ScheduleRecord) {}
    /// Something the user should know that does not stop the job.
    fn note(&self, _message: &str) {}
}

/// Ignores progress.
#[derive(Debug, Default)]
pub struct NoProgress;
impl JobProgress for NoProgress {}

/// One complete part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name inside the output directory.
    pub file: String,
    /// Rows in the part.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// Whether the job finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Parts are still being written (or the job was interrupted).
    Running,
    /// Every row of the result is in the listed parts.
    Complete,
}

/// The manifest: the only authority on which parts of an output are complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] for this version.
    pub format: String,
    /// SHA-256 of the job's SQL script.
    pub script_sha256: String,
    /// The query whose result the parts hold.
    pub query: String,
    /// Running or complete.
    pub status: JobStatus,
    /// `name: type` for each output column.
    pub columns: Vec<String>,
    /// Complete parts, in order.
    pub parts: Vec<PartInfo>,
    /// Rows over all parts.
    pub total_rows: u64,
    /// When the job started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When the job completed.
    pub finished_unix_ms: Option<u64>,
    /// Energy of the job's model work in joules (absent in manifests of older versions).
    #[serde(default)]
    pub energy_j: Option<f64>,
    /// `measured` or `modeled`.
    #[serde(default)]
    pub energy_source: Option<String>,
    /// Grams CO2e of that energy at the session's grid intensity.
    #[serde(default)]
    pub co2e_g: Option<f64>,
    /// The carbon-aware start, when the job had a deadline and a forecast.
    #[serde(default)]
    pub schedule: Option<ScheduleRecord>,
    /// The output columns that identify a row (empty: the job cannot be resumed).
    #[serde(default)]
    pub key: Vec<String>,
    /// How many times the job was resumed after an interruption.
    #[serde(default)]
    pub resumes: u32,
}

impl Manifest {
    /// Reads the manifest of an output directory.
    pub fn read(output: &Path) -> Result<Self> {
        let path = output.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .map_err(|e| io_error(e, format!("reading job manifest '{}'", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            DataFusionError::Execution(format!(
                "job manifest '{}' is not valid: {e}",
                path.display()
            ))
        })
    }

    fn write(&self, output: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let path = output.join(MANIFEST_FILE);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(DataFusionError::Internal(format!("bad manifest path {}", path.display())));
        };
        fs::create_dir_all(dir)
            .map_err(|e| io_error(e, format!("creating '{}'", dir.display())))?;
        write_atomically(dir, name, |file| file.write_all(&json).map_err(DataFusionError::IoError))
    }
}

/// What a finished job did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// Rows written.
    pub rows: u64,
    /// Part files written.
    pub parts: usize,
    /// Wall time from planning to the final manifest.
    pub elapsed: Duration,
    /// The output directory.
    pub output: PathBuf,
    /// Energy and emissions of this run's model work.
    pub energy: crate::EnergyReport,
    /// Rows already in complete parts when this run started (resumed jobs).
    pub resumed_rows: u64,
}

/// Picks the start with the lowest forecast intensity over the optimizer's time estimate that
/// still ends before the deadline, and waits for it.
async fn wait_for_clean_window(
    carbon: &CarbonSchedule,
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    spec: &JobSpec,
    progress: &dyn JobProgress,
) -> ScheduleRecord {
    let estimated_seconds = murakkab_exec::estimated_model_seconds(plan).unwrap_or(0.0);
    let submitted = spec.clock.now_unix();
    let deadline = submitted + carbon.deadline_s;
    let start = best_start(&carbon.forecast, submitted, deadline, estimated_seconds);
    let record = ScheduleRecord {
        submitted_unix: submitted,
        start_unix: start.start,
        deadline_unix: deadline,
        estimated_seconds,
        forecast_g_per_kwh: start.mean_g_per_kwh,
        forecast_at_submission_g_per_kwh: start.now_mean_g_per_kwh,
        misses_deadline: start.misses_deadline,
        pauses: Vec::new(),
    };
    progress.scheduled(&record);
    if start.start > submitted {
        spec.clock.sleep_until(start.start).await;
    }
    record
}

/// Run time of a job so far, pauses excluded.
struct Running {
    /// When the current stretch of running began, Unix seconds (clock time).
    since: i64,
    /// Seconds run in earlier stretches.
    before: i64,
}

/// Between parts of a carbon-aware job: waits for a later, clearly cleaner window when the
/// rest of the work (the optimizer's estimate less the time run so far) still fits before the
/// deadline from there (see [`pause_until`]), recording the pause in the manifest.
async fn pause_if_cleaner_later(
    carbon: &CarbonSchedule,
    spec: &JobSpec,
    manifest: &mut Manifest,
    running: &mut Running,
    progress: &dyn JobProgress,
) -> Result<()> {
    let Some(schedule) = manifest.schedule.as_mut() else { return Ok(()) };
    let now = spec.clock.now_unix();
    let ran = running.before + (now - running.since).max(0);
    let remaining = (schedule.estimated_seconds - ran as f64).max(0.0);
    let Some(plan) = pause_until(&carbon.forecast, now, schedule.deadline_unix, remaining) else {
        return Ok(());
    };
    let record = PauseRecord {
        after_part: manifest.parts.len(),
        from_unix: now,
        until_unix: plan.start,
        going_on_g_per_kwh: plan.now_mean_g_per_kwh,
        after_pause_g_per_kwh: plan.mean_g_per_kwh,
    };
    progress.note(&format!(
        "paused after part {}: the forecast is {:.0} g/kWh going on and {:.0} from {} s from \
         now, still before the deadline; the parts written so far are complete",
        record.after_part,
        record.going_on_g_per_kwh,
        record.after_pause_g_per_kwh,
        plan.start - now
    ));
    schedule.pauses.push(record);
    manifest.write(&spec.output)?;
    spec.clock.sleep_until(plan.start).await;
    *running = Running { since: spec.clock.now_unix(), before: ran };
    Ok(())
}

/// Runs `script` (statements separated by `;`, the last one a query) in `session` and writes
/// the final query's rows as described in the module docs.
pub async fn run_job(
    session: &Session,
    script: &str,
    spec: &JobSpec,
    progress: &dyn JobProgress,
) -> Result<JobSummary> {
    if spec.rows_per_part == 0 {
        return Err(DataFusionError::Plan("rows per part must be at least 1".into()));
    }
    let mut statements = session.parse_statements(script)?;
    let Some(last) = statements.pop() else {
        return Err(DataFusionError::Plan(
            "the job has no statements; its last statement must be a query (SELECT ...)".into(),
        ));
    };
    if !is_query(&last) {
        return Err(DataFusionError::Plan(format!(
            "the last statement of a job must be a query (SELECT ...) whose rows are written, found: {}",
            first_words(&last.to_string())
        )));
    }
    let script_sha256 = sha256_hex(script.as_bytes());
    let earlier = match resumable_manifest(spec, &script_sha256)? {
        Some(manifest) if manifest.status == JobStatus::Complete => {
            return Ok(JobSummary {
                rows: manifest.total_rows,
                parts: manifest.parts.len(),
                elapsed: Duration::ZERO,
                output: spec.output.clone(),
                energy: session.energy_since(session.model_work()),
                resumed_rows: manifest.total_rows,
            });
        }
        Some(manifest) => Some(manifest),
        None => {
            prepare_output(&spec.output, spec.overwrite)?;
            None
        }
    };

    let started = Instant::now();
    let work_before = session.model_work();
    for statement in statements {
        session.execute(statement).await?.collect().await?;
    }
    let query_text = last.to_string();
    let mut frame = session.execute(last).await?;
    let logical_schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let key = job_key(spec, earlier.as_ref(), &logical_schema)?;
    // A column that merely happens to be called `id` is tried as the key; if it turns out not
    // to be one, the job still completes, only without the ability to resume.
    let key_chosen = !spec.key.is_empty() || earlier.is_some();
    let mut keys = if key.is_empty() { None } else { Some(DoneKeys::new(&key, &logical_schema)?) };
    if let (Some(manifest), Some(keys)) = (&earlier, keys.as_mut()) {
        for part in &manifest.parts {
            let rows = keys.load_part(&spec.output.join(&part.file))?;
            if rows != part.rows {
                return Err(DataFusionError::Execution(format!(
                    "job part '{}' holds {rows} rows but the manifest lists {}; the output is damaged, rerun with --overwrite",
                    spec.output.join(&part.file).display(),
                    part.rows
                )));
            }
        }
        remove_unlisted_parts(&spec.output, manifest)?;
        if let Some(pending) = keys.pending_filter() {
            frame = frame.filter(pending)?;
        }
    }
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let schema = plan.schema();
    let estimated = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().map(|n| *n as u64));
    // Planning chose the models (sampling if needed), so the time estimate exists now.
    let schedule = match (&spec.carbon_schedule, &earlier) {
        (Some(carbon), None) => Some(wait_for_clean_window(carbon, &plan, spec, progress).await),
        (_, Some(manifest)) => manifest.schedule.clone(),
        (None, None) => None,
    };
    progress.started(estimated);

    let resumed_rows = earlier.as_ref().map_or(0, |m| m.total_rows);
    let mut manifest = match earlier {
        Some(mut manifest) => {
            manifest.resumes += 1;
            manifest
        }
        None => Manifest {
            format: MANIFEST_FORMAT.to_string(),
            script_sha256,
            query: query_text,
            status: JobStatus::Running,
            columns: schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect(),
            parts: Vec::new(),
            total_rows: 0,
            started_unix_ms: unix_ms(),
            finished_unix_ms: None,
            energy_j: None,
            energy_source: None,
            co2e_g: None,
            schedule,
            key,
            resumes: 0,
        },
    };
    manifest.write(&spec.output)?;

    let mut stream = execute_stream(plan, task)?;
    // Seconds the job has run (pauses excluded), for the estimate of what is left.
    let mut running = Running { since: spec.clock.now_unix(), before: 0 };
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    while let Some(batch) = stream.next().await {
        let mut batch = batch?;
        if let Some(tracked) = keys.as_mut() {
            match tracked.take_new(&batch) {
                Ok(new) => batch = new,
                Err(e) if !key_chosen => {
                    // A fresh run has no earlier rows to drop: the batch is written whole.
                    let why = match &e {
                        DataFusionError::Execution(message) => message.clone(),
                        other => other.to_string(),
                    };
                    progress.note(&format!(
                        "{why}; the job goes on, but an interruption could not be resumed"
                    ));
                    keys = None;
                    manifest.key.clear();
                    manifest.write(&spec.output)?;
                }
                Err(e) => return Err(e),
            }
        }
        progress.advanced(batch.num_rows() as u64);
        while batch.num_rows() > 0 {
            let take = (spec.rows_per_part - pending_rows).min(batch.num_rows());
            pending.push(batch.slice(0, take));
            pending_rows += take;
            batch = batch.slice(take, batch.num_rows() - take);
            if pending_rows == spec.rows_per_part {
                finish_part(&spec.output, &schema, &mut pending, &mut manifest)?;
                pending_rows = 0;
                if let Some(carbon) = &spec.carbon_schedule {
                    pause_if_cleaner_later(carbon, spec, &mut manifest, &mut running, progress)
                        .await?;
                }
            }
        }
    }
    // The last short part; or one empty part so the output always carries the schema.
    if pending_rows > 0 || manifest.parts.is_empty() {
        finish_part(&spec.output, &schema, &mut pending, &mut manifest)?;
    }
    let energy = session.energy_since(work_before);
    manifest.status = JobStatus::Complete;
    manifest.finished_unix_ms = Some(unix_ms());
    // A resumed job's totals add this run to the earlier ones.
    manifest.energy_j = Some(manifest.energy_j.unwrap_or(0.0) + energy.joules);
    manifest.energy_source = Some(energy.source.to_string());
    manifest.co2e_g = Some(manifest.co2e_g.unwrap_or(0.0) + energy.grams_co2e);
    manifest.write(&spec.output)?;
    Ok(JobSummary {
        rows: manifest.total_rows,
        parts: manifest.parts.len(),
        elapsed: started.elapsed(),
        output: spec.output.clone(),
        energy,
        resumed_rows,
    })
}

/// The manifest of the job to resume: `None` unless `--resume` was asked and the output holds
/// a job started by the same script.
fn resumable_manifest(spec: &JobSpec, script_sha256: &str) -> Result<Option<Manifest>> {
    if !spec.resume || !spec.output.join(MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    if spec.overwrite {
        return Err(DataFusionError::Plan(
            "--resume and --overwrite contradict each other: one completes the output, the other replaces it".into(),
        ));
    }
    let manifest = Manifest::read(&spec.output)?;
    let shown = spec.output.display();
    if manifest.format != MANIFEST_FORMAT {
        return Err(DataFusionError::Plan(format!(
            "output '{shown}' was written in format '{}', this version writes '{MANIFEST_FORMAT}'; rerun with --overwrite",
            manifest.format
        )));
    }
    if manifest.script_sha256 != script_sha256 {
        return Err(DataFusionError::Plan(format!(
            "output '{shown}' was started by a different job script; resuming needs the same script (or --overwrite to start again)"
        )));
    }
    if manifest.status == JobStatus::Running && manifest.key.is_empty() {
        return Err(DataFusionError::Plan(format!(
            "output '{shown}' was started without a key, so its finished rows cannot be told apart; \
             rerun with --overwrite and --key COLUMN (or an output column named 'id')"
        )));
    }
    if !spec.key.is_empty() && spec.key != manifest.key {
        return Err(DataFusionError::Plan(format!(
            "output '{shown}' was started with key ({}), not ({})",
            manifest.key.join(", "),
            spec.key.join(", ")
        )));
    }
    Ok(Some(manifest))
}

/// The key of the job: the manifest's when resuming, else `--key`, else an `id` column.
fn job_key(spec: &JobSpec, earlier: Option<&Manifest>, schema: &SchemaRef) -> Result<Vec<String>> {
    if let Some(manifest) = earlier {
        return Ok(manifest.key.clone());
    }
    if !spec.key.is_empty() {
        return Ok(spec.key.clone());
    }
    Ok(if schema.index_of("id").is_ok() { vec!["id".to_string()] } else { Vec::new() })
}

/// Removes part files (and temporary files) the manifest does not list: a crash between a
/// part's rename and the manifest's rewrite leaves one, and a directory reader would see it.
fn remove_unlisted_parts(output: &Path, manifest: &Manifest) -> Result<()> {
    let listed: std::collections::HashSet<&str> =
        manifest.parts.iter().map(|p| p.file.as_str()).collect();
    let entries = fs::read_dir(output)
        .map_err(|e| io_error(e, format!("reading output directory '{}'", output.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stray_part = name.starts_with("part-") && !listed.contains(name);
        let temporary = name.starts_with(".part-") && name.ends_with(".tmp");
        if stray_part || temporary {
            fs::remove_file(entry.path())
                .map_err(|e| io_error(e, format!("removing unfinished part '{name}'")))?;
        }
    }
    Ok(())
}

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)))
}

fn first_words(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(4).collect();
    format!("{} ...", words.join(" "))
}

/// Makes `output` an empty directory, refusing to replace anything that is not a job output.
fn prepare_output(output: &Path, overwrite: bool) -> Result<()> {
    let shown = output.display();
    if output.is_file() {
        return Err(DataFusionError::Plan(format!(
            "output '{shown}' is a file; a job writes a directory of part files, so name a new directory"
        )));
    }
    if output.is_dir() {
        let is_job_output = output.join(MANIFEST_FILE).is_file();
        let is_empty = fs::read_dir(output)
            .map_err(|e| io_error(e, format!("reading output directory '{shown}'")))?
            .next()
            .is_none();
        if !is_empty {
            if !is_job_output {
                return Err(DataFusionError::Plan(format!(
                    "output '{shown}' exists and is not a murakkab job output; choose a new directory"
                )));
            }
            if !overwrite {
                return Err(DataFusionError::Plan(format!(
                    "output '{shown}' already exists; pass --resume to complete it or --overwrite to replace it"
                )));
            }
            fs::remove_dir_all(output)
                .map_err(|e| io_error(e, format!("removing old output '{shown}'")))?;
        }
    }
    fs::create_dir_all(output).map_err(|e| io_error(e, format!("creating output '{shown}'")))
}

fn finish_part(
    output: &Path,
    schema: &SchemaRef,
    pending: &mut Vec<RecordBatch>,
    manifest: &mut Manifest,
) -> Result<()> {
    let name = format!("part-{:05}.parquet", manifest.parts.len());
    let rows: usize = pending.iter().map(|b| b.num_rows()).sum();
    write_atomically(output, &name, |file| {
        let mut writer = ArrowWriter::try_new(file, Arc::clone(schema), None)?;
        for batch in pending.iter() {
            writer.write(batch)?;
        }
        writer.close()?;
        Ok(())
    })?;
    pending.clear();
    let bytes = fs::metadata(output.join(&name)).map(|m| m.len()).unwrap_or(0);
    manifest.parts.push(PartInfo { file: name, rows: rows as u64, bytes });
    manifest.total_rows += rows as u64;
    manifest.write(output)
}

/// Writes `dir/name` through a temporary file: write, fsync, rename, fsync the directory. A
/// crash leaves either the old file or the new one, never a torn one under the final name.
fn write_atomically(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let context = || format!("writing '{}'", target.display());
    let result = File::create(&tmp)
        .map_err(|e| io_error(e, context()))
        .and_then(|mut file| {
            write(&mut file)?;
            file.sync_all().map_err(|e| io_error(e, context()))
        })
        .and_then(|()| fs::rename(&tmp, &target).map_err(|e| io_error(e, context())))
        .and_then(|()| {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(e, context()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io_error(err: std::io::Error, context: String) -> DataFusionError {
    DataFusionError::IoError(err).context(context)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
