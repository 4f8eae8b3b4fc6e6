//! Decode-step matrix products on Q8_0 weights with AVX-512 VNNI.
//!
//! A decode step multiplies a few activation rows (one per sequence) by every weight matrix, so
//! it streams the weights once and is bound by how fast each 32-weight block is consumed.
//! candle 0.11's Q8_0 dot product is 256-bit AVX2 (`maddubs`, then widening adds) and is called
//! once per output column; here one 512-bit `vpdpbusd` multiplies and sums two blocks, each weight
//! row is read once for up to 8 activation rows whose sums stay in registers, and the rows are
//! split over candle's own thread pool (the one its kernels use, whose workers stay warm between
//! the many small products of a step). Weights are stored offset to unsigned bytes, so no sign
//! juggling runs per block: 6 vector instructions per pair of blocks and activation row.
//!
//! Same arithmetic as candle's Q8_0 path: activations are quantized to 8 bits per 32-value block
//! (scale `max|x| / 127`), integer dot products per block, scaled by both blocks' scales. The
//! weights are repacked at load into separate quant and scale arrays (36 bytes per block
//! instead of 34: the scale is kept as f32). Used only where the CPU has AVX-512 VNNI and the
//! row width is a multiple of 64; elsewhere the caller keeps candle's path.

#![allow(unsafe_code)]

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::ModelError;

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block as stored: an f16 scale, then 32 signed quants.
const BLOCK_BYTES: usize = 2 + BLOCK;

/// A `[rows, cols]` weight matrix in Q8_0, repacked for [`Q8Matrix::matmul`].
#[derive(Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// Row-major quants, `cols` per row, stored offset by 128 (`w + 128` as an unsigned byte):
    /// `vpdpbusd` multiplies unsigned by signed bytes, and the offset's contribution
    /// (`128 * sum(x)` per block) is known from the activations alone (see [`Activations`]).
    quants: Vec<u8>,
    /// One scale per block, `cols / 32` per row.
    scales: Vec<f32>,
}

/// Whether this CPU runs the VNNI kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Lanes of one 512-bit vector of i32/f32: a pair of blocks, 8 lanes each.
const LANES: usize = 16;
/// Activation rows multiplied with one pass over a weight row (accumulators kept in registers).
const ROW_TILE: usize = 8;

impl Q8Matrix {
    /// Repacks a 2-D Q8_0 tensor; `None` when the kernel cannot run it (another format, a row
    /// width not a multiple of 64, or a CPU without AVX-512 VNNI).
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>, ModelError> {
        let dims = q.shape().dims();
        if q.dtype() != GgmlDType::Q8_0 || dims.len() != 2 || !available() {
            return Ok(None);
        }
        let (rows, cols) = (dims[0], dims[1]);
        if cols == 0 || !cols.is_multiple_of(2 * BLOCK) {
            return Ok(None);
        }
        let data = q.data()?;
        let blocks = rows * cols / BLOCK;
        if data.len() != blocks * BLOCK_BYTES {
            return Ok(None);
        }
        let mut quants = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(blocks);
        for block in data.chunks_exact(BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            quants.extend(block[2..].iter().map(|&b| (b as i8 as i16 + 128) as u8));
        }
        Ok(Some(Self { rows, cols, quants, scales }))
    }

    /// Output columns (the weight's rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held: a quant per weight and an f32 scale per block.
    pub fn bytes(&self) -> usize {
        self.quants.len() + 4 * self.scales.len()
    }

    /// `x [m, cols]` (row-major) times the transposed weights: `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = Activations::quantize(x, self.cols);
        let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
        let mut out = vec![0f32; m * self.rows];
        let out_addr = out.as_mut_ptr() as usize;
        let blocks = self.cols / BLOCK;
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            let mut sums = [0f32; ROW_TILE];
            for r in range {
                let w = &self.quants[r * self.cols..(r + 1) * self.cols];
                let ws = &self.scales[r * blocks..(r + 1) * blocks];
                for first in (0..m).step_by(ROW_TILE) {
                    let tile = ROW_TILE.min(m - first);
                    dot_rows(w, ws, &rows[first..first + tile], &mut sums[..tile]);
                    for (i, &dot) in (first..).zip(&sums[..tile]) {
                        // SAFETY: every (i, r) is written by exactly one work item (ranges of
                        // rows do not overlap), and `out` outlives the pool call.
                        unsafe { *(out_addr as *mut f32).add(i * self.rows + r) = dot };
                    }
                }
            }
        });
        out
    }
}

/// Activation rows quantized as candle's Q8_0 does (8 bits per 32-value block, scale
/// `max|x| / 127`; exact halves round to even where candle rounds them away from zero), laid out for the kernel: per pair of blocks, 16 lanes of scales (8 per block)
/// and 16 lanes of the integer sum's starting value, `-128 * sum(x)` of each block in its first
/// lane, which cancels the weights' +128 offset.
struct Activations {
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
    starts: Vec<i32>,
}

