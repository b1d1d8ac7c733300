"""GPTQ into grouped symmetric integers (NNCF's INT4/3/2_SYM layout): the starting point of `pv-int`.

Layers are quantized in order, each on the calibration inputs produced by the already-quantized
layers before it (passes/calibration.run_layerwise), with the input Gram matrix H = E[x x^T] of each
Linear. GPTQ (Frantar et al. 2023) quantizes one input column at a time and spreads the column's
rounding error over the columns not yet quantized through the Cholesky factor of H^-1 (blocks of
columns, lazy updates). A group's scale comes from a clip search: the clip ratio c in `CLIPS`
minimising the diag(H)-weighted rounding error of the group, scale = max|w| * c / 2^(B-1) (c = 1 is
NNCF's data-free scale), rounded to fp16 before the codes are taken. In natural column order
(`act_order=False`) the scale is fixed when GPTQ reaches the group's first column, from the weights as
they are then (error feedback of earlier groups included); with `act_order` the columns are taken in
decreasing diag(H) and every group's scale is fixed up front from the original weights (GPTQ's
"static groups", which act order needs: a group's columns are no longer contiguous in time).
With `flip` the search also tries each negative scale: the codes [-2^(B-1), 2^(B-1) - 1] have one more level below
zero than above, and a negative scale puts that level on the group's positive side (the same layout: NNCF's
decompression multiplies by the fp16 scale whatever its sign).
"""
from __future__ import annotations

import torch

from .int_linear import code_range

CLIPS = tuple(1.0 - 0.05 * i for i in range(11))     # 1.0 .. 0.5


def best_scales(wg: torch.Tensor, d: torch.Tensor, bits: int, clips=CLIPS, flip: bool = False) -> torch.Tensor:
    """wg [N, G] one group of every row, d [G] column weights -> fp16-exact scales [N, 1] (float32); flip: negative
    scales are candidates too (a tie keeps the positive one)."""
    lo, hi = code_range(bits)
    amax = wg.abs().amax(-1, keepdim=True).clamp_min(1e-8)
    best_s, best_e = None, None
    for sign, c in [(sign, c) for sign in ((1.0, -1.0) if flip else (1.0,)) for c in clips]:
        s = sign * (amax * c / (1 << (bits - 1))).half().float().clamp_min(6.2e-5)
        q = torch.clamp(torch.round(wg / s), lo, hi)
        e = ((wg - s * q).square() * d).sum(-1, keepdim=True)
        if best_s is None:
            best_s, best_e = s, e
        else:
            better = e < best_e
            best_s, best_e = torch.where(better, s, best_s), torch.where(better, e, best_e)
    return best_s


@torch.no_grad()
def gptq_int(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, damp: float = 0.01,
             clip: bool = True, act_order: bool = False, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K], h [K, K] -> (codes int8 [N, K/G, G], scales fp32 (fp16-exact) [N, K/G, 1])."""
    n, k = w.shape
    lo, hi = code_range(bits)
    clips = CLIPS if clip else (1.0,)
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    d = torch.diag(h).float().clamp_min(0)
    scales = torch.zeros(n, k // group)
    if act_order:
        for g in range(k // group):
            scales[:, g] = best_scales(W[:, g * group:(g + 1) * group], d[g * group:(g + 1) * group], bits,
                                       clips, flip).squeeze(-1)
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += torch.eye(k) * (damp * torch.diag(H).mean())
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    codes = torch.zeros(n, k, dtype=torch.int8)
    block = group * max(1, 128 // group)
    s = None
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hb = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm[col])
            if act_order:
                s = scales[:, orig // group]
            elif col % group == 0:
                s = best_scales(W1[:, i:i + group], d[col:col + group], bits, clips, flip).squeeze(-1)
                scales[:, col // group] = s
            x = W1[:, i]
            q = torch.clamp(torch.round(x / s), lo, hi)
            codes[:, orig] = q.to(torch.int8)
            err = (x - q * s) / Hb[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hb[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return codes.reshape(n, k // group, group), scales.unsqueeze(-1)
