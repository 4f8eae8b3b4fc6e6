//! Decode-step matrix products with AVX-512 VNNI, on Q8_0 weights and on Q4_1 weights as stored.
//!
//! A decode step multiplies a few activation rows (one per sequence) by every weight matrix, so
//! it streams the weights once and is bound by how fast each 32-weight block is consumed, and at
//! batch 1 by how many bytes a weight takes. candle 0.11's Q8_0 dot product is 256-bit AVX2
//! (`maddubs`, then widening adds) and is called once per output column, and its Q4_1 one is
//! scalar; here one 512-bit `vpdpbusd` multiplies and sums two blocks, each weight row is read
//! once for up to 8 activation rows whose sums stay in registers, and the rows are split over
//! candle's own thread pool (the one its kernels use, whose workers stay warm between the many
//! small products of a step).
//!
//! Same arithmetic as candle's quantized paths: activations are quantized to 8 bits per 32-value
//! block (scale `max|x| / 127`), integer dot products per block, scaled by both blocks' scales.
//! Weights are repacked at load:
//! - **Q8_0** (36 bytes per 32 weights instead of 34: the scale as f32): quants offset to unsigned
//!   bytes (`w + 128`), the offset cancelled by a per-block start value from the activations, so
//!   no sign juggling runs per block.
//! - **Q4_1** (`w = d * q + m`, `q` in 0..16; 24 bytes per 32 weights instead of 20: `d` and `m`
//!   as f32): two blocks' nibbles in 32 bytes, low nibbles the first block's values in order, high
//!   nibbles the second's, so one mask and one shift give the 64 unsigned quants; `m * sum(x)` is
//!   one more dot product per row over the blocks. A third fewer bytes than Q8_0 per weight,
//!   which batch-1 decode steps turn into speed.
//!
//! Used only where the CPU has AVX-512 VNNI and the row width is a multiple of 64; elsewhere the
//! caller keeps candle's path.

#![allow(unsafe_code)]

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::ModelError;

/// Values per block (Q8_0 and Q4_1 alike).
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block as stored: an f16 scale, then 32 signed quants.
const Q8_0_BYTES: usize = 2 + BLOCK;
/// Bytes of one Q4_1 block as stored: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles (value
/// `j` in the low nibble of byte `j`, value `j + 16` in its high nibble).
const Q4_1_BYTES: usize = 4 + BLOCK / 2;

/// The weights of a [`VnniMatrix`], in the kernel's layout.
#[derive(Debug)]
enum Packed {
    /// Row-major quants offset by 128, `cols` per row; a scale per block.
    Q8 { quants: Vec<u8>, scales: Vec<f32> },
    /// Row-major nibbles, `cols / 2` bytes per row (see the module doc); per block `d` and `m`.
    Q4 { nibbles: Vec<u8>, scales: Vec<f32>, mins: Vec<f32> },
}

/// A `[rows, cols]` quantized weight matrix, repacked for [`VnniMatrix::matmul`].
#[derive(Debug)]
pub struct VnniMatrix {
    rows: usize,
    cols: usize,
    packed: Packed,
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

impl VnniMatrix {
    /// Whether [`Self::from_qtensor`] takes `q`: a 2-D Q8_0 or Q4_1 tensor whose rows are a
    /// multiple of 64 wide, on a CPU with AVX-512 VNNI.
    pub fn supports(q: &QTensor) -> bool {
        let dims = q.shape().dims();
        matches!(q.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4_1)
            && dims.len() == 2
            && dims[1] > 0
            && dims[1].is_multiple_of(2 * BLOCK)
            && available()
    }

