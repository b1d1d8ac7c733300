"""The V step's selection: the indices of the n largest entries of a flat tensor, largest first.

torch.topk over every weight of a layer took about a third of a PV step's V-step time on SmolLM2 (0.9 M weights a
Linear, 210 Linears, every step). Here a strided sample of the entries gives a threshold a little below the n-th
largest value; only the entries at or above it (about 2n) are ranked. When fewer than n pass the threshold the
full topk runs instead, so the result is always exactly topk's (up to the order of equal values)."""
from __future__ import annotations

import torch

SAMPLE = 16384          # entries the threshold is estimated from
MARGIN = 2.0            # candidates kept: about MARGIN x n


def farthest(x: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n largest entries of the 1-D tensor x, in decreasing order of value (as x.topk(n))."""
    size = x.numel()
    if n >= size:
        return x.argsort(descending=True)
    if size < 8 * SAMPLE or MARGIN * n >= size / 4:
        return x.topk(n).indices
    stride = size // SAMPLE
    sample = x[::stride]
    k = sample.numel() - int(MARGIN * n * sample.numel() / size)     # the sample's rank of the threshold
    threshold = sample.kthvalue(max(k, 1)).values
    cand = (x >= threshold).nonzero().squeeze(1)
    if cand.numel() < n:
        return x.topk(n).indices
    return cand[x[cand].topk(n).indices]
