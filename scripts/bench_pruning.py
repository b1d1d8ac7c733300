"""Benchmark the pruning passes on the real model: perplexity, parameters, pass time.

Each setting loads a fresh smollm2-135m, runs the pass exactly as `accelc compile --prune SPEC` builds
it (targets.phases.compression), then scores it with the project's evaluation
(accelc.compiler.evaluate.evaluate_torch). Writes a JSON file and a markdown table; --update-doc puts
the table into docs/passes/pruning.md between its bench markers.

  full table (hours on 2 cores at the default 32768 eval tokens):
      .venv/bin/python scripts/bench_pruning.py --update-doc
  the structured table (issue 22: channel-magnitude = magnitude-SP, wanda-sp, flap, cfsp-uniform, cfsp with
  norm=channel and norm=reference, at 20/30/40/50% of the MLP channels), with each setting compiled and its
  decode speed measured against a dense artifact compiled in the same run (lockstep, alternating who goes first):
      .venv/bin/python scripts/bench_pruning.py --table structured --decode --update-doc
  smoke:
      .venv/bin/python scripts/bench_pruning.py --only wanda:0.6 dsnot:0.6 --max-tokens 4096
  decode speed of one setting against dense:
      .venv/bin/python scripts/bench_pruning.py --only cfsp:0.3 --decode
  every row is scored on Brown's evaluation split and on the second text (sotu, off the calibration domain);
  the JSON is rewritten after each row, so an interrupted run keeps what it measured (--from-json renders it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from provenance import provenance  # machine, date, commit, command line (scripts/provenance.py)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "passes" / "pruning.md"
MARKERS = {"all": ("<!-- bench:begin -->", "<!-- bench:end -->"),
           "structured": ("<!-- bench-structured:begin -->", "<!-- bench-structured:end -->")}
RATIOS = ("0.2", "0.3", "0.4", "0.5")


def settings() -> list[str]:
    out = ["dense"]
    for target in ("0.5", "0.6", "0.7", "2:4"):
        out += [f"magnitude:{target}", f"wanda:{target}", f"dsnot:{target}", f"dsnot:{target},mlp=true"]
    for ratio in RATIOS:
        out += [f"channel-magnitude:{ratio}", f"cfsp-uniform:{ratio}", f"cfsp:{ratio}"]
    return out


def structured_settings() -> list[str]:
    """Issue 22's table: CFSP against the structured baselines of its paper (magnitude-SP is channel-magnitude)."""
    out = ["dense"]
    for ratio in RATIOS:
        out += [f"channel-magnitude:{ratio}", f"wanda-sp:{ratio}", f"flap:{ratio}", f"cfsp-uniform:{ratio}",
                f"cfsp:{ratio}", f"cfsp:{ratio},norm=reference"]
    return out


TABLES = {"all": settings, "structured": structured_settings}


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
    from accelc.passes.pruning.prune_options import zero_count

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
    off = evaluate_torch(bundle, Protocol(text="sotu", max_tokens=max_tokens), sample=False)
    row["perplexity_sotu"] = off["perplexity"]
    if score_calib:
        row["calibration_perplexity"] = calibration_perplexity(bundle, row.get("spec", spec))
    zeros, total = zero_count(bundle.adapter)
    row.update(perplexity=ev["perplexity"], eval_tokens=ev["tokens"], eval_seconds=ev["seconds"],
               parameters_before=params_before, parameters=bundle.adapter.num_parameters(),
               linear_sparsity=round(zeros / total, 4))
    return row


def decode_cell(r: dict) -> str:
    d = r.get("decode")
    if not d:
        return "not exported"
    if "error" in d:
        return f"failed: {d['error'][:60]}"
    if r["setting"] == "dense":
        return f"1.000x ({d['median_tok_s']} tok/s)"
    return f"{d['median_ratio']:.3f}x ({min(d['ratios']):.3f}-{max(d['ratios']):.3f})"


