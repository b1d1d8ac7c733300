"""Self-distillation of the fused drafter's exit layer (target frozen), and its acceptance estimate.

The target's hidden states at layer L (the exit layer's input) and after its last layer are computed once
per calibration window; each step then only runs the exit layer, the shared norm and the heads:
loss = KL(p_S || q), p_S the target's distribution renormalised over the drafter's vocabulary S
(the full vocabulary unless reduced: then it is the exact KL), q the drafter's.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ...compiler.errors import InputError
from ...compiler.progress import bar
from ..export.decoder_graph import DecoderGraph

log = logging.getLogger(__name__)


def token_windows(stream: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """[n, seq_len] windows at fixed-seed random offsets of a 1-D token stream."""
    if stream.numel() < seq_len + 1:
        raise InputError(f"calibration text has {stream.numel()} tokens; the drafter needs more than {seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n,), generator=g)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def frequent_tokens(stream: torch.Tensor, size: int, vocab: int, always: list[int]) -> np.ndarray:
    """The `size` most frequent token ids of the stream (plus `always`), sorted; ties by lower id."""
    counts = torch.bincount(stream, minlength=vocab)[:vocab].double()
    counts[torch.as_tensor([a for a in always if 0 <= a < vocab], dtype=torch.long)] = float("inf")
    top = torch.topk(counts - torch.arange(vocab, dtype=torch.double) * 1e-9, size).indices
    return np.sort(top.numpy()).astype(np.int64)


def _run(graph: DecoderGraph, x: torch.Tensor) -> torch.Tensor:
    B, T = x.shape[:2]
    pos = torch.arange(T)[None].expand(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    return graph(x, pos, mask, *graph.empty_cache(B, 0))[0]


@torch.no_grad()
def target_states(model, adapter, exit_layer: int, windows: torch.Tensor, chunk: int = 4):
    """-> (hidden entering layer L [n,T,C], hidden after the last layer [n,T,C]) of the frozen target."""
    trunk = DecoderGraph(model, adapter, layers=(0, exit_layer), output="hidden").eval()
    tail = DecoderGraph(model, adapter, layers=(exit_layer, adapter.num_layers), output="hidden").eval()
    h_in, h_out = [], []
    with bar(len(windows), "drafter: target states") as pb:
        for i in range(0, len(windows), chunk):
            h = _run(trunk, windows[i:i + chunk])
            h_in.append(h)
            h_out.append(_run(tail, h))
            pb.update(len(windows[i:i + chunk]))
    return torch.cat(h_in), torch.cat(h_out)


def _logits(head: DecoderGraph, h: torch.Tensor) -> torch.Tensor:
    """The shared final norm and (reduced) head of the drafter's graph applied to target hidden states."""
    z = head.head(head.final_norm(h))
    return torch.tanh(z / head.final_softcap) * head.final_softcap if head.final_softcap else z


def train_exit_layer(head: DecoderGraph, params: list, frozen: list, h_in: torch.Tensor, h_out: torch.Tensor,
                     steps: int, seconds: float, batch: int, lr: float, seed: int) -> dict:
    """AdamW on the exit layer; -> {"steps", "seconds", "loss": {...}} (loss: mean KL per token, nats)."""
    saved = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    head.train()
    try:
        with bar(steps, "drafter: training exit layer") as pb:
            for step in range(steps):
                if time.perf_counter() - t0 > seconds:
                    log.info("drafter training stopped by the time budget after %d steps", step)
                    break
                idx = torch.randint(0, len(h_in), (min(batch, len(h_in)),), generator=g)
                with torch.no_grad():
                    p_log = F.log_softmax(_logits(head, h_out[idx]), dim=-1)
                q_log = F.log_softmax(_run(head, h_in[idx]), dim=-1)
                loss = F.kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                pb.update(1)
    finally:
        head.eval()
        for p in params:
            p.requires_grad_(False)
        for p, r in zip(frozen, saved):
            p.requires_grad_(r)
    return {"steps": len(losses), "seconds": round(time.perf_counter() - t0, 2), "loss": _summary(losses)}


def _summary(losses: list[float]) -> dict:
    if not losses:
        return {"first": None, "last": None, "curve": []}
    chunks = np.array_split(np.asarray(losses), min(10, len(losses)))
    return {"first": round(losses[0], 4), "last": round(float(chunks[-1].mean()), 4),
            "min": round(min(losses), 4), "curve": [round(float(c.mean()), 4) for c in chunks]}


@torch.no_grad()
def acceptance(head: DecoderGraph, target_logits_fn, h_in: torch.Tensor, h_out: torch.Tensor,
               vocab_ids: np.ndarray | None) -> dict:
    """Per-token acceptance on held-out windows: greedy (draft argmax == target argmax) and sampled at
    temperature 1 (expected acceptance sum_v min(p, q), q zero outside the drafter's vocabulary)."""
    greedy, sampled, n = 0.0, 0.0, 0
    for i in range(len(h_in)):
        q_s = torch.softmax(_run(head, h_in[i:i + 1])[0], dim=-1)                # [T, S]
        p = torch.softmax(target_logits_fn(h_out[i:i + 1])[0], dim=-1)           # [T, V]
        ids = torch.arange(p.shape[-1]) if vocab_ids is None else torch.as_tensor(vocab_ids)
        greedy += float((ids[q_s.argmax(-1)] == p.argmax(-1)).sum())
        sampled += float(torch.minimum(p[:, ids], q_s).sum())
        n += q_s.shape[0]
    return {"greedy": round(greedy / n, 4), "sampled": round(sampled / n, 4), "tokens": n}
