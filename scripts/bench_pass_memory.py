"""Peak resident memory of every compression pass and the export, per pass (the pass log's `memory`:
each pass's own high-water mark, compiler/memory.py), on a randomly initialised Qwen2 with the real 0.5B
configuration (tests/passes/test_export_large.py QWEN2_05B; short budgets) and on SmolLM2-135M.

    .venv/bin/python -u scripts/bench_pass_memory.py --model qwen2-0.5b --budget short \
        --out docs/results/pass_memory_qwen2-0.5b_2026-12-03.json
    .venv/bin/python -u scripts/bench_pass_memory.py --model smollm2-135m --budget default \
        --out docs/results/pass_memory_smollm2_2026-12-03.json
    .venv/bin/python scripts/bench_pass_memory.py --table FILE [FILE ...]     # the docs table

Each configuration runs in its own process (one process's high-water mark never leaks into the next,
and one that runs out of memory costs only its own row) and with a cache folder of its own (fresh_cache: no trained
result of an earlier run is resumed, so every training is measured). `--budget short` cuts the steps, windows and
seconds of the trained passes (the per-step memory is what is measured; training longer does not
change it); `--budget default` keeps every option at its default except the wall-clock budgets of the
time-budgeted trainings (EAGLE, encoder-decoder), recorded in the row. The random 0.5B model runs the
target's pipeline without validation (on random weights greedy agreement means nothing; the export's
validation memory is scripts/bench_large_export.py's); a packaged model goes through accelc.compile with
validation, and `--keep DIR` keeps its artifacts (the "composed" one is measured in docs/passes/composition.md).
Writes raw JSON with the machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import ROOT, git_commit, provenance

sys.path.insert(0, str(ROOT / "tests" / "passes"))

# name -> compile options, for each budget. The codebook initialisation (quantize-codebook) is measured as
# the first pass of "pv"; the int GPTQ initialisation (quantize-int) as the first of "pv-int".
CONFIGS = {
    "short": {
        "export-fp32": {},
        "cfsp": {"prune": "cfsp:0.3,samples=16"},
        "dsnot": {"prune": "dsnot:0.6,samples=16"},
        "pv": {"quantize": "pv:2x8g8,samples=8,kmeans=2,rounds=0,steps=4"},   # rounds=0: no code search (41 min at 0.5B)
        "pv-int": {"quantize": "pv-int:4,samples=8,steps=4"},
        "drafter-fused": {"drafter": "fused:steps=4,windows=32"},
        "drafter-eagle": {"drafter": "eagle:steps=4,windows=32"},
        "kv-lococo": {"kv_cache": "lococo:128,steps=4"},
        "encdec": {"convert": "encdec:steps=2,batch=2,eval_windows=2"},
    },
    "default": {
        "export-fp32": {},
        "cfsp": {"prune": "cfsp:0.3"},
        "dsnot": {"prune": "dsnot:0.6"},
        "pv": {"quantize": "pv:2x8g8"},
        "composed": {"prune": "cfsp:0.3", "quantize": "pv:2x8g8", "weights": "int8"},   # issue 14's composed compile
        "pv-int": {"quantize": "pv-int:4"},
        "drafter-fused": {"drafter": "fused"},
        "drafter-eagle": {"drafter": "eagle:seconds=300"},
        "kv-lococo": {"kv_cache": "lococo:128"},
        "encdec": {"convert": "encdec:seconds=300"},
    },
}


def load_random_05b(work: Path):
    """The randomly initialised Qwen2 with the real 0.5B configuration, as a bundle (byte tokenizer)."""
    from accelc.compiler.bundle import ModelBundle
    from accelc.models.adapter import ArchAdapter
    from accelc.models.tiny import byte_tokenizer
    from test_export_large import qwen2_05b
    m = qwen2_05b()
    return ModelBundle(m, byte_tokenizer(), ArchAdapter(m), workdir=work)


SHARED_CACHE = ("corpus", "models", "native", "verified")     # inputs and build products; no trained results


def fresh_cache(tmp: Path) -> Path:
    """A cache folder for one row: links to the user's downloaded texts and models, built kernels and verification
    records, but none of the trained results (EAGLE features and drafters, encoder-decoder adaptation) that a rerun
    would otherwise resume from, skipping (and not measuring) the training."""
    from accelc.models.sources import cache_dir
    root = tmp / "cache"
    root.mkdir()
    for name in SHARED_CACHE:
        if (cache_dir() / name).exists():
            (root / name).symlink_to(cache_dir() / name)
    return root


def one(model: str, name: str, options: dict, out: Path, keep: Path | None = None) -> None:
    """Run one configuration's pipeline in this process; write its row to `out`. The random 0.5B model is
    built here and run through the target's pipeline without validation; a packaged model goes through
    accelc.compile (validation included) and its artifact is kept under `keep` when given."""
    from accelc.compiler.manager import PassManager
    from accelc.compiler.memory import rss_mb
    from accelc.targets import CompileOptions, get_target
    with tempfile.TemporaryDirectory(prefix="accelc-mem-") as tmp:
        os.environ["ACCELC_CACHE"] = str(fresh_cache(Path(tmp)))
        t0 = time.perf_counter()
        if model == "qwen2-0.5b":
            bundle = load_random_05b(Path(tmp))
            loaded = rss_mb()
            log = PassManager(get_target("cpu").pipeline(CompileOptions(validate=False, **options))).run(bundle)
            passes = [{"name": r.name, "seconds": round(r.seconds, 1), **r.memory} for r in log]
        else:
            import accelc
            art = accelc.compile(model, "cpu", (keep / name) if keep else Path(tmp) / "art", force=True, **options)
            loaded = None
            passes = [{"name": r["name"], "seconds": round(r["seconds"], 1), **r["memory"]}
                      for r in json.loads((art / "manifest.json").read_text())["passes"]]
        row = {"config": name, "options": options, "commit": git_commit(), "rss_after_load_mb": loaded and round(loaded, 1),
               "passes": passes, "seconds": round(time.perf_counter() - t0, 1),
               "artifact": str(keep / name) if keep else None}
    row["peak_mb"] = max(p.get("peak_rss_mb", 0) for p in row["passes"])
    out.write_text(json.dumps(row))


def table(files: list[Path]) -> None:
    print("| model | configuration | commit | passes: peak resident MB (seconds) | highest |")
    print("| --- | --- | --- | --- | --- |")
    for f in files:
        data = json.loads(f.read_text())
        for row in data["rows"]:
            if not any(row["config"] in c for c in CONFIGS.values()):      # a configuration since removed
                continue
            commit = row["commit"][:7] + ("-dirty" * row["commit"].endswith("dirty")) if "commit" in row else "not recorded"
            if "error" in row:
                print(f"| {data['model']} | {row['config']} | {commit} | failed: {row['error'][:80]} | |")
                continue
            parts = ", ".join(f"{p['name']} {p['peak_rss_mb']:,.0f} ({p['seconds']:.0f} s)" for p in row["passes"]
                              if "peak_rss_mb" in p)
            print(f"| {data['model']} | {row['config']} | {commit} | {parts} | {row['peak_mb']:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2-0.5b", help="qwen2-0.5b (random, built here) or a packaged model")
    ap.add_argument("--budget", choices=sorted(CONFIGS), default="short")
    ap.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=Path, help="keep the packaged model's artifacts here (one folder per configuration)")
    ap.add_argument("--table", nargs="+", type=Path)
    args = ap.parse_args()
    if args.table:
        return table(args.table)
    configs = CONFIGS[args.budget]
    if args.one:
        return one(args.model, args.one, configs[args.one], args.row, args.keep)
    if args.out is None:
        ap.error("--out is required")
    names = [n for n in args.only.split(",") if n] or list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        ap.error(f"unknown configurations {unknown} (known: {', '.join(configs)})")
    prior = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    rows = [r for r in prior if r["config"] not in names and r["config"] in configs]   # a rerun replaces its rows
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            row_file = Path(f.name)
        cmd = [sys.executable, "-u", __file__, "--model", args.model, "--budget", args.budget, "--one", name,
               "--row", str(row_file), *(["--keep", str(args.keep.resolve())] if args.keep else [])]
        print(f"== {name}: {configs[name]}", flush=True)
        err_log = args.out.with_name(f"{args.out.stem}.{name}.log")     # the child's progress and errors
        with open(err_log, "w") as err:
            proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=err)
        if proc.returncode == 0 and row_file.stat().st_size:
            row = json.loads(row_file.read_text())
        else:
            tail = [ln for ln in err_log.read_text().replace("\r", "\n").splitlines() if ln.strip()][-3:]
            row = {"config": name, "options": configs[name], "error": f"exit {proc.returncode}: " + " / ".join(tail)}
        row_file.unlink(missing_ok=True)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("config", "seconds", "peak_mb", "error")}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**provenance(), "model": args.model, "budget": args.budget,
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
