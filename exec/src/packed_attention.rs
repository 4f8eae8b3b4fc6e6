//! The sentence encoder's self-attention over packed sequences: a batch's tokens one after
//! another with no padding, each sequence attending to its own tokens only.
//!
//! The encoder's projections run on AMX tiles (`bert_amx`), where padding costs as much as a
//! real token and batched attention went through candle's small products with a transpose and
//! a copy around each: on MiniLM over BBC leads those and their allocations took more time than
//! the projections. Here every (sequence, head) reads its queries, keys and values in place
//! from the stacked projection (`[tokens, 3 · hidden]`, as BERT's query, key and value
//! linears lay them out), in parallel with the others.
//!
//! A sequence's result depends on nothing but its own tokens (the sums run in a fixed order
//! whatever the batch), so a text's embedding is the same alone or in any batch.

#![allow(unsafe_code)]

use rayon::prelude::*;

use crate::vector_math::softmax_row;

/// `softmax(q·kᵀ · scale)·v` per head of every sequence of `qkv` (`[tokens, 3 · heads ·
/// head_dim]` row-major: queries, then keys, then values, each `heads` blocks of `head_dim`),
/// where sequence `s` is rows `offsets[s]..offsets[s + 1]`. Returns the context
/// `[tokens, heads · head_dim]`, heads side by side as BERT concatenates them.
pub(crate) fn packed_attention(
    qkv: &[f32],
    offsets: &[usize],
    heads: usize,
    head_dim: usize,
    scale: f32,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    let tokens = offsets.last().copied().unwrap_or(0);
    debug_assert_eq!(qkv.len(), tokens * stride, "one stacked projection row per token");
    if tokens == 0 || head_dim == 0 {
        return vec![0f32; tokens * hidden];
    }
    // Head-major first (`[heads, tokens, head_dim]`), so each (head, sequence) writes one
    // contiguous block and they all run in parallel: a lone text's heads too, where one task
    // per text left a core idle (one text per call, as the naive plan embeds).
    let mut by_head = vec![0f32; heads * tokens * head_dim];
    let mut parts = Vec::with_capacity(heads * offsets.len().saturating_sub(1));
    let mut rest = by_head.as_mut_slice();
    for head in 0..heads {
        for pair in offsets.windows(2) {
            let (part, tail) = rest.split_at_mut((pair[1] - pair[0]) * head_dim);
            parts.push((head, &qkv[pair[0] * stride..pair[1] * stride], part));
            rest = tail;
        }
    }
    let shape = Shape { heads, head_dim };
    parts.into_par_iter().for_each(|(head, rows, out)| attend_head(rows, shape, head, scale, out));
    let mut context = vec![0f32; tokens * hidden];
    for (head, block) in by_head.chunks_exact(tokens * head_dim).enumerate() {
        for (row, values) in context.chunks_exact_mut(hidden).zip(block.chunks_exact(head_dim)) {
            row[head * head_dim..(head + 1) * head_dim].copy_from_slice(values);
        }
    }
    context
}

#[derive(Clone, Copy)]
struct Shape {
    heads: usize,
    head_dim: usize,
}

/// One head of one sequence (`rows`: its stacked projection rows) into `out` (`[n, head_dim]`).
fn attend_head(rows: &[f32], shape: Shape, head: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked just above); the function is safe Rust compiled
        // for those lanes.
        unsafe { attend_head_avx512(rows, shape, head, scale, out) };
        return;
    }
    attend_head_portable(rows, shape, head, scale, out);
}

/// [`attend_head_portable`] with the loops vectorised for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_head_avx512(rows: &[f32], shape: Shape, head: usize, scale: f32, out: &mut [f32]) {
    attend_head_portable(rows, shape, head, scale, out);
}

