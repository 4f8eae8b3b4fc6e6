//! Decoder-only transformers from GGUF files (architectures `llama` and `qwen2`), written to run
//! real batches: sequences of different lengths in one forward pass (padding masks, per-sequence
//! positions), a KV cache per sequence, and caches that can be shared as a common prefix.
//!
//! Reference: candle-transformers' `quantized_llama.rs` / `quantized_qwen2.rs` (same weights and
//! names: `blk.N.attn_q.weight`, ...), which keep one cache inside the model and one position for
//! the whole batch, so they cannot batch rows of different lengths. Here the cache lives outside
//! the model, in [`SeqCache`] values the caller owns.
//!
//! RoPE follows llama.cpp: interleaved pairs for `llama`, NEOX halves for `qwen2`.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};

use crate::amx_gemm::{AmxMatrix, TiledActivations};
use crate::error::ModelError;
pub use crate::kv_cache::SeqCache;
use crate::kv_cache::{BatchCache, stack_padded};
use crate::qkv_heads::{HeadLayout, Heads, Rows, heads_with_rope};
use crate::vector_math::{additive_masked_softmax, log_sum_exp};
use crate::vnni_gemv::VnniMatrix;
use rayon::prelude::*;

/// How projection weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// As stored (e.g. Q4_K): smallest, fastest for one token at a time.
    Quantized,
    /// Dequantized to f32 at load: several times the memory, much faster GEMM for prefill.
    Dequantized,
    /// Both: quantized weights for decode steps ([`GgufDecoder::decode_step`]: few bytes read per
    /// token), the f32 copy for prompt passes ([`GgufDecoder::forward`]: compute-bound, f32 GEMM
    /// is fastest), or where the CPU has AMX that copy in bf16 tiles instead
    /// ([`crate::amx_gemm`]). The choice depends on the kind of pass, and for a batched
    /// generation step also on its rows: a step of at least [`WIDE_STEP_ROWS`] rows reads the
    /// tiles where there are tiles (see there), so a generated row's tokens can differ at a
    /// near tie with the rows it was batched with. Label scoring never depends on the batch.
    Both,
    /// [`WeightMode::Both`] with the quantized weights exactly as stored, even in a format candle
    /// multiplies with scalar code (Q4_1, Q5_0, Q5_1): only for benchmarks that measure
    /// what the re-quantization gains.
    BothAsStored,
}

/// Shape and numerics read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Maximum positions.
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// NEOX-style (halves) rather than interleaved RoPE.
    pub neox_rope: bool,
}

/// Whether a prompt pass of `m` tokens through weights `[n, k]` multiplies them by the
/// transposed activations, `(W · xᵀ)ᵀ`, rather than `x · Wᵀ`. Candle's GEMM packs the right-hand
/// operand on every call; for a few tokens that costs more than the product itself (one row's
/// prompt, an instruction prefix), and for weights much wider than tall (the MLP's down
/// projection) the swapped product stays faster up to a batched pass's few hundred tokens.
/// Medians of 9 on this 2-core machine, x · Wᵀ against the swap (`[n, k]`, m tokens):
/// Qwen2.5-0.5B 896×896 at 32: 1.09 vs 0.40 ms; 4864×896 at 32: 2.15 vs 1.27, at 96: 3.12 vs
/// 3.83; 896×4864 at 384: 13.0 vs 9.9; SmolLM2 576×1536 at 512: 3.2 vs 3.7; the 151,936-row
/// output head at 64: 114 vs 137.
fn swap_orientation(m: usize, n: usize, k: usize) -> bool {
    m <= 48 || (k >= 2 * n && m <= 384)
}

/// `x [.., k] · wᵀ` for `w [n, k]`, computed as `(w · xᵀ)ᵀ` (see [`swap_orientation`]).
fn swapped_product(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let flat = x.reshape(((), k))?;
    w.matmul(&flat.t()?)?.t()?.contiguous()?.reshape(with_last_dim(x, n))
}

/// `f` on the values of `x` in row-major order: borrowed from a contiguous CPU tensor, copied
/// otherwise.
pub(crate) fn with_f32_values<R>(
    x: &Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?))
}

/// The gate and up projections' f32 copies packed together in AMX tiles (and then dropped), where
/// the CPU has AMX and neither has a bias; otherwise each keeps its own copy, packed alone.
fn gated_tiles(gate: &mut Linear, up: &mut Linear) -> Result<Option<AmxMatrix>, ModelError> {
    let unbiased = gate.bias.is_none() && up.bias.is_none();
    let gated = match (gate.f32_copy(), up.f32_copy()) {
        (Some(g), Some(u)) if unbiased && g.dims() == u.dims() => {
            let (rows, cols) = g.dims2()?;
            with_f32_values(g, |g| {
                with_f32_values(u, |u| AmxMatrix::gated_from_f32(g, u, rows, cols))
            })??
        }
        _ => None,
    };
    for linear in [gate, up] {
        if gated.is_some() {
            linear.dense = None;
        } else {
            linear.pack_tiles()?;
        }
    }
    Ok(gated)
}

/// Projections of the same input with f32 copies, stacked into one projection on AMX tiles
/// (their biases concatenated) whose prompt passes replace theirs, and their f32 copies
/// dropped, where the CPU has AMX, the widths match and all or none have a bias; otherwise
/// each is packed alone.
fn stacked_tiles(linears: &mut [&mut Linear]) -> Result<Option<Linear>, ModelError> {
    let mut parts = Vec::with_capacity(linears.len());
    for linear in linears.iter() {
        let Some(w) = linear.f32_copy() else { break };
        let (rows, cols) = w.dims2()?;
        parts.push((rows, cols, w.flatten_all()?.to_vec1::<f32>()?));
    }
    let with_bias = linears.iter().filter(|l| l.bias.is_some()).count();
    let cols = parts.first().map(|&(_, cols, _)| cols);
    let fits = parts.len() == linears.len()
        && parts.iter().all(|&(_, c, _)| Some(c) == cols)
        && (with_bias == 0 || with_bias == linears.len());
    let stacked = match cols {
        Some(cols) if fits => {
            let rows = parts.iter().map(|&(rows, _, _)| rows).sum();
            let values: Vec<f32> = parts.into_iter().flat_map(|(_, _, v)| v).collect();
            AmxMatrix::from_f32(&values, rows, cols)
        }
        _ => None,
    };
    let Some(matrix) = stacked else {
        for linear in linears.iter_mut() {
            linear.pack_tiles()?;
        }
        return Ok(None);
    };
    let biases: Vec<&Tensor> = linears.iter().filter_map(|l| l.bias.as_ref()).collect();
    let bias = if biases.is_empty() { None } else { Some(Tensor::cat(&biases, 0)?) };
    for linear in linears.iter_mut() {
        linear.dense = None;
    }
    Ok(Some(Linear { weight: None, dense: None, amx: Some(matrix), vnni: None, bias }))
}

/// The dimensions of `x` with the last replaced by `n`.
fn with_last_dim(x: &Tensor, n: usize) -> Vec<usize> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    dims
}

/// Rows from which a batched generation step ([`GgufDecoder::decode_batch_step`]) multiplies
/// by the bf16 AMX tiles of prompt passes instead of the quantized weights.
///
/// The VNNI kernel streams the quantized weights once per step but spends a few vector
/// instructions per 64 weights per row, so its step grows with the rows; the tiles read twice
/// the bytes and cost about the same for 1 to 32 rows. Per step, 64 steps after a 40-token
/// prompt (`MURAKKAB_BENCH_ONLY=steps RAYON_NUM_THREADS=2 cargo bench --profile dev --bench
/// models`, and with `MURAKKAB_AMX=0` for VNNI at every width), VNNI / tiles: qwen2.5-0.5b
/// 4 rows 34.9 / 40.5 ms, 6 rows 43.9 / 42.8, 8 rows 53.7 / 43.8, 16 rows 77.5 / 44.7, 32 rows
/// 203.8 / 49.9, 64 rows 357.5 / 77.9; smollm2-135m 8 rows 19.8 / 21.9, 12 rows 26.8 / 23.5,
/// 16 rows 37.6 / 25.7, 64 rows 152.3 / 59.6.
pub const WIDE_STEP_ROWS: usize = 8;

/// The kind of forward pass, which picks the weight copy in [`WeightMode::Both`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Prompt,
    Decode,
}

