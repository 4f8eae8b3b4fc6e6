//! The Murakkab runtime: model backends, tokenizers, the process-wide model registry, and (as
//! they land) the per-model batchers, the device scheduler, caches, energy meters and the
//! physical AI operators with their `ExtensionPlanner`.
//!
//! Models are loaded lazily, once per process, through [`ModelRegistry`]: every query and every
//! session shares the same weights. Nothing here downloads anything; a model that is not pulled
//! is an error that says which `murakkab models pull` to run.

mod ai_map_exec;
mod ai_runtime;
mod batching;
mod bert_encoder;
pub mod call_stats;
mod constrained_json;
mod device;
mod error;
mod gguf_decoder;
mod gguf_tokenizer;
mod language_model;
mod planner;
mod registry;
mod result_cache;
mod scheduler;
pub mod tiny_models;

pub use ai_map_exec::{AiMapExec, CHUNK_ROWS};
pub use ai_runtime::ModelRuntime;
pub use bert_encoder::{BertEncoder, Embeddings};
pub use device::ComputeDevice;
pub use error::ModelError;
pub use gguf_decoder::{DecoderConfig, GgufDecoder, SeqCache, WeightMode};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use language_model::{GenerateOptions, LanguageModel, Sampling};
pub use planner::{AiExtensionPlanner, MurakkabQueryPlanner};
pub use registry::ModelRegistry;
pub use result_cache::{CacheStats, CachedBackend};
pub use scheduler::with_priority;
