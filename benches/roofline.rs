//! Roofline: how close the decoders run to what this machine's memory and arithmetic allow.
//!
//! Decode at batch 1 reads every weight once per token, so its ceiling is memory bandwidth
//! divided by the bytes of weights read per token (`GgufDecoder::decode_weight_bytes`: the
//! quantized copy decode uses, after re-quantization). Prefill is matrix multiplication, about
//! 2 x parameters FLOPs per token, so its ceiling is the matrix-product rate over the block
//! weights (the embedding table is a lookup): the AMX kernel's where the CPU has AMX, else f32
//! GEMM. Both ceilings are measured here, in the same run: STREAM's copy kernel (256 MB arrays, on every model
//! thread) and a 1024^3 candle matmul. Decode speed is `murakkab calibrate`'s (batch 1, with
//! the logits); prefill is one forward pass of 16 prompts of 256 tokens, nothing cached.
//!
//! `cargo bench --profile dev --bench roofline` (pulled decoders are measured, others skipped;
//! `RAYON_NUM_THREADS` sets the thread count). Writes `<target>/bench-report/roofline.{json,md}`.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use murakkab::catalog::{ModelStatus, MurakkabHome, all_models};
use murakkab_catalog::Architecture;
use murakkab_exec::{LanguageModel, ModelRegistry};

fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Bytes per second of STREAM's copy kernel over arrays far larger than the caches, split over
/// `threads`. `copy_from_slice` is libc's memcpy, so the probe is as fast as this machine's
/// memory whatever the optimisation level this file is built at.
fn memory_bandwidth(threads: usize) -> f64 {
    const N: usize = 64 << 20; // 64 Mi f32 = 256 MB per array
    let b = vec![1.0f32; N];
    let mut a = vec![0.0f32; N];
    let chunk = N.div_ceil(threads);
    let runs = (0..7)
        .map(|_| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for (a, b) in a.chunks_mut(chunk).zip(b.chunks(chunk)) {
                    s.spawn(move || a.copy_from_slice(b));
                }
            });
            // One array read, one written.
            (2 * N * 4) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    std::hint::black_box(&a);
    median(runs)
}

/// Prompt tokens per second through the decoder's blocks: 16 prompts of about 256 tokens in one
/// forward pass with nothing cached (what a chunk of long rows costs), median of 3.
fn prefill_rate(model: &LanguageModel) -> (f64, usize) {
    let sentence = "The battery life was fine but the screen cracked within a week. ";
    let prompt = model.encode(&sentence.repeat(20)).unwrap();
    let prompt = &prompt[..prompt.len().min(256)];
    let empty = model.prefix_cache(&[]).unwrap();
    let prompts = vec![prompt; 16];
    let caches = vec![&empty; 16];
    let runs = (0..3)
        .map(|_| {
            let started = Instant::now();
            model.decoder().forward(&prompts, &caches, false).unwrap();
            (16 * prompt.len()) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    (median(runs), prompt.len())
}

/// FLOP/s of a 1024 x 1024 x 1024 f32 matmul through candle (the kernels prefill uses).
fn gemm_peak() -> f64 {
    const N: usize = 1024;
    let x = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu).unwrap();
    let y = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu).unwrap();
    x.matmul(&y).unwrap(); // warm up the thread pool
    let runs = (0..7)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(x.matmul(&y).unwrap());
            (2 * N * N * N) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    median(runs)
}

/// FLOP/s of the AMX kernel on the largest product of a Qwen2.5-0.5B prompt pass (512 tokens ×
/// the gated 2×4864×896 MLP projection with its SiLU epilogue), where this CPU has AMX.
fn amx_peak() -> Option<f64> {
    use murakkab_exec::amx_gemm::{AmxMatrix, TiledActivations};
    const M: usize = 512;
    const K: usize = 896;
    const F: usize = 4864;
    let values =
        |len: usize| -> Vec<f32> { (0..len).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect() };
    let gate = values(F * K);
    let matrix = AmxMatrix::gated_from_f32(&gate, &gate, F, K)?;
    let acts = TiledActivations::from_f32(&values(M * K), M, K);
    std::hint::black_box(matrix.silu_gated(&acts));
    let runs = (0..7)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(matrix.silu_gated(&acts));
            (2 * M * K * 2 * F) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    Some(median(runs))
}

#[derive(serde::Serialize)]
struct Row {
    model: String,
    parameters: u64,
    weight_bytes_per_token: u64,
    decode_tokens_per_s: f64,
    decode_ceiling_tokens_per_s: f64,
    decode_fraction: f64,
    prefill_tokens_per_s: f64,
    prefill_ceiling_tokens_per_s: f64,
    prefill_fraction: f64,
}

