"""DSnoT ("Dynamic Sparse No Training"): training-free prune-and-grow refinement of a sparse mask.

Start from a magnitude or Wanda mask (per output row, unstructured or N:M). For each output row r
track the expected reconstruction error e_r = sum over pruned j of W_rj * E[x_j] (the mean output
the mask removes). While |e_r| is above a threshold, swap one pruned weight back in and one kept
weight out:
  grow   the pruned weight whose W_rj E[x_j] has the sign of e_r and the largest |W_rj E[x_j]| / Var[x_j]
         (the reference sorts by that variance-scaled value, power `var_power`);
  prune  unstructured: the kept weight with the opposite sign of W_rj E[x_j] and the lowest Wanda score;
         N:M: the kept weight with the lowest Wanda score in the grown weight's M-block (keeps the pattern).
Which swaps are taken is the `rule`:
  reference  the reference's default: unstructured rows take every swap while |e_r| is above the threshold
             (`--without_same_sign`, so e_r may overshoot zero and the next swap works from the other side);
             N:M rows take swaps while e_r keeps its initial sign. Each row returns the lowest-|e_r| mask of
             its trajectory (the reference returns the last one), so |e_r| never ends above its start.
  descent    a swap is taken only if it lowers |e_r|; a row stops at its first refused swap.
  variance   descent, and the swap must also lower e_r^2 + sum over pruned j of W_rj^2 Var[x_j] (the
             row's expected squared output error with the cross-channel terms dropped): a grown weight
             of a noisy channel, or a pruned weight carrying much variance, is refused even if it
             fixes the mean. Not in the reference (an accelc addition; measured in docs/passes/pruning.md).
  exact      descent, and the swap must also lower the row's exact calibration reconstruction error
             E[(sum over pruned j of W_rj x_j)^2] = w_p^T E[x x^T] w_p (w_p: the row's pruned weights), from the
             input's Gram matrix: the objective DSnoT's e_r approximates by its mean part. DSnoT still proposes
             every swap; this only refuses the ones that make the row's output error worse. Not in the
             reference (an accelc addition; measured in docs/passes/pruning.md).
Every row also stops when |e_r| falls under the threshold or after `max_cycles` swaps (by default the
reference's budget of 50 swaps per 4096-wide row, scaled to the row's width: 7 for 576 inputs).
Weights never change, only the mask: sparsity stays fixed.
Reference: github.com/zyxxmu/DSnoT lib/prune.py (prune_DSnoT). Differences: E[x], Var[x] are taken over
all calibration tokens (per token, not summed per 2048-token sample, so the default threshold 5e-5 is
the reference's 0.1 / 2048); Var[x] is the variance over all calibration tokens, where the reference
(lib/layerwrapper.py) averages each window's own variance (about its window mean), which leaves out the
spread of the window means (`var=reference` uses the reference's definition); candidate lists hold only
weights of the helpful sign (the reference can run its pointers into the other sign's entries); best-so-far
masks under the reference rule.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...compiler.errors import InputError
from ...compiler.pass_base import PassResult
from .. import calibration as cal
from .prune_options import check_nm, check_ratio, decoder_linears, parse_spec
from .sparsity import initial_score, keep_mask, record_sparsity, wanda_score

log = logging.getLogger(__name__)
RULES = ("reference", "descent", "variance", "exact")
VARIANCES = ("tokens", "reference")       # Var[x] over all calibration tokens | mean of per-window variances
REFERENCE_CYCLES, REFERENCE_COLS = 50, 4096


def _sorted_candidates(valid: torch.Tensor, key: torch.Tensor, descending: bool):
    """Per row: column indices of `valid` entries sorted by key, and how many there are."""
    fill = float("-inf") if descending else float("inf")
    order = torch.sort(torch.where(valid, key, torch.full_like(key, fill)), dim=1, descending=descending,
                       stable=True).indices
    return order, valid.sum(1)


@torch.no_grad()
def dsnot_refine(weight: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                 prune_score: torch.Tensor, n: int = 0, m: int = 0, max_cycles: int = 50,
                 threshold: float = 5e-5, var_power: float = 1.0, rule: str = "descent",
                 gram: torch.Tensor | None = None):
    """-> (new keep mask, |error| per row before, |error| per row after, swaps per row).

    `gram` is E[x x^T] of the input [cols, cols], needed by rule "exact" only."""
    if rule == "exact" and gram is None:
        raise ValueError("dsnot_refine: rule 'exact' needs the input Gram matrix")
    W = weight.float()
    rows, cols = W.shape
    r = torch.arange(rows)
    metric = W * mean.reshape(1, -1)                          # expected contribution of each weight
    keep = keep.clone()
    keep0 = keep.clone()
    err = (metric * (~keep)).sum(1)
    err0 = err.clone()
    key = metric / var.clamp_min(1e-12).pow(var_power).reshape(1, -1)
    Wv = W * W * var.reshape(1, -1) if rule == "variance" else None    # each weight's share of Var[output]
    if rule == "exact":
        C = gram.float()
        G = (W * (~keep)) @ C                                  # G[r] = C w_p(r): the exact error's gradient / 2
        Cd = C.diagonal()
    grow_pos, n_gpos = _sorted_candidates(~keep & (metric > 0), key, True)
    grow_neg, n_gneg = _sorted_candidates(~keep & (metric < 0), key, False)
    if not m:
        prune_pos, n_ppos = _sorted_candidates(keep & (metric > 0), prune_score, False)
        prune_neg, n_pneg = _sorted_candidates(keep & (metric < 0), prune_score, False)
    ptr = torch.zeros(rows, 4, dtype=torch.long)              # grow+, grow-, prune+, prune-
    swaps = torch.zeros(rows, dtype=torch.long)
    active = err.abs() > threshold
    track = rule == "reference"                               # best-so-far mask per row (module docstring)
    best_keep, best = (keep.clone(), err.abs()) if track else (None, None)
    sign0 = torch.sign(err)
    last = cols - 1
    for _ in range(max_cycles):
        if not bool(active.any()):
            break
        up = err > 0                                           # too little output kept: grow +, prune -
        gp, gn = ptr[:, 0], ptr[:, 1]
        gi = torch.where(up, grow_pos[r, gp.clamp(max=last)], grow_neg[r, gn.clamp(max=last)])
        ok = torch.where(up, gp < n_gpos, gn < n_gneg)
        if m:
            start = gi - gi % m
            block = start.unsqueeze(1) + torch.arange(m).unsqueeze(0)                  # [rows, m]
            cand = (keep & keep0).gather(1, block)             # grown weights are never pruned again
            score = torch.where(cand, prune_score.gather(1, block), torch.full((rows, m), float("inf")))
            pi = start + score.argmin(1)
            ok &= cand.any(1)
        else:
            pp, pn = ptr[:, 2], ptr[:, 3]
            pi = torch.where(up, prune_neg[r, pn.clamp(max=last)], prune_pos[r, pp.clamp(max=last)])
            ok &= torch.where(up, pn < n_pneg, pp < n_ppos)
        after = err + metric[r, pi] - metric[r, gi]
        if rule == "descent":
            do = active & ok & (after.abs() < err.abs())
        elif rule == "variance":                               # and the diagonal variance it adds is paid for
            dvar = Wv[r, pi] - Wv[r, gi]
            do = active & ok & (after.abs() < err.abs()) & (after * after + dvar < err * err)
        elif rule == "exact":                                  # and w_p^T C w_p goes down (w_p: pruned weights)
            wg, wp = W[r, gi], W[r, pi]
            dexact = (2 * (wp * G[r, pi] - wg * G[r, gi]) + wg * wg * Cd[gi] + wp * wp * Cd[pi]
                      - 2 * wg * wp * C[gi, pi])
            do = active & ok & (after.abs() < err.abs()) & (dexact < 0)
        elif m:                                                # reference N:M: e keeps its initial sign
            do = active & ok & (torch.sign(after) == sign0)
        else:                                                  # reference unstructured: every swap
            do = active & ok
        rd = r[do]
        keep[rd, gi[do]] = True
        keep[rd, pi[do]] = False
        err = torch.where(do, after, err)
        if rule == "exact" and bool(do.any()):
            G[rd] += W[rd, pi[do]].unsqueeze(1) * C[pi[do]] - W[rd, gi[do]].unsqueeze(1) * C[gi[do]]
        swaps += do.long()
        ptr[:, 0] += (do & up).long()
        ptr[:, 1] += (do & ~up).long()
        if not m:
            ptr[:, 2] += (do & ~up).long()
            ptr[:, 3] += (do & up).long()
        active = do & (err.abs() > threshold)
        if track:
            better = err.abs() < best
            best = torch.where(better, err.abs(), best)
            best_keep[better] = keep[better]
    if not track:
        return keep, err0.abs(), err.abs(), swaps
    changed = (best_keep != keep0).sum(1) // 2                 # swaps that the returned mask keeps
    return best_keep, err0.abs(), best, changed


def cycles_for(cols: int, max_cycles: int | None) -> int:
    """The swap budget of a row with `cols` inputs: max_cycles if given, else the reference's default of 50
    swaps per row of LLaMA-7B's 4096 inputs (1.2% of the row), scaled to this width (7 for 576 inputs)."""
    return max_cycles if max_cycles is not None else max(1, round(REFERENCE_CYCLES * cols / REFERENCE_COLS))


