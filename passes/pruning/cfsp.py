"""CFSP: structured pruning of MLP intermediate channels with coarse-to-fine activation information.

Coarse: one forward pass over the calibration windows measures each decoder block's importance as
the mean angular distance arccos(cos(x_in, x_out)) / pi between its input and output hidden states;
the global budget (keep 1 - ratio of all MLP channels) is split so that important blocks keep more:
    s_l = sigmoid(a * (d_l - mean d)),   keep_l = (1 - ratio) * s_l / mean s
(s is first squeezed toward its mean when the largest keep_l would reach 1, as the reference does).
Fine: in each block, channel j of the MLP scores
    S_j = mean_i [ rel(|W_down| * ||h_j||^b)_ij + rel(|W_up^T|)_ij + rel(|W_gate^T|)_ij ] * ||h_j||^c
with h the input of down_proj, i the hidden units, and rel() normalising each hidden unit's row over
the channels. The lowest channels are removed: gate/up lose rows, down loses columns (the Linear
modules are replaced by smaller ones; per-layer sizes may differ).
Reference: github.com/wyxscir/CFSP lib/prune.py (prune_cfsp, local metric three_w_one_wa, a=b=c=1).
Its rel() normalises over the hidden units instead, which after the mean makes the three weight terms
the constant 3/hidden, so its score is ||h_j||^c alone: `norm=reference` reproduces that. Its
block score sums distances over 128 x 1024 tokens and divides by 1e4: the default a = 13.1 on the
per-token mean is the same scale.
Baselines: cfsp-uniform (same fine score, keep 1 - ratio in every block) and channel-magnitude
(uniform; score ||W_gate[j]|| + ||W_up[j]|| + ||W_down[:, j]||, no calibration).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...compiler.errors import InputError
from ...compiler.pass_base import PassResult
from .. import calibration as cal
from .prune_options import check_ratio, parse_spec

log = logging.getLogger(__name__)

METHODS = ("cfsp", "cfsp-uniform", "channel-magnitude")


def angular_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per token arccos(cos(x, y)) / pi over the last dim, in [0, 1]; undefined cosines count 0.5."""
    x = x.reshape(-1, x.shape[-1]).double()
    y = y.reshape(-1, y.shape[-1]).double()
    cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
    cos = cos.nan_to_num(nan=0.5).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


def allocate(importance: list[float], ratio: float, a: float) -> list[float]:
    """Keep fraction of each block; their mean is 1 - ratio and none reaches 1."""
    d = torch.tensor(importance, dtype=torch.float64)
    s = torch.sigmoid(a * (d - d.mean()))
    avg, top = s.mean(), s.max()
    if top / avg * (1 - ratio) >= 1:
        scale = (avg * (1 / (1 - ratio) - 1)) / (top - avg) / 1.05
        s = avg + (s - avg) * scale
        avg = s.mean()
    return (s / avg * (1 - ratio)).tolist()


AUTO_ROUND, AUTO_MIN_BLOCK = 64, 1024


def rounding_for(total: int, round_: int) -> int:
    """The multiple kept counts are rounded to: `round_`, or for 0 (auto) 64 on blocks of at least 1024
    channels (the exported fp32 graph decodes faster with such shapes; docs/passes/pruning.md) and 1 on
    smaller ones, where a multiple of 64 would leave too few choices."""
    if round_:
        return round_
    return AUTO_ROUND if total >= AUTO_MIN_BLOCK else 1


def kept_count(total: int, keep_fraction: float, multiple: int) -> int:
    """Channels kept: total * keep_fraction rounded to the nearest multiple, within [multiple, total]."""
    if multiple <= 1:
        return int(min(total, max(1, round(total * keep_fraction))))
    k = int(math.floor(total * keep_fraction / multiple + 0.5)) * multiple
    return int(min(total, max(min(multiple, total), k)))


