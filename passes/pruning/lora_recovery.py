"""Recovery fine-tuning after structured pruning (CFSP's optional step): LoRA on every decoder Linear,
with a rank per block that follows the block's coarse importance, trained on the calibration windows
under a step and time budget on CPU, then merged into the weights (the exported graph sees plain
Linear modules again).
"""
from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn as nn

from ...compiler.progress import bar
from .prune_options import decoder_linears

log = logging.getLogger(__name__)


class LoRALinear(nn.Module):
    """y = base(x) + (x A^T) B^T; A [r, in] (Kaiming uniform), B [out, r] (zeros: starts as the base)."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t()

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight += self.lora_b @ self.lora_a
        return self.base


def block_ranks(importance: list[float], rank: int) -> list[int]:
    """Rank of block l: rank * importance_l / mean importance, at least 1 and at most 4 * rank."""
    mean = sum(importance) / len(importance)
    if mean <= 0:
        return [rank] * len(importance)
    return [int(min(4 * rank, max(1, round(rank * v / mean)))) for v in importance]


def _set_child(parent: nn.Module, name: str, module: nn.Module) -> None:
    setattr(parent, name, module)


def _attach(adapter, ranks: list[int]) -> list[tuple[nn.Module, str, LoRALinear]]:
    wrapped = []
    for i, r in enumerate(ranks):
        for name, lin in decoder_linears(adapter, i).items():
            owner = adapter.attn(i) if name.startswith("attn.") else adapter.mlp(i)
            attr = next(k for k, v in owner.named_children() if v is lin)
            lora = LoRALinear(lin, r)
            _set_child(owner, attr, lora)
            wrapped.append((owner, attr, lora))
    return wrapped


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def recover(bundle, ids: torch.Tensor, importance: list[float], steps: int, seconds: float, rank: int = 8,
            lr: float = 2e-4, batch: int = 2) -> dict:
    """Train LoRA adapters for at most `steps` steps / `seconds` seconds, merge them; -> a record."""
    model, ad = bundle.model, bundle.adapter
    ranks = block_ranks(importance, rank)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    probe = ids[:batch]
    with torch.no_grad():
        probe_before = lm_loss(model, probe).item()
    wrapped = _attach(ad, ranks)
    train = [p for _, _, lw in wrapped for p in (lw.lora_a, lw.lora_b)]
    opt = torch.optim.AdamW(train, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    t0 = time.perf_counter()
    done = 0
    try:
        with bar(steps, "lora recovery") as pb:
            while done < steps and time.perf_counter() - t0 < seconds:
                s = (done * batch) % ids.shape[0]
                x = ids[s:s + batch]
                loss = lm_loss(model, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                done += 1
                pb.update(1)
    finally:
        for owner, attr, lw in wrapped:
            _set_child(owner, attr, lw.merged())
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    seconds_used = time.perf_counter() - t0
    with torch.no_grad():
        probe_after = lm_loss(model, probe).item()
    log.info("lora recovery: %d steps in %.1fs, loss %.4f -> %.4f", done, seconds_used,
             losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
    return {"steps": done, "seconds": round(seconds_used, 2), "ranks": ranks, "lr": lr, "batch": batch,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "stopped_by": "steps" if done >= steps else "time",
            "first_batch_loss_before": probe_before, "first_batch_loss_after": probe_after}
