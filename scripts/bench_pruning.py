"""Benchmark the pruning passes on the real model: perplexity, parameters, pass time.

Each setting loads a fresh smollm2-135m, runs the pass exactly as `accelc compile --prune SPEC` builds
it (targets.phases.compression), then scores it with the project's evaluation
(accelc.compiler.evaluate.evaluate_torch). Writes a JSON file and a markdown table; --update-doc puts
the table into docs/passes/pruning.md between its bench markers.

  full table (hours on 2 cores at the default 32768 eval tokens):
      .venv/bin/python scripts/bench_pruning.py --update-doc
  smoke:
      .venv/bin/python scripts/bench_pruning.py --only wanda:0.6 dsnot:0.6 --max-tokens 4096
  export + decode speed of cfsp:0.3 vs dense (needs `accelc compile` and `accelc bench`):
      .venv/bin/python scripts/bench_pruning.py --only dense --export
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from provenance import provenance  # machine, date, commit, command line (scripts/provenance.py)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "passes" / "pruning.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def settings() -> list[str]:
    out = ["dense"]
    for target in ("0.5", "0.6", "0.7", "2:4"):
        out += [f"magnitude:{target}", f"wanda:{target}", f"dsnot:{target}", f"dsnot:{target},mlp=true"]
    for ratio in ("0.2", "0.3", "0.4", "0.5"):
        out += [f"channel-magnitude:{ratio}", f"cfsp-uniform:{ratio}", f"cfsp:{ratio}"]
    return out


def calibration_perplexity(bundle, spec: str) -> float:
    """Perplexity of the model on the calibration windows a calibrated pass of `spec` draws (its samples,
    seqlen and seed options, else the defaults): does a mask fit the text it was chosen on?"""
    import math
    from accelc.passes import calibration as cal
    opts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    ids = cal.calibration_ids(bundle, int(opts.get("samples", cal.DEFAULT_SAMPLES)),
                              int(opts.get("seqlen", cal.DEFAULT_SEQLEN)), int(opts.get("seed", 0)))
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.shape[0], 8):
            x = ids[s:s + 8]
            n = x.shape[0] * (x.shape[1] - 1)
            total += float(bundle.model(input_ids=x, labels=x).loss) * n
            count += n
    return math.exp(total / count)


def run_setting(spec: str, model: str, max_tokens: int, calib_extra: str, score_calib: bool = False) -> dict:
    from accelc.compiler.evaluate import Protocol, evaluate_torch
    from accelc.models.sources import load_model
    from accelc.targets import CompileOptions
    from accelc.targets.phases import compression
    from accelc.passes.prune_options import zero_count

    bundle = load_model(model)
    params_before = bundle.adapter.num_parameters()
    row = {"setting": spec, "pass_seconds": 0.0, "metrics": {}}
    if spec != "dense":
        calibrated = not spec.startswith(("magnitude", "channel-magnitude"))
        full = spec + (f",{calib_extra}" if calib_extra and calibrated else "")
        passes = compression(CompileOptions(prune=full))
        t0 = time.perf_counter()
        for p in passes:
            row["metrics"].update(p(bundle).metrics)
        row["pass_seconds"] = round(time.perf_counter() - t0, 2)
        row["spec"] = full
    ev = evaluate_torch(bundle, Protocol(max_tokens=max_tokens), sample=False)
    if score_calib:
        row["calibration_perplexity"] = calibration_perplexity(bundle, row.get("spec", spec))
    zeros, total = zero_count(bundle.adapter)
    row.update(perplexity=ev["perplexity"], eval_tokens=ev["tokens"], eval_seconds=ev["seconds"],
               parameters_before=params_before, parameters=bundle.adapter.num_parameters(),
               linear_sparsity=round(zeros / total, 4))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| setting | perplexity | parameters | decoder-linear sparsity | pass time (s) | decode tokens/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        tps = r.get("decode_tokens_per_s", "(export run)")
        lines.append(f"| `{r['setting']}` | {r['perplexity']:.2f} | {r['parameters'] / 1e6:.2f}M | "
                     f"{r['linear_sparsity']:.3f} | {r['pass_seconds']:.1f} | {tps} |")
    return "\n".join(lines)


def export_and_bench(out_dir: Path) -> dict:
    """Compile dense and cfsp:0.3 with `accelc compile`, then run `accelc bench` on each, if both exist."""
    accelc = shutil.which("accelc") or str(Path(sys.executable).parent / "accelc")
    probe = subprocess.run([accelc, "bench", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"skipped": "`accelc bench` is not available in this checkout"}
    results = {}
    for name, prune in (("dense", None), ("cfsp-0.3", "cfsp:0.3")):
        art = out_dir / f"artifact-{name}"
        cmd = [accelc, "compile", "smollm2-135m", "--target", "cpu", "-o", str(art), "--force"]
        cmd += ["--prune", prune] if prune else []
        c = subprocess.run(cmd, capture_output=True, text=True)
        if c.returncode != 0:
            results[name] = {"compile_failed": c.stderr.strip()[-400:]}
            continue
        bch = subprocess.run([accelc, "bench", str(art)], capture_output=True, text=True)
        results[name] = {"artifact": str(art), "bench_rc": bch.returncode, "bench_output": bch.stdout[-2000:],
                         "bench_stderr": bch.stderr[-400:]}
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", nargs="+", metavar="SPEC", help="run only these settings (default: the full list)")
    ap.add_argument("--max-tokens", type=int, default=32768, help="evaluation tokens (default 32768, the protocol)")
    ap.add_argument("--calib", default="", help="extra spec options for calibrated methods, e.g. samples=64,seqlen=256")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--score-calibration", action="store_true",
                    help="also score each setting on the calibration windows its pass used")
    ap.add_argument("--json", default=str(ROOT / "docs" / "passes" / "pruning_results.json"), help="JSON output")
    ap.add_argument("--update-doc", action="store_true", help="write the table into docs/passes/pruning.md")
    ap.add_argument("--export", action="store_true", help="also compile dense and cfsp:0.3 and run `accelc bench`")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    todo = args.only or settings()
    rows = []
    for spec in todo:
        t0 = time.perf_counter()
        row = run_setting(spec, args.model, args.max_tokens, args.calib, args.score_calibration)
        rows.append(row)
        print(f"{spec:32s} ppl {row['perplexity']:9.3f}  params {row['parameters'] / 1e6:7.2f}M  "
              f"sparsity {row['linear_sparsity']:.3f}  pass {row['pass_seconds']:6.1f}s  "
              f"(total {time.perf_counter() - t0:.0f}s)", flush=True)
    result = {**provenance(), "model": args.model, "max_tokens": args.max_tokens, "threads": args.threads,
              "rows": rows}
    if args.export:
        result["export"] = export_and_bench(Path(tempfile.mkdtemp(prefix="bench-pruning-")))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    md = table(rows)
    print(md)
    if args.update_doc:
        text = DOC.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        note = f"\n(`scripts/bench_pruning.py`, {args.max_tokens} eval tokens, {args.threads} threads)\n\n"
        DOC.write_text(head + BEGIN + note + md + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
