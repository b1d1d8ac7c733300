"""Fixed-size KV caches (issue 17): the `--kv-cache` spec and the selection rules of the baselines.

    full                 the growing cache of today (default)
    window:M             the M most recent slots
    sink:M[,sinks=4]     StreamingLLM: the first `sinks` slots (attention sinks) and the M - sinks most recent
    h2o:M                heavy hitters only: the M slots with the highest accumulated attention
    lococo:M[,...]       LoCoCo: M/2 heavy hitters verbatim, M/2 learned convolutional mixtures (passes/kvcache/lococo.py)

A cache of M slots takes chunks of new tokens until it holds more than M + `buffer` (16, the reference's) slots,
then is cut back to exactly M before the next chunk attends to it. Selections keep slot order (oldest first), so
a cut cache is still in position order; keys are stored after RoPE at their absolute positions.
Scores are per KV head: the attention probability a slot received, summed over the queries of the calls that saw
it and over the query heads sharing that KV head (grouped KV heads; the reference has one query head per KV head).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...compiler.errors import InputError
from ..spec_options import convert

KINDS = ("full", "window", "sink", "h2o", "lococo")
BUFFER = 16
LOCOCO_KEYS = {"steps": int, "keep": float, "kernel": int, "chunk": int, "seq_len": int, "lr": float, "buffer": int,
               "seed": int}


@dataclass(frozen=True)
class KVCacheSpec:
    kind: str = "full"
    slots: int = 0                      # M
    sinks: int = 4                      # sink: attention sinks kept
    buffer: int = BUFFER                # slots past M before a cut
    options: dict = field(default_factory=dict)     # lococo training/compressor options

    @property
    def fixed(self) -> bool:
        return self.kind != "full"

    def __str__(self) -> str:
        return self.kind if self.kind == "full" else f"{self.kind}:{self.slots}"


def parse_kv_cache(text: str | None) -> KVCacheSpec:
    """`--kv-cache` value -> KVCacheSpec; one clear InputError for anything else."""
    text = (text or "full").strip()
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise InputError(f"--kv-cache: unknown cache '{kind}' (choose from full, window:M, sink:M[,sinks=4], h2o:M, "
                         "lococo:M[,steps=N])")
    if kind == "full":
        if rest:
            raise InputError("--kv-cache full takes no arguments")
        return KVCacheSpec()
    head, *items = [p.strip() for p in rest.split(",")] if rest else [""]
    if not head.isdigit() or int(head) < 2:
        raise InputError(f"--kv-cache {kind}: give the number of cache slots M >= 2, e.g. {kind}:128")
    m = int(head)
    opts: dict = {}
    allowed = {"sinks": int, "buffer": int} if kind == "sink" else (
        dict(LOCOCO_KEYS) if kind == "lococo" else {"buffer": int})
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or key.strip() not in allowed:
            raise InputError(f"--kv-cache {kind}: unknown option '{item}' (options: {', '.join(sorted(allowed))})")
        opts[key.strip()] = convert("--kv-cache", kind, key.strip(), val.strip(), allowed[key.strip()])
    sinks = opts.pop("sinks", 4)
    buffer = opts.pop("buffer", BUFFER)
    if kind == "sink" and not 0 < sinks < m:
        raise InputError(f"--kv-cache sink:{m}: sinks must be in 1..{m - 1}, got {sinks}")
    if buffer < 1:
        raise InputError(f"--kv-cache {kind}: buffer must be >= 1, got {buffer}")
    if kind == "lococo":
        keep = opts.get("keep", 0.5)
        if not 0 < keep <= 1:
            raise InputError(f"--kv-cache lococo: keep must be in (0, 1], got {keep}")
        for k in ("steps", "kernel", "chunk", "seq_len"):
            if k in opts and opts[k] < 1:
                raise InputError(f"--kv-cache lococo: {k} must be >= 1, got {opts[k]}")
    return KVCacheSpec(kind, m, sinks, buffer, opts)


def keep_order(idx: torch.Tensor) -> torch.Tensor:
    """Selected slot indices [..., M] in slot order."""
    return idx.sort(dim=-1).values


def select(spec: KVCacheSpec, scores: torch.Tensor) -> torch.Tensor:
    """Slot indices [B, H, M] to keep (in slot order) out of S > M, by the rule of `spec` (window, sink, h2o);
    scores [B, H, S] (read by h2o only)."""
    B, H, S = scores.shape
    m = spec.slots
    if S <= m:
        return torch.arange(S).expand(B, H, S)
    if spec.kind == "window":
        return torch.arange(S - m, S).expand(B, H, m)
    if spec.kind == "sink":
        idx = torch.cat((torch.arange(spec.sinks), torch.arange(S - (m - spec.sinks), S)))
        return idx.expand(B, H, m)
    if spec.kind == "h2o":
        return keep_order(scores.topk(m, dim=-1).indices)
    raise ValueError(f"no selection rule for cache kind {spec.kind}")


def gather_slots(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] (the cache layout), idx [B, H, M] -> [B, M, H, D]."""
    B, S, H, D = x.shape
    g = idx.permute(0, 2, 1)[..., None].expand(B, idx.shape[-1], H, D)
    return torch.gather(x, 1, g)
