"""What an app pays to run an artifact: import time, `accelc.load(DIR)` time and resident memory, and one
generated token, each measured in a fresh process (median of --runs), plus whether torch / transformers /
nncf were imported.

    .venv/bin/python scripts/bench_load_footprint.py out/s-fp32 out/s-int8 out/s-int4 --runs 3 \
        --out docs/results/load_footprint_2026-12-02.json

Writes raw JSON with the machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from provenance import ROOT, provenance

PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import accelc
t1 = time.perf_counter()
m = accelc.load(sys.argv[1])
t2 = time.perf_counter()
r = m.generate("What is the capital of France?", max_new_tokens=1, result=True)
t3 = time.perf_counter()
rss = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2, "rss_mb": rss(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "heavy_modules": [k for k in ("torch", "transformers", "nncf", "optimum") if k in sys.modules],
                  "backend": m.artifact.choice.backend}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for art in args.artifacts:
        runs = []
        for _ in range(args.runs):
            r = subprocess.run([sys.executable, "-c", PROBE, str(art)], capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                raise SystemExit(r.stderr[-1500:])
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        m = json.loads((art / "manifest.json").read_text())
        row = {"artifact": str(art), "weights": m["options"].get("weights"), "runs": runs,
               "median": {k: round(statistics.median(x[k] for x in runs), 3)
                          for k in ("import_s", "load_s", "first_token_s", "rss_mb", "peak_rss_mb")},
               "heavy_modules": runs[-1]["heavy_modules"], "backend": runs[-1]["backend"]}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("weights", "median", "heavy_modules")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), "runs": args.runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
