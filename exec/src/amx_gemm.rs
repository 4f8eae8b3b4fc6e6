//! Prompt-pass matrix products on Intel AMX tiles, in bf16 with f32 sums.
//!
//! A prompt pass multiplies a few hundred token rows by every weight matrix: compute-bound, and
//! candle's f32 GEMM reaches about 72% of the cores' f32 FMA peak there, while repacking the
//! weight matrix on every call. Where the CPU has AMX (Sapphire Rapids and later), one
//! `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 one into 16×16 f32 sums, 16 times the
//! multiply-adds of an AVX-512 FMA. Weights are converted to bf16 and packed into the tile
//! layout once, at load; activations are rounded to bf16 per call (round to nearest even), and
//! every sum stays f32. On this machine, 320 tokens × the 4864×896 up projection: candle f32
//! 7.6 ms on 2 threads, this kernel's first version 2.8 ms (a standalone probe).
//!
//! Activations travel as [`TiledActivations`], so a product can write the next one's input: the
//! gated MLP's gate and up projections are one matrix ([`AmxMatrix::gated_from_f32`]) whose
//! epilogue applies SiLU, multiplies and writes bf16 tiles the down projection reads
//! ([`AmxMatrix::silu_gated`]); the decoder also stacks query, key and value into one matrix.
//!
//! Two things decide the kernel's speed (single-thread probes on this machine, where one core
//! peaks at 3.8 TFLOP/s with no tile loads):
//! - every tile starts on a 64-byte line ([`TileBuffer`]): 2×2 result tiles fed from L1 ran at
//!   1.07 TFLOP/s with the allocator's 16-byte alignment and 3.33 aligned;
//! - the SiLU epilogue of one 32×32 block runs on the vector units between the slices of the
//!   next block's products, not after them, so the tile unit does not wait on it: the gated
//!   product of 512 tokens went from 0.69 to 1.10 TFLOP/s, and a batched Qwen label-scoring
//!   query (429 UCI rows) from 10.4 to 8.4 s.
//!
//! Each output element is the same dot product whatever the batch (rows are independent, the
//! order of the sums is fixed by the tiling of `k`), so a row's result does not depend on the
//! rows it is batched with.
//!
//! Linux gives a process AMX state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); the
//! request is made once. `MURAKKAB_AMX=0` turns the kernel off (the f32 path then runs), for
//! comparisons and for a CPU whose AMX misbehaves.

#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Rows of a tile, and f32 columns of a result tile.
const TILE_ROWS: usize = 16;
/// bf16 values in one tile row (64 bytes): the depth one `tdpbf16ps` sums over.
const TILE_DEPTH: usize = 32;
/// Rows (tokens) and columns (outputs) of the block one kernel step computes: 2×2 result tiles.
const BLOCK: usize = 2 * TILE_ROWS;
/// bf16 values of one packed weight tile.
const TILE_VALUES: usize = TILE_ROWS * TILE_DEPTH;
/// How many slices ahead the kernel prefetches tiles.
const PREFETCH_SLICES: usize = 2;
/// Bytes of activations one pass over the column blocks covers (see `AmxMatrix::kernel`).
const CHUNK_BYTES: usize = 1 << 20;

/// Whether prompt passes use AMX: the CPU has AMX-BF16, the kernel granted the state, and
/// `MURAKKAB_AMX` is not `0`. Decided once per process.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let disabled = std::env::var("MURAKKAB_AMX").is_ok_and(|v| v.trim() == "0");
        !disabled && cpu_has_amx_bf16() && request_tile_state()
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE. The AVX-512 BF16
    // conversion is used for the activations.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let amx = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    amx && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`), granted to the whole process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call that only changes this process's permitted xsave features;
    // `syscall` clobbers rcx and r11, declared here.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// One 64-byte cache line of bf16 values. Tile buffers are made of these so that every tile
/// starts on a line: a tile load that straddles lines is about three times slower (a probe on
/// this machine, 2×2 result tiles from L1: 1.07 TFLOP/s unaligned, 3.33 aligned; `Vec<u16>`
/// from the allocator is 16-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; TILE_DEPTH]);

/// bf16 values in whole cache lines, the first on a 64-byte boundary.
struct TileBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl TileBuffer {
    /// `len` zeros.
    fn zeroed(len: usize) -> Self {
        Self { lines: vec![Line([0; TILE_DEPTH]); len.div_ceil(TILE_DEPTH)], len }
    }

    /// Room for `len` values, to be written through [`Self::as_mut_ptr`] before
    /// [`Self::assume_written`].
    fn with_capacity(len: usize) -> Self {
        Self { lines: Vec::with_capacity(len.div_ceil(TILE_DEPTH)), len }
    }

    /// # Safety
    /// Every one of the `len` values was written through [`Self::as_mut_ptr`].
    unsafe fn assume_written(&mut self) {
        // SAFETY: the caller's contract; the last line's values past `len` are padding that
        // `Line` (plain integers) may hold as any bits.
        unsafe { self.lines.set_len(self.len.div_ceil(TILE_DEPTH)) };
    }

    fn as_ptr(&self) -> *const u16 {
        self.lines.as_ptr().cast()
    }

