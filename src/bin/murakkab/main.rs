//! The `murakkab` command: an interactive SQL shell, one-shot `-c`/`-f` execution, batch jobs
//! (`murakkab run`) and model management (`murakkab models`).
//!
//! `main` only maps the outcome to an exit status; the work happens in `main_inner`, so every
//! error takes one path: a one-line message on stderr and exit status 1, never a panic.

// The binary is the one place that talks to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod calibrate;
mod command;
mod exec;
mod helper;
mod models;
mod output;
mod run_job;
mod shell;

use std::process::ExitCode;

use clap::Parser;
use murakkab::{Result, Session};

use crate::args::{Args, Command, ModelsCommand};
use crate::exec::ExecOptions;

#[allow(unsafe_code)]
fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: nothing has started a thread yet; the async runtime starts below.
    unsafe { murakkab::init_model_threads(args.threads) };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("murakkab: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", murakkab::user_message(&e));
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(args: Args) -> Result<()> {
    init_logging();
    let session = args.session().await?;
    match args.command {
        Some(Command::Run(run)) => run_job::run(&session, &run).await,
        Some(Command::Models { command: ModelsCommand::List }) => {
            models::print_list(&session, args.format);
            Ok(())
        }
        Some(Command::Models { command: ModelsCommand::Pull { ids, default } }) => {
            models::pull(&session, &ids, default)
        }
        Some(Command::Calibrate) => calibrate::run(&session, args.threads),
        None if args.commands.is_empty() && args.files.is_empty() => {
            shell::run(session, ExecOptions { format: args.format, timing: true }).await
        }
        None => run_commands_and_files(&session, &args).await,
    }
}

/// `-c` commands then `-f` files, in the order given, stopping at the first error.
async fn run_commands_and_files(session: &Session, args: &Args) -> Result<()> {
    let options = ExecOptions { format: args.format, timing: false };
    for sql in &args.commands {
        exec::run_sql(session, sql, &options).await?;
    }
    for file in &args.files {
        let sql = std::fs::read_to_string(file).map_err(|e| {
            murakkab::Error::IoError(e).context(format!("reading SQL file '{}'", file.display()))
        })?;
        exec::run_sql(session, &sql, &options).await?;
    }
    Ok(())
}

/// Library logs go to stderr, quiet unless `RUST_LOG` asks for more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
