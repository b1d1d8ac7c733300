"""Round-to-nearest scalar quantization per group (the baseline): B-bit codes, fp16 scale, B-bit zero.

Each group of S consecutive input weights of a row gets scale = (max - min) / (2^B - 1) (fp16) and
an integer zero point z = round(-min / scale); w ≈ scale * (q - z), q = clamp(round(w / scale) + z).
No calibration data. Spec `rtn:BgS`, e.g. rtn:2g64 (2-bit codes, groups of 64: 2 + (16 + 2) / 64 bits).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...compiler.errors import InputError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from .codebook_linear import FLOAT_BITS, set_module
from .quant_bits import bits_summary

_SPEC = re.compile(r"^(\d+)g(\d+)$")


def parse_rtn(text: str) -> tuple[int, int]:
    m = _SPEC.match(text.strip())
    if not m or not 1 <= int(m.group(1)) <= 8 or not 1 <= int(m.group(2)) <= 4096:
        raise InputError(f"bad RTN scheme '{text}': expected BgS with 1 <= B <= 8 bits and group size S, e.g. 2g64")
    return int(m.group(1)), int(m.group(2))


@torch.no_grad()
def rtn_quantize(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] -> (codes uint8 [out, in/S, S], scales fp16 [out, in/S, 1], zeros uint8 [out, in/S, 1])."""
    out_f, in_f = w.shape
    wg = w.float().reshape(out_f, in_f // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-8).half()
    s = scale.float()
    zero = torch.round(-lo / s).clamp(0, qmax)
    codes = torch.clamp(torch.round(wg / s) + zero, 0, qmax)
    return codes.to(torch.uint8), scale, zero.to(torch.uint8)


class GroupQuantLinear(nn.Module):
    """y = x @ W.T + bias with W = scales * (codes - zeros), rebuilt in-graph at every call."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        out_f, ng, group = codes.shape
        self.out_features, self.in_features, self.nbits, self.group = out_f, ng * group, bits, group
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.to(torch.float16))
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        w = (self.codes.float() - self.zeros.float()) * self.scales.float()
        return w.reshape(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def bits(self) -> dict[str, int]:
        n = self.out_features * self.in_features
        ng = n // self.group
        return {"codes": n * self.nbits, "scales": ng * FLOAT_BITS, "zeros": ng * self.nbits,
                "total": n * self.nbits + ng * (FLOAT_BITS + self.nbits), "weights": n}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.nbits}, group={self.group}"


@dataclass(frozen=True)
class RTNConfig(PassConfig):
    scheme: str = "2g64"

    def __post_init__(self):
        parse_rtn(self.scheme)


class RTNQuantPass(Pass):
    name = "quantize-rtn"
    config_class = RTNConfig

    def call(self, bundle) -> PassResult:
        bits, group = parse_rtn(self.config.scheme)
        model, ad = bundle.model, bundle.adapter
        linears = ad.linears()
        for name, lin in linears.items():
            if not isinstance(lin, nn.Linear) or lin.in_features % group:
                raise InputError(f"rtn {self.config.scheme}: {name} ({type(lin).__name__}, {lin.in_features} inputs) "
                                 f"cannot be quantized in groups of {group}")
        t0 = time.perf_counter()
        path_of = {id(m): n for n, m in model.named_modules()}
        errors = {}
        for name, lin in linears.items():
            w = lin.weight.detach().float()
            q = GroupQuantLinear(*rtn_quantize(w, bits, group), bits=bits, bias=lin.bias)
            errors[name] = round(float((q.dequantize() - w).norm() / w.norm().clamp_min(1e-20)), 6)
            set_module(model, path_of[id(lin)], q)
        summary = bits_summary(ad)
        bundle.records["quantization"] = {"method": "rtn", "scheme": self.config.scheme, **summary,
                                          "layer_errors": {n: {"relative_weight_error": e} for n, e in errors.items()},
                                          "seconds": {"rtn_quant": round(time.perf_counter() - t0, 1)}}
        return PassResult(True, {"scheme": self.config.scheme, "bits_per_weight": summary["bits_per_weight"],
                                 "layers": len(errors)})