    fn as_mut_ptr(&mut self) -> *mut u16 {
        self.lines.as_mut_ptr().cast()
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: the lines are initialised (built by `zeroed` or `assume_written`) and hold
        // at least `len` values in a row.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }
}

impl std::fmt::Debug for TileBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TileBuffer({} bf16 values)", self.len)
    }
}

/// A `[rows, cols]` weight matrix in bf16, packed in AMX tiles for [`AmxMatrix::matmul`].
///
/// Layout: for each block of 16 rows, for each 32-wide slice of the columns, one tile of 16
/// tile-rows, tile-row `r` holding for each of the 16 matrix rows the pair of values at columns
/// `2r` and `2r + 1` of the slice (the pairs `tdpbf16ps` multiplies). Rows are padded to a
/// multiple of 32 and columns to a multiple of 32, with zeros.
#[derive(Debug)]
pub struct AmxMatrix {
    rows: usize,
    cols: usize,
    padded_rows: usize,
    padded_cols: usize,
    tiles: TileBuffer,
    /// Built by [`AmxMatrix::gated_from_f32`]: each 32-row block is 16 gate rows, then the 16
    /// up rows of the same features.
    gated: bool,
}

/// Activations in the tile layout of [`AmxMatrix`]'s input: for each block of 16 rows, for each
/// 32-wide slice of the columns, one contiguous 16×32 bf16 tile, so every tile load reads 1 KB
/// in a row. Zero-padded to whole blocks of 32 rows and 32 columns.
#[derive(Debug)]
pub struct TiledActivations {
    values: TileBuffer,
    m: usize,
    padded_m: usize,
    padded_cols: usize,
}

impl TiledActivations {
    /// `x [m, cols]` (row-major) converted to bf16 tiles; blocks of rows in parallel.
    pub fn from_f32(x: &[f32], m: usize, cols: usize) -> Self {
        let padded_m = m.next_multiple_of(BLOCK);
        let padded_cols = cols.next_multiple_of(TILE_DEPTH);
        let values = activations_in_tiles(x, None, m, cols, padded_m, padded_cols);
        Self { values, m, padded_m, padded_cols }
    }

    /// Each row of `x [m, cols]` RMS-normalised and scaled by `weight` (a decoder block's
    /// input norm, as candle's `rms_norm` computes it, bit for bit), converted to bf16 tiles in
    /// the same pass: the normalised f32 rows are never stored.
    pub fn from_rms_normed(x: &[f32], weight: &[f32], eps: f32, m: usize, cols: usize) -> Self {
        let padded_m = m.next_multiple_of(BLOCK);
        let padded_cols = cols.next_multiple_of(TILE_DEPTH);
        let values = activations_in_tiles(x, Some((weight, eps)), m, cols, padded_m, padded_cols);
        Self { values, m, padded_m, padded_cols }
    }
}

/// `row / sqrt(mean(row²) + eps) · weight` into `out`, in candle's `rms_norm` order of
/// operations (a sequential f32 sum of squares, then a division and a product per value), so
/// a fused pass gives the same values as candle's.
fn rms_normed(row: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum2 = row.iter().map(|&v| v * v).sum::<f32>();
    let m = (sum2 / row.len() as f32 + eps).sqrt();
    for ((d, &s), &w) in out.iter_mut().zip(row).zip(weight) {
        *d = s / m * w;
    }
}

impl AmxMatrix {
    /// Packs row-major f32 `weights` (`rows × cols`); `None` where AMX is not [`available`].
    pub fn from_f32(weights: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !available() || rows == 0 || cols == 0 || weights.len() != rows * cols {
            return None;
        }
        let padded_rows = rows.next_multiple_of(BLOCK);
        let padded_cols = cols.next_multiple_of(TILE_DEPTH);
        let slices = padded_cols / TILE_DEPTH;
        let mut tiles = TileBuffer::zeroed(padded_rows * padded_cols);
        // Each block of 16 rows fills its own run of tiles, so blocks are packed in parallel.
        use rayon::prelude::*;
        tiles.as_mut_slice().par_chunks_mut(slices * TILE_VALUES).enumerate().for_each(
            |(row_block, out)| {
                for within in 0..TILE_ROWS {
                    let row = row_block * TILE_ROWS + within;
                    if row >= rows {
                        break;
                    }
                    for (col, &w) in weights[row * cols..(row + 1) * cols].iter().enumerate() {
                        let (slice, depth) = (col / TILE_DEPTH, col % TILE_DEPTH);
                        let at = slice * TILE_VALUES + (depth / 2) * 2 * TILE_ROWS + within * 2;
                        out[at + depth % 2] = bf16_bits(w);
                    }
                }
            },
        );
        Some(Self { rows, cols, padded_rows, padded_cols, tiles, gated: false })
    }

    /// The gate and up projections of a gated MLP (`[rows, cols]` each), packed together for
    /// [`Self::silu_gated`]; `None` where AMX is not [`available`] or `rows` is not a multiple
    /// of 32.
    pub fn gated_from_f32(gate: &[f32], up: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !rows.is_multiple_of(BLOCK) || gate.len() != rows * cols || up.len() != rows * cols {
            return None;
        }
        let mut interleaved = Vec::with_capacity(2 * rows * cols);
        for group in 0..rows / TILE_ROWS {
            let span = group * TILE_ROWS * cols..(group + 1) * TILE_ROWS * cols;
            interleaved.extend_from_slice(&gate[span.clone()]);
            interleaved.extend_from_slice(&up[span]);
        }
        let matrix = Self::from_f32(&interleaved, 2 * rows, cols)?;
        Some(Self { gated: true, ..matrix })
    }

