//! The decoder's stacked query/key/value projection split into heads in one pass, with its
//! bias and the rotary position embedding applied on the way.
//!
//! A prompt pass's projection comes out of the AMX kernel as one row-major `[tokens, (heads +
//! 2 · kv_heads) · head_dim]` matrix. Through candle it then took a bias broadcast, three
//! narrow-reshape-transpose copies into head-major order and two RoPE passes, each a full
//! read and write with its own allocation: on qwen2.5-0.5b scoring SpamAssassin subjects
//! (batched), 1.4 s of the projection's section and 0.5 s of RoPE against ~0.5 s of product.
//! Here each (sequence, head) is read once from the projection and written once, in parallel.
//!
//! The arithmetic is candle's, in the same order (`x + bias`, then `x1·cos − x2·sin` and
//! `x1·sin + x2·cos`), so results are bit for bit those of the candle path.

use rayon::prelude::*;

/// How the projection's columns split into heads and how positions rotate them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLayout {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention shares each among `heads / kv_heads`).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// RoPE on the two halves of a head (GPT-NeoX, Qwen2) rather than on adjacent pairs (LLaMA
    /// as GGUF stores it).
    pub neox: bool,
}

/// Queries `[b, heads, t, head_dim]`, keys and values `[b, kv_heads, t, head_dim]`.
pub(crate) struct Heads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Where each sequence's tokens are among the projection's rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a> {
    /// Row `seq · t + step` for every step, padding included.
    Padded,
    /// Sequence `s`'s `lens[s]` tokens from row `starts[s]` on, no rows for its padding (whose
    /// heads are left zero).
    Packed { starts: &'a [usize], lens: &'a [usize] },
}

