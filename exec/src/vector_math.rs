//! Element-wise math for the AMX kernel's epilogues: the exact (erf) GELU in AVX-512 lanes.
//!
//! candle applies GELU with libm's scalar `erff`, which took 13% of a MiniLM forward pass
//! (perf, 220 BBC leads); the encoder's intermediate projection applies this one to its sums
//! before they leave the cache (`AmxMatrix::bias_gelu`).

#![allow(unsafe_code)]

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
    _mm512_div_ps(_mm512_mul_ps(x, p), q)
}

#[cfg(test)]
// A test skipped on a CPU without the instructions says so.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;

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
}
