//! The one execution path shared by the shell, `-c` and `-f`: split the text into statements,
//! run each, print its result.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use datafusion::sql::parser::Statement;
use murakkab::{Error, Result, Session};

use crate::output::{OutputFormat, print_batches};

/// How results are shown.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Print the row count, elapsed time and the model work's energy and CO2e after each
    /// statement.
    pub timing: bool,
}

/// Runs every statement in `sql` in order, stopping at the first error.
pub async fn run_sql(session: &Session, sql: &str, options: &ExecOptions) -> Result<()> {
    for statement in session.parse_statements(sql)? {
        run_statement(session, statement, options).await?;
    }
    Ok(())
}

/// Runs one statement; Ctrl-C while it runs cancels it (dropping the stream stops the work).
async fn run_statement(
    session: &Session,
    statement: Statement,
    options: &ExecOptions,
) -> Result<()> {
    let started = Instant::now();
    let work_before = session.model_work();
    session.take_warnings();
    let work = async {
        let frame = session.execute(statement).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok::<_, Error>((schema, batches))
    };
    let (schema, batches) = tokio::select! {
        result = work => result?,
        _ = tokio::signal::ctrl_c() => {
            return Err(Error::Execution("query cancelled by Ctrl-C".into()));
        }
    };
    let elapsed = started.elapsed();
    let mut stdout = std::io::stdout().lock();
    print_batches(&mut stdout, options.format, &schema, &batches)?;
    if options.timing {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let what = if schema.fields().is_empty() {
            "OK".to_string()
        } else {
            format!("{rows} row{}", if rows == 1 { "" } else { "s" })
        };
        let energy = session.energy_since(work_before);
        writeln!(stdout, "{what} in {:.3}s, {energy}", elapsed.as_secs_f64())
            .map_err(Error::IoError)?;
    }
    drop(stdout);
    // Rows the AI functions could not answer became NULL; say so after the result.
    for warning in session.take_warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(())
}
