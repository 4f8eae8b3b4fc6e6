#!/usr/bin/env bash
# The onnxruntime peer for MiniLM embeddings in benches/models.rs: installs onnxruntime, onnx and
# tokenizers (PyPI) into a virtual environment outside the repository, builds the ONNX graph from
# the pulled all-minilm-l6-v2 weights (scripts/peers/minilm_onnx.py) and times batch-64 embeddings
# of the same UCI sentences with 1 and 2 threads.
#
#   scripts/bench-onnxruntime.sh            # then compare with: cargo bench --bench models
set -euo pipefail
cd "$(dirname "$0")/.."
peer="${MURAKKAB_PEERS_DIR:-$HOME/.cache/murakkab-build/peers}"
venv="$peer/onnxruntime-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "peer: installing onnxruntime into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q onnxruntime==1.32.0 onnx==1.23.2 tokenizers==0.23.3 numpy
fi
home="${MURAKKAB_HOME:-$HOME/.cache/murakkab}"
model="$home/models/all-minilm-l6-v2"
[[ -f "$model/model.safetensors" ]] || { echo "all-minilm-l6-v2: not pulled (murakkab models pull all-minilm-l6-v2)"; exit 1; }
[[ -f data/uci-sentiment.jsonl ]] || scripts/fetch-data.sh
for threads in 1 2; do
  "$venv/bin/python" scripts/peers/minilm_onnx.py "$model" data/uci-sentiment.jsonl "$threads"
done
