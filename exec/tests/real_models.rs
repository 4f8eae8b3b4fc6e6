//! Tests on the real models, pulled into `MURAKKAB_HOME` by `scripts/test.sh`.
//!
//! Without the models these tests say so and pass, so `cargo test` works offline; with
//! `MURAKKAB_REQUIRE_REAL_MODELS=1` (set by the test script and CI) a missing model fails.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use murakkab_catalog::{ModelStatus, MurakkabHome, find_model};
use murakkab_exec::ModelRegistry;

/// Cosine similarity of two vectors.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

/// The home if `id` is pulled there; otherwise `None` (or a panic when real models are required).
fn home_with(id: &str) -> Option<MurakkabHome> {
    let home = MurakkabHome::from_env();
    let card = find_model(&home, id).unwrap();
    if card.status(&home) == ModelStatus::Pulled {
        return Some(home);
    }
    let required = std::env::var("MURAKKAB_REQUIRE_REAL_MODELS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "model {id} is not pulled under {}; run `murakkab models pull {id}`",
        home.root().display()
    );
    eprintln!("skipping: model {id} is not pulled under {}", home.root().display());
    None
}

#[test]
fn minilm_embeds_like_the_reference() {
    let Some(home) = home_with("all-minilm-l6-v2") else { return };
    let encoder = ModelRegistry::global().encoder(&home, "all-minilm-l6-v2").unwrap();
    assert_eq!(encoder.dim(), 384);
    let out = encoder
        .embed(&["A man is eating food.", "A man is eating a piece of bread.", "The cat sat."])
        .unwrap();
    let c = cosine(&out.vectors[0], &out.vectors[1]);
    // sentence-transformers gives 0.755 for this pair.
    assert!((c - 0.755).abs() < 0.005, "cosine {c}");
    assert!(cosine(&out.vectors[0], &out.vectors[2]) < c);

    // Batched equals one at a time on the real model too.
    let single = encoder.embed(&["A man is eating a piece of bread."]).unwrap();
    let max_diff = single.vectors[0]
        .iter()
        .zip(&out.vectors[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-4, "max difference {max_diff}");
}

const REVIEWS: &[(&str, bool)] = &[
    ("Good case, Excellent value.", true),
    ("Great for the jawbone.", true),
    ("Tied to charger for conversations lasting more than 45 minutes.MAJOR PROBLEMS!!", false),
    ("The mic is great.", true),
    ("I have to jiggle the plug to get it to line up right to get decent volume.", false),
    (
        "If you have several dozen or several hundred contacts, then imagine the fun of sending each of them one by one.",
        false,
    ),
    ("If you are Razr owner...you must have this!", true),
    ("Needless to say, I wasted my money.", false),
    ("What a waste of money and time!.", false),
    ("And the sound quality is great.", true),
    ("He was very impressed when going from the original battery to the extended battery.", true),
    ("Very disappointed.", false),
    (
        "A very, very, very slow-moving, aimless movie about a distressed, drifting young man.",
        false,
    ),
    ("The food was delicious and the staff were friendly.", true),
    ("Wow... Loved this place.", true),
    ("Crust is not good.", false),
];

#[test]
fn smollm2_scores_sentiment_labels() {
    let Some(home) = home_with("smollm2-135m-instruct") else { return };
    let model = ModelRegistry::global().language_model(&home, "smollm2-135m-instruct").unwrap();
    let prefix = model
        .encode("<|im_start|>user\nIs the sentiment of this review positive or negative? Answer with one word.\n\nReview:\n")
        .unwrap();
    let prefix = model.prefix_cache(&prefix).unwrap();
    let rows: Vec<Vec<u32>> = REVIEWS
        .iter()
        .map(|(text, _)| {
            model.encode(&format!("{text}<|im_end|>\n<|im_start|>assistant\n")).unwrap()
        })
        .collect();
    let labels: Vec<Vec<u32>> =
        ["positive", "negative"].iter().map(|l| model.encode(l).unwrap()).collect();
    let scores = model.score_labels(&prefix, &rows, &labels).unwrap();
    let correct = scores.iter().zip(REVIEWS).filter(|(s, (_, pos))| (s[0] > s[1]) == *pos).count();
    // MODELS.md measured 0.867 on 300 UCI sentences with this method.
    assert!(correct >= 12, "{correct}/{} correct: {scores:?}", REVIEWS.len());

    // Greedy generation: short, stops on <|im_end|>, decodes to text.
    let prompt = model
        .encode(
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        )
        .unwrap();
    let empty = model.prefix_cache(&[]).unwrap();
    let options = murakkab_exec::GenerateOptions {
        max_tokens: 12,
        sampling: murakkab_exec::Sampling::Greedy,
    };
    let out = model.generate(&empty, &[prompt], &options).unwrap();
    let text = model.decode(&out[0]).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}