struct Linear {
    /// Candle's quantized weights: decode steps where the VNNI kernel does not run, and prompt
    /// passes without an f32 copy. Dropped where the kernel runs and either an f32 copy exists
    /// or candle's code for the format is scalar (one quantized copy is enough).
    weight: Option<QMatMul>,
    /// The f32 copy used for large passes in [`WeightMode::Both`].
    dense: Option<QMatMul>,
    /// The f32 copy in bf16 AMX tiles, which prompt passes use instead where the CPU has AMX
    /// (the f32 copy is then dropped).
    amx: Option<AmxMatrix>,
    /// The quantized weights repacked for the AVX-512 VNNI kernel, which decode steps use where
    /// it runs.
    vnni: Option<VnniMatrix>,
    bias: Option<Tensor>,
}

impl Linear {
    /// Repacks quantized weights for the decode kernel, except in [`WeightMode::BothAsStored`],
    /// and, with `tiles`, the f32 copy into AMX tiles where the CPU has AMX.
    fn new(
        weight: QMatMul,
        dense: Option<QMatMul>,
        bias: Option<Tensor>,
        mode: WeightMode,
        tiles: bool,
    ) -> Result<Self, ModelError> {
        let vnni = match &weight {
            QMatMul::QTensor(q) if mode != WeightMode::BothAsStored => VnniMatrix::from_qtensor(q)?,
            _ => None,
        };
        // candle's copy is kept only where it computes something the others do not: no kernel
        // copy, or no copy for prompt passes and a format candle multiplies with vector code.
        let scalar = matches!(&weight, QMatMul::QTensor(q) if SCALAR_FORMATS.contains(&q.dtype()));
        let weight = (vnni.is_none() || (dense.is_none() && !scalar)).then_some(weight);
        let mut linear = Self { weight, dense, amx: None, vnni, bias };
        if tiles {
            linear.pack_tiles()?;
        }
        Ok(linear)
    }

    /// The f32 copy, where there is one and the CPU has AMX to pack it for.
    fn f32_copy(&self) -> Option<&Tensor> {
        match &self.dense {
            Some(QMatMul::Tensor(w)) if crate::amx_gemm::available() => Some(w),
            _ => None,
        }
    }

