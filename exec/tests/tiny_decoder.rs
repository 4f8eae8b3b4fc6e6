//! The batched decoder on tiny random models (llama and qwen2 layouts, f32 and quantized): batched
//! results equal one-at-a-time results, with and without a shared prefix.

#![allow(clippy::unwrap_used)]

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use murakkab_exec::tiny_models::write_tiny_gguf;
use murakkab_exec::{GenerateOptions, LanguageModel, Sampling, WIDE_STEP_ROWS, WeightMode};

fn load(arch: &str, dtype: GgmlDType, mode: WeightMode) -> (tempfile::TempDir, LanguageModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    write_tiny_gguf(&path, arch, dtype, 7).unwrap();
    let model = LanguageModel::load("tiny", &path, &["<|im_end|>".to_string()], &Device::Cpu, mode)
        .unwrap();
    (dir, model)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn variants() -> Vec<(&'static str, GgmlDType, WeightMode)> {
    vec![
        ("llama", GgmlDType::F32, WeightMode::Dequantized),
        ("qwen2", GgmlDType::F32, WeightMode::Dequantized),
        ("llama", GgmlDType::Q8_0, WeightMode::Quantized),
        ("qwen2", GgmlDType::Q8_0, WeightMode::Both),
        // Our VNNI kernel on the stored Q4_1 where the CPU has it, else re-quantized to Q8_0.
        ("llama", GgmlDType::Q4_1, WeightMode::Quantized),
    ]
}

#[test]
fn batched_forward_equals_one_at_a_time() {
    for (arch, dtype, mode) in variants() {
        let (_dir, m) = load(arch, dtype, mode);
        let d = m.decoder();
        let seqs: Vec<Vec<u32>> = vec![
            m.encode("the cat").unwrap(),
            m.encode("a").unwrap(),
            m.encode("in the thin mat!").unwrap(),
        ];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let empty = d.empty_cache().unwrap();
        let (batched, _, caches) = d.forward(&refs, &[&empty, &empty, &empty], false).unwrap();
        let batched = batched.to_vec2::<f32>().unwrap();
        for (i, s) in refs.iter().enumerate() {
            let (single, _, c) = d.forward(&[s], &[&empty], false).unwrap();
            let diff = max_diff(&batched[i], &single.to_vec2::<f32>().unwrap()[0]);
            assert!(diff < 1e-4, "{arch} {dtype:?}: sequence {i} differs by {diff}");
            assert_eq!(c[0].len(), caches[i].len());
        }
    }
}

#[test]
fn a_shared_prefix_gives_the_same_result_as_the_whole_prompt() {
    for (arch, dtype, mode) in variants() {
        let (_dir, m) = load(arch, dtype, mode);
        let d = m.decoder();
        let prefix = m.encode("Classify: ").unwrap();
        let rows = [m.encode("the cat sat").unwrap(), m.encode("bad").unwrap()];
        let cache = m.prefix_cache(&prefix).unwrap();
        let row_refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let (shared, _, _) = d.forward(&row_refs, &[&cache, &cache], false).unwrap();
        let shared = shared.to_vec2::<f32>().unwrap();
        let empty = d.empty_cache().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let whole: Vec<u32> = prefix.iter().chain(row).copied().collect();
            let (full, _, _) = d.forward(&[&whole], &[&empty], false).unwrap();
            let diff = max_diff(&shared[i], &full.to_vec2::<f32>().unwrap()[0]);
            assert!(diff < 1e-4, "{arch}: row {i} differs by {diff}");
        }
    }
}

/// By brute force, one whole pass per token: the log-probability of `tokens` following
/// `prompt`.
fn log_prob_after(m: &LanguageModel, prompt: &[u32], tokens: &[u32]) -> f32 {
    let d = m.decoder();
    let empty = d.empty_cache().unwrap();
    let mut context = prompt.to_vec();
    let mut total = 0.0f32;
    for &tok in tokens {
        let (last, _, _) = d.forward(&[&context], &[&empty], false).unwrap();
        total += d.log_probs(&last).unwrap().to_vec2::<f32>().unwrap()[0][tok as usize];
        context.push(tok);
    }
    total
}

