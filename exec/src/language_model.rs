//! A decoder with its tokenizer: batched label scoring and generation over [`GgufDecoder`].
//!
//! Label scoring is what `ai_filter` and `ai_classify` use: the probability of each candidate
//! label after a prompt, every token of a multi-token label scored exactly, with no free
//! generation. A prompt is `prefix + row + suffix`; the prefix (the instruction, identical for
//! every row) is computed once and its cache shared by all rows.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use murakkab_udfs::FieldType;
use tokenizers::Tokenizer;

use crate::batching::{in_length_order_within, in_padded_length_order};
use crate::constrained_json::{Extraction, TokenClasses};
use crate::error::ModelError;
use crate::gguf_decoder::{BranchLayout, GgufDecoder, SeqCache, WeightMode};
use crate::gguf_tokenizer::tokenizer_from_gguf;

/// Rows per forward pass.
const ROW_BATCH: usize = 16;
/// Rows generated together: [`ROW_BATCH`], and up to 64 while the batch's cache fits in
/// [`GENERATE_SLOTS`]. A batched step costs about the same from 8 to 32 rows (it reads the
/// prompt passes' tiles, see [`crate::gguf_decoder::WIDE_STEP_ROWS`]), and a batch runs until
/// its longest answer ends, so the fewer batches the fewer steps.
const GENERATE_ROWS: std::ops::Range<usize> = ROW_BATCH..64;
/// Cache slots (rows × (longest prompt + expected new tokens)) a generation batch may grow to
/// past [`ROW_BATCH`] rows: its key/value cache is preallocated at that size, 25 KB per slot
/// for qwen2.5-0.5b and 46 KB for SmolLM2-135M, so about 200 and 380 MB.
const GENERATE_SLOTS: usize = 8192;
/// The work of one label-scoring pass beyond its tokens, in tokens: each f32 weight product
/// packs its weight matrix per call, about 0.2 s per pass for qwen2.5-0.5b on 2 cores against
/// 1.8 ms per token (`murakkab calibrate`: 552 tokens/s). A pass is split off only where that
/// saves more padding. Qwen over 230 UCI sentences (5 to 60 tokens), batched: 181 J with fixed
/// 16-row passes, 165 J at 96, 169 J at 48, 172 J at 160; 222 BBC headlines (even lengths):
/// 124.5 → 123.6 J.
const PASS_OVERHEAD_TOKENS: usize = 96;
/// Most padded prompt tokens (rows × longest) in one prefill forward.
const PREFILL_TOKENS: usize = 2048;

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token.
    Greedy,
    /// Sample at `temperature` from a generator seeded with `seed` and the row's prompt tokens, so
    /// a prompt gives the same text for the same seed whatever it is batched with.
    Seeded {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Seed of the row-0 generator.
        seed: u64,
    },
}

/// Generation limits.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens per row.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
}

/// A loaded language model.
pub struct LanguageModel {
    id: String,
    decoder: GgufDecoder,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    /// Each token's text, built on first use (constrained decoding needs it).
    vocabulary: OnceLock<Vec<String>>,
    /// Tokens grouped by their role in JSON values, built on first use.
    json_classes: OnceLock<TokenClasses>,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel")
            .field("id", &self.id)
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl LanguageModel {
    /// Loads a GGUF file; `stop_tokens` are the texts of tokens that end generation.
    pub fn load(
        id: &str,
        path: &Path,
        stop_tokens: &[String],
        device: &Device,
        mode: WeightMode,
    ) -> Result<Self, ModelError> {
        let with_id = |e: ModelError| match e {
            ModelError::Load { detail, .. } => ModelError::Load { id: id.to_string(), detail },
            other => other,
        };
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Load {
            id: id.to_string(),
            detail: format!("opening {}: {e}", path.display()),
        })?;
        let content = Content::read(&mut file).map_err(|e| ModelError::Load {
            id: id.to_string(),
            detail: format!("reading {}: {e}", path.display()),
        })?;
        let tokenizer = tokenizer_from_gguf(&content)?;
        let decoder = GgufDecoder::load(&content, &mut file, device, mode).map_err(with_id)?;
        // Every id the tokenizer can produce must index the model's embedding and output rows.
        let tokenizer_vocab = tokenizer.get_vocab_size(true);
        if tokenizer_vocab > decoder.config().vocab {
            return Err(ModelError::Load {
                id: id.to_string(),
                detail: format!(
                    "the tokenizer has {tokenizer_vocab} tokens but the model only {} embeddings",
                    decoder.config().vocab
                ),
            });
        }
        let stop_ids = stop_tokens.iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        Ok(Self {
            id: id.to_string(),
            decoder,
            tokenizer,
            stop_ids,
            vocabulary: OnceLock::new(),
            json_classes: OnceLock::new(),
        })
    }

