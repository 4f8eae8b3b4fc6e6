//! Documentation of the AI functions, in the form `\functions` prints.

use datafusion::logical_expr::{DocSection, Documentation};

/// The section every Murakkab function is listed under.
pub(crate) const SECTION: DocSection =
    DocSection { include: true, label: DOC_SECTION, description: None };

/// The label of the documentation section that lists Murakkab's functions.
pub const DOC_SECTION: &str = "AI Functions";

/// Documentation with a description, a syntax line, an example and one line per argument.
pub(crate) fn ai_doc(
    description: &str,
    syntax: &str,
    example: &str,
    arguments: &[(&str, &str)],
) -> Documentation {
    let mut doc = Documentation::builder(SECTION, description.to_string(), syntax.to_string())
        .with_sql_example(example.to_string());
    for (name, text) in arguments {
        doc = doc.with_argument(name.to_string(), text.to_string());
    }
    doc.build()
}
