"""Greedy identity of the native backend at --precision f32 with transformers: N prompts x M new tokens
on an fp32 artifact of the packaged model (and, for other artifacts, agreement with accelc's OpenVINO
backend on the same artifact), raw JSON with the machine, date, commit and command line.

    .venv/bin/python scripts/check_native_greedy.py out/s-fp32 --new 128 --out docs/results/native_greedy_DATE.json
    .venv/bin/python scripts/check_native_greedy.py out/s-int8 --against openvino --precision auto --out ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are", "Water boils at"]


def greedy(art, ids: list[int], n: int) -> list[int]:
    from accelc.runtime.decode import decode_one, prefill
    st = art.new_state(len(ids) + n + 1)
    tok = int(prefill(st, ids).argmax())
    out = [tok]
    for _ in range(n - 1):
        tok = int(decode_one(st, tok).argmax())
        out.append(tok)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--against", choices=["transformers", "openvino"], default="transformers")
    ap.add_argument("--precision", choices=["auto", "f32"], default="f32")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from accelc.runtime.artifact import open_artifact
    nat = open_artifact(args.artifact, backend="native", precision=args.precision)
    tok = nat.tokenizer
    rows = []
    if args.against == "transformers":
        import torch
        from accelc.models.sources import load_model
        src = nat.manifest["source"]
        model = load_model(src.get("path") or src["name"]).model.eval()
    else:
        ov = open_artifact(args.artifact, backend="openvino")
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        got = greedy(nat, ids, args.new)
        if args.against == "transformers":
            import numpy as np
            from accelc.passes.export.validate import torch_reference      # plain greedy with the KV cache, no EOS rule
            with torch.no_grad():
                seq, _ = torch_reference(model, np.array([ids]), args.new)
            ref = seq[0, len(ids):].tolist()
        else:
            ref = greedy(ov, ids, args.new)
        same = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), len(ref))
        rows.append({"prompt": p, "identical": got == ref, "first_difference": same if got != ref else None,
                     "agreement": sum(a == b for a, b in zip(got, ref)) / len(ref)})
        print(f"{p[:40]:40s} identical={got == ref} first_diff={rows[-1]['first_difference']}", flush=True)
    res = {"provenance": provenance(), "artifact": str(args.artifact), "against": args.against,
           "precision": args.precision, "new_tokens": args.new, "rows": rows,
           "all_identical": all(r["identical"] for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
