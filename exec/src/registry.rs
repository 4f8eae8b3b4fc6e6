//! The process-wide model registry: each model is loaded once, on first use, and shared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use murakkab_catalog::{Architecture, ModelCard, ModelStatus, MurakkabHome, Task, find_model};

use crate::bert_encoder::BertEncoder;
use crate::device::ComputeDevice;
use crate::error::ModelError;
use crate::gguf_decoder::WeightMode;
use crate::language_model::LanguageModel;

type Key = (std::path::PathBuf, String);

/// Loaded models, keyed by the model's directory with symlinks resolved and its id: homes
/// whose `models` link to the same files share one loaded copy.
#[derive(Default)]
pub struct ModelRegistry {
    encoders: Mutex<HashMap<Key, Arc<BertEncoder>>>,
    language_models: Mutex<HashMap<Key, Arc<LanguageModel>>>,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.encoders.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("ModelRegistry").field("encoders", &n).finish()
    }
}

impl ModelRegistry {
    /// The registry shared by every session in the process.
    pub fn global() -> &'static ModelRegistry {
        static GLOBAL: OnceLock<ModelRegistry> = OnceLock::new();
        GLOBAL.get_or_init(ModelRegistry::default)
    }

    /// The sentence encoder `id`, loading it on first use.
    pub fn encoder(&self, home: &MurakkabHome, id: &str) -> Result<Arc<BertEncoder>, ModelError> {
        let check = |card: &ModelCard| {
            if card.architecture != Architecture::Bert || !card.can(Task::Embed) {
                return Err(ModelError::Unsupported {
                    id: id.to_string(),
                    reason: format!(
                        "it is a {} model and cannot produce embeddings",
                        card.architecture.name()
                    ),
                });
            }
            Ok(())
        };
        load_once(&self.encoders, home, id, check, |_| {
            let device = ComputeDevice::Cpu.candle()?;
            BertEncoder::load(id, &home.model_dir(id), &device)
        })
    }

    /// The language model `id` (a GGUF decoder), loading it on first use. Models up to 1B
    /// parameters keep an f32 copy of the weights beside the quantized ones (f32 GEMM for
    /// prefill, quantized reads for decode); larger ones stay quantized to bound memory.
    pub fn language_model(
        &self,
        home: &MurakkabHome,
        id: &str,
    ) -> Result<Arc<LanguageModel>, ModelError> {
        let check = |card: &ModelCard| {
            if !matches!(card.architecture, Architecture::Llama | Architecture::Qwen2) {
                return Err(ModelError::Unsupported {
                    id: id.to_string(),
                    reason: format!(
                        "architecture {} cannot generate or score labels here; supported: llama, qwen2",
                        card.architecture.name()
                    ),
                });
            }
            Ok(())
        };
        load_once(&self.language_models, home, id, check, |card| {
            let mode = weight_mode(card);
            let device = ComputeDevice::Cpu.candle()?;
            let file =
                card.files.first().map(|f| f.name.clone()).unwrap_or_else(|| "model.gguf".into());
            LanguageModel::load(id, &home.model_dir(id).join(file), &card.eos_tokens, &device, mode)
        })
    }
}

impl ModelRegistry {
    /// Whether model `id` of `home` is resident (loaded by an earlier call in this process),
    /// so using it costs no load (the optimizer's cost model asks).
    pub fn is_loaded(&self, home: &MurakkabHome, id: &str) -> bool {
        let dir = home.model_dir(id);
        let key = (std::fs::canonicalize(&dir).unwrap_or(dir), id.to_string());
        self.encoders.lock().is_ok_and(|c| c.contains_key(&key))
            || self.language_models.lock().is_ok_and(|c| c.contains_key(&key))
    }
}

/// A model keeps a copy of its weights for prompt passes beside the quantized ones when that
/// copy takes at most [`prefill_copy_limit`]: f32 up to 1B parameters, bf16 tiles (half the
/// bytes, where the CPU has AMX) up to 2B. Without it, prompt passes multiply the quantized
/// weights: Qwen2.5-Coder-1.5B classified 445 BBC headlines in 69 s that way, where its tiles
/// are several times faster.
pub fn weight_mode(card: &ModelCard) -> WeightMode {
    let copy_bytes = card.parameters.saturating_mul(prefill_copy_bytes_per_weight());
    if card.parameters > 0 && copy_bytes <= prefill_copy_limit() {
        WeightMode::Both
    } else {
        WeightMode::Quantized
    }
}

/// The largest copy of a model's weights kept for prompt passes.
const PREFILL_COPY_MAX_BYTES: u64 = 4_000_000_000;

/// [`PREFILL_COPY_MAX_BYTES`], or half the machine's memory where Linux reports less than
/// twice that: on a small machine the copy (and the f32 blocks loading makes on the way) would
/// crowd out everything else.
fn prefill_copy_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| mem_total(&m));
        total.map_or(PREFILL_COPY_MAX_BYTES, |bytes| PREFILL_COPY_MAX_BYTES.min(bytes / 2))
    })
}

/// Bytes of `MemTotal` in the text of `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes.saturating_mul(1024))
}