    /// Packs the f32 copy into AMX tiles, which replace it, where the CPU has AMX.
    fn pack_tiles(&mut self) -> Result<(), ModelError> {
        if let Some(w) = self.f32_copy() {
            let (rows, cols) = w.dims2()?;
            self.amx = with_f32_values(w, |values| AmxMatrix::from_f32(values, rows, cols))?;
        }
        if self.amx.is_some() {
            self.dense = None;
        }
        Ok(())
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> candle_core::Result<Tensor> {
        let y = match (pass, &self.amx, &self.dense, &self.vnni, &self.weight) {
            (Pass::Prompt, Some(matrix), ..) => {
                let m = x.elem_count() / matrix.cols();
                let y = with_f32_values(x, |values| matrix.matmul(values, m))?;
                Tensor::from_vec(y, with_last_dim(x, matrix.rows()), x.device())?
            }
            (Pass::Prompt, _, Some(QMatMul::Tensor(w)), _, _)
                if swap_orientation(x.elem_count() / w.dim(1)?, w.dim(0)?, w.dim(1)?) =>
            {
                swapped_product(x, w)?
            }
            (Pass::Prompt, _, Some(dense), _, _) => dense.forward(x)?,
            (Pass::Decode, _, _, Some(matrix), _) | (_, _, _, Some(matrix), None) => {
                let m = x.elem_count() / matrix.cols();
                let flat = x.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(
                    matrix.matmul(&flat, m),
                    with_last_dim(x, matrix.rows()),
                    x.device(),
                )?
            }
            (_, _, _, _, Some(weight)) => weight.forward(x)?,
            _ => candle_core::bail!("a projection has no weights for this pass"),
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Bytes a decode step reads.
    fn decode_bytes(&self) -> u64 {
        if let Some(matrix) = &self.vnni {
            return matrix.bytes() as u64;
        }
        match &self.weight {
            Some(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Some(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                (t.elem_count() * t.dtype().size_in_bytes()) as u64
            }
            None => 0,
        }
    }
}

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    /// Gate and up projections packed together for AMX, whose prompt passes then compute the
    /// MLP's hidden activations in one product ([`AmxMatrix::silu_gated`]).
    gated: Option<AmxMatrix>,
    /// Query, key and value projections stacked for AMX (and their biases, if any): one product
    /// per prompt pass instead of three, over the same activations. Prompt passes only.
    qkv: Option<Linear>,
}

/// How a sequence of a branched pass ([`GgufDecoder::forward_branches`]) is laid out: a trunk
/// of `trunk` tokens, then branches of the given lengths one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchLayout {
    trunk: usize,
    branches: Vec<usize>,
}

impl BranchLayout {
    /// A trunk of `trunk` tokens followed by branches of `branches` tokens each.
    pub fn new(trunk: usize, branches: Vec<usize>) -> Self {
        Self { trunk, branches }
    }

    /// Tokens in all.
    pub fn len(&self) -> usize {
        self.trunk + self.branches.iter().sum::<usize>()
    }

    /// Whether the layout holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which part token `i` is in (0 for the trunk, `k + 1` for branch `k`) and its offset
    /// there.
    fn place(&self, i: usize) -> (usize, usize) {
        if i < self.trunk {
            return (0, i);
        }
        let mut offset = i - self.trunk;
        for (k, &len) in self.branches.iter().enumerate() {
            if offset < len {
                return (k + 1, offset);
            }
            offset -= len;
        }
        (self.branches.len() + 1, offset)
    }

    /// Token `i`'s distance from the sequence's first new token as the model sees it: its
    /// index in the trunk, or the trunk's length plus its offset in its branch.
    fn depth(&self, i: usize) -> usize {
        match self.place(i) {
            (0, at) => at,
            (_, offset) => self.trunk + offset,
        }
    }

    /// Whether token `i` attends to token `j` (`j ≤ i`): every trunk token, and the earlier
    /// tokens of its own branch.
    fn sees(&self, i: usize, j: usize) -> bool {
        let (from, _) = self.place(i);
        let (to, _) = self.place(j);
        j <= i && (to == 0 || to == from)
    }
}

/// A loaded decoder: weights only; all per-sequence state is in [`SeqCache`].
pub struct GgufDecoder {
    config: DecoderConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Linear,
    /// The output projection as an f32 `[vocab, dim]` matrix where one is held (the tied
    /// embedding, or the f32 copy of `output.weight`), for [`GgufDecoder::token_scores`].
    output_rows: Option<Tensor>,
    /// `output_rows` in bf16 AMX tiles, packed on the first [`GgufDecoder::token_log_probs`]
    /// (only labels of several tokens need the whole vocabulary's product at many positions,
    /// so a model that never scores them pays neither the packing nor the memory, which the
    /// runtime reserves beside the weights when it first scores such labels:
    /// [`GgufDecoder::output_tiles_bytes`]).
    output_tiles: OnceLock<Option<AmxMatrix>>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl std::fmt::Debug for GgufDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufDecoder").field("config", &self.config).finish()
    }
}

fn md<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, ModelError> {
    ct.metadata.get(key).ok_or_else(|| ModelError::Load {
        id: String::new(),
        detail: format!("the GGUF file has no {key}"),
    })
}

fn md_usize(ct: &Content, key: &str) -> Result<usize, ModelError> {
    let v = md(ct, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| ModelError::Load { id: String::new(), detail: format!("{key}: {e}") })
}

fn md_f32(ct: &Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

impl DecoderConfig {
    /// Reads the configuration of a `llama` or `qwen2` GGUF.
    pub fn from_gguf(ct: &Content) -> Result<Self, ModelError> {
        let architecture = md(ct, "general.architecture")?
            .to_string()
            .map_err(|e| ModelError::Load { id: String::new(), detail: e.to_string() })?
            .clone();
        let neox_rope = match architecture.as_str() {
            "llama" => false,
            "qwen2" => true,
            other => {
                return Err(ModelError::Load {
                    id: String::new(),
                    detail: format!(
                        "GGUF architecture '{other}' is not supported by the batched decoder; supported: llama, qwen2"
                    ),
                });
            }
        };
        let a = architecture.as_str();
        let n_head = md_usize(ct, &format!("{a}.attention.head_count"))?;
        let dim = md_usize(ct, &format!("{a}.embedding_length"))?;
        let head_dim =
            md_usize(ct, &format!("{a}.rope.dimension_count")).unwrap_or(dim / n_head.max(1));
        let vocab = md(ct, "tokenizer.ggml.tokens")
            .ok()
            .and_then(|v| v.to_vec().ok().map(|v| v.len()))
            .unwrap_or(0);
        let config = Self {
            n_layer: md_usize(ct, &format!("{a}.block_count"))?,
            n_head,
            n_kv_head: md_usize(ct, &format!("{a}.attention.head_count_kv")).unwrap_or(n_head),
            dim,
            head_dim,
            vocab,
            context_length: md_usize(ct, &format!("{a}.context_length")).unwrap_or(2048),
            rope_theta: md_f32(ct, &format!("{a}.rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: f64::from(
                md_f32(ct, &format!("{a}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            ),
            neox_rope,
            architecture,
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the forward pass cannot run (a malformed or hand-made file), so they fail
    /// at load with a message instead of a division by zero or a shape panic mid-query.
    fn validate(&self) -> Result<(), ModelError> {
        let problem = if self.n_head == 0 || self.n_kv_head == 0 || self.n_layer == 0 {
            Some("head, key/value head and block counts must be positive".to_string())
        } else if !self.n_head.is_multiple_of(self.n_kv_head) {
            Some(format!(
                "{} heads are not a multiple of {} key/value heads",
                self.n_head, self.n_kv_head
            ))
        } else if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            Some(format!("head width {} must be even and positive for RoPE", self.head_dim))
        } else if self.context_length == 0 {
            Some("the context length must be positive".to_string())
        } else {
            None
        };
        match problem {
            Some(detail) => Err(ModelError::Load { id: String::new(), detail }),
            None => Ok(()),
        }
    }
}

impl GgufDecoder {
    /// Loads the weights of a parsed GGUF.
    pub fn load<R: Read + Seek>(
        ct: &Content,
        reader: &mut R,
        device: &Device,
        mode: WeightMode,
    ) -> Result<Self, ModelError> {
        let config = DecoderConfig::from_gguf(ct)?;
        let tensor = |reader: &mut R, name: &str| -> Result<QTensor, ModelError> {
            ct.tensor(reader, name, device).map_err(|e| ModelError::Load {
                id: String::new(),
                detail: format!("tensor {name}: {e}"),
            })
        };
        // The quantized copy decode steps read: as stored where our kernel takes it (or for the
        // as-stored benchmark), otherwise in a format candle has vector code for (from the f32
        // copy where there is one, rather than dequantizing twice).
        let decode_copy = |q: QTensor, dense: Option<&Tensor>| -> Result<QMatMul, ModelError> {
            let keep = mode == WeightMode::BothAsStored || VnniMatrix::supports(&q);
            let q = if keep { q } else { vector_format(q, dense, device)? };
            Ok(QMatMul::from_qtensor(q)?)
        };
        let matmul = |q: QTensor| -> Result<(QMatMul, Option<QMatMul>), ModelError> {
            Ok(match mode {
                WeightMode::Quantized => (decode_copy(q, None)?, None),
                WeightMode::Dequantized => (QMatMul::Tensor(q.dequantize(device)?), None),
                WeightMode::Both | WeightMode::BothAsStored => {
                    let dense = q.dequantize(device)?;
                    (decode_copy(q, Some(&dense))?, Some(QMatMul::Tensor(dense)))
                }
            })
        };
        let embed_q = tensor(reader, "token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let output_rows;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            let (q, dense) = matmul(tensor(reader, "output.weight")?)?;
            output_rows = match &dense {
                Some(QMatMul::Tensor(t)) => Some(t.clone()),
                _ => None,
            };
            Linear::new(q, dense, None, mode, false)?
        } else {
            output_rows = Some(embed.clone());
            // Tied embeddings (SmolLM2): the output projection is the embedding matrix, whose
            // f32 copy is shared rather than dequantized a second time.
            let (weight, dense) = match mode {
                WeightMode::Quantized => (decode_copy(embed_q, None)?, None),
                WeightMode::Dequantized => (QMatMul::Tensor(embed.clone()), None),
                WeightMode::Both | WeightMode::BothAsStored => {
                    (decode_copy(embed_q, Some(&embed))?, Some(QMatMul::Tensor(embed.clone())))
                }
            };
            Linear::new(weight, dense, None, mode, false)?
        };
        let norm = tensor(reader, "output_norm.weight")?.dequantize(device)?;
        // Every block's tensors are read first (the reader is sequential), then the blocks are
        // converted in parallel: dequantizing, re-quantizing and packing tiles are CPU work
        // (Qwen-0.5B, 2 cores: a cold one-row `murakkab -f` query 4.85 -> 3.47 s, medians of 3).
        let mut raw_blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut raw = HashMap::new();
            for name in BLOCK_TENSORS {
                let full = format!("blk.{i}.{name}");
                if ct.tensor_infos.contains_key(&full) || !name.ends_with(".bias") {
                    raw.insert(name, tensor(reader, &full)?);
                }
            }
            raw_blocks.push(raw);
        }
        let blocks = raw_blocks
            .into_par_iter()
            .map(|mut raw| -> Result<Block, ModelError> {
                let mut take = |name: &str| {
                    raw.remove(name).ok_or_else(|| ModelError::Load {
                        id: String::new(),
                        detail: format!("tensor {name} missing"),
                    })
                };
                let mut linear = |name: &str, tiles: bool| -> Result<Linear, ModelError> {
                    let (weight, dense) = matmul(take(&format!("{name}.weight"))?)?;
                    let bias = take(&format!("{name}.bias")).ok().map(|b| b.dequantize(device));
                    Linear::new(weight, dense, bias.transpose()?, mode, tiles)
                };
                // Gate and up keep their f32 copies until they are packed together.
                let mut w_gate = linear("ffn_gate", false)?;
                let mut w_up = linear("ffn_up", false)?;
                let gated = gated_tiles(&mut w_gate, &mut w_up)?;
                let mut wq = linear("attn_q", false)?;
                let mut wk = linear("attn_k", false)?;
                let mut wv = linear("attn_v", false)?;
                let qkv = stacked_tiles(&mut [&mut wq, &mut wk, &mut wv])?;
                let wo = linear("attn_output", true)?;
                let w_down = linear("ffn_down", true)?;
                Ok(Block {
                    attn_norm: take("attn_norm.weight")?.dequantize(device)?,
                    wq,
                    wk,
                    wv,
                    qkv,
                    wo,
                    ffn_norm: take("ffn_norm.weight")?.dequantize(device)?,
                    w_gate,
                    w_up,
                    w_down,
                    gated,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (cos, sin) =
            rope_tables(config.head_dim, config.rope_theta, config.context_length, device)?;
        let config = DecoderConfig { vocab: embed.dim(0)?, ..config };
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            output,
            output_rows,
            output_tiles: OnceLock::new(),
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Bytes of weights one decode step reads: every projection's decode copy (after any
    /// re-quantization) and the output layer; the embedding row and norms are negligible.
    pub fn decode_weight_bytes(&self) -> u64 {
        let bytes = Linear::decode_bytes;
        let blocks: u64 = self
            .blocks
            .iter()
            .flat_map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down])
            .map(bytes)
            .sum();
        blocks + bytes(&self.output)
    }

    /// An empty cache, the starting point of every sequence.
    pub fn empty_cache(&self) -> Result<SeqCache, ModelError> {
        let empty = Tensor::zeros(
            (self.config.n_kv_head, 0, self.config.head_dim),
            DType::F32,
            &self.device,
        )?;
        Ok(SeqCache { layers: vec![(empty.clone(), empty); self.config.n_layer], len: 0 })
    }

    /// Runs `tokens[b]` after `caches[b]` for every sequence `b` in one pass.
    ///
    /// Returns the final-norm hidden state of each sequence's last new token (`[B, dim]`) and the
    /// extended caches. Sequences may differ in length and in cached length; each must add at
    /// least one token. With `all_positions`, also returns every new position's hidden state
    /// (`[B, T, dim]`, padded positions unspecified).
    pub fn forward(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
        all_positions: bool,
    ) -> Result<(Tensor, Option<Tensor>, Vec<SeqCache>), ModelError> {
        self.pass(tokens, caches, all_positions, true, Pass::Prompt)
    }

    /// [`Self::forward`] without the extended caches: for tokens no later pass continues from
    /// (label scoring), where building them copied every sequence's whole cache per layer.
    pub fn forward_uncached(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
        all_positions: bool,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let (last, all, _) = self.pass(tokens, caches, all_positions, false, Pass::Prompt)?;
        Ok((last, all))
    }

    /// Runs each sequence as a trunk and branches in one pass, after `caches[b]`: `tokens[b]` is
    /// laid out as `layouts[b]` says (its trunk, then each branch), and each branch sees the
    /// trunk and its own earlier tokens only, at the positions after the trunk, as if it ran
    /// alone after it. Returns every new position's final-norm hidden state (`[B, T, dim]` in
    /// that layout, padded positions unspecified); no caches are kept.
    ///
    /// What scoring several continuations of each row needs (a statement and its negation):
    /// one pass instead of the row's and then one per continuation, each reading every weight
    /// again for a few tokens.
    pub fn forward_branches(
        &self,
        tokens: &[&[u32]],
        layouts: &[BranchLayout],
        caches: &[&SeqCache],
    ) -> Result<Tensor, ModelError> {
        let fits = layouts.len() == tokens.len()
            && tokens.iter().zip(layouts).all(|(t, l)| t.len() == l.len());
        if !fits {
            return Err(ModelError::Unsupported {
                id: self.config.architecture.clone(),
                reason: "a branched pass needs one layout per sequence, as long as it".into(),
            });
        }
        let tree = Some(layouts);
        let (_, all, _) = self.device.with_context(|| {
            self.pass_in_pool(tokens, caches, (true, false), Pass::Prompt, tree)
        })?;
        all.ok_or_else(|| ModelError::Unsupported {
            id: self.config.architecture.clone(),
            reason: "a branched pass returned no hidden states".into(),
        })
    }

    /// One generation step: one new token per sequence. Same contract as [`Self::forward`]; in
    /// [`WeightMode::Both`] it reads the quantized weights.
    pub fn decode_step(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
    ) -> Result<(Tensor, Vec<SeqCache>), ModelError> {
        let (last, _, caches) = self.pass(tokens, caches, false, true, Pass::Decode)?;
        Ok((last, caches))
    }

    fn pass(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
        all_positions: bool,
        keep_caches: bool,
        pass: Pass,
    ) -> Result<(Tensor, Option<Tensor>, Vec<SeqCache>), ModelError> {
        // Inside candle's own thread pool, whose workers stay warm across the many short
        // parallel sections of a pass: label scoring over 64 UCI rows took 3.9 s instead of
        // 6.3 s on 2 cores (1.6 cores busy instead of 1.0) in the global rayon pool.
        self.device.with_context(|| {
            self.pass_in_pool(tokens, caches, (all_positions, keep_caches), pass, None)
        })
    }

    /// `(all_positions, keep_caches)`: whether to return every position's hidden state, and
    /// the extended caches. `tree`: each sequence's trunk and branches (see
    /// [`Self::forward_branches`]), or `None` for plain causal sequences.
    fn pass_in_pool(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
        (all_positions, keep_caches): (bool, bool),
        pass: Pass,
        tree: Option<&[BranchLayout]>,
    ) -> Result<(Tensor, Option<Tensor>, Vec<SeqCache>), ModelError> {
        let b = tokens.len();
        if b == 0 || caches.len() != b || tokens.iter().any(|t| t.is_empty()) {
            return Err(ModelError::Unsupported {
                id: self.config.architecture.clone(),
                reason: "forward needs one cache per sequence and at least one token each".into(),
            });
        }
        let c = &self.config;
        let t = tokens.iter().map(|s| s.len()).max().unwrap_or(1);
        let p = caches.iter().map(|s| s.len).max().unwrap_or(0);
        self.check_context(p + t)?;
        // Each padded step's absolute position (the padding repeats its sequence's last).
        let mut positions = Vec::with_capacity(b * t);
        for (s, (seq, cache)) in tokens.iter().zip(caches).enumerate() {
            for i in 0..t {
                let at = i.min(seq.len() - 1);
                let depth = tree.map_or(at, |layouts| layouts[s].depth(at));
                positions.push((cache.len + depth) as u32);
            }
        }
        let mask = self.mask(tokens, caches, (t, p), c.n_head / c.n_kv_head, tree)?;
        let mut new_caches: Vec<Vec<(Tensor, Tensor)>> = vec![Vec::with_capacity(c.n_layer); b];
        let kv = |layer: usize, k: &Tensor, v: &Tensor| {
            // Past keys/values, each sequence's padded to the longest past.
            let (past_k, past_v) = stack_padded(caches, layer, p)?;
            let keys = Tensor::cat(&[&past_k, k], 2)?;
            let values = Tensor::cat(&[&past_v, v], 2)?;
            if b == 1 && keep_caches {
                // One sequence: the concatenation above is exactly its new cache.
                new_caches[0].push((keys.squeeze(0)?, values.squeeze(0)?));
            } else if keep_caches {
                for (s, (seq, cache)) in tokens.iter().zip(caches).enumerate() {
                    let (ck, cv) = &cache.layers[layer];
                    let nk = k.i(s)?.narrow(1, 0, seq.len())?;
                    let nv = v.i(s)?.narrow(1, 0, seq.len())?;
                    new_caches[s].push((Tensor::cat(&[ck, &nk], 1)?, Tensor::cat(&[cv, &nv], 1)?));
                }
            }
            Ok((keys, values))
        };
        let (last, all) = if matches!(pass, Pass::Prompt) && self.packs_prompts() {
            let shape = (t, all_positions);
            self.layers_packed(tokens, &positions, shape, mask.as_ref(), kv)?
        } else {
            // Right-padded token ids.
            let ids: Vec<u32> = tokens
                .iter()
                .flat_map(|seq| (0..t).map(|i| seq.get(i).copied().unwrap_or(0)))
                .collect();
            let x = self.layers(ids, positions, (b, t), mask.as_ref(), pass, kv)?;
            let last_index: Vec<u32> =
                tokens.iter().enumerate().map(|(s, seq)| (s * t + seq.len() - 1) as u32).collect();
            let last = x
                .reshape((b * t, c.dim))?
                .index_select(&Tensor::new(last_index.as_slice(), &self.device)?, 0)?;
            (last, all_positions.then_some(x))
        };
        if !keep_caches {
            return Ok((last, all, Vec::new()));
        }
        let caches = new_caches
            .into_iter()
            .zip(tokens.iter().zip(caches))
            .map(|(layers, (seq, old))| SeqCache { layers, len: old.len + seq.len() })
            .collect();
        Ok((last, all, caches))
    }

    /// The batch cache of rows about to be generated from `caches`, with room for `expected`
    /// tokens each (it grows past that).
    pub fn batch_cache(
        &self,
        caches: &[&SeqCache],
        expected: usize,
    ) -> Result<BatchCache, ModelError> {
        BatchCache::from_seqs(caches, expected.min(self.config.context_length))
    }

    /// One generation step of every row of `cache`: `tokens[s]` is row `s`'s next token.
    /// Returns the final-norm hidden states (`[B, dim]`) and stores the step in `cache` in place.
    /// The same computation as [`Self::decode_step`] on each row's [`SeqCache`], up to float
    /// summation order (the batch attends over padded slots, masked out) and, from
    /// [`WIDE_STEP_ROWS`] rows, the weights' rounding (the bf16 tiles instead of 8-bit blocks).
    pub fn decode_batch_step(
        &self,
        tokens: &[u32],
        cache: &mut BatchCache,
    ) -> Result<Tensor, ModelError> {
        self.device.with_context(|| {
            let b = tokens.len();
            if b == 0 || b != cache.rows() {
                return Err(ModelError::Unsupported {
                    id: self.config.architecture.clone(),
                    reason: format!("a batch step needs one token per row ({} rows)", cache.rows()),
                });
            }
            self.check_context(cache.next_width())?;
            let positions = (0..b).map(|s| cache.next_position(s) as u32).collect();
            let mask = cache.next_mask(self.config.n_head / self.config.n_kv_head, &self.device)?;
            cache.reserve_step()?;
            let pass =
                if b >= WIDE_STEP_ROWS && self.has_tiles() { Pass::Prompt } else { Pass::Decode };
            let x = self.layers(
                tokens.to_vec(),
                positions,
                (b, 1),
                mask.as_ref(),
                pass,
                |layer, k, v| cache.store(layer, k, v),
            )?;
            cache.finish_step();
            Ok(x.reshape((b, self.config.dim))?)
        })
    }

    /// Whether the blocks' projections are packed in AMX tiles (this CPU has AMX and the weights
    /// are held in [`WeightMode::Both`]).
    fn has_tiles(&self) -> bool {
        self.blocks.first().is_some_and(|block| block.wo.amx.is_some())
    }

    fn check_context(&self, tokens: usize) -> Result<(), ModelError> {
        if tokens > self.config.context_length {
            return Err(ModelError::Unsupported {
                id: self.config.architecture.clone(),
                reason: format!(
                    "{tokens} tokens exceed the context of {}",
                    self.config.context_length
                ),
            });
        }
        Ok(())
    }

    /// The transformer blocks and the final norm over right-padded token ids (`[B, T]`) at
    /// `positions`; `kv(layer, k, v)` stores the new keys and values (`[B, n_kv_head, T,
    /// head_dim]`, after RoPE) wherever the caller keeps them and returns the keys and values to
    /// attend to, which `mask` (`[B, 1, group * T, width]`) fits. Returns `[B, T, dim]`.
    fn layers(
        &self,
        ids: Vec<u32>,
        positions: Vec<u32>,
        (b, t): (usize, usize),
        mask: Option<&Tensor>,
        pass: Pass,
        mut kv: impl FnMut(usize, &Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        // The candle path's angles per token; the fused path reads the tables at `positions`.
        let at = Tensor::from_slice(&positions, b * t, &self.device)?;
        let cos = self.cos.index_select(&at, 0)?.reshape((b, t, c.head_dim / 2))?;
        let sin = self.sin.index_select(&at, 0)?.reshape((b, t, c.head_dim / 2))?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, c.dim))?;
        let eps = c.rms_eps as f32;
        for (layer, block) in self.blocks.iter().enumerate() {
            let residual = x.clone();
            // Projections `[B, T, n · head_dim]` to `[B, n, T, head_dim]`.
            let heads = |y: Tensor, n: usize| -> candle_core::Result<Tensor> {
                y.reshape((b, t, n, c.head_dim))?.transpose(1, 2)?.contiguous()
            };
            let (q, k, v) = match (pass, &block.qkv) {
                (Pass::Prompt, Some(qkv)) => {
                    let rows = Rows::Padded;
                    with_f32_values(&x, |x| {
                        with_f32_values(&block.attn_norm, |w| {
                            self.rotated_heads(qkv, (x, w), &positions, (b, t, rows))
                        })
                    })???
                }
                _ => {
                    let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
                    let q = heads(block.wq.forward(&h, pass)?, c.n_head)?;
                    let k = heads(block.wk.forward(&h, pass)?, c.n_kv_head)?;
                    let v = heads(block.wv.forward(&h, pass)?, c.n_kv_head)?;
                    let (q, k) = if c.neox_rope {
                        (
                            candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                            candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                        )
                    } else {
                        (
                            candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                            candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                        )
                    };
                    (q, k, v)
                }
            };
            let (keys, values) = kv(layer, &k, &v)?;
            // Grouped-query attention without copying keys: the `group` query heads that share a
            // key/value head are stacked along the time axis, so one matmul serves them all.
            let group = c.n_head / c.n_kv_head;
            let q = q.reshape((b, c.n_kv_head, group * t, c.head_dim))?;
            let attn = attention(&q, &keys, &values, mask, c.head_dim, group)?
                .reshape((b, c.n_head, t, c.head_dim))?
                .transpose(1, 2)?
                .reshape((b, t, c.n_head * c.head_dim))?;
            x = (residual + block.wo.forward(&attn, pass)?)?;
            x = match (pass, &block.gated, &block.w_down.amx, &block.w_down.bias) {
                (Pass::Prompt, Some(gated), Some(down), None) => {
                    let y = with_f32_values(&x, |x| {
                        with_f32_values(&block.ffn_norm, |w| {
                            gated_mlp_with_residual(x, (w, eps), (gated, down), (b * t, c.dim))
                        })
                    })??;
                    Tensor::from_vec(y, (b, t, c.dim), &self.device)?
                }
                _ => {
                    let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
                    let gate = candle_nn::ops::silu(&block.w_gate.forward(&h, pass)?)?;
                    let mlp =
                        block.w_down.forward(&(gate * block.w_up.forward(&h, pass)?)?, pass)?;
                    (x + mlp)?
                }
            };
        }
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Whether prompt passes keep their tokens packed, without their padding, through every
    /// product ([`Self::layers_packed`]): each block's stacked query/key/value projection, output
    /// projection and MLP are on AMX tiles, the output and down projections without a bias.
    fn packs_prompts(&self) -> bool {
        #[cfg(test)]
        if tests::PADDED_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.blocks.iter().all(|b| {
            b.qkv.as_ref().is_some_and(|qkv| qkv.amx.is_some())
                && b.wo.amx.is_some()
                && b.wo.bias.is_none()
                && b.gated.is_some()
                && b.w_down.amx.is_some()
                && b.w_down.bias.is_none()
        })
    }

    /// [`Self::layers`] for a prompt pass whose tokens stay packed, without their padding,
    /// through every product ([`Self::packs_prompts`]): only attention sees the padded `[B, T]`
    /// layout (queries, keys and values zero at the padding, which no real token attends to).
    /// Each token's row goes through the same arithmetic as on the padded path, so its values
    /// are the same bit for bit; a batch's padding (6–10% of the tokens of a batched label
    /// query) costs no product.
    ///
    /// Returns the final-norm hidden state of each sequence's last token (`[B, dim]`) and, with
    /// `all_positions`, of every position (`[B, T, dim]`, zero at the padding).
    fn layers_packed(
        &self,
        tokens: &[&[u32]],
        positions: &[u32],
        (t, all_positions): (usize, bool),
        mask: Option<&Tensor>,
        mut kv: impl FnMut(usize, &Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor)>,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let c = &self.config;
        let b = tokens.len();
        let lens: Vec<usize> = tokens.iter().map(|s| s.len()).collect();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |next, &len| {
                let start = *next;
                *next += len;
                Some(start)
            })
            .collect();
        let n: usize = lens.iter().sum();
        let rows = Rows::Packed { starts: &starts, lens: &lens };
        let ids: Vec<u32> = tokens.iter().flat_map(|s| s.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.flatten_all()?.to_vec1::<f32>()?;
        let eps = c.rms_eps as f32;
        let group = c.n_head / c.n_kv_head;
        for (layer, block) in self.blocks.iter().enumerate() {
            let (Some(qkv), Some(wo), Some(gated), Some(down)) =
                (&block.qkv, &block.wo.amx, &block.gated, &block.w_down.amx)
            else {
                return Err(ModelError::Unsupported {
                    id: c.architecture.clone(),
                    reason: "a packed prompt pass needs every product on AMX tiles".into(),
                });
            };
            let (q, k, v) = with_f32_values(&block.attn_norm, |w| {
                self.rotated_heads(qkv, (&x, w), positions, (b, t, rows))
            })??;
            let (keys, values) = kv(layer, &k, &v)?;
            let q = q.reshape((b, c.n_kv_head, group * t, c.head_dim))?;
            // `[B, n_kv_head, group · T, head_dim]` is `[B, n_head, T, head_dim]` in memory.
            let attn = attention(&q, &keys, &values, mask, c.head_dim, group)?;
            let attn = with_f32_values(&attn, |a| {
                real_rows_of_heads(a, (b, t, c.n_head, c.head_dim), &starts, &lens)
            })?;
            // The residual plus the output projection, as candle adds them.
            let mut h = wo.matmul(&attn, n);
            for (h, &r) in h.iter_mut().zip(&x) {
                *h += r;
            }
            x = with_f32_values(&block.ffn_norm, |w| {
                gated_mlp_with_residual(&h, (w, eps), (gated, down), (n, c.dim))
            })?;
        }
        let x = Tensor::from_vec(x, (n, c.dim), &self.device)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        let last: Vec<u32> = (0..b).map(|s| (starts[s] + lens[s] - 1) as u32).collect();
        let last = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        if !all_positions {
            return Ok((last, None));
        }
        // Every padded step's row, the padding's a zero row after the packed ones.
        let zero = Tensor::zeros((1, c.dim), DType::F32, &self.device)?;
        let with_zero = Tensor::cat(&[&x, &zero], 0)?;
        let slots: Vec<u32> = (0..b)
            .flat_map(|s| {
                let (start, len) = (starts[s], lens[s]);
                (0..t).map(move |i| if i < len { (start + i) as u32 } else { n as u32 })
            })
            .collect();
        let all = with_zero.index_select(&Tensor::new(slots.as_slice(), &self.device)?, 0)?;
        Ok((last, Some(all.reshape((b, t, c.dim))?)))
    }

    /// A prompt pass's queries `[B, n_head, T, head_dim]`, keys and values `[B, n_kv_head, T,
    /// head_dim]` from the block's input `x` (its tokens' rows as `rows` says: `[B, T, dim]`
    /// padded, or packed), normalised by `norm` straight into the tiles of the stacked
    /// projection on AMX: the product, then its bias, the head-major layout and RoPE at
    /// `positions` (one per padded step) in one pass ([`crate::qkv_heads`]), the same values as
    /// the separate candle steps.
    fn rotated_heads(
        &self,
        qkv: &Linear,
        (x, norm): (&[f32], &[f32]),
        positions: &[u32],
        (b, t, rows): (usize, usize, Rows<'_>),
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let Some(matrix) = &qkv.amx else {
            candle_core::bail!("the stacked query/key/value projection has no tiles")
        };
        let eps = c.rms_eps as f32;
        let acts = TiledActivations::from_rms_normed(x, norm, eps, x.len() / c.dim, c.dim);
        let y = matrix.matmul_tiled(&acts);
        let bias = qkv.bias.as_ref().map(|bias| bias.to_vec1::<f32>()).transpose()?;
        let layout = HeadLayout {
            heads: c.n_head,
            kv_heads: c.n_kv_head,
            head_dim: c.head_dim,
            neox: c.neox_rope,
        };
        let Heads { q, k, v } = with_f32_values(&self.cos, |cos| {
            with_f32_values(&self.sin, |sin| {
                heads_with_rope(&y, bias.as_deref(), (cos, sin), positions, (b, t, rows), layout)
            })
        })??;
        let shaped = |values: Vec<f32>, n: usize| {
            Tensor::from_vec(values, (b, n, t, c.head_dim), &self.device)
        };
        Ok((shaped(q, c.n_head)?, shaped(k, c.n_kv_head)?, shaped(v, c.n_kv_head)?))
    }

    /// Next-token log-probabilities from hidden states `[N, dim]`: `[N, vocab]`.
    pub fn log_probs(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        self.device.with_context(|| {
            let logits = self.output.forward(hidden, Pass::Prompt)?;
            Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
        })
    }

    /// `log p(tokens[i])` after each hidden state `hidden[i]` (`[N, dim]`, `N = tokens.len()`).
    ///
    /// What scoring a label's later tokens needs: a token's logit and the log-sum-exp over the
    /// vocabulary, without writing the other log-probabilities. Where the blocks run on AMX
    /// tiles ([`WeightMode::Both`]), so does this product: a 16-row chunk of filter statements
    /// scores 80 positions, and with candle's f32 product and log-softmax over qwen2.5-0.5b's
    /// 151,936 tokens that took as long as the chunk's whole prompt pass (300 ms against 330).
    pub fn token_log_probs(&self, hidden: &Tensor, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let vocab = self.config.vocab;
        let (n, _) = hidden.dims2()?;
        if n != tokens.len() || tokens.iter().any(|&t| t as usize >= vocab) {
            return Err(ModelError::Unsupported {
                id: self.config.architecture.clone(),
                reason: format!(
                    "token log-probabilities need one token below the vocabulary of {vocab} \
                     per hidden state ({n} hidden states, {} tokens)",
                    tokens.len()
                ),
            });
        }
        let Some(tiles) = self.output_tiles() else {
            let all = self.log_probs(hidden)?.to_vec2::<f32>()?;
            return Ok(all.iter().zip(tokens).map(|(row, &t)| row[t as usize]).collect());
        };
        self.device.with_context(|| {
            let logits = with_f32_values(hidden, |h| tiles.matmul(h, n))?;
            Ok(logits
                .par_chunks(vocab)
                .zip(tokens)
                .map(|(row, &t)| row[t as usize] - log_sum_exp(row))
                .collect())
        })
    }

    /// Bytes the first [`Self::token_log_probs`] adds where it packs the output matrix into
    /// tiles (bf16, rows and columns padded to 32), else 0: for the session's memory account.
    pub fn output_tiles_bytes(&self) -> usize {
        match (&self.output_rows, self.has_tiles()) {
            (Some(rows), true) => {
                rows.dims().iter().map(|d| d.next_multiple_of(32)).product::<usize>() * 2
            }
            _ => 0,
        }
    }

    /// The output matrix in AMX tiles, packed on first use; `None` unless the blocks are in
    /// tiles and an f32 copy of the output matrix is held.
    fn output_tiles(&self) -> Option<&AmxMatrix> {
        if !self.has_tiles() {
            return None;
        }
        self.output_tiles
            .get_or_init(|| {
                let rows = self.output_rows.as_ref()?;
                let (vocab, dim) = rows.dims2().ok()?;
                with_f32_values(rows, |w| AmxMatrix::from_f32(w, vocab, dim)).ok().flatten()
            })
            .as_ref()
    }

    /// Next-token scores of `tokens` only, from hidden states `[N, dim]`: `[N, tokens.len()]`,
    /// each the token's log-probability plus its row's log-sum-exp over the vocabulary.
    ///
    /// A choice between a few tokens (a softmax over them) does not need that per-row constant,
    /// and leaving it out skips the product with the whole vocabulary: for a 16-row chunk of
    /// qwen2.5-0.5b that product made GEMM pack the 545 MB f32 output matrix to score 5 labels.
    /// Each score is one row's dot product with one token's output row, so a row's scores do
    /// not depend on the rows batched with it.
    pub fn token_scores(&self, hidden: &Tensor, tokens: &[u32]) -> Result<Tensor, ModelError> {
        let ids = Tensor::new(tokens, &self.device)?;
        match &self.output_rows {
            Some(rows) => self.device.with_context(|| {
                let rows = rows.index_select(&ids, 0)?;
                Ok(hidden.matmul(&rows.t()?)?)
            }),
            // Quantized-only weights without a tied embedding: the full product, then the columns.
            None => Ok(self.log_probs(hidden)?.index_select(&ids, 1)?),
        }
    }

    /// Next-token logits from hidden states `[N, dim]`: `[N, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        self.device.with_context(|| Ok(self.output.forward(hidden, Pass::Decode)?))
    }

    /// Additive attention mask `[B, 1, group * T, P + T]` (rows repeated for each query head of a
    /// group): a new token sees its sequence's cached tokens and its own earlier new tokens, never
    /// padding. `None` when nothing is masked (one new token per sequence, no padding).
    fn mask(
        &self,
        tokens: &[&[u32]],
        caches: &[&SeqCache],
        (t, p): (usize, usize),
        group: usize,
        tree: Option<&[BranchLayout]>,
    ) -> Result<Option<Tensor>, ModelError> {
        if t == 1 && caches.iter().all(|c| c.len == p) {
            return Ok(None);
        }
        let width = p + t;
        let rows = group * t;
        let mut m = vec![f32::NEG_INFINITY; tokens.len() * rows * width];
        for (s, (seq, cache)) in tokens.iter().zip(caches).enumerate() {
            for g in 0..group {
                for i in 0..t {
                    let start = ((s * group + g) * t + i) * width;
                    let row = &mut m[start..start + width];
                    row[..cache.len].fill(0.0);
                    let visible = i.min(seq.len() - 1);
                    match tree {
                        None => row[p..=p + visible].fill(0.0),
                        Some(layouts) => {
                            let layout = &layouts[s];
                            for j in 0..=visible {
                                if layout.sees(visible, j) {
                                    row[p + j] = 0.0;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (tokens.len(), 1, rows, width), &self.device)?))
    }
}

/// A block's MLP on AMX with its residual, `[m, dim]` rows in and out: `x`'s rows
/// RMS-normalised (`norm`: weight and epsilon) straight into the tiles, gate and up in one
/// product with the SiLU gating, the down projection, then `x` added into its output. The same
/// values as candle's norm, products, SiLU and residual add, bit for bit.
fn gated_mlp_with_residual(
    x: &[f32],
    (weight, eps): (&[f32], f32),
    (gated, down): (&AmxMatrix, &AmxMatrix),
    (m, dim): (usize, usize),
) -> Vec<f32> {
    let acts = TiledActivations::from_rms_normed(x, weight, eps, m, dim);
    let mut y = down.matmul_tiled(&gated.silu_gated(&acts));
    for (y, &r) in y.iter_mut().zip(x) {
        *y += r;
    }
    y
}

/// The attention output's rows of real tokens, packed (`[Σ lens, heads · head_dim]`, each row
/// its heads side by side, as the padded path's transpose lays them out), from `attn` (`[B,
/// heads, T, head_dim]`): sequence `s`'s first `lens[s]` steps, from packed row `starts[s]`.
fn real_rows_of_heads(
    attn: &[f32],
    (b, t, heads, head_dim): (usize, usize, usize, usize),
    starts: &[usize],
    lens: &[usize],
) -> Vec<f32> {
    let width = heads * head_dim;
    let n: usize = lens.iter().sum();
    let mut out = vec![0.0f32; n * width];
    let row_of: Vec<(usize, usize)> = lens
        .iter()
        .take(b)
        .enumerate()
        .flat_map(|(s, &len)| (0..len).map(move |i| (s, i)))
        .collect();
    debug_assert!(starts.iter().zip(lens).all(|(&start, &len)| start + len <= n));
    out.par_chunks_mut(width).zip(row_of).for_each(|(row, (s, i))| {
        for (h, dst) in row.chunks_exact_mut(head_dim).enumerate() {
            let at = ((s * heads + h) * t + i) * head_dim;
            dst.copy_from_slice(&attn[at..at + head_dim]);
        }
    });
    out
}

/// Most attention scores (`f32`s) one block of query rows materialises: 4 MB. A long prompt's
/// whole score matrix is `B × n_kv_head × group·T × width` (qwen2.5-0.5b, six 1,000-token
/// prompts: 336 MB per layer, three such temporaries with the mask and the softmax), and
/// allocations that size are fresh pages from the kernel every time: half the time of a
/// batched long-prompt prefill went to page faults. Blocks this size are reused by the
/// allocator and stay in cache.
const SCORE_BLOCK: usize = 1 << 20;

/// New tokens per block of a long prompt's causal attention: a block's queries see the keys up
/// to its last position, none after, so a prompt cut into `n` blocks computes about
/// `(n + 1) / 2n` of the full score matrix.
const CAUSAL_BLOCK: usize = 128;

/// `softmax(q·kᵀ/√d + mask)·v` for `q` `[B, H, group·T, d]` (the `group` query heads sharing a
/// key head stacked along the rows, each `T` new tokens), keys and values `[B, H, W, d]` whose
/// last `T` positions are the new tokens', and `mask` `[B, 1, group·T, W]` (0 or −∞, the same
/// for every query head of a group).
///
/// A prompt of at least two [`CAUSAL_BLOCK`]s goes by blocks of positions (fewer when a block
/// would pass [`SCORE_BLOCK`] scores), each against the keys up to its last position: the keys
/// after it are masked for all of its rows, so leaving them out changes nothing but the work.
/// Its queries are restacked position by position (a position's `group` heads together), so one
/// product serves a block's heads. Shorter inputs (label rows, decode steps) go in blocks of
/// rows of at most [`SCORE_BLOCK`] scores against every key; each row's scores are
/// independent, so blocks give the same rows.
fn attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    head_dim: usize,
    group: usize,
) -> candle_core::Result<Tensor> {
    let (b, h, rows, d) = q.dims4()?;
    let width = keys.dim(2)?;
    let t = rows / group.max(1);
    let scale = 1.0 / (head_dim as f32).sqrt();
    if t == 1 && rows == group && width >= DECODE_KERNEL_KEYS {
        // One new token per sequence: read the cache in place (see `decode_attention`).
        if let Some(out) = crate::decode_attention::decode_attention(q, keys, values, mask, scale)?
        {
            return Ok(out);
        }
    }
    // Rows `q` (`[B, H, len, d]`) against the first `w` keys, under `mask` (`[B, 1, len / share,
    // w]`, a row for each `share` rows of `q`).
    let block = |q: &Tensor, mask: Option<Tensor>, share: usize, w: usize| {
        let len = q.dim(2)?;
        // A narrow over every key is the tensor itself (candle returns a clone).
        let scores = q.matmul(&keys.narrow(2, 0, w)?.t()?)?;
        let mask = mask.map(|m| m.contiguous()).transpose()?;
        let shape = (h, len, w);
        let probs = with_f32_values(&scores, |s| match &mask {
            Some(m) => {
                with_f32_values(m, |m| additive_masked_softmax(s, Some(m), shape, share, scale))
            }
            None => Ok(additive_masked_softmax(s, None, shape, share, scale)),
        })??;
        Tensor::from_vec(probs, (b, h, len, w), q.device())?.matmul(&values.narrow(2, 0, w)?)
    };
    let per_block = (SCORE_BLOCK / (b * h * width).max(1)).max(1);
    let step = CAUSAL_BLOCK.min(per_block / group.max(1)).max(1);
    if let (true, Some(mask)) = (t >= 2 * CAUSAL_BLOCK && width >= t && rows == group * t, mask) {
        let past = width - t;
        // `[B, H, T·group, d]`: position `i`'s heads at rows `i·group..(i + 1)·group`; the mask's
        // first `T` rows (the first head's) serve every head.
        let by_position = q
            .reshape((b, h, group, t, d))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b, h, rows, d))?;
        let mut out = Vec::with_capacity(t.div_ceil(step));
        for start in (0..t).step_by(step) {
            let len = step.min(t - start);
            let w = past + start + len;
            let q = by_position.narrow(2, start * group, len * group)?.contiguous()?;
            let mask = mask.narrow(2, start, len)?.narrow(3, 0, w)?;
            out.push(block(&q, Some(mask), group, w)?);
        }
        return Tensor::cat(&out, 2)?
            .reshape((b, h, t, group, d))?
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b, h, rows, d));
    }
    if per_block >= rows {
        return block(q, mask.cloned(), 1, width);
    }
    let mut out = Vec::with_capacity(rows.div_ceil(per_block));
    for start in (0..rows).step_by(per_block) {
        let len = per_block.min(rows - start);
        let q = q.narrow(2, start, len)?.contiguous()?;
        let mask = mask.map(|m| m.narrow(2, start, len)).transpose()?;
        out.push(block(&q, mask, 1, width)?);
    }
    Tensor::cat(&out, 2)
}

/// Keys from which a decode step attends through [`crate::decode_attention`] rather than
/// candle's batched products. Over a few dozen keys candle's products are cheap and the
/// kernel's dispatch over the thread pool is not: 40–100 tokens into a prompt, SmolLM2's steps
/// of 8 rows took 26.4 and 25.8 ms with it against 22.2 and 23.0 without (two runs each of
/// `MURAKKAB_BENCH_ONLY=steps`; qwen2.5-0.5b's 44 ms either way). After 1,500 tokens it saves
/// 25–40 ms a step at 8 rows (`decode_attention`'s doc).
const DECODE_KERNEL_KEYS: usize = 256;

/// The tensors of one block (`blk.N.` + name); the biases are optional (Qwen2 has them on
/// query, key and value).
const BLOCK_TENSORS: [&str; 16] = [
    "attn_norm.weight",
    "attn_q.weight",
    "attn_q.bias",
    "attn_k.weight",
    "attn_k.bias",
    "attn_v.weight",
    "attn_v.bias",
    "attn_output.weight",
    "attn_output.bias",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_gate.bias",
    "ffn_up.weight",
    "ffn_up.bias",
    "ffn_down.weight",
    "ffn_down.bias",
];

/// Block formats whose dot product candle 0.11 computes with scalar code on x86 (no AVX path):
/// SmolLM2's Q4_1 and the Q5_0/Q5_1 that llama.cpp's Q4_K_M falls back to when a row is not a
/// multiple of 256 (all of Qwen-0.5B's 896-wide projections).
const SCALAR_FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// The weights in a format with a vectorised CPU dot product: scalar-only formats are
/// re-quantized to Q8_0 (32 values per block, like theirs, and an eighth or less of their rounding
/// step, so the values barely move). Decode steps read these weights once per token, and the
/// scalar kernel, not memory, bounded them (smollm2: 19% of the bandwidth roofline).
fn vector_format(
    q: QTensor,
    dense: Option<&Tensor>,
    device: &Device,
) -> Result<QTensor, ModelError> {
    if cfg!(target_arch = "x86_64") && SCALAR_FORMATS.contains(&q.dtype()) {
        let values = match dense {
            Some(values) => values.clone(),
            None => q.dequantize(device)?,
        };
        Ok(QTensor::quantize(&values, GgmlDType::Q8_0)?)
    } else {
        Ok(q)
    }
}

fn rope_tables(
    head_dim: usize,
    theta: f32,
    max_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor), ModelError> {
    let inv: Vec<f32> =
        (0..head_dim).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32)).collect();
    let inv = Tensor::new(inv.as_slice(), device)?;
    let pos = Tensor::arange(0u32, max_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_len, 1))?;
    let freqs = pos.matmul(&inv.reshape((1, head_dim / 2))?)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny qwen2 decoder of random weights (`seed`) with both weight copies, so prompt passes
    /// take the fused AMX path where the CPU has AMX; its file's directory beside it.
    fn tiny_qwen2(seed: u64) -> (tempfile::TempDir, GgufDecoder) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        crate::tiny_models::write_tiny_gguf(&path, "qwen2", GgmlDType::F32, seed).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut file).unwrap();
        let decoder =
            GgufDecoder::load(&content, &mut file, &Device::Cpu, WeightMode::Both).unwrap();
        (dir, decoder)
    }

    /// Makes prompt passes take the padded path (both paths give the same values, so other
    /// tests running meanwhile are unaffected).
    pub(super) static PADDED_ONLY: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[test]
    fn packed_prompt_passes_equal_padded_ones_bit_for_bit() {
        let (_dir, decoder) = tiny_qwen2(13);
        if !decoder.packs_prompts() {
            assert!(!crate::amx_gemm::available(), "the tiny model packs where AMX runs");
            return; // No AMX here: every pass is padded.
        }
        let empty = decoder.empty_cache().unwrap();
        let (_, _, prefix) = decoder.forward(&[&[1u32, 2, 3][..]], &[&empty], false).unwrap();
        let prompts: [&[u32]; 3] =
            [&[10, 11, 12, 13, 14], &[20, 21], &[30, 31, 32, 33, 34, 35, 36]];
        let caches = [&prefix[0], &empty, &prefix[0]];
        let run = |padded: bool| {
            PADDED_ONLY.store(padded, std::sync::atomic::Ordering::Relaxed);
            let out = decoder.forward(&prompts, &caches, true).unwrap();
            PADDED_ONLY.store(false, std::sync::atomic::Ordering::Relaxed);
            out
        };
        let (last, all, new_caches) = run(false);
        let (want_last, want_all, want_caches) = run(true);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&last), flat(&want_last), "last positions");
        let (all, want_all) = (all.unwrap(), want_all.unwrap());
        for (s, prompt) in prompts.iter().enumerate() {
            let real = |t: &Tensor| flat(&t.i(s).unwrap().narrow(0, 0, prompt.len()).unwrap());
            assert_eq!(real(&all), real(&want_all), "sequence {s}'s positions");
            for (layer, ((k, v), (wk, wv))) in
                new_caches[s].layers.iter().zip(&want_caches[s].layers).enumerate()
            {
                assert_eq!(flat(k), flat(wk), "sequence {s}, layer {layer}'s keys");
                assert_eq!(flat(v), flat(wv), "sequence {s}, layer {layer}'s values");
            }
        }
    }

    #[test]
    fn token_scores_are_log_probs_up_to_each_rows_constant() {
        let (_dir, decoder) = tiny_qwen2(5);
        let hidden = Tensor::randn(0f32, 1.0, (3, decoder.config().dim), &Device::Cpu).unwrap();
        let tokens = [7u32, 200, 7, 262];
        let scores = decoder.token_scores(&hidden, &tokens).unwrap().to_vec2::<f32>().unwrap();
        let full = decoder.log_probs(&hidden).unwrap().to_vec2::<f32>().unwrap();
        for (row, full) in scores.iter().zip(&full) {
            let offset = row[0] - full[7];
            for (score, &t) in row.iter().zip(&tokens) {
                assert!((score - full[t as usize] - offset).abs() < 1e-4, "{row:?}");
            }
        }
    }

    #[test]
    fn a_branch_layout_places_tokens_after_the_trunk_and_hides_other_branches() {
        let layout = BranchLayout::new(3, vec![2, 1]);
        assert_eq!(layout.len(), 6);
        let depths: Vec<usize> = (0..6).map(|i| layout.depth(i)).collect();
        assert_eq!(depths, [0, 1, 2, 3, 4, 3]);
        assert!(layout.sees(4, 0) && layout.sees(4, 2) && layout.sees(4, 3) && layout.sees(4, 4));
        assert!(!layout.sees(5, 3) && !layout.sees(5, 4), "another branch");
        assert!(layout.sees(5, 5) && layout.sees(5, 1));
        assert!(!layout.sees(1, 2), "nothing later");
        assert!(BranchLayout::new(0, Vec::new()).is_empty());
    }

    #[test]
    fn branches_in_one_pass_equal_each_run_alone_after_its_trunk() {
        let (_dir, decoder) = tiny_qwen2(11);
        let empty = decoder.empty_cache().unwrap();
        let (_, _, prefix) = decoder.forward(&[&[1u32, 2, 3, 4][..]], &[&empty], false).unwrap();
        let prefix = &prefix[0];
        // Two rows of different lengths (the shorter padded), each with branches of 3 and 2.
        let trunks: [&[u32]; 2] = [&[10, 11, 12, 13, 14], &[20, 21]];
        let branches: [&[u32]; 2] = [&[30, 31, 32], &[40, 41]];
        let seqs: Vec<Vec<u32>> =
            trunks.iter().map(|t| [*t, branches[0], branches[1]].concat()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let layouts: Vec<BranchLayout> =
            trunks.iter().map(|t| BranchLayout::new(t.len(), vec![3, 2])).collect();
        let together = decoder.forward_branches(&refs, &layouts, &[prefix, prefix]).unwrap();
        let gap = |a: Tensor, b: Tensor| {
            (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        for (row, trunk) in trunks.iter().enumerate() {
            let (_, trunk_states, _) = decoder.forward(&[trunk], &[prefix], true).unwrap();
            let trunk_states = trunk_states.unwrap().i(0).unwrap();
            let here = together.i(row).unwrap();
            let d = gap(here.narrow(0, 0, trunk.len()).unwrap(), trunk_states);
            assert!(d < 1e-4, "row {row}: the trunk is {d} away");
            let mut offset = trunk.len();
            for branch in branches {
                // The branch alone: the trunk, then it, in plain causal order.
                let alone = [*trunk, branch].concat();
                let (_, states, _) = decoder.forward(&[&alone], &[prefix], true).unwrap();
                let states = states.unwrap().i(0).unwrap().narrow(0, trunk.len(), branch.len());
                let d = gap(here.narrow(0, offset, branch.len()).unwrap(), states.unwrap());
                assert!(d < 1e-4, "row {row}: a branch is {d} away");
                offset += branch.len();
            }
        }
        let wrong = decoder.forward_branches(&refs, &layouts[..1], &[prefix, prefix]);
        assert!(wrong.is_err(), "one layout per sequence");
    }

    #[test]
    fn a_long_prompt_attends_by_causal_blocks_as_it_would_in_two_passes() {
        let (_dir, decoder) = tiny_qwen2(9);
        let empty = decoder.empty_cache().unwrap();
        // 420 and 300 tokens: both past two causal blocks, the shorter one padded in the batch.
        let long: Vec<u32> = (0..420u32).map(|i| (i * 7 + 3) % 256).collect();
        let short: Vec<u32> = (0..300u32).map(|i| (i * 11 + 5) % 256).collect();
        let (together, _, _) = decoder.forward(&[&long, &short], &[&empty, &empty], false).unwrap();
        // The same prompts in two passes of under two blocks each: every key, no blocks.
        for (row, prompt) in [&long, &short].into_iter().enumerate() {
            let (head, tail) = prompt.split_at(200);
            let (_, _, first) = decoder.forward(&[head], &[&empty], false).unwrap();
            let (last, _, _) = decoder.forward(&[tail], &[&first[0]], false).unwrap();
            let gap = (together.i(row).unwrap() - last.i(0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(gap < 1e-3, "prompt {row}: the blocked pass is {gap} away");
        }
    }

    #[test]
    fn swapped_products_equal_the_usual_orientation() {
        let w = Tensor::randn(0f32, 1.0, (40, 96), &Device::Cpu).unwrap();
        // A batch of 2 rows of 3 tokens, as a prompt pass's activations are shaped.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 96), &Device::Cpu).unwrap();
        let swapped = swapped_product(&x, &w).unwrap();
        let usual = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        assert_eq!(swapped.dims(), &[2, 3, 40]);
        let gap = (swapped - usual).unwrap().abs().unwrap().max_all().unwrap();
        assert!(gap.to_scalar::<f32>().unwrap() < 1e-4);
        assert!(swap_orientation(25, 4864, 896), "one row's prompt");
        assert!(!swap_orientation(320, 4864, 896), "a batched pass, tall weights");
        assert!(swap_orientation(320, 896, 4864), "a batched pass, the down projection");
    }
}
