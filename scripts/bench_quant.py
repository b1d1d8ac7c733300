"""Benchmark extreme quantization on the real model: perplexity, bits per weight, compile time.

Each method spec runs through the same passes `accelc compile --quantize` builds (targets/phases.py),
then the torch model is scored with the project's perplexity protocol (accelc.compiler.evaluate).
Codebook specs with the same initialisation (scheme and quantization options) share ONE codebook
pass: its result is kept and deep-copied for the untuned (aqlm), STE and PV rows, whose compile
time is then the shared initialisation time plus their own tuning time. Writes JSON and a
markdown table for docs/passes/quantization.md; the artifact MB, resident MB and decode tok/s
columns are left for `accelc bench` on exported artifacts. `pv:...,v_every=1000` is P steps only
(the ablation of the V step).

Bounded run used for the docs (2-bit rows; one 2x8g8 initialisation, about 11 min, plus tunings):
    Q=samples=16,seqlen=256 T=steps=16,batch=2
    .venv/bin/python scripts/bench_quant.py --max-tokens 8192 --out /tmp/bq/bit2 --methods rtn:2g64 \
        aqlm:2x8g8,$Q ste:2x8g8,$Q,$T pv:2x8g8,$Q,$T pv:2x8g8,$Q,$T,v_every=1000
Smoke (2 decoder layers, a few steps, minutes):
    .venv/bin/python scripts/bench_quant.py --layers 2 --max-tokens 2048 --out /tmp/bq \
        --methods rtn:2g64 aqlm:2x8g8,samples=8,seqlen=128 pv:2x8g8,samples=8,seqlen=128,steps=4,batch=2
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

from provenance import provenance  # machine, date, commit, command line (scripts/provenance.py)

DEFAULT_METHODS = ["rtn:2g64", "aqlm:2x8g8", "ste:2x8g8,steps=100", "pv:2x8g8,steps=100",
                   "aqlm:1x8g8", "pv:1x8g8,steps=100"]


def load(model_name: str, args):
    from accelc.models.sources import load_model
    bundle = load_model(model_name)
    if args.layers:
        keep = bundle.model.model.layers[: args.layers]
        bundle.model.model.layers = keep
        bundle.model.config.num_hidden_layers = len(keep)
        if getattr(bundle.model.config, "layer_types", None):
            bundle.model.config.layer_types = bundle.model.config.layer_types[: len(keep)]
    return bundle


def initialised(model_name: str, quant_pass, args, cache: dict):
    """(bundle copy, init seconds) after the codebook pass `quant_pass` (run once per initialisation)."""
    from accelc.passes.quantization.codebook import TEACHER
    key = dataclasses.replace(quant_pass.config, method="aqlm", keep_teacher=True)
    if key not in cache:
        bundle = load(model_name, args)
        t0 = time.perf_counter()
        type(quant_pass)(key)(bundle)
        teacher = bundle.records.pop(TEACHER)
        cache[key] = (bundle, teacher, round(time.perf_counter() - t0, 1))
    base, teacher, seconds = cache[key]
    bundle = copy.deepcopy(base)
    bundle.records[TEACHER] = teacher            # shared: frozen, only read by the tuning pass
    bundle.records["quantization"]["method"] = quant_pass.config.method
    return bundle, seconds


def run_one(model_name: str, spec: str | None, args, cache: dict) -> dict:
    from accelc.compiler.evaluate import Protocol, evaluate_torch
    from accelc.compiler.manager import PassManager
    from accelc.passes.quantization.codebook import TEACHER, CodebookQuantPass
    from accelc.targets import phases
    from accelc.targets.base import CompileOptions

    passes = phases.compression(CompileOptions(quantize=spec, calib=args.calib)) if spec else []
    init_s = 0.0
    if passes and isinstance(passes[0], CodebookQuantPass):
        bundle, init_s = initialised(model_name, passes[0], args, cache)
        passes = passes[1:]
    else:
        bundle = load(model_name, args)
    row = {"spec": spec or "fp32", "layers": bundle.adapter.num_layers}
    t0 = time.perf_counter()
    if passes:
        PassManager(passes).run(bundle)
    bundle.records.pop(TEACHER, None)
    row["compile_s"] = round(init_s + time.perf_counter() - t0, 1)
    row["init_s"] = init_s
    q = bundle.records.get("quantization", {})
    row["bits_per_weight"] = q.get("bits_per_weight", 32.0)
    row["embedding"] = q.get("embedding", {}).get("policy", "fp32")
    row["mean_rel_output_error"] = q.get("mean_relative_output_error")
    if "tuning" in q:
        t = q["tuning"]
        row["tuning"] = {k: t[k] for k in ("mode", "steps", "tau", "kl_heldout_before", "kl_heldout_after")}
        row["tuning"]["mean_code_change"] = (sum(t["code_change_fraction"]) / len(t["code_change_fraction"])
                                             if t["code_change_fraction"] else 0.0)
    row["seconds"] = q.get("seconds", {})
    ev = evaluate_torch(bundle, Protocol(max_tokens=args.max_tokens), args.eval_text, sample=False)
    row["perplexity"] = ev["perplexity"]
    row["eval_tokens"] = ev["tokens"]
    return row


def markdown(rows: list[dict], args) -> str:
    head = ("| method | bits/weight (linears) | perplexity | compile s | artifact MB | resident MB | decode tok/s |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n")
    lines = [f"| `{r['spec']}` | {r['bits_per_weight']:.3f} | {r['perplexity']:.2f} | {r['compile_s']} "
             f"| (accelc bench) | (accelc bench) | (accelc bench) |" for r in rows]
    note = (f"\nModel {args.model}" + (f", first {args.layers} decoder layers only (smoke)" if args.layers else "")
            + f"; perplexity on {rows[0]['eval_tokens'] if rows else '?'} Brown eval tokens (512-token windows); "
            "embedding/head fp32 in torch; codebook rows of one scheme share one initialisation "
            "(compile s = init + tuning).\n")
    return head + "\n".join(lines) + "\n" + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="--quantize specs (fp32 row is added)")
    p.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference row")
    p.add_argument("--max-tokens", type=int, default=32768, help="evaluation tokens (protocol default 32768)")
    p.add_argument("--eval-text", help="evaluation text file (default: Brown eval split)")
    p.add_argument("--calib", help="calibration text file (default: Brown calibration split)")
    p.add_argument("--layers", type=int, default=0, help="keep only the first N decoder layers (smoke runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: many small ops; 2 threads lose badly when the cores are shared)")
    p.add_argument("--out", default="bench_quant", help="output prefix: writes PREFIX.json and PREFIX.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows, cache = [], {}
    for spec in ([] if args.no_fp32 else [None]) + args.methods:
        t = time.perf_counter()
        rows.append(run_one(args.model, spec, args, cache))
        rows[-1]["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        Path(args.out + ".json").write_text(json.dumps({**provenance(), "model": args.model,
                                                        "layers": args.layers or "all", "rows": rows}, indent=1))
    Path(args.out + ".md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
