//! Model memory, accounted in the session's DataFusion memory pool.
//!
//! A session's `memory_limit` bounds one pool that query operators (sorts, joins, aggregates)
//! and models share: a model's weights are reserved when the session first uses it and held for
//! the session's life, and each forward batch reserves its key/value caches and activations
//! while it runs. So a query over the limit fails with DataFusion's "Resources exhausted"
//! message, which names the largest consumers (`model weights: qwen2.5-coder-0.5b-instruct`,
//! `ExternalSorter[0]`, ...), before the allocation happens, instead of the operating system
//! killing the process. Without a limit the pool is unbounded and reserving costs a counter.
//!
//! The figures are estimates made before the work: weights from the files (plus the f32 copy a
//! small decoder keeps for prefill), a batch from its shape (rows, tokens, layers, heads). A
//! batch that does not fit is retried a row at a time by the runtime; a single row that does
//! not fit fails the query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryPool, MemoryReservation, UnboundedMemoryPool,
};

use crate::error::ModelError;
use crate::gguf_decoder::DecoderConfig;

/// Weights and working memory of the models one session uses.
#[derive(Debug)]
pub struct ModelMemory {
    pool: Arc<dyn MemoryPool>,
    /// Weight reservations by model id, held until the session ends.
    weights: Mutex<HashMap<String, MemoryReservation>>,
}

impl Default for ModelMemory {
    fn default() -> Self {
        Self::new(Arc::new(UnboundedMemoryPool::default()))
    }
}

fn exhausted(e: datafusion::error::DataFusionError) -> ModelError {
    // DataFusion's text starts "Resources exhausted: " and lists the top consumers.
    ModelError::ResourcesExhausted(e.to_string())
}

impl ModelMemory {
    /// Accounts in `pool` (the session's).
    pub fn new(pool: Arc<dyn MemoryPool>) -> Self {
        Self { pool, weights: Mutex::new(HashMap::new()) }
    }

    /// Reserves the weights of model `id`, once per session; `bytes` is asked only the first
    /// time (it reads file sizes, and this sits on every model call's path).
    pub fn hold_weights(&self, id: &str, bytes: impl FnOnce() -> usize) -> Result<(), ModelError> {
        let mut held = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains_key(id) {
            return Ok(());
        }
        let reservation = MemoryConsumer::new(format!("model weights: {id}")).register(&self.pool);
        reservation.try_grow(bytes()).map_err(exhausted)?;
        held.insert(id.to_string(), reservation);
        Ok(())
    }

    /// Reserves `bytes` of working memory for one batch of model `id`; released on drop.
    pub fn reserve_batch(&self, id: &str, bytes: usize) -> Result<MemoryReservation, ModelError> {
        let reservation = MemoryConsumer::new(format!("model batch: {id}")).register(&self.pool);
        reservation.try_grow(bytes).map_err(exhausted)?;
        Ok(reservation)
    }
}

/// Bytes a decoder holds for its weights: the files — or 36 bytes per 32 weights if that is
/// more, since formats without a vectorised kernel are re-quantized to Q8_0 at load and repacked
/// for the decode kernel (an f32 scale per block; Q4_1 kept for our kernel takes 24, so this
/// bounds it) — plus 4 bytes per weight when it keeps a copy for prefill
/// ([`crate::registry::weight_mode`]). That copy is f32, or bf16 tiles where the CPU has AMX;
/// the tiles take 2 bytes, but loading dequantizes to f32 first and the embedding rows stay
/// f32, so 4 bounds the peak better: one-row `murakkab -f` queries peaked at 0.61, 2.79 and
/// 6.05 GB resident for SmolLM2-135M, Qwen2.5-0.5B and Qwen2.5-1.5B (2026-12-05, AMX), where
/// this counts 0.69, 2.53 and 7.89. Without that copy, prompt passes use candle's quantized
/// weights beside the repacked ones: twice the quantized part, as an upper bound.
pub fn decoder_weight_bytes(file_bytes: u64, parameters: u64, prefill_copy: bool) -> usize {
    let quantized = file_bytes.max(parameters.saturating_mul(36) / 32);
    let total = if prefill_copy {
        quantized.saturating_add(parameters.saturating_mul(4))
    } else {
        quantized.saturating_mul(2)
    };
    usize::try_from(total).unwrap_or(usize::MAX)
}

/// Bytes one decoder batch needs: the key/value cache of every row for `tokens` positions, plus
/// the largest activations of one layer (hidden states, MLP, one attention score matrix) and the
/// logits of the positions scored.
pub fn decoder_batch_bytes(config: &DecoderConfig, rows: usize, tokens: usize) -> usize {
    let f32s = |n: usize| n.saturating_mul(4);
    let kv_per_token = 2 * config.n_layer * config.n_kv_head * config.head_dim;
    let kv = rows.saturating_mul(tokens).saturating_mul(kv_per_token);
    let hidden = rows.saturating_mul(tokens).saturating_mul(config.dim * 8);
    let scores = rows.saturating_mul(config.n_head).saturating_mul(tokens.saturating_mul(tokens));
    let logits = rows.saturating_mul(config.vocab);
    f32s(kv.saturating_add(hidden).saturating_add(scores).saturating_add(logits))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
    use std::num::NonZeroUsize;

    fn limited(bytes: usize) -> ModelMemory {
        ModelMemory::new(Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(bytes),
            NonZeroUsize::new(5).unwrap(),
        )))
    }

    #[test]
    fn weights_are_held_once_and_batches_released() {
        let memory = limited(1000);
        memory.hold_weights("m", || 600).unwrap();
        memory.hold_weights("m", || 600).unwrap();
        {
            let _batch = memory.reserve_batch("m", 400).unwrap();
            let err = memory.reserve_batch("m", 1).unwrap_err().to_string();
            assert!(err.contains("Resources exhausted"), "{err}");
        }
        memory.reserve_batch("m", 400).unwrap();
    }

    #[test]
    fn the_error_names_the_largest_consumers() {
        let memory = limited(1000);
        memory.hold_weights("big-model", || 900).unwrap();
        let err = memory.hold_weights("other-model", || 200).unwrap_err().to_string();
        assert!(err.contains("model weights: big-model") && err.contains("900"), "{err}");
    }

    #[test]
    fn smollm2_batch_estimate_is_in_the_right_range() {
        // smollm2-135m: 30 layers, 9 heads, 3 key/value heads of 64, width 576, 49152 tokens.
        let config = DecoderConfig {
            architecture: "llama".into(),
            n_layer: 30,
            n_head: 9,
            n_kv_head: 3,
            dim: 576,
            head_dim: 64,
            vocab: 49152,
            context_length: 8192,
            rope_theta: 100000.0,
            rms_eps: 1e-5,
            neox_rope: false,
        };
        // 16 rows of 100 tokens: 46 KB of keys and values per token, 74 MB for the batch.
        let bytes = decoder_batch_bytes(&config, 16, 100);
        assert!((70 << 20..120 << 20).contains(&bytes), "{bytes}");
    }
}
