"""Interleaved A/B decode benchmark: our runtime's decode loop vs openvino-genai LLMPipeline, in one process.

On a shared, loaded machine absolute tokens/s drift; the rounds alternate engines (genai, ours, genai,
ours, ...) and the report is the ratio of ours to genai per round, then the median over rounds.

    .venv/bin/python scripts/bench_decode_ab.py ARTIFACT [--ir DIR] [--threads 1] [--rounds 6] [--new 128] [--explicit]

Ours is the default OpenVINO backend (stateful KV cache); --explicit adds the explicit-cache graph
(ACCELC_OV_KV=explicit) as a third engine in the same rotation. --vs ARTIFACT2 compares two artifacts of
ours in lockstep instead (one token each, alternating), e.g. cfsp:0.3 against dense. --slice compares the
artifact opened with every position's logits (full_logits=True) against the default generation graph
(sliced to the last position before the head), in the same lockstep.

--ir defaults to the optimum-intel IR of the artifact's source at its weight precision
(compiler/harness/bench_engines.py exports it once). Every engine: greedy, INFERENCE_PRECISION_HINT f32,
KV_CACHE_PRECISION f32 (genai), the same thread count, prefix caching off.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from accelc.runtime.artifact import open_artifact
from accelc.compiler.harness.bench import PROMPTS
from accelc.compiler.harness.bench_engines import GenAIEngine, optimum_ir
from accelc.runtime.decode import decode_one, prefill

from provenance import provenance  # machine, date, commit, command line (scripts/provenance.py)


def ours(art, ids: list[int], n: int) -> float:
    """Decode tokens/s of n greedy steps after the prompt (the first token comes from prefill)."""
    state = art.new_state(len(ids) + n + 1)
    tok = int(np.argmax(prefill(state, ids)))
    t0 = time.perf_counter()
    for _ in range(n - 1):
        tok = int(np.argmax(decode_one(state, tok)))
    return (n - 1) / (time.perf_counter() - t0)


def paired(a_art, b_art, ids: list[int], n: int) -> tuple[float, float]:
    """Two engines of ours decoding the same prompt in lockstep (one token each, alternating, so that load
    changes hit both): -> (a tok/s, b tok/s)."""
    sa, sb = a_art.new_state(len(ids) + n + 1), b_art.new_state(len(ids) + n + 1)
    ta, tb = int(np.argmax(prefill(sa, ids))), int(np.argmax(prefill(sb, ids)))
    da = db = 0.0
    for _ in range(n - 1):
        t0 = time.perf_counter()
        ta = int(np.argmax(decode_one(sa, ta)))
        t1 = time.perf_counter()
        tb = int(np.argmax(decode_one(sb, tb)))
        da, db = da + t1 - t0, db + time.perf_counter() - t1
    return (n - 1) / da, (n - 1) / db


def versus(art, other, a) -> None:
    ids = list(art.tokenizer(PROMPTS[a.prompt])["input_ids"])
    paired(art, other, ids, 8)                                             # warm-up
    ratios = []
    for r in range(a.rounds):
        x, y = paired(art, other, ids, a.new) if r % 2 == 0 else paired(other, art, ids, a.new)[::-1]
        ratios.append(round(y / x, 3))
        print(json.dumps({"round": r, "first_tok_s": round(x, 2), "vs_tok_s": round(y, 2), "vs_over_first": ratios[-1]}),
              flush=True)
    print(json.dumps({**provenance(), "prompt_tokens": len(ids), "new": a.new, "threads": a.threads,
                      "median_vs_over_first": statistics.median(ratios)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--ir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=3, help="index into compiler/harness/bench.py PROMPTS")
    ap.add_argument("--explicit", action="store_true", help="also time the explicit-cache graph")
    ap.add_argument("--slice", action="store_true", help="instead of genai: the artifact unsliced (first) vs "
                    "sliced before the head (second), in lockstep")
    ap.add_argument("--vs", metavar="ARTIFACT", help="instead of genai: decode this second artifact in lockstep "
                    "with the first (e.g. pruned vs dense) and report its speed over the first's")
    a = ap.parse_args()
    art = open_artifact(a.artifact, backend="openvino", device="cpu", threads=a.threads, full_logits=a.slice)
    if a.slice:
        return versus(art, open_artifact(a.artifact, backend="openvino", device="cpu", threads=a.threads), a)
    if a.vs:
        return versus(art, open_artifact(a.vs, backend="openvino", device="cpu", threads=a.threads), a)
    engines = {"ours": art}
    if a.explicit:
        os.environ["ACCELC_OV_KV"] = "explicit"
        engines["explicit"] = open_artifact(a.artifact, backend="openvino", device="cpu", threads=a.threads)
        del os.environ["ACCELC_OV_KV"]
    ir = Path(a.ir) if a.ir else optimum_ir(art.manifest["source"]["path"], art.weights, a.threads)
    genai = GenAIEngine(ir, a.threads)
    ids = list(art.tokenizer(PROMPTS[a.prompt])["input_ids"])
    genai.run(ids, 8)                                                      # warm-up
    for e in engines.values():
        ours(e, ids, 8)
    rows = []
    for r in range(a.rounds):
        order = ["genai", *engines]
        order = order[r % len(order):] + order[:r % len(order)]          # rotate who runs first
        row = {"round": r}
        for name in order:
            row[f"{name}_tok_s"] = round(genai.run(ids, a.new).decode_tok_s if name == "genai"
                                         else ours(engines[name], ids, a.new), 2)
        for name in engines:
            row[f"{name}_ratio"] = round(row[f"{name}_tok_s"] / row["genai_tok_s"], 3)
        if a.explicit:
            s_tok, e_tok = paired(engines["ours"], engines["explicit"], ids, a.new)
            row["lockstep_stateful_over_explicit"] = round(s_tok / e_tok, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({**provenance(), "prompt_tokens": len(ids), "new": a.new, "threads": a.threads,
                      **{f"median_{n}_ratio": round(statistics.median(x[f"{n}_ratio"] for x in rows), 3)
                         for n in engines},
                      **({"median_lockstep_stateful_over_explicit": round(statistics.median(
                          x["lockstep_stateful_over_explicit"] for x in rows), 3)} if a.explicit else {})}))


if __name__ == "__main__":
    main()