/// One activation row: quants, lane scales, lane starts.
type ActRow<'a> = (&'a [i8], &'a [f32], &'a [i32]);

impl Activations {
    fn quantize(x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(2 * BLOCK) && x.len().is_multiple_of(cols));
        let blocks = x.len() / BLOCK;
        let mut acts = Self {
            cols,
            quants: vec![0; x.len()],
            scales: vec![0.0; blocks * LANES / 2],
            starts: vec![0; blocks * LANES / 2],
        };
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: activations are only quantized for a `Q8Matrix`, built when `available()`.
            unsafe { acts.fill_avx512(x) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        acts.fill_scalar(x);
        acts
    }

    /// Block `b` of `x`: its quants, and its scale and `-128 * sum` in the block's lanes.
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn fill_scalar(&mut self, x: &[f32]) {
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let quants = &mut self.quants[b * BLOCK..(b + 1) * BLOCK];
            for (q, v) in quants.iter_mut().zip(block) {
                *q = (v * inv).round_ties_even() as i8;
            }
            let sum: i32 = quants.iter().map(|&q| i32::from(q)).sum();
            self.scales[b * LANES / 2..(b + 1) * LANES / 2].fill(d);
            self.starts[b * LANES / 2] = -128 * sum;
        }
    }

    /// [`Self::fill_scalar`] with 16-lane vectors: on the serial path of every decode
    /// product, where the scalar rounding (a libm call per value) cost ~5% of a batch-16 step.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn fill_avx512(&mut self, x: &[f32]) {
        use std::arch::x86_64::*;
        let sign = _mm512_set1_ps(-0.0);
        for b in 0..x.len() / BLOCK {
            // SAFETY (loads and stores): block `b` lies inside `x` and `quants`, and its 8 lanes
            // inside `scales` and `starts` (sized from the block count).
            unsafe {
                let lo = _mm512_maskz_loadu_ps(!0, x.as_ptr().add(b * BLOCK));
                let hi = _mm512_maskz_loadu_ps(!0, x.as_ptr().add(b * BLOCK + 16));
                let amax = _mm512_reduce_max_ps(_mm512_max_ps(
                    _mm512_andnot_ps(sign, lo),
                    _mm512_andnot_ps(sign, hi),
                ));
                let d = amax / 127.0;
                let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
                // Round to nearest (even on ties, the default rounding mode).
                let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
                let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
                let out = self.quants.as_mut_ptr().add(b * BLOCK);
                _mm_storeu_si128(out.cast(), _mm512_cvtsepi32_epi8(qlo));
                _mm_storeu_si128(out.add(16).cast(), _mm512_cvtsepi32_epi8(qhi));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
                let lanes = b * LANES / 2;
                for l in 0..LANES / 2 {
                    *self.scales.get_unchecked_mut(lanes + l) = d;
                }
                *self.starts.get_unchecked_mut(lanes) = -128 * sum;
            }
        }
    }

    /// Row `i`'s quants, lane scales and lane starts.
    fn row(&self, i: usize) -> ActRow<'_> {
        let lanes = self.cols / BLOCK * LANES / 2;
        (
            &self.quants[i * self.cols..(i + 1) * self.cols],
            &self.scales[i * lanes..(i + 1) * lanes],
            &self.starts[i * lanes..(i + 1) * lanes],
        )
    }
}

