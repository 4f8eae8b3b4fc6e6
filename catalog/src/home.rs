//! The one home directory for everything Murakkab writes.

use std::path::{Path, PathBuf};

/// The environment variable that overrides the home directory.
pub const HOME_ENV: &str = "MURAKKAB_HOME";

/// The directory holding models, caches, optimizer statistics and shell history.
///
/// Defaults to `$MURAKKAB_HOME`, else `~/.cache/murakkab`. Nothing is written outside it unless
/// the user asks (an output file, a `COPY ... TO`). Directories are created on first use by the
/// code that writes into them, never at construction, so a read-only query writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MurakkabHome {
    root: PathBuf,
}

impl MurakkabHome {
    /// A home at an explicit path.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home from `$MURAKKAB_HOME`, else `$HOME/.cache/murakkab`, else `./.murakkab`.
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Self::at(dir);
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Self::at(PathBuf::from(home).join(".cache").join("murakkab")),
            None => Self::at(".murakkab"),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where pulled model files live: `models/<id>/`.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// The directory of one model.
    pub fn model_dir(&self, model_id: &str) -> PathBuf {
        self.models_dir().join(model_id)
    }

    /// The persistent result and embedding caches.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Persisted optimizer statistics and device profiles.
    pub fn stats_dir(&self) -> PathBuf {
        self.root.join("stats")
    }

    /// The interactive shell's history file.
    pub fn history_file(&self) -> PathBuf {
        self.root.join("history")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_root() {
        let home = MurakkabHome::at("/tmp/mk");
        assert_eq!(home.model_dir("m"), PathBuf::from("/tmp/mk/models/m"));
        assert_eq!(home.history_file(), PathBuf::from("/tmp/mk/history"));
        assert!(home.cache_dir().starts_with(home.root()));
        assert!(home.stats_dir().starts_with(home.root()));
    }
}