/// Bytes per weight of the copy prompt passes read: bf16 tiles where the CPU has AMX (the f32
/// copy is dropped once packed), f32 elsewhere.
fn prefill_copy_bytes_per_weight() -> u64 {
    if crate::amx_gemm::available() { 2 } else { 4 }
}

/// Bytes of `card`'s files as pulled into `home`.
pub fn file_bytes(home: &MurakkabHome, card: &ModelCard) -> u64 {
    let dir = home.model_dir(&card.id);
    card.files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(&f.name)).ok())
        .map(|m| m.len())
        .sum()
}

/// Returns the model cached under `(home, id)`, or checks the card's kind with `check` (first,
/// for a clearer error than "not pulled"), requires the files to be pulled, and loads it with
/// `load`. The lock is held while loading, so concurrent first uses load once.
fn load_once<T>(
    cache: &Mutex<HashMap<Key, Arc<T>>>,
    home: &MurakkabHome,
    id: &str,
    check: impl FnOnce(&ModelCard) -> Result<(), ModelError>,
    load: impl FnOnce(&ModelCard) -> Result<T, ModelError>,
) -> Result<Arc<T>, ModelError> {
    let dir = home.model_dir(id);
    let key = (std::fs::canonicalize(&dir).unwrap_or(dir), id.to_string());
    let mut loaded = cache.lock().map_err(|_| ModelError::Load {
        id: id.to_string(),
        detail: "the model registry was poisoned by an earlier panic".into(),
    })?;
    if let Some(model) = loaded.get(&key) {
        return Ok(Arc::clone(model));
    }
    let card = find_model(home, id)?;
    check(&card)?;
    if card.status(home) != ModelStatus::Pulled {
        return Err(ModelError::NotPulled { id: id.to_string() });
    }
    let started = std::time::Instant::now();
    let model = Arc::new(load(&card)?);
    tracing::debug!("loaded model {id} in {:.1}s", started.elapsed().as_secs_f64());
    loaded.insert(key, Arc::clone(&model));
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_passes_keep_their_own_copy_up_to_four_gigabytes() {
        let card =
            |id: &str| murakkab_catalog::builtin_models().into_iter().find(|c| c.id == id).unwrap();
        assert_eq!(weight_mode(&card("qwen2.5-coder-0.5b-instruct")), WeightMode::Both);
        // 1.54B weights: 6.2 GB in f32, 3.1 GB in bf16 tiles.
        let large = weight_mode(&card("qwen2.5-coder-1.5b-instruct"));
        let tiles = crate::amx_gemm::available() && prefill_copy_limit() >= 3_080_000_000;
        assert_eq!(large, if tiles { WeightMode::Both } else { WeightMode::Quantized });
        let unknown = ModelCard { parameters: 0, ..card("qwen2.5-coder-0.5b-instruct") };
        assert_eq!(weight_mode(&unknown), WeightMode::Quantized);
    }

    #[test]
    fn the_machine_s_memory_is_read_from_meminfo() {
        let meminfo = "MemFree:         1000 kB\nMemTotal:       24000000 kB\nBuffers: 1 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_000_000 * 1024));
        assert_eq!(mem_total("MemFree: 1000 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots\n"), None);
        assert!(prefill_copy_limit() <= PREFILL_COPY_MAX_BYTES && prefill_copy_limit() > 0);
    }

    #[test]
    fn homes_that_link_the_same_model_files_share_one_loaded_copy() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        crate::tiny_models::install_tiny_models(&MurakkabHome::at(a.path())).unwrap();
        std::os::unix::fs::symlink(a.path().join("models"), b.path().join("models")).unwrap();
        let registry = ModelRegistry::default();
        let first = registry.language_model(&MurakkabHome::at(a.path()), "tiny-llama").unwrap();
        let second = registry.language_model(&MurakkabHome::at(b.path()), "tiny-llama").unwrap();
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn an_unpulled_model_names_the_pull_command() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        let err =
            ModelRegistry::default().encoder(&home, "all-minilm-l6-v2").unwrap_err().to_string();
        assert_eq!(
            err,
            "model 'all-minilm-l6-v2' is not pulled; run `murakkab models pull all-minilm-l6-v2`"
        );
    }

    #[test]
    fn a_decoder_is_not_an_encoder() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        let err = ModelRegistry::default()
            .encoder(&home, "smollm2-135m-instruct")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot produce embeddings"), "{err}");
    }

    #[test]
    fn a_local_card_loads_once_and_is_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        let dir = home.model_dir("tiny-bert");
        std::fs::create_dir_all(&dir).unwrap();
        crate::tiny_models::write_tiny_bert(&dir).unwrap();
        std::fs::write(
            dir.join("card.json"),
            r#"{"id": "tiny-bert", "architecture": "bert", "files": [{"name": "model.safetensors"}, {"name": "tokenizer.json"}, {"name": "config.json"}]}"#,
        )
        .unwrap();
        let registry = ModelRegistry::default();
        let a = registry.encoder(&home, "tiny-bert").unwrap();
        let b = registry.encoder(&home, "tiny-bert").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
