"""Shared by the structured MLP-channel baselines (wanda_sp.py, flap.py): per-block kept counts (uniform, or
from one global threshold on standardised scores), rounding those counts while keeping the global total,
and writing the pruning record. The CFSP pass (cfsp.py) owns the module surgery (`shrink_mlp`) and the
per-block rounding rule (`rounding_for`, `kept_count`) these reuse.
"""
from __future__ import annotations

import torch

from ...compiler.pass_base import PassResult
from .cfsp import kept_count, rounding_for


def standardise(score: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std over one block's channels (std with Bessel's correction, as torch.std and the FLAP
    reference); a block whose scores are all equal standardises to zeros."""
    s = score.double()
    return ((s - s.mean()) / s.std().clamp_min(1e-30)).float()


def uniform_counts(sizes: list[int], ratio: float, round_: int) -> list[int]:
    """Every block keeps 1 - ratio of its channels (rounded as CFSP rounds: `kept_count`)."""
    return [kept_count(n, 1 - ratio, rounding_for(n, round_)) for n in sizes]


def global_counts(scores: list[torch.Tensor], ratio: float) -> list[int]:
    """Kept channels per block from one threshold over every block's scores: the round(total * (1 - ratio))
    highest scores over the whole model are kept, so the global fraction is exact. Each block keeps at
    least its best channel (a block with none would have no MLP to export)."""
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    keep_total = max(len(sizes), total - int(round(total * ratio)))
    flat = torch.cat([s.float().clone() for s in scores])
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
    flat[starts + torch.stack([s.argmax() for s in scores])] = float("inf")
    top = torch.topk(flat, keep_total).indices
    return torch.bincount(block[top], minlength=len(sizes)).tolist()


def round_counts(counts: list[int], sizes: list[int], round_: int) -> list[int]:
    """Each block's count rounded to its multiple (`rounding_for`) while the sum stays as close as the
    multiples allow to sum(counts): every block first goes down to a multiple (at least one), then the blocks
    that lost the most get a multiple back while that brings the total nearer."""
    mults = [rounding_for(n, round_) for n in sizes]
    if all(m <= 1 for m in mults):
        return list(counts)
    target = sum(counts)
    out = [min(n, max(min(m, n), c // m * m)) for c, n, m in zip(counts, sizes, mults)]
    while True:
        room = [i for i in range(len(out)) if out[i] + mults[i] <= sizes[i]]
        if not room:
            return out
        i = max(room, key=lambda j: counts[j] - out[j])
        gap = target - sum(out)
        if abs(gap - mults[i]) >= abs(gap):
            return out
        out[i] += mults[i]


def top_channels(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scoring channels, in their original order."""
    return torch.topk(score, k).indices.sort().values


def base_record(bundle, method: str, ratio: float, round_: int) -> dict:
    ad = bundle.adapter
    sizes = ad.intermediate_sizes()
    before = ad.num_parameters()
    return {"method": method, "ratio": ratio, "round": round_ or "auto",
            "round_multiples": [rounding_for(n, round_) for n in sizes], "intermediate_before": sizes,
            "kept_channels": sizes, "parameters_before": before, "parameters_after": before}


def unchanged(bundle, rec: dict) -> PassResult:
    bundle.records["pruning"] = rec
    return PassResult(False, {"parameters": rec["parameters_before"], "mlp_channels_kept": 1.0})


def finish(bundle, rec: dict, **extra) -> PassResult:
    """Record the pruned model's kept channels and parameters; -> the pass result."""
    ad = bundle.adapter
    kept = ad.intermediate_sizes()
    rec.update(extra, kept_channels=kept, parameters_after=ad.num_parameters(),
               mlp_channels_kept=round(sum(kept) / sum(rec["intermediate_before"]), 6))
    bundle.records["pruning"] = rec
    return PassResult(True, {"parameters": rec["parameters_after"], "parameters_before": rec["parameters_before"],
                             "mlp_channels_kept": rec["mlp_channels_kept"]})
