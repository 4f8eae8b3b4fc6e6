//! The shell's backslash commands, as a typed enum parsed from the input line.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use murakkab::{Error, Result, Session};

use crate::exec::{self, ExecOptions};
use crate::models;
use crate::output::{OutputFormat, print_batches};

/// A backslash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackslashCommand {
    /// `\d`: list tables.
    ListTables,
    /// `\d NAME`: describe a table.
    DescribeTable(String),
    /// `\functions [PATTERN]`: list functions, or show one in full.
    Functions(Option<String>),
    /// `\models`: list models and whether each is pulled.
    Models,
    /// `\timing on|off`.
    Timing(bool),
    /// `\format table|csv|json|ndjson`.
    Format(OutputFormat),
    /// `\q`: quit.
    Quit,
    /// `\?`: help.
    Help,
}

const HELP: &str = "\
\\d                 list tables
\\d NAME            describe table NAME
\\functions [TEXT]  list Murakkab's functions, or every function whose name contains TEXT
\\models            list models and whether each is pulled
\\timing on|off     print rows, time, joules and CO2e after each statement
\\format FORMAT     output format: table, csv, json, ndjson
\\q                 quit (or Ctrl-D)
\\?                 this help

SQL statements end with ';' and may span lines. Ctrl-C cancels a running query.";

impl BackslashCommand {
    /// Parses a line starting with `\`; the error says what was expected.
    pub fn parse(line: &str) -> std::result::Result<Self, String> {
        let line = line.trim().trim_end_matches(';').trim();
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let arg = words.next().map(str::to_string);
        if let Some(extra) = words.next() {
            return Err(format!("{name}: unexpected argument '{extra}'; see \\?"));
        }
        match (name, arg) {
            ("\\d", None) => Ok(Self::ListTables),
            ("\\d", Some(table)) => Ok(Self::DescribeTable(table)),
            ("\\functions" | "\\df", pattern) => Ok(Self::Functions(pattern)),
            ("\\models", None) => Ok(Self::Models),
            ("\\timing", Some(v)) => match v.to_ascii_lowercase().as_str() {
                "on" => Ok(Self::Timing(true)),
                "off" => Ok(Self::Timing(false)),
                _ => Err(format!("\\timing expects on or off, got '{v}'")),
            },
            ("\\timing", None) => Err("\\timing expects on or off".into()),
            ("\\format", Some(f)) => OutputFormat::parse(&f).map(Self::Format).ok_or_else(|| {
                format!("\\format expects one of {}, got '{f}'", OutputFormat::names())
            }),
            ("\\format", None) => Err(format!("\\format expects one of {}", OutputFormat::names())),
            ("\\q" | "\\quit", None) => Ok(Self::Quit),
            ("\\?" | "\\h" | "\\help", None) => Ok(Self::Help),
            ("\\models" | "\\q" | "\\?", Some(a)) => {
                Err(format!("{name} takes no argument, got '{a}'"))
            }
            _ => Err(format!("unknown command '{name}'; \\? lists the commands")),
        }
    }

    /// Runs the command. Returns `false` when the shell should exit.
    pub async fn run(self, session: &Session, options: &mut ExecOptions) -> Result<bool> {
        match self {
            Self::ListTables => {
                let sql = "SELECT table_schema, table_name, table_type \
                           FROM information_schema.tables \
                           WHERE table_schema <> 'information_schema' \
                           ORDER BY table_schema, table_name";
                exec::run_sql(session, sql, &quiet(options)).await?;
            }
            Self::DescribeTable(name) => {
                exec::run_sql(session, &format!("DESCRIBE {}", quote_name(&name)), &quiet(options))
                    .await?;
            }
            Self::Functions(pattern) => {
                print_functions(session, pattern.as_deref(), options.format)?
            }
            Self::Models => models::print_list(session, options.format),
            Self::Timing(on) => options.timing = on,
            Self::Format(format) => options.format = format,
            Self::Quit => return Ok(false),
            Self::Help => println!("{HELP}"),
        }
        Ok(true)
    }
}

fn quiet(options: &ExecOptions) -> ExecOptions {
    ExecOptions { timing: false, ..options.clone() }
}

/// Quotes each part of a possibly qualified name unless it is a plain lower-case identifier.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| {
            let plain =
                part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !part.is_empty();
            if plain { part.to_string() } else { format!("\"{}\"", part.replace('"', "\"\"")) }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn print_functions(session: &Session, pattern: Option<&str>, format: OutputFormat) -> Result<()> {
    let all = session.functions();
    let chosen: Vec<_> = match pattern {
        None => all.into_iter().filter(|f| f.murakkab).collect(),
        Some(p) => {
            let p = p.to_ascii_lowercase();
            if let Some(exact) = all.iter().find(|f| f.name == p) {
                println!("{} ({} function)\n", exact.name, exact.kind.name());
                if let Some(syntax) = &exact.syntax {
                    println!("  {syntax}\n");
                }
                println!("{}", exact.description.as_deref().unwrap_or("(no documentation)"));
                if let Some(example) = &exact.example {
                    println!("\nExample:\n{example}");
                }
                return Ok(());
            }
            all.into_iter().filter(|f| f.name.contains(&p)).collect()
        }
    };
    let column = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            column(chosen.iter().map(|f| f.name.clone()).collect()),
            column(chosen.iter().map(|f| f.kind.name().to_string()).collect()),
            column(chosen.iter().map(|f| first_sentence(f.description.as_deref())).collect()),
        ],
    )?;
    print_batches(&mut std::io::stdout().lock(), format, &schema, &[batch])?;
    if pattern.is_none() {
        println!(
            "\\functions NAME shows one function in full; \\functions TEXT searches all functions."
        );
    }
    Ok::<(), Error>(())
}

fn first_sentence(text: Option<&str>) -> String {
    let text = text.unwrap_or("").replace('\n', " ");
    match text.find(". ") {
        Some(end) => text[..=end].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        use BackslashCommand as C;
        assert_eq!(C::parse("\\d"), Ok(C::ListTables));
        assert_eq!(C::parse("\\d reviews"), Ok(C::DescribeTable("reviews".into())));
        assert_eq!(C::parse("\\functions"), Ok(C::Functions(None)));
        assert_eq!(C::parse("\\functions cos"), Ok(C::Functions(Some("cos".into()))));
        assert_eq!(C::parse("\\models"), Ok(C::Models));
        assert_eq!(C::parse("\\timing off"), Ok(C::Timing(false)));
        assert_eq!(C::parse("\\format csv"), Ok(C::Format(OutputFormat::Csv)));
        assert_eq!(C::parse("\\q"), Ok(C::Quit));
        assert_eq!(C::parse("\\?"), Ok(C::Help));
    }

    #[test]
    fn bad_commands_say_what_was_expected() {
        use BackslashCommand as C;
        assert!(C::parse("\\timing maybe").unwrap_err().contains("on or off"));
        assert!(C::parse("\\format xml").unwrap_err().contains("table, csv, json"));
        assert!(C::parse("\\nope").unwrap_err().contains("\\?"));
        assert!(C::parse("\\d a b").unwrap_err().contains("unexpected argument 'b'"));
    }

    #[test]
    fn names_are_quoted_when_needed() {
        assert_eq!(quote_name("reviews"), "reviews");
        assert_eq!(quote_name("public.Reviews"), "public.\"Reviews\"");
        assert_eq!(quote_name("a\"b"), "\"a\"\"b\"");
    }
}
