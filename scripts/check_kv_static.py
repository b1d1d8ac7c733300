"""Does the static-shape (npu) fixed-cache artifact generate what the dynamic (cpu) one does, well past its cache?

    .venv/bin/python scripts/check_kv_static.py out/kv/lc-cpu out/kv/lc-npu --times 4 \
        --out docs/runtime/results/kv_static_DATE.json

Both artifacts are opened on OpenVINO's CPU plugin (f32); the same prompt (chat template) is decoded greedily for
`--times` x the static artifact's cache length (its graphs' past length, M + max(buffer, chunk)) new tokens, EOS
ignored; token ids are compared. Writes raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from provenance import provenance
from static_pair import open_pair

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dynamic")
    ap.add_argument("static")
    ap.add_argument("--times", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import numpy as np
    from accelc.runtime.decode import decode_one, prefill
    from accelc.runtime.generate import encode_prompt
    arts = open_pair(a.dynamic, a.static)
    cache_len = arts["static"].cache_len
    n = a.times * cache_len
    out = {}
    for k, art in arts.items():
        ids = encode_prompt(art.tokenizer, PROMPT)
        state = art.new_state(len(ids) + n)
        t0 = time.perf_counter()
        tok = int(np.argmax(prefill(state, ids)))
        toks = [tok]
        for _ in range(n - 1):
            tok = int(np.argmax(decode_one(state, tok)))
            toks.append(tok)
        out[k] = {"tokens": toks, "cuts": state.cache.cuts, "max_slots": state.cache.size,
                  "seconds": round(time.perf_counter() - t0, 2), "cache": str(art.kv_cache),
                  "prompt_tokens": len(ids)}
    same = out["dynamic"]["tokens"] == out["static"]["tokens"]
    first_diff = next((i for i, (x, y) in enumerate(zip(out["dynamic"]["tokens"], out["static"]["tokens"])) if x != y),
                      None)
    result = {**provenance(), "static_cache_len": cache_len, "new_tokens": n, "identical": same,
              "first_difference": first_diff, "runs": out,
              "text": arts["static"].tokenizer.decode(out["static"]["tokens"][:200])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
