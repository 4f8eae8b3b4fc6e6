//! The interactive shell: read a statement or backslash command, run it, print, repeat.

use murakkab::{Error, Result, Session};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Config, Editor};

use crate::command::BackslashCommand;
use crate::exec::{self, ExecOptions};
use crate::helper::ShellHelper;

/// Runs the shell until `\q` or Ctrl-D. Errors are printed and the shell carries on.
pub async fn run(session: Session, mut options: ExecOptions) -> Result<()> {
    let config = Config::builder()
        .auto_add_history(true)
        .max_history_size(10_000)
        .map_err(readline)?
        .build();
    let mut editor: Editor<ShellHelper, DefaultHistory> =
        Editor::with_config(config).map_err(readline)?;
    editor.set_helper(Some(ShellHelper));
    let history = session.home().history_file();
    // A missing history file is normal on first start.
    let _ = editor.load_history(&history);

    println!(
        "Murakkab {} — SQL with AI functions. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        match editor.readline("murakkab> ") {
            Ok(line) => {
                let input = line.trim();
                if input.is_empty() {
                    continue;
                }
                if input.starts_with('\\') {
                    match BackslashCommand::parse(input) {
                        Ok(command) => match command.run(&session, &mut options).await {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => eprintln!("Error: {}", murakkab::user_message(&e)),
                        },
                        Err(message) => eprintln!("Error: {message}"),
                    }
                    continue;
                }
                if let Err(e) = exec::run_sql(&session, input, &options).await {
                    eprintln!("Error: {}", murakkab::user_message(&e));
                }
            }
            // Ctrl-C at the prompt clears the line; it cancels only a running query.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(readline(e)),
        }
    }
    if let Some(parent) = history.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = editor.save_history(&history) {
        eprintln!("warning: could not save history to '{}': {e}", history.display());
    }
    Ok(())
}

fn readline(e: ReadlineError) -> Error {
    Error::External(Box::new(e))
}
