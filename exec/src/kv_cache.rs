//! Where a decoder pass finds and leaves each layer's keys and values.
//!
//! Two layouts, one per kind of work:
//! - [`SeqCache`]: one sequence's keys and values, owned by the caller, shareable as a common
//!   prompt prefix (cloning shares the tensors). Prompt passes read and extend these.
//! - [`BatchCache`]: the rows of one generation batch in preallocated tensors
//!   (`[B, n_kv_head, capacity, head_dim]` per layer), written in place one slot per step.
//!   Extending every row's [`SeqCache`] instead costs a copy of every row's whole cache per layer
//!   and step (pad, stack, concatenate), which at batch 16 moved more bytes than the weights.
//!
//! Batch layout: row `s`'s prompt occupies slots `[0, past[s])`, slots up to `base` (the longest
//! prompt) are padding, and the tokens generated so far occupy `[base, base + generated)` for
//! every row alike, so one write per layer stores a step for the whole batch. Positions (RoPE)
//! stay each row's own (`past[s] + generated`); the mask hides the padding.

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::error::ModelError;

/// The keys and values one sequence has produced so far, per layer: `[n_kv_head, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct SeqCache {
    pub(crate) layers: Vec<(Tensor, Tensor)>,
    pub(crate) len: usize,
}

impl SeqCache {
    /// Tokens covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.elem_count() + v.elem_count()) * 4).sum()
    }
}

/// Slots added when a [`BatchCache`] fills up, at least (it grows by doubling its generated part).
const GROW_SLOTS: usize = 32;

/// The keys and values of a batch of rows being generated token by token (see the module doc).
#[derive(Debug)]
pub struct BatchCache {
    /// Per layer, `[B, n_kv_head, capacity, head_dim]`, contiguous.
    layers: Vec<(Tensor, Tensor)>,
    /// Each row's prompt tokens (slots `[0, past[s])`).
    past: Vec<usize>,
    /// First slot of the generated tokens: the longest prompt.
    base: usize,
    /// Generated tokens stored (slots `[base, base + generated)`).
    generated: usize,
    capacity: usize,
}

