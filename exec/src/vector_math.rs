//! Element-wise math in AVX-512 lanes: `exp` and the exact (erf) GELU for the AMX kernel's
//! epilogues, and the encoder's attention softmax.
//!
//! candle applies GELU with libm's scalar `erff`, which took 13% of a MiniLM forward pass
//! (perf, 220 BBC leads); the encoder's intermediate projection applies this one to its sums
//! before they leave the cache (`AmxMatrix::bias_gelu`).

#![allow(unsafe_code)]

use rayon::prelude::*;

/// Numerator coefficients (odd powers, highest first) of the rational erf approximation below.
const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
/// Denominator coefficients (even powers, highest first).
const ERF_Q: [f32; 5] =
    [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];

/// `erf(x)` as a rational function of `x` on `[-4, 4]` (outside it erf is ±1 in f32): the
/// approximation Eigen's `generic_fast_erf_float` uses, absolute error under 1e-6 (tested).
#[cfg(test)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ERF_P.iter().fold(0.0, |acc, &c| acc * x2 + c);
    let q = ERF_Q.iter().fold(0.0, |acc, &c| acc * x2 + c);
    x * p / q
}

/// GELU, `0.5 · x · (1 + erf(x / √2))`, one value at a time (the lanes' reference).
#[cfg(test)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// [`gelu_erf`] per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn gelu_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
    let erf = erf_avx512(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
    _mm512_fmadd_ps(half_x, erf, half_x)
}

/// [`erf`] per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn erf_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_setzero_ps();
    for c in ERF_P {
        p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(c));
    }
    let mut q = _mm512_setzero_ps();
    for c in ERF_Q {
        q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(c));
    }
    _mm512_mul_ps(_mm512_mul_ps(x, p), recip_avx512(q))
}

/// `1 / x` per lane: the 14-bit estimate and one Newton step (relative error about 1e-8, far
/// below bf16's), for the epilogues that run between the AMX products: a division's throughput
/// is a tenth of a multiply's. Measured on 428 UCI reviews batched through Qwen, 12.0 → 11.6 s
/// (three runs each, within this machine's noise); MiniLM did not move.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn recip_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let r = _mm512_rcp14_ps(x);
    _mm512_fmadd_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(1.0)), r)
}

