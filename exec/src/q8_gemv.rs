//! Decode-step matrix products on Q8_0 weights with AVX-512 VNNI.
//!
//! A decode step multiplies a few activation rows (one per sequence) by every weight matrix, so
//! it streams the weights once and is bound by how fast each 32-weight block is consumed.
//! candle 0.11's Q8_0 dot product is 256-bit AVX2 (`maddubs`, then widening adds) and is called
//! once per output column; here one 512-bit `vpdpbusd` multiplies and sums two blocks, each weight
//! row is read once for all activation rows, and the rows are split over candle's own thread pool
//! (the one its kernels use, whose workers stay warm between the many small products of a step).
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
    /// Row-major quants, `cols` per row.
    quants: Vec<i8>,
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
            quants.extend(block[2..].iter().map(|&b| b as i8));
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
        let (xq, xs) = quantize_rows(x, self.cols);
        let mut out = vec![0f32; m * self.rows];
        let out_addr = out.as_mut_ptr() as usize;
        let blocks = self.cols / BLOCK;
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            for r in range {
                let w = &self.quants[r * self.cols..(r + 1) * self.cols];
                let ws = &self.scales[r * blocks..(r + 1) * blocks];
                for i in 0..m {
                    let dot = dot(
                        w,
                        ws,
                        &xq[i * self.cols..(i + 1) * self.cols],
                        &xs[i * blocks..(i + 1) * blocks],
                    );
                    // SAFETY: every (i, r) is written by exactly one work item (ranges of rows
                    // do not overlap), and `out` outlives the pool call.
                    unsafe { *(out_addr as *mut f32).add(i * self.rows + r) = dot };
                }
            }
        });
        out
    }
}

/// Quantizes each `cols`-wide row of `x` to 8 bits per 32-value block, as candle's Q8_0 does.
fn quantize_rows(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut quants = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        scales.push(d);
        quants.extend(block.iter().map(|v| (v * inv).round() as i8));
    }
    (quants, scales)
}

/// One row's dot product: `sum over blocks of ws[b] * xs[b] * (w_b . x_b)`.
fn dot(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Q8Matrix` is only built when `available()` (checked at construction), and
        // every slice holds a whole number of 64-value pairs of blocks.
        unsafe { dot_vnni(w, ws, x, xs) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        dot_scalar(w, ws, x, xs)
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn dot_scalar(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    w.chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .zip(ws.iter().zip(xs))
        .map(|((wb, xb), (a, b))| {
            let sum: i32 = wb.iter().zip(xb).map(|(&p, &q)| i32::from(p) * i32::from(q)).sum();
            sum as f32 * a * b
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_vnni(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_ps();
    for pair in 0..w.len() / (2 * BLOCK) {
        // SAFETY (loads): `pair * 64 + 64 <= w.len() == x.len()`.
        let wv = unsafe { _mm512_maskz_loadu_epi8(!0, w.as_ptr().add(pair * 64)) };
        let xv = unsafe { _mm512_maskz_loadu_epi8(!0, x.as_ptr().add(pair * 64)) };
        // vpdpbusd multiplies unsigned by signed bytes: |w| times x with w's sign moved onto it.
        let negative = _mm512_movepi8_mask(wv);
        let signed_x = _mm512_mask_sub_epi8(xv, negative, zero, xv);
        let sums = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(wv), signed_x);
        // Lanes 0..8 hold the first block's partial sums, 8..16 the second's.
        // SAFETY: two scales per pair of blocks in each of `ws` and `xs`.
        let (s0, s1) = unsafe {
            let (b0, b1) = (2 * pair, 2 * pair + 1);
            (
                *ws.get_unchecked(b0) * *xs.get_unchecked(b0),
                *ws.get_unchecked(b1) * *xs.get_unchecked(b1),
            )
        };
        let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
    }
    _mm512_reduce_add_ps(acc)
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
        let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0).collect();
        let ours = matrix.matmul(&x, 3);
        let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        let xt = Tensor::from_vec(x.clone(), (3, cols), &Device::Cpu).unwrap();
        let theirs = candle_core::Module::forward(&qm, &xt).unwrap().flatten_all().unwrap();
        let theirs = theirs.to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(worst <= 0.01 * scale, "differs by {worst} (outputs up to {scale})");
    }

    #[test]
    fn the_vector_dot_product_equals_the_scalar_one() {
        if !available() {
            return;
        }
        let w: Vec<i8> = (0..128i32).map(|i| (i * 37 % 255 - 127) as i8).collect();
        let x: Vec<i8> = (0..128i32).map(|i| (i * 53 % 255 - 127) as i8).collect();
        let ws = [0.5, 0.25, 2.0, 1.0];
        let xs = [1.0, 3.0, 0.125, 0.5];
        let (a, b) = (dot(&w, &ws, &x, &xs), dot_scalar(&w, &ws, &x, &xs));
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn other_formats_and_odd_widths_are_left_to_candle() {
        let q4 = QTensor::quantize(&weights(8, 64), GgmlDType::Q4_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&q4).unwrap().is_none());
        let narrow = QTensor::quantize(&weights(8, 96), GgmlDType::Q8_0).unwrap();
        assert!(Q8Matrix::from_qtensor(&narrow).unwrap().is_none());
    }
}
