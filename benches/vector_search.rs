//! Exact semantic search cost: scoring every stored vector against a query (384-wide, like
//! all-minilm-l6-v2) and keeping the top 10, as `ai_search` does, at several table sizes.
//!
//! `cargo bench --profile dev --bench vector_search`. Prints the median time per query and the
//! vectors scored per second, so the size where brute force stops being interactive can be read
//! off (the embeddings themselves cost far more to compute: ~200 texts/s on 2 cores).

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use murakkab_udfs::vector_math::{dot, top_k};

const DIM: usize = 384;

fn random_unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let v: Vec<f32> = (0..DIM)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn main() {
    let query = random_unit_vectors(1, 7);
    println!("{:>10} {:>12} {:>16}", "rows", "ms/query", "vectors/s");
    for n in [10_000usize, 100_000, 1_000_000] {
        let vectors = random_unit_vectors(n, 42);
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let scored: Vec<(u32, f64)> = vectors
                    .chunks_exact(DIM)
                    .enumerate()
                    .map(|(i, v)| (i as u32, dot(v, &query)))
                    .collect();
                let best = top_k(scored, 10);
                assert_eq!(best.len(), 10);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{n:>10} {:>12.2} {:>16.0}", median * 1e3, n as f64 / median);
    }
}
