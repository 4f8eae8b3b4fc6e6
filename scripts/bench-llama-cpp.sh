#!/usr/bin/env bash
# The llama.cpp peer for benches/models.rs: builds llama-bench from the llama.cpp sources vendored
# in the llama-cpp-python source package (PyPI), outside the repository, and runs it on the same
# GGUF files with 1 and 2 threads. Nothing of llama.cpp is committed.
#
#   scripts/bench-llama-cpp.sh            # then compare with: cargo bench --bench models
set -euo pipefail
cd "$(dirname "$0")/.."
peer="${MURAKKAB_PEERS_DIR:-$HOME/.cache/murakkab-build/peers}"
version=0.3.36
mkdir -p "$peer"
bench="$peer/llama_cpp_python-$version/vendor/llama.cpp/build-noamx/bin/llama-bench"
# The host's vector instructions, but never AMX: on hosts whose CPU reports AMX but whose kernel
# or VM does not grant the tile state, ggml's AMX matmul crashes (SIGSEGV in
# ggml_backend_amx_mul_mat). GGML_NATIVE would turn it on, so each extension is enabled by name.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
isa=()
for pair in sse4_2:SSE42 f16c:F16C fma:FMA bmi2:BMI2 avx:AVX avx2:AVX2 avx_vnni:AVX_VNNI \
            avx512f:AVX512 avx512_vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
  flag=${pair%%:*} option=${pair##*:}
  if [[ "$cpu_flags" == *" $flag "* ]]; then isa+=("-DGGML_$option=ON"); else isa+=("-DGGML_$option=OFF"); fi
done
if [[ ! -x "$bench" ]]; then
  echo "peer: building llama-bench from llama-cpp-python==$version (a few minutes on 2 cores)"
  python3 -m pip install -q cmake
  (cd "$peer" && python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d . "llama-cpp-python==$version" \
     && tar xzf "llama_cpp_python-$version.tar.gz")
  (cd "$peer/llama_cpp_python-$version/vendor/llama.cpp" \
     && cmake -B build-noamx -DGGML_NATIVE=OFF "${isa[@]}" -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
          -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null \
     && cmake --build build-noamx --target llama-bench -j"$(nproc)" >/dev/null)
fi
home="${MURAKKAB_HOME:-$HOME/.cache/murakkab}"
for id in smollm2-135m-instruct qwen2.5-coder-0.5b-instruct; do
  gguf="$home/models/$id/model.gguf"
  [[ -f "$gguf" ]] || { echo "$id: not pulled, skipped"; continue; }
  echo "== $id (llama.cpp): pp = prompt tokens/s (248-token and 45-token prompts), tg = decode tokens/s at batch 1"
  "$bench" -m "$gguf" -p 248,45 -n 32 -t 1,2 -r 3 -o md 2>/dev/null
done