/// Weight row `w` (offset quants, block scales `ws`) dotted with activation rows `rows` (at most
/// [`ROW_TILE`]), into `out`.
fn dot_rows(w: &[u8], ws: &[f32], rows: &[ActRow<'_>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Q8Matrix` is only built when `available()` (checked at construction); every
        // slice holds a whole number of 64-value pairs of blocks.
        unsafe {
            match rows.len() {
                1 => dot_vnni::<1>(w, ws, rows, out),
                2 => dot_vnni::<2>(w, ws, rows, out),
                3 => dot_vnni::<3>(w, ws, rows, out),
                4 => dot_vnni::<4>(w, ws, rows, out),
                5 => dot_vnni::<5>(w, ws, rows, out),
                6 => dot_vnni::<6>(w, ws, rows, out),
                7 => dot_vnni::<7>(w, ws, rows, out),
                _ => dot_vnni::<ROW_TILE>(w, ws, rows, out),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for (row, o) in rows.iter().zip(out.iter_mut()) {
            *o = dot_scalar(w, ws, *row);
        }
    }
}

/// Reference arithmetic: `sum over blocks of ws[b] * xs[b] * ((w_b - 128) . x_b)`.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn dot_scalar(w: &[u8], ws: &[f32], (x, xs, _): ActRow<'_>) -> f32 {
    w.chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .enumerate()
        .map(|(b, (wb, xb))| {
            let sum: i32 =
                wb.iter().zip(xb).map(|(&p, &q)| (i32::from(p) - 128) * i32::from(q)).sum();
            sum as f32 * ws[b] * xs[b * LANES / 2]
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_vnni<const N: usize>(
    w: &[u8],
    ws: &[f32],
    rows: &[ActRow<'_>],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let rows: [ActRow<'_>; N] = std::array::from_fn(|j| rows[j]);
    let mut acc = [_mm512_setzero_ps(); N];
    for pair in 0..w.len() / (2 * BLOCK) {
        // SAFETY (all loads): `pair * 64 + 64 <= w.len() == x.len()`, two weight scales per pair,
        // and 16 lanes of activation scales and starts per pair. Masked loads with a full mask:
        // the plain 512-bit loads compiled to two 256-bit loads through the stack here.
        let wv = unsafe { _mm512_maskz_loadu_epi8(!0, w.as_ptr().add(pair * 64).cast()) };
        let (s0, s1) = unsafe { (*ws.get_unchecked(2 * pair), *ws.get_unchecked(2 * pair + 1)) };
        // Lanes 0..8 hold the first block's partial sums, 8..16 the second's.
        let w_scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
        for j in 0..N {
            let (x, xs, start) = rows[j];
            let (xv, x_scale, start) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(!0, x.as_ptr().add(pair * 64)),
                    _mm512_maskz_loadu_ps(!0, xs.as_ptr().add(pair * LANES)),
                    _mm512_maskz_loadu_epi32(!0, start.as_ptr().add(pair * LANES)),
                )
            };
            let sums = _mm512_dpbusd_epi32(start, wv, xv);
            acc[j] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w_scale, x_scale), acc[j]);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(a);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, Tensor};

    fn weights(rows: usize, cols: usize) -> Tensor {
        let values: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3).collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_kernel_matches_candle_on_the_same_q8_0_weights() {
        if !available() {
            return; // nothing to compare on this CPU: the caller keeps candle's path
        }
        let (rows, cols) = (72, 192);
        let q = QTensor::quantize(&weights(rows, cols), GgmlDType::Q8_0).unwrap();
        let matrix = Q8Matrix::from_qtensor(&q).unwrap().unwrap();
        let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        for m in [1, 3, 11] {
            let x: Vec<f32> = (0..m * cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0).collect();
            let ours = matrix.matmul(&x, m);
            let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
            let theirs = candle_core::Module::forward(&qm, &xt).unwrap().flatten_all().unwrap();
            let theirs = theirs.to_vec1::<f32>().unwrap();
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(worst <= 0.01 * scale, "{m} rows: differs by {worst} (outputs up to {scale})");
        }
    }

    #[test]
    fn the_vector_dot_product_equals_the_scalar_one() {
        if !available() {
            return;
        }
        // 3 weight rows x 11 activation rows: a full tile of 8 and a partial one of 3.
        let cols = 128;
        let w: Vec<u8> = (0..3 * cols as i32).map(|i| (i * 37 % 256) as u8).collect();
        let ws: Vec<f32> = (0..3 * cols / BLOCK).map(|b| 0.25 + b as f32 * 0.5).collect();
        let x: Vec<f32> = (0..11 * cols).map(|i| ((i * 53 % 255) as f32 - 127.0) / 13.0).collect();
        let acts = Activations::quantize(&x, cols);
        for r in 0..3 {
            let (w, ws) = (&w[r * cols..(r + 1) * cols], &ws[r * 4..(r + 1) * 4]);
            let rows: Vec<ActRow<'_>> = (0..11).map(|i| acts.row(i)).collect();
            let mut ours = [0f32; 11];
            dot_rows(w, ws, &rows[..8], &mut ours[..8]);
            dot_rows(w, ws, &rows[8..], &mut ours[8..]);
            for (i, a) in ours.iter().enumerate() {
                let b = dot_scalar(w, ws, rows[i]);
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "row {r}, {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn vector_and_scalar_quantization_agree() {
        if !available() {
            return;
        }
        let cols = 192;
        let x: Vec<f32> = (0..2 * cols).map(|i| ((i * 71 % 301) as f32 - 150.0) / 7.0).collect();
        let vector = Activations::quantize(&x, cols);
        let mut scalar = Activations {
            cols,
            quants: vec![0; x.len()],
            scales: vec![0.0; vector.scales.len()],
            starts: vec![0; vector.starts.len()],
        };
        scalar.fill_scalar(&x);
        assert_eq!(vector.quants, scalar.quants);
        assert_eq!(vector.scales, scalar.scales);
        assert_eq!(vector.starts, scalar.starts);
    }

    #[test]
    fn other_formats_and_odd_widths_are_left_to_candle() {
        let q4 = QTensor::quantize(&weights(8, 64), GgmlDType::Q4_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&q4).unwrap().is_none());
        let narrow = QTensor::quantize(&weights(8, 96), GgmlDType::Q8_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&narrow).unwrap().is_none());
    }
}
