//! Model runtime throughput on the real models: MiniLM embeddings/s, decoder prefill and decode
//! tokens/s at batch 1 and 16 (and after a 1,500-token prompt), and label-scoring rows/s with a
//! shared instruction prefix (one-word labels, and `ai_filter`'s statements scored whole).
//!
//! `cargo bench --bench models` (models must be pulled; missing ones are skipped, and
//! `RAYON_NUM_THREADS` sets the thread count). Each figure is the median of several runs.
//! The peer comparison with llama.cpp is `scripts/bench-llama-cpp.sh`, run on the same prompts.
//! `MURAKKAB_BENCH_ONLY=decode,labels` runs only those parts (`embed`, `prefill`, `decode`,
//! `stored`: decode with the weights as stored beside it, `steps`: decode steps alone, `labels`,
//! `statements`: a filter's two statements scored whole, of a short and a longer condition).

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use candle_core::Device;
use murakkab_catalog::{ModelStatus, MurakkabHome, find_model};
use murakkab_exec::{
    GenerateOptions, LanguageModel, ModelRegistry, Sampling, SeqCache, WeightMode,
};

fn sentences() -> Vec<String> {
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("data/uci-sentiment.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    if out.is_empty() {
        out = (0..512)
            .map(|i| {
                format!("Review number {i}: the battery life was fine but the screen cracked.")
            })
            .collect();
    }
    out
}

/// Whether `part` runs (`MURAKKAB_BENCH_ONLY` unset, or listing it).
fn runs(part: &str) -> bool {
    std::env::var("MURAKKAB_BENCH_ONLY")
        .map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

fn median_secs<F: FnMut()>(runs: usize, mut f: F) -> f64 {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2].as_secs_f64()
}

/// Resident and peak resident memory of this process in MB (Linux `/proc/self/status`).
fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report_load(id: &str, before: f64) {
    let (rss, peak) = memory_mb();
    println!(
        "{id}: loaded, resident +{:.0} MB (process {rss:.0} MB, peak {peak:.0} MB)",
        rss - before
    );
}

fn pulled(home: &MurakkabHome, id: &str) -> bool {
    let ok = find_model(home, id).map(|c| c.status(home) == ModelStatus::Pulled).unwrap_or(false);
    if !ok {
        println!("{id}: not pulled, skipped (murakkab models pull {id})");
    }
    ok
}

/// A ChatML prompt of about `tokens` tokens built from review sentences.
fn long_prompt(model: &LanguageModel, texts: &[String], tokens: usize) -> Vec<u32> {
    let mut body = String::new();
    for t in texts {
        body.push_str(t);
        body.push(' ');
        if model.encode(&body).unwrap().len() >= tokens - 12 {
            break;
        }
    }
    model.encode(&format!("<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n")).unwrap()
}

