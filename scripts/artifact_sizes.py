"""Artifact sizes per weight precision: compile a model with `accelc compile` and record what is stored.

    .venv/bin/python scripts/artifact_sizes.py --model smollm2-135m --weights fp32,int8,int4 \
        --out docs/results/artifact_sizes_after.json
    # the same measurement on an older checkout (e.g. `git worktree add /tmp/before 547ad94`):
    .venv/bin/python scripts/artifact_sizes.py --checkout /tmp/before --out docs/results/artifact_sizes_before.json

Writes raw JSON: per precision the artifact's total bytes, every file's bytes, the tensor bytes per
graph format and duplicate tensors (passes/export/storage_report.py), the passes' seconds and peak RSS, plus
the machine (CPU model, cores, ISA flags), date, git commit and the command line.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from provenance import ROOT, git_commit, machine, shim


def storage(artifact: Path, manifest: dict) -> dict:
    try:
        from accelc.passes.export.storage_report import report
        rep = report(artifact, manifest["graphs"])
        return {"formats": rep["formats"], "stray": rep["stray"]}
    except Exception as e:           # an old artifact layout: sizes below still stand
        return {"error": f"{type(e).__name__}: {e}"}


def compile_one(model: str, weights: str, extra: list[str], env: dict, workdir: Path) -> dict:
    out = workdir / f"{model}-{weights}"
    cmd = [sys.executable, "-c", "import sys; from accelc.compiler.cli import main; sys.exit(main())",
           "compile", model, "--target", "cpu", "--weights", weights, "-o", str(out), "--force", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"weights": weights, "error": proc.stderr.strip().splitlines()[-1:], "returncode": proc.returncode}
    manifest = json.loads((out / "manifest.json").read_text())
    files = {k: v["bytes"] for k, v in manifest["files"].items()}
    graph_files = {k: b for k, b in files.items() if k.startswith("graphs/")}
    res = {"weights": weights, "artifact_bytes": sum(files.values()), "graph_bytes": sum(graph_files.values()),
           "files": len(files), "graph_files": graph_files,
           "passes": [{k: p.get(k) for k in ("name", "seconds", "memory")} for p in manifest["passes"]],
           "validation": manifest.get("records", {}).get("validation", {}).get("backends"),
           "peak_rss_mb": manifest.get("records", {}).get("peak_rss_mb"),
           "parameters": manifest.get("model", {}).get("parameters"),
           "storage": storage(out, manifest)}
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--weights", default="fp32,int8,int4")
    ap.add_argument("--checkout", type=Path, help="run this accelc checkout's code instead of the installed one")
    ap.add_argument("--compile-args", default="", help="extra `accelc compile` arguments, e.g. '--formats openvino'")
    ap.add_argument("--workdir", type=Path, default=ROOT / "out" / "artifact_sizes")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args()
    env = dict(os.environ)
    code = ROOT
    if args.checkout:
        code = args.checkout.resolve()
        env["PYTHONPATH"] = str(shim(code))
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = [compile_one(args.model, w, args.compile_args.split(), env, args.workdir) for w in args.weights.split(",")]
    result = {"command": [sys.executable, *sys.argv], "date": datetime.datetime.now().astimezone().isoformat(),
              "git_commit": git_commit(code), "code": str(code), "machine": machine(), "model": args.model,
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in runs:
        print(r["weights"], r.get("artifact_bytes"), r.get("graph_bytes"), r.get("error", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