/// Splits `y` (`[rows, (heads + 2 · kv_heads) · head_dim]`: queries, keys, values; `rows` says
/// which row holds which token) into head-major queries, keys and values `[b, n, t,
/// head_dim]`, adding `bias` (one value per column) and rotating queries and keys by each
/// token's position: step `i` of sequence `s` is at `positions[s · t + i]`, whose angles are
/// that row of `cos` and `sin` (`[positions, head_dim / 2]`).
pub(crate) fn heads_with_rope(
    y: &[f32],
    bias: Option<&[f32]>,
    (cos, sin): (&[f32], &[f32]),
    positions: &[u32],
    (b, t, rows): (usize, usize, Rows<'_>),
    layout: HeadLayout,
) -> Heads {
    let HeadLayout { heads, kv_heads, head_dim, neox } = layout;
    let width = (heads + 2 * kv_heads) * head_dim;
    debug_assert!(matches!(rows, Rows::Packed { .. }) || y.len() == b * t * width);
    debug_assert_eq!(positions.len(), b * t);
    let mut q = vec![0.0f32; b * heads * t * head_dim];
    let mut k = vec![0.0f32; b * kv_heads * t * head_dim];
    let mut v = vec![0.0f32; b * kv_heads * t * head_dim];
    // One work item per (part, sequence, head): its `t` rows of `head_dim` values.
    let span = t * head_dim;
    if span == 0 {
        return Heads { q, k, v };
    }
    let mut items: Vec<(&mut [f32], usize, usize, bool)> = Vec::new();
    let parts = [
        (&mut q, heads, 0, true),
        (&mut k, kv_heads, heads, true),
        (&mut v, kv_heads, heads + kv_heads, false),
    ];
    for (out, n, first_head, rotate) in parts {
        for (i, chunk) in out.chunks_mut(span).enumerate() {
            let (seq, head) = (i / n, i % n);
            items.push((chunk, seq, first_head + head, rotate));
        }
    }
    let half = head_dim / 2;
    items.into_par_iter().for_each(|(out, seq, head, rotate)| {
        let column = head * head_dim;
        let (first_row, len) = match rows {
            Rows::Padded => (seq * t, t),
            Rows::Packed { starts, lens } => (starts[seq], lens[seq]),
        };
        for (step, dst) in out.chunks_exact_mut(head_dim).enumerate().take(len) {
            let row = first_row + step;
            let src = &y[row * width + column..][..head_dim];
            match bias {
                Some(bias) => {
                    let bias = &bias[column..][..head_dim];
                    for ((d, &x), &c) in dst.iter_mut().zip(src).zip(bias) {
                        *d = x + c;
                    }
                }
                None => dst.copy_from_slice(src),
            }
            if !rotate {
                continue;
            }
            let at = positions[seq * t + step] as usize * half;
            let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
            if neox {
                let (lo, hi) = dst.split_at_mut(half);
                for j in 0..half {
                    let (x1, x2) = (lo[j], hi[j]);
                    lo[j] = x1 * cos[j] - x2 * sin[j];
                    hi[j] = x1 * sin[j] + x2 * cos[j];
                }
            } else {
                for (j, pair) in dst.chunks_exact_mut(2).enumerate() {
                    let (x1, x2) = (pair[0], pair[1]);
                    pair[0] = x1 * cos[j] - x2 * sin[j];
                    pair[1] = x1 * sin[j] + x2 * cos[j];
                }
            }
        }
    });
    Heads { q, k, v }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let x = i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503));
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The candle path this replaces: bias, narrow, head-major copy, RoPE.
    fn through_candle(
        y: &[f32],
        bias: Option<&[f32]>,
        (cos, sin): (&Tensor, &Tensor),
        positions: &[u32],
        (b, t): (usize, usize),
        layout: HeadLayout,
    ) -> [Vec<f32>; 3] {
        let device = Device::Cpu;
        let HeadLayout { heads, kv_heads, head_dim, neox } = layout;
        let width = (heads + 2 * kv_heads) * head_dim;
        let mut y = Tensor::from_slice(y, (b, t, width), &device).unwrap();
        if let Some(bias) = bias {
            y = y.broadcast_add(&Tensor::from_slice(bias, width, &device).unwrap()).unwrap();
        }
        let positions = Tensor::from_slice(positions, b * t, &device).unwrap();
        let cos = cos.index_select(&positions, 0).unwrap().reshape((b, t, head_dim / 2)).unwrap();
        let sin = sin.index_select(&positions, 0).unwrap().reshape((b, t, head_dim / 2)).unwrap();
        let part = |start: usize, n: usize| {
            y.narrow(2, start * head_dim, n * head_dim)
                .unwrap()
                .reshape((b, t, n, head_dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let rope = |x: Tensor| {
            if neox {
                candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap()
            }
        };
        let flat = |x: Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        [
            flat(rope(part(0, heads))),
            flat(rope(part(heads, kv_heads))),
            flat(part(heads + kv_heads, kv_heads)),
        ]
    }

    #[test]
    fn heads_match_candle_s_bias_transpose_and_rope_bit_for_bit() {
        let (b, t) = (3, 5);
        let table = 40;
        for neox in [true, false] {
            for with_bias in [true, false] {
                let layout = HeadLayout { heads: 6, kv_heads: 2, head_dim: 8, neox };
                let width = (layout.heads + 2 * layout.kv_heads) * layout.head_dim;
                let y = values(b * t * width, 1);
                let bias = values(width, 2);
                let bias = with_bias.then_some(bias.as_slice());
                let cos = values(table * layout.head_dim / 2, 3);
                let sin = values(table * layout.head_dim / 2, 4);
                // Positions as a padded batch has them: after caches of different lengths,
                // the padding repeating a sequence's last position.
                let positions: Vec<u32> =
                    [[7, 8, 9, 9, 9], [0, 1, 2, 3, 4], [31, 32, 33, 34, 35]].concat();
                let got = heads_with_rope(
                    &y,
                    bias,
                    (&cos, &sin),
                    &positions,
                    (b, t, Rows::Padded),
                    layout,
                );
                let device = Device::Cpu;
                let cos_t =
                    Tensor::from_slice(&cos, (table, layout.head_dim / 2), &device).unwrap();
                let sin_t =
                    Tensor::from_slice(&sin, (table, layout.head_dim / 2), &device).unwrap();
                let want = through_candle(&y, bias, (&cos_t, &sin_t), &positions, (b, t), layout);
                assert_eq!(got.q, want[0], "queries, neox {neox}, bias {with_bias}");
                assert_eq!(got.k, want[1], "keys, neox {neox}, bias {with_bias}");
                assert_eq!(got.v, want[2], "values, neox {neox}, bias {with_bias}");
                // The same tokens packed without their padding (3, 5 and 2 of the 5 steps):
                // their heads the same bit for bit, the padding's left zero.
                let lens = [3usize, 5, 2];
                let starts = [0usize, 3, 8];
                let packed: Vec<f32> = (0..b)
                    .flat_map(|s| (0..lens[s]).map(move |i| s * t + i))
                    .flat_map(|row| y[row * width..(row + 1) * width].to_vec())
                    .collect();
                let rows = Rows::Packed { starts: &starts, lens: &lens };
                let got =
                    heads_with_rope(&packed, bias, (&cos, &sin), &positions, (b, t, rows), layout);
                for (part, (got, want)) in [got.q, got.k, got.v].iter().zip(&want).enumerate() {
                    for (chunk, (g, w)) in got
                        .chunks(t * layout.head_dim)
                        .zip(want.chunks(t * layout.head_dim))
                        .enumerate()
                    {
                        let seq = chunk / [layout.heads, layout.kv_heads, layout.kv_heads][part];
                        let real = lens[seq] * layout.head_dim;
                        assert_eq!(g[..real], w[..real], "packed part {part}, sequence {seq}");
                        assert!(g[real..].iter().all(|&v| v == 0.0), "padding left zero");
                    }
                }
            }
        }
    }
}
