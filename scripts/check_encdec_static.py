"""Does a static-shape (npu) encoder-decoder artifact generate what the dynamic (cpu) one does, on the real model?

    .venv/bin/python scripts/check_encdec_static.py out/ed/dec10 out/ed/dec10-npu \
        --out docs/passes/results/encdec_static_DATE.json

Both artifacts are opened on OpenVINO's CPU plugin (f32). For each --prompts length L, the first L tokens of the
evaluation text are the prompt (the static encoder takes at most cache_len / 2 of them, padded and masked; a longer
prompt's remaining tokens go through the static decoder's chunked prefill), then --decode greedy tokens follow, EOS
ignored (the dynamic artifact encodes every prompt token but the last, so past the static encoder's capacity the two
split the prompt differently: the same only for a causal balanced encoder). Recorded per prompt: how many tokens the
static encoder read, both token sequences, whether they are identical, the first difference, the largest
|logit| difference at the first token, and each run's seconds. Raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from provenance import provenance
from static_pair import open_pair


def run(art, ids, decode: int) -> dict:
    import numpy as np
    from accelc.runtime.decode import decode_one, prefill
    state = art.new_state(len(ids) + decode + 1)
    t0 = time.perf_counter()
    first = np.asarray(prefill(state, ids), dtype=np.float32).reshape(-1)
    t1 = time.perf_counter()
    toks = [int(np.argmax(first))]
    for _ in range(decode - 1):
        toks.append(int(np.argmax(decode_one(state, toks[-1]))))
    return {"tokens": toks, "first_logits": first, "ttft_s": round(t1 - t0, 3),
            "decode_s": round(time.perf_counter() - t1, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dynamic")
    ap.add_argument("static")
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 300, 700])
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import numpy as np
    from accelc.models.corpus import load_text
    arts = open_pair(a.dynamic, a.static)
    stream = arts["static"].tokenizer(load_text("eval"), add_special_tokens=False)["input_ids"]
    limit = arts["static"].cache_len - a.decode - 1
    cap = json.loads((Path(a.static) / "manifest.json").read_text())["graphs"]["encoder"]["inputs"]["input_ids"][1]
    rows = []
    for L in a.prompts:
        if L > limit:
            raise SystemExit(f"prompt {L} + decode {a.decode} does not fit the static cache ({arts['static'].cache_len})")
        ids = np.asarray(stream[:L], dtype=np.int64)
        got = {k: run(art, ids, a.decode) for k, art in arts.items()}
        d, s = got["dynamic"], got["static"]
        diff = next((i for i, (x, y) in enumerate(zip(d["tokens"], s["tokens"])) if x != y), None)
        rows.append({"prompt_tokens": L, "static_encoded": min(L - 1, cap), "identical": d["tokens"] == s["tokens"], "first_difference": diff,
                     "first_token_max_logit_diff": round(float(np.abs(d["first_logits"] - s["first_logits"]).max()), 6),
                     **{k: {"tokens": v["tokens"], "ttft_s": v["ttft_s"], "decode_s": v["decode_s"]}
                        for k, v in got.items()},
                     "text": arts["static"].tokenizer.decode(s["tokens"])})
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("dynamic", "static")}), flush=True)
    result = {**provenance(), "static_cache_len": arts["static"].cache_len, "static_encoder_tokens": cap,
              "decode": a.decode,
              "all_identical": all(r["identical"] for r in rows), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
