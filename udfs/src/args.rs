//! What every AI function shares: its parameter list, argument checks whose errors name the
//! function, reading constant options, and running a batch of rows through a backend with
//! de-duplication, NULL handling and warnings.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Signature, Volatility};

use crate::backend::{AiBackend, BatchOutput};
use crate::warnings::AiWarnings;

/// What the AI functions of one session share: the backend that runs models and the warning
/// counter the shell reads after each statement.
#[derive(Debug, Clone)]
pub struct AiContext {
    /// Runs the models.
    pub backend: Arc<dyn AiBackend>,
    /// Row-level problems, reported after the result.
    pub warnings: Arc<AiWarnings>,
}

/// How a parameter may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text: a column or a constant.
    Text,
    /// A constant string (a model id, a schema); NULL means the default.
    ConstText,
    /// A constant integer; NULL means the default.
    ConstInt,
    /// A constant number; NULL means the default.
    ConstFloat,
    /// A list of strings (labels).
    TextList,
}

/// One parameter: its SQL name, kind, and whether it may be left out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
}

pub(crate) const fn required(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, optional: false }
}

pub(crate) const fn optional(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, optional: true }
}

/// The signature of an AI function: checked by [`coerce`], named arguments allowed, and
/// volatile so the planner never calls a model while planning (constant folding) or EXPLAIN.
pub(crate) fn signature(params: &[Param]) -> Signature {
    let names: Vec<&str> = params.iter().map(|p| p.name).collect();
    let plain = Signature::user_defined(Volatility::Volatile);
    plain.clone().with_parameter_names(names).unwrap_or(plain)
}

/// `name(a, b [, c])` for error messages.
pub(crate) fn usage(function: &str, params: &[Param]) -> String {
    let mut out = format!("{function}(");
    let mut optional_open = false;
    for (i, p) in params.iter().enumerate() {
        if p.optional && !optional_open {
            out.push_str(if i == 0 { "[" } else { " [, " });
            optional_open = true;
        } else if i > 0 {
            out.push_str(", ");
        }
        out.push_str(p.name);
    }
    if optional_open {
        out.push(']');
    }
    out.push(')');
    out
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null)
}

/// Checks the argument count and types (it never asks for casts).
pub(crate) fn coerce(
    function: &str,
    params: &[Param],
    arg_types: &[DataType],
) -> Result<Vec<DataType>> {
    let min = params.iter().filter(|p| !p.optional).count();
    if arg_types.len() < min || arg_types.len() > params.len() {
        return plan_err!(
            "{function} expects {}, got {} argument{}",
            usage(function, params),
            arg_types.len(),
            if arg_types.len() == 1 { "" } else { "s" }
        );
    }
    for (p, t) in params.iter().zip(arg_types) {
        let ok = match p.kind {
            Kind::Text | Kind::ConstText => is_text(t),
            Kind::ConstInt => t.is_integer() || t == &DataType::Null,
            Kind::ConstFloat => t.is_numeric() || t == &DataType::Null,
            Kind::TextList => match t {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                    is_text(f.data_type())
                }
                DataType::Null => true,
                _ => false,
            },
        };
        if !ok {
            let wanted = match p.kind {
                Kind::Text => "text",
                Kind::ConstText => "a constant string",
                Kind::ConstInt => "an integer",
                Kind::ConstFloat => "a number",
                Kind::TextList => "a list of strings, e.g. ['positive', 'negative']",
            };
            return plan_err!("{function}: argument '{}' must be {wanted}, got {t}", p.name);
        }
    }
    // No casts: options must stay literals for the planning-time checks, and the functions
    // read every string and number type themselves.
    Ok(arg_types.to_vec())
}

/// Checks, at planning time, that the constant parameters are literals.
pub(crate) fn check_constants(
    function: &str,
    params: &[Param],
    scalars: &[Option<&ScalarValue>],
) -> Result<()> {
    for (p, s) in params.iter().zip(scalars) {
        if matches!(p.kind, Kind::ConstText | Kind::ConstInt | Kind::ConstFloat) && s.is_none() {
            return plan_err!(
                "{function}: argument '{}' must be a constant, not a column or expression",
                p.name
            );
        }
    }
    Ok(())
}

/// The scalar at `index`, if given and not NULL.
fn scalar_at(args: &[ColumnarValue], index: usize) -> Option<&ScalarValue> {
    match args.get(index) {
        Some(ColumnarValue::Scalar(s)) if !s.is_null() => Some(s),
        _ => None,
    }
}

/// A constant string option; `None` when left out or NULL.
pub(crate) fn const_text(args: &[ColumnarValue], index: usize) -> Option<String> {
    match scalar_at(args, index)? {
        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => s.clone(),
        other => Some(other.to_string()),
    }
}

/// A constant string option read from planning-time literals.
pub(crate) fn literal_text(scalars: &[Option<&ScalarValue>], index: usize) -> Option<String> {
    match scalars.get(index).copied().flatten()? {
        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => s.clone(),
        _ => None,
    }
}

