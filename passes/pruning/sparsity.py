"""Unstructured / N:M weight sparsity: the mask maths shared with DSnoT, and the magnitude and Wanda passes.

Masks are per output row (each row of a Linear's weight keeps the same number of weights, or N of
every M consecutive input weights). They are applied by zeroing weights; storage stays dense.
Wanda's score is |W_ij| * ||X_j||, with ||X_j|| the L2 norm of input channel j over the
calibration tokens (computed here as sqrt(E[x_j^2]), which orders each row identically).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassResult
from .. import calibration as cal
from .prune_options import check_nm, check_ratio, decoder_linears, parse_spec, zero_count

log = logging.getLogger(__name__)


# -- mask maths ---------------------------------------------------------------------------------
def row_keep_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep mask [rows, cols]: prune the round(cols * ratio) lowest-scoring weights of every row."""
    rows, cols = score.shape
    k = pruned_per_row(cols, ratio)
    keep = torch.ones_like(score, dtype=torch.bool)
    if k:
        idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, idx, False)
    return keep


def pruned_per_row(cols: int, ratio: float) -> int:
    return int(round(cols * ratio))


def nm_keep_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with exactly n kept weights in every m consecutive input weights of each row."""
    rows, cols = score.shape
    if cols % m:
        raise PreconditionError(f"N:M {n}:{m} needs the input size ({cols}) to be a multiple of {m}")
    blocks = score.reshape(rows, cols // m, m)
    top = torch.topk(blocks, n, dim=2).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(2, top, True)
    return keep.reshape(rows, cols)


def keep_mask(score: torch.Tensor, ratio: float, n: int = 0, m: int = 0) -> torch.Tensor:
    return nm_keep_mask(score, n, m) if m else row_keep_mask(score, ratio)


def wanda_score(weight: torch.Tensor, stats: cal.InputStats) -> torch.Tensor:
    return weight.abs() * stats.sq_mean.sqrt().reshape(1, -1)


def initial_score(init: str, weight: torch.Tensor, stats: cal.InputStats | None) -> torch.Tensor:
    return weight.abs().float() if init == "magnitude" else wanda_score(weight.float(), stats)


def is_nm(keep: torch.Tensor, n: int, m: int) -> bool:
    rows, cols = keep.shape
    return bool((keep.reshape(rows, cols // m, m).sum(2) == n).all())


# -- passes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparsityConfig(cal.CalibrationConfig):
    method: str = "wanda"             # "magnitude" or "wanda"
    ratio: float = 0.5                # fraction of weights zeroed in every row
    n: int = 0                        # N:M pattern (n kept of every m); m = 0: unstructured
    m: int = 0

    def __post_init__(self):
        if self.method not in ("magnitude", "wanda"):
            raise InputError(f"unknown sparsity method '{self.method}' (magnitude or wanda)")
        check_ratio(self.ratio, "sparsity")
        if self.m:
            check_nm(self.n, self.m)
        self.check_calibration(self.method)


def record_sparsity(bundle, method: str, cfg, per_layer: dict, params_before: int, extra: dict | None = None) -> dict:
    zeros, total = zero_count(bundle.adapter)
    rec = {"method": method, "ratio": round(cfg.ratio, 6), "pattern": f"{cfg.n}:{cfg.m}" if cfg.m else "unstructured",
           "mask_sparsity": round(zeros / total, 6), "parameters_before": params_before,
           "parameters_after": bundle.adapter.num_parameters(), "nonzero_linear_weights": total - zeros,
           "per_layer_sparsity": per_layer, **(extra or {})}
    bundle.records["pruning"] = rec
    return rec


class SparsityPass(Pass):
    """Magnitude or Wanda masks (per output row, unstructured or N:M) on every decoder Linear."""

    name = "sparsity"
    config_class = SparsityConfig

    def call(self, bundle) -> PassResult:
        ids = None
        if self.config.method == "wanda" and self.config.ratio > 0:
            ids = cal.calibration_ids(bundle, self.config.samples, self.config.seqlen, self.config.seed,
                                      self.config.calib)
        return self.prune(bundle, ids)

    @torch.no_grad()
    def prune(self, bundle, ids: torch.Tensor | None) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        before = ad.num_parameters()
        per_layer: dict[str, float] = {}
        if cfg.ratio == 0:
            rec = record_sparsity(bundle, cfg.method, cfg, per_layer, before)
            return PassResult(False, {"mask_sparsity": rec["mask_sparsity"]})

        def prune_layer(i, stats):
            for name, lin in decoder_linears(ad, i).items():
                score = initial_score(cfg.method, lin.weight, stats.get(name) if stats else None)
                keep = keep_mask(score, cfg.ratio, cfg.n, cfg.m)
                lin.weight.mul_(keep)
                per_layer[f"layers.{i}.{name}"] = round(1 - keep.float().mean().item(), 6)

        if cfg.method == "magnitude":
            for i in range(ad.num_layers):
                prune_layer(i, None)
        else:
            def on_layer(run):
                prune_layer(run.index, run.stats)
                return True
            cal.run_layerwise(bundle.model, ad.layers, ids, lambda i: decoder_linears(ad, i), on_layer,
                              desc=cfg.method)
        rec = record_sparsity(bundle, cfg.method, cfg, per_layer, before)
        return PassResult(True, {"mask_sparsity": rec["mask_sparsity"], "pattern": rec["pattern"]})


class MagnitudePruningPass(SparsityPass):
    name = "prune-magnitude"


class WandaPruningPass(SparsityPass):
    name = "prune-wanda"


def build(method: str, arg: str, options) -> list:
    """PRUNE_METHODS factory for 'magnitude:RATIO|N:M' and 'wanda:RATIO|N:M[,samples=,seqlen=,seed=]'."""
    keys = {} if method == "magnitude" else {"samples": int, "seqlen": int, "seed": int}
    spec = parse_spec(method, arg, keys, allow_nm=True)
    cls = MagnitudePruningPass if method == "magnitude" else WandaPruningPass
    return [cls(SparsityConfig(method=method, calib=getattr(options, "calib", None), **spec))]