/// `e^x` per lane: `2^n · 2^f` with `n` the nearest integer to `x·log2(e)` and `2^f` a degree-6
/// Taylor polynomial of `e^(f·ln 2)` on `|f| ≤ 0.5` (relative error under 2e-7, below bf16's
/// 4e-3); inputs clamped to ±88 so the result stays finite.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0)), _mm512_set1_ps(88.0));
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<0x08>(t);
    let f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(std::f32::consts::LN_2));
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `1 / (1 + e^(−x))` per lane, to the precision of a bf16 result: `e^(−x) = 2^n · 2^u` with a
/// degree-4 Taylor polynomial of `2^u` on `|u| ≤ 0.5` (relative error under 1e-4, bf16 keeps 8
/// bits: 4e-3) and [`recip_avx512`]; `e^(−x)` is held under 2^64, so no input gives NaN. For
/// the gated MLP's SiLU epilogue, which runs between the AMX products: 13 vector operations per
/// 16 values against 18 with [`exp_avx512`]. The reciprocal keeps its Newton step: the bare
/// 14-bit estimate errs the same way on every row, and a sum of 64 such SiLU outputs drifted by
/// 3% (the gated-product test caught it). The gated product of 512 tokens (`cargo bench
/// --profile dev --bench roofline`, seven runs each, alternating): median 1,377 → 1,519
/// GFLOP/s (+10%); Qwen label scoring (`--bench models`) about 3–5%.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn sigmoid_bf16_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // `e^(−x)` at most 2^64: the Newton step would turn an infinite sum into NaN.
    let t = _mm512_min_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(-std::f32::consts::LOG2_E)),
        _mm512_set1_ps(64.0),
    );
    let n = _mm512_roundscale_ps::<0x08>(t);
    let u = _mm512_sub_ps(t, n);
    let ln2 = std::f32::consts::LN_2;
    let mut p = _mm512_set1_ps(ln2 * ln2 * ln2 * ln2 / 24.0);
    for c in [ln2 * ln2 * ln2 / 6.0, ln2 * ln2 / 2.0, ln2, 1.0] {
        p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(c));
    }
    let e = _mm512_scalef_ps(p, n);
    recip_avx512(_mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// Rows per rayon task in [`additive_masked_softmax`].
const SOFTMAX_ROWS_PER_TASK: usize = 256;

/// `out = softmax(scale · row)` over the keys `keep` marks (1 = real token); the others get
/// exactly 0, as with Hugging Face's additive `f32::MIN` mask.
///
/// A kept key's probability does not depend on how much padding follows: every value goes
/// through the same lanes' `exp` (the tail under a lane mask) and the sum runs in key order,
/// where padding adds exact zeros at the end. (candle's softmax sums in vector lanes with a
/// scalar tail whose split moves with the row length.)
pub(crate) fn softmax_row(row: &[f32], keep: &[u32], scale: f32, out: &mut [f32]) {
    let max = row
        .iter()
        .zip(keep)
        .filter(|&(_, &k)| k != 0)
        .map(|(&s, _)| s * scale)
        .fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked just above).
        unsafe { exp_row_avx512(row, keep, scale, max, out) };
    } else {
        exp_row(row, keep, scale, max, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    exp_row(row, keep, scale, max, out);
    let sum: f32 = out.iter().sum();
    if sum > 0.0 {
        let inverse = 1.0 / sum;
        out.iter_mut().for_each(|p| *p *= inverse);
    }
}

/// `out = exp(scale · row − max)` where kept, 0 elsewhere, one value at a time.
fn exp_row(row: &[f32], keep: &[u32], scale: f32, max: f32, out: &mut [f32]) {
    for ((o, &s), &k) in out.iter_mut().zip(row).zip(keep) {
        *o = if k != 0 { (s * scale - max).exp() } else { 0.0 };
    }
}

/// [`exp_row`] 16 lanes at a time, the tail under a lane mask (the same `exp` for every key).
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_row_avx512(row: &[f32], keep: &[u32], scale: f32, max: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    for at in (0..row.len()).step_by(16) {
        let lanes = (row.len() - at).min(16);
        let valid: __mmask16 = if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 };
        // SAFETY: the masked loads and store touch only the `lanes` values from `at`, inside
        // `row`, `keep` and `out` (equally long).
        unsafe {
            let s = _mm512_maskz_loadu_ps(valid, row.as_ptr().add(at));
            let k = _mm512_maskz_loadu_epi32(valid, keep.as_ptr().add(at) as *const i32);
            let kept = _mm512_test_epi32_mask(k, k);
            let x = _mm512_fmsub_ps(s, _mm512_set1_ps(scale), _mm512_set1_ps(max));
            let e = _mm512_maskz_mov_ps(kept, exp_avx512(x));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), valid, e);
        }
    }
}

/// The decoder's attention probabilities: each row of `scores` (`[batch, heads, len, width]`
/// row-major) becomes `softmax(scale · row + mask row)`, where `mask` (`[batch, len / share,
/// width]`, shared by the heads, and by each `share` consecutive rows: the query heads of a
/// group, stacked position by position) is additive, 0 or −∞, and a −∞ key gets exactly 0.
/// `None`: nothing masked.
///
/// One pass writes the scaled, masked scores and finds the maximum, a second exponentiates in
/// 16 lanes and sums, a third normalises. In place of candle's division, broadcast add and
/// softmax, each a fresh tensor with libm's scalar `expf` (7% and 5% of a qwen2.5 summary
/// chunk's run under perf, the allocations beside).
pub(crate) fn additive_masked_softmax(
    scores: &[f32],
    mask: Option<&[f32]>,
    (heads, len, width): (usize, usize, usize),
    share: usize,
    scale: f32,
) -> Vec<f32> {
    let mut probs = vec![0f32; scores.len()];
    if width == 0 || len == 0 || heads == 0 || share == 0 {
        return probs;
    }
    let mask_rows = len / share;
    let chunk = SOFTMAX_ROWS_PER_TASK * width;
    probs.par_chunks_mut(chunk).zip(scores.par_chunks(chunk)).enumerate().for_each(
        |(task, (out, input))| {
            let first = task * SOFTMAX_ROWS_PER_TASK;
            let rows = out.chunks_exact_mut(width).zip(input.chunks_exact(width));
            for (i, (out, row)) in rows.enumerate() {
                let index = first + i;
                let mask_row = (index / (heads * len)) * mask_rows + (index % len) / share;
                let mask = mask.map(|m| &m[mask_row * width..(mask_row + 1) * width]);
                additive_softmax_row(row, mask, scale, out);
            }
        },
    );
    probs
}

