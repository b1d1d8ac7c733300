"""Grouped symmetric integer linear layers in the layout OpenVINO's CPU plugin runs compressed (NNCF's
INT4_SYM / INT3_SYM / INT2_SYM), and their bit accounting.

A weight W [out, in] is cut into groups of G consecutive input weights. Group g of row r is

    W[r, gG:(g+1)G] = scales[r, g] * codes[r, g, :]      codes in [-2^(B-1), 2^(B-1) - 1]

with one fp16 scale per group and no zero point (NNCF stores int4 as i4, int3 / int2 as u3 / u2 with a
single zero point 2^(B-1); the same numbers). Scales are fp32 Parameters while a pass trains them
(`unpack`) and fp16 buffers once done (`pack`): what is stored is what the bit accounting counts.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .codebook_linear import FLOAT_BITS, RebuiltLinear

BITS = (2, 3, 4)


def code_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def sym_scales(wg: torch.Tensor, bits: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """NNCF's data-free symmetric scale of each group of wg [..., G]: max|w| * clip / 2^(B-1)."""
    return (wg.abs().amax(-1, keepdim=True) * clip / (1 << (bits - 1))).clamp_min(1e-8)


def encode(wg: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest codes of wg [..., G] under per-group scales [..., 1] (int8)."""
    lo, hi = code_range(bits)
    return torch.clamp(torch.round(wg / scales), lo, hi).to(torch.int8)


class IntGroupLinear(RebuiltLinear):
    """y = x @ (scales * codes).T + bias, rebuilt in-graph at every call (training) or read from a
    dense cache (`dense()`: export, evaluation), codes int8 [out, in/G, G], scales [out, in/G, 1]."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bits: int, bias: torch.Tensor | None = None):
        super().__init__()
        out_f, ng, group = codes.shape
        if bits not in BITS or scales.shape != (out_f, ng, 1):
            raise ValueError(f"inconsistent int layer: bits {bits}, codes {tuple(codes.shape)}, scales {tuple(scales.shape)}")
        lo, hi = code_range(bits)
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ValueError(f"codes outside [{lo}, {hi}] for {bits} bits")
        self.out_features, self.in_features, self.nbits, self.group = out_f, ng * group, bits, group
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.detach().to(torch.float16).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.tap = False              # training only: keep the rebuilt weight and its gradient
        self.tapped: torch.Tensor | None = None

    # -- storage ---------------------------------------------------------------------------------
    def unpack(self) -> None:
        if not isinstance(self.scales, nn.Parameter):
            s = self.scales.float().clone()
            del self.scales
            self.scales = nn.Parameter(s, requires_grad=False)

    @torch.no_grad()
    def pack(self) -> None:
        s = self.scales.detach().to(torch.float16).clone()
        del self.scales
        self.register_buffer("scales", s)

    def bits(self) -> dict[str, int]:
        n = self.out_features * self.in_features
        ng = n // self.group
        return {"codes": n * self.nbits, "scales": ng * FLOAT_BITS, "total": n * self.nbits + ng * FLOAT_BITS,
                "weights": n}

    # -- math ------------------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        return (self.codes.float() * self.scales.float()).reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.nbits}, group={self.group}"


def int_layers(model: nn.Module) -> dict[str, IntGroupLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IntGroupLinear)}


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in [-2^(B-1), 2^(B-1)) packed densely, B bytes per 8 codes (uint8, little-endian within each
    8-code word; padded with zero codes to a multiple of 8): what a tuned-state file stores (int3 at 3 bits, not 8)."""
    lo, _ = code_range(bits)
    flat = (codes.reshape(-1).to(torch.int64) - lo)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    word = (flat << (bits * torch.arange(8, dtype=torch.int64))).sum(1)
    return torch.stack([(word >> (8 * i)) & 255 for i in range(bits)], 1).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """The inverse of pack_codes: int8 codes of `shape`."""
    lo, _ = code_range(bits)
    n = 1
    for s in shape:
        n *= int(s)
    if packed.numel() != (n + (-n % 8)) // 8 * bits:
        raise ValueError(f"{packed.numel()} packed bytes do not hold {n} codes of {bits} bits")
    b = packed.reshape(-1, bits).to(torch.int64)
    word = (b << (8 * torch.arange(bits, dtype=torch.int64))).sum(1)
    flat = ((word.unsqueeze(1) >> (bits * torch.arange(8, dtype=torch.int64))) & ((1 << bits) - 1)).reshape(-1)
    return (flat[:n] + lo).to(torch.int8).reshape(tuple(shape))
