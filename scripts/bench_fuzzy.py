"""Fuzzy acceptance (`accelc run --fuzzy DIV:T`): speed against its quality cost, on the real model.

For each threshold T (0 = exact, lossless), the artifact's drafter (draft mode cost, or --mode lookup / combined)
decodes --prompts general prompts (64-token windows of Brown's evaluation split, as scripts/bench_lookup.py) for
--max-new tokens, greedy. Reported per T: decode tok/s and its ratio to exact speculative decoding and to plain
decoding (same run, engines alternating per prompt), acceptance, and two quality costs:
- agreement: the share of generated tokens equal to plain greedy decoding's at the same position, and the mean
  position of the first difference;
- the generated text's perplexity under the target (the artifact's own decoder, teacher-forced over prompt +
  output): fuzzy output is no longer the target's greedy choice, and this says how much less likely it is.

    .venv/bin/python scripts/bench_fuzzy.py out/eagle-int8 --thresholds 0 0.1 0.2 0.3 0.5 \
        --json docs/passes/results/fuzzy_DATE.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from provenance import emit


def nll(art, prompt: list[int], out: list[int]) -> float:
    """Sum of -log p(out_i | prompt, out_<i) under the artifact's decoder."""
    from accelc.runtime.decode import prefill
    if not out:
        return 0.0
    state = art.new_state(len(prompt) + len(out) + 1)
    logits = prefill(state, prompt + out[:-1], all_logits=True)[len(prompt) - 1:]
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(out)), out].sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--backend", help="default: the artifact's choice")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="cost", choices=["cost", "lookup", "combined"])
    ap.add_argument("--divergence", default="js", choices=["js", "tv"])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from bench_lookup import general_prompts
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.generate import generate
    from accelc.runtime.sampling import SamplingConfig
    from accelc.runtime.speculative.artifact import run_speculative
    from accelc.runtime.speculative.loop import SpecStats
    art = open_artifact(args.artifact, backend=args.backend, threads=args.threads, full_logits=True, report=False)
    prompts = general_prompts(art.tokenizer, args.prompts, args.prompt_len)
    names = ["plain"] + [f"{args.divergence}:{t:g}" for t in args.thresholds]
    acc = {n: {"steps": 0, "secs": 0.0, "tokens": [], "stats": SpecStats()} for n in names}
    for i, p in enumerate(prompts):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            if n == "plain":
                r = generate(art, p, args.max_new)
            else:
                thr = float(n.split(":")[1])
                r, st = run_speculative(art, p, args.max_new, SamplingConfig(), draft_mode=args.mode,
                                        fuzzy=n if thr > 0 else None)
                acc[n]["stats"].add(st)
            acc[n]["steps"] += r.decode_steps
            acc[n]["secs"] += r.decode_s
            acc[n]["tokens"].append(list(r.tokens))
        print(f"  prompt {i + 1}/{len(prompts)}", file=sys.stderr, flush=True)
    plain = acc["plain"]["tokens"]
    base = acc["plain"]["steps"] / acc["plain"]["secs"]
    exact = acc[names[1]]["steps"] / acc[names[1]]["secs"] if len(names) > 1 else None
    rows = []
    for n in names:
        a = acc[n]
        toks = a["tokens"]
        same = sum(sum(1 for x, y in zip(t, ref) if x == y) for t, ref in zip(toks, plain))
        total = sum(len(t) for t in toks)
        first = [next((j for j, (x, y) in enumerate(zip(t, ref)) if x != y), min(len(t), len(ref)))
                 for t, ref in zip(toks, plain)]
        nl = sum(nll(art, p, t) for p, t in zip(prompts, toks))
        tok_s = a["steps"] / a["secs"] if a["secs"] else None
        st = a["stats"].to_json() if n != "plain" else None
        rows.append({"engine": n, "decode_tok_s": round(tok_s, 2), "vs_plain": round(tok_s / base, 3),
                     "vs_exact_speculative": round(tok_s / exact, 3) if exact and n != "plain" else None,
                     "agreement_with_greedy": round(same / max(total, 1), 4),
                     "mean_first_difference": round(float(np.mean(first)), 1),
                     "generated_ppl_under_target": round(math.exp(nl / max(total, 1)), 3),
                     "tokens": total, "speculative": st})
        print(f"{n:10s} {tok_s:7.2f} tok/s  agree {same / max(total, 1):.3f}  ppl {math.exp(nl / max(total, 1)):.3f}",
              file=sys.stderr)
    emit({"artifact": args.artifact, "backend": art.choice.backend, "mode": args.mode, "threads": args.threads,
          "prompts": args.prompts, "max_new": args.max_new, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
