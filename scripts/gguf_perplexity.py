"""llama.cpp's quantizations of the source model under accelc's perplexity protocol (issue 16's baselines).

    PYTHONPATH=~/.cache/accelc/llama.cpp/gguf-py .venv/bin/python scripts/gguf_perplexity.py \
        Q2_K=~/.cache/accelc/llama-cpp/smollm2-135m-*/Q2_K.gguf Q4_0=... Q8_0=... \
        --model smollm2-135m --out docs/passes/results/gguf_perplexity_DATE.json
    .venv/bin/python scripts/gguf_perplexity.py --table docs/passes/results/gguf_perplexity_DATE.json

Each GGUF's tensors are dequantized with gguf-py (llama.cpp's own Python package: the same numbers its kernels
read) into the source model's transformers module, undoing the converter's q / k row permutation, and the model
is evaluated in torch float32 with compiler/evaluate.py's protocol (Brown's evaluation split and sotu, 32,768 tokens
in 512-token windows). What this measures is the weights' error; llama.cpp's own arithmetic (int8 activations in
its dot products) is not part of it (llama-perplexity also scores only the second half of each window, a different
protocol). The tensor types per file are recorded. Raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from provenance import provenance

PER_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute (rotary halves interleaved per head)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf_weights(model, path: Path) -> dict:
    """Dequantize every tensor of a llama-family GGUF into `model` (in place); -> tensor types counted."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    cfg = model.config
    params = dict(model.named_parameters())
    types, done = collections.Counter(), set()
    for t in GGUFReader(str(path)).tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        types[t.tensor_type.name] += 1
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm":
            hf = "model.norm.weight"
        elif name == "output":
            hf = "lm_head.weight"
        else:
            blk, j, part = name.split(".")
            hf = f"model.layers.{j}.{PER_LAYER[part]}.weight"
            if part == "attn_q":
                w = unpermute(w, cfg.num_attention_heads)
            elif part == "attn_k":
                w = unpermute(w, cfg.num_key_value_heads)
        p = params[hf]
        if tuple(p.shape) != w.shape:
            raise SystemExit(f"{path.name}: {t.name} is {w.shape}, the model's {hf} is {tuple(p.shape)}")
        p.data.copy_(torch.from_numpy(w))
        done.add(hf)
    missing = [n for n in params if n not in done and not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing:
        raise SystemExit(f"{path.name} lacks {missing[:4]}")
    return dict(types)


def table(path: str) -> None:
    """Markdown rows of an earlier --out file (docs/passes/quantization.md)."""
    d = json.loads(Path(path).read_text())
    texts = d["protocol"]["texts"]
    ref = d["rows"]["source"]
    print(f"Measured {d['date']} on {d['machine']['cpu']} ({d['machine']['cores']} cores), commit {d['commit'][:7]}; "
          f"{d['protocol']['max_tokens']:,} tokens per text in 512-token windows, torch float32. Raw: `{path}`.\n")
    print("| weights | tensor types | GGUF MB | " + " | ".join(f"ppl {t} | x source {t}" for t in texts) + " |")
    print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in texts) + " |")
    for label, r in d["rows"].items():
        types = ", ".join(f"{k} {v}" for k, v in sorted((r.get("tensor_types") or {}).items())) or "fp32 (the source)"
        cells = [f"{r[t]['perplexity']:.2f} | {r[t]['perplexity'] / ref[t]['perplexity']:.3f}x" for t in texts]
        print(f"| {label} | {types} | {r.get('file_mb') or '–'} | " + " | ".join(cells) + " |")


def main() -> None:
    if sys.argv[1:2] == ["--table"]:
        return table(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ggufs", nargs="+", help="LABEL=FILE.gguf")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--texts", nargs="+", default=["brown-eval", "sotu"])
    ap.add_argument("--max-tokens", type=int, default=32768)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from accelc.compiler.evaluate import evaluate_torch
    from accelc.compiler.protocol import Protocol
    from accelc.models.sources import load_model
    torch.set_num_threads(2)
    result = {**provenance(), "model": a.model, "protocol": {"max_tokens": a.max_tokens, "window": 512,
                                                             "texts": a.texts, "engine": "torch-fp32"}, "rows": {}}
    for label, path in [("source", None)] + [tuple(x.split("=", 1)) for x in a.ggufs]:
        bundle = load_model(a.model)
        row = result["rows"][label] = {"file": path}
        if path:
            row["tensor_types"] = load_gguf_weights(bundle.model, Path(path).expanduser())
            row["file_mb"] = round(Path(path).expanduser().stat().st_size / 1e6, 1)
        bundle.model.eval()
        with torch.no_grad():
            for text in a.texts:
                t0 = time.perf_counter()
                r = evaluate_torch(bundle, Protocol(text=text, max_tokens=a.max_tokens), sample=False)
                row[text] = {"perplexity": r["perplexity"], "tokens": r["tokens"], "seconds": round(time.perf_counter() - t0, 1)}
                print(label, text, r["perplexity"], file=sys.stderr, flush=True)
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
