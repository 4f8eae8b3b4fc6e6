//! Byte-level BPE tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`), for the `gpt2`
//! tokenizer model used by SmolLM2 and Qwen.
//!
//! GGUF files carry the vocabulary and merges but not the pre-tokenizer, only its name
//! (`tokenizer.ggml.pre`). The pipeline for each name mirrors the model's own `tokenizer.json`:
//! `qwen2` splits with the Qwen2 regex then maps bytes (NFC first); `smollm` splits digits one by
//! one then applies GPT-2's byte-level regex. Tests compare our ids with reference ids produced by
//! the Hugging Face library on hundreds of fixed texts (`exec/tests/data/tokenizer_*.json`).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::ModelError;

/// Qwen2's split: contractions, letters, single digits, punctuation runs, newlines, spaces.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split: as Qwen2's but digits in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token type of control tokens (`<|im_end|>`), which must never be split.
const TOKEN_TYPE_CONTROL: u32 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER: u32 = 4;

fn load_err(detail: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(detail.into())
}

fn meta<'a>(content: &'a Content, key: &str) -> Result<&'a Value, ModelError> {
    content.metadata.get(key).ok_or_else(|| load_err(format!("the GGUF file has no {key}")))
}

fn strings(content: &Content, key: &str) -> Result<Vec<String>, ModelError> {
    meta(content, key)?
        .to_vec()
        .map_err(|e| load_err(format!("{key}: {e}")))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| load_err(format!("{key}: {e}"))))
        .collect()
}

fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::U8(x) => Some(u32::from(*x)),
        Value::I8(x) => u32::try_from(*x).ok(),
        Value::U16(x) => Some(u32::from(*x)),
        Value::I16(x) => u32::try_from(*x).ok(),
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

/// GPT-2's map from bytes to printable characters, in which byte-level vocabularies are spelled.
pub(crate) fn bytes_to_unicode() -> HashMap<u8, char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(u32::from('¡')..=u32::from('¬'));
    printable.extend(u32::from('®')..=u32::from('ÿ'));
    let mut map = HashMap::new();
    let mut extra = 0;
    for b in 0..=255u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(b as u8, char::from_u32(c).unwrap_or('?'));
    }
    map
}

/// Builds the tokenizer of a `gpt2`-type GGUF.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, ModelError> {
    let kind =
        meta(content, "tokenizer.ggml.model")?.to_string().map_err(|e| load_err(e.to_string()))?;
    if kind != "gpt2" {
        return Err(load_err(format!(
            "tokenizer model '{kind}' is not supported; supported: gpt2 (byte-level BPE)"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let spell = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spell.values().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Vocab::default();
    for (i, token) in tokens.iter().enumerate() {
        // Tokens are stored in GPT-2's byte alphabet; anything else is re-spelled byte by byte.
        let spelled = if in_alphabet(token) {
            token.clone()
        } else {
            token.bytes().map(|b| spell[&b]).collect()
        };
        vocab.entry(spelled).or_insert(i as u32);
    }
    let merges: Merges = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| load_err(format!("building BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = meta(content, "tokenizer.ggml.pre")
        .ok()
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "default".to_string());
    let split = |regex: &str| -> Result<PreTokenizerWrapper, ModelError> {
        Ok(Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| load_err(e.to_string()))?
            .into())
    };
    match pre.as_str() {
        "qwen2" | "deepseek-r1-qwen" => {
            tokenizer.with_normalizer(Some(NFC)).map_err(|e| load_err(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split(QWEN2_SPLIT)?,
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                split(LLAMA3_SPLIT)?,
                ByteLevel::new(false, true, false).into(),
            ])));
        }
        "smollm" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        _ => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let types: Vec<u32> = meta(content, "tokenizer.ggml.token_type")
        .ok()
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| as_u32(t).unwrap_or(1)).collect())
        .unwrap_or_default();
    // Control tokens are special (never split, skipped when decoding); user tokens are plain.
    let (mut specials, mut users) = (Vec::new(), Vec::new());
    for (token, ty) in tokens.iter().zip(&types) {
        if !in_alphabet(token) {
            continue;
        }
        match *ty {
            TOKEN_TYPE_CONTROL => {
                specials.push(AddedToken::from(token.clone(), true).normalized(false))
            }
            TOKEN_TYPE_USER => users.push(AddedToken::from(token.clone(), false).normalized(false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(specials).map_err(|e| load_err(e.to_string()))?;
    if !users.is_empty() {
        tokenizer.add_tokens(users).map_err(|e| load_err(e.to_string()))?;
    }
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let map = bytes_to_unicode();
        let chars: std::collections::HashSet<char> = map.values().copied().collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(map[&b' '], '\u{120}');
        assert_eq!(map[&b'a'], 'a');
    }
}