    /// The model id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The decoder.
    pub fn decoder(&self) -> &GgufDecoder {
        &self.decoder
    }

    /// Token ids of `text` (special-token texts such as `<|im_end|>` become their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The text of every token id, in id order (empty for special tokens).
    pub fn vocabulary_texts(&self) -> &[String] {
        self.vocabulary.get_or_init(|| {
            (0..self.decoder.config().vocab as u32)
                .map(|id| self.tokenizer.decode(&[id], true).unwrap_or_default())
                .collect()
        })
    }

    /// The vocabulary grouped for constrained JSON values.
    pub(crate) fn json_token_classes(&self) -> Result<&TokenClasses, ModelError> {
        if let Some(classes) = self.json_classes.get() {
            return Ok(classes);
        }
        let classes = TokenClasses::of(self)?;
        Ok(self.json_classes.get_or_init(|| classes))
    }

    /// `ids` cut to at most `budget` tokens by removing the middle, keeping the start (the
    /// instruction) and the end (the question and the answer cue). Returns whether it was cut,
    /// so callers can count a warning.
    pub fn fit_to_context(&self, ids: &[u32], budget: usize) -> (Vec<u32>, bool) {
        if ids.len() <= budget {
            return (ids.to_vec(), false);
        }
        let head = budget / 2;
        let tail = budget - head;
        let mut out = Vec::with_capacity(budget);
        out.extend_from_slice(&ids[..head]);
        out.extend_from_slice(&ids[ids.len() - tail..]);
        (out, true)
    }

    /// The cache after `prefix` (empty prefix: an empty cache).
    pub fn prefix_cache(&self, prefix: &[u32]) -> Result<SeqCache, ModelError> {
        let empty = self.decoder.empty_cache()?;
        if prefix.is_empty() {
            return Ok(empty);
        }
        let (_, _, mut caches) = self.decoder.forward(&[prefix], &[&empty], false)?;
        Ok(caches.remove(0))
    }

    /// For each row, the probability of each label (normalised over the labels) after
    /// `prefix + row`. Labels are token sequences; each must be non-empty.
    ///
    /// Each label is scored up to the token that tells it apart from every other label (all of
    /// it when labels share a start, e.g. "very good" / "very bad"): that is the model's choice
    /// between the labels. Tokens after it only measure how the model would spell the rest,
    /// and they penalise a label whose spelling the tokenizer splits differently from the
    /// model's habit (qwen2.5-coder-0.5b chose "entertainment" when generating, but its
    /// full-spelling score lost to "business").
    pub fn score_labels(
        &self,
        prefix: &SeqCache,
        rows: &[Vec<u32>],
        labels: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // An empty label stays empty when cut, so the check below rejects it.
        self.score_whole_labels(prefix, rows, &distinguishing_prefixes(labels))
    }

    /// As [`Self::score_labels`], but every token of each label is scored: for labels that
    /// are statements, whose meaning can lie after the token that tells them apart (a
    /// statement and its negation differ first at "not"). Labels must be non-empty.
    pub fn score_whole_labels(
        &self,
        prefix: &SeqCache,
        rows: &[Vec<u32>],
        labels: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if labels.is_empty() || labels.iter().any(|l| l.is_empty()) {
            return Err(ModelError::Unsupported {
                id: self.id.clone(),
                reason: "every label needs at least one token".into(),
            });
        }
        // The tokens every label starts with add the same log-probability to each, which the
        // softmax cancels: they join each row's prompt (its one batched pass) instead of being
        // run again per label ("The review is" of "The review is (not) negative").
        let shared = shared_start(labels);
        let rows: Vec<Vec<u32>> = if shared == 0 {
            rows.to_vec()
        } else {
            rows.iter().map(|r| [r.as_slice(), &labels[0][..shared]].concat()).collect()
        };
        let labels: Vec<Vec<u32>> = labels.iter().map(|l| l[shared..].to_vec()).collect();
        in_padded_length_order(
            rows.len(),
            ROW_BATCH,
            PASS_OVERHEAD_TOKENS,
            |i| rows[i].len(),
            |chunk| {
                if crate::scheduler::cancelled() {
                    return Err(ModelError::Cancelled);
                }
                let batch: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
                self.score_chunk(prefix, &batch, &labels)
            },
        )
    }

