//! Prompt wording, measured: how often each wording of `ai_classify` / `ai_filter`'s
//! instruction gets the label right, per model, and how often SmolLM2 agrees with Qwen under it
//! (what the optimizer's model choice needs to be high).
//!
//! `cargo bench --profile dev --bench prompt_wording` (needs `scripts/fetch-data.sh` and the
//! default models pulled; `MURAKKAB_BENCH_ROWS` rows per dataset, default 120). Datasets: UCI
//! sentiment (positive / negative), BBC headlines (five topics), SpamAssassin subjects (a
//! filter: yes / no). Wordings:
//!
//! - **plain**: "Classify the text as one of: a, b. Answer with one word." (ai_classify v4,
//!   ai_filter v3), labels scored as the bare words;
//! - **numbered**: the same question as item 1 of a numbered list, "Answer as the question's
//!   number, then the answer.", labels scored as "1. <label>" (the wording the fusion bench's
//!   fused prompt uses; it answered topics better there);
//! - **yes-no** (filters only): `ai_filter`'s wording until 2026-12-05, "Classify the text as
//!   one of: yes (<condition>), no (otherwise).", the words `yes` and `no` scored, uncalibrated
//!   (plain is now the condition and its negation scored as statements, calibrated).
//! - **unclosed**: the plain wording without the `</text>` after each row (the chat turn's end
//!   closes the block), 3 tokens fewer per row.
//!
//! Each wording after plain also reports how often each model's answers agree with its plain
//! ones.
//!
//! A fourth dataset, Fodors / Zagat restaurant pairs worded as the join workflow words them
//! (half gold matches), asks whether Qwen can judge the semantic join at all.
//!
//! 2026-12-04, 120 rows each, accuracy smollm2 / qwen (smollm2's agreement with qwen):
//! UCI plain 0.867 / 0.917 (0.867), numbered 0.808 / 0.892 (0.867); BBC headlines plain
//! 0.342 / 0.408 (0.167), numbered 0.375 / 0.475 (0.500); spam plain 0.450 / 0.692 (0.375),
//! numbered 0.308 / 0.692 (0.033), calibrated 0.458 / 0.333 (0.608); restaurant pairs plain
//! 0.550 / 0.500 (0.783), numbered 0.500 / 0.500, calibrated 0.525 / 0.525. Numbered is not
//! better across the board (worse on UCI, far worse for smollm2 on spam) and slower (the "1. "
//! tokens are scored too); calibration halves Qwen's spam accuracy; no wording makes either
//! model a judge of restaurant pairs (Qwen says "no" to every pair). The functions keep the
//! plain wording.
//!
//! 2026-12-04 (later), 200 rows each, **unclosed** against plain, accuracy smollm2 / qwen:
//! UCI 0.825 / 0.925 against 0.890 / 0.925 (qwen agrees with its plain answers on 0.950);
//! BBC 0.315 / 0.465 against 0.350 / 0.445 (0.925); spam 0.445 / 0.695 against 0.530 / 0.695;
//! smollm2's agreement with qwen on UCI fell from 0.905 to 0.850. Qwen would read 13% fewer
//! tokens per UCI row at no loss, but the smaller model, which the optimizer weighs as a
//! cheaper plan, loses 4–9 points; the functions keep the closing tag.

