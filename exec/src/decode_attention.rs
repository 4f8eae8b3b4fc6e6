//! Attention for a decode step (one new token per sequence), read in place from the KV cache.
//!
//! A step's queries are a few rows per key head (the `group` query heads sharing it), and its
//! keys and values are the whole cache so far: thousands of rows after a long prompt. Through
//! candle's batched matrix product that is two tiny products (`group × d` by `d × W`, then back)
//! per sequence, key head and layer, each packed and dispatched on its own: after 1,500 prompt
//! tokens a step of 8 rows took qwen2.5-0.5b 99 ms against 41 ms after a short prompt, and
//! SmolLM2 104 ms against 21 (`MURAKKAB_BENCH_ONLY=steps` in `benches/models.rs`). Here each
//! (sequence, key head) pair reads its keys and values once, where the cache holds them, for
//! all its query rows: scores by one 16-lane dot product per key and row, the prompt passes'
//! fused softmax row ([`crate::vector_math::additive_softmax_row`]), and the values summed
//! into registers four query rows at a time; the pairs are split over candle's thread pool,
//! whose workers stay warm between a step's many small sections. After 1,500 tokens, a step of
//! 8 rows: qwen2.5-0.5b 99 → 70–75 ms, SmolLM2 104 → 61 ms; of 1 row 26.9 → 24–26 and 16.4 → 13.
//! What is left is mostly waiting for the cache to arrive from memory (18 MB of f32 keys and
//! values per row and step for qwen2.5 at that length).
//!
//! The same arithmetic as `softmax(q·kᵀ · scale + mask)·v`, up to float summation order.

#![allow(unsafe_code)]

use candle_core::{Storage, Tensor};

use crate::gguf_decoder::with_f32_values;

/// Lanes of one 512-bit vector of f32.
const LANES: usize = 16;
/// Value lanes summed in registers together: four vectors (a 64-wide head in one pass).
const WIDTH_STEP: usize = 4 * LANES;
/// Query rows whose value sums stay in registers together.
const ROW_TILE: usize = 4;

/// Whether this CPU and head width run [`decode_attention`].
fn supported(head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        head_dim > 0
            && head_dim.is_multiple_of(LANES)
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = head_dim;
        false
    }
}

/// Where a cache tensor `[B, H, W, d]` keeps its values: its storage, the offset of element
/// `(0, 0, 0, 0)` and the strides of its first three dimensions (the last is contiguous).
#[derive(Debug, Clone, Copy)]
struct CacheView<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 3],
}

impl CacheView<'_> {
    /// Where the rows of pair (`b`, `h`) start, and the step from one row to the next; the
    /// caller checked the view covers them.
    fn rows(&self, b: usize, h: usize) -> (*const f32, usize) {
        let start = self.offset + b * self.strides[0] + h * self.strides[1];
        (self.data[start..].as_ptr(), self.strides[2])
    }
}

/// `f` over `t`'s values in place (a narrowed cache is a view of its whole buffer), or `None`
/// where `t` is not an f32 CPU tensor of rank 4 with a contiguous last dimension.
fn with_view<R>(t: &Tensor, f: impl FnOnce(CacheView<'_>) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return None };
    let data = cpu.as_slice::<f32>().ok()?;
    let (dims, stride) = (layout.dims(), layout.stride());
    if dims.len() != 4 || stride[3] != 1 {
        return None;
    }
    // The last element must lie inside the buffer: then every row read below does.
    let last = layout.start_offset()
        + (0..4).map(|i| dims[i].saturating_sub(1) * stride[i]).sum::<usize>()
        + 1;
    if dims.contains(&0) || last > data.len() {
        return None;
    }
    let view = CacheView {
        data,
        offset: layout.start_offset(),
        strides: [stride[0], stride[1], stride[2]],
    };
    Some(f(view))
}

/// `softmax(q·kᵀ · scale + mask)·v` for one new token per sequence: `q` `[B, H, group, d]`,
/// `keys` and `values` `[B, H, W, d]` (views of the cache are read in place) and `mask`
/// `[B, 1, group, W]` (additive, 0 or −∞; `None`: nothing masked). Returns `[B, H, group, d]`,
/// or `None` where this CPU, the head width or the tensors' layout do not suit the kernel (the
/// caller then takes candle's path).
pub(crate) fn decode_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
) -> candle_core::Result<Option<Tensor>> {
    let (b, h, group, d) = q.dims4()?;
    let width = keys.dim(2)?;
    if keys.dims() != [b, h, width, d] || values.dims() != keys.dims() || !supported(d) {
        return Ok(None);
    }
    if mask.is_some_and(|m| m.dims() != [b, 1, group, width]) {
        return Ok(None);
    }
    let shape = Shape { b, h, group, d, width };
    // The queries and the mask are read in place too where they are contiguous (the mask of a
    // long step is hundreds of KB, made once per step and read by every layer).
    let out = with_f32_values(q, |q| {
        let run = |mask: Option<&[f32]>| {
            with_view(keys, |k| with_view(values, |v| attend(q, k, v, mask, shape, scale)))
                .flatten()
        };
        match mask {
            Some(m) => with_f32_values(m, |m| run(Some(m))),
            None => Ok(run(None)),
        }
    })??;
    match out {
        Some(out) => Ok(Some(Tensor::from_vec(out, (b, h, group, d), q.device())?)),
        None => Ok(None),
    }
}