fn bench_decoder(home: &MurakkabHome, id: &str, texts: &[String]) {
    let before = memory_mb().0;
    let model = ModelRegistry::global().language_model(home, id).unwrap();
    report_load(id, before);
    let empty = model.prefix_cache(&[]).unwrap();
    let prompt = long_prompt(&model, texts, 250);
    // A summary chunk's size (`ai_summarize_agg` packs up to 2,048 tokens): attention's share
    // grows with the square of the length.
    let long = long_prompt(&model, texts, 1500);
    let d = model.decoder();
    let cases = [(1usize, &prompt), (16, &prompt), (1, &long), (4, &long)];
    for (batch, prompt) in cases.into_iter().filter(|_| runs("prefill")) {
        let prompts = vec![prompt.as_slice(); batch];
        let caches = vec![&empty; batch];
        let s = median_secs(3, || {
            d.forward(&prompts, &caches, false).unwrap();
        });
        println!(
            "{id}: prefill batch {batch:>2}: {:>8.1} tok/s ({} tokens/prompt)",
            (batch * prompt.len()) as f64 / s,
            prompt.len()
        );
    }
    if runs("decode") {
        let short: Vec<Vec<u32>> = (0..16)
            .map(|i| {
                model
                    .encode(&format!(
                        "<|im_start|>user\nWrite a story number {i}.<|im_end|>\n<|im_start|>assistant\n"
                    ))
                    .unwrap()
            })
            .collect();
        // The same weights as stored in the file (Q4_1, Q5_0: candle's scalar dot product), side by
        // side with the re-quantized ones the runtime uses, for what the conversion gains
        // (part `stored`).
        let as_stored = runs("stored").then(|| {
            let card = find_model(home, id).unwrap();
            let path = home.model_dir(id).join("model.gguf");
            LanguageModel::load(id, &path, &card.eos_tokens, &Device::Cpu, WeightMode::BothAsStored)
                .unwrap()
        });
        for batch in [1usize, 16] {
            let rate = decode_rate(&model, &empty, &short[..batch]);
            let stored = match &as_stored {
                Some(m) => {
                    let stored = decode_rate(m, &empty, &short[..batch]);
                    format!(" (weights as stored: {stored:.1} tok/s, {:.2}x)", rate / stored)
                }
                None => String::new(),
            };
            println!("{id}: decode  batch {batch:>2}: {rate:>8.1} tok/s{stored}");
        }
        // After a summary chunk's worth of prompt, each step attends over ~1,500 keys per row.
        let long: Vec<Vec<u32>> =
            (0..8).map(|i| long_prompt(&model, &texts[i * 40..], 1500)).collect();
        for batch in [1usize, 8] {
            let rate = decode_rate(&model, &empty, &long[..batch]);
            println!(
                "{id}: decode  batch {batch:>2} after ~1,500 prompt tokens: {rate:>8.1} tok/s"
            );
        }
    }
    if runs("steps") {
        bench_steps(&model, id, &empty);
    }
    if runs("labels") {
        bench_scoring(&model, id, texts, &LABELS);
    }
    if runs("statements") {
        bench_scoring(&model, id, texts, &STATEMENTS);
        bench_scoring(&model, id, texts, &LONG_STATEMENTS);
    }
    let (rss, peak) = memory_mb();
    println!("{id}: after its runs: process {rss:.0} MB, peak {peak:.0} MB");
}

