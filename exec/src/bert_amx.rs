//! The BERT encoder's forward pass with its projections on AMX tiles ([`crate::amx_gemm`]),
//! where the CPU has AMX; elsewhere the encoder runs candle-transformers' `BertModel`.
//!
//! The same network as `BertModel` (Hugging Face's `modeling_bert`, absolute positions, token
//! type 0): embeddings and LayerNorm, then per layer self-attention, output projection,
//! residual and LayerNorm, intermediate projection with GELU, output projection, residual and
//! LayerNorm. What differs is where the time goes:
//! - a batch's texts are packed, token after token, with no padding: every product runs on real
//!   tokens only, and attention ([`crate::packed_attention`]) keeps each text to itself;
//! - query, key and value are one product, weights are bf16 tiles packed at load (sums stay
//!   f32), and the intermediate projection adds its bias and applies GELU in the kernel's
//!   epilogue ([`AmxMatrix::bias_gelu`], AVX-512 lanes instead of libm's scalar `erff`),
//!   writing the tiles the output projection reads;
//! - each projection's bias, the residual and the LayerNorm are one pass over a row
//!   ([`Norm::add_and_normalize`]), on plain vectors rather than a chain of candle tensors.
//!
//! Embeddings stay within 2.2e-5 in cosine of the f32 path (bf16 rounding; 222 BBC leads, 221
//! keeping the same nearest neighbour, as before packing), far below what separates neighbours
//! in a search. Batch-64 embeddings of UCI sentences (`MURAKKAB_BENCH_ONLY=embed cargo bench
//! --profile dev --bench models`, three interleaved runs, medians): 468.6 texts/s padded with
//! candle's attention and norms, 1186.7 packed (2.53x).

use candle_core::Tensor;
use candle_nn::{Embedding, Module, VarBuilder, embedding};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::amx_gemm::{AmxMatrix, TiledActivations};
use crate::packed_attention::packed_attention;

/// A projection's weights in tiles and its bias.
struct Projection {
    matrix: AmxMatrix,
    bias: Vec<f32>,
}

impl Projection {
    /// The `names` projections (each `[outputs, inputs]` with a bias) stacked into one, in
    /// order; `None` without AMX.
    fn load(
        vb: &VarBuilder,
        names: &[&str],
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Option<Self>> {
        let (mut weights, mut bias) = (Vec::new(), Vec::new());
        for name in names {
            let part = vb.pp(*name);
            weights.extend(part.get((outputs, inputs), "weight")?.flatten_all()?.to_vec1::<f32>()?);
            bias.extend(part.get(outputs, "bias")?.to_vec1::<f32>()?);
        }
        let Some(matrix) = AmxMatrix::from_f32(&weights, names.len() * outputs, inputs) else {
            return Ok(None);
        };
        Ok(Some(Self { matrix, bias }))
    }
}

/// A LayerNorm's scale and shift.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?.to_vec1::<f32>()?,
            bias: vb.get(width, "bias")?.to_vec1::<f32>()?,
            eps: eps as f32,
        })
    }

    /// Each row of `y` (`[rows, width]`) becomes `LayerNorm(y + bias + residual)`: the residual
    /// connection, the projection's bias and the norm in one pass over the row.
    fn add_and_normalize(&self, y: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>) {
        let width = self.weight.len();
        let rows_per_task = ROWS_PER_TASK * width;
        let task = |(t, rows): (usize, &mut [f32])| {
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let at = (t * ROWS_PER_TASK + r) * width;
                if let Some(bias) = bias {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
                if let Some(residual) = residual {
                    row.iter_mut().zip(&residual[at..at + width]).for_each(|(v, r)| *v += r);
                }
                let mean = row.iter().sum::<f32>() / width as f32;
                let variance =
                    row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
                let inverse = 1.0 / (variance + self.eps).sqrt();
                for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                    *v = (*v - mean) * inverse * w + b;
                }
            }
        };
        y.par_chunks_mut(rows_per_task).enumerate().for_each(task);
    }
}

/// Rows per rayon task of the per-row passes: [`Norm::add_and_normalize`] and the query, key
/// and value projection's bias.
const ROWS_PER_TASK: usize = 64;

struct Layer {
    qkv: Projection,
    attention_out: Projection,
    attention_norm: Norm,
    intermediate: Projection,
    output: Projection,
    output_norm: Norm,
}

