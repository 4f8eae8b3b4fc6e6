//! Fusion, measured before it is built: does one prompt asking two questions about a row answer
//! like two prompts asking one each, and how much faster is it?
//!
//! `cargo bench --profile dev --bench fusion` (needs `scripts/fetch-data.sh` and the default
//! models pulled; `MURAKKAB_BENCH_ROWS` BBC articles, default 40: headline and the first 600
//! characters of the body). For each generating model it scores the topic (five labels) and the
//! tone (good news / bad news) of every article twice:
//!
//! - **separate**: `ai_classify`'s own prompts, one per question (what runs today);
//! - **fused**: one prompt listing both questions before the text, so the text is read once;
//!   each question's answer is scored as the continuation "1. <label>" or "2. <label>" and
//!   normalised over that question's labels (the number's probability is common to a
//!   question's labels and cancels).
//!
//! Reported: both times, the fused answers' agreement with the separate ones (what a fusion rule
//! would have to keep at or above `murakkab.quality_target`) and both topic accuracies against
//! the labels; then each question alone in the fused prompt's numbered wording, to tell the
//! wording's effect from the second question's.
//!
//! 2026-12-04, 40 articles: Qwen fused 1.54x faster, agreeing with separate on topic 0.625 and
//! tone 0.725, and with the numbered single questions on only 0.725 / 0.525: asking the second
//! question changes the first's answers, not just the wording. So a fusion rule held to the
//! quality target would not fire here (see `benches/prompt_wording.rs` for the wording alone).

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use murakkab::catalog::MurakkabHome;
use murakkab::{AiBackend, ChatBatch};
use murakkab_exec::ModelRuntime;
use murakkab_udfs::{best_label, prompts};

const TOPICS: [&str; 5] = ["business", "entertainment", "politics", "sports", "tech"];
const TONES: [&str; 2] = ["good news", "bad news"];

