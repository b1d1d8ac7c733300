"""Decode speed and greedy output of this checkout against an older one, in one run (issue 14: the house
work must leave greedy output and decode speed unchanged).

    .venv/bin/python -u scripts/bench_versions.py --before /tmp/before --before-artifact out/v-before \
        --artifact out/v-after --rounds 6 --out docs/results/house_before_after_2026-12-03.json

Each version's own `accelc bench ART --json --backend openvino` runs in a fresh process (the older one through
a PYTHONPATH shim into its checkout, scripts/provenance.py), alternating which goes first each round; the
ratio after/before is taken per round and the median reported. Each version runs the artifact it compiled
itself (artifact layouts changed between them). Greedy: `accelc run --json --raw` on fixed prompts,
token ids compared between the versions. Writes raw JSON with the machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from provenance import ROOT, git_commit, provenance, shim

PROMPTS = ["The history of the printing press", "def fibonacci(n):", "Write a short poem about the sea.",
           "Explain why the sky is blue.", "List three uses of copper."]


def cli(env: dict | None, *args: str) -> dict:
    cmd = [sys.executable, "-m", "accelc.compiler.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the older checkout")
    ap.add_argument("--before-artifact", type=Path, required=True, help="an artifact compiled by the older checkout")
    ap.add_argument("--artifact", type=Path, required=True, help="the same compile by this checkout")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--greedy-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    old_env = {**os.environ, "PYTHONPATH": str(shim(args.before))}
    engines = {"before": (old_env, args.before_artifact), "after": (None, args.artifact)}
    bench = ["--json", "--backend", "openvino", "--prompts", str(args.prompts), "--max-new-tokens", str(args.new),
             "--threads", str(args.threads)]
    rounds = []
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        row = {}
        for name in order:
            env, art = engines[name]
            res = cli(env, "bench", str(art), *bench)
            eng = res["engines"][0]
            row[name] = {k: eng.get(k) for k in ("decode_tok_s", "ttft_ms", "prefill_tok_s", "peak_rss_mb")}
        row["ratio"] = round(row["after"]["decode_tok_s"] / row["before"]["decode_tok_s"], 4)
        rounds.append(row)
        print(json.dumps(row), flush=True)
    greedy = []
    for p in PROMPTS:
        got = {name: cli(env, "run", str(art), "--prompt", p, "--raw", "--json", "--backend", "openvino",
                         "--max-new-tokens", str(args.greedy_tokens))
               for name, (env, art) in engines.items()}
        ids = {name: g["tokens"] for name, g in got.items()}
        greedy.append({"prompt": p, "identical": ids["before"] == ids["after"], "text_after": got["after"].get("text")})
    ratios = [r["ratio"] for r in rounds]
    result = {**provenance(), "before_commit": git_commit(args.before), "before_artifact": str(args.before_artifact),
              "artifact": str(args.artifact), "rounds": rounds, "median_ratio_after_over_before": statistics.median(ratios),
              "min_ratio": min(ratios), "max_ratio": max(ratios), "greedy": greedy,
              "greedy_identical": all(g["identical"] for g in greedy)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_ratio_after_over_before", "min_ratio", "max_ratio",
                                             "greedy_identical")}))


if __name__ == "__main__":
    main()
