//! Our GGUF tokenizers against reference ids from the Hugging Face library (see
//! `scripts/dev/tokenizer_reference.py`), on every model that is pulled.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use candle_core::quantized::gguf_file::Content;
use murakkab_catalog::{ModelStatus, MurakkabHome, find_model};
use murakkab_exec::tokenizer_from_gguf;

fn check(model: &str) {
    let home = MurakkabHome::from_env();
    let card = find_model(&home, model).unwrap();
    if card.status(&home) != ModelStatus::Pulled {
        let required = std::env::var("MURAKKAB_REQUIRE_REAL_MODELS").is_ok_and(|v| v == "1");
        assert!(
            !required || model != "smollm2-135m-instruct",
            "{model} is not pulled; run `murakkab models pull {model}`"
        );
        eprintln!("skipping: {model} is not pulled");
        return;
    }
    let path = home.model_dir(model).join("model.gguf");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let tokenizer = tokenizer_from_gguf(&content).unwrap();

    let data = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join(format!("tests/data/tokenizer_{model}.json"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 300);
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        if ids != expected {
            mismatches.push(format!("{text:?}\n  ours {ids:?}\n  ref  {expected:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{model}: {} of {} texts differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn smollm2_matches_reference_ids() {
    check("smollm2-135m-instruct");
}

#[test]
fn qwen_0_5b_matches_reference_ids() {
    check("qwen2.5-coder-0.5b-instruct");
}