/// Keys are laid out dimension-major for the scores (`scores[j] += q[d] · key_d[j]`, a run over
/// the keys per dimension, which vectorises), values row by row for the output
/// (`out += p[j] · v_j`). (Written with AVX-512 intrinsics instead, a block of 16 or 32 keys
/// summed over the dimensions in registers, embeddings were a quarter slower on 64 UCI
/// sentences: 1,150 against 800 texts/s.)
#[inline(always)]
fn attend_head_portable(rows: &[f32], shape: Shape, head: usize, scale: f32, out: &mut [f32]) {
    let Shape { heads, head_dim } = shape;
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    let n = rows.len() / stride;
    if n == 0 {
        return;
    }
    let keep = vec![1u32; n];
    let mut keys = vec![0f32; head_dim * n];
    let mut scores = vec![0f32; n];
    let mut probs = vec![0f32; n];
    let (q_at, k_at, v_at) =
        (head * head_dim, hidden + head * head_dim, 2 * hidden + head * head_dim);
    for (j, row) in rows.chunks_exact(stride).enumerate() {
        for (d, &k) in row[k_at..k_at + head_dim].iter().enumerate() {
            keys[d * n + j] = k;
        }
    }
    for (row, sum) in rows.chunks_exact(stride).zip(out.chunks_exact_mut(head_dim)) {
        scores.fill(0.0);
        for (d, &q) in row[q_at..q_at + head_dim].iter().enumerate() {
            for (s, &k) in scores.iter_mut().zip(&keys[d * n..(d + 1) * n]) {
                *s += q * k;
            }
        }
        softmax_row(&scores, &keep, scale, &mut probs);
        sum.fill(0.0);
        for (&p, value) in probs.iter().zip(rows.chunks_exact(stride)) {
            for (acc, &v) in sum.iter_mut().zip(&value[v_at..v_at + head_dim]) {
                *acc += p * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook computation, one score at a time in f64.
    fn reference(qkv: &[f32], offsets: &[usize], heads: usize, head_dim: usize) -> Vec<f32> {
        let hidden = heads * head_dim;
        let stride = 3 * hidden;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut out = vec![0f32; offsets.last().unwrap() * hidden];
        for pair in offsets.windows(2) {
            for h in 0..heads {
                for i in pair[0]..pair[1] {
                    let q = &qkv[i * stride + h * head_dim..][..head_dim];
                    let scores: Vec<f64> = (pair[0]..pair[1])
                        .map(|j| {
                            let k = &qkv[j * stride + hidden + h * head_dim..][..head_dim];
                            q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>()
                                * scale
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in 0..head_dim {
                        let v: f64 = (pair[0]..pair[1])
                            .zip(&e)
                            .map(|(j, p)| {
                                p / total
                                    * f64::from(qkv[j * stride + 2 * hidden + h * head_dim + d])
                            })
                            .sum();
                        out[i * hidden + h * head_dim + d] = v as f32;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    #[test]
    fn each_sequence_attends_to_its_own_tokens_as_the_textbook_does() {
        let (heads, head_dim) = (3, 8);
        let offsets = [0, 5, 6, 23];
        let qkv = values(23 * 3 * heads * head_dim, 7);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let ours = packed_attention(&qkv, &offsets, heads, head_dim, scale);
        let theirs = reference(&qkv, &offsets, heads, head_dim);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() < 1e-4, "value {i}: {a} against {b}");
        }
    }

    #[test]
    fn a_sequence_gets_the_same_context_alone_and_beside_others() {
        let (heads, head_dim) = (2, 16);
        let stride = 3 * heads * head_dim;
        let qkv = values(40 * stride, 3);
        let scale = 0.25;
        let batched = packed_attention(&qkv, &[0, 17, 40], heads, head_dim, scale);
        let alone = packed_attention(&qkv[17 * stride..], &[0, 23], heads, head_dim, scale);
        assert_eq!(&batched[17 * heads * head_dim..], &alone[..]);
        assert!(packed_attention(&[], &[0], heads, head_dim, scale).is_empty());
    }
}
