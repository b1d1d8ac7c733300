#!/usr/bin/env bash
# Artifacts and measurements of the pv-int table (docs/passes/quantization.md, "pv-int"; issue 16), in order.
# STEPS4 / STEPS: PV steps for int4 / int2 and int3; MAX_TOKENS: evaluation tokens per text; OUT: artifact folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; A=.venv/bin/accelc
OUT=${OUT:-out}; STEPS4=${STEPS4:-60}; STEPS=${STEPS:-40}; MAX_TOKENS=${MAX_TOKENS:-8192}; DATE=$(date -u +%F)
RES=${RES:-docs/passes/results}
[ -d "$OUT/s-fp32" ] || $A compile smollm2-135m --target cpu --formats openvino -o "$OUT/s-fp32"
for b in 4 2 3; do
  s=$STEPS; [ $b = 4 ] && s=$STEPS4
  [ -d "$OUT/pv-int$b" ] || $A compile smollm2-135m --target cpu --formats openvino --quantize "pv-int:$b,steps=$s" -o "$OUT/pv-int$b"
done
for b in 4 3 2; do
  [ -d "$OUT/nncf-int$b" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b" --bits $b
  [ -d "$OUT/nncf-int$b-awq" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b-awq" --bits $b --awq --scale-estimation || true
  [ -d "$OUT/nncf-int$b-gptq" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b-gptq" --bits $b --gptq || true
done
arts=(fp32="$OUT/s-fp32")
for b in 4 3 2; do
  for v in "nncf-int$b" "nncf-int$b-awq" "nncf-int$b-gptq" "pv-int$b"; do [ -d "$OUT/$v" ] && arts+=("$v=$OUT/$v"); done
done
$PY scripts/bench_int.py "${arts[@]}" --max-tokens "$MAX_TOKENS" --rounds 2 --threads 2 --out "$RES/pv_int_$DATE.json"