@dataclass(frozen=True)
class DsnotConfig(cal.CalibrationConfig):
    ratio: float = 0.6                # fraction of weights masked in every row
    n: int = 0                        # N:M pattern (n kept of every m); m = 0: unstructured
    m: int = 0
    init: str = "wanda"               # initial mask: "wanda" or "magnitude"
    mlp: bool = False                 # refine the MLP projections too (the reference skips them)
    max_cycles: int | None = None     # swaps per row; None: the reference's 50 per 4096 inputs, scaled (cycles_for)
    threshold: float = 5e-5
    var_power: float = 1.0
    rule: str = "descent"             # which swaps are taken: reference, descent, variance or exact (module docstring)
    skip: int = 0                     # leading positions of every window left out of the statistics
    var: str = "tokens"               # Var[x]: over all calibration tokens, or "reference": mean per-window variance

    def __post_init__(self):
        check_ratio(self.ratio, "sparsity")
        if self.m:
            check_nm(self.n, self.m)
        if self.init not in ("wanda", "magnitude"):
            raise InputError(f"dsnot: init must be wanda or magnitude, got '{self.init}'")
        if self.rule not in RULES:
            raise InputError(f"dsnot: rule must be one of {', '.join(RULES)}, got '{self.rule}'")
        if (self.max_cycles is not None and self.max_cycles < 0) or self.threshold < 0 or self.var_power < 0:
            raise InputError("dsnot: max_cycles, threshold and var_power must be >= 0")
        self.check_calibration("dsnot")
        if self.var not in VARIANCES:
            raise InputError(f"dsnot: var must be one of {', '.join(VARIANCES)}, got '{self.var}'")
        if not 0 <= self.skip < self.seqlen:
            raise InputError(f"dsnot: skip must be in [0, seqlen), got {self.skip} with seqlen {self.seqlen}")


