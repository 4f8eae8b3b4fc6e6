//! The embedded API: a [`Session`] and its [`SessionBuilder`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionContext;
use datafusion::execution::options::ArrowReadOptions;
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions};
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use murakkab_catalog::MurakkabHome;
use murakkab_compiler::{MurakkabOptions, Priority, make_arguments_positional};
use murakkab_udfs::{AiBackend, AiWarning, AiWarnings};

use crate::functions::{self, FunctionInfo};
use crate::session_state;

/// Options fixed for the life of a session. Built with [`Session::builder`].
#[derive(Clone)]
pub struct SessionBuilder {
    pub(crate) home: Option<PathBuf>,
    pub(crate) threads: Option<usize>,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) priority: Priority,
    pub(crate) ai_backend: Option<Arc<dyn AiBackend>>,
    pub(crate) result_cache: bool,
}

impl std::fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("home", &self.home)
            .field("threads", &self.threads)
            .field("memory_limit", &self.memory_limit)
            .field("priority", &self.priority)
            .field("ai_backend", &self.ai_backend)
            .field("result_cache", &self.result_cache)
            .finish()
    }
}

impl SessionBuilder {
    /// The home directory for models, caches, statistics and history
    /// (default: `$MURAKKAB_HOME`, else `~/.cache/murakkab`).
    pub fn home(mut self, dir: impl AsRef<Path>) -> Self {
        self.home = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Threads for query execution: DataFusion's partitions (default: all cores). Model kernels
    /// follow `RAYON_NUM_THREADS` until the model runtime takes this setting.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Upper bound in bytes on the memory queries may reserve; operators that can spill do,
    /// the others fail with "resources exhausted" rather than exceed it.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The scheduling class of this session's model work (default: interactive).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Runs the AI functions on `backend` instead of the in-process models (default). For
    /// tests, and for serving models some other way; the functions' prompts, types, NULL
    /// handling and warnings stay the same.
    pub fn ai_backend(mut self, backend: Arc<dyn AiBackend>) -> Self {
        self.ai_backend = Some(backend);
        self
    }

    /// Whether model answers are kept in the persistent result cache under the home directory
    /// (default: yes). With it, running the same query twice makes no model calls the second
    /// time; turn it off to measure the models themselves.
    pub fn result_cache(mut self, enabled: bool) -> Self {
        self.result_cache = enabled;
        self
    }

    /// Assembles the session. Nothing is loaded or written until a query needs it.
    pub async fn build(self) -> Result<Session> {
        let home = self.home.clone().map(MurakkabHome::at).unwrap_or_else(MurakkabHome::from_env);
        let warnings = Arc::new(AiWarnings::default());
        let ctx = session_state::new_context(&self, &home, &warnings)?;
        Ok(Session { ctx, home, warnings })
    }
}

/// A Murakkab session: a catalog of tables, the `murakkab.*` options, and the AI functions.
///
/// Cloning is cheap and shares tables and options. Model weights are shared by every session
/// in the process, so many sessions cost no more memory than one.
#[derive(Clone)]
pub struct Session {
    ctx: SessionContext,
    home: MurakkabHome,
    warnings: Arc<AiWarnings>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.ctx.session_id())
            .field("home", &self.home)
            .finish()
    }
}

impl Session {
    /// A session with default options.
    pub async fn new() -> Result<Self> {
        Self::builder().build().await
    }

    /// A builder for a session with options.
    pub fn builder() -> SessionBuilder {
        SessionBuilder {
            home: None,
            threads: None,
            memory_limit: None,
            priority: Priority::default(),
            ai_backend: None,
            result_cache: true,
        }
    }

    /// The home directory of this session.
    pub fn home(&self) -> &MurakkabHome {
        &self.home
    }

    /// The underlying DataFusion context, for anything this API does not wrap.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The current `murakkab.*` options.
    pub fn options(&self) -> MurakkabOptions {
        MurakkabOptions::from_config(self.ctx.state().config().options())
    }

