//! Tiny models with random weights, written to disk in the same formats as real models so tests
//! load them through the same code paths (`BertEncoder::load`, `LanguageModel::load`).

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};

use crate::error::ModelError;
use crate::gguf_tokenizer::bytes_to_unicode;

const WORDS: &[&str] = &[
    "a", "man", "is", "eating", "food", "piece", "of", "bread", "the", "cat", "sat", "on", "mat",
    "great", "battery", "life", "screen", "cracked", "in", "week",
];

fn io(e: impl std::fmt::Display) -> ModelError {
    ModelError::Load { id: "tiny".into(), detail: e.to_string() }
}

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` of a 2-layer, 32-wide BERT with a
/// word-piece vocabulary of 24 tokens and a 16-token context.
pub fn write_tiny_bert(dir: &Path) -> Result<(), ModelError> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().chain(WORDS).enumerate() {
        vocab.insert(t.to_string(), serde_json::json!(i));
    }
    let special = |id: usize, content: &str| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).map_err(io)?;
    let config = serde_json::json!({
        "vocab_size": 4 + WORDS.len(), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "max_position_embeddings": 16, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "classifier_dropout": null, "model_type": "bert"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(io)?;
    let config: Config = serde_json::from_value(config).map_err(io)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb, &config)?;
    varmap.save(dir.join("model.safetensors"))?;
    Ok(())
}

/// Writes a GGUF decoder (`llama` or `qwen2`) with random weights: 2 blocks, width 64, 4 query
/// and 2 key/value heads, a 512-token context, and a byte-level BPE vocabulary of the 256 bytes,
/// a few merges and `<|im_end|>` (the stop token, id 262). Weights are stored as `dtype`.
pub fn write_tiny_gguf(
    path: &Path,
    architecture: &str,
    dtype: GgmlDType,
    seed: u64,
) -> Result<(), ModelError> {
    let device = Device::Cpu;
    let (dim, n_head, n_kv, ffn, n_layer) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let head_dim = dim / n_head;
    let spell = bytes_to_unicode();
    let mut tokens: Vec<String> = (0..=255u8).map(|b| spell[&b].to_string()).collect();
    let merges = ["t h", "th e", "Ġ a", "Ġ th", "Ġthe", "i n"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.push("<|im_end|>".into());
    let mut types = vec![Value::I32(1); tokens.len()];
    if let Some(last) = types.last_mut() {
        *last = Value::I32(3);
    }
    let vocab = tokens.len();

    let a = architecture;
    let s = |v: &str| Value::String(v.to_string());
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(a)),
        (format!("{a}.block_count"), Value::U32(n_layer as u32)),
        (format!("{a}.embedding_length"), Value::U32(dim as u32)),
        (format!("{a}.attention.head_count"), Value::U32(n_head as u32)),
        (format!("{a}.attention.head_count_kv"), Value::U32(n_kv as u32)),
        (format!("{a}.context_length"), Value::U32(512)),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(if a == "qwen2" { "qwen2" } else { "smollm" })),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| s(m)).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32((vocab - 1) as u32)),
    ];

    // A small deterministic generator, so a seed gives the same model everywhere.
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut random = |shape: &[usize], scale: f32| -> Result<QTensor, ModelError> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &device)?;
        Ok(QTensor::quantize(&t, dtype)?)
    };
    let ones = |n: usize| -> Result<QTensor, ModelError> {
        Ok(QTensor::quantize(&Tensor::ones(n, DType::F32, &device)?, GgmlDType::F32)?)
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), random(&[vocab, dim], 0.5)?),
        ("output_norm.weight".into(), ones(dim)?),
    ];
    for i in 0..n_layer {
        let p = format!("blk.{i}");
        tensors.push((format!("{p}.attn_norm.weight"), ones(dim)?));
        tensors.push((format!("{p}.attn_q.weight"), random(&[n_head * head_dim, dim], 0.2)?));
        tensors.push((format!("{p}.attn_k.weight"), random(&[n_kv * head_dim, dim], 0.2)?));
        tensors.push((format!("{p}.attn_v.weight"), random(&[n_kv * head_dim, dim], 0.2)?));
        tensors.push((format!("{p}.attn_output.weight"), random(&[dim, n_head * head_dim], 0.2)?));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(dim)?));
        tensors.push((format!("{p}.ffn_gate.weight"), random(&[ffn, dim], 0.2)?));
        tensors.push((format!("{p}.ffn_up.weight"), random(&[ffn, dim], 0.2)?));
        tensors.push((format!("{p}.ffn_down.weight"), random(&[dim, ffn], 0.2)?));
        if a == "qwen2" {
            // Qwen2 has biases on q, k and v (kept in f32, as real files do).
            for (name, n) in [
                ("attn_q", n_head * head_dim),
                ("attn_k", n_kv * head_dim),
                ("attn_v", n_kv * head_dim),
            ] {
                let bias = Tensor::from_vec(vec![0.05f32; n], n, &device)?;
                tensors
                    .push((format!("{p}.{name}.bias"), QTensor::quantize(&bias, GgmlDType::F32)?));
            }
        }
    }
    let mut file = std::fs::File::create(path).map_err(io)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    Ok(())
}

/// Installs two tiny random-weight models as local cards under `home`: `tiny-llama` (a `llama`
/// GGUF that can generate and score labels, 512-token context) and `tiny-bert` (a 32-wide
/// encoder, 16-token context). Tests use them to run the AI functions end to end in
/// milliseconds through the same loading code as real models.
pub fn install_tiny_models(home: &murakkab_catalog::MurakkabHome) -> Result<(), ModelError> {
    let llama = home.model_dir("tiny-llama");
    std::fs::create_dir_all(&llama).map_err(io)?;
    write_tiny_gguf(&llama.join("model.gguf"), "llama", GgmlDType::F32, 11)?;
    std::fs::write(
        llama.join(murakkab_catalog::CARD_FILE),
        r#"{"id": "tiny-llama", "architecture": "llama", "tasks": ["generate", "score_labels"],
            "files": [{"name": "model.gguf"}], "context_length": 512,
            "eos_tokens": ["<|im_end|>"]}"#,
    )
    .map_err(io)?;
    let bert = home.model_dir("tiny-bert");
    std::fs::create_dir_all(&bert).map_err(io)?;
    write_tiny_bert(&bert)?;
    std::fs::write(
        bert.join(murakkab_catalog::CARD_FILE),
        r#"{"id": "tiny-bert", "architecture": "bert", "embedding_dim": 32,
            "files": [{"name": "model.safetensors"}, {"name": "tokenizer.json"},
                      {"name": "config.json"}]}"#,
    )
    .map_err(io)?;
    Ok(())
}