    /// Repacks `q`; `None` when the kernel cannot run it (see [`Self::supports`]).
    pub fn from_qtensor(q: &QTensor) -> Result<Option<Self>, ModelError> {
        if !Self::supports(q) {
            return Ok(None);
        }
        let (rows, cols) = (q.shape().dims()[0], q.shape().dims()[1]);
        let blocks = rows * cols / BLOCK;
        let data = q.data()?;
        let f16 = |lo: u8, hi: u8| half::f16::from_le_bytes([lo, hi]).to_f32();
        let packed = match q.dtype() {
            GgmlDType::Q8_0 if data.len() == blocks * Q8_0_BYTES => {
                let mut quants = Vec::with_capacity(rows * cols);
                let mut scales = Vec::with_capacity(blocks);
                for block in data.chunks_exact(Q8_0_BYTES) {
                    scales.push(f16(block[0], block[1]));
                    quants.extend(block[2..].iter().map(|&b| (b as i8 as i16 + 128) as u8));
                }
                Packed::Q8 { quants, scales }
            }
            GgmlDType::Q4_1 if data.len() == blocks * Q4_1_BYTES => {
                let mut nibbles = Vec::with_capacity(rows * cols / 2);
                let mut scales = Vec::with_capacity(blocks);
                let mut mins = Vec::with_capacity(blocks);
                // Rows are a whole number of pairs, so pairs never straddle two rows.
                for pair in data.chunks_exact(2 * Q4_1_BYTES) {
                    let (first, second) = pair.split_at(Q4_1_BYTES);
                    let values = |block: &[u8]| -> [u8; BLOCK] {
                        std::array::from_fn(|j| {
                            let byte = block[4 + j % (BLOCK / 2)];
                            if j < BLOCK / 2 { byte & 0x0F } else { byte >> 4 }
                        })
                    };
                    let (a, b) = (values(first), values(second));
                    nibbles.extend(a.iter().zip(&b).map(|(&lo, &hi)| lo | (hi << 4)));
                    for block in [first, second] {
                        scales.push(f16(block[0], block[1]));
                        mins.push(f16(block[2], block[3]));
                    }
                }
                Packed::Q4 { nibbles, scales, mins }
            }
            _ => return Ok(None),
        };
        Ok(Some(Self { rows, cols, packed }))
    }

    /// Output columns (the weight's rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (and read by one product).
    pub fn bytes(&self) -> usize {
        match &self.packed {
            Packed::Q8 { quants, scales } => quants.len() + 4 * scales.len(),
            Packed::Q4 { nibbles, scales, mins } => nibbles.len() + 4 * (scales.len() + mins.len()),
        }
    }

    /// `x [m, cols]` (row-major) times the transposed weights: `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = Activations::quantize(x, self.cols);
        let rows: Vec<ActRow<'_>> = (0..m).map(|i| acts.row(i)).collect();
        let mut out = vec![0f32; m * self.rows];
        let out_addr = out.as_mut_ptr() as usize;
        let (cols, blocks) = (self.cols, self.cols / BLOCK);
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
            let mut sums = [0f32; ROW_TILE];
            for r in range {
                let weights = match &self.packed {
                    Packed::Q8 { quants, scales } => Weights::Q8 {
                        quants: &quants[r * cols..(r + 1) * cols],
                        scales: &scales[r * blocks..(r + 1) * blocks],
                    },
                    Packed::Q4 { nibbles, scales, mins } => Weights::Q4 {
                        nibbles: &nibbles[r * cols / 2..(r + 1) * cols / 2],
                        scales: &scales[r * blocks..(r + 1) * blocks],
                        mins: &mins[r * blocks..(r + 1) * blocks],
                    },
                };
                for first in (0..m).step_by(ROW_TILE) {
                    let tile = ROW_TILE.min(m - first);
                    dot_rows(weights, &rows[first..first + tile], &mut sums[..tile]);
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

/// One weight row, as [`dot_rows`] reads it.
#[derive(Clone, Copy)]
enum Weights<'a> {
    Q8 { quants: &'a [u8], scales: &'a [f32] },
    Q4 { nibbles: &'a [u8], scales: &'a [f32], mins: &'a [f32] },
}

/// Activation rows quantized as candle's Q8_0 does (8 bits per 32-value block, scale
/// `max|x| / 127`; exact halves round to even where candle rounds them away from zero), laid out
/// for the kernel: per pair of blocks, 16 lanes of scales (8 per block) and 16 lanes of the
/// integer sum's starting value for Q8_0 weights, `-128 * sum(q)` of each block in its first
/// lane, which cancels the weights' +128 offset; per block, `scale * sum(q)` for Q4_1's minimum.
struct Activations {
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
    starts: Vec<i32>,
    sums: Vec<f32>,
}

/// One activation row of [`Activations`].
#[derive(Clone, Copy)]
struct ActRow<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
    starts: &'a [i32],
    sums: &'a [f32],
}

impl Activations {
    fn quantize(x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(2 * BLOCK) && x.len().is_multiple_of(cols));
        let blocks = x.len() / BLOCK;
        let mut acts = Self {
            cols,
            quants: vec![0; x.len()],
            scales: vec![0.0; blocks * LANES / 2],
            starts: vec![0; blocks * LANES / 2],
            sums: vec![0.0; blocks],
        };
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: activations are only quantized for a `VnniMatrix`, built when `available()`.
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
            self.sums[b] = d * sum as f32;
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
            // SAFETY (loads and stores): block `b` lies inside `x` and `quants`, its 8 lanes
            // inside `scales` and `starts`, its sum inside `sums` (all sized from the block count).
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
                *self.sums.get_unchecked_mut(b) = d * sum as f32;
            }
        }
    }