#[test]
fn label_scores_are_exact_probabilities_in_any_batch() {
    let (_dir, m) = load("llama", GgmlDType::F32, WeightMode::Dequantized);
    let prefix = m.prefix_cache(&m.encode("Is it good? ").unwrap()).unwrap();
    let rows: Vec<Vec<u32>> =
        ["the cat", "a thin man", "!"].iter().map(|t| m.encode(t).unwrap()).collect();
    // " yes" is three tokens here, " no" two, and both start with the space token: each label is
    // scored token by token up to the token that tells the two apart.
    let labels: Vec<Vec<u32>> = [" yes", " no"].iter().map(|t| m.encode(t).unwrap()).collect();
    assert!(labels.iter().all(|l| l.len() > 1));
    assert_eq!(labels[0][0], labels[1][0]);
    let batched = m.score_labels(&prefix, &rows, &labels).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let single = m.score_labels(&prefix, std::slice::from_ref(row), &labels).unwrap();
        assert!(max_diff(&batched[i], &single[0]) < 1e-4);
        let sum: f32 = batched[i].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    // Check one score by brute force: sum of next-token log-probs along prompt + label, up to
    // and including the first token where the labels differ.
    let prompt: Vec<u32> =
        m.encode("Is it good? ").unwrap().into_iter().chain(rows[0].clone()).collect();
    let logp: Vec<f32> = labels.iter().map(|l| log_prob_after(&m, &prompt, &l[..2])).collect();
    let expected_yes = 1.0 / (1.0 + (logp[1] - logp[0]).exp());
    assert!((batched[0][0] - expected_yes).abs() < 1e-4, "{} vs {expected_yes}", batched[0][0]);
}

#[test]
fn whole_labels_score_every_token_of_statements_that_share_a_start() {
    let (_dir, m) = load("llama", GgmlDType::F32, WeightMode::Dequantized);
    let prefix = m.prefix_cache(&m.encode("Describe it. ").unwrap()).unwrap();
    let rows: Vec<Vec<u32>> =
        ["the cat", "a thin man"].iter().map(|t| m.encode(t).unwrap()).collect();
    // A statement and its negation: the same start, then "good" against "not good".
    let labels: Vec<Vec<u32>> =
        [" it is good", " it is not good"].iter().map(|t| m.encode(t).unwrap()).collect();
    assert_eq!(labels[0][0], labels[1][0]);
    let batched = m.score_whole_labels(&prefix, &rows, &labels).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let prompt: Vec<u32> =
            m.encode("Describe it. ").unwrap().into_iter().chain(row.clone()).collect();
        // By brute force: every token of each label, the shared ones included.
        let logp: Vec<f32> = labels.iter().map(|l| log_prob_after(&m, &prompt, l)).collect();
        let expected = 1.0 / (1.0 + (logp[1] - logp[0]).exp());
        assert!(
            (batched[i][0] - expected).abs() < 1e-4,
            "row {i}: {} vs {expected}",
            batched[i][0]
        );
    }
}

#[test]
fn generation_is_the_same_batched_and_alone() {
    let (_dir, m) = load("qwen2", GgmlDType::F32, WeightMode::Dequantized);
    let prefix = m.prefix_cache(&[]).unwrap();
    let prompts: Vec<Vec<u32>> =
        ["the", "a cat sat on", "in"].iter().map(|t| m.encode(t).unwrap()).collect();
    for sampling in [Sampling::Greedy, Sampling::Seeded { temperature: 0.8, seed: 42 }] {
        let options = GenerateOptions { max_tokens: 6, sampling };
        let batched = m.generate(&prefix, &prompts, &options).unwrap();
        assert!(batched.iter().all(|o| o.len() <= 6));
        let again = m.generate(&prefix, &prompts, &options).unwrap();
        assert_eq!(batched, again, "{sampling:?} is deterministic");
        // Greedy and seeded alike: a prompt's text does not depend on its batch neighbours.
        for (i, p) in prompts.iter().enumerate() {
            let alone = m.generate(&prefix, std::slice::from_ref(p), &options).unwrap();
            assert_eq!(alone[0], batched[i], "{sampling:?}, prompt {i}");
        }
    }
}

