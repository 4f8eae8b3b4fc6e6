//! Models a user adds by hand: a `card.json` beside the files in `MURAKKAB_HOME/models/<id>/`.
//!
//! ```json
//! { "id": "my-qwen", "architecture": "qwen2", "tasks": ["generate", "score_labels"],
//!   "files": [{ "name": "model.gguf" }], "chat_template": "chatml", "eos_tokens": ["<|im_end|>"] }
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::MurakkabHome;
use crate::error::CatalogError;
use crate::model_card::{Architecture, ModelCard, ModelFile, Task};

/// The card file's name inside a model directory.
pub const CARD_FILE: &str = "card.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalCard {
    id: String,
    architecture: String,
    #[serde(default)]
    tasks: Option<Vec<Task>>,
    files: Vec<LocalFile>,
    #[serde(default)]
    parameters: u64,
    #[serde(default)]
    quantization: Option<String>,
    #[serde(default)]
    context_length: Option<usize>,
    #[serde(default)]
    embedding_dim: Option<usize>,
    #[serde(default)]
    license: Option<String>,
    #[serde(default)]
    chat_template: Option<String>,
    #[serde(default)]
    bos_token: Option<String>,
    #[serde(default)]
    eos_tokens: Vec<String>,
}

/// The architectures a local card may name.
pub const SUPPORTED_ARCHITECTURES: &[Architecture] =
    &[Architecture::Bert, Architecture::Llama, Architecture::Qwen2, Architecture::Gemma3];

/// Parses and checks one card file.
pub fn read_card(path: &Path) -> Result<ModelCard, CatalogError> {
    let invalid = |reason: String| CatalogError::InvalidCard { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let card: LocalCard = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let Some(architecture) =
        SUPPORTED_ARCHITECTURES.iter().copied().find(|a| a.name() == card.architecture)
    else {
        let names: Vec<_> = SUPPORTED_ARCHITECTURES.iter().map(|a| a.name()).collect();
        return Err(invalid(format!(
            "unsupported architecture '{}'; supported architectures are: {}",
            card.architecture,
            names.join(", ")
        )));
    };
    if card.files.is_empty() {
        return Err(invalid("a card lists at least one file".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let size_bytes = card
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(&f.name)).ok())
        .map(|m| m.len())
        .sum();
    let default_tasks = match architecture {
        Architecture::Bert => vec![Task::Embed],
        _ => vec![Task::Generate, Task::ScoreLabels],
    };
    Ok(ModelCard {
        id: card.id,
        architecture,
        tasks: card.tasks.unwrap_or(default_tasks),
        parameters: card.parameters,
        quantization: card.quantization.unwrap_or_else(|| "unknown".into()),
        context_length: card.context_length.unwrap_or(2048),
        embedding_dim: card.embedding_dim,
        size_bytes,
        files: card
            .files
            .into_iter()
            .map(|f| ModelFile { name: f.name, sha256: f.sha256, sources: vec![] })
            .collect(),
        license: card.license.unwrap_or_else(|| "unknown".into()),
        chat_template: card.chat_template,
        bos_token: card.bos_token,
        eos_tokens: card.eos_tokens,
    })
}

/// Every card file under `home/models/*/card.json`; invalid ones are returned as errors beside
/// the valid cards so one bad card does not hide the others.
pub fn local_cards(home: &MurakkabHome) -> (Vec<ModelCard>, Vec<CatalogError>) {
    let (mut cards, mut errors) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(home.models_dir()) else { return (cards, errors) };
    let mut paths: Vec<_> =
        entries.flatten().map(|e| e.path().join(CARD_FILE)).filter(|p| p.is_file()).collect();
    paths.sort();
    for path in paths {
        match read_card(&path) {
            Ok(card) => cards.push(card),
            Err(e) => errors.push(e),
        }
    }
    (cards, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_card(home: &MurakkabHome, id: &str, json: &str) -> std::path::PathBuf {
        let dir = home.model_dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CARD_FILE);
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn a_valid_card_is_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        write_card(
            &home,
            "mine",
            r#"{"id": "mine", "architecture": "qwen2", "files": [{"name": "model.gguf"}]}"#,
        );
        let (cards, errors) = local_cards(&home);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cards[0].id, "mine");
        assert_eq!(cards[0].tasks, vec![Task::Generate, Task::ScoreLabels]);
    }

    #[test]
    fn an_unsupported_architecture_names_the_supported_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        let path = write_card(
            &home,
            "m",
            r#"{"id": "m", "architecture": "mamba", "files": [{"name": "m.gguf"}]}"#,
        );
        let err = read_card(&path).unwrap_err().to_string();
        assert!(err.contains("unsupported architecture 'mamba'"), "{err}");
        assert!(err.contains("bert, llama, qwen2, gemma3"), "{err}");
    }
}
