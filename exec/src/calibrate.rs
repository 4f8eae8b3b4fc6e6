//! `murakkab calibrate`: how fast each pulled model runs on this machine, for the optimizer's
//! cost model (`murakkab_catalog::DeviceProfile`).
//!
//! Each figure is the shape of work the cost model prices: label scoring of short rows after a
//! shared instruction, in batches of 16 (prefill tokens/s, counting each row's tokens plus the
//! cost model's per-row overhead), `ai_filter`'s statements scored whole after the same rows
//! (what their tokens add), one-row decoding, and 64-text encoder batches. One warm-up
//! pass, then the median of three timed passes; a few seconds per model.

use std::time::Instant;

use murakkab_catalog::{
    Architecture, LABEL_ROW_OVERHEAD_TOKENS, ModelCard, ModelSpeed, MurakkabHome,
};

use crate::error::ModelError;
use crate::language_model::{GenerateOptions, Sampling};
use crate::registry::ModelRegistry;

/// Rows per timed pass.
const ROWS: usize = 32;

/// Short review-like sentences: the kind of row label scoring sees.
fn sentences() -> Vec<String> {
    let things = ["battery", "screen", "waiter", "plot", "price", "sound", "delivery", "soup"];
    let verdicts = [
        "was better than I expected",
        "broke after two days and support never answered",
        "is fine, nothing special",
        "made the whole evening a pleasure",
    ];
    (0..64)
        .map(|i| format!("The {} {}.", things[i % things.len()], verdicts[i % verdicts.len()]))
        .collect()
}

fn median_seconds(mut f: impl FnMut() -> Result<(), ModelError>) -> Result<f64, ModelError> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

/// Measures `card`'s model (loading it if needed, and timing the load when this process had
/// not loaded it yet).
pub fn calibrate_model(home: &MurakkabHome, card: &ModelCard) -> Result<ModelSpeed, ModelError> {
    let texts = sentences();
    let registry = ModelRegistry::global();
    let was_loaded = registry.is_loaded(home, &card.id);
    let started = Instant::now();
    let load_time = || (!was_loaded).then(|| started.elapsed().as_secs_f64());
    if card.architecture == Architecture::Bert {
        let encoder = registry.encoder(home, &card.id)?;
        let load_seconds = load_time();
        let batch: Vec<&str> = texts.iter().map(String::as_str).collect();
        let seconds = median_seconds(|| encoder.embed(&batch).map(|_| ()))?;
        return Ok(ModelSpeed {
            prefill_tokens_per_s: 0.0,
            statement_tokens_per_s: 0.0,
            decode_tokens_per_s: 0.0,
            embeddings_per_s: batch.len() as f64 / seconds,
            measured: true,
            load_seconds,
        });
    }
    let model = registry.language_model(home, &card.id)?;
    let load_seconds = load_time();
    // The chat turns the runtime wraps prompts in (see `ai_runtime`).
    let chatml = card.chat_template.as_deref() == Some("chatml");
    let (open, close) = if chatml {
        ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
    } else {
        ("", "\n")
    };
    let instruction = model.encode(&format!(
        "{open}Is the sentiment of this review positive or negative?\n\nReview:\n"
    ))?;
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .take(ROWS)
        .map(|t| model.encode(&format!("{t}{close}")))
        .collect::<Result<_, _>>()?;
    let labels = vec![model.encode("positive")?, model.encode("negative")?];
    let prefix = model.prefix_cache(&instruction)?;
    let seconds = median_seconds(|| {
        for chunk in rows.chunks(16) {
            model.score_labels(&prefix, chunk, &labels)?;
        }
        Ok(())
    })?;
    // `ai_filter`'s two statements about the same rows, scored whole: what their tokens add to
    // the rows' label scoring, counted as the cost model counts them (each statement's tokens).
    let statements: Vec<Vec<u32>> =
        murakkab_udfs::prompts::filter_labels("The review reports a problem with the product")
            .iter()
            .map(|s| model.encode(s))
            .collect::<Result<_, _>>()?;
    let whole = median_seconds(|| {
        for chunk in rows.chunks(16) {
            model.score_whole_labels(&prefix, chunk, &statements)?;
        }
        Ok(())
    })?;
    let statement_tokens = rows.len() * statements.iter().map(Vec::len).sum::<usize>();
    // Priced as the cost model prices a row: its text's tokens plus the overhead, which
    // already counts the chat template around it (counting the encoded row, template included,
    // on top of that overstated the speed by a fifth: estimates ran ~25% under the time taken).
    let mut tokens = 0;
    for text in texts.iter().take(ROWS) {
        tokens += model.encode(text)?.len() + LABEL_ROW_OVERHEAD_TOKENS;
    }
    let empty = model.prefix_cache(&[])?;
    let prompt =
        vec![model.encode(&format!("{open}Write a long story about a lighthouse keeper.{close}"))?];
    let produced = std::cell::Cell::new(0usize);
    let generate = |max_tokens| {
        let options = GenerateOptions {
            max_tokens,
            sampling: Sampling::Seeded { temperature: 1.0, seed: 1 },
        };
        median_seconds(|| {
            let out = model.generate(&empty, &prompt, &options)?;
            produced.set(out.iter().map(Vec::len).sum());
            Ok(())
        })
    };
    // Decode rate: (prefill + 17 steps) - (prefill + 1 step), over the tokens after the first
    // (a stop token may end the row early).
    let short = generate(1)?;
    let long = generate(17)?;
    let steps = produced.get().saturating_sub(1).max(1);
    let prefill_tokens_per_s = tokens as f64 / seconds;
    // A statement token costs at least a prompt token; a difference lost in the timing noise
    // (a tiny model) reads as that.
    let statement_tokens_per_s =
        (statement_tokens as f64 / (whole - seconds).max(1e-6)).min(prefill_tokens_per_s);
    Ok(ModelSpeed {
        prefill_tokens_per_s,
        statement_tokens_per_s,
        decode_tokens_per_s: steps as f64 / (long - short).max(1e-6),
        embeddings_per_s: 0.0,
        measured: true,
        load_seconds,
    })
}