/// A constant integer option, checked against `range`.
pub(crate) fn const_int(
    function: &str,
    name: &str,
    args: &[ColumnarValue],
    index: usize,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64> {
    let value = match scalar_at(args, index).map(|s| s.cast_to(&DataType::Int64)).transpose()? {
        Some(ScalarValue::Int64(Some(v))) => v,
        _ => default,
    };
    in_range(function, name, value, range)
}

/// A constant number option, checked against `range`.
pub(crate) fn const_float(
    function: &str,
    name: &str,
    args: &[ColumnarValue],
    index: usize,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64> {
    let value = match scalar_at(args, index).map(|s| s.cast_to(&DataType::Float64)).transpose()? {
        Some(ScalarValue::Float64(Some(v))) => v,
        _ => default,
    };
    in_range(function, name, value, range)
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    function: &str,
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T> {
    if !range.contains(&value) {
        return exec_err!(
            "{function}: {name} must be between {} and {}, got {value}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// Scores the representative rows `reps` in groups that share an instruction (one condition,
/// one label set): `key` names each row's group, `score` makes one backend call for a group's
/// rows and turns each row's label probabilities into its value. Results come back in `reps`
/// order, with the truncation counts summed.
pub(crate) fn score_in_groups<K: std::hash::Hash + Eq, T: Clone>(
    reps: &[usize],
    key: impl Fn(usize) -> K,
    mut score: impl FnMut(&K, &[usize]) -> std::result::Result<BatchOutput<Vec<f32>>, String>,
    value: impl Fn(&K, Vec<f32>) -> T,
) -> std::result::Result<BatchOutput<T>, String> {
    let mut groups: HashMap<K, Vec<usize>> = HashMap::new();
    for (slot, &row) in reps.iter().enumerate() {
        groups.entry(key(row)).or_default().push(slot);
    }
    let mut out: Vec<std::result::Result<T, String>> = vec![Err(String::new()); reps.len()];
    let mut truncated = 0;
    for (group, slots) in groups {
        let rows: Vec<usize> = slots.iter().map(|&s| reps[s]).collect();
        let scored = score(&group, &rows)?;
        truncated += scored.truncated;
        for (&slot, probs) in slots.iter().zip(scored.rows) {
            out[slot] = probs.map(|p| value(&group, p));
        }
    }
    Ok(BatchOutput { rows: out, truncated })
}

/// The argument at `index` as one string per row.
pub(crate) fn texts(args: &[ColumnarValue], index: usize, rows: usize) -> Result<StringArray> {
    let array: ArrayRef = match args.get(index) {
        Some(value) => value.to_array(rows)?,
        None => return Ok(StringArray::new_null(rows)),
    };
    let array = cast(&array, &DataType::Utf8)?;
    Ok(array.as_any().downcast_ref::<StringArray>().cloned().unwrap_or_else(|| {
        // `cast` to Utf8 always yields a StringArray; this only guards the downcast.
        StringArray::new_null(rows)
    }))
}

/// The value of a `murakkab.*` option as the session holds it (udfs read options by key so
/// they do not depend on the compiler crate that defines them).
fn option_is(config: &ConfigOptions, key: &str, value: &str) -> bool {
    config.entries().iter().any(|e| e.key == key && e.value.as_deref() == Some(value))
}

/// Whether `murakkab.on_error = 'fail'` (rows that fail make the query fail).
pub(crate) fn fail_on_error(config: &ConfigOptions) -> bool {
    option_is(config, "murakkab.on_error", "fail")
}

/// Whether calls are batched, deduplicated and may reuse earlier work; false is the naive
/// baseline (`murakkab.exec.batching = false`).
pub(crate) fn batching_enabled(config: &ConfigOptions) -> bool {
    !option_is(config, "murakkab.exec.batching", "false")
}

/// The model a call runs on: the one it names, or for `auto` the reference, the largest pulled
/// model that can do the task.
///
/// A language-model call still at `auto` when it runs is one no quality check chose a model
/// for: the optimizer replaces `auto` in every label and extraction call it plans, but free
/// text (`ai_complete`, `ai_summarize_agg`) has no agreement to measure, and a cheaper model
/// there would be a guess at the user's expense. So `auto` means the reference with the
/// optimizer on or off (off, it is the naive baseline's model). Embeddings take the default
/// encoder, or the largest with the optimizer off.
pub(crate) fn model_for(
    context: &AiContext,
    config: &ConfigOptions,
    requested: Option<&str>,
    task: murakkab_catalog::Task,
) -> std::result::Result<murakkab_catalog::ModelCard, String> {
    let auto = requested.is_none_or(|r| r.trim().eq_ignore_ascii_case("auto"));
    let language_model = task != murakkab_catalog::Task::Embed;
    if auto && (language_model || option_is(config, "murakkab.optimizer.enabled", "false")) {
        context.backend.largest_model(task)
    } else {
        context.backend.resolve_model(requested, task)
    }
}

/// Runs `call` once per distinct non-NULL key and spreads the results back over the rows.
///
/// `keys[i]` is `None` for a row whose output is NULL without a model call (a NULL input).
/// `call` receives the representative row of each distinct key, in first-seen order. Rows
/// whose value could not be produced become NULL and count a warning, or fail the query under
/// `on_error = 'fail'`. No distinct key: no call, so an empty or all-NULL input loads no model.
/// With `murakkab.exec.batching = false` every non-NULL row is its own call, with no
/// deduplication and no reuse of earlier work: the naive baseline.
pub(crate) fn run_distinct<K: std::hash::Hash + Eq, T: Clone>(
    function: &str,
    context: &AiContext,
    config: &ConfigOptions,
    keys: Vec<Option<K>>,
    mut call: impl FnMut(&[usize]) -> std::result::Result<BatchOutput<T>, String>,
) -> Result<Vec<Option<T>>> {
    let naive = !batching_enabled(config);
    let mut slot_of_key: HashMap<K, usize> = HashMap::new();
    let mut representatives = Vec::new();
    let slots: Vec<Option<usize>> = keys
        .into_iter()
        .enumerate()
        .map(|(row, key)| {
            let key = key?;
            if naive {
                representatives.push(row);
                return Some(representatives.len() - 1);
            }
            let next = slot_of_key.len();
            Some(*slot_of_key.entry(key).or_insert_with(|| {
                representatives.push(row);
                next
            }))
        })
        .collect();
    let with_input = slots.iter().flatten().count();
    crate::function_stats::record(|s| s.dedup_hits += (with_input - representatives.len()) as u64);
    if representatives.is_empty() {
        return Ok(vec![None; slots.len()]);
    }
    let output =
        if naive { one_row_per_call(&representatives, &mut call) } else { call(&representatives) };
    let output = match output {
        Ok(output) => output,
        Err(e) => return exec_err!("{function}: {e}"),
    };
    if output.rows.len() != representatives.len() {
        return exec_err!(
            "{function}: the model returned {} results for {} inputs",
            output.rows.len(),
            representatives.len()
        );
    }
    context.warnings.record(
        function,
        "prompt longer than the model's context, cut in the middle",
        output.truncated,
        None,
    );
    let mut failed = 0;
    let mut first_failure = None;
    let values: Vec<Option<T>> = output
        .rows
        .into_iter()
        .zip(&representatives)
        .map(|(r, &row)| match r {
            Ok(v) => Some(v),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("row {}: {e}", row + 1));
                None
            }
        })
        .collect();
    if failed > 0 {
        if fail_on_error(config) {
            return exec_err!(
                "{function}: {failed} row(s) failed ({}); set murakkab.on_error = 'null' to \
                 return NULL for them instead",
                first_failure.unwrap_or_default()
            );
        }
        context.warnings.record(function, "no usable model output, NULL", failed, first_failure);
    }
    Ok(slots.into_iter().map(|s| s.and_then(|s| values[s].clone())).collect())
}

/// The naive baseline's calls: each row alone, with reuse of earlier work turned off.
fn one_row_per_call<T>(
    rows: &[usize],
    call: &mut impl FnMut(&[usize]) -> std::result::Result<BatchOutput<T>, String>,
) -> std::result::Result<BatchOutput<T>, String> {
    let mut out = BatchOutput { rows: Vec::with_capacity(rows.len()), truncated: 0 };
    for row in rows {
        let one = crate::backend::with_reuse(false, || call(std::slice::from_ref(row)))?;
        out.rows.extend(one.rows);
        out.truncated += one.truncated;
    }
    Ok(out)
}

/// Resolves the model a call asks for, at planning time, so an unknown id or a model that
/// cannot do the task fails before any row is read.
pub(crate) fn check_model(
    function: &str,
    context: &AiContext,
    model: Option<&str>,
    task: murakkab_catalog::Task,
) -> Result<murakkab_catalog::ModelCard> {
    context
        .backend
        .resolve_model(model, task)
        .map_err(|e| datafusion::common::plan_datafusion_err!("{function}: {e}"))
}

/// Two instances of an AI function are equal when they share a session's context.
macro_rules! impl_eq_by_context {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.context, &other.context)
            }
        }
        impl Eq for $t {}
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                std::any::type_name::<Self>().hash(state);
            }
        }
    };
}
pub(crate) use impl_eq_by_context;

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &[Param] = &[
        required("text", Kind::Text),
        optional("model", Kind::ConstText),
        optional("max_tokens", Kind::ConstInt),
    ];

    #[test]
    fn usage_marks_optional_parameters() {
        assert_eq!(usage("ai_x", PARAMS), "ai_x(text [, model, max_tokens])");
    }

    #[test]
    fn wrong_types_and_counts_name_the_function_and_parameter() {
        let err = coerce("ai_x", PARAMS, &[DataType::Int32]).unwrap_err().to_string();
        assert!(err.contains("ai_x: argument 'text' must be text, got Int32"), "{err}");
        let err = coerce("ai_x", PARAMS, &[]).unwrap_err().to_string();
        assert!(err.contains("ai_x expects ai_x(text [, model, max_tokens]), got 0 arguments"));
        let types = [DataType::Utf8View, DataType::Null, DataType::Int32];
        assert_eq!(coerce("ai_x", PARAMS, &types).unwrap(), types.to_vec());
    }
}
