"""What a speculative verify step costs: the time of one target pass over T new tokens (T = 1 .. 9) after a
cached context, on each backend, as the speculative loop runs it (runtime/speculative/artifact.py DecoderStep:
the artifact's own decoder, every row's logits), and its ratio to the one-token pass.

    .venv/bin/python scripts/bench_verify_cost.py out/int8 --backends native openvino \
        --json docs/results/verify_cost_DATE.json
    .venv/bin/python scripts/bench_verify_cost.py out/int8 --backends native openvino --load 2 \
        --widths 1 --json docs/results/native_under_load_DATE.json

A backend may carry environment settings for its own load: native@ACCELC_NATIVE_PREFETCH=0 opens the native
backend with that variable set (other backends see the process's environment as it was).
--load N runs N CPU-bound busy loops (other processes) during the measurement, as on a busy machine.

Each round times every (backend, T) once, backends alternating, after a --context token prefill that is kept
(each timed pass is rolled back); the median over --rounds is reported. A drafted token is worth drafting only
when the step's cost grows by less than the expected accepted tokens. Writes raw JSON with the machine
(scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

from provenance import emit


def _burn() -> None:
    while True:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--backends", nargs="+", default=["native", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3, 4, 5, 9])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--load", type=int, default=0, help="CPU-bound busy processes running meanwhile")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.speculative.artifact import DecoderStep
    steps = {}
    for b in args.backends:
        name, *sets = b.split("@")
        saved = {k: os.environ.get(k) for k, _, _ in (x.partition("=") for x in sets)}
        os.environ.update(dict(x.partition("=")[::2] for x in sets))
        art = open_artifact(args.artifact, backend=name, threads=args.threads, full_logits=True, report=False)
        step = DecoderStep(art, args.context + max(args.widths) + 8)
        step.forward([(7 * i) % 1000 + 10 for i in range(args.context)])
        for w in args.widths:                       # warm-up: every width once
            step.forward([11] * w)
            step.truncate(args.context)
        steps[b] = step
        for k, v in saved.items():               # the next backend sees the environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    times = {b: {w: [] for w in args.widths} for b in args.backends}
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.load)]
    for p in burners:
        p.start()
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[0]
    for r in range(args.rounds):
        order = args.backends[r % len(args.backends):] + args.backends[:r % len(args.backends)]
        for w in args.widths:
            for b in order:
                t0 = time.perf_counter()
                steps[b].forward([11 + j for j in range(w)])
                times[b][w].append(time.perf_counter() - t0)
                steps[b].truncate(args.context)
    for p in burners:
        p.terminate()
    rows = []
    for b in args.backends:
        one = statistics.median(times[b][1]) if 1 in times[b] else None
        for w in args.widths:
            ms = statistics.median(times[b][w]) * 1e3
            rows.append({"backend": b, "tokens": w, "median_ms": round(ms, 2),
                         "vs_one_token": round(ms / (one * 1e3), 3) if one else None,
                         "min_ms": round(min(times[b][w]) * 1e3, 2)})
            print(f"{b:10s} T={w}: {ms:7.2f} ms" + (f"  ({ms / (one * 1e3):.2f}x one token)" if one else ""),
                  file=sys.stderr)
    emit({"artifact": args.artifact, "threads": args.threads, "context": args.context, "rounds": args.rounds,
          "load_processes": args.load, "loadavg_at_start": float(load_before), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
