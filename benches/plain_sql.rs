//! Plain SQL through Murakkab vs the same query through DataFusion directly.
//!
//! Murakkab adds options, functions and (later) AI rules to DataFusion's session; for SQL with
//! no AI calls that must cost next to nothing. Both sides read the same 10-million-row Parquet
//! file with the same number of partitions, in one run, so the ratio of medians is the overhead.
//!
//! `cargo bench --bench plain_sql` (set `PLAIN_SQL_ROWS` for a smaller file). Besides criterion's
//! two timings (taken one after the other, so machine noise can drift between them), it prints
//! the ratio of medians over interleaved runs, which is the number to quote on a shared machine.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use murakkab::Session;
use tokio::runtime::Runtime;

const QUERY: &str = "SELECT count(*), avg(x), max(y) FROM t";

fn rows() -> u64 {
    std::env::var("PLAIN_SQL_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Writes the benchmark file once per size, next to the build's other outputs.
fn data_file(rt: &Runtime) -> PathBuf {
    let dir = std::env::temp_dir().join("murakkab-bench");
    let path = dir.join(format!("plain_sql_{}.parquet", rows()));
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let tmp = dir.join(format!(".plain_sql_{}.parquet.tmp", rows()));
    rt.block_on(async {
        let ctx = SessionContext::new();
        let sql = format!(
            "COPY (SELECT value AS id, (value % 1000) * 0.5 AS x, value % 97 AS y \
             FROM generate_series(1, {})) TO '{}' STORED AS PARQUET",
            rows(),
            tmp.display()
        );
        ctx.sql(&sql).await.expect("plan").collect().await.expect("write bench data");
    });
    std::fs::rename(&tmp, &path).expect("rename bench data");
    path
}

async fn datafusion_context(path: &Path) -> SessionContext {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads()));
    ctx.register_parquet("t", path.to_str().expect("utf8 path"), ParquetReadOptions::default())
        .await
        .expect("register");
    ctx
}

async fn murakkab_session(path: &Path) -> Session {
    let home = std::env::temp_dir().join("murakkab-bench").join("home");
    let db = Session::builder().home(home).threads(threads()).build().await.expect("session");
    db.register_parquet("t", path).await.expect("register");
    db
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Alternates the two sides run by run, so both see the same machine load.
fn interleaved_ratio(rt: &Runtime, df: &SessionContext, mk: &Session) {
    const PAIRS: usize = 41;
    let (mut d, mut m) = (Vec::with_capacity(PAIRS), Vec::with_capacity(PAIRS));
    for _ in 0..PAIRS {
        let start = Instant::now();
        rt.block_on(async { df.sql(QUERY).await.expect("plan").collect().await.expect("run") });
        d.push(start.elapsed());
        let start = Instant::now();
        rt.block_on(async { mk.sql(QUERY).await.expect("plan").collect().await.expect("run") });
        m.push(start.elapsed());
    }
    let (d, m) = (median(d), median(m));
    println!(
        "plain_sql interleaved ({PAIRS} pairs, {} rows): datafusion median {:.2} ms, murakkab median {:.2} ms, ratio murakkab/datafusion = {:.3}",
        rows(),
        d.as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e3,
        m.as_secs_f64() / d.as_secs_f64()
    );
}

fn plain_sql(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let path = data_file(&rt);
    let df = rt.block_on(datafusion_context(&path));
    let mk = rt.block_on(murakkab_session(&path));
    interleaved_ratio(&rt, &df, &mk);

    let mut group = c.benchmark_group("plain_sql");
    group.sample_size(20);
    group.bench_function("datafusion", |b| {
        b.to_async(&rt)
            .iter(|| async { df.sql(QUERY).await.expect("plan").collect().await.expect("run") })
    });
    group.bench_function("murakkab", |b| {
        b.to_async(&rt)
            .iter(|| async { mk.sql(QUERY).await.expect("plan").collect().await.expect("run") })
    });
    group.finish();
}

criterion_group!(benches, plain_sql);
criterion_main!(benches);
