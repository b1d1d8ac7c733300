"""AQLM codebook quantization of every decoder Linear (the starting point of PV-Tuning).

Layers are quantized in order, each on the calibration inputs produced by the already-quantized
layers before it (passes/calibration.run_layerwise). For each Linear with weight W and input Gram
matrix H = X^T X / n:
  1. scales: the row norms (fp16);
  2. codebooks: residual k-means on the scaled weight groups, weighted by diag(H) (the diagonal
     part of the output error), one codebook after another;
  3. codes: beam search (beam=1: greedy coordinate descent) on the output error tr(E H E^T);
  4. codebooks and scales: a few Adam steps on the same error; 3-4 repeat `rounds` times.
The Linear is replaced by a CodebookLinear whose codebooks and scales are fp16.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...compiler.errors import InputError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ..calibration import calibration_ids, run_layerwise
from .codebook_linear import CodebookLinear, Scheme, dequantize, set_module
from .codebook_search import beam_search, init_codebooks, output_error, refine_codebooks, row_scales
from .quant_bits import bits_summary

log = logging.getLogger(__name__)
TEACHER = "teacher_model"      # bundle.records key: the uncompressed model kept for distillation (not JSON)


@dataclass(frozen=True)
class CodebookQuantConfig(PassConfig):
    scheme: str = "2x8g8"          # MxBgG
    samples: int = 32              # calibration windows
    seqlen: int = 256              # tokens per window
    kmeans_iters: int = 8
    weighted_init: bool = True     # k-means weighted by diag(X^T X)
    beam: int = 1                  # code search beam width (1 = greedy coordinate descent)
    rounds: int = 1                # (code search, codebook update) repetitions; 0: the k-means codes as they are
    cb_steps: int = 10             # Adam steps on codebooks and scales per round
    cb_lr: float = 1e-3
    seed: int = 0
    calib: str | None = None       # calibration text file (default: Brown calibration split)
    keep_teacher: bool = False     # keep a copy of the uncompressed model for PV/STE tuning
    method: str = "aqlm"           # label recorded in bundle.records["quantization"]

    def __post_init__(self):
        Scheme.parse(self.scheme)
        for name in ("samples", "seqlen", "beam"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kmeans_iters < 0 or self.cb_steps < 0 or self.rounds < 0:
            raise InputError("kmeans, cb_steps and rounds must be >= 0")
        if not self.cb_lr > 0:
            raise InputError(f"cb_lr must be > 0, got {self.cb_lr}")


class _GramHooks:
    """Accumulates X^T X of each hooked Linear's input while its layer is armed (inputs shared by
    several projections, q/k/v or gate/up, are multiplied once)."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.gram: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.armed: set[str] = set()
        self._last: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self.handles = [lin.register_forward_pre_hook(self._hook(name)) for name, lin in linears.items()]

    def _hook(self, name):
        def hook(_mod, args):
            if name not in self.armed:
                return
            x = args[0]
            if self._last[0] is not x:
                flat = x.detach().reshape(-1, x.shape[-1]).float()
                self._last = (x, (flat.T @ flat).double())
            self.gram[name] = self.gram.get(name, 0) + self._last[1]
            self.tokens[name] = self.tokens.get(name, 0) + x.numel() // x.shape[-1]
        return hook

    def pop(self, name: str) -> torch.Tensor:
        self._last = (None, None)
        return (self.gram.pop(name) / self.tokens.pop(name)).float()

    def remove(self):
        for h in self.handles:
            h.remove()


