//! The BERT encoder's forward pass with its projections on AMX tiles ([`crate::amx_gemm`]),
//! where the CPU has AMX; elsewhere the encoder runs candle-transformers' `BertModel`.
//!
//! The same network as `BertModel` (Hugging Face's `modeling_bert`, absolute positions, token
//! type 0): embeddings and LayerNorm, then per layer self-attention with the padding mask,
//! output projection, residual and LayerNorm, intermediate projection with GELU, output
//! projection, residual and LayerNorm. What differs is where the time goes: query, key and
//! value are one product, weights are bf16 tiles packed at load (sums stay f32), and the
//! intermediate projection adds its bias and applies GELU in the kernel's epilogue
//! ([`AmxMatrix::bias_gelu`], AVX-512 lanes instead of libm's scalar `erff`), writing the tiles
//! the output projection reads.
//! Embeddings stay within 2e-5 in cosine of the f32 path (bf16 rounding; 222 BBC leads, 221
//! keeping the same nearest neighbour), far below what separates neighbours in a search.

use candle_core::{DType, Tensor};
use candle_nn::{Embedding, LayerNorm, Module, VarBuilder, embedding, layer_norm};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::amx_gemm::{AmxMatrix, TiledActivations};
use crate::gguf_decoder::with_f32_values;
use crate::vector_math::masked_softmax;

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

    /// `x [m, inputs]` projected, the bias added: `[m, outputs]` row-major.
    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.forward_tiled(&TiledActivations::from_f32(x, m, self.matrix.cols()))
    }

    /// [`Self::forward`] on activations already in tiles.
    fn forward_tiled(&self, x: &TiledActivations) -> Vec<f32> {
        let mut y = self.matrix.matmul_tiled(x);
        for row in y.chunks_exact_mut(self.bias.len()) {
            for (v, b) in row.iter_mut().zip(&self.bias) {
                *v += b;
            }
        }
        y
    }
}

struct Layer {
    qkv: Projection,
    attention_out: Projection,
    attention_norm: LayerNorm,
    intermediate: Projection,
    output: Projection,
    output_norm: LayerNorm,
}

/// A BERT encoder whose projections run on AMX.
pub(crate) struct AmxBert {
    word_embeddings: Embedding,
    position_embeddings: Tensor,
    token_type_zero: Tensor,
    embedding_norm: LayerNorm,
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
        let embedding_norm = layer_norm(h, eps, emb.pp("LayerNorm"))?;
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
                attention_norm: layer_norm(h, eps, attention.pp("output").pp("LayerNorm"))?,
                intermediate,
                output,
                output_norm: layer_norm(h, eps, l.pp("output").pp("LayerNorm"))?,
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

    /// The last layer's hidden states `[batch, len, hidden]` for token ids `[batch, len]` with
    /// their attention mask (1 = real token).
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let (h, heads) = (self.hidden, self.heads);
        let (m, head_dim) = (batch * len, h / heads);
        let device = ids.device();
        let positions = self.position_embeddings.narrow(0, 0, len)?;
        let embedded = self
            .word_embeddings
            .forward(ids)?
            .broadcast_add(&self.token_type_zero)?
            .broadcast_add(&positions)?;
        let mut x = self.embedding_norm.forward(&embedded)?.reshape((m, h))?;
        let keep = mask.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        for layer in &self.layers {
            let qkv = with_f32_values(&x, |v| layer.qkv.forward(v, m))?;
            let qkv = Tensor::from_vec(qkv, (batch, len, 3, heads, head_dim), device)?;
            let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let scores = q.matmul(&k.t()?)?;
            let probs = with_f32_values(&scores, |s| masked_softmax(s, &keep, batch, len, scale))?;
            let probs = Tensor::from_vec(probs, (batch, heads, len, len), device)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((m, h))?;
            let attended = with_f32_values(&context, |c| layer.attention_out.forward(c, m))?;
            let attended = (Tensor::from_vec(attended, (m, h), device)? + &x)?;
            let attended = layer.attention_norm.forward(&attended)?;
            let inter = with_f32_values(&attended, |a| {
                let acts = TiledActivations::from_f32(a, m, h);
                layer.intermediate.matrix.bias_gelu(&acts, &layer.intermediate.bias)
            })?;
            let out = layer.output.forward_tiled(&inter);
            let out = (Tensor::from_vec(out, (m, h), device)? + &attended)?;
            x = layer.output_norm.forward(&out)?;
        }
        x.reshape((batch, len, h))
    }
}

#[cfg(test)]
// A test skipped on a CPU without the instructions says so.
#[allow(clippy::print_stderr)]
mod tests {
    use candle_core::Device;
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

    #[test]
    fn the_amx_forward_matches_candles_bert_with_padding() {
        let (vb, config) = tiny_bert();
        let device = Device::Cpu;
        let Some(amx) = AmxBert::load(vb.clone(), &config).unwrap() else {
            eprintln!("skipped: no AMX");
            return;
        };
        let candle = BertModel::load(vb, &config).unwrap();
        // Two rows, the second padded after five tokens.
        let ids: Vec<u32> = vec![2, 5, 9, 11, 7, 6, 8, 3, 2, 4, 10, 12, 3, 0, 0, 0];
        let mask: Vec<u32> = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        let ids = Tensor::from_vec(ids, (2, 8), &device).unwrap();
        let mask = Tensor::from_vec(mask, (2, 8), &device).unwrap();
        let ours = amx.forward(&ids, &mask).unwrap().to_vec3::<f32>().unwrap();
        let theirs = candle
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (row, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            // Padded positions are never pooled; every real token's state must agree.
            let real = if row == 0 { 8 } else { 5 };
            for t in 0..real {
                let dot: f32 = a[t].iter().zip(&b[t]).map(|(x, y)| x * y).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cosine = dot / (norm(&a[t]) * norm(&b[t]));
                assert!(cosine > 0.999, "row {row} token {t}: cosine {cosine}");
            }
        }
    }

    #[test]
    fn a_text_gets_the_same_states_alone_and_padded_in_a_batch() {
        let (vb, config) = tiny_bert();
        let device = Device::Cpu;
        let Some(amx) = AmxBert::load(vb, &config).unwrap() else {
            eprintln!("skipped: no AMX");
            return;
        };
        let short: Vec<u32> = vec![2, 5, 9, 11, 3];
        let long: Vec<u32> = vec![2, 4, 10, 12, 6, 8, 7, 5, 9, 11, 4, 10, 3];
        let alone = amx
            .forward(
                &Tensor::new(&short[..], &device).unwrap().unsqueeze(0).unwrap(),
                &Tensor::ones((1, 5), DType::U32, &device).unwrap(),
            )
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let mut ids = long.clone();
        ids.extend(short.iter().copied().chain(std::iter::repeat_n(0, 8)));
        let mask: Vec<u32> = [vec![1; 13], vec![1; 5], vec![0; 8]].concat();
        let batched = amx
            .forward(
                &Tensor::from_vec(ids, (2, 13), &device).unwrap(),
                &Tensor::from_vec(mask, (2, 13), &device).unwrap(),
            )
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        // Bit for bit: padding and neighbours must not move a text's embedding.
        assert_eq!(&batched[1][..5], &alone[0][..]);
    }
}
