"""Upper bound on the decode speedup of the fused (shared-trunk) drafter, from weight bytes alone.

Decode of a small model on CPU is bound by reading the weights, so a graph call on one token costs about
its share of the model's weight bytes. With the shared trunk (runtime/speculative/steps.py), a round with k drafts
runs the trunk (layers [0, L)) on k + 1 tokens one at a time, the exit layer and reduced head k times, and
the verify tail (layers [L, N) and the full head) once. If each draft is accepted with probability a
independently, a round emits 1 + a + ... + a^k tokens. The bound assumes verifying k + 1 positions costs
what one position does and that nothing else costs time, so measured speedups can only be lower.

    .venv/bin/python scripts/spec_ceiling.py                       # SmolLM2-135M, drafter head 8192
    .venv/bin/python scripts/spec_ceiling.py --layers 4 8 --accept 0.37 0.8
"""
from __future__ import annotations

import argparse
import json


def shares(cfg, exit_layer: int, draft_vocab: int) -> dict:
    """Weight-byte shares of one token through the trunk, the exit layer + reduced head, and the tail."""
    c, n, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", heads) * (getattr(cfg, "head_dim", None) or c // heads)
    layer = 2 * c * c + 2 * c * kv + 3 * c * cfg.intermediate_size
    total = n * layer + v * c
    return {"trunk": exit_layer * layer / total, "draft": (layer + min(draft_vocab or v, v) * c) / total,
            "tail": ((n - exit_layer) * layer + v * c) / total}


def best_speedup(s: dict, a: float, k_max: int = 8) -> tuple[float, int]:
    best = (0.0, 0)
    for k in range(1, k_max + 1):
        tokens = sum(a ** i for i in range(k + 1))
        cost = (k + 1) * s["trunk"] + k * s["draft"] + s["tail"]
        best = max(best, (tokens / cost, k))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 15], help="exit layers L")
    ap.add_argument("--vocab", type=int, default=8192, help="drafter head size (0 = full)")
    ap.add_argument("--accept", type=float, nargs="+", default=[0.3, 0.37, 0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON list")
    args = ap.parse_args(argv)
    from transformers import AutoConfig
    from accelc.models.sources import packaged_checkpoint, resolve
    kind, path = resolve(args.model)
    cfg = AutoConfig.from_pretrained(str(packaged_checkpoint(args.model) if kind == "packaged" else path))
    rows = []
    for L in args.layers:
        s = shares(cfg, L, args.vocab)
        for a in args.accept:
            sp, k = best_speedup(s, a)
            rows.append({"exit_layer": L, "acceptance": a, "bound": round(sp, 2), "best_k": k,
                         **{f"{n}_share": round(x, 3) for n, x in s.items()}})
    print("| L | trunk share | exit+head share | tail share | " + " | ".join(f"a={a}" for a in args.accept) + " |")
    print("| --- " * (4 + len(args.accept)) + "|")
    for L in args.layers:
        r = [x for x in rows if x["exit_layer"] == L]
        print(f"| {L} | {r[0]['trunk_share']} | {r[0]['draft_share']} | {r[0]['tail_share']} | "
              + " | ".join(f"{x['bound']}x (k={x['best_k']})" for x in r) + " |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
