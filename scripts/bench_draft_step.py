"""Time an EAGLE artifact's draft step on the native backend: the native drafter against its OpenVINO graph.

    .venv/bin/python -u scripts/bench_draft_step.py --artifact out/eagle-native --json docs/passes/results/draft_step_DATE.json

Per drafter (ACCELC_NATIVE_DRAFT=1: native/eagle_draft.*; 0: the eagle_draft graph on OpenVINO, one thread), in one
process each, alternating --rounds times: the native decoder prefills a --context-token prompt, the drafter feeds
its pairs, then each round times one target step (one token), the first draft step after it, and --steps more
draft steps. Reports medians in milliseconds. Writes raw JSON with the machine (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from provenance import emit


def measure(artifact: str, context: int, steps: int, rounds: int) -> dict:
    import time
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.speculative.artifact import load_drafter
    art = open_artifact(artifact, backend="native", threads=2, full_logits=True, report=False)
    drafter = load_drafter(art, "native")
    target, prop = drafter.steps(context + rounds + steps + 8)
    prompt = [(1000 + 7 * i) % 40000 for i in range(context)]
    target.forward(prompt)
    _, h = prop._step(prompt[1:] + [5], target.features[:context])
    res = {"target_ms": [], "first_draft_ms": [], "draft_ms": []}
    base = prop.cache.length
    for _ in range(rounds):
        t = time.perf_counter()
        target.forward([5])
        res["target_ms"].append((time.perf_counter() - t) * 1e3)
        target.truncate(context)
        for i in range(steps + 1):
            t = time.perf_counter()
            _, h2 = prop._step([7], h[None])
            res["first_draft_ms" if i == 0 else "draft_ms"].append((time.perf_counter() - t) * 1e3)
        prop.cache.rollback(base)
    return {"drafter": type(drafter.fns["eagle_draft"]).__name__,
            **{k: round(statistics.median(v), 3) for k, v in res.items()}, "samples": {k: len(v) for k, v in res.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--alternations", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.artifact, args.context, args.steps, args.rounds)))
        return 0
    runs = {"native": [], "openvino": []}
    for _ in range(args.alternations):
        for name, flag in (("native", "1"), ("openvino", "0")):
            out = subprocess.run([sys.executable, __file__, "--artifact", args.artifact, "--context", str(args.context),
                                  "--steps", str(args.steps), "--rounds", str(args.rounds), "--one", "1"],
                                 env={**os.environ, "ACCELC_NATIVE_DRAFT": flag}, capture_output=True, text=True,
                                 check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], file=sys.stderr, flush=True)
    summary = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in ("target_ms", "first_draft_ms", "draft_ms")}
               for name, rs in runs.items()}
    emit({"artifact": args.artifact, "context": args.context, "steps": args.steps, "rounds": args.rounds,
          "runs": runs, "median": summary}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