/// Sizes of one step's attention.
#[derive(Debug, Clone, Copy)]
struct Shape {
    b: usize,
    h: usize,
    group: usize,
    d: usize,
    width: usize,
}

fn attend(
    q: &[f32],
    keys: CacheView<'_>,
    values: CacheView<'_>,
    mask: Option<&[f32]>,
    Shape { b, h, group, d, width }: Shape,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * group * d];
    let out_addr = out.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(b * h, |pairs| {
        let mut scores = vec![0f32; group * width];
        let mut probs = vec![0f32; group * width];
        let mut packed = PackedRow::default();
        for pair in pairs {
            let (bi, hi) = (pair / h, pair % h);
            let queries = &q[pair * group * d..(pair + 1) * group * d];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supported` found AVX-512F and `d` a multiple of 16 (`decode_attention`);
            // `with_view` checked the views cover `[B, H, W, d]`; the buffers are sized here.
            unsafe {
                pair_scores(queries, keys.rows(bi, hi), group, d, width, &mut scores);
            }
            for r in 0..group {
                let (scores, probs) =
                    (&scores[r * width..(r + 1) * width], &mut probs[r * width..(r + 1) * width]);
                match mask {
                    Some(m) => {
                        let row = (bi * group + r) * width;
                        packed.softmax(scores, &m[row..row + width], scale, probs);
                    }
                    None => crate::vector_math::additive_softmax_row(scores, None, scale, probs),
                }
            }
            // SAFETY: each pair writes its own `group · d` values of `out`, which outlives the
            // pool call.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    (out_addr as *mut f32).add(pair * group * d),
                    group * d,
                )
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for the scores.
            unsafe {
                weighted_sums(&probs, values.rows(bi, hi), group, d, width, out);
            }
        }
    });
    out
}

/// A masked row's softmax over the keys its mask keeps, packed together: a padded row of a
/// batch then sums its keys in the lanes a lone row sums them in (the padding sits between its
/// prompt and its generated tokens, and would shift every later key's lane), so a batched step
/// gives each row exactly what a step on its own gives.
#[derive(Default)]
struct PackedRow {
    kept: Vec<usize>,
    scores: Vec<f32>,
    mask: Vec<f32>,
    probs: Vec<f32>,
}

impl PackedRow {
    fn softmax(&mut self, scores: &[f32], mask: &[f32], scale: f32, probs: &mut [f32]) {
        self.kept.clear();
        self.scores.clear();
        self.mask.clear();
        for (j, (&s, &m)) in scores.iter().zip(mask).enumerate() {
            if m != f32::NEG_INFINITY {
                self.kept.push(j);
                self.scores.push(s);
                self.mask.push(m);
            }
        }
        self.probs.resize(self.kept.len(), 0.0);
        crate::vector_math::additive_softmax_row(
            &self.scores,
            Some(&self.mask),
            scale,
            &mut self.probs,
        );
        probs.fill(0.0);
        for (&j, &p) in self.kept.iter().zip(&self.probs) {
            probs[j] = p;
        }
    }
}

/// `scores[r · width + j] = queries[r] · key j` for every query row `r` and key `j`, key `j`
/// at `keys + j · stride`.
///
/// Loads and stores are masked with a full mask, and pointers step with `wrapping_add`: plain
/// 512-bit loads compiled to two 256-bit moves through the stack here, and the checked index
/// arithmetic of this crate's profile was most of the loop.
///
/// # Safety
/// AVX-512F present; `d` a multiple of 16; every key readable for `d` values; `queries`
/// `group · d` long and `scores` at least `group · width`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pair_scores(
    queries: &[f32],
    (keys, stride): (*const f32, usize),
    group: usize,
    d: usize,
    width: usize,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let q = queries.as_ptr();
    let mut key = keys;
    let mut column = scores.as_mut_ptr();
    for _ in 0..width {
        let mut row = q;
        let mut out = column;
        for _ in 0..group {
            // SAFETY: the function's contract.
            unsafe {
                let mut sum = _mm512_setzero_ps();
                let mut x = 0;
                while x < d {
                    sum = _mm512_fmadd_ps(
                        _mm512_maskz_loadu_ps(!0, row.wrapping_add(x)),
                        _mm512_maskz_loadu_ps(!0, key.wrapping_add(x)),
                        sum,
                    );
                    x += LANES;
                }
                *out = _mm512_reduce_add_ps(sum);
            }
            row = row.wrapping_add(d);
            out = out.wrapping_add(width);
        }
        key = key.wrapping_add(stride);
        column = column.wrapping_add(1);
    }
}

/// `out[r] = Σⱼ probs[r · width + j] · value j` for every query row `r`, value `j` at
/// `values + j · stride`.
///
/// # Safety
/// AVX-512F present; `d` a multiple of 16; every value row readable for `d` values; `probs`
/// at least `group · width` long and `out` `group · d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sums(
    probs: &[f32],
    values: (*const f32, usize),
    group: usize,
    d: usize,
    width: usize,
    out: &mut [f32],
) {
    let mut first = 0;
    while first < group {
        let rows = ROW_TILE.min(group - first);
        let mut x = 0;
        while x < d {
            let tile = Tile { probs, values, first, x, d, width };
            // SAFETY: the function's contract, for rows `first..first + rows` and lanes
            // `x..x + 64` (or the last 16 at a time).
            unsafe {
                if d - x >= WIDTH_STEP {
                    match rows {
                        1 => value_tile::<1, 4>(tile, out),
                        2 => value_tile::<2, 4>(tile, out),
                        3 => value_tile::<3, 4>(tile, out),
                        _ => value_tile::<ROW_TILE, 4>(tile, out),
                    }
                } else {
                    match rows {
                        1 => value_tile::<1, 1>(tile, out),
                        2 => value_tile::<2, 1>(tile, out),
                        3 => value_tile::<3, 1>(tile, out),
                        _ => value_tile::<ROW_TILE, 1>(tile, out),
                    }
                }
            }
            x += if d - x >= WIDTH_STEP { WIDTH_STEP } else { LANES };
        }
        first += ROW_TILE;
    }
}

/// The part of [`weighted_sums`] one register tile computes: query rows from `first`, value
/// lanes `x..x + 64`.
#[derive(Clone, Copy)]
struct Tile<'a> {
    probs: &'a [f32],
    values: (*const f32, usize),
    first: usize,
    x: usize,
    d: usize,
    width: usize,
}

/// [`weighted_sums`] for query rows `first..first + R` and value lanes `x..x + 16·C`, the
/// `R × C` sums in registers.
///
/// # Safety
/// As [`weighted_sums`], with those rows and lanes inside it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn value_tile<const R: usize, const C: usize>(tile: Tile<'_>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let Tile { probs, values: (values, stride), first, x, d, width } = tile;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let rows: [*const f32; R] =
        std::array::from_fn(|r| probs.as_ptr().wrapping_add((first + r) * width));
    let mut v = values.wrapping_add(x);
    for j in 0..width {
        // SAFETY: the function's contract.
        unsafe {
            let lanes: [__m512; C] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(!0, v.wrapping_add(c * LANES)));
            for (sums, row) in acc.iter_mut().zip(rows) {
                let weight = _mm512_set1_ps(*row.wrapping_add(j));
                for (sum, lane) in sums.iter_mut().zip(lanes) {
                    *sum = _mm512_fmadd_ps(weight, lane, *sum);
                }
            }
        }
        v = v.wrapping_add(stride);
    }
    for (r, sums) in acc.iter().enumerate() {
        let o = out.as_mut_ptr().wrapping_add((first + r) * d + x);
        for (c, sum) in sums.iter().enumerate() {
            // SAFETY: row `first + r` and lanes `x + 16c..` lie inside `out` (`group · d`).
            unsafe { _mm512_mask_storeu_ps(o.wrapping_add(c * LANES), !0, *sum) };
        }
    }
}