    /// Output columns (the weight's rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x [m, cols]` (row-major) times the transposed weights: `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        self.matmul_tiled(&TiledActivations::from_f32(x, m, self.cols))
    }

    /// [`Self::matmul`] on activations already in tiles (`cols` wide).
    pub fn matmul_tiled(&self, acts: &TiledActivations) -> Vec<f32> {
        assert!(!self.gated && acts.padded_cols == self.padded_cols, "tiles of another width");
        let (m, padded_m) = (acts.m, acts.padded_m);
        let len = padded_m * self.padded_rows;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let store = Epilogue::Store { out: out.as_mut_ptr() as usize };
        self.run(acts, store);
        // SAFETY: the work items together wrote every row block of every column block, i.e.
        // all `len` values.
        unsafe { out.set_len(len) };
        if self.padded_rows != self.rows {
            let mut packed = Vec::with_capacity(m * self.rows);
            for row in out.chunks_exact(self.padded_rows).take(m) {
                packed.extend_from_slice(&row[..self.rows]);
            }
            return packed;
        }
        out.truncate(m * self.rows);
        out
    }

    /// A gated MLP's hidden activations, `silu(x · gateᵀ) ⊙ (x · upᵀ)`, straight into the tiles
    /// the down projection reads: the two products and the SiLU never leave the cache as f32.
    pub fn silu_gated(&self, acts: &TiledActivations) -> TiledActivations {
        assert!(self.gated && acts.padded_cols == self.padded_cols, "not a gated matrix");
        let features = self.rows / 2;
        let len = acts.padded_m * features;
        let mut values = TileBuffer::with_capacity(len);
        let out = Epilogue::SiluProduct {
            out: values.as_mut_ptr() as usize,
            slices: features / TILE_DEPTH,
        };
        self.run(acts, out);
        // SAFETY: every column block wrote its 16 features of every row: all `len` values.
        unsafe { values.assume_written() };
        TiledActivations { values, m: acts.m, padded_m: acts.padded_m, padded_cols: features }
    }

    /// `gelu(x · weightsᵀ + bias)` (exact GELU), straight into the tiles the next product
    /// reads: the encoder's intermediate activations never leave the cache as f32.
    pub fn bias_gelu(&self, acts: &TiledActivations, bias: &[f32]) -> TiledActivations {
        assert!(!self.gated && acts.padded_cols == self.padded_cols, "tiles of another width");
        assert_eq!(bias.len(), self.rows, "one bias per output");
        // Padded outputs get a zero bias (and so gelu(0) = 0, which the next product's padded
        // weights multiply anyway).
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(self.padded_rows, 0.0);
        let len = acts.padded_m * self.padded_rows;
        let mut values = TileBuffer::with_capacity(len);
        let out = Epilogue::BiasGelu {
            out: values.as_mut_ptr() as usize,
            slices: self.padded_rows / TILE_DEPTH,
            bias: padded_bias.as_ptr() as usize,
        };
        self.run(acts, out);
        // SAFETY: every column block wrote its 32 features of every row: all `len` values.
        unsafe { values.assume_written() };
        TiledActivations {
            values,
            m: acts.m,
            padded_m: acts.padded_m,
            padded_cols: self.padded_rows,
        }
    }

    /// Runs the kernel over every column block, split over the current rayon pool: candle's,
    /// inside a prompt pass, whose other operations use the same threads. (candle's barrier
    /// pool adds a third thread on two cores, which spins after each product while rayon's
    /// threads do the norms and attention: the same time, 5% more CPU time on SmolLM2 label
    /// scoring.)
    fn run(&self, acts: &TiledActivations, epilogue: Epilogue) {
        let column_blocks = self.padded_rows / BLOCK;
        for_each_range(column_blocks, |range| {
            // SAFETY: `available()` held when this matrix was packed (tile state granted, AMX
            // present); every tile read lies inside `acts` or `self.tiles` (both padded to whole
            // blocks); the epilogue's output holds `acts.padded_m` rows of this matrix's
            // outputs, of which this work item alone writes its column blocks; the output
            // outlives the parallel section.
            unsafe { self.kernel(acts, epilogue, range) }
        });
    }

    /// Computes output columns `column_blocks` (in blocks of 32) for all `padded_m` rows.
    ///
    /// # Safety
    /// As [`Self::run`] states: AMX granted, `acts` this matrix's width, the epilogue's output
    /// large enough and these column blocks written by this call alone.
    #[cfg(target_arch = "x86_64")]
    unsafe fn kernel(
        &self,
        acts: &TiledActivations,
        epilogue: Epilogue,
        column_blocks: std::ops::Range<usize>,
    ) {
        use std::arch::asm;
        let config = TileConfig::all_full();
        // Two scratches: the tiled epilogue (SiLU or GELU) of one block runs while the next
        // block's products run on the tile unit (interleaved with its slices), reading the
        // other scratch.
        let mut scratch = [Scratch::new(), Scratch::new()];
        let mut pending: Option<(usize, usize, usize)> = None;
        let slices = self.padded_cols / TILE_DEPTH;
        let rows_per_slice = BLOCK.div_ceil(slices);
        // Rows in chunks whose activations stay in L2 (about 1 MB of bf16) while every column
        // block passes over them. (A standalone probe: 2,048 tokens × the 4864×896 up
        // projection, 7.9 ms in chunks against 13.0 ms streaming all rows past each column
        // block; label-scoring passes, with fewer tokens, did not change.)
        let chunk = (CHUNK_BYTES / (2 * self.padded_cols) / BLOCK * BLOCK).clamp(64, 512);
        // The thread's own configuration, put back at the end: candle's Q4_K products configure
        // a thread's tiles once and count on them staying configured, and run on the threads
        // ours do (a tile instruction on an unconfigured thread is an illegal instruction).
        let mut found = TileConfig::unconfigured();
        // SAFETY: the caller's contract; every pointer below is offset within its buffer.
        unsafe {
            asm!("sttilecfg [{}]", in(reg) &mut found, options(nostack));
            asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
            for chunk_start in (0..acts.padded_m).step_by(chunk) {
                let rows = chunk_start..acts.padded_m.min(chunk_start + chunk);
                for block in column_blocks.clone() {
                    for first in rows.clone().step_by(BLOCK) {
                        match epilogue {
                            Epilogue::Store { out } => {
                                self.block_sums(acts, first, block, |_| {});
                                let stride = self.padded_rows;
                                let c00 = (out as *mut f32).add(first * stride + block * BLOCK);
                                let c10 = c00.add(TILE_ROWS * stride);
                                store_sums(
                                    [c00, c00.add(TILE_ROWS), c10, c10.add(TILE_ROWS)],
                                    stride,
                                );
                            }
                            Epilogue::SiluProduct { .. } | Epilogue::BiasGelu { .. } => {
                                let earlier = pending.map(|(i, f, b)| (&scratch[i], f, b));
                                self.block_sums(acts, first, block, |slice| {
                                    let Some((sums, f, b)) = earlier else { return };
                                    let start = (slice * rows_per_slice).min(BLOCK);
                                    let end = (start + rows_per_slice).min(BLOCK);
                                    finish_block(epilogue, sums, f, b, start..end);
                                });
                                let next = pending.map_or(0, |(i, _, _)| 1 - i);
                                let base = scratch[next].0.as_mut_ptr();
                                let tile = |i: usize| base.add(i * TILE_ROWS * TILE_ROWS);
                                store_sums([tile(0), tile(1), tile(2), tile(3)], TILE_ROWS);
                                pending = Some((next, first, block));
                            }
                        }
                    }
                }
            }
            if let Some((i, f, b)) = pending {
                // The last block: no later block's slices to run it beside.
                finish_block(epilogue, &scratch[i], f, b, 0..BLOCK);
            }
            if found.palette == 0 {
                asm!("tilerelease", options(nostack, nomem));
            } else {
                asm!("ldtilecfg [{}]", in(reg) &found, options(nostack, readonly));
            }
        }
    }

    /// Leaves in tmm0–3 the sums of rows `first..first + 32` against column block `block`:
    /// tmm0 and tmm1 its two 16-column halves for the first 16 rows, tmm2 and tmm3 for the next.
    ///
    /// # Safety
    /// Inside [`Self::kernel`] (tiles configured), `first` and `block` within the padded sizes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block_sums(
        &self,
        acts: &TiledActivations,
        first: usize,
        block: usize,
        mut after_slice: impl FnMut(usize),
    ) {
        use std::arch::asm;
        let slices = self.padded_cols / TILE_DEPTH;
        let tile_stride = 2 * TILE_DEPTH;
        // SAFETY: the caller's contract; the tiles read lie inside `acts` and `self.tiles`.
        unsafe {
            let w0 = self.tiles.as_ptr().add(2 * block * slices * TILE_VALUES);
            let w1 = w0.add(slices * TILE_VALUES);
            let a0 = acts.values.as_ptr().add(first / TILE_ROWS * slices * TILE_VALUES);
            let a1 = a0.add(slices * TILE_VALUES);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for slice in 0..slices {
                // The tiles two slices ahead, into L1: tile loads that miss it stall the
                // products (in place, 7% on Qwen label scoring).
                if slice + PREFETCH_SLICES < slices {
                    let ahead = (slice + PREFETCH_SLICES) * TILE_VALUES;
                    for tile in [a0, a1, w0, w1] {
                        prefetch_tile(tile.add(ahead));
                    }
                }
                asm!(
                    "tileloadd tmm4, [{a0} + {s} * 1]",
                    "tileloadd tmm5, [{a1} + {s} * 1]",
                    "tileloadd tmm6, [{w0} + {s} * 1]",
                    "tileloadd tmm7, [{w1} + {s} * 1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(slice * TILE_VALUES),
                    a1 = in(reg) a1.add(slice * TILE_VALUES),
                    w0 = in(reg) w0.add(slice * TILE_VALUES),
                    w1 = in(reg) w1.add(slice * TILE_VALUES),
                    s = in(reg) tile_stride,
                    options(nostack, readonly)
                );
                after_slice(slice);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn kernel(&self, _: &TiledActivations, _: Epilogue, _: std::ops::Range<usize>) {
        unreachable!("AmxMatrix is only built where AMX is available")
    }
}

/// `f` over `0..items` in contiguous ranges, four per thread of the current rayon pool.
fn for_each_range(items: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use rayon::prelude::*;
    let per_range = items.div_ceil(4 * rayon::current_num_threads()).max(1);
    (0..items.div_ceil(per_range))
        .into_par_iter()
        .for_each(|i| f(i * per_range..items.min((i + 1) * per_range)));
}

/// Asks for the 16 cache lines of the 1 KB tile at `tile` in L1.
///
/// # Safety
/// `tile` must point into an allocation's tiles; prefetches never fault.
#[cfg(target_arch = "x86_64")]
unsafe fn prefetch_tile(tile: *const u16) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for line in 0..TILE_VALUES * 2 / 64 {
        // SAFETY: the offset stays inside the tile the caller names.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((tile as *const i8).add(line * 64)) };
    }
}

/// Stores tmm0–3 at `tiles`, rows `stride` f32 apart.
///
/// # Safety
/// Inside the kernel, after [`AmxMatrix::block_sums`]; each address writable for 16 rows.
#[cfg(target_arch = "x86_64")]
unsafe fn store_sums(tiles: [*mut f32; 4], stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        std::arch::asm!(
            "tilestored [{c00} + {sc} * 1], tmm0",
            "tilestored [{c01} + {sc} * 1], tmm1",
            "tilestored [{c10} + {sc} * 1], tmm2",
            "tilestored [{c11} + {sc} * 1], tmm3",
            c00 = in(reg) tiles[0],
            c01 = in(reg) tiles[1],
            c10 = in(reg) tiles[2],
            c11 = in(reg) tiles[3],
            sc = in(reg) 4 * stride,
            options(nostack)
        );
    }
}