def _rel(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / x.sum(dim=dim, keepdim=True).clamp_min(1e-12)


def fine_scores(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act: torch.Tensor,
                b: float = 1.0, c: float = 1.0, norm: str = "channel") -> torch.Tensor:
    """Channel scores [inter]; gate, up [inter, hidden], down [hidden, inter], act ||h_j|| [inter]."""
    dim = 1 if norm == "channel" else 0
    act = act.float().reshape(1, -1)
    w = (_rel(down.abs().float() * act.pow(b), dim) + _rel(up.abs().float().t(), dim)
         + _rel(gate.abs().float().t(), dim))
    return (w * act.pow(c)).mean(0)


def magnitude_scores(gate, up, down) -> torch.Tensor:
    return gate.float().norm(dim=1) + up.float().norm(dim=1) + down.float().norm(dim=0)


def _smaller(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.detach().index_select(dim, idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach().index_select(0, idx))
    return new


def shrink_mlp(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep only channels `keep` (sorted indices): gate/up rows and down columns."""
    keep = keep.sort().values
    mlp.gate_proj = _smaller(mlp.gate_proj, keep, 0)
    mlp.up_proj = _smaller(mlp.up_proj, keep, 0)
    mlp.down_proj = _smaller(mlp.down_proj, keep, 1)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())   # the module's own attribute; the config is untouched


RECOVERY_WINDOWS = 4096      # at most this many fresh windows for a long recovery (1M tokens at 256)


def recovery_ids(bundle, ids: torch.Tensor, cfg) -> torch.Tensor:
    """The recovery's training windows: the scoring windows when one pass over them covers its steps, else
    min(steps * batch, RECOVERY_WINDOWS) windows drawn afresh from the calibration text (cycling the few scoring
    windows for thousands of steps memorized them: 2,086 steps over 32 windows reached a training loss of 0.38 and a
    held-out perplexity of 20,929 on SmolLM2-135M, 2026-12-06)."""
    need = min(cfg.recover * cfg.batch, RECOVERY_WINDOWS)
    if bundle.tokenizer is None or need <= ids.shape[0]:
        return ids
    return cal.calibration_ids(bundle, need, ids.shape[1], cfg.seed + 1, cfg.calib)


@dataclass(frozen=True)
class CfspConfig(cal.CalibrationConfig):
    ratio: float = 0.3                # fraction of all MLP intermediate channels removed
    method: str = "cfsp"              # cfsp | cfsp-uniform | channel-magnitude
    round: int = 0                    # kept channels per block rounded to a multiple of this (0: auto, rounding_for)
    a: float = 13.1                   # coarse allocation temperature
    b: float = 1.0                    # activation power inside the down_proj weight term
    c: float = 1.0                    # activation power on the channel score
    norm: str = "channel"             # rel() direction: "channel" (weights matter) or "reference"
    recover: int = 0                  # LoRA recovery steps after pruning (0: off)
    recover_seconds: float = 300.0    # time cap of the recovery
    rank: int = 8                     # LoRA base rank (per block: scaled by importance)
    lr: float = 2e-4
    batch: int = 2                    # calibration windows per recovery step

    def __post_init__(self):
        check_ratio(self.ratio)
        if self.method not in METHODS:
            raise InputError(f"unknown channel pruning method '{self.method}' ({', '.join(METHODS)})")
        if self.round < 0 or self.rank < 1 or self.batch < 1 or self.recover < 0 or self.recover_seconds <= 0:
            raise InputError("cfsp: round >= 0 (0: auto), rank and batch >= 1, recover >= 0, recover_seconds > 0")
        if self.norm not in ("channel", "reference"):
            raise InputError(f"cfsp: norm must be channel or reference, got '{self.norm}'")
        if self.samples < 1 or self.seqlen < 2 or self.lr <= 0:
            raise InputError("cfsp: samples >= 1, seqlen >= 2 and lr > 0 are required")


class CfspPass(cal.CalibratedPass):
    """Remove MLP channels per block (CFSP allocation and score, or a baseline), optionally LoRA-recover."""

    name = "prune-cfsp"
    config_class = CfspConfig

    def needs_data(self) -> bool:
        c = self.config
        return c.ratio > 0 and (c.method != "channel-magnitude" or c.recover > 0)

    def measure(self, bundle, ids) -> tuple[list[float], list[torch.Tensor]]:
        """One layer-by-layer pass: block importance (mean angular distance) and ||h_j|| of each MLP."""
        ad = bundle.adapter
        importance: list[float] = [0.0] * ad.num_layers
        act: list[torch.Tensor] = [None] * ad.num_layers

        def on_layer(run):
            d = torch.cat([angular_distance(x, y) for x, y in zip(run.inputs, run.outputs)])
            importance[run.index] = float(d.mean())
            act[run.index] = run.stats["down"].sq_mean.sqrt()
            return False

        cal.run_layerwise(bundle.model, ad.layers, ids, lambda i: {"down": ad.mlp_proj(i)["down"]}, on_layer,
                          desc="cfsp calibration")
        return importance, act

    @torch.no_grad()
    def select(self, bundle, ids) -> tuple[list[torch.Tensor], dict]:
        """Indices of the channels each block keeps, and what decided them."""
        cfg, ad = self.config, bundle.adapter
        sizes = ad.intermediate_sizes()
        importance, act = (self.measure(bundle, ids) if cfg.method != "channel-magnitude"
                           else (None, None))
        fractions = (allocate(importance, cfg.ratio, cfg.a) if cfg.method == "cfsp"
                     else [1 - cfg.ratio] * ad.num_layers)
        keep = []
        for i in range(ad.num_layers):
            p = ad.mlp_proj(i)
            g, u, dn = p["gate"].weight, p["up"].weight, p["down"].weight
            score = (magnitude_scores(g, u, dn) if cfg.method == "channel-magnitude"
                     else fine_scores(g, u, dn, act[i], cfg.b, cfg.c, cfg.norm))
            k = kept_count(sizes[i], fractions[i], rounding_for(sizes[i], cfg.round))
            keep.append(torch.topk(score, k).indices.sort().values)
        info = {"block_importance": [round(v, 6) for v in importance] if importance else None,
                "keep_fraction": [round(f, 6) for f in fractions]}
        return keep, info

    def prune(self, bundle, ids) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        sizes = ad.intermediate_sizes()
        before = ad.num_parameters()
        rec = {"method": cfg.method, "ratio": cfg.ratio, "round": cfg.round or "auto",
               "round_multiples": [rounding_for(n, cfg.round) for n in sizes], "intermediate_before": sizes,
               "kept_channels": sizes, "parameters_before": before, "parameters_after": before}
        if cfg.ratio == 0:
            bundle.records["pruning"] = rec
            return PassResult(False, {"parameters": before, "mlp_channels_kept": 1.0})
        keep, info = self.select(bundle, ids)
        for i, idx in enumerate(keep):
            shrink_mlp(ad.mlp(i), idx)
        kept = ad.intermediate_sizes()
        rec.update(info, kept_channels=kept, parameters_after=ad.num_parameters(),
                   mlp_channels_kept=round(sum(kept) / sum(sizes), 6))
        if cfg.recover:
            from .lora_recovery import recover
            imp = info["block_importance"] or [1.0] * ad.num_layers
            with torch.enable_grad():
                rec["recovery"] = recover(bundle, recovery_ids(bundle, ids, cfg), imp, cfg.recover,
                                          cfg.recover_seconds, cfg.rank, cfg.lr, cfg.batch)
        bundle.records["pruning"] = rec
        metrics = {"parameters": rec["parameters_after"], "parameters_before": before,
                   "mlp_channels_kept": rec["mlp_channels_kept"]}
        if "recovery" in rec:
            r = rec["recovery"]
            metrics["recovery_loss"] = [r["first_batch_loss_before"], r["first_batch_loss_after"]]
        return PassResult(True, metrics)


def build(method: str, arg: str, options) -> list:
    """PRUNE_METHODS factory: 'cfsp:RATIO[,round=,recover=,recover_seconds=,rank=,lr=,a=,b=,c=,norm=,...]'."""
    keys = {"round": int, "recover": int, "recover_seconds": float, "rank": int, "lr": float, "batch": int,
            "samples": int, "seqlen": int, "seed": int}
    if method != "channel-magnitude":
        keys.update(b=float, c=float, norm=str)
    if method == "cfsp":
        keys["a"] = float
    spec = parse_spec(method, arg, keys, allow_nm=False)
    return [CfspPass(CfspConfig(method=method, calib=getattr(options, "calib", None), **spec))]
