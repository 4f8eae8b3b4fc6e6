//! Listing the functions a session can call, for the shell's `\functions` and for users.

use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::Documentation;

/// What kind of SQL function an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FunctionKind {
    /// One value per row.
    Scalar,
    /// One value per group.
    Aggregate,
    /// One value per row over a window.
    Window,
    /// A table, used in FROM.
    Table,
}

impl FunctionKind {
    /// Lower-case name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Aggregate => "aggregate",
            Self::Window => "window",
            Self::Table => "table",
        }
    }
}

/// One function with its documentation.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    /// The SQL name.
    pub name: String,
    /// Scalar, aggregate or window.
    pub kind: FunctionKind,
    /// Whether Murakkab (rather than DataFusion) provides it.
    pub murakkab: bool,
    /// One-paragraph description, if documented.
    pub description: Option<String>,
    /// A syntax line such as `cosine_similarity(v1, v2)`.
    pub syntax: Option<String>,
    /// A SQL example with its output.
    pub example: Option<String>,
}

fn info(
    name: &str,
    kind: FunctionKind,
    murakkab: bool,
    doc: Option<&Documentation>,
) -> FunctionInfo {
    FunctionInfo {
        name: name.to_string(),
        kind,
        murakkab,
        description: doc.map(|d| d.description.clone()),
        syntax: doc.map(|d| d.syntax_example.clone()),
        example: doc.and_then(|d| d.sql_example.clone()),
    }
}

/// Every function of `state`, Murakkab's first, then by name.
pub(crate) fn list(state: &SessionState) -> Vec<FunctionInfo> {
    // Murakkab's functions are the ones documented in its section.
    let ours = |doc: Option<&Documentation>| {
        doc.is_some_and(|d| d.doc_section.label == murakkab_udfs::DOC_SECTION)
    };
    let mut out: Vec<FunctionInfo> = Vec::new();
    for (name, f) in state.scalar_functions() {
        out.push(info(name, FunctionKind::Scalar, ours(f.documentation()), f.documentation()));
    }
    for (name, f) in state.aggregate_functions() {
        out.push(info(name, FunctionKind::Aggregate, ours(f.documentation()), f.documentation()));
    }
    for (name, f) in state.window_functions() {
        out.push(info(name, FunctionKind::Window, ours(f.documentation()), f.documentation()));
    }
    for (name, doc) in murakkab_udfs::table_function_docs() {
        if state.table_functions().contains_key(name) {
            out.push(info(name, FunctionKind::Table, true, Some(doc)));
        }
    }
    // Aliases are registered under several names; list each once under its own name.
    out.retain(|f| {
        let canonical = match f.kind {
            FunctionKind::Scalar => {
                state.scalar_functions().get(&f.name).map(|u| u.name() == f.name)
            }
            FunctionKind::Aggregate => {
                state.aggregate_functions().get(&f.name).map(|u| u.name() == f.name)
            }
            FunctionKind::Window => {
                state.window_functions().get(&f.name).map(|u| u.name() == f.name)
            }
            FunctionKind::Table => None,
        };
        canonical.unwrap_or(true)
    });
    out.sort_by(|a, b| b.murakkab.cmp(&a.murakkab).then_with(|| a.name.cmp(&b.name)));
    out
}