/// The epilogue of the 32×32 block of sums in `scratch` (rows from `first`, column block
/// `block`), for its rows `rows`: the tiled epilogues' step, run between the next block's
/// slices.
///
/// # Safety
/// As [`silu_products`] / [`bias_gelu_rows`]: inside the kernel, the epilogue's output and
/// bias covering the block.
#[cfg(target_arch = "x86_64")]
unsafe fn finish_block(
    epilogue: Epilogue,
    scratch: &Scratch,
    first: usize,
    block: usize,
    rows: std::ops::Range<usize>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match epilogue {
            Epilogue::SiluProduct { out, slices } => {
                silu_products(scratch, out as *mut u16, slices * TILE_VALUES, first, block, rows);
            }
            Epilogue::BiasGelu { out, slices, bias } => {
                let (out, bias) = (out as *mut u16, bias as *const f32);
                bias_gelu_rows(scratch, out, slices * TILE_VALUES, bias, first, block, rows);
            }
            Epilogue::Store { .. } => {}
        }
    }
}

/// `gelu(sum + bias)` of rows `rows` of the block in `scratch` (32 outputs each, from
/// `block · 32`), as bf16 into the activation tiles at `out`.
///
/// # Safety
/// `out` holds the tiled activations of every row from `first` (`row_stride` values per 16
/// rows), `bias` the block's 32 outputs; AVX-512 BF16 present.
#[cfg(target_arch = "x86_64")]
unsafe fn bias_gelu_rows(
    scratch: &Scratch,
    out: *mut u16,
    row_stride: usize,
    bias: *const f32,
    first: usize,
    block: usize,
    rows: std::ops::Range<usize>,
) {
    let feature = block * BLOCK;
    // SAFETY: the caller's contract; the bias reads stay inside the block's 32 outputs.
    unsafe {
        let bias = bias.add(feature);
        for_each_block_row(scratch, out, row_stride, first, feature, rows, |left, right, dst| {
            bias_gelu_16(left, bias, dst);
            bias_gelu_16(right, bias.add(TILE_ROWS), dst.add(TILE_ROWS));
        });
    }
}

