//! Sentence embeddings from a BERT-family encoder (all-MiniLM-L6-v2 and kin): batched forward
//! with attention masks, mean pooling over real tokens, L2 normalisation.
//!
//! Reference: sentence-transformers' `Pooling(mean)` + `Normalize` modules over the Hugging Face
//! BERT encoder. Where the CPU has AMX the network is ours (`bert_amx`: projections on AMX
//! tiles); elsewhere it is candle-transformers' `bert.rs`. Both honour the attention mask, so
//! batching does not move an embedding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::batching::in_length_order;
use crate::bert_amx::AmxBert;
use crate::error::ModelError;

/// Texts per forward pass: large enough to keep the matrix units busy, small enough that the
/// padded batch of long texts stays within a few hundred MB.
const MAX_BATCH: usize = 64;

/// Embeddings for a batch of texts, with how many texts were truncated to fit the context.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-length vector per input text, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Texts longer than the model's context, cut to fit.
    pub truncated: usize,
    /// Tokens processed, padding excluded.
    pub tokens: usize,
}

/// The network: on AMX tiles where the CPU has AMX, candle-transformers' otherwise.
enum Network {
    Amx(AmxBert),
    Candle(BertModel),
}

/// A loaded sentence encoder.
pub struct BertEncoder {
    id: String,
    network: Network,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder").field("id", &self.id).field("dim", &self.dim).finish()
    }
}

impl BertEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(id: &str, dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let load_err = |detail: String| ModelError::Load { id: id.to_string(), detail };
        let config_path = dir.join("config.json");
        let config: Config = std::fs::read_to_string(&config_path)
            .map_err(|e| load_err(format!("reading {}: {e}", config_path.display())))
            .and_then(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| load_err(format!("parsing {}: {e}", config_path.display())))
            })?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| load_err(format!("reading {}: {e}", tokenizer_path.display())))?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| load_err(format!("reading {}: {e}", weights_path.display())))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::from_parts(id, vb, &config, tokenizer, device)
    }

    /// Builds the encoder from weights already in a `VarBuilder`.
    pub fn from_parts(
        id: &str,
        vb: VarBuilder,
        config: &Config,
        mut tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let load_err =
            |e: candle_core::Error| ModelError::Load { id: id.to_string(), detail: e.to_string() };
        let network = match AmxBert::load(vb.clone(), config).map_err(load_err)? {
            Some(amx) => Network::Amx(amx),
            None => Network::Candle(BertModel::load(vb, config).map_err(load_err)?),
        };
        let pad_token =
            tokenizer.id_to_token(config.pad_token_id as u32).unwrap_or_else(|| "[PAD]".into());
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            pad_token,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            id: id.to_string(),
            network,
            tokenizer,
            device: device.clone(),
            dim: config.hidden_size,
            max_tokens: config.max_position_embeddings,
        })
    }

    /// The model id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds `texts`. Texts are grouped by length so a batch carries little padding; the result
    /// is in input order. An empty string is valid input.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings, ModelError> {
        let (mut truncated, mut tokens) = (0, 0);
        // Byte length is a cheap proxy for token length.
        let vectors = in_length_order(
            texts.len(),
            MAX_BATCH,
            |i| texts[i].len(),
            |chunk| {
                let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
                let (out, t, n) = self.embed_batch(&batch)?;
                truncated += t;
                tokens += n;
                Ok::<_, ModelError>(out)
            },
        )?;
        Ok(Embeddings { vectors, truncated, tokens })
    }

    /// One forward pass over `texts` (at most [`MAX_BATCH`]).
    fn embed_batch(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, usize, usize), ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let truncated = encodings.iter().filter(|e| !e.get_overflowing().is_empty()).count();
        let len = encodings.first().map(|e| e.len()).unwrap_or(0).min(self.max_tokens);
        // Each text's real tokens: padding (`BatchLongest`) is at the end.
        let real: Vec<usize> = encodings
            .iter()
            .map(|e| e.get_attention_mask()[..len].iter().filter(|&&m| m == 1).count())
            .collect();
        let tokens = real.iter().sum();
        let model = match &self.network {
            Network::Candle(model) => model,
            Network::Amx(amx) => {
                // Packed without padding.
                let sequences: Vec<&[u32]> =
                    encodings.iter().zip(&real).map(|(e, &n)| &e.get_ids()[..n]).collect();
                let (hidden, offsets) =
                    self.device.with_context(|| amx.forward_packed(&sequences))?;
                let vectors = offsets
                    .windows(2)
                    .map(|pair| {
                        mean_normalized(&hidden[pair[0] * self.dim..pair[1] * self.dim], self.dim)
                    })
                    .collect();
                return Ok((vectors, truncated, tokens));
            }
        };
        // candle's BERT takes the padded batch and its mask.
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut mask = Vec::with_capacity(texts.len() * len);
        for e in &encodings {
            ids.extend_from_slice(&e.get_ids()[..len]);
            mask.extend_from_slice(&e.get_attention_mask()[..len]);
        }
        let shape = (texts.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        // In candle's warm thread pool (see the decoder's forward pass).
        let hidden =
            self.device.with_context(|| model.forward(&ids, &ids.zeros_like()?, Some(&mask)))?;
        // Mean over real tokens only: padding must not move the embedding.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        Ok((normalized.to_vec2::<f32>()?, truncated, tokens))
    }
}

/// The mean of `rows` (`dim` wide, row-major), scaled to unit length: sentence-transformers'
/// mean pooling and normalisation, on one text's packed states.
fn mean_normalized(rows: &[f32], dim: usize) -> Vec<f32> {
    let mut mean = vec![0f32; dim];
    for row in rows.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    let count = (rows.len() / dim.max(1)).max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= count);
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    mean.iter_mut().for_each(|m| *m /= norm);
    mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny_models::write_tiny_bert;

    fn tiny() -> (tempfile::TempDir, BertEncoder) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path()).unwrap();
        let enc = BertEncoder::load("tiny-bert", dir.path(), &Device::Cpu).unwrap();
        (dir, enc)
    }

    #[test]
    fn batched_equals_one_at_a_time() {
        let (_dir, enc) = tiny();
        let texts = ["a man is eating food", "the cat", "", "great battery life in a week", "cat"];
        let batched = enc.embed(&texts).unwrap();
        assert_eq!(batched.vectors.len(), texts.len());
        for (text, v) in texts.iter().zip(&batched.vectors) {
            let single = enc.embed(&[text]).unwrap();
            assert_eq!(v.len(), 32);
            for (x, y) in v.iter().zip(&single.vectors[0]) {
                assert!((x - y).abs() < 1e-4, "{text:?}: {x} vs {y}");
            }
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn long_texts_are_truncated_and_counted() {
        let (_dir, enc) = tiny();
        let long = "the cat sat on the mat ".repeat(10);
        let out = enc.embed(&[long.as_str(), "cat"]).unwrap();
        assert_eq!(out.truncated, 1);
        assert_eq!(out.vectors[0].len(), 32);
    }

    #[test]
    fn missing_files_name_the_model_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = BertEncoder::load("nope", dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("cannot load model 'nope'") && err.contains("config.json"), "{err}");
    }
}