#[test]
fn extraction_is_the_same_batched_and_alone() {
    use murakkab_udfs::{FieldType, FieldValue};
    let fields: Vec<(String, FieldType)> = [
        ("name", FieldType::Text),
        ("age", FieldType::Integer),
        ("price", FieldType::Float),
        ("ok", FieldType::Boolean),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    for (arch, dtype, mode) in [
        ("qwen2", GgmlDType::F32, WeightMode::Dequantized),
        ("llama", GgmlDType::F32, WeightMode::Dequantized),
    ] {
        let (_dir, m) = load(arch, dtype, mode);
        let prefix = m.prefix_cache(&m.encode("Extract:").unwrap()).unwrap();
        let rows: Vec<Vec<u32>> = ["the", "a cat sat on the mat at 4", "in", "x y z"]
            .iter()
            .map(|t| m.encode(t).unwrap())
            .collect();
        let batched = m.extract(&prefix, &rows, &fields).unwrap();
        for (values, chosen) in &batched {
            assert_eq!(values.len(), 4, "{arch}: one value or NULL per field");
            assert!(*chosen <= 48 + 12 + 12 + 1, "{arch}: {chosen} tokens chosen");
            let typed = [
                matches!(values[0], None | Some(FieldValue::Text(_))),
                matches!(values[1], None | Some(FieldValue::Integer(_))),
                matches!(values[2], None | Some(FieldValue::Float(_))),
                matches!(values[3], None | Some(FieldValue::Boolean(_))),
            ];
            assert_eq!(typed, [true; 4], "{arch}: {values:?}");
        }
        // A row's values do not depend on its batch neighbours.
        for (i, row) in rows.iter().enumerate() {
            let alone = m.extract(&prefix, std::slice::from_ref(row), &fields).unwrap();
            assert_eq!(alone[0], batched[i], "{arch}, row {i}");
        }
    }
}

#[test]
fn batch_cache_steps_equal_steps_on_each_rows_own_cache() {
    // Generation writes decode steps into one preallocated batch cache (prompts padded to the
    // longest, generated tokens side by side); each row must get what a step on its own cache
    // gives, across capacity growth and rows leaving the batch.
    for (arch, dtype, mode) in variants() {
        let (_dir, m) = load(arch, dtype, mode);
        let d = m.decoder();
        let prefix = m.prefix_cache(&m.encode("the").unwrap()).unwrap();
        let prompts: Vec<Vec<u32>> = ["cat sat on the mat", "a", "in the thin"]
            .iter()
            .map(|t| m.encode(t).unwrap())
            .collect();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let (_, _, mut own) = d.forward(&refs, &[&prefix, &prefix, &prefix], false).unwrap();
        // The cache is the same code for every weight format, so f32 weights check it exactly.
        // Quantized decode steps round activations to 8 bits: a last-bit difference in the
        // attention (the batch attends over padded slots, a single row does not) can flip one
        // rounding and move a hidden state by a few hundredths after tens of steps (0.034 at
        // step 39 here once candle's AVX-512 GEMM changed summation order), far below the O(1)
        // a misplaced key would cause.
        let tolerance = if dtype == GgmlDType::F32 { 1e-4 } else { 0.1 };
        // Room for 1 token: the cache grows several times over 40 steps.
        let mut batch = d.batch_cache(&own.iter().collect::<Vec<_>>(), 1).unwrap();
        let mut rows: Vec<usize> = vec![0, 1, 2];
        for step in 0..40u32 {
            if step == 17 {
                // The middle row stops.
                batch.retain(&[0, 2]).unwrap();
                rows = vec![0, 2];
            }
            let tokens: Vec<u32> =
                rows.iter().map(|&r| (step * 7 + r as u32 * 3) % 50 + 1).collect();
            let batched =
                d.decode_batch_step(&tokens, &mut batch).unwrap().to_vec2::<f32>().unwrap();
            for (slot, &r) in rows.iter().enumerate() {
                let (single, mut c) = d.decode_step(&[&[tokens[slot]]], &[&own[r]]).unwrap();
                own[r] = c.remove(0);
                let diff = max_diff(&batched[slot], &single.to_vec2::<f32>().unwrap()[0]);
                assert!(
                    diff < tolerance,
                    "{arch} {dtype:?}: step {step}, row {r} differs by {diff}"
                );
            }
        }
        for (slot, &r) in rows.iter().enumerate() {
            let row = batch.row(slot).unwrap();
            assert_eq!(row.len(), own[r].len(), "{arch} {dtype:?}: row {r}");
        }
    }
}

#[test]
fn wide_batch_steps_stay_close_to_each_rows_own_steps() {
    // A batch step of WIDE_STEP_ROWS rows or more reads the prompt passes' weights (bf16 tiles
    // where the CPU has AMX) instead of the quantized ones; rows leaving the batch bring it back
    // under, so one row's steps switch between the two. Each must stay within the two copies'
    // rounding of the row's own quantized steps (the bound `batch_cache_steps_equal...` uses).
    let (_dir, m) = load("qwen2", GgmlDType::Q8_0, WeightMode::Both);
    let d = m.decoder();
    let rows = WIDE_STEP_ROWS + 2;
    let texts = ["the cat", "a mat", "in the thin", "sat on", "the man and"];
    let prompts: Vec<Vec<u32>> =
        (0..rows).map(|r| m.encode(texts[r % texts.len()]).unwrap()).collect();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let empty = d.empty_cache().unwrap();
    let (_, _, mut own) = d.forward(&refs, &vec![&empty; rows], false).unwrap();
    let mut batch = d.batch_cache(&own.iter().collect::<Vec<_>>(), 8).unwrap();
    let mut active: Vec<usize> = (0..rows).collect();
    for step in 0..12u32 {
        if step == 4 {
            // Below the threshold from here on.
            active.truncate(WIDE_STEP_ROWS - 1);
            batch.retain(&(0..WIDE_STEP_ROWS - 1).collect::<Vec<_>>()).unwrap();
        }
        let tokens: Vec<u32> = active.iter().map(|&r| (step * 5 + r as u32 * 3) % 50 + 1).collect();
        let batched = d.decode_batch_step(&tokens, &mut batch).unwrap().to_vec2::<f32>().unwrap();
        for (slot, &r) in active.iter().enumerate() {
            let (single, mut c) = d.decode_step(&[&[tokens[slot]]], &[&own[r]]).unwrap();
            own[r] = c.remove(0);
            let diff = max_diff(&batched[slot], &single.to_vec2::<f32>().unwrap()[0]);
            assert!(diff < 0.1, "step {step}, row {r} differs by {diff}");
        }
    }
}

#[test]
fn steps_after_long_prompts_attend_like_the_prompt_pass() {
    // Past a few hundred keys a decode step attends through its own kernel, reading the cache in
    // place; with f32 weights a prompt's last position, run in one pass or as the prompt less
    // one token and then a step, differs only in attention's summation order. Two prompts of
    // different lengths batched: the shorter one's padding is masked.
    let (_dir, m) = load("qwen2", GgmlDType::F32, WeightMode::Dequantized);
    let d = m.decoder();
    let prompts: Vec<Vec<u32>> = [330usize, 290]
        .iter()
        .map(|&n| (0..n as u32).map(|i| (i * 37) % 250 + 1).collect())
        .collect();
    let empty = d.empty_cache().unwrap();
    let heads: Vec<&[u32]> = prompts.iter().map(|p| &p[..p.len() - 1]).collect();
    let (_, _, caches) = d.forward(&heads, &[&empty, &empty], false).unwrap();
    let mut batch = d.batch_cache(&caches.iter().collect::<Vec<_>>(), 4).unwrap();
    let lasts: Vec<u32> = prompts.iter().map(|p| p[p.len() - 1]).collect();
    let stepped = d.decode_batch_step(&lasts, &mut batch).unwrap().to_vec2::<f32>().unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let (whole, _, _) = d.forward(&[prompt], &[&empty], false).unwrap();
        let diff = max_diff(&stepped[i], &whole.to_vec2::<f32>().unwrap()[0]);
        assert!(diff < 1e-4, "prompt {i} differs by {diff}");
    }
}

