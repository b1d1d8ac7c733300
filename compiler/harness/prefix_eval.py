"""Prefix-conditioned evaluation (issue 18): `accelc eval MODEL_OR_ARTIFACT --prefix P --json`.

The protocol (passes/encdec/prefix.py): consecutive windows of P + 128 tokens of the evaluation text (Brown's
evaluation split, or --text sotu / --eval-text FILE), as many as --max-tokens holds (at most 64); in each, the last
128 tokens are scored given the first P. An artifact gets the prompt through its runtime's prefill (an
encoder-decoder's encoder takes all but its last token), then the continuation in one prefill call of its
decoder; a model source runs the torch model causally. Every artifact supports it (decoder-only or not), so the
source and a converted model are scored on the same work.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import InputError
from .context_eval import is_artifact_path


def artifact_logits(art):
    from ...runtime.decode import prefill
    states = {}                 # one state per window length, reset for every window

    def fn(w: torch.Tensor, prefix: int) -> torch.Tensor:
        ids = w[0].numpy().astype(np.int64)
        if art.max_tokens() is not None and ids.shape[0] > art.max_tokens():
            raise InputError(f"--prefix {prefix} + 128 tokens do not fit the artifact's static cache "
                             f"({art.max_tokens()})")
        state = states.get(ids.shape[0])
        if state is None:
            state = states[ids.shape[0]] = art.new_state(ids.shape[0])
        state.cache.reset()
        first = prefill(state, ids[:prefix])                                  # predicts token `prefix`
        rest = prefill(state, ids[prefix:-1], all_logits=True)               # predicts the remaining ones
        return torch.from_numpy(np.concatenate((np.asarray(first)[None], np.asarray(rest)), 0))
    return fn


def evaluate_prefix(source, prefix: int, text: str = "brown-eval", max_tokens: int = 32768,
                    text_path: str | None = None, progress=None, backend: str | None = None,
                    device: str | None = None) -> dict:
    """source: an artifact path or a loaded ModelBundle (torch)."""
    from ...models.corpus import load_text, token_stream
    from ...passes.encdec.prefix import CONTINUATION, DEFAULT_WINDOWS, decoder_only_logits, prefix_windows, score
    if prefix < 1:
        raise InputError(f"--prefix must be >= 1, got {prefix}")
    t0 = time.perf_counter()
    if is_artifact_path(source):
        from ...runtime.artifact import open_artifact
        art = open_artifact(source, backend=backend, device=device, full_logits=True)
        tok, fn, engine = art.tokenizer, artifact_logits(art), art.engine
        kind = "encoder-decoder" if getattr(art, "encoder", None) is not None else "decoder-only"
    else:
        from ...passes.export.decoder_graph import DecoderGraph
        tok, engine, kind = source.tokenizer, "torch-fp32", "decoder-only"
        fn = decoder_only_logits(DecoderGraph(source.model.eval(), source.adapter).eval())
    stream = token_stream(tok, load_text("sotu" if text == "sotu" else "eval", text_path))
    n = max(1, min(DEFAULT_WINDOWS, max_tokens // (prefix + CONTINUATION)))
    windows = prefix_windows(stream, prefix, n)
    result = score(fn, windows, prefix, progress)
    return {**result, "continuation": CONTINUATION, "text": text_path or text, "engine": engine, "model_kind": kind,
            "seconds": round(time.perf_counter() - t0, 2)}
