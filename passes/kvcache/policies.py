"""Fixed-size KV caches (issue 17): the `--kv-cache` spec and the selection rules of the baselines.

    full                 the growing cache of today (default)
    window:M             the M most recent slots
    sink:M[,sinks=4]     StreamingLLM: the first `sinks` slots (attention sinks) and the M - sinks most recent
    h2o:M                heavy hitters only: the M slots with the highest accumulated attention
    lococo:M[,...]       LoCoCo: heavy hitters and recent slots verbatim, the rest learned convolutional mixtures
                         (passes/kvcache/lococo.py; the split's defaults: compiler/kv_spec.py lococo_defaults)

A cache of M slots takes chunks of new tokens until it holds more than M + `buffer` (16, the reference's) slots,
then is cut back to exactly M before the next chunk attends to it. Selections keep slot order (oldest first), so
a cut cache is still in position order; keys are stored after RoPE at their absolute positions.
Scores are per KV head: the attention probability a slot received, summed over the queries of the calls that saw
it and over the query heads sharing that KV head (grouped KV heads; the reference has one query head per KV head).
"""
from __future__ import annotations

import torch

from ...compiler.kv_spec import BUFFER, KINDS, LOCOCO_KEYS, KVCacheSpec, parse_kv_cache  # noqa: F401  (re-exported)


def keep_order(idx: torch.Tensor) -> torch.Tensor:
    """Selected slot indices [..., M] in slot order."""
    return idx.sort(dim=-1).values


def select(spec: KVCacheSpec, scores: torch.Tensor) -> torch.Tensor:
    """Slot indices [B, H, M] to keep (in slot order) out of S > M, by the rule of `spec` (window, sink, h2o);
    scores [B, H, S] (read by h2o only)."""
    B, H, S = scores.shape
    m = spec.slots
    if S <= m:
        return torch.arange(S, device=scores.device).expand(B, H, S)
    if spec.kind == "window":
        return torch.arange(S - m, S, device=scores.device).expand(B, H, m)
    if spec.kind == "sink":
        idx = torch.cat((torch.arange(spec.sinks, device=scores.device),
                         torch.arange(S - (m - spec.sinks), S, device=scores.device)))
        return idx.expand(B, H, m)
    if spec.kind == "h2o":
        return keep_order(scores.topk(m, dim=-1).indices)
    raise ValueError(f"no selection rule for cache kind {spec.kind}")


def gather_slots(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] (the cache layout), idx [B, H, M] -> [B, M, H, D]."""
    B, S, H, D = x.shape
    g = idx.permute(0, 2, 1)[..., None].expand(B, idx.shape[-1], H, D)
    return torch.gather(x, 1, g)