fn main() {
    let home = MurakkabHome::from_env();
    let threads = threads();
    let bandwidth = memory_bandwidth(threads);
    let f32_gemm = gemm_peak();
    let amx = amx_peak();
    println!(
        "machine: {threads} threads, copy bandwidth {:.1} GB/s, f32 GEMM {:.1} GFLOP/s, AMX bf16 {}",
        bandwidth / 1e9,
        f32_gemm / 1e9,
        amx.map_or("absent (or MURAKKAB_AMX=0)".to_string(), |a| format!("{:.1} GFLOP/s", a / 1e9))
    );
    // Prompt passes run on AMX where it is present, so that is their ceiling.
    let gemm = amx.unwrap_or(f32_gemm).max(f32_gemm);
    let (cards, _) = all_models(&home);
    let mut rows = Vec::new();
    for card in cards.iter().filter(|c| c.architecture != Architecture::Bert) {
        if card.status(&home) != ModelStatus::Pulled || card.id.starts_with("tiny") {
            continue;
        }
        let speed = murakkab_exec::calibrate::calibrate_model(&home, card).unwrap();
        let model = ModelRegistry::global().language_model(&home, &card.id).unwrap();
        let bytes = model.decoder().decode_weight_bytes();
        let (prefill, prompt_tokens) = prefill_rate(&model);
        // Prefill runs the blocks only (no logits): 2 FLOPs per weight outside the embedding
        // table, plus causal attention (QK^T and AV, on average over half the prompt).
        let config = model.decoder().config();
        let block_weights = card.parameters.saturating_sub((config.vocab * config.dim) as u64);
        let attention =
            2 * 2 * config.n_layer * config.n_head * config.head_dim * prompt_tokens / 2;
        let flops_per_token = 2.0 * block_weights as f64 + attention as f64;
        let decode_ceiling = bandwidth / bytes as f64;
        let prefill_ceiling = gemm / flops_per_token;
        let row = Row {
            model: card.id.clone(),
            parameters: card.parameters,
            weight_bytes_per_token: bytes,
            decode_tokens_per_s: speed.decode_tokens_per_s,
            decode_ceiling_tokens_per_s: decode_ceiling,
            decode_fraction: speed.decode_tokens_per_s / decode_ceiling,
            prefill_tokens_per_s: prefill,
            prefill_ceiling_tokens_per_s: prefill_ceiling,
            prefill_fraction: prefill / prefill_ceiling,
        };
        println!(
            "{}: decode {:.1} tok/s of {:.1} ({:.0}% of bandwidth), prefill {:.0} tok/s of {:.0} ({:.0}% of GEMM peak)",
            row.model,
            row.decode_tokens_per_s,
            row.decode_ceiling_tokens_per_s,
            100.0 * row.decode_fraction,
            row.prefill_tokens_per_s,
            row.prefill_ceiling_tokens_per_s,
            100.0 * row.prefill_fraction
        );
        rows.push(row);
    }
    let mut md = format!(
        "# Roofline\n\n{threads} threads; copy bandwidth {:.1} GB/s; f32 GEMM (1024^3, candle) {:.1} GFLOP/s; \
         AMX bf16 (512 tokens, Qwen's gated MLP) {}; prefill ceilings use the faster.\n\n\
         | model | weights read per token | decode tok/s | ceiling | % | prefill tok/s | ceiling | % |\n\
         |---|---|---|---|---|---|---|---|\n",
        bandwidth / 1e9,
        f32_gemm / 1e9,
        amx.map_or("absent".to_string(), |a| format!("{:.1} GFLOP/s", a / 1e9))
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} MB | {:.1} | {:.1} | {:.0}% | {:.0} | {:.0} | {:.0}% |\n",
            r.model,
            r.weight_bytes_per_token as f64 / 1e6,
            r.decode_tokens_per_s,
            r.decode_ceiling_tokens_per_s,
            100.0 * r.decode_fraction,
            r.prefill_tokens_per_s,
            r.prefill_ceiling_tokens_per_s,
            100.0 * r.prefill_fraction
        ));
    }
    let dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench-report");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::json!({
        "threads": threads,
        "copy_bytes_per_s": bandwidth,
        "gemm_flops_per_s": f32_gemm,
        "amx_flops_per_s": amx,
        "models": rows,
    });
    std::fs::write(dir.join("roofline.json"), serde_json::to_string_pretty(&json).unwrap())
        .unwrap();
    std::fs::write(dir.join("roofline.md"), md).unwrap();
    println!("written: {}", dir.join("roofline.md").display());
}
