"""Perplexity of an artifact's graphs with the project's fixed protocol (compiler/evaluate.py).

Each window is one prefill into an empty cache (static graphs: the prefill chunks of that window),
scored from the logits of every position; the keys match compiler.evaluate.evaluate_torch.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch

from ..errors import InputError
from ..evaluate import SAMPLE_PROMPT, Protocol, eval_windows, perplexity
from ...runtime.artifact import open_artifact
from ...runtime.decode import prefill
from ...runtime.generate import encode_prompt, generate


def artifact_logits_fn(art, window: int):
    """ids [1, T] -> logits [T, V] (numpy), each call starting from an empty cache."""
    if art.max_tokens() is not None and window > art.cache_len:
        raise InputError(f"the evaluation window ({window}) is longer than the artifact's static cache "
                         f"({art.cache_len}); use --window {art.cache_len} or less")
    state = art.new_state(window)

    def fn(ids: torch.Tensor):
        state.cache.reset()
        return prefill(state, ids.reshape(-1).numpy(), all_logits=True)
    return fn


def evaluate_artifact(path, protocol: Protocol = Protocol(), text_path: str | None = None,
                      progress: Callable[[int, int], None] | None = None, backend: str | None = None,
                      device: str | None = None, sample: bool = True) -> dict:
    art = open_artifact(path, backend=backend, device=device, full_logits=True)
    windows = eval_windows(art.tokenizer, protocol, text_path)
    t0 = time.perf_counter()
    ppl = perplexity(artifact_logits_fn(art, windows.shape[1]), windows, progress)
    result = {"perplexity": round(ppl, 4), "tokens": int(windows.numel()), "windows": int(windows.shape[0]),
              "protocol": {**asdict(protocol), "text": text_path or protocol.text}, "engine": art.engine,
              "seconds": round(time.perf_counter() - t0, 2), "device": art.choice.device}
    if sample:
        ids = encode_prompt(art.tokenizer, SAMPLE_PROMPT, raw=True)
        result["sample"] = {"prompt": SAMPLE_PROMPT, "greedy": generate(art, ids, 24).text}
    return result
