//! The backend the AI SQL functions run on: real models from the registry, in-process.
//!
//! It turns a function's [`ChatBatch`] into the model's chat format, fits every prompt into the
//! context (cutting the row's part in the middle and counting it), computes the shared
//! instruction once per batch, and isolates failures: when a batch fails, its rows are retried
//! one by one so a single bad row becomes NULL instead of failing its neighbours.

use std::sync::{Arc, Mutex};

use murakkab_catalog::{ModelCard, ModelStatus, MurakkabHome, Task, all_models, find_model};
use murakkab_udfs::{AiBackend, BatchOutput, ChatBatch, CompletionOptions, FieldType, FieldValue};

use crate::batcher::{Batcher, Role, RowResult};
use crate::error::ModelError;
use crate::gguf_decoder::SeqCache;
use crate::gguf_decoder::WeightMode;
use crate::language_model::{
    GenerateOptions, LanguageModel, Sampling, distinguishing_prefixes, scores_later_tokens,
};
use crate::model_memory::{ModelMemory, decoder_batch_bytes, decoder_weight_bytes};
use crate::registry::{ModelRegistry, file_bytes, weight_mode};

/// Models tried, in order, for the backend's default choice (`resolve_model(None, ..)`): the
/// cheapest capable model that is pulled. The AI functions do not run `auto` on it (they run
/// the reference, the largest pulled model, unless the optimizer chose): it is what the
/// optimizer's candidate lists and listings start from.
const PREFERRED_LANGUAGE_MODELS: &[&str] =
    &["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"];
const PREFERRED_ENCODERS: &[&str] = &["all-minilm-l6-v2"];

/// Runs the AI functions' model calls on the models under one home directory.
#[derive(Debug)]
pub struct ModelRuntime {
    home: MurakkabHome,
    /// Key/value caches of recent shared instructions, so a chunk of rows does not recompute
    /// its instruction (small chunks keep interactive latency low; this keeps them cheap).
    prefixes: Mutex<RecentMap<PrefixKey, Arc<SeqCache>>>,
    /// Label probabilities of recent calibration rows, by model, prompt tokens and labels.
    priors: Mutex<RecentMap<PriorKey, Vec<f32>>>,
    /// Cards of pulled models by id, and the `auto` choice per task once it is a pulled model.
    /// Like the registry's loaded weights they stay fixed for the runtime's life, so a chunk of
    /// rows does not list and stat the models directory again.
    cards: Mutex<std::collections::HashMap<String, ModelCard>>,
    auto: Mutex<std::collections::HashMap<&'static str, ModelCard>>,
    /// The largest pulled model per task (`auto` with the optimizer off), once found.
    largest: Mutex<std::collections::HashMap<&'static str, ModelCard>>,
    /// Label-scoring requests of all queries, merged per model, instruction and labels.
    label_batches: Batcher<LabelKey, Vec<u32>, Vec<f32>>,
    /// Generation requests of all queries, merged per model, instruction and limits.
    generate_batches: Batcher<GenerateKey, Vec<u32>, (String, usize)>,
    /// Weights and batches, accounted in the session's memory pool.
    memory: ModelMemory,
}

/// Model id, instruction tokens and label tokens: label-scoring requests that may share a batch.
type LabelKey = (String, Vec<u32>, Vec<Vec<u32>>);
/// Model id, instruction tokens and generation options (as text): generation requests that may
/// share a batch.
type GenerateKey = (String, Vec<u32>, String);

/// Model id and instruction tokens.
type PrefixKey = (String, Vec<u32>);
/// Model id, calibration prompt tokens and label tokens.
type PriorKey = (String, Vec<u32>, Vec<Vec<u32>>);

/// Most entries each recent-results map keeps.
const RECENT: usize = 32;

/// A small map that forgets its oldest entry when full.
#[derive(Debug)]
struct RecentMap<K, V> {
    entries: std::collections::VecDeque<(K, V)>,
}

impl<K: PartialEq, V: Clone> RecentMap<K, V> {
    fn new() -> Self {
        Self { entries: std::collections::VecDeque::new() }
    }

