"""Perplexity against context length for the fixed-size caches (issue 17), in torch: full, window, sink, h2o and
lococo at cache sizes M, each window of N tokens fed chunk by chunk through the torch decoder graph with that cache
(passes/kvcache/fixed_run.py).

    .venv/bin/python scripts/bench_kvcache.py --contexts 512 1024 2048 --slots 128 256 --chunk 64 \
        --windows 4 --lococo-steps 100 --out docs/runtime/results/kvcache_DATE.json

Long sequences: the evaluation split's tokens (Brown eval, or --text sotu) cut into consecutive windows of N tokens
(the first `--windows` of them); every token after the first of a window is scored. lococo rows first train their
compressors (`--lococo-steps` sequences of `--train-len` tokens from the calibration split, chunk `--chunk`) and
record the training time; `--ablate` adds each lococo row again with lambda 0 (no mixtures: the selection
alone). A lococo row trained with tune=norms (the default: the model's norm weights train with the compressors)
runs with its tuned norms, every other row with the source's; `--tuned-full` adds the full cache with each lococo
row's tuned norms (how much of the row's gain is the tuned weights rather than the cache). A kind with "+norms"
(`sink+norms`, `h2o+norms`, `window+norms`) is that baseline with the model's norm weights trained under it, on
lococo's default budget and rate (train_lococo.train with no compressors): the baselines' counterpart of tune=norms.
Writes raw JSON with machine, date, commit and command line.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from provenance import add_row, provenance


def windows(tok, text: str, n: int, count: int) -> torch.Tensor:
    from accelc.models.corpus import split_text, sotu_text
    raw = sotu_text() if text == "sotu" else split_text("eval")
    ids = tok(raw, add_special_tokens=False)["input_ids"]
    k = min(count, len(ids) // n)
    if k == 0:
        raise SystemExit(f"{text}: {len(ids)} tokens, fewer than one window of {n}")
    return torch.tensor(ids[:k * n]).reshape(k, n)


@torch.no_grad()
def perplexity(run, wins: torch.Tensor, chunk: int) -> float:
    nll, count = 0.0, 0
    for w in wins:
        run.reset()
        seq = w[None]
        for i in range(0, seq.shape[1] - 1, chunk):
            ids = seq[:, i:i + chunk]
            target = seq[:, i + 1:i + 1 + ids.shape[1]]
            logits = run.step(ids)[:, :target.shape[1]]
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
            count += target.numel()
    return math.exp(nll / count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--slots", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--kinds", nargs="+", default=["window", "sink", "h2o", "lococo"])
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, help="instead of --windows: about this many tokens per context "
                                                "(windows = max(1, tokens // N))")
    ap.add_argument("--text", default="brown-eval")
    ap.add_argument("--lococo-steps", type=int, default=100)
    ap.add_argument("--train-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", help="folder: write (or, when present, read back) lococo_M.safetensors per M")
    ap.add_argument("--ablate", action="store_true",
                    help="after each lococo row, the same trained compressors with lambda 0: every mixture "
                         "replaced by the one-hot selection of its slot (the next heavy hitters), the convolution's share")
    ap.add_argument("--tuned-full", action="store_true",
                    help="after each lococo row with tuned norms, the full cache with those norms")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from accelc.models.corpus import calibration_batches
    from accelc.models.sources import load_model
    from accelc.passes.export.decoder_graph import DecoderGraph
    from accelc.passes.kvcache.fixed_run import FixedCacheRun
    from accelc.passes.kvcache.policies import parse_kv_cache
    from accelc.passes.kvcache.train_lococo import LoCoCoTrainConfig, make_compressors, norm_parameters, train
    bundle = load_model(a.model)
    graph = DecoderGraph(bundle.model.eval(), bundle.adapter, scores=True).eval()
    result = {**provenance(), "model": a.model, "text": a.text, "chunk": a.chunk, "windows": a.windows, "tokens_per_context": a.tokens, "rows": []}
    trained = {}
    source_norms = {n: p.detach().clone() for n, p in norm_parameters(graph)}

    def set_norms(state: dict) -> None:     # lococo's tune=norms changes them in place: each row sets its own
        with torch.no_grad():
            for n, p in norm_parameters(graph):
                p.copy_(state.get(n, source_norms[n]))
    for n in a.contexts:
        wins = windows(bundle.tokenizer, a.text, n, max(1, a.tokens // n) if a.tokens else a.windows)
        specs = [("full", None)] + [(k, m) for m in a.slots for k in a.kinds if m < n]
        for kind, m in specs:
            name, _, extra = kind.partition(",")        # e.g. "lococo,local=16": options after the kind
            tune_base = name.endswith("+norms")
            name = name.removesuffix("+norms")
            label = name if m is None else f"{name}:{m}" + (f",{extra}" if extra else "")
            spec = parse_kv_cache(label)
            if tune_base and spec.kind not in ("window", "sink", "h2o"):
                raise SystemExit(f"{kind}: +norms is for the window, sink and h2o baselines (lococo: tune=)")
            comps, train_rec = None, None
            if tune_base:
                label += " +norms"
            if spec.kind == "lococo" or tune_base:
                key = label
                cfg = LoCoCoTrainConfig(**{**LoCoCoTrainConfig.from_spec(spec).__dict__, "steps": a.lococo_steps,
                                           "seq_len": a.train_len, "chunk": a.chunk})
                saved = Path(a.save) / (label.replace(":", "_").replace(",", "_").replace("=", "") + ".safetensors") \
                    if a.save else None
                if key not in trained and saved and saved.exists():
                    from safetensors.torch import load_file
                    comps = make_compressors(graph, spec, cfg) if spec.kind == "lococo" else torch.nn.ModuleList()
                    state = load_file(saved)
                    comps.load_state_dict({k: v for k, v in state.items() if not k.startswith("norms/")})
                    trained[key] = (comps, json.loads((saved.with_suffix(".json")).read_text()),
                                    {k[6:]: v for k, v in state.items() if k.startswith("norms/")})
                if key not in trained:
                    seqs = calibration_batches(bundle.tokenizer, n_samples=max(1, min(a.lococo_steps, 64)),
                                               seq_len=a.train_len, seed=0)
                    set_norms(source_norms)
                    comps, rec = train(graph, spec, seqs, cfg)
                    tuned = {n: p.detach().clone() for n, p in norm_parameters(graph)} if cfg.tune == "norms" else {}
                    trained[key] = comps, rec, tuned
                    if saved:
                        from safetensors.torch import save_file
                        saved.parent.mkdir(parents=True, exist_ok=True)
                        save_file({**{k: v.contiguous() for k, v in comps.state_dict().items()},
                                   **{"norms/" + k: v.contiguous() for k, v in tuned.items()}}, saved)
                        saved.with_suffix(".json").write_text(json.dumps(rec))
                comps, train_rec, tuned = trained[key]
                comps = comps if spec.kind == "lococo" else None
                set_norms(tuned)
            else:
                set_norms(source_norms)
            t0 = time.perf_counter()
            ppl = perplexity(FixedCacheRun(graph, spec, comps), wins, a.chunk)
            row = {"context": n, "cache": label, "perplexity": round(ppl, 4), "tokens": int(wins.numel() - len(wins)),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if train_rec:
                row["training"] = {k: v for k, v in train_rec.items() if k != "losses"} | {
                    "loss_first": (train_rec["losses"] or [None])[0], "loss_last": (train_rec["losses"] or [None])[-1]}
            add_row(result, row, a.out)
            if a.ablate and spec.kind == "lococo":     # the same compressors, every mixture the one-hot selection
                flat = copy.deepcopy(comps)
                for c in flat:
                    c.lam.data.fill_(0.0)
                t0 = time.perf_counter()
                ppl = perplexity(FixedCacheRun(graph, spec, flat), wins, a.chunk)
                add_row(result, {"context": n, "cache": label + " lambda=0", "perplexity": round(ppl, 4),
                                 "tokens": row["tokens"], "seconds": round(time.perf_counter() - t0, 1)}, a.out)
            if a.tuned_full and spec.kind == "lococo" and tuned:    # the tuned weights with every token kept
                t0 = time.perf_counter()
                ppl = perplexity(FixedCacheRun(graph, parse_kv_cache("full")), wins, a.chunk)
                add_row(result, {"context": n, "cache": f"full ({label} norms)", "perplexity": round(ppl, 4),
                                 "tokens": row["tokens"], "seconds": round(time.perf_counter() - t0, 1)}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