    /// Row `i`.
    fn row(&self, i: usize) -> ActRow<'_> {
        let blocks = self.cols / BLOCK;
        let lanes = blocks * LANES / 2;
        ActRow {
            quants: &self.quants[i * self.cols..(i + 1) * self.cols],
            scales: &self.scales[i * lanes..(i + 1) * lanes],
            starts: &self.starts[i * lanes..(i + 1) * lanes],
            sums: &self.sums[i * blocks..(i + 1) * blocks],
        }
    }
}

/// One weight row dotted with activation rows `rows` (at most [`ROW_TILE`]), into `out`.
fn dot_rows(weights: Weights<'_>, rows: &[ActRow<'_>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! tile {
            ($kernel:ident, $($args:expr),*) => {
                match rows.len() {
                    1 => $kernel::<1>($($args,)* rows, out),
                    2 => $kernel::<2>($($args,)* rows, out),
                    3 => $kernel::<3>($($args,)* rows, out),
                    4 => $kernel::<4>($($args,)* rows, out),
                    5 => $kernel::<5>($($args,)* rows, out),
                    6 => $kernel::<6>($($args,)* rows, out),
                    7 => $kernel::<7>($($args,)* rows, out),
                    _ => $kernel::<ROW_TILE>($($args,)* rows, out),
                }
            };
        }
        // SAFETY: a `VnniMatrix` is only built when `available()` (checked at construction);
        // every slice holds a whole number of 64-value pairs of blocks.
        unsafe {
            match weights {
                Weights::Q8 { quants, scales } => tile!(dot_q8, quants, scales),
                Weights::Q4 { nibbles, scales, mins } => tile!(dot_q4, nibbles, scales, mins),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for (row, o) in rows.iter().zip(out.iter_mut()) {
            *o = dot_scalar(weights, *row);
        }
    }
}

/// Reference arithmetic: per block, `d_w * d_x * (q_w . q_x)` plus, for Q4_1, `m * d_x * sum(q_x)`.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn dot_scalar(weights: Weights<'_>, row: ActRow<'_>) -> f32 {
    let x_scale = |b: usize| row.scales[b * LANES / 2];
    let dot = |w: &[i32], b: usize| -> i32 {
        w.iter().zip(&row.quants[b * BLOCK..(b + 1) * BLOCK]).map(|(&p, &q)| p * i32::from(q)).sum()
    };
    match weights {
        Weights::Q8 { quants, scales } => (0..scales.len())
            .map(|b| {
                let w: Vec<i32> = quants[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|&q| i32::from(q) - 128)
                    .collect();
                dot(&w, b) as f32 * scales[b] * x_scale(b)
            })
            .sum(),
        Weights::Q4 { nibbles, scales, mins } => (0..scales.len())
            .map(|b| {
                let pair = &nibbles[b / 2 * BLOCK..(b / 2 + 1) * BLOCK];
                let w: Vec<i32> = pair
                    .iter()
                    .map(|&n| i32::from(if b % 2 == 0 { n & 0x0F } else { n >> 4 }))
                    .collect();
                dot(&w, b) as f32 * scales[b] * x_scale(b) + mins[b] * row.sums[b]
            })
            .sum(),
    }
}