/// A BERT encoder whose projections run on AMX.
pub(crate) struct AmxBert {
    word_embeddings: Embedding,
    position_embeddings: Tensor,
    token_type_zero: Tensor,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

impl AmxBert {
    /// Loads the encoder from `vb` (with or without a `bert.` prefix); `None` without AMX or
    /// for an activation other than exact GELU (candle's model covers those).
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Option<Self>> {
        if !crate::amx_gemm::available() || !matches!(config.hidden_act, HiddenAct::Gelu) {
            return Ok(None);
        }
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp(config.model_type.as_deref().unwrap_or("bert"))
        };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let emb = vb.pp("embeddings");
        let word_embeddings = embedding(config.vocab_size, h, emb.pp("word_embeddings"))?;
        let position_embeddings =
            emb.pp("position_embeddings").get((config.max_position_embeddings, h), "weight")?;
        let token_type_zero =
            emb.pp("token_type_embeddings").get((config.type_vocab_size, h), "weight")?.get(0)?;
        let embedding_norm = Norm::load(emb.pp("LayerNorm"), h, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let attention = l.pp("attention");
            let inter = config.intermediate_size;
            let parts = (
                Projection::load(&attention.pp("self"), &["query", "key", "value"], h, h)?,
                Projection::load(&attention.pp("output"), &["dense"], h, h)?,
                Projection::load(&l.pp("intermediate"), &["dense"], h, inter)?,
                Projection::load(&l.pp("output"), &["dense"], inter, h)?,
            );
            let (Some(qkv), Some(attention_out), Some(intermediate), Some(output)) = parts else {
                return Ok(None);
            };
            layers.push(Layer {
                qkv,
                attention_out,
                attention_norm: Norm::load(attention.pp("output").pp("LayerNorm"), h, eps)?,
                intermediate,
                output,
                output_norm: Norm::load(l.pp("output").pp("LayerNorm"), h, eps)?,
            });
        }
        Ok(Some(Self {
            word_embeddings,
            position_embeddings,
            token_type_zero,
            embedding_norm,
            layers,
            heads: config.num_attention_heads,
            hidden: h,
        }))
    }

    /// The last layer's hidden states of each token sequence, packed: rows `offsets[s]..
    /// offsets[s + 1]` of the result (`[tokens, hidden]` row-major) are sequence `s`'s, where
    /// `offsets` (returned beside) starts at 0. No padding is computed: every product runs on
    /// the batch's real tokens, and attention stays within each sequence.
    pub(crate) fn forward_packed(
        &self,
        sequences: &[&[u32]],
    ) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
        let (h, heads) = (self.hidden, self.heads);
        let head_dim = h / heads;
        let device = self.position_embeddings.device();
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        let (mut ids, mut positions) = (Vec::new(), Vec::new());
        let longest = self.position_embeddings.dim(0)?;
        for sequence in sequences {
            if sequence.len() > longest {
                candle_core::bail!(
                    "a text of {} tokens is longer than the encoder's {longest} positions",
                    sequence.len()
                );
            }
            ids.extend_from_slice(sequence);
            positions.extend(0..sequence.len() as u32);
            offsets.push(ids.len());
        }
        let m = ids.len();
        if m == 0 {
            return Ok((Vec::new(), offsets));
        }
        let positions = Tensor::from_vec(positions, m, device)?;
        let embedded = self
            .word_embeddings
            .forward(&Tensor::from_vec(ids, m, device)?)?
            .broadcast_add(&self.token_type_zero)?
            .add(&self.position_embeddings.index_select(&positions, 0)?)?;
        let mut x = embedded.flatten_all()?.to_vec1::<f32>()?;
        self.embedding_norm.add_and_normalize(&mut x, None, None);
        let scale = 1.0 / (head_dim as f32).sqrt();
        for layer in &self.layers {
            let mut qkv = layer.qkv.matrix.matmul(&x, m);
            let bias = &layer.qkv.bias;
            qkv.par_chunks_mut(bias.len() * ROWS_PER_TASK).for_each(|rows| {
                for row in rows.chunks_exact_mut(bias.len()) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            });
            let context = packed_attention(&qkv, &offsets, heads, head_dim, scale);
            drop(qkv);
            let mut attended = layer.attention_out.matrix.matmul(&context, m);
            let norm = &layer.attention_norm;
            norm.add_and_normalize(&mut attended, Some(&layer.attention_out.bias), Some(&x));
            let acts = TiledActivations::from_f32(&attended, m, h);
            let inter = layer.intermediate.matrix.bias_gelu(&acts, &layer.intermediate.bias);
            drop(acts);
            x = layer.output.matrix.matmul_tiled(&inter);
            let norm = &layer.output_norm;
            norm.add_and_normalize(&mut x, Some(&layer.output.bias), Some(&attended));
        }
        Ok((x, offsets))
    }
}

