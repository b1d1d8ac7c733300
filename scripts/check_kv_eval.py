"""Do artifacts reproduce the torch reference's perplexity through their own KV cache?

    .venv/bin/python scripts/check_kv_eval.py --table docs/runtime/results/kvcache_2026-12-03.json \
        --context 1024 --artifacts out/kv/full out/kv/sink128 out/kv/h2o128 --out docs/runtime/results/kv_eval_DATE.json

Runs `accelc eval ARTIFACT --context N` (compiler/harness/context_eval.py) with as many tokens as the table's rows
used, and sets each figure beside the table's row of the same cache and context (scripts/bench_kvcache.py).
Writes raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from provenance import provenance


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--artifacts", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from accelc.compiler.harness.context_eval import evaluate_context
    table = json.loads(Path(a.table).read_text())
    ref = {r["cache"]: r for r in table["rows"] if r["context"] == a.context}
    rows = []
    for art in a.artifacts:
        r = evaluate_context(art, a.context, max_tokens=int(table.get("tokens_per_context") or 4096))
        want = ref.get(r["cache"])
        rows.append({**r, "reference": want and {k: want[k] for k in ("perplexity", "tokens")},
                     "difference": want and round(r["perplexity"] - want["perplexity"], 6)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    Path(a.out).write_text(json.dumps({**provenance(), "table": a.table, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
