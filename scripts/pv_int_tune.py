"""Run `--quantize pv-int:...` (or pv:...) alone on a model, no export: the quantizer, then the tuning, and the
perplexity of the torch model (the evaluation protocol: 32,768 tokens of Brown's evaluation split and of State of
the Union) after the quantizer and after the tuning. Meant for a lent GPU (device=auto trains there): the tuned
state is written to --state and, with --parts DIR, cut into parts of at most --part-mb MB, which is how it comes
back from the device machine (scripts/gpu_run.sh pvint). Join the parts (`cat NAME.part* > NAME`) and compile the
same spec with state=NAME on any machine: the compile loads the tuned weights instead of training.

    .venv/bin/python scripts/pv_int_tune.py --spec "pv-int:3,steps=100000,seconds=270,batch=16,tune_samples=2048" \
        --state /tmp/pvint3.st --out docs/passes/results/pv_int_gpu_DATE.json

--init-only stops after the quantizer's perplexity (gptq-int's options compared without tuning; no --state). Several --spec run one after another; raw JSON with machine, date, commit and command line."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from parts import cut
from provenance import add_row, provenance


def evaluate(bundle) -> dict:
    from accelc.compiler.evaluate import Protocol, evaluate_torch
    return {text: evaluate_torch(bundle, Protocol(text=text), sample=False)["perplexity"]
            for text in ("brown-eval", "sotu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", nargs="+", required=True, help="pv-int:B,... or pv:MxBgG,... (no state=)")
    ap.add_argument("--state", nargs="+", help="a tuned-state file per spec (not with --init-only)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", help="folder for the tuned-state files cut into parts")
    ap.add_argument("--part-mb", type=float, default=15.0)
    ap.add_argument("--no-init-eval", action="store_true", help="skip the perplexity after the quantizer alone")
    ap.add_argument("--init-only", action="store_true",
                    help="the quantizer and its perplexity only: no tuning, no state file (compare initialisations)")
    args = ap.parse_args()
    if args.init_only:
        if args.state:
            ap.error("--init-only writes no tuned state: leave out --state")
        args.state = [None] * len(args.spec)
    elif len(args.state or []) != len(args.spec):
        ap.error("give one --state file per --spec")
    import torch
    from accelc.models.sources import load_model
    from accelc.passes.quantization.quant_methods import build
    result = {**provenance(), "model": args.model, "threads": torch.get_num_threads(), "rows": []}
    for spec, state in zip(args.spec, args.state):
        method, _, arg = spec.partition(":")
        full = spec if args.init_only else f"{spec},state={state}"
        bundle = load_model(args.model)
        quant, tune = build(method, arg if args.init_only else f"{arg},state={state}", None)
        t0 = time.perf_counter()
        quant(bundle)
        row = {"spec": full, "quantizer_seconds": round(time.perf_counter() - t0, 1)}
        if not args.no_init_eval or args.init_only:
            row["perplexity_init"] = evaluate(bundle)
        if args.init_only:
            row["init"] = bundle.records["quantization"].get("init")
            add_row(result, row, args.out)
            print(spec, row["perplexity_init"], flush=True)
            continue
        t1 = time.perf_counter()
        tune(bundle)
        rec = bundle.records["quantization"]
        t = rec["tuning"]
        row.update(tuning_seconds=round(time.perf_counter() - t1, 1), perplexity=evaluate(bundle),
                   bits_per_weight=rec.get("bits_per_weight"),
                   tuning={k: v for k, v in t.items() if k not in ("losses", "code_change_fraction")},
                   loss_curve=t["losses"][:: max(1, len(t["losses"]) // 50)],
                   state_bytes=Path(state).stat().st_size)
        if args.parts:
            row["parts"] = cut(Path(state), Path(args.parts), args.part_mb)
        add_row(result, row, args.out)
        print(spec, row["perplexity"], flush=True)


if __name__ == "__main__":
    main()