#[cfg(test)]
// A test skipped on a CPU without the instructions says so.
#[allow(clippy::print_stderr)]
mod tests {
    use candle_core::{DType, Device};
    use candle_transformers::models::bert::BertModel;

    use super::*;
    use crate::tiny_models::write_tiny_bert;

    /// The tiny BERT's weights and configuration (random weights, written and read back).
    fn tiny_bert() -> (VarBuilder<'static>, Config) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let config: Config = serde_json::from_str(&text).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        (VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu), config)
    }

    /// Sequence `s`'s rows of a packed forward.
    fn rows(hidden: &[f32], offsets: &[usize], s: usize, width: usize) -> Vec<Vec<f32>> {
        hidden[offsets[s] * width..offsets[s + 1] * width]
            .chunks_exact(width)
            .map(<[f32]>::to_vec)
            .collect()
    }

    #[test]
    fn the_amx_forward_matches_candles_bert_with_padding() {
        let (vb, config) = tiny_bert();
        let device = Device::Cpu;
        let Some(amx) = AmxBert::load(vb.clone(), &config).unwrap() else {
            eprintln!("skipped: no AMX");
            return;
        };
        let candle = BertModel::load(vb, &config).unwrap();
        // Two rows, the second padded after five tokens (for candle; ours packs them).
        let ids: Vec<u32> = vec![2, 5, 9, 11, 7, 6, 8, 3, 2, 4, 10, 12, 3, 0, 0, 0];
        let mask: Vec<u32> = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        let (hidden, offsets) = amx.forward_packed(&[&ids[..8], &ids[8..13]]).unwrap();
        assert_eq!(offsets, vec![0, 8, 13]);
        let ids = Tensor::from_vec(ids, (2, 8), &device).unwrap();
        let mask = Tensor::from_vec(mask, (2, 8), &device).unwrap();
        let theirs = candle
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (row, b) in theirs.iter().enumerate() {
            let a = rows(&hidden, &offsets, row, config.hidden_size);
            // Padded positions are never pooled; every real token's state must agree.
            for t in 0..a.len() {
                let dot: f32 = a[t].iter().zip(&b[t]).map(|(x, y)| x * y).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cosine = dot / (norm(&a[t]) * norm(&b[t]));
                assert!(cosine > 0.999, "row {row} token {t}: cosine {cosine}");
            }
        }
    }

    #[test]
    fn a_text_gets_the_same_states_alone_and_in_a_batch() {
        let (vb, config) = tiny_bert();
        let Some(amx) = AmxBert::load(vb, &config).unwrap() else {
            eprintln!("skipped: no AMX");
            return;
        };
        let short: Vec<u32> = vec![2, 5, 9, 11, 3];
        let long: Vec<u32> = vec![2, 4, 10, 12, 6, 8, 7, 5, 9, 11, 4, 10, 3];
        let (alone, at) = amx.forward_packed(&[&short]).unwrap();
        let (batched, offsets) = amx.forward_packed(&[&long, &short, &long]).unwrap();
        // Bit for bit: neighbours must not move a text's embedding.
        let width = config.hidden_size;
        assert_eq!(rows(&batched, &offsets, 1, width), rows(&alone, &at, 0, width));
        assert_eq!(rows(&batched, &offsets, 0, width), rows(&batched, &offsets, 2, width));
        assert_eq!(amx.forward_packed(&[]).unwrap(), (Vec::new(), vec![0]));
        let too_long = vec![2u32; config.max_position_embeddings + 1];
        let error = amx.forward_packed(&[&too_long]).unwrap_err().to_string();
        assert!(error.contains("longer than the encoder's"), "{error}");
    }
}