/// The two weight scales of pair `pair`, in the lanes of their blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pair_scales(scales: &[f32], pair: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes a pair inside the row, two scales per pair.
    let (s0, s1) =
        unsafe { (*scales.get_unchecked(2 * pair), *scales.get_unchecked(2 * pair + 1)) };
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1))
}

/// Activation row `row`'s quants of pair `pair`, and its scales in the blocks' lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pair_activations(
    row: ActRow<'_>,
    pair: usize,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes a pair inside the row: 64 quants and 16 lanes of scales.
    // Masked loads with a full mask: plain 512-bit loads compiled to two 256-bit loads through
    // the stack here.
    unsafe {
        (
            _mm512_maskz_loadu_epi8(!0, row.quants.as_ptr().add(pair * 2 * BLOCK)),
            _mm512_maskz_loadu_ps(!0, row.scales.as_ptr().add(pair * LANES)),
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_q8<const N: usize>(w: &[u8], ws: &[f32], rows: &[ActRow<'_>], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let rows: [ActRow<'_>; N] = std::array::from_fn(|j| rows[j]);
    let mut acc = [_mm512_setzero_ps(); N];
    for pair in 0..w.len() / (2 * BLOCK) {
        // SAFETY (all loads): `pair * 64 + 64 <= w.len() == x.len()`, two weight scales per pair,
        // and 16 lanes of activation scales and starts per pair.
        let wv = unsafe { _mm512_maskz_loadu_epi8(!0, w.as_ptr().add(pair * 64).cast()) };
        // Lanes 0..8 hold the first block's partial sums, 8..16 the second's.
        let w_scale = unsafe { pair_scales(ws, pair) };
        for j in 0..N {
            let ((xv, x_scale), start) = unsafe {
                (
                    pair_activations(rows[j], pair),
                    _mm512_maskz_loadu_epi32(!0, rows[j].starts.as_ptr().add(pair * LANES)),
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_q4<const N: usize>(
    w: &[u8],
    ws: &[f32],
    mins: &[f32],
    rows: &[ActRow<'_>],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let rows: [ActRow<'_>; N] = std::array::from_fn(|j| rows[j]);
    let mut acc = [_mm512_setzero_ps(); N];
    let low = _mm256_set1_epi8(0x0F);
    for pair in 0..w.len() / BLOCK {
        // SAFETY (all loads): `pair * 32 + 32 <= w.len()` (32 bytes of nibbles per pair), two
        // weight scales per pair, and the activations' pair inside their row.
        let bytes = unsafe { _mm256_maskz_loadu_epi8(!0, w.as_ptr().add(pair * BLOCK).cast()) };
        let first = _mm256_and_si256(bytes, low);
        let second = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
        let wv = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
        let w_scale = unsafe { pair_scales(ws, pair) };
        for j in 0..N {
            let (xv, x_scale) = unsafe { pair_activations(rows[j], pair) };
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
            acc[j] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(w_scale, x_scale), acc[j]);
        }
    }
    // The minimum's share: sum over blocks of m * d_x * sum(q_x), 16 blocks at a time.
    let blocks = mins.len();
    for (j, (o, a)) in out.iter_mut().zip(acc).enumerate() {
        let mut min_acc = _mm512_setzero_ps();
        for start in (0..blocks).step_by(LANES) {
            let mask: __mmask16 =
                if blocks - start >= LANES { !0 } else { (1u16 << (blocks - start)) - 1 };
            // SAFETY: the mask keeps the loads inside `mins` and the row's `sums` (same length).
            let (m, s) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask, mins.as_ptr().add(start)),
                    _mm512_maskz_loadu_ps(mask, rows[j].sums.as_ptr().add(start)),
                )
            };
            min_acc = _mm512_fmadd_ps(m, s, min_acc);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(a, min_acc));
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
    fn the_kernel_matches_candle_on_the_same_weights() {
        if !available() {
            return; // nothing to compare on this CPU: the caller keeps candle's path
        }
        let (rows, cols) = (72, 192);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let q = QTensor::quantize(&weights(rows, cols), dtype).unwrap();
            let matrix = VnniMatrix::from_qtensor(&q).unwrap().unwrap();
            let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
            for m in [1, 3, 11] {
                let x: Vec<f32> =
                    (0..m * cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0).collect();
                let ours = matrix.matmul(&x, m);
                let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
                let theirs = candle_core::Module::forward(&qm, &xt).unwrap().flatten_all().unwrap();
                let theirs = theirs.to_vec1::<f32>().unwrap();
                let worst =
                    ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    worst <= 0.01 * scale,
                    "{dtype:?}, {m} rows: differs by {worst} (outputs up to {scale})"
                );
            }
        }
    }

    #[test]
    fn the_vector_dot_products_equal_the_scalar_ones() {
        if !available() {
            return;
        }
        // 3 weight rows x 11 activation rows: a full tile of 8 and a partial one of 3; 160
        // blocks per row, so Q4_1's minimum loop has a partial vector of blocks.
        let cols = 5120;
        let blocks = cols / BLOCK;
        let bytes: Vec<u8> = (0..3 * cols as i32).map(|i| (i * 37 % 256) as u8).collect();
        let ws: Vec<f32> = (0..3 * blocks).map(|b| 0.25 + (b % 7) as f32 * 0.5).collect();
        let mins: Vec<f32> = (0..3 * blocks).map(|b| (b % 5) as f32 * 0.1 - 0.2).collect();
        let x: Vec<f32> = (0..11 * cols).map(|i| ((i * 53 % 255) as f32 - 127.0) / 13.0).collect();
        let acts = Activations::quantize(&x, cols);
        let rows: Vec<ActRow<'_>> = (0..11).map(|i| acts.row(i)).collect();
        for r in 0..3 {
            let scales = &ws[r * blocks..(r + 1) * blocks];
            for weights in [
                Weights::Q8 { quants: &bytes[r * cols..(r + 1) * cols], scales },
                Weights::Q4 {
                    nibbles: &bytes[r * cols / 2..(r + 1) * cols / 2],
                    scales,
                    mins: &mins[r * blocks..(r + 1) * blocks],
                },
            ] {
                let mut ours = [0f32; 11];
                dot_rows(weights, &rows[..8], &mut ours[..8]);
                dot_rows(weights, &rows[8..], &mut ours[8..]);
                for (i, a) in ours.iter().enumerate() {
                    let b = dot_scalar(weights, rows[i]);
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "row {r}, {i}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q4_1_repacking_keeps_every_value() {
        if !available() {
            return;
        }
        let (rows, cols) = (4, 128);
        let q = QTensor::quantize(&weights(rows, cols), GgmlDType::Q4_1).unwrap();
        let exact = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        let exact = exact.to_vec1::<f32>().unwrap();
        let matrix = VnniMatrix::from_qtensor(&q).unwrap().unwrap();
        let Packed::Q4 { nibbles, scales, mins } = &matrix.packed else { panic!("not Q4") };
        for (i, &want) in exact.iter().enumerate() {
            let (b, j) = (i / BLOCK, i % BLOCK);
            let byte = nibbles[b / 2 * BLOCK + j];
            let q = if b % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            let got = scales[b] * f32::from(q) + mins[b];
            assert!((got - want).abs() <= 1e-6, "value {i}: {got} vs {want}");
        }
        assert_eq!(matrix.bytes(), rows * cols / BLOCK * 24);
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
            sums: vec![0.0; vector.sums.len()],
        };
        scalar.fill_scalar(&x);
        assert_eq!(vector.quants, scalar.quants);
        assert_eq!(vector.scales, scalar.scales);
        assert_eq!(vector.starts, scalar.starts);
        assert_eq!(vector.sums, scalar.sums);
    }

    #[test]
    fn other_formats_and_odd_widths_are_left_to_candle() {
        let q4 = QTensor::quantize(&weights(8, 64), GgmlDType::Q4_0).unwrap();
        assert!(VnniMatrix::from_qtensor(&q4).unwrap().is_none());
        let narrow = QTensor::quantize(&weights(8, 96), GgmlDType::Q8_0).unwrap();
        assert!(VnniMatrix::from_qtensor(&narrow).unwrap().is_none());
    }
}