impl BatchCache {
    /// Copies the rows' caches into one batch with room for `expected` generated tokens (it grows
    /// if more come). Every row must have the same number of layers and heads.
    pub fn from_seqs(rows: &[&SeqCache], expected: usize) -> Result<Self, ModelError> {
        let first = rows.first().ok_or_else(|| ModelError::Unsupported {
            id: "decoder".into(),
            reason: "a batch cache needs at least one row".into(),
        })?;
        let past: Vec<usize> = rows.iter().map(|r| r.len).collect();
        let base = past.iter().copied().max().unwrap_or(0);
        let capacity = base + expected.max(1);
        let layers = (0..first.layers.len())
            .map(|layer| stack_padded(rows, layer, capacity))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, past, base, generated: 0, capacity })
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.past.len()
    }

    /// Slots the next step's attention covers (prompt area, padding, generated tokens, new one).
    pub(crate) fn next_width(&self) -> usize {
        self.base + self.generated + 1
    }

    /// Absolute position of the next token of row `s`.
    pub(crate) fn next_position(&self, s: usize) -> usize {
        self.past[s] + self.generated
    }

    /// Additive mask `[B, 1, group, width]` for the next step, or `None` when no row has padding.
    pub(crate) fn next_mask(
        &self,
        group: usize,
        device: &Device,
    ) -> Result<Option<Tensor>, ModelError> {
        if self.past.iter().all(|&p| p == self.base) {
            return Ok(None);
        }
        let width = self.next_width();
        let mut m = vec![0f32; self.rows() * group * width];
        for (s, &p) in self.past.iter().enumerate() {
            for g in 0..group {
                let start = (s * group + g) * width;
                m[start + p..start + self.base].fill(f32::NEG_INFINITY);
            }
        }
        Ok(Some(Tensor::from_vec(m, (self.rows(), 1, group, width), device)?))
    }

    /// Makes room for one more step, growing every layer when full.
    pub(crate) fn reserve_step(&mut self) -> candle_core::Result<()> {
        if self.base + self.generated < self.capacity {
            return Ok(());
        }
        let capacity = self.capacity + self.generated.max(GROW_SLOTS);
        for (k, v) in &mut self.layers {
            *k = grow_slots(k, capacity)?;
            *v = grow_slots(v, capacity)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Stores layer `layer`'s keys and values of the step (`[B, n_kv_head, 1, head_dim]`) and
    /// returns the keys and values the step attends to (`[B, n_kv_head, width, head_dim]`).
    pub(crate) fn store(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let slot = self.base + self.generated;
        let (keys, values) = &self.layers[layer];
        keys.slice_set(&k.contiguous()?, 2, slot)?;
        values.slice_set(&v.contiguous()?, 2, slot)?;
        Ok((keys.narrow(2, 0, slot + 1)?, values.narrow(2, 0, slot + 1)?))
    }

    /// Marks the step stored in every layer.
    pub(crate) fn finish_step(&mut self) {
        self.generated += 1;
    }

    /// Keeps only rows `keep` (indices into the current batch, in order).
    pub fn retain(&mut self, keep: &[usize]) -> Result<(), ModelError> {
        if keep.len() == self.rows() {
            return Ok(());
        }
        if keep.is_empty() {
            self.layers.clear();
            self.past.clear();
            return Ok(());
        }
        let ids: Vec<u32> = keep.iter().map(|&s| s as u32).collect();
        for (k, v) in &mut self.layers {
            let index = Tensor::new(ids.as_slice(), k.device())?;
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        self.past = keep.iter().map(|&s| self.past[s]).collect();
        Ok(())
    }

    /// Row `s` as a [`SeqCache`] (prompt, then generated tokens): for tests and callers that go
    /// on with one row.
    pub fn row(&self, s: usize) -> Result<SeqCache, ModelError> {
        let take = |t: &Tensor| -> candle_core::Result<Tensor> {
            let row = t.i(s)?;
            let prompt = row.narrow(1, 0, self.past[s])?;
            let generated = row.narrow(1, self.base, self.generated)?;
            Tensor::cat(&[&prompt, &generated], 1)
        };
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((take(k)?, take(v)?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(SeqCache { layers, len: self.past[s] + self.generated })
    }
}

/// Layer `layer` of `rows`' caches, each padded with zeros to `slots` positions and stacked:
/// keys and values `[B, n_kv_head, slots, head_dim]`. Prompt passes attend to these; a batch
/// cache starts from them.
pub(crate) fn stack_padded(
    rows: &[&SeqCache],
    layer: usize,
    slots: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let stack = |pick: fn(&(Tensor, Tensor)) -> &Tensor| -> candle_core::Result<Tensor> {
        let padded = rows
            .iter()
            .map(|r| pad_slots(pick(&r.layers[layer]), slots))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&padded, 0)
    };
    Ok((stack(|kv| &kv.0)?, stack(|kv| &kv.1)?))
}

/// `x` (`[heads, len, head_dim]`) followed by zeros up to `slots` along the time axis.
fn pad_slots(x: &Tensor, slots: usize) -> candle_core::Result<Tensor> {
    let (heads, len, head_dim) = x.dims3()?;
    if len == slots {
        return x.contiguous();
    }
    let zeros = Tensor::zeros((heads, slots - len, head_dim), DType::F32, x.device())?;
    Tensor::cat(&[x, &zeros], 1)
}

/// `x` (`[B, heads, slots, head_dim]`) with its time axis grown to `slots` (zeros after).
fn grow_slots(x: &Tensor, slots: usize) -> candle_core::Result<Tensor> {
    let (b, heads, len, head_dim) = x.dims4()?;
    let zeros = Tensor::zeros((b, heads, slots - len, head_dim), DType::F32, x.device())?;
    Tensor::cat(&[x, &zeros], 2)
}
