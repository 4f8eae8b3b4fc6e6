//! Errors from loading and running models.

use std::fmt;

/// An error from the model runtime.
#[derive(Debug)]
pub enum ModelError {
    /// The model's files are not under the home directory.
    NotPulled {
        /// The model id.
        id: String,
    },
    /// The model exists but cannot do what was asked.
    Unsupported {
        /// The model id.
        id: String,
        /// What was asked and why it cannot be done.
        reason: String,
    },
    /// A model file could not be read or is malformed.
    Load {
        /// The model id.
        id: String,
        /// What went wrong.
        detail: String,
    },
    /// Tokenization failed.
    Tokenizer(String),
    /// A tensor operation failed.
    Compute(candle_core::Error),
    /// The catalog could not resolve the model.
    Catalog(murakkab_catalog::CatalogError),
    /// A GPU was asked for in a build without GPU support.
    NoGpuSupport,
    /// The query that asked for the work was cancelled.
    Cancelled,
    /// The session's memory limit has no room for the model or the batch (DataFusion's
    /// message, naming the largest consumers).
    ResourcesExhausted(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPulled { id } => {
                write!(f, "model '{id}' is not pulled; run `murakkab models pull {id}`")
            }
            Self::Unsupported { id, reason } => write!(f, "model '{id}': {reason}"),
            Self::Load { id, detail } => write!(f, "cannot load model '{id}': {detail}"),
            Self::Tokenizer(detail) => write!(f, "tokenizer error: {detail}"),
            Self::Compute(e) => write!(f, "model computation failed: {e}"),
            Self::Catalog(e) => write!(f, "{e}"),
            Self::Cancelled => write!(f, "cancelled"),
            Self::ResourcesExhausted(message) => write!(f, "{message}"),
            Self::NoGpuSupport => write!(
                f,
                "this murakkab was built without CUDA; rebuild with `--features cuda` on a machine with the CUDA toolkit, or use the CPU"
            ),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        Self::Compute(e)
    }
}

impl From<murakkab_catalog::CatalogError> for ModelError {
    fn from(e: murakkab_catalog::CatalogError) -> Self {
        Self::Catalog(e)
    }
}