#[cfg(test)]
// A test skipped on a CPU without the instructions says so.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn decode_attention_matches_the_reference_on_a_narrowed_cache() {
        // Two sequences, two key heads of 5 query rows (a tile of 4 and one of 1), 80 wide (64
        // lanes in registers together, then 16), 20 keys in use of 24 slots.
        let (b, h, group, d, width, capacity) = (2, 2, 5, 80, 20, 24);
        if !supported(d) {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let value = |i: usize| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0;
        let tensor = |len: usize, seed: usize, shape: (usize, usize, usize, usize)| {
            let data: Vec<f32> = (0..len).map(|i| value(i + seed)).collect();
            Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
        };
        let q = tensor(b * h * group * d, 7, (b, h, group, d));
        let k = tensor(b * h * capacity * d, 1, (b, h, capacity, d)).narrow(2, 0, width).unwrap();
        let v = tensor(b * h * capacity * d, 3, (b, h, capacity, d)).narrow(2, 0, width).unwrap();
        // Sequence 1 leaves its first five slots out (padding).
        let mask: Vec<f32> = (0..b * group * width)
            .map(
                |i| if i / (group * width) == 1 && i % width < 5 { f32::NEG_INFINITY } else { 0.0 },
            )
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, group, width), &Device::Cpu).unwrap();
        let scale = 0.125;
        let got = decode_attention(&q, &k, &v, Some(&mask), scale).unwrap().unwrap();
        for bi in 0..b {
            for hi in 0..h {
                let rows = |t: &Tensor| t.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                let (qs, ks, vs, got) = (rows(&q), rows(&k), rows(&v), rows(&got));
                for r in 0..group {
                    let m = mask.i((bi, 0, r)).unwrap().to_vec1::<f32>().unwrap();
                    let logits: Vec<f64> = (0..width)
                        .map(|j| {
                            let s: f64 = qs[r]
                                .iter()
                                .zip(&ks[j])
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum();
                            s * f64::from(scale) + f64::from(m[j])
                        })
                        .collect();
                    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for x in 0..d {
                        let want: f64 =
                            (0..width).map(|j| weights[j] / total * f64::from(vs[j][x])).sum();
                        let have = f64::from(got[r][x]);
                        assert!((have - want).abs() < 1e-5, "{bi} {hi} {r} {x}: {have} {want}");
                    }
                }
            }
        }
        // Without a mask every key counts; a head width the kernel does not take is declined.
        assert!(decode_attention(&q, &k, &v, None, scale).unwrap().is_some());
        let narrow_q = q.narrow(3, 0, 40).unwrap();
        let narrow_k = k.narrow(3, 0, 40).unwrap();
        let narrow_v = v.narrow(3, 0, 40).unwrap();
        assert!(decode_attention(&narrow_q, &narrow_k, &narrow_v, None, scale).unwrap().is_none());
    }

    #[test]
    fn a_padded_row_attends_bit_for_bit_like_the_row_alone() {
        // A batch row: 37 prompt keys, 11 padding slots, 5 generated keys; alone, the same 42 keys
        // back to back. The padding must not move any key's lane in the softmax's sums.
        let (h, group, d) = (2, 3, 32);
        if !supported(d) {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let (prompt, padding, generated) = (37, 11, 5);
        let value = |i: usize| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0;
        let row = |j: usize, seed: usize| -> Vec<f32> {
            (0..d).map(|x| value(j * d + x + seed)).collect()
        };
        let own: Vec<usize> = (0..prompt + generated).collect();
        let padded_keys: Vec<Option<usize>> = (0..prompt)
            .map(Some)
            .chain((0..padding).map(|_| None))
            .chain((prompt..prompt + generated).map(Some))
            .collect();
        let cache = |keys: &[Option<usize>], seed: usize| {
            let mut data = Vec::new();
            for head in 0..h {
                for key in keys {
                    data.extend(key.map_or(vec![0.0; d], |j| row(j, seed + 1000 * head)));
                }
            }
            Tensor::from_vec(data, (1, h, keys.len(), d), &Device::Cpu).unwrap()
        };
        let q: Vec<f32> = (0..h * group * d).map(|i| value(i + 5)).collect();
        let q = Tensor::from_vec(q, (1, h, group, d), &Device::Cpu).unwrap();
        let alone_keys: Vec<Option<usize>> = own.iter().map(|&j| Some(j)).collect();
        let alone = decode_attention(&q, &cache(&alone_keys, 1), &cache(&alone_keys, 2), None, 0.1)
            .unwrap()
            .unwrap();
        let width = padded_keys.len();
        let mask: Vec<f32> = (0..group * width)
            .map(|i| if padded_keys[i % width].is_none() { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, group, width), &Device::Cpu).unwrap();
        let padded = decode_attention(
            &q,
            &cache(&padded_keys, 1),
            &cache(&padded_keys, 2),
            Some(&mask),
            0.1,
        )
        .unwrap()
        .unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&padded), values(&alone));
    }
}
