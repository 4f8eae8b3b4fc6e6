//! `cosine_similarity(v1, v2)`: the cosine of the angle between two vectors.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, ListArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// Cosine similarity of two numeric vectors (`LIST`, `LARGE LIST` or fixed-size lists of numbers,
/// including `ai_embed` output). NULL vectors, vectors with a NULL element and zero vectors give
/// NULL; vectors of different lengths are an error that names the row.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CosineSimilarity {
    signature: Signature,
}

impl Default for CosineSimilarity {
    fn default() -> Self {
        Self::new()
    }
}

impl CosineSimilarity {
    /// The function, ready to wrap in a `ScalarUDF`.
    pub fn new() -> Self {
        Self { signature: Signature::any(2, Volatility::Immutable) }
    }
}

const NAME: &str = "cosine_similarity";

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        crate::docs::SECTION,
        "Cosine similarity of two numeric vectors, between -1 and 1. Works on lists of numbers \
         and on ai_embed output. NULL or zero vectors give NULL.",
        "cosine_similarity(v1, v2)",
    )
    .with_sql_example(
        "> SELECT cosine_similarity([1.0, 0.0], [1.0, 1.0]);\n\
         +-----------------------------------------------------+\n\
         | cosine_similarity(make_array(1.0,0.0),make_array(1.0,1.0)) |\n\
         +-----------------------------------------------------+\n\
         | 0.7071067811865475                                  |\n\
         +-----------------------------------------------------+",
    )
    .with_argument("v1", "A vector: a list of numbers.")
    .with_argument("v2", "A vector of the same length.")
    .build()
});

fn is_numeric_vector(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().is_numeric() || f.data_type() == &DataType::Null
        }
        DataType::Null => true,
        _ => false,
    }
}

/// Casts any accepted vector type to `List<Float64>` so one loop handles them all.
fn as_f64_list(array: &ArrayRef) -> Result<ListArray> {
    let target = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
    let casted = cast(array, &target)?;
    Ok(casted.as_any().downcast_ref::<ListArray>().cloned().unwrap_or_else(|| {
        // `cast` to a List type always yields a ListArray; this only guards the downcast.
        ListArray::new_null(Arc::new(Field::new_list_field(DataType::Float64, true)), array.len())
    }))
}

fn cosine(a: &Float64Array, b: &Float64Array) -> Option<f64> {
    if a.null_count() > 0 || b.null_count() > 0 {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.values().iter().zip(b.values().iter()) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some(dot / (na.sqrt() * nb.sqrt()))
}

impl ScalarUDFImpl for CosineSimilarity {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [a, b] if is_numeric_vector(a) && is_numeric_vector(b) => Ok(DataType::Float64),
            [a, b] => plan_err!(
                "{NAME} expects two vectors (lists of numbers, e.g. [1.0, 2.0] or ai_embed output), got {a} and {b}"
            ),
            _ => plan_err!("{NAME} expects 2 arguments (v1, v2), got {}", arg_types.len()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [left, right] = arrays.as_slice() else {
            return exec_err!("{NAME} expects 2 arguments, got {}", arrays.len());
        };
        let (left, right) = (as_f64_list(left)?, as_f64_list(right)?);
        let mut out = Float64Builder::with_capacity(args.number_rows);
        for row in 0..args.number_rows {
            if left.is_null(row) || right.is_null(row) {
                out.append_null();
                continue;
            }
            let (a, b) = (left.value(row), right.value(row));
            if a.len() != b.len() {
                return exec_err!(
                    "{NAME}: the vectors in row {} have different lengths ({} and {})",
                    row + 1,
                    a.len(),
                    b.len()
                );
            }
            let a = a.as_any().downcast_ref::<Float64Array>();
            let b = b.as_any().downcast_ref::<Float64Array>();
            out.append_option(a.zip(b).and_then(|(a, b)| cosine(a, b)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        let a = Float64Array::from(vec![1.0, 0.0]);
        let b = Float64Array::from(vec![1.0, 1.0]);
        let c = cosine(&a, &b).expect("defined");
        assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        let zero = Float64Array::from(vec![0.0, 0.0]);
        assert_eq!(cosine(&a, &zero), None);
    }

    #[test]
    fn rejects_non_vectors_by_name() {
        let f = CosineSimilarity::new();
        let err = f.return_type(&[DataType::Utf8, DataType::Int64]).unwrap_err().to_string();
        assert!(err.contains("cosine_similarity expects two vectors"), "{err}");
    }
}