/// For each of rows `rows` of the 32×32 block of sums in `scratch` (rows from `first`): the
/// row's left and right 16 sums (its two result tiles) and where its outputs from `feature`
/// go in the activation tiles at `out` (`row_stride` values per 16 rows) — the layout both
/// tiled epilogues write.
///
/// # Safety
/// `out` holds tiles for every row up to `first + 32` and the features `f` writes.
#[cfg(target_arch = "x86_64")]
unsafe fn for_each_block_row(
    scratch: &Scratch,
    out: *mut u16,
    row_stride: usize,
    first: usize,
    feature: usize,
    rows: std::ops::Range<usize>,
    mut f: impl FnMut(*const f32, *const f32, *mut u16),
) {
    for r in rows {
        let row = first + r;
        let tile = if r < TILE_ROWS { 0 } else { 2 };
        // SAFETY: the caller's contract; the scratch reads stay inside its four tiles.
        unsafe {
            let left = scratch.0.as_ptr().add((tile * TILE_ROWS + r % TILE_ROWS) * TILE_ROWS);
            let right = left.add(TILE_ROWS * TILE_ROWS);
            let dst = out.add(
                row / TILE_ROWS * row_stride
                    + feature / TILE_DEPTH * TILE_VALUES
                    + row % TILE_ROWS * TILE_DEPTH
                    + feature % TILE_DEPTH,
            );
            f(left, right, dst);
        }
    }
}