    /// Plans one SQL statement. Statements such as `CREATE`, `SET` and `COPY` take effect when
    /// the returned frame is collected; queries run when it is collected or streamed.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let mut statements = self.parse_statements(sql)?;
        if statements.len() != 1 {
            return Err(DataFusionError::Plan(format!(
                "Session::sql runs exactly one statement, got {}; use parse_statements and \
                 execute for several",
                statements.len()
            )));
        }
        self.execute(statements.remove(0)).await
    }

    /// A reading of the model work done in this process so far; pass it to
    /// [`Session::energy_since`] after a statement to learn what the statement cost.
    pub fn model_work(&self) -> crate::ModelWork {
        murakkab_exec::energy::process_totals()
    }

    /// Joules (measured or modeled) and grams CO2e of the model work since `before`, under this
    /// session's power model and grid intensity. Model work of other sessions running at the
    /// same time in this process is included.
    pub fn energy_since(&self, before: crate::ModelWork) -> crate::EnergyReport {
        crate::EnergyReport::of(self.model_work().since(before), &self.options())
    }

    /// Row-level problems of the AI functions since the last call (rows that became NULL, prompts
    /// cut to fit the context), cleared as they are returned. The shell prints them after each
    /// result.
    pub fn take_warnings(&self) -> Vec<AiWarning> {
        self.warnings.take()
    }

    /// Splits SQL text into statements with the session's dialect, so each can be run and
    /// reported on its own (the shell, `-c`, `-f` and batch jobs all go through here).
    pub fn parse_statements(&self, sql: &str) -> Result<Vec<Statement>> {
        let state = self.ctx.state();
        let options = state.config().options();
        let dialect_name = options.sql_parser.dialect;
        let dialect = dialect_from_str(dialect_name).ok_or_else(|| {
            DataFusionError::Plan(format!("unsupported SQL dialect {dialect_name}"))
        })?;
        let statements = DFParserBuilder::new(sql)
            .with_dialect(dialect.as_ref())
            .with_recursion_limit(options.sql_parser.recursion_limit.get())
            .build()?
            .parse_statements()?;
        Ok(statements.into_iter().collect())
    }

    /// Plans one parsed statement; see [`Session::sql`].
    pub async fn execute(&self, mut statement: Statement) -> Result<DataFrame> {
        let state = self.ctx.state();
        let parameters = |name: &str| {
            let scalar = state.scalar_functions().get(name).map(|f| f.signature().clone());
            let aggregate = || state.aggregate_functions().get(name).map(|f| f.signature().clone());
            scalar.or_else(aggregate).and_then(|s| s.parameter_names)
        };
        make_arguments_positional(&mut statement, &parameters)?;
        let plan = state.statement_to_plan(statement).await?;
        self.ctx.execute_logical_plan(plan).await
    }

    /// Registers a Parquet file (or a directory of them) as table `name`.
    pub async fn register_parquet(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = checked_path(name, path.as_ref())?;
        self.ctx
            .register_parquet(
                name,
                &path,
                ParquetReadOptions {
                    file_extension: extension_of(&path, ".parquet"),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| registering(name, &path, e))
    }

    /// Registers a CSV file with a header row (or a directory of them) as table `name`.
    pub async fn register_csv(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = checked_path(name, path.as_ref())?;
        self.ctx
            .register_csv(
                name,
                &path,
                CsvReadOptions {
                    file_extension: extension_of(&path, ".csv"),
                    ..CsvReadOptions::new()
                },
            )
            .await
            .map_err(|e| registering(name, &path, e))
    }

    /// Registers a JSON file as table `name`: newline-delimited (one object per line), or a
    /// single JSON array of objects, detected from the file's first character.
    pub async fn register_json(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = checked_path(name, path.as_ref())?;
        let options = JsonReadOptions {
            file_extension: extension_of(&path, ".json"),
            newline_delimited: !starts_with_array(Path::new(&path)),
            ..Default::default()
        };
        self.ctx.register_json(name, &path, options).await.map_err(|e| registering(name, &path, e))
    }

    /// Registers an Arrow IPC file as table `name`.
    pub async fn register_arrow(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = checked_path(name, path.as_ref())?;
        let options = ArrowReadOptions {
            file_extension: extension_of(&path, ".arrow"),
            ..Default::default()
        };
        self.ctx.register_arrow(name, &path, options).await.map_err(|e| registering(name, &path, e))
    }

    /// Registers in-memory batches (all of one schema) as table `name`.
    pub async fn register_batches(&self, name: &str, batches: Vec<RecordBatch>) -> Result<()> {
        let Some(first) = batches.first() else {
            return Err(DataFusionError::Plan(format!(
                "cannot register table '{name}' from zero batches: the schema is unknown; pass at least one (possibly empty) batch"
            )));
        };
        let schema = first.schema();
        let table = MemTable::try_new(schema, vec![batches])
            .map_err(|e| e.context(format!("registering table '{name}'")))?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }

    /// Registers one in-memory batch as table `name`.
    pub async fn register_batch(&self, name: &str, batch: RecordBatch) -> Result<()> {
        self.register_batches(name, vec![batch]).await
    }

    /// Every function callable from SQL, Murakkab's first, with their documentation.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        functions::list(&self.ctx.state())
    }
}

/// A clear error for a missing file, naming the table and the path, before DataFusion's less
/// direct "no files found" planning error can occur.
fn checked_path(name: &str, path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(DataFusionError::Plan(format!(
            "cannot register table '{name}': no file or directory at '{}'",
            path.display()
        )));
    }
    path.to_str().map(str::to_string).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "cannot register table '{name}': the path '{}' is not valid UTF-8",
            path.display()
        ))
    })
}

/// Read options filter files by extension: a directory keeps the format's files, a single file
/// is read whatever it is named (an empty extension matches every name).
fn extension_of<'a>(path: &str, default: &'a str) -> &'a str {
    if Path::new(path).is_file() { "" } else { default }
}

/// Whether a single file's first non-blank byte is `[` (a JSON array rather than NDJSON).
fn starts_with_array(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

fn registering(name: &str, path: &str, err: DataFusionError) -> DataFusionError {
    err.context(format!("registering table '{name}' from '{path}'"))
}
