#!/usr/bin/env bash
# Runs every test: unit tests, the SQL logic tests (tests/sql/*.slt), integration tests that run
# the murakkab binary, real-model tests, quality on labeled data, and doc-tests. Everything the
# tests need is fetched here: the labeled datasets into ./data, and the real test models into
# MURAKKAB_HOME (default ~/.cache/murakkab), each once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
# Model kernels read their thread count from here on every matrix multiply; unset, candle
# re-reads /proc/cpuinfo each time (the binary sets it itself; test harnesses cannot).
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
./scripts/fetch-data.sh
# Same targets as `cargo test`, so the binary below shares its build.
cargo build --quiet --workspace --all-targets
"${CARGO_TARGET_DIR:-target}/debug/murakkab" models pull all-minilm-l6-v2 smollm2-135m-instruct
MURAKKAB_REQUIRE_REAL_MODELS=1 cargo test --workspace
