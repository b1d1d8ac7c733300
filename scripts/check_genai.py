"""Do openvino-genai and optimum-intel generate what `accelc run` generates from the same artifact?

    .venv/bin/python scripts/check_genai.py out/s-fp32 out/s-int8 out/s-int4 --new-tokens 32 \
        --out docs/results/genai_compat_2026-12-02.json

For each artifact and prompt (greedy, chat template applied, f32 inference and f32 KV cache everywhere):
accelc's runtime (its default backend), openvino_genai.LLMPipeline(ARTIFACT/openvino) at its default
attention backend (PagedAttention) and with ATTENTION_BACKEND="SDPA" (the stateful SDPA path accelc and
optimum-intel run), and optimum.intel.OVModelForCausalLM(ARTIFACT/openvino); token ids compared.
Writes raw JSON with the machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain in two sentences why the sky is blue.", "List three uses of a paperclip."]
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


def accelc_tokens(art: Path, ids: list[int], n: int) -> list[int]:
    from accelc.runtime.artifact import open_artifact
    from accelc.runtime.generate import generate
    a = open_artifact(art, report=False)
    return generate(a, ids, n).tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import openvino_genai as og
    from optimum.intel import OVModelForCausalLM
    import torch
    from accelc.runtime.artifact import read_artifact
    from accelc.runtime.generate import encode_prompt
    rows = []
    for art in args.artifacts:
        folder = art / "openvino"
        files = read_artifact(art)
        pipes = {"genai": og.LLMPipeline(str(folder), "CPU", **F32),         # its default: PagedAttention
                 "genai_sdpa": og.LLMPipeline(str(folder), "CPU", ATTENTION_BACKEND="SDPA", **F32)}
        opt = OVModelForCausalLM.from_pretrained(str(folder), export=False, compile=True, ov_config=F32)
        for prompt in PROMPTS:
            ids = encode_prompt(files.tokenizer, prompt)
            ours = accelc_tokens(art, ids, args.new_tokens)
            cfg = og.GenerationConfig()
            cfg.max_new_tokens, cfg.do_sample = args.new_tokens, False
            import numpy as np
            import openvino as ov
            inputs = og.TokenizedInputs(ov.Tensor(np.array([ids], np.int64)), ov.Tensor(np.ones((1, len(ids)), np.int64)))
            genai = {k: list(p.generate(inputs, cfg).tokens[0]) for k, p in pipes.items()}
            out = opt.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=args.new_tokens, do_sample=False)
            optimum = out[0, len(ids):].tolist()
            eos = files.generation_config.get("eos_token_id") or files.tokenizer.eos_token_id
            stops = set(eos) if isinstance(eos, list) else {eos}
            strip = lambda t: t[:-1] if t and t[-1] in stops else t          # accelc does not return the EOS
            row = {"artifact": str(art), "weights": files.manifest["options"].get("weights"), "prompt": prompt,
                   "accelc": ours, **{k: strip(v) for k, v in genai.items()}, "optimum": strip(optimum)}
            for k in (*genai, "optimum"):
                row[f"{k}_identical"] = row[k] == ours
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k.endswith("_identical") or k in ("weights", "prompt")}),
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**provenance(), "new_tokens": args.new_tokens, "precision": F32, "rows": rows,
                                    "identical": {k: sum(r[f"{k}_identical"] for r in rows)
                                                  for k in ("genai", "genai_sdpa", "optimum")},
                                    "cases": len(rows)}, indent=1))


if __name__ == "__main__":
    main()