    fn score_chunk(
        &self,
        prefix: &SeqCache,
        rows: &[&[u32]],
        labels: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if rows.iter().any(|r| r.is_empty()) {
            return Err(ModelError::Unsupported {
                id: self.id.clone(),
                reason: "a row prompt must have at least one token".into(),
            });
        }
        let multi: Vec<usize> = (0..labels.len()).filter(|&k| labels[k].len() > 1).collect();
        let first_tokens: Vec<u32> = labels.iter().map(|l| l[0]).collect();
        if multi.is_empty() {
            let (last, _) = self.prefill(prefix, rows, false)?;
            let scores = self.decoder.token_scores(&last, &first_tokens)?.to_vec2::<f32>()?;
            return Ok(scores.into_iter().map(|s| softmax(&s)).collect());
        }
        // log p(label) = log p(first token) + sum of later tokens' log-probs. The first tokens'
        // scores lack the row's log-sum-exp, a constant the softmax over labels cancels. The
        // later tokens run as branches after their row in the row's own pass: each label but
        // its last token, seeing the row and itself only.
        let branches: Vec<usize> = multi.iter().map(|&k| labels[k].len() - 1).collect();
        let seqs: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut seq = r.to_vec();
                for &k in &multi {
                    seq.extend_from_slice(&labels[k][..labels[k].len() - 1]);
                }
                seq
            })
            .collect();
        let layouts: Vec<BranchLayout> =
            rows.iter().map(|r| BranchLayout::new(r.len(), branches.clone())).collect();
        let mut scores = Vec::with_capacity(rows.len());
        for part in parts_within(&seqs, PREFILL_TOKENS) {
            let part_seqs: Vec<&[u32]> = seqs[part.clone()].iter().map(Vec::as_slice).collect();
            let part_prefixes = vec![prefix; part.len()];
            let all = self.decoder.forward_branches(
                &part_seqs,
                &layouts[part.clone()],
                &part_prefixes,
            )?;
            let (b, t, dim) = all.dims3()?;
            let all = all.reshape((b * t, dim))?;
            // Each row's last token, then every position that predicts a later label token
            // (label k's j-th token is predicted at branch k's (j − 1)-th), through the output
            // head at once.
            let last: Vec<u32> =
                (0..b).map(|s| (s * t + rows[part.start + s].len() - 1) as u32).collect();
            let mut at = Vec::new();
            let mut predicted = Vec::new();
            for s in 0..b {
                let mut offset = rows[part.start + s].len();
                for &k in &multi {
                    let l = &labels[k];
                    at.extend((0..l.len() - 1).map(|j| (s * t + offset + j) as u32));
                    predicted.extend_from_slice(&l[1..]);
                    offset += l.len() - 1;
                }
            }
            let device = all.device().clone();
            let last = all.index_select(&Tensor::new(last.as_slice(), &device)?, 0)?;
            let mut part_scores =
                self.decoder.token_scores(&last, &first_tokens)?.to_vec2::<f32>()?;
            let hidden = all.index_select(&Tensor::new(at.as_slice(), &device)?, 0)?;
            let lp = self.decoder.token_log_probs(&hidden, &predicted)?;
            let mut position = lp.iter();
            for row in &mut part_scores {
                for &k in &multi {
                    for _ in &labels[k][1..] {
                        if let Some(p) = position.next() {
                            row[k] += p;
                        }
                    }
                }
            }
            scores.extend(part_scores);
        }
        Ok(scores.into_iter().map(|s| softmax(&s)).collect())
    }

    /// Generates a continuation of each prompt (after `prefix`), stopping at a stop token or
    /// `max_tokens`. Returns the new token ids of each row, without the stop token.
    pub fn generate(
        &self,
        prefix: &SeqCache,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        // Each row's sampler is seeded from its own prompt, so the grouping changes no sampling
        // choice (a step of 8 rows or more rounds the weights otherwise: `WIDE_STEP_ROWS`).
        let expected = options.max_tokens.min(self.decoder.config().context_length);
        in_length_order_within(
            prompts.len(),
            GENERATE_ROWS,
            GENERATE_SLOTS,
            |i| prefix.len + prompts[i].len() + expected,
            |chunk| {
                let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
                self.generate_chunk(prefix, &batch, options)
            },
        )
    }

    /// Each row's values of `fields` (and the tokens the model chose for them), generated under
    /// the JSON constraint of [`crate::constrained_json`], rows of similar length advancing
    /// together in chunks.
    pub fn extract(
        &self,
        prefix: &SeqCache,
        rows: &[Vec<u32>],
        fields: &[(String, FieldType)],
    ) -> Result<Vec<Extraction>, ModelError> {
        let expected = crate::constrained_json::tokens_needed(fields);
        in_length_order_within(
            rows.len(),
            GENERATE_ROWS,
            GENERATE_SLOTS,
            |i| prefix.len + rows[i].len() + expected,
            |chunk| {
                let batch: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
                crate::constrained_json::extract_batch(self, prefix, &batch, fields)
            },
        )
    }

    /// The prompts' forward pass after `prefix` (label scoring's rows, generation's and
    /// extraction's prompts): the last position's hidden state of each (`[N, dim]`) and, with
    /// `keep_caches`, each one's cache (else none). Consecutive prompts share a forward while
    /// their padded size (rows × longest) stays within [`PREFILL_TOKENS`], so short prompts
    /// still fill a matrix product and long ones are not padded to their longest neighbour (a
    /// prompt is already a matrix of its tokens; padding only adds work, quadratic in
    /// attention).
    pub(crate) fn prefill(
        &self,
        prefix: &SeqCache,
        prompts: &[&[u32]],
        keep_caches: bool,
    ) -> Result<(Tensor, Vec<SeqCache>), ModelError> {
        let mut lasts = Vec::new();
        let mut caches = Vec::with_capacity(prompts.len());
        for part in parts_within(prompts, PREFILL_TOKENS) {
            let part = &prompts[part];
            let part_prefixes = vec![prefix; part.len()];
            if keep_caches {
                let (last, _, part_caches) = self.decoder.forward(part, &part_prefixes, false)?;
                lasts.push(last);
                caches.extend(part_caches);
            } else {
                lasts.push(self.decoder.forward_uncached(part, &part_prefixes, false)?.0);
            }
        }
        Ok((Tensor::cat(&lasts, 0)?, caches))
    }

    fn generate_chunk(
        &self,
        prefix: &SeqCache,
        prompts: &[&[u32]],
        options: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut outputs = vec![Vec::new(); prompts.len()];
        if options.max_tokens == 0 {
            return Ok(outputs);
        }
        let (mut last, caches) = self.prefill(prefix, prompts, true)?;
        // Decode steps write into one preallocated batch cache (see `kv_cache`).
        let mut batch =
            self.decoder.batch_cache(&caches.iter().collect::<Vec<_>>(), options.max_tokens)?;
        drop(caches);
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        let mut rngs: Vec<u64> = prompts
            .iter()
            .map(|p| match options.sampling {
                Sampling::Seeded { seed, .. } => {
                    p.iter().fold(splitmix(seed), |h, &t| splitmix(h ^ u64::from(t)))
                }
                Sampling::Greedy => 0,
            })
            .collect();
        for _ in 0..options.max_tokens {
            if crate::scheduler::cancelled() {
                return Err(ModelError::Cancelled);
            }
            let logits = self.decoder.logits(&last)?.to_vec2::<f32>()?;
            let mut next_active = Vec::new();
            let mut next_tokens = Vec::new();
            let mut kept_slots = Vec::new();
            for (slot, &row) in active.iter().enumerate() {
                let token = pick(&logits[slot], options.sampling, &mut rngs[row]);
                if self.stop_ids.contains(&token) {
                    continue;
                }
                outputs[row].push(token);
                if let Some(keep) = repetition_loop(&outputs[row]) {
                    // A block repeated back to back: small models rarely leave such a loop.
                    outputs[row].truncate(keep);
                    continue;
                }
                next_active.push(row);
                next_tokens.push(token);
                kept_slots.push(slot);
            }
            if next_active.is_empty() {
                break;
            }
            batch.retain(&kept_slots)?;
            last = self.decoder.decode_batch_step(&next_tokens, &mut batch)?;
            active = next_active;
        }
        Ok(outputs)
    }
}

