"""How well the length of a prompt-lookup match predicts how much of its draft the target accepts.

    .venv/bin/python -u scripts/lookup_match_stats.py --artifact out/int8 --json docs/passes/results/lookup_match_stats_DATE.json

Greedy plain decoding of the artifact on scripts/bench_lookup.py's two prompt sets (general and grounded, the same
prompts), then, at every generated position (teacher forced on that output), the lookup proposer
(runtime/speculative/proposers.py, matches up to --max-ngram tokens) drafts up to --run tokens: the run is how many
of them equal the greedy output, i.e. what the target would have accepted. Grouped by the match length (capped at
--max-ngram) and by whether the previous position had a match that ran at least one token. Writes raw JSON with
the machine (scripts/provenance.py).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from provenance import emit


def runs(prompt: list[int], out: list[int], max_ngram: int, run: int) -> list[tuple[int, str, int]]:
    """(match length, 'after a run' | 'after none' | 'first', run length) at each position of out after the first."""
    from accelc.runtime.speculative.proposers import LookupProposer
    prop = LookupProposer(max_ngram=max_ngram)
    seq, rows, prev = list(prompt) + out[:1], [], None
    for i in range(1, len(out)):
        m = prop.match(seq)
        if m is not None:
            draft = seq[m[1]:m[1] + run]
            n = 0
            while n < len(draft) and i + n < len(out) and draft[n] == out[i + n]:
                n += 1
            rows.append((m[0], "first" if prev is None else ("after a run" if prev else "after none"), n))
            prev = n
        else:
            prev = None
        seq.append(out[i])
    return rows


def summarise(rows: list[tuple[int, str, int]]) -> list[dict]:
    groups = defaultdict(list)
    for n, when, r in rows:
        groups[(n, when)].append(r)
    out = []
    for (n, when), rs in sorted(groups.items()):
        c = len(rs)
        out.append({"match": n, "previous": when, "positions": c, "mean_run": round(sum(rs) / c, 2),
                    **{f"run_ge_{t}": round(sum(r >= t for r in rs) / c, 3) for t in (1, 2, 4, 8)}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from bench_lookup import add_prompt_args
    ap.add_argument("--artifact", required=True)
    add_prompt_args(ap)
    ap.add_argument("--max-ngram", type=int, default=8)
    ap.add_argument("--run", type=int, default=32, help="longest draft whose run is counted")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from bench_lookup import Ours, general_prompts, grounded_prompts
    plain = Ours(args.artifact, args.backend, args.threads, "plain", 0)
    tok = plain.art.tokenizer
    sets = {"general": general_prompts(tok, args.general, args.prompt_len),
            "grounded": grounded_prompts(tok, args.grounded)}
    result = {"artifact": args.artifact, "backend": plain.art.choice.backend, "max_new": args.max_new,
              "max_ngram": args.max_ngram, "run": args.run, "sets": {}}
    for name, prompts in sets.items():
        rows = []
        for i, ids in enumerate(prompts):
            out = plain.run(ids, args.max_new)[0]
            rows += runs(ids, out, args.max_ngram, args.run)
            print(f"  {name} {i + 1}/{len(prompts)}: {len(out)} tokens", file=sys.stderr, flush=True)
        result["sets"][name] = {"positions": len(rows), "by_match": summarise(rows)}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
