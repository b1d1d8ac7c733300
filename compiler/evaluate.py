"""The evaluation every pass reports against: perplexity on held-out text with a fixed protocol.

Protocol (default): the Brown evaluation split (every 10th file; or, with text="sotu", the second
text off the calibration domain, State of the Union addresses 1990-2021), tokenized without special
tokens, the first 32,768 tokens cut into 64 non-overlapping 512-token windows; each window is
scored on its own (no BOS, no context carried over), perplexity = exp(mean NLL of the 511
predicted tokens per window). Plus a short greedy sample from a fixed prompt.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ..models.corpus import load_text, token_stream
from .protocol import SAMPLE_PROMPT, Protocol  # noqa: F401  (re-exported)

# logits_fn: int64 tensor [1, T] -> float logits [1, T, V] (torch or numpy)
LogitsFn = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]




def eval_windows(tokenizer, protocol: Protocol, text_path: str | None = None) -> torch.Tensor:
    """[n_windows, window] token windows of the protocol."""
    named = "sotu" if protocol.text == "sotu" else "eval"
    ids = token_stream(tokenizer, load_text(named, text_path))[: protocol.max_tokens]
    n = ids.numel() // protocol.window
    if n == 0:
        from .errors import InputError
        raise InputError(f"evaluation text has {ids.numel()} tokens, fewer than one {protocol.window}-token window")
    return ids[: n * protocol.window].view(n, protocol.window)


def nll_of_window(logits, ids: torch.Tensor) -> tuple[float, int]:
    """Sum of NLL of tokens 1..T-1 given the logits at 0..T-2; -> (sum, count)."""
    lg = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).float()
    lg = lg.reshape(-1, lg.shape[-1])[:-1]
    tgt = ids.reshape(-1)[1:]
    nll = torch.nn.functional.cross_entropy(lg, tgt, reduction="sum")
    return float(nll), int(tgt.numel())


def perplexity(logits_fn: LogitsFn, windows: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> float:
    total, count = 0.0, 0
    for i, w in enumerate(windows):
        s, c = nll_of_window(logits_fn(w.view(1, -1)), w)
        total += s
        count += c
        if progress:
            progress(i + 1, len(windows))
    return math.exp(total / count)


def torch_logits_fn(model) -> LogitsFn:
    @torch.inference_mode()
    def fn(ids: torch.Tensor):
        return model(input_ids=ids, use_cache=False).logits
    return fn


@torch.inference_mode()
def torch_greedy(model, tokenizer, prompt: str = SAMPLE_PROMPT, max_new_tokens: int = 24) -> str:
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def evaluate_torch(bundle, protocol: Protocol = Protocol(), text_path: str | None = None,
                   progress: Callable[[int, int], None] | None = None, sample: bool = True) -> dict:
    """Perplexity and a greedy sample of a bundle's torch model."""
    torch.manual_seed(0)
    windows = eval_windows(bundle.tokenizer, protocol, text_path)
    t0 = time.perf_counter()
    ppl = perplexity(torch_logits_fn(bundle.model), windows, progress)
    result = {"perplexity": round(ppl, 4), "tokens": int(windows.numel()), "windows": int(windows.shape[0]),
              "protocol": {**asdict(protocol), "text": text_path or protocol.text}, "engine": "torch-fp32",
              "seconds": round(time.perf_counter() - t0, 2)}
    if sample:
        result["sample"] = {"prompt": SAMPLE_PROMPT, "greedy": torch_greedy(bundle.model, bundle.tokenizer)}
    return result
