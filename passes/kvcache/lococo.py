"""LoCoCo's cache compressor ("LoCoCo: Dropping In Convolutions for Long Context Compression", arXiv 2406.05317):
S > M cache slots of one layer -> exactly M.

Per KV head h (grouped heads: scores are summed over the query heads that share h, passes/kvcache/policies.py):
  1. the `keep` = round(M * keep_rate) slots with the highest scores are kept verbatim (slot order);
  2. the other F = M - keep slots are mixtures of the R = S - keep remaining slots: a 1-D convolution over the slots
     of the stacked features [K; V] (2 x head_dim channels in, F channels out, kernel 21, same padding), ReLU,
     softmax over the R slots gives a mixing matrix A [F, R]; it is blended with the one-hot selection O [F, R] of
     the F remaining slots with the highest scores (in slot order) by a learned lambda (the reference starts it at
     0.5; here `lam=`, default LAMBDA_INIT = 0.05, near the selection: measured better, docs/runtime/kv-cache.md):
     W = (1 - lambda) O + lambda A, and K' = W K_R, V' = W V_R. lambda is clamped to [0, 1] (not in the
     reference), so every row of W is a convex combination: trained from 0.05 without it, lambdas went negative
     (W extrapolating away from the mixtures), which compounds over the cuts of a long text (SmolLM2-135M,
     lococo:256: perplexity 1,455 at 8,192 tokens against 43 at 2,048);
  3. the cut cache is [fused ; kept] (M slots): the kept slots last, in slot order, so the most recent tokens stay
     the last slots and a later cut's `local` rule keeps tokens, not mixtures. One compressor per layer, shared by
     its KV heads.
With keep_rate 1, or lambda 0, the result is exactly H2O's top-M selection (tested). Keys are mixed after RoPE.
The reference initialises the convolution with a standard normal; here with PyTorch's default (fan-in) init, so
the softmax starts near uniform rather than near one-hot (named in docs as a departure, as is lambda's start).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .policies import keep_order

KERNEL = 21
KEEP_RATE = 0.5
LAMBDA_INIT = 0.05


class Compressor(nn.Module):
    def __init__(self, head_dim: int, slots: int, keep_rate: float = KEEP_RATE, kernel: int = KERNEL, local: int = 0,
                 lam: float = LAMBDA_INIT):
        super().__init__()
        self.slots = slots
        self.keep = min(slots, max(0, round(slots * keep_rate)))
        if not 0 <= local <= self.keep:
            raise ValueError(f"local ({local}) must be within the {self.keep} kept slots")
        self.local = local          # the reference's local_len: the most recent slots are always kept
        self.fused = slots - self.keep
        self.conv = nn.Conv1d(2 * head_dim, max(self.fused, 1), kernel, padding=(kernel - 1) // 2)
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [B, S, H, D] (cache layout), scores [B, H, S] -> (k', v') [B, M, H, D]; S > M.
        valid [B, S] (1 for filled slots, which come first; the static graphs' buffers): the result equals the
        call on the filled slots alone when more than M are filled (unfilled slots are never kept or mixed, and
        they sit past the end of the remaining slots, where the convolution's zero padding would be)."""
        B, S, H, D = k.shape
        kh, vh = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)                     # [B, H, S, D]
        if valid is not None:
            vm = valid.to(torch.bool)[:, None, :].expand(B, H, S)                   # [B, H, S]
            scores = torch.where(vm, scores, torch.full_like(scores, -1.0))       # attention scores are >= 0
        if self.local:      # the `local` most recent filled slots rank above every score: always kept
            slot = torch.arange(S, device=k.device)[None]
            filled = valid.sum(-1, keepdim=True) if valid is not None else torch.full((B, 1), S, device=k.device)
            recent = (slot >= filled - self.local) & (slot < filled)                # [B, S]
            scores = torch.where(recent[:, None, :], torch.full_like(scores, 1e9), scores)
        order = scores.argsort(dim=-1, descending=True)                           # [B, H, S]
        kept = keep_order(order[..., :self.keep])
        rest = keep_order(order[..., self.keep:])                                  # [B, H, R] in slot order
        take = lambda x, idx: torch.gather(x, 2, idx[..., None].expand(*idx.shape, D))   # noqa: E731
        parts_k, parts_v = [], []
        if self.fused:
            kr, vr = take(kh, rest), take(vh, rest)                                # [B, H, R, D]
            R = kr.shape[2]
            live = None
            if valid is not None:
                live = torch.gather(vm, 2, rest)                                   # [B, H, R]
                kr, vr = kr * live[..., None], vr * live[..., None]
            x = torch.cat((kr, vr), dim=-1).reshape(B * H, R, 2 * D).transpose(1, 2)   # [BH, 2D, R]
            logit = F.relu(self.conv(x)).reshape(B, H, self.fused, R)
            if live is not None:
                logit = logit.masked_fill(~live[:, :, None, :], float("-inf"))
            a = torch.softmax(logit, dim=-1)
            rs = torch.gather(scores, 2, rest)                                     # scores of the remaining slots
            top = keep_order(rs.topk(self.fused, dim=-1).indices)                  # [B, H, F] positions in rest
            onehot = (top[..., None] == torch.arange(R, device=a.device)).to(a.dtype)               # [B, H, F, R]
            lam = self.lam.clamp(0.0, 1.0)      # W stays a convex combination: see the module's docstring
            w = (1 - lam) * onehot + lam * a
            parts_k.append(torch.matmul(w, kr))
            parts_v.append(torch.matmul(w, vr))
        parts_k.append(take(kh, kept))
        parts_v.append(take(vh, kept))
        kk, vv = torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)              # [B, H, M, D]
        return kk.permute(0, 2, 1, 3), vv.permute(0, 2, 1, 3)
