"""A composed compile measured against its baselines: perplexity (Brown and the State of the Union), sizes and
decode speed of each artifact, all in one run (issue 14's real-model composed compile).

    .venv/bin/python -u scripts/bench_composed.py --artifacts dense=out/keep/export-fp32 \
        composed=out/keep/composed --out docs/results/composed_smollm2_2026-12-03.json

The first artifact is the baseline. Per artifact: the options it was compiled with (its manifest), its bytes on
disk (all files, and the tensor bytes per graph format, passes/export/storage_report.py), the peak resident memory
of its compile's passes, the perplexity of its own graphs through the runtime (compiler/harness/evaluate_artifact.py,
the docs/evaluation.md protocol) on Brown's evaluation split and on `--text sotu`, and its greedy sample. Decode: every
other artifact runs in lockstep with the baseline (one token each, alternating, scripts/bench_decode_ab.py `paired`)
for `--rounds` rounds of `--new` tokens; the ratio other / baseline per round and the median. Writes raw JSON with the
machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_decode_ab import paired
from provenance import provenance


def sizes(art_dir: Path, manifest: dict) -> dict:
    from accelc.passes.export.storage_report import report
    files = {str(p.relative_to(art_dir)): p.stat().st_size for p in sorted(art_dir.rglob("*")) if p.is_file()}
    rep = report(art_dir, manifest["graphs"])
    return {"total_bytes": sum(files.values()), "files": files, "formats": rep["formats"]}


def describe(name: str, art_dir: Path, threads: int) -> dict:
    from accelc.compiler.evaluate import Protocol
    from accelc.compiler.harness.evaluate_artifact import evaluate_artifact
    manifest = json.loads((art_dir / "manifest.json").read_text())
    row = {"name": name, "artifact": str(art_dir), "options": manifest.get("options"),
           "passes": [{"name": p["name"], "seconds": p.get("seconds"),
                       "peak_rss_mb": (p.get("memory") or {}).get("peak_rss_mb")} for p in manifest.get("passes", [])],
           **sizes(art_dir, manifest)}
    for text in ("brown-eval", "sotu"):
        t0 = time.perf_counter()
        res = evaluate_artifact(art_dir, Protocol(text=text), sample=text == "brown-eval")
        row[f"perplexity_{text}"] = res["perplexity"]
        row["engine"] = res["engine"]
        if "sample" in res:
            row["sample"] = res["sample"]["greedy"]
        print(f"{name}: {text} perplexity {res['perplexity']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return row


def table(path: Path) -> None:
    data = json.loads(path.read_text())
    print("| artifact | options | artifact MB | Brown perplexity | SOTU perplexity | decode vs " + data["baseline"]
          + " (median of rounds) | highest compile pass peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in data["rows"]:
        opts = {k: v for k, v in (row.get("options") or {}).items() if k in ("prune", "quantize", "weights") and v}
        peak = max((p["peak_rss_mb"] or 0 for p in row["passes"]), default=0)
        ratio = (row.get("decode") or {}).get("median_ratio_vs_baseline")
        print(f"| {row['name']} | {', '.join(f'{k}={v}' for k, v in opts.items()) or 'none'} | "
              f"{row['total_bytes'] / 1e6:,.1f} | {row['perplexity_brown-eval']:.3f} | {row['perplexity_sotu']:.3f} | "
              f"{'1 (baseline)' if ratio is None else f'{ratio:.3f}'} | {peak:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, help="print the docs table of a result file")
    ap.add_argument("--artifacts", nargs="+", metavar="NAME=DIR", help="the first is the baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=3, help="index into compiler/harness/bench.py PROMPTS")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.table:
        return table(a.table)
    if not a.artifacts or a.out is None:
        ap.error("--artifacts and --out are required (or --table FILE)")
    arts = []
    for spec in a.artifacts:
        name, _, d = spec.partition("=")
        if not d or not (Path(d) / "manifest.json").is_file():
            ap.error(f"{spec}: expected NAME=DIR with DIR an artifact (manifest.json)")
        arts.append((name, Path(d)))
    rows = [describe(n, d, a.threads) for n, d in arts]

    from accelc.compiler.harness.bench import PROMPTS
    from accelc.runtime.artifact import open_artifact
    opened = [open_artifact(d, backend="openvino", device="cpu", threads=a.threads) for _, d in arts]
    base = opened[0]
    ids = list(base.tokenizer(PROMPTS[a.prompt])["input_ids"])
    for row, art in zip(rows[1:], opened[1:]):
        paired(base, art, ids, 8)                                             # warm-up
        rounds = []
        for r in range(a.rounds):      # alternate who steps first
            x, y = paired(base, art, ids, a.new) if r % 2 == 0 else paired(art, base, ids, a.new)[::-1]
            rounds.append({"baseline_tok_s": round(x, 2), "tok_s": round(y, 2), "ratio": round(y / x, 3)})
            print(f"{row['name']} round {r}: {rounds[-1]}", flush=True)
        row["decode"] = {"rounds": rounds, "median_ratio_vs_baseline": statistics.median(x["ratio"] for x in rounds)}
    result = {**provenance(), "baseline": rows[0]["name"], "prompt_tokens": len(ids), "new": a.new,
              "threads": a.threads, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(json.dumps({k: row.get(k) for k in ("name", "total_bytes", "perplexity_brown-eval", "perplexity_sotu")}
                         | {"decode_ratio": (row.get("decode") or {}).get("median_ratio_vs_baseline")}))


if __name__ == "__main__":
    main()