    fn get(&self, key: &K) -> Option<V> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= RECENT {
            self.entries.pop_front();
        }
        self.entries.push_back((key, value));
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold only finished values; a panic elsewhere leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ModelRuntime {
    /// A runtime over the models pulled into `home`.
    pub fn new(home: MurakkabHome) -> Self {
        Self {
            home,
            prefixes: Mutex::new(RecentMap::new()),
            priors: Mutex::new(RecentMap::new()),
            cards: Mutex::new(std::collections::HashMap::new()),
            auto: Mutex::new(std::collections::HashMap::new()),
            largest: Mutex::new(std::collections::HashMap::new()),
            label_batches: Batcher::new(),
            generate_batches: Batcher::new(),
            memory: ModelMemory::default(),
        }
    }

    /// This runtime with its models' memory accounted in `pool` (the session's), so that a
    /// memory limit covers weights and batches too (see [`crate::model_memory`]).
    pub fn with_memory_pool(
        mut self,
        pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    ) -> Self {
        self.memory = ModelMemory::new(pool);
        self
    }

    /// The language model `id`, its weights reserved in the session's pool before it loads.
    fn language_model(&self, id: &str) -> Result<std::sync::Arc<LanguageModel>, String> {
        if let Ok(card) = self.card(id) {
            let bytes = || {
                let prefill_copy = weight_mode(&card) == WeightMode::Both;
                decoder_weight_bytes(file_bytes(&self.home, &card), card.parameters, prefill_copy)
            };
            self.memory.hold_weights(id, bytes).map_err(|e| e.to_string())?;
        }
        ModelRegistry::global().language_model(&self.home, id).map_err(|e| e.to_string())
    }

    /// Reserves the working memory of a batch of `rows` rows of up to `tokens` positions.
    fn reserve_batch(
        &self,
        lm: &LanguageModel,
        rows: usize,
        tokens: usize,
    ) -> Result<datafusion::execution::memory_pool::MemoryReservation, ModelError> {
        let bytes = decoder_batch_bytes(lm.decoder().config(), rows, tokens);
        self.memory.reserve_batch(lm.id(), bytes)
    }

    /// The cache after `prefix`, computed once per model and instruction (call with the device).
    fn prefix_cache(&self, lm: &LanguageModel, prefix: &[u32]) -> Result<Arc<SeqCache>, String> {
        if !murakkab_udfs::reuse_allowed() {
            return Ok(Arc::new(lm.prefix_cache(prefix).map_err(|e| e.to_string())?));
        }
        let key = (lm.id().to_string(), prefix.to_vec());
        let cached = locked(&self.prefixes).get(&key);
        if let Some(cache) = cached {
            return Ok(cache);
        }
        let cache = Arc::new(lm.prefix_cache(prefix).map_err(|e| e.to_string())?);
        locked(&self.prefixes).insert(key, Arc::clone(&cache));
        Ok(cache)
    }

    /// Runs `f` with the cache after `prefix`, or fails all `rows` rows if it cannot be built.
    fn with_prefix<T>(
        &self,
        lm: &LanguageModel,
        prefix: &[u32],
        rows: usize,
        f: impl FnOnce(&SeqCache) -> Vec<RowResult<T>>,
    ) -> Vec<RowResult<T>> {
        match self.prefix_cache(lm, prefix) {
            Ok(cache) => f(&cache),
            Err(e) => (0..rows).map(|_| Err(e.clone())).collect(),
        }
    }

    fn card(&self, id: &str) -> Result<ModelCard, String> {
        let cached = locked(&self.cards).get(id).cloned();
        if let Some(card) = cached {
            return Ok(card);
        }
        let card = find_model(&self.home, id).map_err(|e| e.to_string())?;
        if card.status(&self.home) == ModelStatus::Pulled {
            locked(&self.cards).insert(id.to_string(), card.clone());
        }
        Ok(card)
    }

    /// The prompt prefix (chat header + shared instruction) and each row's remainder, as tokens.
    fn tokenize(
        &self,
        lm: &LanguageModel,
        card: &ModelCard,
        batch: &ChatBatch,
        answer_start: &str,
    ) -> Result<(Vec<u32>, Vec<Vec<u32>>), String> {
        let chatml = card.chat_template.as_deref() == Some("chatml");
        let prefix = if chatml {
            // No system turn: on UCI sentiment it changed smollm2's accuracy by under a point.
            format!("<|im_start|>user\n{}", batch.shared)
        } else {
            batch.shared.clone()
        };
        let prefix = lm.encode(&prefix).map_err(|e| e.to_string())?;
        let rows = batch
            .rows
            .iter()
            .map(|r| {
                let text = if chatml {
                    format!("{r}<|im_end|>\n<|im_start|>assistant\n{answer_start}")
                } else {
                    format!("{r}\n{answer_start}")
                };
                lm.encode(&text).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((prefix, rows))
    }

    /// Cuts each row to `budget` tokens; returns how many were cut.
    fn fit(lm: &LanguageModel, rows: &mut [Vec<u32>], budget: usize) -> usize {
        let mut truncated = 0;
        for row in rows.iter_mut() {
            let (fitted, cut) = lm.fit_to_context(row, budget);
            if cut {
                truncated += 1;
                *row = fitted;
            }
        }
        truncated
    }

    fn context_of(lm: &LanguageModel, card: &ModelCard) -> usize {
        let model = lm.decoder().config().context_length;
        if card.context_length > 0 { card.context_length.min(model) } else { model }
    }
}

/// Runs `batch` over all rows; if it fails, runs each row alone so only the failing rows fail.
fn isolate_failures<T>(
    rows: usize,
    mut batch: impl FnMut(&[usize]) -> Result<Vec<T>, ModelError>,
) -> Vec<Result<T, String>> {
    let all: Vec<usize> = (0..rows).collect();
    match batch(&all) {
        Ok(values) => values.into_iter().map(Ok).collect(),
        // Cancelled work is not retried row by row.
        Err(ModelError::Cancelled) => {
            (0..rows).map(|_| Err(ModelError::Cancelled.to_string())).collect()
        }
        Err(_) if rows > 1 => all
            .iter()
            .map(|&i| {
                batch(&[i]).map_err(|e| e.to_string()).and_then(|mut v| {
                    v.pop().ok_or_else(|| "the model returned no result".to_string())
                })
            })
            .collect(),
        Err(e) => vec![Err(e.to_string())],
    }
}

impl AiBackend for ModelRuntime {
    fn resolve_model(&self, requested: Option<&str>, task: Task) -> Result<ModelCard, String> {
        let requested = requested.map(str::trim).filter(|r| !r.eq_ignore_ascii_case("auto"));
        let capable = || {
            let (cards, _) = all_models(&self.home);
            cards.into_iter().filter(|c| c.can(task)).collect::<Vec<_>>()
        };
        if let Some(id) = requested {
            let card = self.card(id)?;
            if !card.can(task) {
                let names: Vec<String> = capable().into_iter().map(|c| c.id).collect();
                return Err(format!(
                    "model '{id}' cannot {}; models that can: {}",
                    task_phrase(task),
                    names.join(", ")
                ));
            }
            return Ok(card);
        }
        let cached = locked(&self.auto).get(task.name()).cloned();
        if let Some(card) = cached {
            return Ok(card);
        }
        let capable = capable();
        let preferred =
            if task == Task::Embed { PREFERRED_ENCODERS } else { PREFERRED_LANGUAGE_MODELS };
        let pulled = |c: &ModelCard| c.status(&self.home) == ModelStatus::Pulled;
        let chosen = preferred
            .iter()
            .filter_map(|id| capable.iter().find(|c| c.id == *id))
            .find(|c| pulled(c))
            .or_else(|| capable.iter().find(|c| pulled(c)))
            .or_else(|| preferred.iter().find_map(|id| capable.iter().find(|c| c.id == *id)))
            .cloned()
            .ok_or_else(|| format!("no model can {}", task_phrase(task)))?;
        if pulled(&chosen) {
            locked(&self.auto).insert(task.name(), chosen.clone());
        }
        Ok(chosen)
    }

    fn largest_model(&self, task: Task) -> Result<ModelCard, String> {
        // Called per row in the naive baseline: list the models directory once, not each time.
        let cached = locked(&self.largest).get(task.name()).cloned();
        if let Some(card) = cached {
            return Ok(card);
        }
        let (cards, _) = all_models(&self.home);
        let largest = cards
            .into_iter()
            .filter(|c| c.can(task) && c.status(&self.home) == ModelStatus::Pulled)
            .max_by_key(|c| c.parameters);
        match largest {
            Some(card) => {
                locked(&self.largest).insert(task.name(), card.clone());
                Ok(card)
            }
            None => self.resolve_model(None, task),
        }
    }

    fn candidate_models(&self, task: Task) -> Vec<ModelCard> {
        let (cards, _) = all_models(&self.home);
        let mut pulled: Vec<ModelCard> = cards
            .into_iter()
            .filter(|c| c.can(task) && c.status(&self.home) == ModelStatus::Pulled)
            .collect();
        pulled.sort_by_key(|c| c.parameters);
        pulled
    }

    fn embed(&self, model: &str, texts: &[&str]) -> Result<BatchOutput<Vec<f32>>, String> {
        // An encoder's weights are its files (f32); its batches are small beside them.
        if let Ok(card) = self.card(model) {
            let bytes = || usize::try_from(file_bytes(&self.home, &card)).unwrap_or(usize::MAX);
            self.memory.hold_weights(model, bytes).map_err(|e| e.to_string())?;
        }
        let encoder =
            ModelRegistry::global().encoder(&self.home, model).map_err(|e| e.to_string())?;
        let _device = crate::scheduler::device_turn();
        let mut truncated = 0;
        let rows = isolate_failures(texts.len(), |rows| {
            let batch: Vec<&str> = rows.iter().map(|&i| texts[i]).collect();
            let out = encoder.embed(&batch)?;
            truncated += out.truncated;
            crate::call_stats::record_rows(model, batch.len(), out.tokens);
            crate::call_stats::record_batch();
            Ok(out.vectors)
        });
        Ok(BatchOutput { rows, truncated })
    }

    fn score_labels(
        &self,
        model: &str,
        batch: &ChatBatch,
        labels: &[String],
    ) -> Result<BatchOutput<Vec<f32>>, String> {
        let lm = self.language_model(model)?;
        let card = self.card(model)?;
        let (prefix, mut rows) = self.tokenize(&lm, &card, batch, "")?;
        let labels = labels
            .iter()
            .map(|l| lm.encode(l).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        // The tokens scored, cut here so the batch and prior keys below hold them.
        let labels = if batch.whole_labels { labels } else { distinguishing_prefixes(&labels) };
        // A row's pass holds every label after it (each a branch of the row: `score_chunk`).
        let label_tokens = labels.iter().map(Vec::len).sum::<usize>().max(1);
        let budget = Self::context_of(&lm, &card)
            .checked_sub(prefix.len() + label_tokens)
            .filter(|b| *b >= 8)
            .ok_or_else(|| {
                format!("the instruction and labels leave no room for the text in model '{model}'")
            })?;
        let truncated = Self::fit(&lm, &mut rows, budget);
        if scores_later_tokens(&labels) {
            // Later label tokens are scored on the output matrix's tiles, packed on first use.
            let tiles = || lm.decoder().output_tiles_bytes();
            self.memory
                .hold_weights(&format!("{model} output tiles"), tiles)
                .map_err(|e| e.to_string())?;
        }
        record_prompt(lm.id(), &prefix, &rows);
        let key = (lm.id().to_string(), prefix.clone(), labels.clone());
        let (mut rows, role) = self.label_batches.submit(key, rows, |all| {
            self.with_prefix(&lm, &prefix, all.len(), |cache| {
                isolate_failures(all.len(), |chunk| {
                    let part: Vec<Vec<u32>> = chunk.iter().map(|&i| all[i].clone()).collect();
                    let tokens = prefix.len() + longest(&part) + label_tokens;
                    let _memory = self.reserve_batch(&lm, part.len(), tokens)?;
                    lm.score_whole_labels(cache, &part, &labels)
                })
            })
        });
        count_batch(role);
        escalate_exhaustion(&rows)?;
        if let Some(content_free) = &batch.calibration_row {
            let free = ChatBatch {
                shared: batch.shared.clone(),
                rows: vec![content_free.clone()],
                calibration_row: None,
                whole_labels: batch.whole_labels,
            };
            let (_, mut free) = self.tokenize(&lm, &card, &free, "")?;
            let free = free.pop().unwrap_or_default();
            let key = (lm.id().to_string(), [prefix.as_slice(), &free].concat(), labels.clone());
            // Look up first and release the lock: a `match` on the guard would hold it in the
            // arms, and the insert below would deadlock.
            let cached = locked(&self.priors).get(&key);
            let prior = match cached {
                Some(prior) => prior,
                None => {
                    let _device = crate::scheduler::device_turn();
                    let cache = self.prefix_cache(&lm, &prefix)?;
                    let prior = lm
                        .score_whole_labels(&cache, std::slice::from_ref(&free), &labels)
                        .map_err(|e| e.to_string())?
                        .pop()
                        .unwrap_or_default();
                    locked(&self.priors).insert(key, prior.clone());
                    prior
                }
            };
            for probs in rows.iter_mut().flatten() {
                calibrate(probs, &prior);
            }
        }
        Ok(BatchOutput { rows, truncated })
    }

    fn complete(
        &self,
        model: &str,
        batch: &ChatBatch,
        options: &CompletionOptions,
    ) -> Result<BatchOutput<String>, String> {
        let lm = self.language_model(model)?;
        let card = self.card(model)?;
        let (prefix, mut rows) = self.tokenize(&lm, &card, batch, "")?;
        let context = Self::context_of(&lm, &card);
        // Leave room for the answer, but never less than a quarter of the context for the prompt.
        let max_tokens = options.max_tokens.min(context.saturating_sub(prefix.len()) * 3 / 4);
        let budget = context
            .checked_sub(prefix.len() + max_tokens)
            .filter(|b| *b >= 8)
            .ok_or_else(|| format!("the prompt leaves no room to answer in model '{model}'"))?;
        let truncated = Self::fit(&lm, &mut rows, budget);
        let sampling = if options.temperature > 0.0 {
            Sampling::Seeded { temperature: options.temperature, seed: options.seed }
        } else {
            Sampling::Greedy
        };
        let generate = GenerateOptions { max_tokens, sampling };
        record_prompt(lm.id(), &prefix, &rows);
        let key = (lm.id().to_string(), prefix.clone(), format!("{generate:?}"));
        let (rows, role) = self.generate_batches.submit(key, rows, |all| {
            self.with_prefix(&lm, &prefix, all.len(), |cache| {
                isolate_failures(all.len(), |chunk| {
                    let part: Vec<Vec<u32>> = chunk.iter().map(|&i| all[i].clone()).collect();
                    let tokens = prefix.len() + longest(&part) + max_tokens;
                    let _memory = self.reserve_batch(&lm, part.len(), tokens)?;
                    let generated = lm.generate(cache, &part, &generate)?;
                    generated
                        .iter()
                        .map(|ids| lm.decode(ids).map(|t| (t.trim().to_string(), ids.len())))
                        .collect()
                })
            })
        });
        count_batch(role);
        escalate_exhaustion(&rows)?;
        // Each requester counts the tokens generated for its own rows.
        let new_tokens: usize = rows.iter().flatten().map(|(_, n)| n).sum();
        crate::call_stats::record(|s| s.tokens_out += new_tokens as u64);
        let rows = rows.into_iter().map(|r| r.map(|(text, _)| text)).collect();
        Ok(BatchOutput { rows, truncated })
    }

    fn extract(
        &self,
        model: &str,
        batch: &ChatBatch,
        fields: &[(String, FieldType)],
    ) -> Result<BatchOutput<Vec<Option<FieldValue>>>, String> {
        let lm = self.language_model(model)?;
        let card = self.card(model)?;
        let (prefix, mut rows) = self.tokenize(&lm, &card, batch, "")?;
        let reserve = crate::constrained_json::tokens_needed(fields);
        let budget = Self::context_of(&lm, &card)
            .checked_sub(prefix.len() + reserve)
            .filter(|b| *b >= 8)
            .ok_or_else(|| {
                format!("the field list leaves no room for the text in model '{model}'")
            })?;
        let truncated = Self::fit(&lm, &mut rows, budget);
        record_prompt(lm.id(), &prefix, &rows);
        let _device = crate::scheduler::device_turn();
        crate::call_stats::record_batch();
        let rows: Vec<RowResult<(Vec<Option<FieldValue>>, usize)>> =
            self.with_prefix(&lm, &prefix, rows.len(), |cache| {
                isolate_failures(rows.len(), |chunk| {
                    let part: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
                    let tokens = prefix.len() + longest(&part) + reserve;
                    let _memory = self.reserve_batch(&lm, part.len(), tokens)?;
                    lm.extract(cache, &part, fields)
                })
            });
        escalate_exhaustion(&rows)?;
        let chosen: usize = rows.iter().flatten().map(|(_, n)| n).sum();
        crate::call_stats::record(|s| s.tokens_out += chosen as u64);
        let rows = rows.into_iter().map(|r| r.map(|(values, _)| values)).collect();
        Ok(BatchOutput { rows, truncated })
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<usize, String> {
        let lm = self.language_model(model)?;
        lm.encode(text).map(|ids| ids.len()).map_err(|e| e.to_string())
    }

    fn context_length(&self, model: &str) -> Result<usize, String> {
        let lm = self.language_model(model)?;
        Ok(Self::context_of(&lm, &self.card(model)?))
    }

    fn home(&self) -> &MurakkabHome {
        &self.home
    }

    fn has_matrix_units(&self) -> bool {
        crate::amx_gemm::available()
    }

    fn is_loaded(&self, model: &str) -> bool {
        ModelRegistry::global().is_loaded(&self.home, model)
    }
}

/// The longest row, in tokens.
fn longest(rows: &[Vec<u32>]) -> usize {
    rows.iter().map(Vec::len).max().unwrap_or(0)
}

/// A row that could not get memory even alone fails the whole call: the query should stop with
/// the limit's message, not return NULLs.
fn escalate_exhaustion<T>(rows: &[RowResult<T>]) -> Result<(), String> {
    match rows
        .iter()
        .find_map(|r| r.as_ref().err().filter(|e| e.starts_with("Resources exhausted")))
    {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// Counts the rows and prompt tokens of a call (the shared instruction once).
fn record_prompt(model: &str, prefix: &[u32], rows: &[Vec<u32>]) {
    let tokens: usize = prefix.len() + rows.iter().map(Vec::len).sum::<usize>();
    crate::call_stats::record_rows(model, rows.len(), tokens);
}

/// Counts the forward batch a request ran (a request merged into another's batch ran none).
fn count_batch(role: Role) {
    if let Role::Led { .. } = role {
        crate::call_stats::record_batch();
    }
}

/// Divides `probs` by `prior` and renormalises.
fn calibrate(probs: &mut [f32], prior: &[f32]) {
    for (p, q) in probs.iter_mut().zip(prior) {
        *p /= q.max(1e-6);
    }
    let sum: f32 = probs.iter().sum();
    if sum > 0.0 {
        probs.iter_mut().for_each(|p| *p /= sum);
    }
}

fn task_phrase(task: Task) -> &'static str {
    match task {
        Task::Generate => "generate text",
        Task::ScoreLabels => "score labels",
        Task::Embed => "produce embeddings",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::num::NonZeroUsize;

    use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};

    use super::*;

    fn runtime_with_limit(home: &MurakkabHome, bytes: usize) -> ModelRuntime {
        let pool =
            TrackConsumersPool::new(GreedyMemoryPool::new(bytes), NonZeroUsize::new(5).unwrap());
        ModelRuntime::new(home.clone()).with_memory_pool(Arc::new(pool))
    }

    fn batch(rows: usize) -> ChatBatch {
        ChatBatch {
            shared: "Classify the text.\n".into(),
            rows: (0..rows).map(|i| format!("the cat sat on the mat {i}")).collect(),
            calibration_row: None,
            whole_labels: false,
        }
    }

    #[test]
    fn a_memory_limit_covers_weights_and_splits_batches_that_do_not_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        crate::tiny_models::install_tiny_models(&home).unwrap();
        let card = find_model(&home, "tiny-llama").unwrap();
        let weights = decoder_weight_bytes(
            file_bytes(&home, &card),
            card.parameters,
            weight_mode(&card) == WeightMode::Both,
        );
        let labels = ["yes".to_string(), "no".to_string()];

        // Too small for the weights: the call fails, naming them.
        let err = runtime_with_limit(&home, weights / 2)
            .score_labels("tiny-llama", &batch(16), &labels)
            .unwrap_err();
        assert!(
            err.contains("Resources exhausted") && err.contains("model weights: tiny-llama"),
            "{err}"
        );

        // Room for the weights and one row, not for 16 at once: every row is still answered.
        let lm = ModelRegistry::global().language_model(&home, "tiny-llama").unwrap();
        let one_row = decoder_batch_bytes(lm.decoder().config(), 1, 64);
        let sixteen = decoder_batch_bytes(lm.decoder().config(), 16, 40);
        assert!(one_row * 2 < sixteen);
        let runtime = runtime_with_limit(&home, weights + one_row * 2);
        let out = runtime.score_labels("tiny-llama", &batch(16), &labels).unwrap();
        assert_eq!(out.rows.len(), 16);
        assert!(out.rows.iter().all(Result::is_ok), "{:?}", out.rows);
    }

    #[test]
    fn statements_reserve_the_output_tiles_beside_the_weights() {
        // Whole statements are scored on the output matrix's tiles, packed on first use (where
        // the CPU has AMX and the model keeps an f32 copy; elsewhere the figure is 0): the
        // session's account holds them with the weights once the first such call ran.
        let tmp = tempfile::tempdir().unwrap();
        let home = MurakkabHome::at(tmp.path());
        crate::tiny_models::install_tiny_models(&home).unwrap();
        // A card that states its size, so the model loads as real small models do (weights in
        // tiles where the CPU has AMX).
        let card_path = home.model_dir("tiny-llama").join(murakkab_catalog::CARD_FILE);
        let text = std::fs::read_to_string(&card_path).unwrap();
        std::fs::write(&card_path, text.replacen('{', r#"{"parameters": 100000, "#, 1)).unwrap();
        let card = find_model(&home, "tiny-llama").unwrap();
        assert_eq!(weight_mode(&card), WeightMode::Both);
        let weights = decoder_weight_bytes(file_bytes(&home, &card), card.parameters, true);
        let pool = Arc::new(GreedyMemoryPool::new(usize::MAX / 2));
        let runtime = ModelRuntime::new(home.clone()).with_memory_pool(Arc::clone(&pool) as _);
        let statements = ["the cat sat on the mat".to_string(), "the cat did not sit".to_string()];
        let whole = ChatBatch { whole_labels: true, ..batch(3) };
        let out = runtime.score_labels("tiny-llama", &whole, &statements).unwrap();
        assert!(out.rows.iter().all(Result::is_ok), "{:?}", out.rows);
        let lm = ModelRegistry::global().language_model(&home, "tiny-llama").unwrap();
        let reserved = datafusion::execution::memory_pool::MemoryPool::reserved(pool.as_ref());
        let tiles = lm.decoder().output_tiles_bytes();
        assert_eq!(reserved, weights + tiles);
        assert!(tiles > 0 || !crate::amx_gemm::available(), "no tiles with AMX present");
    }
}