#[test]
fn a_batched_step_after_long_prompts_gives_each_row_exactly_its_own_step() {
    // Quantized decode steps multiply each row on its own, and past a few hundred keys the
    // attention kernel sums a padded row's softmax over its kept keys only: so a row's step in a
    // batch is bit for bit its step alone, and batched generation follows the same tokens.
    let (_dir, m) = load("llama", GgmlDType::Q8_0, WeightMode::Quantized);
    let d = m.decoder();
    let empty = d.empty_cache().unwrap();
    let caches: Vec<_> = [330u32, 290]
        .iter()
        .map(|&n| {
            let prompt: Vec<u32> = (0..n).map(|i| (i * 37) % 250 + 1).collect();
            d.forward(&[&prompt], &[&empty], false).unwrap().2.remove(0)
        })
        .collect();
    let mut batch = d.batch_cache(&caches.iter().collect::<Vec<_>>(), 4).unwrap();
    let mut own = caches.clone();
    for step in 0..3u32 {
        let tokens = [step * 11 + 5, step * 7 + 9];
        let batched = d.decode_batch_step(&tokens, &mut batch).unwrap().to_vec2::<f32>().unwrap();
        for (r, cache) in own.iter_mut().enumerate() {
            let (single, mut c) = d.decode_step(&[&[tokens[r]]], &[&*cache]).unwrap();
            *cache = c.remove(0);
            assert_eq!(batched[r], single.to_vec2::<f32>().unwrap()[0], "step {step}, row {r}");
        }
    }
}