/// Shortest and longest token blocks checked for back-to-back repetition.
const LOOP_BLOCK: std::ops::RangeInclusive<usize> = 6..=64;

/// If `tokens` ends with the same block twice in a row (a generation loop), the length that
/// keeps one copy of it.
fn repetition_loop(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    LOOP_BLOCK
        .take_while(|&len| 2 * len <= n)
        .find(|&len| tokens[n - len..] == tokens[n - 2 * len..n - len])
        .map(|len| n - len)
}

/// Whether [`LanguageModel::score_whole_labels`] scores tokens after the rows' prompt pass for
/// `labels` (some label runs past the start all share plus one token): each of those is scored
/// against the whole vocabulary (`GgufDecoder::token_log_probs`).
pub(crate) fn scores_later_tokens(labels: &[Vec<u32>]) -> bool {
    let shared = shared_start(labels);
    labels.iter().any(|l| l.len() > shared + 1)
}

/// How many leading tokens all labels share, leaving each at least one token of its own.
fn shared_start(labels: &[Vec<u32>]) -> usize {
    let shortest = labels.iter().map(Vec::len).min().unwrap_or(0);
    let first = &labels[0];
    let common = (0..shortest).take_while(|&i| labels.iter().all(|l| l[i] == first[i])).count();
    common.min(shortest.saturating_sub(1))
}

