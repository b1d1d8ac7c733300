"""Long-context evaluation through an artifact's own KV cache (issue 17): `accelc eval ARTIFACT --context N`.

Perplexity: the evaluation text (Brown's evaluation split, or --text sotu / --eval-text FILE) tokenized without
special tokens and cut into consecutive windows of N tokens (as many as --max-tokens holds, at least one); each
window is fed from an empty cache in chunks of `chunk` tokens (the artifact's fixed-cache chunk, else 64) through
the runtime's cache (full or fixed), and every token after the first is scored from the logits of the chunk that
predicted it. Full-cache artifacts go through the same chunked loop, so every cache kind is scored the same way.
A model source (not an artifact) runs the torch reference loop (passes/kvcache/fixed_run.py) with a full cache.

Passkey retrieval: a five-digit number stated once near the start of about N tokens of filler text ("The grass is
green. The sky is blue. ..."), then the question; greedy decoding must produce the number (`--passkey TRIALS`).
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch

from ..errors import InputError

DEFAULT_CHUNK = 64
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the pass key? The pass key is"


def chunk_of(art) -> int:
    spec = getattr(art, "kv_cache", None)
    if art.static:
        return int(art.prefill_chunk)
    return int(spec.options.get("chunk", DEFAULT_CHUNK)) if spec is not None else DEFAULT_CHUNK


def cache_name(art) -> str:
    spec = getattr(art, "kv_cache", None)
    return str(spec) if spec is not None else "full"


def chunked_nll(step: Callable[[np.ndarray], np.ndarray], reset: Callable[[], None], windows: torch.Tensor,
                chunk: int, progress=None) -> tuple[float, int]:
    """Sum of NLL and count over windows fed chunk by chunk; step(ids [T]) -> logits [T, V] after the cache."""
    total, count = 0.0, 0
    for i, w in enumerate(windows):
        reset()
        ids = w.numpy().astype(np.int64)
        for s in range(0, ids.shape[0] - 1, chunk):
            part = ids[s:s + chunk]
            tgt = torch.from_numpy(ids[s + 1:s + 1 + part.shape[0]])
            lg = torch.from_numpy(np.asarray(step(part), dtype=np.float32))[:tgt.shape[0]]
            total += float(torch.nn.functional.cross_entropy(lg, tgt, reduction="sum"))
            count += int(tgt.numel())
        if progress:
            progress(i + 1, len(windows))
    return total, count


def artifact_step(art, capacity: int):
    from ...runtime.decode import prefill
    if art.max_tokens() is not None and capacity > art.cache_len:
        raise InputError(f"--context {capacity} is longer than the artifact's static cache ({art.cache_len})")
    state = art.new_state(capacity)
    return (lambda ids: prefill(state, ids, all_logits=True)), state.cache.reset


def torch_step(bundle, capacity: int):
    from ...passes.export.decoder_graph import DecoderGraph
    from ...passes.kvcache.fixed_run import FixedCacheRun
    from ...compiler.kv_spec import KVCacheSpec
    run = FixedCacheRun(DecoderGraph(bundle.model.eval(), bundle.adapter, scores=True).eval(), KVCacheSpec())

    def step(ids):
        with torch.no_grad():
            return run.step(torch.from_numpy(ids)[None])[0].numpy()
    return step, run.reset


def context_windows(tokenizer, text: str, context: int, max_tokens: int, text_path: str | None = None) -> torch.Tensor:
    from ...models.corpus import load_text, token_stream
    ids = token_stream(tokenizer, load_text("sotu" if text == "sotu" else "eval", text_path))
    n = max(1, min(max_tokens, ids.numel()) // context)
    if ids.numel() < context:
        raise InputError(f"the evaluation text has {ids.numel()} tokens, fewer than one --context {context} window")
    return ids[:n * context].view(n, context)


def passkey_prompts(tokenizer, context: int, trials: int, seed: int = 0) -> list[tuple[list[int], str]]:
    """(prompt ids of about `context` tokens, the passkey) per trial; the key sits in the first fifth of the text."""
    rng = random.Random(seed)
    per = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    out = []
    for _ in range(trials):
        key = str(rng.randint(10000, 99999))
        fill = max(2, (context - 40) // per)
        at = rng.randint(1, max(1, fill // 5))
        text = (FILLER * at + f"The pass key is {key}. Remember it. {key} is the pass key. " +
                FILLER * (fill - at) + QUESTION)
        out.append((tokenizer(text, add_special_tokens=False)["input_ids"], key))
    return out


def passkey_accuracy(generate_fn: Callable[[list[int]], str], prompts) -> dict:
    hits = 0
    for ids, key in prompts:
        hits += int(key in generate_fn(ids))
    return {"trials": len(prompts), "correct": hits, "accuracy": round(hits / max(1, len(prompts)), 4),
            "prompt_tokens": int(np.mean([len(p) for p, _ in prompts]))}


def is_artifact_path(source) -> bool:
    """An artifact path (str or PathLike), as against a loaded ModelBundle."""
    return isinstance(source, (str, bytes)) or hasattr(source, "__fspath__")


def evaluate_context(source, context: int, text: str = "brown-eval", max_tokens: int = 32768,
                     text_path: str | None = None, passkey: int = 0, progress=None, backend: str | None = None,
                     device: str | None = None) -> dict:
    """source: an artifact path or a loaded ModelBundle (torch reference, full cache)."""
    if context < 2:
        raise InputError(f"--context must be >= 2, got {context}")
    t0 = time.perf_counter()
    if is_artifact_path(source):
        from ...runtime.artifact import open_artifact
        art = open_artifact(source, backend=backend, device=device, full_logits=True)
        tok, chunk, cache, engine = art.tokenizer, chunk_of(art), cache_name(art), art.engine
        step, reset = artifact_step(art, context)

        def gen(ids):
            from ...runtime.generate import generate
            return generate(art, ids, 8).text
    else:
        tok, chunk, cache, engine = source.tokenizer, DEFAULT_CHUNK, "full", "torch-fp32"
        step, reset = torch_step(source, context)

        def gen(ids):
            reset()
            out = []
            lg = None
            arr = np.asarray(ids, dtype=np.int64)
            for s in range(0, arr.shape[0], chunk):
                lg = step(arr[s:s + chunk])
            for _ in range(8):
                t = int(np.argmax(lg[-1]))
                out.append(t)
                lg = step(np.array([t], dtype=np.int64))
            return tok.decode(out)
    windows = context_windows(tok, text, context, max_tokens, text_path)
    nll, count = chunked_nll(step, reset, windows, chunk, progress)
    result = {"perplexity": round(math.exp(nll / count), 4), "context": context, "chunk": chunk, "cache": cache,
              "windows": int(windows.shape[0]), "tokens": count, "text": text_path or text, "engine": engine,
              "seconds": round(time.perf_counter() - t0, 2)}
    if passkey:
        result["passkey"] = passkey_accuracy(gen, passkey_prompts(tok, context, passkey))
    return result