/// `gelu(x + b)` of 16 values each, rounded to bf16 at `dst`.
///
/// # Safety
/// `x` and `bias` readable for 16 f32, `dst` writable for 16 u16, AVX-512 BF16 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn bias_gelu_16(x: *const f32, bias: *const f32, dst: *mut u16) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let x = _mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(bias));
        let b: __m256i =
            std::mem::transmute(_mm512_cvtneps_pbh(crate::vector_math::gelu_avx512(x)));
        _mm256_storeu_si256(dst as *mut __m256i, b);
    }
}

/// From a gated block's sums in `scratch` (gate and up of rows `first..first + 16`, then of the
/// next 16), `silu(gate) · up` for its 16 features (`16 · block..`) of those 32 rows, written
/// as bf16 into the tiles at `out` (`row_stride` values per block of 16 rows).
///
/// # Safety
/// `out` holds tiles for every row up to `first + 32` and the feature slice; AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn silu_products(
    scratch: &Scratch,
    out: *mut u16,
    row_stride: usize,
    first: usize,
    block: usize,
    rows: std::ops::Range<usize>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let feature = block * TILE_ROWS;
        for_each_block_row(scratch, out, row_stride, first, feature, rows, |gate, up, dst| {
            silu_product_16(gate, up, dst);
        });
    }
}

/// What the kernel does with each 32×32 block of sums.
#[derive(Clone, Copy)]
enum Epilogue {
    /// Stores them in row-major f32 `[padded_m, padded_rows]` at this address.
    Store { out: usize },
    /// `silu(gate) · up` per feature, as bf16 tiles `slices` 32-wide slices across, at this
    /// address (see [`AmxMatrix::silu_gated`]).
    SiluProduct { out: usize, slices: usize },
    /// `gelu(sum + bias)` per output, as bf16 tiles `slices` 32-wide slices across, at `out`;
    /// `bias` the address of one f32 per padded output (see [`AmxMatrix::bias_gelu`]).
    BiasGelu { out: usize, slices: usize, bias: usize },
}

/// Four 16×16 f32 result tiles, one after another.
#[repr(C, align(64))]
struct Scratch([f32; 4 * TILE_ROWS * TILE_ROWS]);

impl Scratch {
    fn new() -> Self {
        Self([0.0; 4 * TILE_ROWS * TILE_ROWS])
    }
}

/// `silu(g) · u` of 16 values each, rounded to bf16 at `dst`.
///
/// # Safety
/// `gate` and `up` readable for 16 f32, `dst` writable for 16 u16, AVX-512 BF16 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn silu_product_16(gate: *const f32, up: *const f32, dst: *mut u16) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let g = _mm512_loadu_ps(gate);
        let u = _mm512_loadu_ps(up);
        let silu = _mm512_mul_ps(g, crate::vector_math::sigmoid_bf16_avx512(g));
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_mul_ps(silu, u)));
        _mm256_storeu_si256(dst as *mut __m256i, b);
    }
}

/// The 64-byte tile configuration `ldtilecfg` reads: palette 1, eight tiles of 16 rows × 64
/// bytes (results tmm0–3, activations tmm4–5, weights tmm6–7).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// What `sttilecfg` stores on a thread whose tiles are not configured: all zeros.
    fn unconfigured() -> Self {
        Self { palette: 0, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] }
    }

    fn all_full() -> Self {
        let mut config = Self { palette: 1, ..Self::unconfigured() };
        for tile in 0..8 {
            config.bytes_per_row[tile] = 64;
            config.rows[tile] = TILE_ROWS as u8;
        }
        config
    }
}

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN).
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// `x [m, cols]` as bf16 in the tile layout the weights use (see [`AmxMatrix`]): for each
/// block of 16 rows, for each 32-wide slice of the columns, one contiguous 16×32 tile, so every
/// tile load reads 1 KB in a row. Zero-padded to `[padded_m, padded_cols]`; blocks of rows are
/// converted in parallel. With `norm` (weight, epsilon), each row is RMS-normalised first
/// ([`rms_normed`]), into a scratch row per work item.
fn activations_in_tiles(
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    m: usize,
    cols: usize,
    padded_m: usize,
    padded_cols: usize,
) -> TileBuffer {
    let slices = padded_cols / TILE_DEPTH;
    let len = padded_m * padded_cols;
    let mut acts = TileBuffer::with_capacity(len);
    let acts_addr = acts.as_mut_ptr() as usize;
    for_each_range(padded_m / TILE_ROWS, |row_blocks| {
        let mut normed = vec![0.0f32; if norm.is_some() { cols } else { 0 }];
        for row_block in row_blocks {
            for r in 0..TILE_ROWS {
                let i = row_block * TILE_ROWS + r;
                let mut row = if i < m { &x[i * cols..(i + 1) * cols] } else { &[][..] };
                if let (Some((weight, eps)), false) = (norm, row.is_empty()) {
                    rms_normed(row, weight, eps, &mut normed);
                    row = &normed;
                }
                let first = row_block * slices * TILE_VALUES + r * TILE_DEPTH;
                // SAFETY: tile-row `r` of row block `row_block` (32 values in each of `slices`
                // tiles) lies inside `acts`' capacity and is written by this work item alone;
                // `acts` outlives the parallel section.
                unsafe { convert_into_tiles(row, (acts_addr as *mut u16).add(first), slices) };
            }
        }
    });
    // SAFETY: every tile-row of every row block was written above: all `len` values.
    unsafe { acts.assume_written() };
    acts
}

