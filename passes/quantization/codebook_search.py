"""The maths of codebook quantization (AQLM): k-means initialisation, code search, codebook updates.

Shapes: W [out, in] a layer's weight, H = X^T X / n [in, in] the Gram matrix of its calibration
inputs, codes [out, n_groups, M] (int64 here), codebooks [M, K, G], scales [out, 1].
The layer objective is AQLM's output error  ||X W^T - X Ŵ^T||^2 / n = tr((Ŵ - W) H (Ŵ - W)^T).
"""
from __future__ import annotations

import math

import torch

from .codebook_linear import dequantize


def output_error(w_hat: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row output error [out]: diag((Ŵ - W) H (Ŵ - W)^T)."""
    e = w_hat - w
    return ((e @ h) * e).sum(-1)


def row_scales(w: torch.Tensor) -> torch.Tensor:
    """AQLM's per-output-row scale: the row norm, rounded to fp16 (its stored precision)."""
    return (w.norm(dim=1, keepdim=True) + 1e-9).half().float()


# -- initialisation: (weighted) residual k-means -------------------------------------------------------------
def weighted_kmeans(x: torch.Tensor, wt: torch.Tensor, k: int, iters: int, gen: torch.Generator,
                    max_points: int) -> torch.Tensor:
    """Centroids [k, d] minimising sum_i sum_j wt_ij (x_ij - c_{a(i),j})^2 (Lloyd's algorithm).

    x, wt [n, d]; fitted on at most `max_points` rows sampled at random; empty clusters are
    re-seeded from random points.
    """
    n = x.shape[0]
    if n > max_points:
        sel = torch.randperm(n, generator=gen)[:max_points]
        x, wt = x[sel], wt[sel]
        n = max_points
    c = x[torch.randperm(n, generator=gen)[:k]].clone() if n >= k else \
        x[torch.randint(0, n, (k,), generator=gen)].clone() + 1e-4 * torch.randn(k, x.shape[1], generator=gen)
    wx = wt * x
    for _ in range(iters):
        a = assign(x, wt, c)
        num = torch.zeros_like(c).index_add_(0, a, wx)
        den = torch.zeros_like(c).index_add_(0, a, wt)
        empty = den.sum(1) == 0
        c = torch.where(den > 0, num / den.clamp_min(1e-20), c)
        if empty.any():
            c[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=gen)]
    return c


