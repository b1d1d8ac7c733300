"""`gptq-int:B` and `pv-int:B`: grouped symmetric integer quantization in the formats OpenVINO runs
natively (NNCF INT4_SYM / INT3_SYM / INT2_SYM), initialised by GPTQ (passes/quantization/int_gptq.py)
and, for `pv-int`, PV-tuned (passes/quantization/pv_tuning.py) on the same distillation loss and step
budget as `pv:` codebooks.

  P step  codes fixed: Adam on the group scales, norms (and biases).
  V step  the same linearised update as the codebook pass: a float buffer T takes Adam-normalised steps
          of lr_v against the gradient w.r.t. the dequantized weight; the fraction `tau` of *weights*
          where T is farthest from the current weight in quantization levels (|T - W| / scale) get the
          code nearest to T / scale, or one level
          towards T where rounding would keep the old code (the scalar form of the codebook pass's
          directional re-encoding); with `trust` > 0 the changes are truncated, largest first, so that
          ||Ŵ_new - Ŵ_old|| <= trust * ||Ŵ_old|| (plus one weight). Codes never leave their range.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ..calibration import calibration_ids, run_layerwise
from .codebook import TEACHER
from .codebook_linear import set_module
from .codebook_search import output_error
from .farthest import farthest
from .int_gptq import gptq_int
from .int_linear import BITS, IntGroupLinear, code_range, int_layers
from .pv_tuning import PVTrainer, PVTuningPass
from .quant_bits import bits_summary

log = logging.getLogger(__name__)
GROUPS = (32, 64, 128)
# act order's default per bit width, from SmolLM2-135M (GPTQ alone, 8,192 Brown tokens, 2026-12-03): int4 54.16
# with it against 55.68 without; int2 2145 against 1582 (docs/passes/quantization.md, "pv-int")
ACT_ORDER = {4: True, 3: False, 2: False}


@dataclass(frozen=True)
class IntQuantConfig(PassConfig):
    bits: int = 4
    group: int = 64
    samples: int = 32
    seqlen: int = 256
    damp: float = 0.01
    clip: bool = True              # clip-ratio search per group (False: NNCF's max|w| scale)
    act_order: bool | None = None  # GPTQ columns by decreasing diag(H), static group scales; None: ACT_ORDER[bits]
    flip: bool = False             # the clip search also tries negative scales (int_gptq.py)
    seed: int = 0
    calib: str | None = None
    keep_teacher: bool = False
    method: str = "gptq-int"

    def __post_init__(self):
        if self.bits not in BITS:
            raise InputError(f"{self.method}: bits must be one of {', '.join(map(str, BITS))}, got {self.bits}")
        if self.group not in GROUPS:
            raise InputError(f"{self.method}: group must be one of {', '.join(map(str, GROUPS))} (NNCF's group "
                             f"sizes), got {self.group}")
        if self.samples < 1 or self.seqlen < 2:
            raise InputError(f"{self.method}: samples >= 1 and seqlen >= 2 are required")
        if not 0 <= self.damp < 1:
            raise InputError(f"{self.method}: damp must be in [0, 1), got {self.damp}")


def int8_rows(w: torch.Tensor) -> dict:
    """NNCF's INT8_ASYM per row of w [R, C]: scale = (max - min) / 255 (fp16), zero = round(-min / scale),
    codes = clamp(round(w / scale) + zero, 0, 255); -> {"codes" u8, "scales" f16 [R, 1], "zeros" u8 [R, 1]}."""
    w = w.detach().float()
    lo, hi = w.amin(1, keepdim=True).clamp_max(0), w.amax(1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(1e-8).half()
    s = scale.float()
    zero = torch.round(-lo / s).clamp(0, 255)
    codes = torch.clamp(torch.round(w / s) + zero, 0, 255)
    return {"codes": codes.to(torch.uint8), "scales": scale, "zeros": zero.to(torch.uint8)}


def int8_dequantize(q: dict) -> torch.Tensor:
    return (q["codes"].float() - q["zeros"].float()) * q["scales"].float()


@torch.no_grad()
def quantize_embeddings(adapter) -> dict:
    """The embedding (and an untied head) to int8 per row, in place: the weight keeps the dequantized
    values and the module an `int8` attribute with the stored tensors (read by the OpenVINO export)."""
    out = {}
    mods = [("embedding", adapter.embed)] + ([] if adapter.tied_embeddings else [("head", adapter.head)])
    for name, mod in mods:
        q = int8_rows(mod.weight)
        mod.weight.copy_(int8_dequantize(q))
        mod.int8 = q
        rows, cols = mod.weight.shape
        out[name] = {"params": rows * cols, "bits": rows * cols * 8 + rows * (16 + 8)}
    return out


class IntQuantPass(Pass):
    name = "quantize-int"
    config_class = IntQuantConfig

    def call(self, bundle) -> PassResult:
        cfg, ad, model = self.config, bundle.adapter, bundle.model
        linears = ad.linears()
        for name, lin in linears.items():
            if not isinstance(lin, nn.Linear):
                raise InputError(f"{name} is already a {type(lin).__name__}; quantize an unquantized model")
            if lin.in_features % cfg.group:
                raise InputError(f"{cfg.method}: group {cfg.group} does not divide {name}'s {lin.in_features} inputs")
        t0 = time.perf_counter()
        ids = bundle.records.get("calibration_ids")
        if not isinstance(ids, torch.Tensor):
            ids = calibration_ids(bundle, cfg.samples, cfg.seqlen, cfg.seed, cfg.calib)
        if cfg.keep_teacher:
            teacher = copy.deepcopy(model).eval()
            teacher.requires_grad_(False)
            bundle.records[TEACHER] = teacher
        path_of = {id(m): n for n, m in model.named_modules()}
        errors: dict[str, float] = {}
        counts = [0, 0]                       # negative group scales, all group scales
        act_order = ACT_ORDER[cfg.bits] if cfg.act_order is None else cfg.act_order

        def linears_of(i):
            return {n: lin for n, lin in linears.items() if n.startswith(f"layers.{i}.")}

        def on_layer(run) -> bool:
            for name, st in run.stats.items():
                lin = linears[name]
                w, h = lin.weight.detach().float(), st.gram_mean
                codes, scales = gptq_int(w, h, cfg.bits, cfg.group, cfg.damp, cfg.clip, act_order, cfg.flip)
                q = IntGroupLinear(codes, scales, cfg.bits, lin.bias)
                ref = output_error(torch.zeros_like(w), w, h).sum().clamp_min(1e-20)
                errors[name] = round(float(output_error(q.dequantize(), w, h).sum() / ref), 6)
                counts[0] += int((scales < 0).sum())
                counts[1] += scales.numel()
                set_module(model, path_of[id(lin)], q)
            return True

        embed = quantize_embeddings(ad)        # before calibration: the layers see the int8 embedding
        run_layerwise(model, ad.layers, ids, linears_of, on_layer, desc=f"gptq int{cfg.bits} g{cfg.group}",
                      gram=lambda _n: True)
        seconds = time.perf_counter() - t0
        negative, groups = counts
        summary = bits_summary(ad)
        mean_err = sum(errors.values()) / max(len(errors), 1)
        bundle.records["quantization"] = {
            "method": cfg.method, "scheme": f"int{cfg.bits}_sym g{cfg.group}", "int": {"bits": cfg.bits, "group": cfg.group},
            **summary,
            "embedding": {"policy": "int8 per row, asymmetric (NNCF INT8_ASYM layout: u8 codes, f16 scale, u8 zero "
                                    "point); the tied head reads the same table", "tied": ad.tied_embeddings, **embed},
            "calibration": {"samples": int(ids.shape[0]), "seqlen": int(ids.shape[1]), "text": cfg.calib or "brown-calib"},
            "init": {"method": "gptq", "damp": cfg.damp, "clip_search": cfg.clip, "act_order": act_order,
                     "flip": cfg.flip, "negative_scales": round(negative / max(groups, 1), 4)},
            "layer_errors": {n: {"final": e} for n, e in errors.items()},
            "mean_relative_output_error": round(mean_err, 6),
            "seconds": {"gptq": round(seconds, 1)},
        }
        log.info("gptq int%d g%d: %d layers, %.4f bits/weight, mean relative output error %.4f, %.1fs",
                 cfg.bits, cfg.group, len(errors), summary["bits_per_weight"], mean_err, seconds)
        return PassResult(True, {"bits": cfg.bits, "group": cfg.group, "bits_per_weight": summary["bits_per_weight"],
                                 "mean_rel_error": round(mean_err, 5)})


class IntPVTrainer(PVTrainer):
    """PV steps on IntGroupLinear layers: P trains the group scales, V moves individual codes."""

    @staticmethod
    def find_layers(model) -> dict:
        return int_layers(model)

    @staticmethod
    def continuous(q) -> list:
        return [q.scales]

    def _update_codes(self, name: str, q: IntGroupLinear, grad: torch.Tensor, tau: float) -> tuple[int, int]:
        w_hat = q.dequantize()
        target = self.move_target(name, w_hat, grad)
        lo, hi = code_range(q.nbits)
        levels = q.scales.detach().float().expand(-1, -1, q.group).reshape(-1)     # signed (flip: some < 0)
        far = ((target - w_hat).abs().flatten() / levels.abs())
        n_sel = far.numel() if tau >= 1 else int(math.ceil(tau * far.numel()))
        sel = farthest(far, n_sel) if n_sel < far.numel() else torch.arange(far.numel(), device=far.device)
        s = levels[sel]
        flat = q.codes.view(-1)
        old = flat[sel].long()
        goal = target.flatten()[sel] / s
        new = torch.clamp(torch.round(goal), lo, hi).long()
        if tau < 1:
            stay = new == old
            new[stay] = torch.clamp(old[stay] + torch.sign(goal[stay] - old[stay]).long(), lo, hi)
            if self.trust > 0:
                cum = ((new - old).float() * s).square().cumsum(0).sqrt()
                keep = 1 + int(torch.searchsorted(cum, self.trust * w_hat.norm()))
                new[keep:] = old[keep:]
        flat[sel] = new.to(flat.dtype)
        if self.decay:
            target.lerp_(q.dequantize(), self.decay)
        return int((new != old).sum()), far.numel()


class IntPVTuningPass(PVTuningPass):
    name = "tune-pv-int"
    trainer_class = IntPVTrainer
    label = "pv-int"

    def requires(self, bundle) -> None:
        if not int_layers(bundle.model):
            raise PreconditionError("no IntGroupLinear layers: run gptq-int quantization first")
        if bundle.records.get(TEACHER) is None:
            raise PreconditionError("no teacher model: run int quantization with keep_teacher=True first")