def table(rows: list[dict]) -> str:
    lines = ["| setting | perplexity (Brown) | perplexity (sotu) | parameters | decoder-linear sparsity | pass time (s) "
             "| decode vs dense (lockstep) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sotu = f"{r['perplexity_sotu']:.2f}" if "perplexity_sotu" in r else "not measured"
        lines.append(f"| `{r['setting']}` | {r['perplexity']:.2f} | {sotu} | {r['parameters'] / 1e6:.2f}M | "
                     f"{r['linear_sparsity']:.3f} | {r['pass_seconds']:.1f} | {decode_cell(r)} |")
    return "\n".join(lines)


def compile_artifact(model: str, spec: str | None, out: Path) -> None:
    """`accelc compile MODEL --target cpu [--prune SPEC] --formats openvino -o OUT` in a subprocess (the
    OpenVINO graph is what the decode comparison runs; validation still checks it against torch)."""
    cmd = [sys.executable, "-m", "accelc.compiler.cli", "compile", model, "--target", "cpu", "--formats", "openvino",
           "-o", str(out), "--force"] + (["--prune", spec] if spec else [])
    c = subprocess.run(cmd, capture_output=True, text=True)
    if c.returncode != 0:
        raise RuntimeError((c.stderr.strip() or c.stdout.strip())[-400:])


def decode_against_dense(dense, art, rounds: int, new: int, prompt: int) -> dict:
    """Decode the pruned artifact and the dense one in lockstep (scripts/bench_decode_ab.py `paired`, one token
    each, alternating who goes first every round): pruned tok/s over dense tok/s per round, and their median."""
    from bench_decode_ab import paired
    from accelc.compiler.harness.bench import PROMPTS
    ids = list(dense.tokenizer(PROMPTS[prompt])["input_ids"])
    paired(dense, art, ids, 8)                                             # warm-up
    ratios, dense_tps, pruned_tps = [], [], []
    for r in range(rounds):
        x, y = paired(dense, art, ids, new) if r % 2 == 0 else paired(art, dense, ids, new)[::-1]
        ratios.append(round(y / x, 4))
        dense_tps.append(round(x, 2))
        pruned_tps.append(round(y, 2))
    return {"median_ratio": statistics.median(ratios), "ratios": ratios, "dense_tok_s": dense_tps,
            "pruned_tok_s": pruned_tps, "prompt_tokens": len(ids), "new": new}


class DenseDecode:
    """A dense artifact compiled once; each pruned setting is compiled next to it, decoded against it in lockstep and
    removed again (unless `keep`)."""

    def __init__(self, model: str, threads: int, rounds: int, new: int, prompt: int, keep: str | None):
        from accelc.runtime.artifact import open_artifact
        self.model, self.threads, self.rounds, self.new, self.prompt, self.keep = model, threads, rounds, new, prompt, keep
        self.work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-pruning-"))
        self.work.mkdir(parents=True, exist_ok=True)
        compile_artifact(model, None, self.work / "dense")
        self.dense = open_artifact(str(self.work / "dense"), backend="openvino", device="cpu", threads=threads)
        self.dense_tps: list[float] = []

    def measure(self, row: dict) -> None:
        from accelc.runtime.artifact import open_artifact
        if row["setting"] == "dense":
            return
        t0 = time.perf_counter()
        out = self.work / row["setting"].replace(":", "-").replace(",", "_").replace("=", "")
        try:
            compile_artifact(self.model, row.get("spec", row["setting"]), out)
            art = open_artifact(str(out), backend="openvino", device="cpu", threads=self.threads)
            row["decode"] = decode_against_dense(self.dense, art, self.rounds, self.new, self.prompt)
            self.dense_tps += row["decode"]["dense_tok_s"]
            del art
        except Exception as e:                                             # one failed compile does not end the run
            row["decode"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            if not self.keep:
                shutil.rmtree(out, ignore_errors=True)
        print(f"{row['setting']:32s} decode {decode_cell(row)}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    def finish(self, rows: list[dict]) -> None:
        """The dense row gets the median of dense's tokens/s over all comparisons."""
        for row in rows:
            if row["setting"] == "dense" and self.dense_tps:
                row["decode"] = {"median_tok_s": round(statistics.median(self.dense_tps), 2)}
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def update_doc(rows: list[dict], table_name: str, max_tokens: int, threads: int) -> None:
    begin, end = MARKERS[table_name]
    text = DOC.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} has no {begin} ... {end} markers")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    note = (f"\n(`scripts/bench_pruning.py`, {max_tokens} eval tokens on each text, {threads} threads; sotu = State "
            "of the Union addresses 1990-2021, off the calibration domain)\n\n")
    DOC.write_text(head + begin + note + table(rows) + "\n" + end + tail)


def redecode(path: Path, args) -> int:
    """Re-measure the decode column of saved rows (e.g. rows first measured while other work shared the cores)."""
    saved = json.loads(path.read_text())
    want = set(args.only or [r["setting"] for r in saved["rows"] if r["setting"] != "dense"])
    unknown = want - {r["setting"] for r in saved["rows"]}
    if unknown:
        raise SystemExit(f"{path} has no rows {sorted(unknown)}")
    d = saved.get("decode") or {}
    decoder = DenseDecode(saved["model"], saved["threads"], d.get("rounds", args.decode_rounds),
                          d.get("new", args.decode_new), d.get("prompt", args.decode_prompt), args.keep_artifacts)
    run = provenance()
    for row in saved["rows"]:
        if row["setting"] in want:
            first = row.get("decode")
            decoder.measure(row)
            row["decode"]["remeasured"] = run["date"] if "date" in run else True
            if first:
                row["decode"]["first_measurement"] = first
            path.write_text(json.dumps(saved, indent=1))
    dense_rows = [r for r in saved["rows"] if r["setting"] == "dense"]
    for r in dense_rows:       # the dense figure: all comparisons of both runs
        r.setdefault("decode", {})["median_tok_s_redecode"] = (round(statistics.median(decoder.dense_tps), 2)
                                                               if decoder.dense_tps else None)
    saved.setdefault("redecode_runs", []).append({**run, "settings": sorted(want)})
    if not args.keep_artifacts:
        shutil.rmtree(decoder.work, ignore_errors=True)
    path.write_text(json.dumps(saved, indent=1))
    print(table(saved["rows"]))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", nargs="+", metavar="SPEC", help="run only these settings (default: the --table list)")
    ap.add_argument("--table", choices=sorted(TABLES), default="all",
                    help="which list of settings (all: the masks and CFSP rows; structured: issue 22's CFSP against "
                    "the structured baselines), and which marked table --update-doc replaces")
    ap.add_argument("--max-tokens", type=int, default=32768, help="evaluation tokens (default 32768, the protocol)")
    ap.add_argument("--calib", default="", help="extra spec options for calibrated methods, e.g. samples=64,seqlen=256")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--score-calibration", action="store_true",
                    help="also score each setting on the calibration windows its pass used")
    ap.add_argument("--json", default=str(ROOT / "docs" / "passes" / "pruning_results.json"), help="JSON output")
    ap.add_argument("--update-doc", action="store_true", help="write the table into docs/passes/pruning.md")
    ap.add_argument("--decode", action="store_true",
                    help="compile every setting (fp32, OpenVINO) and decode it in lockstep against a dense artifact "
                    "compiled in the same run, alternating who goes first (scripts/bench_decode_ab.py --vs)")
    ap.add_argument("--decode-rounds", type=int, default=6, help="lockstep rounds per setting (default 6)")
    ap.add_argument("--decode-new", type=int, default=96, help="tokens decoded per round (default 96)")
    ap.add_argument("--decode-prompt", type=int, default=3, help="index into compiler/harness/bench.py PROMPTS")
    ap.add_argument("--from-json", metavar="FILE", help="only render FILE's rows (with --update-doc, into the doc)")
    ap.add_argument("--redecode", metavar="FILE", help="measure again the decode speed of FILE's rows named by --only "
                    "(against a dense artifact compiled in this run), keep their perplexities, record this run's "
                    "provenance beside the first; FILE is rewritten")
    ap.add_argument("--keep-artifacts", metavar="DIR", help="compile into DIR and keep the artifacts (default: a "
                    "temporary folder, each pruned artifact removed after its comparison)")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(table(saved["rows"]))
        if args.update_doc:
            update_doc(saved["rows"], saved.get("table", args.table), saved["max_tokens"], saved["threads"])
        return 0
    torch.set_num_threads(args.threads)
    if args.redecode:
        return redecode(Path(args.redecode), args)
    todo = args.only or TABLES[args.table]()
    result = {**provenance(), "model": args.model, "max_tokens": args.max_tokens, "threads": args.threads,
              "calib": args.calib, "table": args.table, "texts": ["brown-eval", "sotu"],
              **({"decode": {"rounds": args.decode_rounds, "new": args.decode_new, "prompt": args.decode_prompt,
                             "backend": "openvino", "weights": "fp32"}} if args.decode else {}),
              "complete": False, "rows": []}
    rows = result["rows"]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    decoder = DenseDecode(args.model, args.threads, args.decode_rounds, args.decode_new, args.decode_prompt,
                          args.keep_artifacts) if args.decode else None
    for spec in todo:
        t0 = time.perf_counter()
        row = run_setting(spec, args.model, args.max_tokens, args.calib, args.score_calibration)
        rows.append(row)
        print(f"{spec:32s} ppl {row['perplexity']:9.3f}  sotu {row['perplexity_sotu']:9.3f}  "
              f"params {row['parameters'] / 1e6:7.2f}M  sparsity {row['linear_sparsity']:.3f}  "
              f"pass {row['pass_seconds']:6.1f}s  (total {time.perf_counter() - t0:.0f}s)", flush=True)
        if decoder:
            decoder.measure(row)
        out.write_text(json.dumps(result, indent=1))                       # a partial file survives an interrupted run
    if decoder:
        decoder.finish(rows)
    result["complete"] = True
    out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    if args.update_doc:
        update_doc(rows, args.table, args.max_tokens, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
