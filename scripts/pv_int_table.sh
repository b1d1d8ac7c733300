#!/usr/bin/env bash
# Artifacts and measurements of the pv-int table (docs/passes/quantization.md, "pv-int"; issue 16), in order.
# STEPS4 / STEPS: PV steps for int4 / int2 and int3; MAX_TOKENS: evaluation tokens per text; OUT: artifact folder;
# NNCF_GPTQ=1 adds NNCF's GPTQ rows (each under a 15-minute limit); ROUNDS: speed rounds; FORMATS: what the pv-int
# compiles and the fp32 artifact ship (openvino,native gives the rows native columns too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; A=.venv/bin/accelc
OUT=${OUT:-out}; STEPS4=${STEPS4:-60}; STEPS=${STEPS:-40}; MAX_TOKENS=${MAX_TOKENS:-8192}; DATE=$(date -u +%F)
RES=${RES:-docs/passes/results}; ROUNDS=${ROUNDS:-1}; NNCF_GPTQ=${NNCF_GPTQ:-0}; FORMATS=${FORMATS:-openvino}
[ -d "$OUT/s-fp32" ] || $A compile smollm2-135m --target cpu --formats "$FORMATS" -o "$OUT/s-fp32"
[ -d "$OUT/nncf-int4" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int4" --bits 4
[ -d "$OUT/pv-int4" ] || $A compile smollm2-135m --target cpu --formats "$FORMATS" --quantize "pv-int:4,steps=$STEPS4" -o "$OUT/pv-int4"
for b in 2 3; do
  [ -d "$OUT/nncf-int$b" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b" --bits $b
done
[ -d "$OUT/pv-int2" ] || $A compile smollm2-135m --target cpu --formats "$FORMATS" --quantize "pv-int:2,steps=$STEPS" -o "$OUT/pv-int2"
for b in 4 2; do
  [ -d "$OUT/nncf-int$b-awq" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b-awq" --bits $b --awq --scale-estimation || true
done
[ -d "$OUT/pv-int3" ] || $A compile smollm2-135m --target cpu --formats "$FORMATS" --quantize "pv-int:3,steps=$STEPS" -o "$OUT/pv-int3"
if [ "$NNCF_GPTQ" = 1 ]; then
  for b in 4 3 2; do
    [ -d "$OUT/nncf-int$b-gptq" ] || timeout 900 $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int$b-gptq" --bits $b --gptq || true
  done
  [ -d "$OUT/nncf-int3-awq" ] || $PY scripts/nncf_baseline.py "$OUT/s-fp32" "$OUT/nncf-int3-awq" --bits 3 --awq --scale-estimation || true
fi
arts=(fp32="$OUT/s-fp32")
for b in 4 3 2; do
  for v in "nncf-int$b" "nncf-int$b-awq" "nncf-int$b-gptq" "pv-int$b"; do [ -d "$OUT/$v" ] && arts+=("$v=$OUT/$v"); done
done
[ -d "$OUT/pv-int4-fmt" ] && arts+=("pv-int4-format=$OUT/pv-int4-fmt")
$PY scripts/bench_int.py "${arts[@]}" --max-tokens "$MAX_TOKENS" --rounds "$ROUNDS" --threads 2 --out "$RES/pv_int_$DATE.json"