class DsnotPass(cal.CalibratedPass):
    """Wanda/magnitude masks refined by DSnoT prune-and-grow, sequentially layer by layer."""

    name = "prune-dsnot"
    config_class = DsnotConfig

    @torch.no_grad()
    def prune(self, bundle, ids) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        before = ad.num_parameters()
        per_layer: dict[str, float] = {}
        refine = {"rows": 0, "error_before": 0.0, "error_after": 0.0, "swaps": 0}
        if cfg.ratio == 0:
            rec = record_sparsity(bundle, "dsnot", cfg, per_layer, before)
            return PassResult(False, {"mask_sparsity": rec["mask_sparsity"]})

        def refined(name: str) -> bool:
            return cfg.mlp or not name.startswith("mlp.")

        def on_layer(run):
            for name, lin in decoder_linears(ad, run.index).items():
                st = run.stats[name]
                keep = keep_mask(initial_score(cfg.init, lin.weight, st), cfg.ratio, cfg.n, cfg.m)
                if refined(name):
                    tail = st.tail()
                    var = tail.window_var if cfg.var == "reference" else tail.var
                    keep, e0, e1, sw = dsnot_refine(lin.weight, keep, tail.mean, var, wanda_score(lin.weight, st),
                                                    cfg.n, cfg.m, cycles_for(lin.weight.shape[1], cfg.max_cycles),
                                                    cfg.threshold, cfg.var_power, cfg.rule,
                                                    tail.gram_mean if cfg.rule == "exact" else None)
                    refine["rows"] += e0.numel()
                    refine["error_before"] += float(e0.sum())
                    refine["error_after"] += float(e1.sum())
                    refine["swaps"] += int(sw.sum())
                lin.weight.mul_(keep)
                per_layer[f"layers.{run.index}.{name}"] = round(1 - keep.float().mean().item(), 6)
            return True

        cal.run_layerwise(bundle.model, ad.layers, ids, lambda i: decoder_linears(ad, i), on_layer, desc="dsnot",
                          skip=cfg.skip, gram=refined if cfg.rule == "exact" else None)
        rows = max(refine["rows"], 1)
        cycles = cfg.max_cycles if cfg.max_cycles is not None else f"{REFERENCE_CYCLES} per {REFERENCE_COLS} inputs"
        extra = {"init": cfg.init, "mlp_refined": cfg.mlp, "rule": cfg.rule, "var": cfg.var, "max_cycles": cycles,
                 "threshold": cfg.threshold,
                 "refined_rows": refine["rows"], "swaps": refine["swaps"],
                 "mean_row_error_before": refine["error_before"] / rows,
                 "mean_row_error_after": refine["error_after"] / rows}
        rec = record_sparsity(bundle, "dsnot", cfg, per_layer, before, extra)
        return PassResult(True, {"mask_sparsity": rec["mask_sparsity"], "pattern": rec["pattern"],
                                 "swaps": refine["swaps"], "row_error_before": round(extra["mean_row_error_before"], 6),
                                 "row_error_after": round(extra["mean_row_error_after"], 6)})


def build(method: str, arg: str, options) -> list:
    """PRUNE_METHODS factory: 'dsnot:RATIO|N:M[,init=wanda|magnitude,mlp=BOOL,rule=descent|reference|variance|exact,
    var=tokens|reference,cycles=,threshold=,samples=,...]'."""
    keys = {"init": str, "mlp": bool, "rule": str, "cycles": int, "threshold": float, "var_power": float,
            "samples": int, "seqlen": int, "seed": int, "skip": int, "var": str}
    spec = parse_spec(method, arg, keys, allow_nm=True)
    if "cycles" in spec:
        spec["max_cycles"] = spec.pop("cycles")
    return [DsnotPass(DsnotConfig(calib=getattr(options, "calib", None), **spec))]
