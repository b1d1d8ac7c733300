"""Wanda-SP: Wanda's |W| x ||X|| score summed over each MLP channel's weights, the structured baseline of the
FLAP and CFSP papers. Intermediate channel j of a block scores

    S_j = sum_i |W_down[i, j]| ||h_j||  +  sum_k (|W_gate[j, k]| + |W_up[j, k]|) ||x_k||

with x the MLP's input (what gate_proj and up_proj read), h the input of down_proj and ||.|| the L2 norm
of an input feature over the calibration tokens (sqrt(E[x^2]) here: a constant factor, the same for every
term). Every block loses the same fraction of its channels (its lowest scores), block by block, each
block measured on the outputs of the blocks already pruned before it (as the reference and Wanda do).
Reference: github.com/CASIA-IVA-Lab/FLAP lib/prune.py `prune_wanda_sp`, which scores the MLP from
down_proj alone (the first term; mean over i instead of sum) and also removes attention heads:
`weights=down` reproduces its MLP score; heads are not pruned here (MLP channels only, as CFSP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...compiler.errors import InputError
from ...compiler.pass_base import PassResult
from .. import calibration as cal
from .cfsp import shrink_mlp
from .mlp_channels import base_record, finish, top_channels, uniform_counts, unchanged
from .prune_options import check_ratio, parse_spec

WEIGHTS = ("all", "down")


def wanda_sp_scores(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, x_norm: torch.Tensor,
                    h_norm: torch.Tensor, weights: str = "all") -> torch.Tensor:
    """Channel scores [channels]: gate/up [channels, hidden], down [hidden, channels], x_norm [hidden] (the
    MLP input's feature norms), h_norm [channels] (down_proj's input feature norms)."""
    s = down.abs().float().sum(0) * h_norm.float()
    if weights == "all":
        s = s + (gate.abs().float() + up.abs().float()) @ x_norm.float()
    return s


@dataclass(frozen=True)
class WandaSpConfig(cal.CalibrationConfig):
    ratio: float = 0.3                # fraction of every block's MLP channels removed
    weights: str = "all"              # "all": gate, up and down weights of a channel; "down": down_proj only
    round: int = 0                    # kept channels per block rounded to a multiple (0: auto, as cfsp)

    def __post_init__(self):
        check_ratio(self.ratio)
        if self.weights not in WEIGHTS:
            raise InputError(f"wanda-sp: weights must be all or down, got '{self.weights}'")
        if self.round < 0:
            raise InputError("wanda-sp: round >= 0 (0: auto)")
        self.check_calibration("wanda-sp")


class WandaSpPass(cal.CalibratedPass):
    """Remove the same fraction of MLP channels in every block by Wanda-SP score, block by block."""

    name = "prune-wanda-sp"
    config_class = WandaSpConfig

    @torch.no_grad()
    def prune(self, bundle, ids) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        rec = base_record(bundle, "wanda-sp", cfg.ratio, cfg.round)
        if cfg.ratio == 0:
            return unchanged(bundle, rec)
        counts = uniform_counts(rec["intermediate_before"], cfg.ratio, cfg.round)

        def on_layer(run):
            p, st = ad.mlp_proj(run.index), run.stats
            score = wanda_sp_scores(p["gate"].weight, p["up"].weight, p["down"].weight, st["gate"].sq_mean.sqrt(),
                                    st["down"].sq_mean.sqrt(), cfg.weights)
            shrink_mlp(ad.mlp(run.index), top_channels(score, counts[run.index]))
            return True                   # re-run: the next block is measured on this block's pruned output

        cal.run_layerwise(bundle.model, ad.layers, ids,
                          lambda i: {"gate": ad.mlp_proj(i)["gate"], "down": ad.mlp_proj(i)["down"]}, on_layer,
                          desc="wanda-sp")
        return finish(bundle, rec, weights=cfg.weights)


def build(method: str, arg: str, options) -> list:
    """PRUNE_METHODS factory: 'wanda-sp:RATIO[,weights=all|down,round=,samples=,seqlen=,seed=]'."""
    keys = {"weights": str, "round": int, "samples": int, "seqlen": int, "seed": int}
    spec = parse_spec(method, arg, keys, allow_nm=False)
    return [WandaSpPass(WandaSpConfig(calib=getattr(options, "calib", None), **spec))]