/// One row of [`additive_masked_softmax`]: `out = softmax(scale · row + mask)`, a −∞ mask value
/// giving exactly 0 (a row all −∞: all 0).
pub(crate) fn additive_softmax_row(row: &[f32], mask: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked just above).
        unsafe { additive_softmax_row_avx512(row, mask, scale, out) };
        return;
    }
    additive_softmax_row_scalar(row, mask, scale, out);
}

/// [`additive_softmax_row`] one value at a time.
fn additive_softmax_row_scalar(row: &[f32], mask: Option<&[f32]>, scale: f32, out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (i, (o, &s)) in out.iter_mut().zip(row).enumerate() {
        *o = s * scale + mask.map_or(0.0, |m| m[i]);
        max = max.max(*o);
    }
    if max == f32::NEG_INFINITY {
        out.fill(0.0);
        return;
    }
    for v in out.iter_mut() {
        *v = if *v == f32::NEG_INFINITY { 0.0 } else { (*v - max).exp() };
    }
    let inverse = 1.0 / out.iter().sum::<f32>();
    out.iter_mut().for_each(|p| *p *= inverse);
}

/// [`additive_softmax_row`] 16 lanes at a time, each tail under a lane mask: the scaled and
/// masked scores and their maximum, then `e^(x − max)` (−∞ to exactly 0) and the sum, then the
/// division.
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn additive_softmax_row_avx512(
    row: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = row.len().min(out.len()).min(mask.map_or(usize::MAX, <[f32]>::len));
    let lanes_at = |at: usize| -> __mmask16 {
        let lanes = (n - at).min(16);
        if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 }
    };
    let minus_infinity = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut maxes = minus_infinity;
    // SAFETY (all three loops): the masked loads and stores touch only the lanes below `n`
    // from `at`, inside `row`, `mask` and `out`.
    for at in (0..n).step_by(16) {
        let valid = lanes_at(at);
        unsafe {
            let s = _mm512_maskz_loadu_ps(valid, row.as_ptr().add(at));
            let m = match mask {
                Some(m) => _mm512_maskz_loadu_ps(valid, m.as_ptr().add(at)),
                None => _mm512_setzero_ps(),
            };
            let x = _mm512_fmadd_ps(s, _mm512_set1_ps(scale), m);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), valid, x);
            maxes = _mm512_mask_max_ps(maxes, valid, maxes, x);
        }
    }
    let max = _mm512_reduce_max_ps(maxes);
    if max == f32::NEG_INFINITY {
        out[..n].fill(0.0);
        return;
    }
    let mut sums = _mm512_setzero_ps();
    for at in (0..n).step_by(16) {
        let valid = lanes_at(at);
        unsafe {
            let x = _mm512_maskz_loadu_ps(valid, out.as_ptr().add(at));
            let kept = valid & _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(x, minus_infinity);
            let e = _mm512_maskz_mov_ps(kept, exp_avx512(_mm512_sub_ps(x, _mm512_set1_ps(max))));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), valid, e);
            sums = _mm512_add_ps(sums, e);
        }
    }
    let inverse = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sums));
    for at in (0..n).step_by(16) {
        let valid = lanes_at(at);
        unsafe {
            let e = _mm512_maskz_loadu_ps(valid, out.as_ptr().add(at));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), valid, _mm512_mul_ps(e, inverse));
        }
    }
}

