"""Codebook-quantized linear layers (AQLM family) and their bit accounting.

A weight W [out, in] is cut into groups of G consecutive input weights. Group g of row r is

    W[r, gG:(g+1)G] = scales[r] * sum_m codebooks[m, codes[r, g, m]]

with M codebooks of K = 2^B entries (scheme "MxBgG", e.g. 2x8g8). The module keeps codes,
codebooks and scales as tensors and rebuilds W inside forward (gather, sum, scale, matmul), so an
exported graph holds the compressed tensors, not a float weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...compiler.errors import InputError

FLOAT_BITS = 16          # codebooks and scales are stored (and counted) as fp16
_SCHEME = re.compile(r"^(\d+)x(\d+)g(\d+)$")


@dataclass(frozen=True)
class Scheme:
    """M codebooks of 2^B entries over groups of G input weights."""

    codebooks: int      # M
    bits: int           # B
    group: int          # G

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        m = _SCHEME.match(text.strip())
        if not m:
            raise InputError(f"bad codebook scheme '{text}': expected MxBgG, e.g. 2x8g8 (M codebooks of 2^B "
                             "entries over groups of G input weights)")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __post_init__(self):
        if not 1 <= self.codebooks <= 8:
            raise InputError(f"scheme {self}: the number of codebooks must be 1..8")
        if not 1 <= self.bits <= 16:
            raise InputError(f"scheme {self}: bits per code must be 1..16")
        if not 1 <= self.group <= 256:
            raise InputError(f"scheme {self}: group size must be 1..256")

    def __str__(self) -> str:
        return f"{self.codebooks}x{self.bits}g{self.group}"

    @property
    def size(self) -> int:
        return 1 << self.bits

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int32

    @property
    def nominal_bits(self) -> float:
        """Code bits per weight, without codebooks and scales."""
        return self.codebooks * self.bits / self.group


def codebook_bits(out_features: int, in_features: int, scheme: Scheme) -> dict[str, int]:
    """Storage of one quantized [out, in] weight, in bits: packed codes, fp16 codebooks, fp16 row scales."""
    codes = out_features * (in_features // scheme.group) * scheme.codebooks * scheme.bits
    books = scheme.codebooks * scheme.size * scheme.group * FLOAT_BITS
    scales = out_features * FLOAT_BITS
    return {"codes": codes, "codebooks": books, "scales": scales, "total": codes + books + scales,
            "weights": out_features * in_features}


def dequantize(codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """codes [out, in/G, M] int, codebooks [M, K, G], scales [out, 1] -> W [out, in] (float32).

    One gather per codebook, summed, times the row scale. Indexing each codebook with its own codes
    (rather than one gather from the flattened codebooks at code + m*K) keeps the exported code
    tensors within 0..K-1, so an exporter that folds the index arithmetic still stores them in
    K-bit range (passes/onnx_weights.narrow_initializers puts them back in uint8).
    """
    out_f, n_groups, m = codes.shape
    g = codebooks.shape[2]
    books = codebooks.float()
    groups = F.embedding(codes[..., 0].to(torch.int64), books[0])                 # [out, in/G, G]
    for j in range(1, m):
        groups = groups + F.embedding(codes[..., j].to(torch.int64), books[j])
    return groups.reshape(out_f, n_groups * g) * scales.float()


class RebuiltLinear(nn.Module):
    """A linear layer whose weight is rebuilt from stored codes at every call (`dequantize`, in the subclass)."""

    tap = False                       # training only: keep the rebuilt weight and its gradient (tapped_linear)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (a detached copy; for code that reads shapes or values)."""
        return self.dequantize().detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tapped_linear(self, x)


class CodebookLinear(RebuiltLinear):
    """y = x @ dequantize(codes, codebooks, scales).T + bias, rebuilt in-graph at every call.

    Codebooks and scales are fp32 Parameters while a pass optimises them (`unpack`), and fp16
    buffers once done (`pack`): what is stored is what the bit accounting counts.
    """

    def __init__(self, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None = None):
        super().__init__()
        out_f, n_groups, m = codes.shape
        m2, k, g = codebooks.shape
        if m != m2 or scales.shape != (out_f, 1) or k & (k - 1):
            raise ValueError(f"inconsistent shapes: codes {tuple(codes.shape)}, codebooks {tuple(codebooks.shape)}, "
                             f"scales {tuple(scales.shape)}")
        self.out_features, self.in_features = out_f, n_groups * g
        self.scheme = Scheme(m, k.bit_length() - 1, g)
        self.register_buffer("codes", codes.to(self.scheme.code_dtype).contiguous())
        self.codebooks = nn.Parameter(codebooks.detach().float().clone(), requires_grad=False)
        self.scales = nn.Parameter(scales.detach().float().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.tap = False              # training only: keep the rebuilt weight and its gradient
        self.tapped: torch.Tensor | None = None

    # -- storage ---------------------------------------------------------------------------------
    def unpack(self) -> None:
        """Codebooks and scales become fp32 Parameters (for a pass that trains them)."""
        for name in ("codebooks", "scales"):
            t = getattr(self, name)
            if not isinstance(t, nn.Parameter):
                delattr(self, name)
                setattr(self, name, nn.Parameter(t.float().clone(), requires_grad=False))

    @torch.no_grad()
    def pack(self) -> None:
        """Codebooks and scales become fp16 buffers (their stored precision)."""
        for name in ("codebooks", "scales"):
            t = getattr(self, name)
            delattr(self, name)
            self.register_buffer(name, t.detach().to(torch.float16).clone())

    def bits(self) -> dict[str, int]:
        return codebook_bits(self.out_features, self.in_features, self.scheme)

    # -- math ------------------------------------------------------------------------------------
    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.codebooks, self.scales)

    def extra_repr(self) -> str:
        b = self.bits()
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"bits_per_weight={b['total'] / b['weights']:.4f}")


def tapped_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x @ module.dequantize().T + bias; with module.tap (PV-Tuning's V step) the rebuilt weight keeps its gradient
    in module.tapped. Only the first call after module.tapped is cleared taps: a checkpointed layer's recomputation
    in the backward pass rebuilds the weight again, and the gradient arrives at the first one."""
    w = module.dequantize()
    if module.tap and module.tapped is None:
        if not w.requires_grad:
            w = w.detach().requires_grad_(True)
        w.retain_grad()
        module.tapped = w
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, w.to(x.dtype), bias)


def codebook_layers(model: nn.Module) -> dict[str, CodebookLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, CodebookLinear)}


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
