//! Prompt wording, measured: how often each wording of `ai_classify` / `ai_filter`'s
//! instruction gets the label right, per model, and how often SmolLM2 agrees with Qwen under it
//! (what the optimizer's model choice needs to be high).
//!
//! `cargo bench --profile dev --bench prompt_wording` (needs `scripts/fetch-data.sh` and the
//! default models pulled; `MURAKKAB_BENCH_ROWS` rows per dataset, default 120). Datasets: UCI
//! sentiment (positive / negative), BBC headlines (five topics), SpamAssassin subjects (a
//! filter: yes / no). Wordings:
//!
//! - **plain**: "Classify the text as one of: a, b. Answer with one word." (ai_classify v3,
//!   ai_filter v2), labels scored as the bare words;
//! - **numbered**: the same question as item 1 of a numbered list, "Answer as the question's
//!   number, then the answer.", labels scored as "1. <label>" (the wording the fusion bench's
//!   fused prompt uses; it answered topics better there).
//!
//! 2026-12-04, 120 rows each, accuracy smollm2 / qwen (smollm2's agreement with qwen):
//! UCI plain 0.867 / 0.917 (0.867), numbered 0.808 / 0.892 (0.867); BBC headlines plain
//! 0.342 / 0.408 (0.167), numbered 0.375 / 0.475 (0.500); spam plain 0.450 / 0.692 (0.375),
//! numbered 0.308 / 0.692 (0.033). Numbered is not better across the board (worse on UCI, far
//! worse for smollm2 on spam) and slower (the "1. " tokens are scored too), so the functions
//! keep the plain wording.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use murakkab::catalog::MurakkabHome;
use murakkab::{AiBackend, ChatBatch};
use murakkab_exec::ModelRuntime;
use murakkab_udfs::{best_label, prompts};

const MODELS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// One labelled dataset: rows' texts and right labels, and the question asked.
struct Dataset {
    name: &'static str,
    texts: Vec<String>,
    truth: Vec<usize>,
    question: Question,
}

enum Question {
    Labels(Vec<String>),
    Condition(String),
}

impl Question {
    /// The bare labels the model picks from.
    fn labels(&self) -> Vec<String> {
        match self {
            Self::Labels(l) => l.clone(),
            Self::Condition(_) => prompts::FILTER_LABELS.map(String::from).to_vec(),
        }
    }

    /// The instruction as the functions word it today.
    fn plain(&self, texts: &[&str]) -> ChatBatch {
        match self {
            Self::Labels(l) => prompts::classify(texts, l),
            Self::Condition(c) => prompts::filter(texts, c),
        }
    }

    /// The same question as item 1 of a numbered list.
    fn numbered(&self, texts: &[&str]) -> ChatBatch {
        let plain = self.plain(texts);
        let question = plain.shared.trim_end();
        ChatBatch {
            shared: format!(
                "Answer a question about the text.\n1. {question}\nAnswer as the question's \
                 number, then the answer.\n\n"
            ),
            ..plain
        }
    }
}

/// `n` rows spread over `file`'s lines, mapped by `row` (skipping rows it rejects).
fn rows<T>(file: &str, n: usize, row: impl Fn(&serde_json::Value) -> Option<T>) -> Vec<T> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(file);
    let text = std::fs::read_to_string(&path).expect("run scripts/fetch-data.sh first");
    let all: Vec<T> =
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).filter_map(|v| row(&v)).collect();
    let step = (all.len() / n.max(1)).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

fn datasets(n: usize) -> Vec<Dataset> {
    let topics: Vec<String> =
        ["business", "entertainment", "politics", "sport", "tech"].map(String::from).to_vec();
    let uci = rows("uci-sentiment.jsonl", n, |v| {
        Some((v["text"].as_str()?.to_string(), usize::from(v["label"].as_i64()? == 0)))
    });
    let bbc = rows("bbc-news.jsonl", n, |v| {
        let topic = v["topic"].as_str()?.replace("sports", "sport");
        Some((v["headline"].as_str()?.to_string(), topics.iter().position(|t| *t == topic)?))
    });
    let spam = rows("spam-assassin.jsonl", n, |v| {
        let subject = v["subject"].as_str()?;
        let spam = v["spam"].as_bool()?;
        (!subject.is_empty()).then(|| (subject.to_string(), usize::from(!spam)))
    });
    let unzip = |r: Vec<(String, usize)>| r.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
    let ((uci_t, uci_y), (bbc_t, bbc_y), (spam_t, spam_y)) = (unzip(uci), unzip(bbc), unzip(spam));
    vec![
        Dataset {
            name: "uci sentiment",
            texts: uci_t,
            truth: uci_y,
            question: Question::Labels(vec!["positive".into(), "negative".into()]),
        },
        Dataset {
            name: "bbc headline topics",
            texts: bbc_t,
            truth: bbc_y,
            question: Question::Labels(topics),
        },
        Dataset {
            name: "spam subjects",
            texts: spam_t,
            truth: spam_y,
            question: Question::Condition("The email is unsolicited spam".into()),
        },
    ]
}

fn main() {
    let n = std::env::var("MURAKKAB_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let runtime = ModelRuntime::new(MurakkabHome::from_env());
    for data in datasets(n) {
        let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
        let labels = data.question.labels();
        let numbered: Vec<String> = labels.iter().map(|l| format!("1. {l}")).collect();
        for (wording, batch, scored) in [
            ("plain", data.question.plain(&texts), &labels),
            ("numbered", data.question.numbered(&texts), &numbered),
        ] {
            let mut answers = Vec::new();
            let mut line = format!("{} ({} rows), {wording}:", data.name, texts.len());
            for model in MODELS {
                let started = Instant::now();
                let out = runtime.score_labels(model, &batch, scored).unwrap();
                let seconds = started.elapsed().as_secs_f64();
                let picked: Vec<Option<usize>> =
                    out.rows.iter().map(|r| r.as_ref().ok().map(|p| best_label(p))).collect();
                let right = picked.iter().zip(&data.truth).filter(|(p, t)| **p == Some(**t));
                line.push_str(&format!(
                    " {model} accuracy {:.3} ({seconds:.1} s);",
                    right.count() as f64 / texts.len().max(1) as f64
                ));
                answers.push(picked);
            }
            let agree = answers[0].iter().zip(&answers[1]).filter(|(a, b)| a == b).count();
            line.push_str(&format!(
                " smollm2 agrees with qwen {:.3}",
                agree as f64 / texts.len().max(1) as f64
            ));
            println!("{line}");
        }
    }
}