/// Writes `row` as bf16 to `slices` tile-rows 32 values wide, `TILE_VALUES` apart, zeros past
/// its end.
///
/// # Safety
/// `out` must be valid for `slices * TILE_VALUES` values, and AVX-512 BF16 present (an
/// [`AmxMatrix`] exists only where [`available`] checked it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn convert_into_tiles(row: &[f32], out: *mut u16, slices: usize) {
    use std::arch::x86_64::{__m256i, _mm256_storeu_si256, _mm512_cvtneps_pbh, _mm512_loadu_ps};
    for slice in 0..slices {
        for half in [0, 16] {
            let start = slice * TILE_DEPTH + half;
            // SAFETY: the caller's contract for `out`; `row` is read within its length.
            unsafe {
                let dst = out.add(slice * TILE_VALUES + half);
                if start + 16 <= row.len() {
                    let v = _mm512_loadu_ps(row.as_ptr().add(start));
                    let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_storeu_si256(dst as *mut __m256i, b);
                } else {
                    for j in 0..16 {
                        let v = row.get(start + j).copied().unwrap_or(0.0);
                        *dst.add(j) = bf16_bits(v);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn convert_into_tiles(_: &[f32], _: *mut u16, _: usize) {
    unreachable!("AmxMatrix is only built where AMX is available")
}

#[cfg(test)]
// A test skipped on a CPU without AMX says so.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let round = |v: f32| half::bf16::from_f32(v).to_f32();
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| round(x[i * k + t]) as f64 * round(w[j * k + t]) as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// True (and says so) where this CPU cannot run the kernel.
    fn skipped_without_amx() -> bool {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16 (or MURAKKAB_AMX=0)");
        }
        !available()
    }

    /// Each of `got` within `relative · (1 + |want|)` of `want`.
    fn assert_close(got: &[f32], want: &[f32], relative: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= relative * (1.0 + w.abs()), "{what}: {g} vs {w}");
        }
    }

    /// A gated MLP (gate and up packed together, then the down projection) and `m` input rows.
    struct GatedMlp {
        x: Vec<f32>,
        gate: Vec<f32>,
        up: Vec<f32>,
        down: Vec<f32>,
        gated: AmxMatrix,
        down_matrix: AmxMatrix,
        dim: usize,
    }

    impl GatedMlp {
        fn new(m: usize, features: usize, dim: usize, seed: usize) -> Self {
            let (x, gate, up, down) = (
                values(m * dim, seed),
                values(features * dim, seed + 1),
                values(features * dim, seed + 2),
                values(dim * features, seed + 3),
            );
            let gated = AmxMatrix::gated_from_f32(&gate, &up, features, dim).unwrap();
            let down_matrix = AmxMatrix::from_f32(&down, dim, features).unwrap();
            Self { x, gate, up, down, gated, down_matrix, dim }
        }

        /// `rows` (`m` of them) through the gated product and the down projection.
        fn run(&self, rows: &[f32], m: usize) -> Vec<f32> {
            let acts = TiledActivations::from_f32(rows, m, self.dim);
            self.down_matrix.matmul_tiled(&self.gated.silu_gated(&acts))
        }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104_729) % 1999) as f32 / 1999.0 - 0.5).collect()
    }

    #[test]
    fn tiles_multiply_like_the_rounded_f32_product_at_any_shape() {
        if skipped_without_amx() {
            return;
        }
        // Whole blocks, ragged rows, ragged outputs and a ragged depth.
        for (m, n, k) in [(32, 64, 64), (1, 32, 32), (45, 96, 896), (70, 40, 100), (33, 17, 45)] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let matrix = AmxMatrix::from_f32(&w, n, k).unwrap();
            let got = matrix.matmul(&x, m);
            assert_eq!(got.len(), m * n);
            assert_close(&got, &reference(&x, &w, m, n, k), 1e-3, &format!("{m}x{n}x{k}"));
        }
    }

    #[test]
    fn the_gated_product_feeds_the_down_projection_like_separate_products() {
        if skipped_without_amx() {
            return;
        }
        let (m, features, dim) = (37, 64, 96);
        let mlp = GatedMlp::new(m, features, dim, 5);
        let got = mlp.run(&mlp.x, m);
        // The same through f32: the two products, SiLU, their product, the down projection.
        let (x, gate, up, down) = (&mlp.x, &mlp.gate, &mlp.up, &mlp.down);
        let (g, u) = (reference(x, gate, m, features, dim), reference(x, up, m, features, dim));
        let hidden: Vec<f32> =
            g.iter().zip(&u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect();
        let want = reference(&hidden, down, m, dim, features);
        assert_eq!(got.len(), m * dim);
        // The hidden activations are rounded to bf16 (relative 2^-9) before the last product.
        assert_close(&got, &want, 1e-2, "gated");
    }

    #[test]
    fn the_bias_gelu_epilogue_feeds_the_next_product_like_separate_steps() {
        if skipped_without_amx() {
            return;
        }
        // 600 rows (past one 512-row chunk) and 70 outputs (padded to 96: a zero bias there).
        let (m, features, dim) = (600, 70, 96);
        let (x, w, next) =
            (values(m * dim, 11), values(features * dim, 12), values(dim * features, 13));
        let bias: Vec<f32> = values(features, 14).iter().map(|b| 2.0 * b).collect();
        let matrix = AmxMatrix::from_f32(&w, features, dim).unwrap();
        let next_matrix = AmxMatrix::from_f32(&next, dim, features).unwrap();
        let acts = TiledActivations::from_f32(&x, m, dim);
        let got = next_matrix.matmul_tiled(&matrix.bias_gelu(&acts, &bias));
        let hidden: Vec<f32> = reference(&x, &w, m, features, dim)
            .iter()
            .enumerate()
            .map(|(i, &v)| crate::vector_math::gelu_erf(v + bias[i % features]))
            .collect();
        let want = reference(&hidden, &next, m, dim, features);
        // The hidden activations are rounded to bf16 (relative 2^-9) before the last product.
        assert_close(&got, &want, 1e-2, "bias + gelu");
    }

    #[test]
    fn candle_s_own_tile_products_run_unchanged_after_ours_on_the_same_threads() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        use candle_core::{Device, Module, Tensor};
        if skipped_without_amx() {
            return;
        }
        // candle multiplies Q4_K weights by 32 rows or more on AMX tiles (a model over 1B
        // parameters keeps only its quantized weights, so its prompt passes do), configuring
        // each thread once; ours configure and release around every product.
        let (m, n, k) = (64, 128, 512);
        let weights = Tensor::from_vec(values(n * k, 5), (n, k), &Device::Cpu).unwrap();
        let q4k =
            QMatMul::from_qtensor(QTensor::quantize(&weights, GgmlDType::Q4K).unwrap()).unwrap();
        let x = Tensor::from_vec(values(m * k, 6), (m, k), &Device::Cpu).unwrap();
        let ours = AmxMatrix::from_f32(&values(n * k, 7), n, k).unwrap();
        let candle = || q4k.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // In candle's pool, as the decoder runs both: its products and ours share threads.
        candle_core::utils::with_threadpool(|| {
            let before = candle();
            for _ in 0..4 {
                ours.matmul(&values(m * k, 8), m);
                assert_eq!(candle(), before);
            }
        });
    }

    #[test]
    fn normalising_into_the_tiles_equals_candle_s_rms_norm_then_converting() {
        if skipped_without_amx() {
            return;
        }
        // 40 rows (a block and part of another, so padding rows too), 96 columns (three
        // slices), a row of zeros (the epsilon alone keeps it finite).
        let (m, cols, eps) = (40, 96, 1e-6f32);
        let mut x = values(m * cols, 5);
        x[3 * cols..4 * cols].fill(0.0);
        let weight: Vec<f32> = values(cols, 6).iter().map(|v| v + 1.0).collect();
        let device = candle_core::Device::Cpu;
        let xs = candle_core::Tensor::from_slice(&x, (m, cols), &device).unwrap();
        let ws = candle_core::Tensor::from_slice(&weight, cols, &device).unwrap();
        let normed = candle_nn::ops::rms_norm(&xs, &ws, eps).unwrap();
        let normed = normed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut want = TiledActivations::from_f32(&normed, m, cols);
        let mut got = TiledActivations::from_rms_normed(&x, &weight, eps, m, cols);
        assert_eq!(got.values.as_mut_slice(), want.values.as_mut_slice());
    }

    #[test]
    fn a_row_gets_the_same_result_alone_and_in_a_batch() {
        if skipped_without_amx() {
            return;
        }
        let (m, n, k) = (40, 64, 128);
        let (x, w) = (values(m * k, 3), values(n * k, 4));
        let matrix = AmxMatrix::from_f32(&w, n, k).unwrap();
        let batch = matrix.matmul(&x, m);
        let alone = matrix.matmul(&x[7 * k..8 * k], 1);
        assert_eq!(&batch[7 * n..8 * n], &alone[..]);
    }

    #[test]
    fn the_interleaved_epilogue_gives_each_row_its_own_result_across_blocks_and_chunks() {
        if skipped_without_amx() {
            return;
        }
        // 600 rows: past one 512-row chunk, so a block's SiLU runs beside blocks of other
        // column blocks and of the next chunk; 8 column blocks over the work items.
        let (m, features, dim) = (600, 128, 96);
        let mlp = GatedMlp::new(m, features, dim, 9);
        let batch = mlp.run(&mlp.x, m);
        for row in [0, 31, 32, 511, 512, 599] {
            let alone = mlp.run(&mlp.x[row * dim..(row + 1) * dim], 1);
            assert_eq!(&batch[row * dim..(row + 1) * dim], &alone[..], "row {row}");
        }
    }
}
