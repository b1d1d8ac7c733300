"""Prefix-conditioned perplexity (the protocol of `accelc eval --prefix P`, docs/evaluation.md): the evaluation text
tokenized without special tokens, cut into consecutive windows of P + CONTINUATION tokens; each window's last
CONTINUATION tokens are scored given its first P (the prompt). A decoder-only model reads the window causally; an
encoder-decoder encodes the prompt's first P - 1 tokens and decodes from its last one, as the runtime splits a prompt.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ...compiler.errors import InputError

CONTINUATION = 128          # tokens scored per window
DEFAULT_WINDOWS = 64        # windows scored (at most; the text may hold fewer)


def prefix_windows(stream: torch.Tensor, prefix: int, windows: int = DEFAULT_WINDOWS,
                   continuation: int = CONTINUATION) -> torch.Tensor:
    """[n, prefix + continuation] consecutive windows from the start of `stream`."""
    if prefix < 1:
        raise InputError(f"--prefix must be >= 1, got {prefix}")
    w = prefix + continuation
    n = min(windows, stream.numel() // w)
    if n < 1:
        raise InputError(f"the evaluation text has {stream.numel()} tokens, fewer than one window of --prefix {prefix}"
                         f" + {continuation}")
    return stream[:n * w].view(n, w)


def score(logits_fn: Callable[[torch.Tensor, int], torch.Tensor], windows: torch.Tensor, prefix: int,
          progress=None) -> dict:
    """logits_fn(window [1, W], prefix) -> logits [C, V] predicting window[prefix:]; -> perplexity and counts."""
    total, count = 0.0, 0
    for i, w in enumerate(windows):
        lg = logits_fn(w[None], prefix).float()
        tgt = w[prefix:]
        total += float(F.cross_entropy(lg, tgt, reduction="sum"))
        count += tgt.numel()
        if progress:
            progress(i + 1, len(windows))
    return {"perplexity": round(math.exp(total / count), 4), "prefix": prefix, "windows": int(len(windows)),
            "tokens": count}


def decoder_only_logits(graph) -> Callable:
    """A DecoderGraph (passes/export/decoder_graph.py) reading the window causally."""
    @torch.no_grad()
    def fn(w: torch.Tensor, prefix: int) -> torch.Tensor:
        T = w.shape[1] - 1
        out = graph(w[:, :-1], torch.arange(T)[None], torch.ones(1, T, dtype=torch.long), *graph.empty_cache(1, 0))
        return out[0][0, prefix - 1:]
    return fn


def encdec_logits(ed) -> Callable:
    """An EncDec (model.py): the encoder reads the prompt's first prefix - 1 tokens."""
    @torch.no_grad()
    def fn(w: torch.Tensor, prefix: int) -> torch.Tensor:
        return ed(w[:, :prefix - 1], w[:, prefix - 1:-1])[0]
    return fn