//! 2026-12-05, 160 rows each, filters, plain (statements) against yes-no, accuracy smollm2 /
//! qwen (AUC of the first label's score, smollm2 / qwen): UCI 'The review is negative' 0.731 /
//! 0.844 (0.897 / 0.944) against 0.344 / 0.506 (0.278 / 0.071: both ranked the positive
//! reviews above the negative ones); 'The review is positive' 0.844 / 0.812 (0.948 / 0.957)
//! against 0.675 / 0.762 (0.734 / 0.962); BBC headlines 'The headline is about sport' 0.744 /
//! 0.750 (0.687 / 0.614) against 0.394 / 0.744 (0.409 / 0.691), both wordings answering "no" to
//! nearly every headline with qwen; spam subjects 0.575 / 0.456 (0.633 / 0.421) against 0.494
//! / 0.700 (0.488 / 0.728, qwen "no" to every subject). Statements cost 1.3–2.5x the yes-no
//! scoring time (the labels are 4–6 tokens). Other instructions before the statements, tried
//! on the same rows: "What kind of text is this, and what is it about? Answer in one
//! sentence." sport AUC 0.769 / 0.772 but UCI 'negative' 0.700 / 0.662; none, UCI 0.694 / 0.544.
//! The functions use plain.

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
            Self::Condition(c) => prompts::filter_labels(c),
        }
    }

    /// The instruction as the functions word it today.
    fn plain(&self, texts: &[&str]) -> ChatBatch {
        match self {
            Self::Labels(l) => prompts::classify(texts, l),
            Self::Condition(_) => prompts::filter(texts),
        }
    }

    /// `ai_filter`'s wording before the statements (v3): "Classify the text as one of: yes
    /// (<condition>), no (otherwise).", the words `yes` and `no` scored, uncalibrated. `None` for
    /// a label question.
    fn yes_no(&self, texts: &[&str]) -> Option<ChatBatch> {
        let Self::Condition(c) = self else { return None };
        Some(ChatBatch {
            shared: format!(
                "Classify the text as one of: yes ({}), no (otherwise). Answer with one word.\n\n{}",
                prompts::fence(c),
                prompts::BLOCK_OPEN
            ),
            rows: texts.iter().map(|t| format!("{}\n</text>", prompts::fence(t))).collect(),
            calibration_row: None,
            whole_labels: false,
        })
    }

    /// The plain wording without the closing tag after each row's text (the chat turn's end
    /// closes it): 3 fewer tokens per row.
    fn unclosed(&self, texts: &[&str]) -> ChatBatch {
        let plain = self.plain(texts);
        let cut = |r: &String| r.trim_end_matches("\n</text>").to_string();
        ChatBatch {
            rows: plain.rows.iter().map(cut).collect(),
            calibration_row: plain.calibration_row.as_ref().map(cut),
            ..plain
        }
    }

    /// The same question as item 1 of a numbered list.
    fn numbered(&self, texts: &[&str]) -> ChatBatch {
        let plain = self.plain(texts);
        let question = plain.shared.trim_end_matches(prompts::BLOCK_OPEN).trim_end();
        ChatBatch {
            shared: format!(
                "Answer a question about the text.\n1. {question}\nAnswer as the question's \
                 number, then the answer.\n\n{}",
                prompts::BLOCK_OPEN
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
    let pairs = restaurant_pairs(n);
    let ((uci_t, uci_y), (bbc_t, bbc_y), (spam_t, spam_y)) = (unzip(uci), unzip(bbc), unzip(spam));
    vec![
        Dataset {
            name: "uci sentiment",
            texts: uci_t.clone(),
            truth: uci_y.clone(),
            question: Question::Labels(vec!["positive".into(), "negative".into()]),
        },
        Dataset {
            name: "bbc headline topics",
            texts: bbc_t.clone(),
            truth: bbc_y.clone(),
            question: Question::Labels(topics),
        },
        Dataset {
            name: "uci negative filter",
            texts: uci_t.clone(),
            truth: uci_y.iter().map(|&y| 1 - y).collect(),
            question: Question::Condition("The review is negative".into()),
        },
        Dataset {
            name: "uci positive filter",
            texts: uci_t,
            truth: uci_y,
            question: Question::Condition("The review is positive".into()),
        },
        Dataset {
            name: "bbc sport filter",
            texts: bbc_t.clone(),
            truth: bbc_y.iter().map(|&y| usize::from(y != 3)).collect(),
            question: Question::Condition("The headline is about sport".into()),
        },
        Dataset {
            name: "spam subjects",
            texts: spam_t,
            truth: spam_y,
            question: Question::Condition("The email is unsolicited spam".into()),
        },
        Dataset {
            name: "restaurant pairs",
            texts: pairs.iter().map(|(t, _)| t.clone()).collect(),
            truth: pairs.iter().map(|(_, y)| *y).collect(),
            question: Question::Condition("A and B are the same restaurant".into()),
        },
    ]
}

/// Fodors / Zagat record pairs worded as the join workflow words them: each gold match (yes)
/// and the same Fodors record with the next match's Zagat record (no), `n` in all.
fn restaurant_pairs(n: usize) -> Vec<(String, usize)> {
    let read = |file: &str| -> Vec<serde_json::Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(file);
        let text = std::fs::read_to_string(&path).expect("run scripts/fetch-data.sh first");
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let by_id =
        |rows: Vec<serde_json::Value>| -> std::collections::HashMap<i64, serde_json::Value> {
            rows.into_iter().filter_map(|v| Some((v["id"].as_i64()?, v))).collect()
        };
    let (fodors, zagat) =
        (by_id(read("restaurants-fodors.jsonl")), by_id(read("restaurants-zagat.jsonl")));
    let matches: Vec<(i64, i64)> = read("restaurants-matches.jsonl")
        .iter()
        .filter_map(|m| Some((m["fodors_id"].as_i64()?, m["zagat_id"].as_i64()?)))
        .collect();
    let words = |v: &serde_json::Value| {
        let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
        format!("{}, {}, {}", field("name"), field("addr"), field("city"))
    };
    let mut pairs = Vec::new();
    for (i, (f, z)) in matches.iter().enumerate().take(n / 2) {
        let other = matches[(i + 1) % matches.len()].1;
        for (z, truth) in [(*z, 0), (other, 1)] {
            if let (Some(a), Some(b)) = (fodors.get(f), zagat.get(&z)) {
                pairs.push((format!("A: {}. B: {}.", words(a), words(b)), truth));
            }
        }
    }
    pairs
}

/// How often a row whose right answer is the first label scores the first label higher than a
/// row whose right answer is the second (ties count half): whether the scores rank the rows
/// right even where the 0.5 threshold cuts them wrong.
fn ranking_auc(first: &[f32], truth: &[usize]) -> f64 {
    let (mut above, mut pairs) = (0.0, 0.0);
    for (a, _) in first.iter().zip(truth).filter(|(_, t)| **t == 0) {
        for (b, _) in first.iter().zip(truth).filter(|(_, t)| **t == 1) {
            pairs += 1.0;
            above += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    if pairs == 0.0 { f64::NAN } else { above / pairs }
}

fn main() {
    let n = std::env::var("MURAKKAB_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let runtime = ModelRuntime::new(MurakkabHome::from_env());
    let only = std::env::var("MURAKKAB_BENCH_ONLY").unwrap_or_default();
    let wanted = std::env::var("MURAKKAB_BENCH_WORDINGS").unwrap_or_default();
    for data in datasets(n).into_iter().filter(|d| only.is_empty() || only.contains(d.name)) {
        let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
        let labels = data.question.labels();
        let numbered: Vec<String> = labels.iter().map(|l| format!("1. {l}")).collect();
        let yes_no: Vec<String> = vec!["yes".into(), "no".into()];
        let wordings = [
            Some(("plain", data.question.plain(&texts), &labels)),
            Some(("numbered", data.question.numbered(&texts), &numbered)),
            Some(("unclosed", data.question.unclosed(&texts), &labels)),
            data.question.yes_no(&texts).map(|b| ("yes-no", b, &yes_no)),
        ];
        let mut plain_answers: Vec<Vec<Option<usize>>> = Vec::new();
        let wordings = wordings.into_iter().flatten().filter(|(w, _, _)| {
            *w == "plain" || wanted.is_empty() || wanted.split(',').any(|x| x == *w)
        });
        for (wording, batch, scored) in wordings {
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
                    " {model} accuracy {:.3} ({seconds:.1} s",
                    right.count() as f64 / texts.len().max(1) as f64
                ));
                if scored.len() == 2 {
                    let first: Vec<f32> =
                        out.rows.iter().map(|r| r.as_ref().map_or(0.5, |p| p[0])).collect();
                    let yes = picked.iter().filter(|p| **p == Some(0)).count();
                    line.push_str(&format!(
                        ", AUC {:.3}, first label {yes}",
                        ranking_auc(&first, &data.truth)
                    ));
                }
                if let Some(plain) = plain_answers.get(answers.len()) {
                    let same = plain.iter().zip(&picked).filter(|(a, b)| a == b).count();
                    let share = same as f64 / texts.len().max(1) as f64;
                    line.push_str(&format!(", agrees with plain {share:.3}"));
                }
                line.push_str(");");
                answers.push(picked);
            }
            let agree = answers[0].iter().zip(&answers[1]).filter(|(a, b)| a == b).count();
            line.push_str(&format!(
                " smollm2 agrees with qwen {:.3}",
                agree as f64 / texts.len().max(1) as f64
            ));
            println!("{line}");
            if plain_answers.is_empty() {
                plain_answers = answers;
            }
        }
    }
}
