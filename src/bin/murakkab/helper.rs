//! The line editor's helper: input is complete at a trailing `;` or on a backslash command, so
//! SQL can span lines.

use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Completer, Helper, Highlighter, Hinter};

/// Decides when the shell has a whole statement.
#[derive(Debug, Default, Helper, Completer, Hinter, Highlighter)]
pub struct ShellHelper;

/// Whether `input` is ready to run: empty, a backslash command, or SQL ending in `;`.
pub fn is_complete(input: &str) -> bool {
    let trimmed = input.trim();
    trimmed.is_empty() || trimmed.starts_with('\\') || trimmed.ends_with(';')
}

impl Validator for ShellHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if is_complete(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons() {
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1\nFROM t;  "));
        assert!(!is_complete("SELECT 1\nFROM t"));
        assert!(is_complete("\\d"));
        assert!(is_complete("   "));
    }
}
