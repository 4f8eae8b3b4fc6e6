//! The AI SQL functions of Murakkab: names, signatures, argument checks, return types and
//! documentation, one file per function.
//!
//! Functions here describe *what* a call means; running a model is the executor's job. That split
//! is what lets the compiler lift AI calls into plan nodes the optimizer can rewrite.

mod cosine_similarity;

use std::sync::Arc;

use datafusion::logical_expr::ScalarUDF;

pub use cosine_similarity::CosineSimilarity;

/// Every scalar function this crate provides, ready to register in a session.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::from(CosineSimilarity::new()))]
}