/// `ln Σ e^x` over `row` (−∞ for an empty row), the normaliser of a log-softmax: scoring a
/// label's later tokens needs it over the whole vocabulary at every position, and only it, so
/// the log-probabilities of the other 150,000 tokens are never written.
pub(crate) fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked just above).
        return unsafe { log_sum_exp_avx512(row) };
    }
    log_sum_exp_scalar(row)
}

/// [`log_sum_exp`] one value at a time.
fn log_sum_exp_scalar(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return max;
    }
    max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// [`log_sum_exp`] 16 lanes at a time: the maximum, then the sum of `e^(x − max)`.
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn log_sum_exp_avx512(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len();
    let lanes_at = |at: usize| -> __mmask16 {
        let lanes = (n - at).min(16);
        if lanes == 16 { u16::MAX } else { (1u16 << lanes) - 1 }
    };
    let mut maxes = _mm512_set1_ps(f32::NEG_INFINITY);
    // SAFETY (both loops): the masked loads touch only the lanes below `n` from `at`.
    for at in (0..n).step_by(16) {
        let valid = lanes_at(at);
        let x = unsafe { _mm512_maskz_loadu_ps(valid, row.as_ptr().add(at)) };
        maxes = _mm512_mask_max_ps(maxes, valid, maxes, x);
    }
    let max = _mm512_reduce_max_ps(maxes);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return max;
    }
    let mut sums = _mm512_setzero_ps();
    for at in (0..n).step_by(16) {
        let valid = lanes_at(at);
        let x = unsafe { _mm512_maskz_loadu_ps(valid, row.as_ptr().add(at)) };
        let e = _mm512_maskz_mov_ps(valid, exp_avx512(_mm512_sub_ps(x, _mm512_set1_ps(max))));
        sums = _mm512_add_ps(sums, e);
    }
    max + _mm512_reduce_add_ps(sums).ln()
}

