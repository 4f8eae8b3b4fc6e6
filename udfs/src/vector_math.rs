//! The vector arithmetic of semantic search: dot products and top-k selection.

/// Dot product in eight f32 lanes (the compiler vectorises the inner loop), summed in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(tail)
}

/// Cosine of two vectors; 0 when either is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (na, nb) = (dot(a, a), dot(b, b));
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot(a, b) / (na.sqrt() * nb.sqrt()) }
}

/// The `k` best `(row, score)` pairs, best first; ties go to the earlier row. Linear selection
/// then a sort of the k kept, so it costs O(n + k log k).
pub fn top_k(mut scored: Vec<(u32, f64)>, k: usize) -> Vec<(u32, f64)> {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(scored.len());
    if k < scored.len() {
        scored.select_nth_unstable_by(k, order);
        scored.truncate(k);
    }
    scored.sort_by(order);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_loop_for_any_length() {
        for n in [0, 1, 7, 8, 9, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "n = {n}");
        }
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn top_k_is_best_first_with_ties_to_the_earlier_row() {
        let scored = vec![(0, 0.5), (1, 0.9), (2, 0.5), (3, 0.1), (4, 0.9)];
        assert_eq!(top_k(scored.clone(), 3), vec![(1, 0.9), (4, 0.9), (0, 0.5)]);
        assert_eq!(top_k(scored, 10).len(), 5);
    }
}
