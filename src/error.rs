//! Turning errors into the one-line messages users see.

use datafusion::error::DataFusionError;

/// A one-line message for `err`: the context chain joined with `: `, DataFusion's category
/// prefixes kept short, no backtrace.
pub fn user_message(err: &DataFusionError) -> String {
    let mut parts = Vec::new();
    let mut current = err;
    loop {
        match current {
            DataFusionError::Context(context, inner) => {
                parts.push(context.clone());
                current = inner;
            }
            DataFusionError::Diagnostic(_, inner) => current = inner,
            DataFusionError::Shared(inner) => current = inner,
            other => {
                parts.push(describe(other));
                break;
            }
        }
    }
    let line = parts.join(": ");
    let line =
        line.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    match file_path_hint(&line) {
        Some(hint) => format!("{line}; {hint}"),
        None => line,
    }
}

/// DataFusion reports a file path in `FROM` that it could not read as a missing table; say what
/// a path needs instead.
fn file_path_hint(message: &str) -> Option<String> {
    let start = message.find("table '")? + "table '".len();
    let rest = &message[start..];
    let name = &rest[..rest.find("' not found")?];
    let name = name.strip_prefix("datafusion.public.").unwrap_or(name);
    if !(name.contains('/') || name.contains('.')) {
        return None;
    }
    Some(format!(
        "if '{name}' is a file, check that it exists and ends in .parquet, .csv, .json or .arrow"
    ))
}

fn describe(err: &DataFusionError) -> String {
    let text = err.to_string();
    // DataFusion prefixes a category ("Error during planning: ..."); keep it short and readable.
    for (prefix, short) in [
        ("Error during planning: ", "planning error: "),
        ("Execution error: ", "execution error: "),
        ("Invalid or Unsupported Configuration: ", "configuration error: "),
        ("SQL error: ", "SQL error: "),
        ("Schema error: ", "schema error: "),
        ("This feature is not implemented: ", "not supported: "),
        ("Resources exhausted: ", "resources exhausted: "),
        ("Arrow error: ", "arrow error: "),
        ("IO error: ", "I/O error: "),
        ("Parquet error: ", "parquet error: "),
        ("Object Store error: ", "file error: "),
        ("External error: ", ""),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return format!("{short}{rest}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_is_not_a_table_gets_a_hint() {
        let err = DataFusionError::Plan("table 'datafusion.public.data/x.txt' not found".into());
        let msg = user_message(&err);
        assert!(msg.ends_with("if 'data/x.txt' is a file, check that it exists and ends in .parquet, .csv, .json or .arrow"), "{msg}");
        let plain = DataFusionError::Plan("table 'datafusion.public.reviews' not found".into());
        assert!(!user_message(&plain).contains("if '"));
    }

    #[test]
    fn context_chain_is_one_line() {
        let err =
            DataFusionError::Plan("table 't' not found\nhint".into()).context("registering 'x'");
        assert_eq!(user_message(&err), "registering 'x': planning error: table 't' not found hint");
    }
}
