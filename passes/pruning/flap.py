"""FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models") on MLP
channels: a fluctuation score, adaptive per-block ratios from standardised scores, and a bias that
compensates for the removed channels.

Score (WIFV, the paper's default): channel j of a block's MLP (input j of down_proj) scores
    S_j = Var[h_j] * ||W_down[:, j]||^2
with Var the sample variance of h_j over the calibration tokens and h the input of down_proj: a channel whose
input barely moves away from its mean can be replaced by that mean. `metric=ifv` is Var[h_j] alone;
`metric=wifn` is mean_i |W_down[i, j]| ||h_j|| (the paper's ablations).
Allocation (`alloc=adaptive`, the paper's): each block's scores are standardised, (S - mean) / std over its
channels, and one global threshold keeps the round(total * (1 - ratio)) highest of them over all blocks, so
the global fraction removed is the ratio while blocks lose different shares. Kept counts are then rounded
per block as CFSP's are (`round`, auto: multiples of 64 on blocks of >= 1024 channels), keeping the total.
`alloc=uniform` removes the ratio in every block instead.
Compensation (`bias=true`): the removed channels' mean contribution, W_down[:, removed] @ E[h_removed], is
added to down_proj's bias (created if the model has none: the exported graph calls the module, so it carries
the bias). Every statistic is measured on the dense model in one calibration pass, as the reference does.
Reference: github.com/CASIA-IVA-Lab/FLAP lib/prune.py `prune_flap`, lib/layerwrapper.py `BiasGPT`.
Departures: MLP channels only (the reference also removes attention heads, under one threshold shared with
the channels: its AL-AM structure); the variance is the plain sample variance over all calibration tokens
(the reference's running update counts windows, not tokens, and leaves out the first window's own
variance); kept counts are rounded (round=1 turns it off); each block keeps at least one channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...compiler.errors import InputError
from ...compiler.pass_base import PassResult
from .. import calibration as cal
from .cfsp import shrink_mlp
from .mlp_channels import (base_record, finish, global_counts, round_counts, standardise, top_channels,
                           uniform_counts, unchanged)
from .prune_options import check_ratio, parse_spec

METRICS = ("wifv", "ifv", "wifn")
ALLOCATIONS = ("adaptive", "uniform")


def sample_variance(stats: cal.InputStats) -> torch.Tensor:
    """Var[h_j] over the calibration tokens with Bessel's correction (n - 1)."""
    n = stats.tokens
    return stats.var * (n / max(n - 1, 1))


def flap_scores(down: torch.Tensor, stats: cal.InputStats, metric: str = "wifv") -> torch.Tensor:
    """Channel scores [channels] of one block from down_proj's weight [hidden, channels] and its input stats."""
    w = down.float()
    if metric == "wifn":
        return (w.abs() * stats.sq_mean.sqrt().reshape(1, -1)).mean(0)
    var = sample_variance(stats)
    return var if metric == "ifv" else var * w.pow(2).sum(0)


def compensation(down: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """W_down[:, removed] @ E[h_removed]: [hidden], what the removed channels add on average."""
    removed = torch.ones(down.shape[1], dtype=torch.bool)
    removed[keep] = False
    return down.float()[:, removed] @ mean.float()[removed]


def add_bias(lin: nn.Linear, b: torch.Tensor) -> None:
    """lin.bias += b; a Linear without a bias gets one (nn.Linear's forward adds it when it is set)."""
    b = b.to(lin.weight.dtype)
    if lin.bias is None:
        lin.bias = nn.Parameter(b.clone(), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.data += b


@dataclass(frozen=True)
class FlapConfig(cal.CalibrationConfig):
    ratio: float = 0.3                # fraction of all MLP channels removed
    metric: str = "wifv"              # wifv (the paper's), ifv, wifn
    alloc: str = "adaptive"           # adaptive: global threshold on standardised scores; uniform: ratio per block
    bias: bool = True                 # compensate the removed channels' mean output in down_proj's bias
    round: int = 0                    # kept channels per block rounded to a multiple (0: auto, as cfsp)

    def __post_init__(self):
        check_ratio(self.ratio)
        if self.metric not in METRICS:
            raise InputError(f"flap: metric must be one of {', '.join(METRICS)}, got '{self.metric}'")
        if self.alloc not in ALLOCATIONS:
            raise InputError(f"flap: alloc must be adaptive or uniform, got '{self.alloc}'")
        if self.round < 0:
            raise InputError("flap: round >= 0 (0: auto)")
        self.check_calibration("flap")


class FlapPass(cal.CalibratedPass):
    """Remove MLP channels by fluctuation, adaptively across blocks, and compensate them with a bias."""

    name = "prune-flap"
    config_class = FlapConfig

    def measure(self, bundle, ids) -> list[cal.InputStats]:
        """Statistics of every block's down_proj input, on the dense model."""
        ad = bundle.adapter
        stats: list[cal.InputStats] = [None] * ad.num_layers

        def on_layer(run):
            stats[run.index] = run.stats["down"]
            return False

        cal.run_layerwise(bundle.model, ad.layers, ids, lambda i: {"down": ad.mlp_proj(i)["down"]}, on_layer,
                          desc="flap calibration")
        return stats

    @torch.no_grad()
    def select(self, bundle, ids) -> tuple[list[torch.Tensor], list[cal.InputStats]]:
        """Indices of the channels each block keeps, and the statistics that chose them."""
        cfg, ad = self.config, bundle.adapter
        stats = self.measure(bundle, ids)
        scores = [flap_scores(ad.mlp_proj(i)["down"].weight, stats[i], cfg.metric) for i in range(ad.num_layers)]
        sizes = [s.numel() for s in scores]
        if cfg.alloc == "adaptive":
            counts = round_counts(global_counts([standardise(s) for s in scores], cfg.ratio), sizes, cfg.round)
        else:
            counts = uniform_counts(sizes, cfg.ratio, cfg.round)
        return [top_channels(s, k) for s, k in zip(scores, counts)], stats

    @torch.no_grad()
    def prune(self, bundle, ids) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        rec = base_record(bundle, "flap", cfg.ratio, cfg.round)
        if cfg.ratio == 0:
            return unchanged(bundle, rec)
        keep, stats = self.select(bundle, ids)
        bias_norm = []
        for i, k in enumerate(keep):
            b = compensation(ad.mlp_proj(i)["down"].weight, stats[i].mean, k) if cfg.bias else None
            shrink_mlp(ad.mlp(i), k)
            if b is not None:
                add_bias(ad.mlp_proj(i)["down"], b)
                bias_norm.append(round(float(b.norm()), 6))
        return finish(bundle, rec, metric=cfg.metric, alloc=cfg.alloc, bias=cfg.bias,
                      keep_fraction=[round(k.numel() / n, 6) for k, n in zip(keep, rec["intermediate_before"])],
                      compensation_norm=bias_norm or None)


def build(method: str, arg: str, options) -> list:
    """PRUNE_METHODS factory: 'flap:RATIO[,metric=wifv|ifv|wifn,alloc=adaptive|uniform,bias=BOOL,round=,samples=,...]'."""
    keys = {"metric": str, "alloc": str, "bias": bool, "round": int, "samples": int, "seqlen": int, "seed": int}
    spec = parse_spec(method, arg, keys, allow_nm=False)
    return [FlapPass(FlapConfig(calib=getattr(options, "calib", None), **spec))]
