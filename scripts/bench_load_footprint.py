"""What an app pays to run an artifact: import time, `accelc.load(DIR)` time and resident memory, and --new
generated tokens (default 1), each measured in a fresh process (median of --runs), plus whether torch /
transformers / nncf / LLVM were imported, and the resident memory by kind of mapping at the end (the artifact's
files, heap, anonymous, shared libraries: /proc/self/smaps). Peak is VmHWM. --floor adds what a Python runtime of
this design holds before any model: the interpreter, numpy, the tokenizers library, the artifact's tokenizer.

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
import json, os, re, sys, time
status = lambda key: int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) // 1024


def resident_by_kind(art):
    # RSS per kind of mapping: the artifact's files, the heap, anonymous memory, shared libraries, other files
    kinds, cur = {}, None
    for line in open("/proc/self/smaps"):
        p = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = p[5] if len(p) > 5 else "[anon]"
            cur = ("artifact files" if path.startswith(art) else "heap" if path == "[heap]" else
                   "anonymous" if path.startswith("[") else "shared libraries" if ".so" in path else "other files")
        elif p[0] == "Rss:":
            kinds[cur] = kinds.get(cur, 0) + int(p[1])
    return {k: v // 1024 for k, v in sorted(kinds.items())}


t0 = time.perf_counter()
import accelc
t1 = time.perf_counter()
after_import = status("VmRSS")
m = accelc.load(sys.argv[1])
t2 = time.perf_counter()
after_load = status("VmRSS")
r = m.generate("What is the capital of France?", max_new_tokens=int(sys.argv[2]), result=True)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "new_tokens": len(r.tokens),
                  "rss_after_import_mb": after_import, "rss_after_load_mb": after_load, "rss_mb": status("VmRSS"),
                  "peak_rss_mb": status("VmHWM"), "resident_by_kind_mb": resident_by_kind(os.path.realpath(sys.argv[1])),
                  "llvm_loaded": "llvmlite.binding" in sys.modules,
                  "heavy_modules": [k for k in ("torch", "transformers", "nncf", "optimum") if k in sys.modules],
                  "backend": m.artifact.choice.backend}))
"""


# what any Python runtime of this design holds before a model: the interpreter, numpy, the tokenizers library and the
# artifact's tokenizer (each step's VmRSS in one fresh process)
FLOOR = r"""
import json, sys
status = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
out = {"python_mb": status()}
import numpy
out["numpy_mb"] = status()
import tokenizers
out["tokenizers_library_mb"] = status()
tok = tokenizers.Tokenizer.from_file(sys.argv[1])
out["tokenizer_mb"] = status()
print(json.dumps(out))
"""


def floor(art: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", FLOOR, str(art / "tokenizer" / "tokenizer.json")], capture_output=True,
                       text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(r.stderr[-1500:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new", type=int, default=1, help="tokens generated after loading (default 1)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--floor", action="store_true", help="also the resident memory of the interpreter, numpy, the "
                    "tokenizers library and the artifact's tokenizer alone (one fresh process per artifact)")
    args = ap.parse_args()
    rows = []
    for art in args.artifacts:
        runs = []
        for _ in range(args.runs):
            r = subprocess.run([sys.executable, "-c", PROBE, str(art), str(args.new)], capture_output=True, text=True,
                               cwd=ROOT)
            if r.returncode:
                raise SystemExit(r.stderr[-1500:])
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        m = json.loads((art / "manifest.json").read_text())
        row = {"artifact": str(art), "weights": m["options"].get("weights"), "runs": runs,
               "median": {k: round(statistics.median(x[k] for x in runs), 3)
                          for k in ("import_s", "load_s", "generate_s", "rss_after_import_mb", "rss_after_load_mb",
                                    "rss_mb", "peak_rss_mb")},
               "heavy_modules": runs[-1]["heavy_modules"], "backend": runs[-1]["backend"]}
        if args.floor:
            row["floor"] = floor(art)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("weights", "median", "heavy_modules")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), "runs": args.runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
