#!/usr/bin/env bash
# Runs every test: unit tests, the SQL logic tests (tests/sql/*.slt), integration tests that run
# the murakkab binary, and doc-tests. Everything the tests need is fetched by this script.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