#[cfg(test)]
// A test skipped on a CPU without the instructions says so.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_matches_the_f64_sum_with_and_without_lanes() {
        for n in [0usize, 1, 5, 16, 17, 151_937] {
            let row: Vec<f32> =
                (0..n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 30.0).collect();
            let reference = if n == 0 {
                f64::NEG_INFINITY
            } else {
                row.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln()
            };
            for got in [log_sum_exp(&row), log_sum_exp_scalar(&row)] {
                if n == 0 {
                    assert_eq!(got, f32::NEG_INFINITY);
                } else {
                    assert!((f64::from(got) - reference).abs() < 1e-3, "{n}: {got} vs {reference}");
                }
            }
        }
        let huge = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&huge) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }

    /// erf by its Taylor series in f64 (exact enough on |x| ≤ 3) and 1 − erfc's asymptotic
    /// tail beyond.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 3.0 {
            let z = x.abs();
            let tail = (-z * z).exp() / (z * std::f64::consts::PI.sqrt())
                * (1.0 - 1.0 / (2.0 * z * z) + 3.0 / (4.0 * z.powi(4)));
            return x.signum() * (1.0 - tail);
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_a_millionth_of_the_series() {
        let mut worst: f64 = 0.0;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf(x as f32) as f64 - erf_reference(x)).abs());
        }
        assert!(worst < 1e-6, "worst error {worst}");
    }

    #[test]
    fn the_lanes_match_the_scalar_gelu() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let inputs: Vec<f32> = (0..4000).map(|i| i as f32 / 250.0 - 8.0).collect();
        for chunk in inputs.chunks_exact(16) {
            let mut lanes = [0f32; 16];
            // SAFETY: AVX-512F is present (checked above); both buffers hold 16 f32.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(lanes.as_mut_ptr(), gelu_avx512(_mm512_loadu_ps(chunk.as_ptr())));
            }
            for (&x, &y) in chunk.iter().zip(&lanes) {
                let expected = gelu_erf(x);
                assert!(
                    (y - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                    "{x}: {y} vs {expected}"
                );
            }
        }
        // GELU's known values: gelu(0) = 0, gelu(1) = 0.841345, gelu(-1) = -0.158655.
        for (x, g) in [(0.0f32, 0.0f32), (1.0, 0.841_345), (-1.0, -0.158_655), (5.0, 5.0)] {
            assert!((gelu_erf(x) - g).abs() < 1e-5, "gelu({x}) = {}", gelu_erf(x));
        }
    }

    #[test]
    fn the_bf16_sigmoid_is_within_a_ten_thousandth_and_stays_finite() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let mut inputs: Vec<f32> = (0..8000).map(|i| i as f32 / 400.0 - 10.0).collect();
        inputs.extend([-200.0, -90.0, -88.5, 88.5, 90.0, 200.0, f32::MIN, f32::MAX]);
        inputs.resize(inputs.len().next_multiple_of(16), 0.0);
        let mut worst: f64 = 0.0;
        for chunk in inputs.chunks_exact(16) {
            let mut lanes = [0f32; 16];
            // SAFETY: AVX-512F is present (checked above); both buffers hold 16 f32.
            unsafe {
                use std::arch::x86_64::*;
                let got = sigmoid_bf16_avx512(_mm512_loadu_ps(chunk.as_ptr()));
                _mm512_storeu_ps(lanes.as_mut_ptr(), got);
            }
            for (&x, &got) in chunk.iter().zip(&lanes) {
                let want = 1.0 / (1.0 + (-(x as f64)).exp());
                assert!(got.is_finite() && (0.0..=1.0001).contains(&got), "sigmoid({x}) = {got}");
                // Below e^-44 the result is held at 2^-64: a SiLU of `x · 2^-64` is 0 in bf16
                // sums all the same.
                if want > 1e-19 {
                    worst = worst.max((got as f64 - want).abs() / want);
                } else {
                    assert!(got <= 1e-19, "sigmoid({x}) = {got}");
                }
            }
        }
        assert!(worst < 1e-4, "worst relative error {worst}");
    }

    #[test]
    fn additive_masked_softmax_matches_the_reference_and_zeroes_masked_keys() {
        // batch 2, heads 2, len 3, width 5; the mask differs per batch entry and position.
        let (batch, heads, len, width) = (2, 2, 3, 5);
        let scores: Vec<f32> =
            (0..batch * heads * len * width).map(|i| ((i * 37) % 23) as f32 * 0.7 - 6.0).collect();
        let mask: Vec<f32> = (0..batch * len * width)
            .map(|i| {
                if (i % width) > (i / width) % len + 1 + i / (len * width) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let scale = 0.125;
        let probs = additive_masked_softmax(&scores, Some(&mask), (heads, len, width), 1, scale);
        for row in 0..batch * heads * len {
            let m = &mask[((row / (heads * len)) * len + row % len) * width..][..width];
            let x: Vec<f64> = (0..width)
                .map(|k| f64::from(scores[row * width + k]) * f64::from(scale) + f64::from(m[k]))
                .collect();
            let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
            for k in 0..width {
                let p = probs[row * width + k];
                if m[k] == f32::NEG_INFINITY {
                    assert_eq!(p, 0.0, "row {row} key {k} is masked");
                } else {
                    let want = (x[k] - max).exp() / sum;
                    assert!((f64::from(p) - want).abs() < 1e-6, "row {row} key {k}: {p} vs {want}");
                }
            }
        }
        // No mask: every key counts.
        let plain = additive_masked_softmax(&scores, None, (heads, len, width), 1, scale);
        assert!(plain.iter().all(|&p| p > 0.0));
        // Rows sharing a mask row: three rows per position read the position's mask.
        let shared: Vec<f32> = (0..batch * len * 3)
            .flat_map(|r| {
                let row = (r / (len * 3)) * len + (r % (len * 3)) / 3;
                mask[row * width..(row + 1) * width].to_vec()
            })
            .collect();
        let wide: Vec<f32> = (0..batch * heads * len * 3)
            .flat_map(|r| {
                let (bh, i) = (r / (len * 3), (r % (len * 3)) / 3);
                scores[(bh * len + i) * width..(bh * len + i + 1) * width].to_vec()
            })
            .collect();
        let by_share =
            additive_masked_softmax(&wide, Some(&mask), (heads, len * 3, width), 3, scale);
        let by_row =
            additive_masked_softmax(&wide, Some(&shared), (heads, len * 3, width), 1, scale);
        assert_eq!(by_share, by_row);
        // The one-value-at-a-time path (CPUs without AVX-512) gives the same probabilities.
        for row in 0..batch * heads * len {
            let m = &mask[((row / (heads * len)) * len + row % len) * width..][..width];
            let mut scalar = vec![0.0; width];
            additive_softmax_row_scalar(
                &scores[row * width..][..width],
                Some(m),
                scale,
                &mut scalar,
            );
            for (a, b) in scalar.iter().zip(&probs[row * width..][..width]) {
                assert!((a - b).abs() < 1e-6, "row {row}: {a} vs {b}");
            }
        }
    }

    /// Rows `[batch, heads, len, len]` through [`softmax_row`], each under its sequence's mask.
    fn masked_softmax(
        scores: &[f32],
        mask: &[u32],
        batch: usize,
        len: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut probs = vec![0f32; scores.len()];
        let rows_per_sequence = scores.len() / (batch * len);
        for (r, (out, row)) in probs.chunks_exact_mut(len).zip(scores.chunks_exact(len)).enumerate()
        {
            let sequence = r / rows_per_sequence;
            softmax_row(row, &mask[sequence * len..(sequence + 1) * len], scale, out);
        }
        probs
    }

    #[test]
    fn masked_softmax_matches_the_reference_and_zeroes_padding() {
        // 3 sequences × 2 heads × 37 queries × 37 keys (two lanes and a tail per row); sequence
        // s has 37 − 10·s real tokens.
        let (batch, heads, len, scale) = (3, 2, 37, 0.125f32);
        let scores: Vec<f32> = (0..batch * heads * len * len)
            .map(|i| ((i * 7919) % 997) as f32 / 20.0 - 25.0)
            .collect();
        let mask: Vec<u32> =
            (0..batch * len).map(|i| u32::from(i % len < len - 10 * (i / len))).collect();
        let probs = masked_softmax(&scores, &mask, batch, len, scale);
        for (r, (row, got)) in scores.chunks(len).zip(probs.chunks(len)).enumerate() {
            let keep = &mask[r / (heads * len) * len..][..len];
            let kept = || row.iter().zip(keep).filter(|p| *p.1 == 1).map(|p| p.0 * scale);
            let max = kept().fold(f32::MIN, f32::max);
            let exps: Vec<f64> = row
                .iter()
                .zip(keep)
                .map(|(&s, &k)| if k == 1 { f64::from(s * scale - max).exp() } else { 0.0 })
                .collect();
            let sum: f64 = exps.iter().sum();
            for (g, e) in got.iter().zip(&exps) {
                assert!((f64::from(*g) - e / sum).abs() < 1e-6, "row {r}: {g} vs {}", e / sum);
            }
        }
    }

    #[test]
    fn padding_does_not_move_a_kept_keys_probability_by_a_bit() {
        // 21 real keys (a whole lane and a tail of 5) alone, and padded to 40 (where keys
        // 16..21 share a lane with padding).
        let real: Vec<f32> = (0..21).map(|i| ((i * 37) % 23) as f32 / 3.0 - 4.0).collect();
        let alone = masked_softmax(&real, &[1; 21], 1, 21, 0.3);
        let mut padded = real.clone();
        padded.resize(40, 5.0); // padding scores that would win if they counted
        let keep: Vec<u32> = (0..40).map(|i| u32::from(i < 21)).collect();
        // One sequence, one head: 40 query rows; every row gets the same scores here.
        let rows: Vec<f32> = padded.iter().copied().cycle().take(40 * 40).collect();
        let batched = masked_softmax(&rows, &keep, 1, 40, 0.3);
        assert_eq!(&batched[..21], &alone[..]);
        assert!(batched[21..40].iter().all(|&p| p == 0.0));
    }
}