/// Each label cut after its first token that no other label shares at the same position.
pub(crate) fn distinguishing_prefixes(labels: &[Vec<u32>]) -> Vec<Vec<u32>> {
    labels
        .iter()
        .enumerate()
        .map(|(k, label)| {
            let shared = labels
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, other)| label.iter().zip(other).take_while(|(a, b)| a == b).count())
                .max()
                .unwrap_or(0);
            label[..(shared + 1).min(label.len())].to_vec()
        })
        .collect()
}

fn softmax(logps: &[f32]) -> Vec<f32> {
    let max = logps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logps.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick(logits: &[f32], sampling: Sampling, state: &mut u64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0usize, f32::NEG_INFINITY),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0 as u32
    };
    match sampling {
        Sampling::Greedy => argmax(),
        Sampling::Seeded { temperature, .. } if temperature <= 0.0 => argmax(),
        Sampling::Seeded { temperature, .. } => {
            let scaled: Vec<f32> = logits.iter().map(|l| l / temperature as f32).collect();
            let probs = softmax(&scaled);
            *state = splitmix(*state);
            let u = (*state >> 11) as f64 / (1u64 << 53) as f64;
            let mut acc = 0.0f64;
            for (i, p) in probs.iter().enumerate() {
                acc += f64::from(*p);
                if u < acc {
                    return i as u32;
                }
            }
            (probs.len() - 1) as u32
        }
    }
}

/// Consecutive runs of `seqs` that share a forward pass: each as long as its padded size (rows
/// × longest) stays within `budget` tokens, and at least one sequence.
fn parts_within<S: AsRef<[u32]>>(seqs: &[S], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let mut start = 0;
    while start < seqs.len() {
        let mut end = start + 1;
        let mut longest = seqs[start].as_ref().len();
        while let Some(next) = seqs.get(end) {
            let widest = longest.max(next.as_ref().len());
            if widest * (end + 1 - start) > budget {
                break;
            }
            longest = widest;
            end += 1;
        }
        parts.push(start..end);
        start = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_repeated_back_to_back_is_a_loop() {
        let block = [5, 6, 7, 8, 9, 10, 11];
        let mut tokens = vec![1, 2, 3];
        tokens.extend(block);
        assert_eq!(repetition_loop(&tokens), None);
        tokens.extend(block);
        assert_eq!(repetition_loop(&tokens), Some(10));
        assert_eq!(repetition_loop(&[4, 4, 4, 4, 4]), None, "short runs are not loops");
    }

    #[test]
    fn parts_stay_within_their_padded_budget_and_hold_at_least_one_sequence() {
        let seqs: Vec<Vec<u32>> = [3, 3, 4, 10, 2, 2].iter().map(|&n| vec![1; n]).collect();
        // 3 + 3 fit in 8 (2 × 3), a third would pad to 3 × 4 = 12; a 10 alone exceeds 8.
        assert_eq!(parts_within(&seqs, 8), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(parts_within(&seqs, 1000), vec![0..6]);
        assert!(parts_within::<Vec<u32>>(&[], 8).is_empty());
    }

    #[test]
    fn the_start_all_labels_share_leaves_each_a_token() {
        assert_eq!(shared_start(&[vec![1, 2, 3], vec![1, 2, 4, 5]]), 2);
        assert_eq!(shared_start(&[vec![1, 2], vec![1, 2, 4]]), 1);
        assert_eq!(shared_start(&[vec![7], vec![1, 2]]), 0);
        assert_eq!(shared_start(&[vec![1, 2, 3]]), 2);
    }

    #[test]
    fn labels_are_cut_after_the_token_that_tells_them_apart() {
        let labels = vec![vec![1, 2, 3], vec![1, 2, 4, 5], vec![7, 8], vec![1]];
        assert_eq!(
            distinguishing_prefixes(&labels),
            vec![vec![1, 2, 3], vec![1, 2, 4], vec![7], vec![1]]
        );
    }
}
