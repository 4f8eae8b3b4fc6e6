//! The Murakkab runtime: model backends and tokenizers, the process-wide model registry, the
//! backend the AI functions run on ([`ModelRuntime`]) behind the persistent result cache
//! ([`CachedBackend`]), the device scheduler (interactive work first), and the physical AI
//! operator ([`AiMapExec`]) with its planner ([`MurakkabQueryPlanner`]). Energy meters land here.
//!
//! Models are loaded lazily, once per process, through [`ModelRegistry`]: every query and every
//! session shares the same weights. Nothing here downloads anything; a model that is not pulled
//! is an error that says which `murakkab models pull` to run.

mod ai_map_exec;
mod ai_runtime;
pub mod amx_gemm;
mod batcher;
mod batching;
mod bert_amx;
mod bert_encoder;
pub mod calibrate;
pub mod call_stats;
mod constrained_json;
mod deadline;
mod decode_attention;
mod device;
pub mod energy;
mod error;
mod gguf_decoder;
mod gguf_tokenizer;
mod in_flight;
mod key_order_streams;
mod kv_cache;
mod language_model;
pub mod model_memory;
mod packed_attention;
mod planner;
mod qkv_heads;
mod registry;
mod result_cache;
mod scheduler;
pub mod tiny_models;
mod vector_math;
pub mod vnni_gemv;

pub use ai_map_exec::{AiMapExec, CHUNK_ROWS, MAX_CHUNK_ROWS, estimated_model_seconds};
pub use ai_runtime::ModelRuntime;
pub use bert_encoder::{BertEncoder, Embeddings};
pub use device::ComputeDevice;
pub use error::ModelError;
pub use gguf_decoder::{BranchLayout, DecoderConfig, GgufDecoder, WIDE_STEP_ROWS, WeightMode};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use key_order_streams::KeyOrderStreams;
pub use kv_cache::{BatchCache, SeqCache};
pub use language_model::{GenerateOptions, LanguageModel, Sampling};
pub use planner::{AiExtensionPlanner, MurakkabQueryPlanner};
pub use registry::ModelRegistry;
pub use result_cache::{CacheStats, CachedBackend};
pub use scheduler::{with_cancellation, with_priority};
