#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the demo over real data:
# fetches the UCI sentiment sentences, builds murakkab, explores the data with SQL, runs a batch
# job that writes Parquet parts, and queries the job's output.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
echo "demo: building murakkab (the first build compiles DataFusion: ~20 minutes on 2 cores)"
# Same targets as the tests, so both share one build (bin-only builds resolve features differently).
cargo build --quiet --all-targets
bin="${CARGO_TARGET_DIR:-target}/debug/murakkab"

echo; echo "== murakkab -f demo/explore.sql"
"$bin" -f demo/explore.sql

echo; echo "== murakkab run demo/job.sql --output data/demo-output --overwrite"
"$bin" run demo/job.sql --output data/demo-output --rows-per-part 1000 --overwrite

echo; echo "== the job's output is a table"
"$bin" -c "SELECT source, count(*) AS rows, avg(words) AS avg_words FROM 'data/demo-output/' GROUP BY source ORDER BY source"
echo; echo "demo: done. Open the shell with: $bin"