def quantize_weight(w: torch.Tensor, h: torch.Tensor, scheme: Scheme, cfg: CodebookQuantConfig,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """-> (codes, codebooks fp16-exact, scales fp16-exact, errors) for one weight [out, in]."""
    scales = row_scales(w)
    codes, books = init_codebooks(w, h, scales, scheme.codebooks, scheme.size, scheme.group, cfg.kmeans_iters,
                                  gen, weighted=cfg.weighted_init)
    books = books.half().float()
    ref = output_error(torch.zeros_like(w), w, h).sum().clamp_min(1e-20)

    def rel(c, b, s):
        return float(output_error(dequantize(c, b, s), w, h).sum() / ref)

    err = {"init": rel(codes, books, scales)}
    for _ in range(cfg.rounds):
        codes = beam_search(w, h, codes, books, scales, beam=cfg.beam)
        books, scales = refine_codebooks(w, h, codes, books, scales, cfg.cb_steps, cfg.cb_lr)
        books, scales = books.half().float(), scales.half().float()
    err["final"] = rel(codes, books, scales)
    return codes, books, scales, err


class CodebookQuantPass(Pass):
    name = "quantize-codebook"
    config_class = CodebookQuantConfig

    def call(self, bundle) -> PassResult:
        cfg, ad, model = self.config, bundle.adapter, bundle.model
        scheme = Scheme.parse(cfg.scheme)
        linears = ad.linears()
        for name, lin in linears.items():
            if not isinstance(lin, nn.Linear):
                raise InputError(f"{name} is already a {type(lin).__name__}; quantize an unquantized model")
            if lin.in_features % scheme.group:
                raise InputError(f"scheme {scheme}: group size {scheme.group} does not divide {name}'s "
                                 f"{lin.in_features} input features")
        t0 = time.perf_counter()
        ids = _calibration(bundle, cfg)
        if cfg.keep_teacher:
            teacher = copy.deepcopy(model).eval()
            teacher.requires_grad_(False)
            bundle.records[TEACHER] = teacher
        path_of = {id(m): n for n, m in model.named_modules()}
        gen = torch.Generator().manual_seed(cfg.seed)
        hooks = _GramHooks(linears)
        errors: dict[str, dict] = {}

        def arm(i):
            hooks.armed = {n for n in linears if n.startswith(f"layers.{i}.")}
            return {}

        def on_layer(run) -> bool:
            for name in sorted(hooks.armed):
                lin = linears[name]
                h = hooks.pop(name)
                codes, books, scales, err = quantize_weight(lin.weight.detach().float(), h, scheme, cfg, gen)
                q = CodebookLinear(codes, books, scales, lin.bias)
                q.pack()
                set_module(model, path_of[id(lin)], q)
                errors[name] = {k: round(v, 6) for k, v in err.items()}
            hooks.armed = set()
            return True

        try:
            run_layerwise(model, ad.layers, ids, arm, on_layer, desc=f"codebook {scheme}")
        finally:
            hooks.remove()
        seconds = time.perf_counter() - t0
        summary = bits_summary(ad)
        mean_err = sum(e["final"] for e in errors.values()) / max(len(errors), 1)
        bundle.records["quantization"] = {
            "method": cfg.method, "scheme": str(scheme), **summary,
            "calibration": {"samples": int(ids.shape[0]), "seqlen": int(ids.shape[1]),
                            "text": cfg.calib or "brown-calib"},
            "layer_errors": errors, "mean_relative_output_error": round(mean_err, 6),
            "seconds": {"codebook_quant": round(seconds, 1)},
        }
        log.info("codebook %s: %d layers, %.4f bits/weight, mean relative output error %.4f, %.1fs",
                 scheme, len(errors), summary["bits_per_weight"], mean_err, seconds)
        return PassResult(True, {"scheme": str(scheme), "bits_per_weight": summary["bits_per_weight"],
                                 "layers": len(errors), "mean_rel_error": round(mean_err, 5)})


def _calibration(bundle, cfg) -> torch.Tensor:
    """Calibration token windows; a tensor in bundle.records["calibration_ids"] (tests, or a pass that
    chose them) takes precedence over the corpus."""
    ids = bundle.records.get("calibration_ids")
    if isinstance(ids, torch.Tensor):
        return ids
    return calibration_ids(bundle, cfg.samples, cfg.seqlen, cfg.seed, cfg.calib)