/// `n` articles spread over the dataset: (headline and lead, topic).
fn articles(n: usize) -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bbc-news.jsonl");
    let text = std::fs::read_to_string(&path).expect("run scripts/fetch-data.sh first");
    let all: Vec<serde_json::Value> =
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step = (all.len() / n.max(1)).max(1);
    all.iter()
        .step_by(step)
        .take(n)
        .map(|v| {
            let lead: String = v["body"].as_str().unwrap_or("").chars().take(600).collect();
            let headline = v["headline"].as_str().unwrap_or("");
            (format!("{headline}. {lead}"), v["topic"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// The fused prompt: both questions, each as `ai_classify` words it, then the text.
fn fused(texts: &[&str], topics: &[String], tones: &[String]) -> ChatBatch {
    let list = |labels: &[String]| labels.iter().map(|l| prompts::fence(l)).collect::<Vec<_>>();
    let separate = prompts::classify(texts, topics);
    ChatBatch {
        shared: format!(
            "Answer two questions about the text.\n1. Classify the text as one of: {}. Answer \
             with one word.\n2. Classify the text as one of: {}. Answer with one of the \
             categories, exactly as written.\nAnswer as the question's number, then the \
             answer.\n\n",
            list(topics).join(", "),
            list(tones).join(", ")
        ),
        rows: separate.rows,
        calibration_row: separate.calibration_row,
        whole_labels: separate.whole_labels,
    }
}

/// One question in the fused prompt's wording: numbered, answered as "1. <label>".
fn numbered_single(texts: &[&str], labels: &[String]) -> ChatBatch {
    let list = labels.iter().map(|l| prompts::fence(l)).collect::<Vec<_>>();
    let separate = prompts::classify(texts, labels);
    ChatBatch {
        shared: format!(
            "Answer a question about the text.\n1. Classify the text as one of: {}. Answer \
             with one of the categories, exactly as written.\nAnswer as the question's number, \
             then the answer.\n\n",
            list.join(", ")
        ),
        rows: separate.rows,
        calibration_row: separate.calibration_row,
        whole_labels: separate.whole_labels,
    }
}

fn main() {
    let n = std::env::var("MURAKKAB_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let runtime = ModelRuntime::new(MurakkabHome::from_env());
    let rows = articles(n);
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let topics: Vec<String> = TOPICS.map(String::from).to_vec();
    let tones: Vec<String> = TONES.map(String::from).to_vec();
    let numbered: Vec<String> = topics
        .iter()
        .map(|l| format!("1. {l}"))
        .chain(tones.iter().map(|l| format!("2. {l}")))
        .collect();
    for model in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        // Load the model and fill the instruction caches outside the timings.
        for batch in [prompts::classify(&texts[..1], &topics), fused(&texts[..1], &topics, &tones)]
        {
            runtime.score_labels(model, &batch, &topics).unwrap();
        }
        let started = Instant::now();
        let topic =
            runtime.score_labels(model, &prompts::classify(&texts, &topics), &topics).unwrap();
        let tone = runtime.score_labels(model, &prompts::classify(&texts, &tones), &tones).unwrap();
        let separate_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let both = runtime.score_labels(model, &fused(&texts, &topics, &tones), &numbered).unwrap();
        let fused_s = started.elapsed().as_secs_f64();
        let one = |labels: &[String]| -> Vec<String> {
            labels.iter().map(|l| format!("1. {l}")).collect()
        };
        let n_topic =
            runtime.score_labels(model, &numbered_single(&texts, &topics), &one(&topics)).unwrap();
        let n_tone =
            runtime.score_labels(model, &numbered_single(&texts, &tones), &one(&tones)).unwrap();
        let (mut nt_agrees, mut nn_agrees, mut n_right, mut fn_topic, mut fn_tone) =
            (0, 0, 0, 0, 0);
        for (i, (_, truth)) in rows.iter().enumerate() {
            let (Ok(a), Ok(b), Ok(c), Ok(d), Ok(f)) =
                (&topic.rows[i], &tone.rows[i], &n_topic.rows[i], &n_tone.rows[i], &both.rows[i])
            else {
                continue;
            };
            nt_agrees += usize::from(best_label(a) == best_label(c));
            nn_agrees += usize::from(best_label(b) == best_label(d));
            n_right += usize::from(topics[best_label(c)] == *truth);
            fn_topic += usize::from(best_label(&f[..TOPICS.len()]) == best_label(c));
            fn_tone += usize::from(best_label(&f[TOPICS.len()..]) == best_label(d));
        }
        println!(
            "numbered single {model}: agrees with separate topic {nt_agrees}, tone {nn_agrees}; \
             topic right {n_right}; fused agrees with numbered single topic {fn_topic}, tone {fn_tone}"
        );
        let (mut topic_agrees, mut tone_agrees, mut separate_right, mut fused_right) = (0, 0, 0, 0);
        for (i, (_, truth)) in rows.iter().enumerate() {
            let (Ok(a), Ok(b), Ok(f)) = (&topic.rows[i], &tone.rows[i], &both.rows[i]) else {
                continue;
            };
            let (fused_topic, fused_tone) =
                (best_label(&f[..TOPICS.len()]), best_label(&f[TOPICS.len()..]));
            topic_agrees += usize::from(fused_topic == best_label(a));
            tone_agrees += usize::from(fused_tone == best_label(b));
            separate_right += usize::from(topics[best_label(a)] == *truth);
            fused_right += usize::from(topics[fused_topic] == *truth);
        }
        let share = |k: usize| k as f64 / rows.len().max(1) as f64;
        println!(
            "fusion {model}: {} articles, separate {separate_s:.1} s, fused {fused_s:.1} s \
             ({:.2}x); fused agrees with separate on topic {:.3}, tone {:.3}; topic accuracy \
             separate {:.3}, fused {:.3}",
            rows.len(),
            separate_s / fused_s,
            share(topic_agrees),
            share(tone_agrees),
            share(separate_right),
            share(fused_right),
        );
    }
}
