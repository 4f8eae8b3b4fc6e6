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
    line.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
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
    fn context_chain_is_one_line() {
        let err =
            DataFusionError::Plan("table 't' not found\nhint".into()).context("registering 'x'");
        assert_eq!(user_message(&err), "registering 'x': planning error: table 't' not found hint");
    }
}