def assign(x: torch.Tensor, wt: torch.Tensor, c: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Nearest centroid under the weighted distance, [n] int64 (chunked to bound memory)."""
    out = torch.empty(x.shape[0], dtype=torch.int64)
    c2t = (c * c).T
    for s in range(0, x.shape[0], chunk):
        xs, ws = x[s:s + chunk], wt[s:s + chunk]
        out[s:s + chunk] = torch.addmm(ws @ c2t, ws * xs, c.T, alpha=-2).argmin(1)
    return out


def init_codebooks(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, m: int, k: int, g: int, iters: int,
                   gen: torch.Generator, weighted: bool = True, max_points: int = 64 * 256):
    """Residual k-means on the scaled weight groups -> (codes [out, ng, M] int64, codebooks [M, K, G]).

    With `weighted`, each coordinate of a group counts by the calibration energy of its input
    (diag H) times the row's squared scale: the diagonal part of the output error.
    """
    out_f, in_f = w.shape
    ng = in_f // g
    resid = (w / scales).reshape(out_f * ng, g).clone()
    if weighted:
        d = h.diagonal().clamp_min(1e-12)
        wt = (d.reshape(1, ng, g) * scales.reshape(out_f, 1, 1) ** 2).reshape(out_f * ng, g)
        wt = wt / wt.mean()
    else:
        wt = torch.ones_like(resid)
    codes, books = [], []
    for _ in range(m):
        c = weighted_kmeans(resid, wt, k, iters, gen, max_points)
        a = assign(resid, wt, c)
        resid -= c[a]
        codes.append(a.reshape(out_f, ng))
        books.append(c)
    return torch.stack(codes, -1), torch.stack(books)


# -- code search: beam search / greedy coordinate descent on the output error ------------------------------
@torch.no_grad()
def beam_search(w: torch.Tensor, h: torch.Tensor, codes: torch.Tensor, books: torch.Tensor,
                scales: torch.Tensor, beam: int = 1) -> torch.Tensor:
    """Re-choose every code, one (group, codebook) slot at a time, minimising tr(E H E^T).

    All output rows are searched in parallel (their errors are independent). For each slot the
    change of a row's error for every one of the K candidates is (Δ = s_r (c_k - c_old), u = (E H)_g)
        2 Δ·u + Δ^T H_gg Δ
    and each row keeps its `beam` best hypotheses. beam=1 is greedy coordinate descent; the
    current codes are among the candidates, so a slot never gets worse.
    """
    out_f, ng, m = codes.shape
    _, k, g = books.shape
    s = scales.reshape(1, out_f, 1)
    rows = torch.arange(out_f)
    bc = codes.unsqueeze(0).clone()                                  # [b, out, ng, M]
    err = (dequantize(codes, books, scales) - w).unsqueeze(0)        # [b, out, in]
    loss = output_error(err[0] + w, w, h).unsqueeze(0)              # [b, out]
    for gi in range(ng):
        sl = slice(gi * g, (gi + 1) * g)
        h_col, h_gg = h[:, sl], h[sl, sl]
        for j in range(m):
            cb = books[j]                                                # [K, G]
            cbh = cb @ h_gg                                              # [K, G]
            chc = (cbh * cb).sum(-1)                                     # [K]
            old = cb[bc[:, :, gi, j]]                                    # [b, out, G]
            u = err @ h_col                                              # [b, out, G]
            lin = u @ cb.T - (old * u).sum(-1, keepdim=True)             # [b, out, K]
            quad = chc - 2 * (old @ cbh.T) + ((old @ h_gg) * old).sum(-1, keepdim=True)
            cand = loss.unsqueeze(-1) + 2 * s * lin + s * s * quad       # [b, out, K]
            nb = cand.shape[0]
            flat = cand.permute(1, 0, 2).reshape(out_f, nb * k)          # [out, b*K]
            keep = min(beam, nb * k)
            best, idx = flat.topk(keep, dim=1, largest=False) if keep > 1 else flat.min(1, keepdim=True)
            parent, code = (idx // k).T, (idx % k).T                     # [keep, out]
            if nb > 1 or keep > 1:                                       # re-arrange the beam by parent
                bc, err, old = bc[parent, rows], err[parent, rows], old[parent, rows]
            bc[:, :, gi, j] = code
            err[:, :, sl] += s * (cb[code] - old)
            loss = best.T.contiguous()
    return bc[loss.argmin(0), rows]


@torch.no_grad()
def l2_encode(target: torch.Tensor, codes: torch.Tensor, books: torch.Tensor, sweeps: int = 2) -> torch.Tensor:
    """Codes for groups `target` [n, G] (already divided by the row scale), starting from `codes`
    [n, M]: coordinate descent over codebooks on ||target - sum_m books[m, c_m]||^2. Exact nearest
    neighbour for M = 1; never worse than the starting codes."""
    n, m = codes.shape
    codes = codes.clone()
    recon = sum(books[j][codes[:, j]] for j in range(m))
    norms = (books * books).sum(-1)                                     # [M, K]
    for _ in range(sweeps if m > 1 else 1):
        for j in range(m):
            resid = target - recon + books[j][codes[:, j]]
            new = (norms[j] - 2 * resid @ books[j].T).argmin(1)
            recon = recon + books[j][new] - books[j][codes[:, j]]
            codes[:, j] = new
    return codes



def directional_encode(target: torch.Tensor, codes: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """l2_encode, then force a change on groups it leaves as they were (PV-Tuning's forced code update).

    A stuck group [G] with residual r = target - recon changes the one code (m, k) that minimises
    ||target - recon'||^2 among the moves along the update direction, <r, books[m, k] - books[m, old_m]> > 0.
    A group with no such move (r = 0, or no codeword along r) keeps its codes.
    """
    new = l2_encode(target, codes, books)
    stuck = (new == codes).all(-1).nonzero().squeeze(-1)
    if stuck.numel() == 0:
        return new
    m, k, _ = books.shape
    old = codes[stuck]                                                   # [s, M]
    recon = sum(books[j][old[:, j]] for j in range(m))
    r = target[stuck] - recon                                            # [s, G]
    olds = torch.stack([books[j][old[:, j]] for j in range(m)], 1)       # [s, M, G]
    base = r.unsqueeze(1) + olds                                         # residual with code m removed
    err = (base * base).sum(-1, keepdim=True) - 2 * torch.einsum("smg,mkg->smk", base, books) \
        + (books * books).sum(-1)                                        # [s, M, K]
    gain = torch.einsum("sg,mkg->smk", r, books) - (r.unsqueeze(1) * olds).sum(-1, keepdim=True)
    err = err.masked_fill(gain <= 0, float("inf")).reshape(len(stuck), m * k)
    best, idx = err.min(1)
    ok = torch.isfinite(best)
    rows = stuck[ok]
    new[rows, idx[ok] // k] = idx[ok] % k
    return new

# -- codebook and scale updates for fixed codes (AQLM's Adam phase) ------------------------------------------
@torch.enable_grad()
def refine_codebooks(w: torch.Tensor, h: torch.Tensor, codes: torch.Tensor, books: torch.Tensor,
                     scales: torch.Tensor, steps: int, lr: float):
    """Adam on codebooks and scales minimising tr(E H E^T); keeps the best iterate (never worse)."""
    if steps <= 0:
        return books, scales
    books = books.clone().requires_grad_(True)
    sc = scales.clone().requires_grad_(True)
    opt = torch.optim.Adam([books, sc], lr=lr)
    ref = output_error(torch.zeros_like(w), w, h).sum().clamp_min(1e-20)
    best = (math.inf, books.detach().clone(), scales.clone())
    for _ in range(steps + 1):
        loss = output_error(dequantize(codes, books, sc), w, h).sum() / ref
        if loss.item() < best[0]:
            best = (loss.item(), books.detach().clone(), sc.detach().clone())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return best[1], best[2]