#[test]
fn unsupported_architectures_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    write_tiny_gguf(&path, "mamba", GgmlDType::F32, 1).unwrap();
    let err = LanguageModel::load("m", &path, &[], &Device::Cpu, WeightMode::Quantized)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'mamba' is not supported") && err.contains("llama, qwen2"), "{err}");
}

#[test]
fn both_weight_copies_agree_on_long_and_short_passes() {
    // Prompt passes use the f32 copy, decode steps the quantized weights: a prompt run at once
    // must match the same prompt fed one decode step at a time, within quantization noise.
    let (_dir, m) = load("llama", GgmlDType::Q8_0, WeightMode::Both);
    let d = m.decoder();
    let text = "the cat sat on the mat in the thin man and the cat";
    let ids = m.encode(text).unwrap();
    assert!(ids.len() >= 32, "{} tokens", ids.len());
    let empty = d.empty_cache().unwrap();
    let (whole, _, _) = d.forward(&[&ids], &[&empty], false).unwrap();
    let mut cache = empty;
    let mut last = None;
    for piece in ids.chunks(1) {
        let (l, mut c) = d.decode_step(&[piece], &[&cache]).unwrap();
        cache = c.remove(0);
        last = Some(l);
    }
    let diff =
        max_diff(&whole.to_vec2::<f32>().unwrap()[0], &last.unwrap().to_vec2::<f32>().unwrap()[0]);
    assert!(diff < 0.05, "differs by {diff}");
}

#[test]
fn requantized_decode_weights_stay_close_to_the_stored_ones() {
    // Q4_1 weights go to our VNNI kernel as stored where the CPU has it, and are re-quantized to
    // Q8_0 elsewhere. Against the exact result (the f32 copy, which prompt passes use), a decode
    // step on the runtime's copy must be about as close as candle's on the weights as stored:
    // both quantize the activations to 8 bits, and Q8_0's rounding of the stored values is far
    // below Q4_1's own.
    let (_dir, converted) = load("llama", GgmlDType::Q4_1, WeightMode::Both);
    let (_dir2, stored) = load("llama", GgmlDType::Q4_1, WeightMode::BothAsStored);
    let ids = converted.encode("the cat sat on the mat").unwrap();
    let (head, tail) = ids.split_at(ids.len() - 1);
    let next = |m: &LanguageModel, decode: bool| {
        let d = m.decoder();
        let empty = d.empty_cache().unwrap();
        let last = if decode {
            let (_, _, caches) = d.forward(&[head], &[&empty], false).unwrap();
            d.decode_step(&[tail], &[&caches[0]]).unwrap().0
        } else {
            d.forward(&[&ids], &[&empty], false).unwrap().0
        };
        d.log_probs(&last).unwrap().to_vec2::<f32>().unwrap().remove(0)
    };
    let exact = next(&stored, false);
    let off_converted = max_diff(&next(&converted, true), &exact);
    let off_stored = max_diff(&next(&stored, true), &exact);
    assert!(
        off_converted <= 2.0 * off_stored + 0.01,
        "converted weights are {off_converted} off, stored ones {off_stored}"
    );
}

#[test]
fn long_prompts_are_cut_in_the_middle() {
    let (_dir, m) = load("llama", GgmlDType::F32, WeightMode::Dequantized);
    let ids: Vec<u32> = (0..200).collect();
    let (cut, truncated) = m.fit_to_context(&ids, 100);
    assert!(truncated);
    assert_eq!(cut.len(), 100);
    assert_eq!(&cut[..50], &ids[..50]);
    assert_eq!(&cut[50..], &ids[150..]);
    let (same, truncated) = m.fit_to_context(&ids[..10], 100);
    assert!(!truncated);
    assert_eq!(same, &ids[..10]);
}