/// One label-scoring case of [`bench_scoring`].
struct Scoring {
    name: &'static str,
    instruction: &'static str,
    /// What follows each row's text, up to the answer.
    row_end: &'static str,
    labels: [&'static str; 2],
    /// Every token of each label scored (`ai_filter`'s statements), or up to the token that
    /// tells them apart (`ai_classify`).
    whole: bool,
}

/// `ai_classify`'s case: one-word labels after a question.
const LABELS: Scoring = Scoring {
    name: "label scoring",
    instruction: "Is the sentiment of this review positive or negative? Answer with one word.\n\nReview:\n",
    row_end: "<|im_end|>\n<|im_start|>assistant\n",
    labels: ["positive", "negative"],
    whole: false,
};

/// `ai_filter`'s case: the text described, then a condition and its negation scored whole
/// (every token after the start they share, so most positions need the log-sum-exp over the
/// whole vocabulary).
const STATEMENTS: Scoring = Scoring {
    name: "statement scoring",
    instruction: "Describe the text in one sentence.\n\n",
    row_end: "\n<|im_end|>\n<|im_start|>assistant\n",
    labels: ["The review is negative", "The review is not negative"],
    whole: true,
};

/// `ai_filter`'s case with the statements of a longer condition, as `filter_labels` words them:
/// several tokens of each after the start they share, where each row's statements run as
/// branches of its pass (before, as a second pass over every row's copied cache).
const LONG_STATEMENTS: Scoring = Scoring {
    name: "long statement scoring",
    instruction: "Describe the text in one sentence.\n\n",
    row_end: "\n<|im_end|>\n<|im_start|>assistant\n",
    labels: [
        "The review reports a problem with the product",
        "The review does not report a problem with the product",
    ],
    whole: true,
};

/// Label scoring: a shared instruction, then each of 64 rows' text, two labels.
fn bench_scoring(model: &LanguageModel, id: &str, texts: &[String], case: &Scoring) {
    let prefix_tokens = model.encode(&format!("<|im_start|>user\n{}", case.instruction)).unwrap();
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .take(64)
        .map(|t| model.encode(&format!("{t}{}", case.row_end)).unwrap())
        .collect();
    let labels: Vec<Vec<u32>> = case.labels.iter().map(|l| model.encode(l).unwrap()).collect();
    let s = median_secs(3, || {
        let prefix = model.prefix_cache(&prefix_tokens).unwrap();
        if case.whole {
            model.score_whole_labels(&prefix, &rows, &labels).unwrap();
        } else {
            model.score_labels(&prefix, &rows, &labels).unwrap();
        }
    });
    println!(
        "{id}: {}: {:>8.1} rows/s ({} rows, prefix {} tokens, labels of {} and {} tokens)",
        case.name,
        rows.len() as f64 / s,
        rows.len(),
        prefix_tokens.len(),
        labels[0].len(),
        labels[1].len()
    );
}

/// Decode steps alone (no prompt pass, no sampling): 64 steps of 1 to 64 rows on a 40-token
/// prompt, and 32 steps of 1 and 8 rows on a 1,500-token one. From `WIDE_STEP_ROWS` rows a step reads the AMX tiles where the CPU has them;
/// `MURAKKAB_AMX=0` measures the quantized kernel at every width.
fn bench_steps(model: &LanguageModel, id: &str, empty: &SeqCache) {
    let d = model.decoder();
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let (_, _, caches) = d.forward(&[&prompt], &[empty], false).unwrap();
    for rows in [1usize, 4, 8, 16, 32, 64] {
        let s = median_secs(3, || {
            let mut batch = d.batch_cache(&vec![&caches[0]; rows], 64).unwrap();
            for step in 0..64u32 {
                let tokens = vec![200 + step; rows];
                d.decode_batch_step(&tokens, &mut batch).unwrap();
            }
        });
        println!("{id}: decode steps, {rows:>2} rows: {:>6.2} ms/step", s * 1000.0 / 64.0);
    }
    // After a summary chunk's worth of prompt: each step attends over ~1,500 keys per row.
    let long: Vec<u32> = (0..1500).map(|i| 100 + i % 1000).collect();
    let (_, _, long_caches) = d.forward(&[&long], &[empty], false).unwrap();
    for rows in [1usize, 8] {
        let s = median_secs(3, || {
            let mut batch = d.batch_cache(&vec![&long_caches[0]; rows], 32).unwrap();
            for step in 0..32u32 {
                d.decode_batch_step(&vec![200 + step; rows], &mut batch).unwrap();
            }
        });
        println!(
            "{id}: decode steps, {rows:>2} rows after 1,500 tokens: {:>6.2} ms/step",
            s * 1000.0 / 32.0
        );
    }
}

/// Decode tokens/s generating 32 tokens per prompt: (prefill + 32 steps) − (prefill + 1 step).
fn decode_rate(model: &LanguageModel, empty: &SeqCache, prompts: &[Vec<u32>]) -> f64 {
    let options = GenerateOptions {
        max_tokens: 32,
        sampling: Sampling::Seeded { temperature: 1.0, seed: 1 },
    };
    let one = GenerateOptions { max_tokens: 1, ..options.clone() };
    let mut produced = 0usize;
    let full = median_secs(3, || {
        produced = model.generate(empty, prompts, &options).unwrap().iter().map(|o| o.len()).sum();
    });
    let base = median_secs(3, || {
        model.generate(empty, prompts, &one).unwrap();
    });
    let steps = produced.saturating_sub(prompts.len()).max(1);
    steps as f64 / (full - base).max(1e-9)
}

#[allow(unsafe_code)]
fn main() {
    // SAFETY: first thing in main, before any thread starts.
    unsafe { murakkab::init_model_threads(Some(2)) };
    let home = MurakkabHome::from_env();
    let texts = sentences();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("model benchmarks, threads: {threads}");
    if pulled(&home, "all-minilm-l6-v2") && runs("embed") {
        let before = memory_mb().0;
        let enc = ModelRegistry::global().encoder(&home, "all-minilm-l6-v2").unwrap();
        report_load("all-minilm-l6-v2", before);
        let batch: Vec<&str> = texts.iter().take(64).map(|s| s.as_str()).collect();
        let s = median_secs(5, || {
            enc.embed(&batch).unwrap();
        });
        println!("all-minilm-l6-v2: embeddings batch 64: {:>8.1} texts/s", 64.0 / s);
    }
    for id in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        if pulled(&home, id) {
            bench_decoder(&home, id, &texts);
        }
    }
}
