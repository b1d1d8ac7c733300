"""Start-up cost of `accelc run`: process start -> first token, and where the time goes.

    .venv/bin/python scripts/bench_startup.py out/s-fp32 out/s-int8 out/s-int4 --runs 5 \
        --out docs/results/startup_2026-12-02.json

For each artifact, alternating in one run:
  - "rehash": `accelc run --verify`, every file hashed on every start (what every start did before
    verification records; the same code path as before that change);
  - "record": `accelc run` at its default, files unchanged since they last verified are not rehashed
    (compiler/verified.py);
  - "before" (with --before CHECKOUT): that older checkout's `accelc run` (it hashed every file and imported
    transformers for the tokenizer on every start). Use artifacts that both versions open (compiled by the
    older one: it reads graphs/decoder.bin, which newer cpu artifacts move into openvino/).
Process start -> first token is the time from spawning the CLI (prompt given, --max-new-tokens 1) to the
first byte on its stdout (the streamed text of the first token). Warm page cache: one unrecorded start
first. In-process phase times (verify, tokenizer, graph load) come from the library calls themselves.
Writes raw JSON with the machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import ROOT, git_commit, provenance, shim

PROMPT = "What is the capital of France?"
MODES = {"rehash": ["--verify"], "record": []}


def first_token_s(art: Path, extra: list[str], threads: int, env: dict | None = None) -> float:
    cmd = [sys.executable, "-m", "accelc.compiler.cli", "run", str(art), "--prompt", PROMPT, "--max-new-tokens", "1",
           "--threads", str(threads), *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    _, err = p.communicate()
    if p.returncode != 0 or not first:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.decode()[-400:]}")
    return t1 - t0


def phases(art: Path, threads: int) -> dict:
    """One in-process open, timed by phase (after the CLI runs, so the verification record is warm)."""
    from accelc.compiler.artifact import verify
    from accelc.runtime.artifact import open_artifact, read_artifact
    out = {}
    t = time.perf_counter()
    import accelc.runtime.artifact  # noqa: F401  (imports counted separately from the open)
    out["import_s"] = time.perf_counter() - t
    for name, full in (("verify_rehash_s", True), ("verify_record_s", False)):
        t = time.perf_counter()
        verify(art, full=full)
        out[name] = time.perf_counter() - t
    t = time.perf_counter()
    files = read_artifact(art)
    out["read_artifact_s"] = time.perf_counter() - t
    t = time.perf_counter()
    open_artifact(files, threads=threads, report=False)
    out["load_graphs_s"] = time.perf_counter() - t
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--before", type=Path, metavar="CHECKOUT", help="also time this older checkout's CLI (mode "
                    "'before'), e.g. `git worktree add /tmp/before 547ad94`; give artifacts both versions open")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    modes = {k: (v, None) for k, v in MODES.items()}
    if args.before:
        modes["before"] = ([], {**os.environ, "PYTHONPATH": str(shim(args.before))})
    rows = []
    for art in args.artifacts:
        m = json.loads((art / "manifest.json").read_text())
        for extra, env in modes.values():                        # warm the page cache and the record
            first_token_s(art, extra, args.threads, env)
        times = {mode: [] for mode in modes}
        for _ in range(args.runs):
            for mode, (extra, env) in modes.items():             # alternating
                times[mode].append(round(first_token_s(art, extra, args.threads, env), 4))
        row = {"artifact": str(art), "weights": m.get("options", {}).get("weights"),
               "artifact_bytes": sum(f["bytes"] for f in m["files"].values()), "first_token_s": times,
               "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
               "phases": phases(art, args.threads)}
        row["speedup"] = {k: round(v / row["median_s"]["record"], 3) for k, v in row["median_s"].items()}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("artifact", "median_s", "speedup", "phases")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    before = {"before_commit": git_commit(args.before), "before_checkout": str(args.before)} if args.before else {}
    args.out.write_text(json.dumps({**provenance(), **before, "threads": args.threads, "runs": args.runs,
                                    "prompt": PROMPT, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