#[test]
fn cancelled_work_stops_at_the_next_forward_pass() {
    let (_dir, m) = load("llama", GgmlDType::F32, WeightMode::Dequantized);
    let prefix = m.prefix_cache(&[]).unwrap();
    let prompts = vec![m.encode("the cat").unwrap()];
    let options = GenerateOptions { max_tokens: 8, sampling: Sampling::Greedy };
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let result =
        murakkab_exec::with_cancellation(&flag, || m.generate(&prefix, &prompts, &options));
    assert!(matches!(result, Err(murakkab_exec::ModelError::Cancelled)), "{result:?}");
    let labels = vec![m.encode(" yes").unwrap(), m.encode(" no").unwrap()];
    let scored =
        murakkab_exec::with_cancellation(&flag, || m.score_labels(&prefix, &prompts, &labels));
    assert!(matches!(scored, Err(murakkab_exec::ModelError::Cancelled)));
    // Outside the cancelled scope the same calls work.
    assert!(m.generate(&prefix, &prompts, &options).is_ok());
}

#[test]
fn prompt_passes_in_both_weight_modes_match_the_f32_weights() {
    // `Both` runs prompt passes on AMX tiles in bf16 where the CPU has AMX (stacked query, key
    // and value with qwen2's biases; the gated MLP in one product), else on the f32 copy;
    // `Dequantized` always on f32. The same weights must give the same hidden states up to
    // bf16 rounding.
    for arch in ["llama", "qwen2"] {
        let (_a, both) = load(arch, GgmlDType::Q8_0, WeightMode::Both);
        let (_b, f32s) = load(arch, GgmlDType::Q8_0, WeightMode::Dequantized);
        let seqs: Vec<Vec<u32>> =
            vec![both.encode("the cat sat on the mat").unwrap(), both.encode("a").unwrap()];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let hidden = |m: &LanguageModel| {
            let d = m.decoder();
            let empty = d.empty_cache().unwrap();
            d.forward(&refs, &[&empty, &empty], false).unwrap().0.to_vec2::<f32>().unwrap()
        };
        let (got, want) = (hidden(&both), hidden(&f32s));
        for (g, w) in got.iter().zip(&want) {
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = max_diff(g, w);
            assert!(diff <= 0.05 * scale, "{arch}: differs by {diff} at scale {scale}");
        }
    }
}

#[test]
fn token_log_probs_are_the_log_softmax_at_each_position() {
    // A label's later tokens are scored by `token_log_probs` after a pass that keeps no caches:
    // both must be what the full log-softmax after a caching pass gives. Exact where prompt
    // passes run on f32 or candle's quantized weights; within bf16 rounding where `Both` runs
    // them, the output product included, on AMX tiles.
    for (arch, dtype, mode) in variants() {
        let (_dir, m) = load(arch, dtype, mode);
        let d = m.decoder();
        let empty = d.empty_cache().unwrap();
        let seqs: Vec<Vec<u32>> =
            ["the cat sat on the mat", "a thin"].iter().map(|t| m.encode(t).unwrap()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let (_, kept, _) = d.forward(&refs, &[&empty, &empty], true).unwrap();
        let (_, all) = d.forward_uncached(&refs, &[&empty, &empty], true).unwrap();
        let (kept, all) = (kept.unwrap(), all.unwrap());
        let flat = |x: &candle_core::Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&kept), flat(&all), "{arch} {dtype:?}: the uncached pass differs");
        let hidden = all.reshape(((), d.config().dim)).unwrap();
        let vocab = d.config().vocab as u32;
        let tokens: Vec<u32> = (0..hidden.dim(0).unwrap() as u32).map(|i| i * 13 % vocab).collect();
        let got = d.token_log_probs(&hidden, &tokens).unwrap();
        let full = d.log_probs(&hidden).unwrap().to_vec2::<f32>().unwrap();
        let want: Vec<f32> = full.iter().zip(&tokens).map(|(row, &t)| row[t as usize]).collect();
        let tolerance = if matches!(mode, WeightMode::Both) { 0.05 } else { 1e-4 };
        let diff = max_diff(&got, &want);
        assert!(diff <= tolerance, "{arch} {dtype:?} {mode:?}: differs by {diff}");
        let one = hidden.narrow(0, 0, 1).unwrap();
        assert!(d.token_log_probs(&one, &[vocab]).is_err(), "a token outside the vocabulary");
        assert!(d.token_log_probs(&one, &[1, 2]).is_err(), "two tokens for one hidden state");
    }
}
