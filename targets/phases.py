"""Phase functions shared by targets. Each returns a list of passes; targets concatenate them.

Method specs on the command line ("cfsp:0.3", "pv:2x8g8") are looked up in the registries below,
filled by the pass modules (a dict lookup, not an if/elif chain).
"""
from __future__ import annotations

from typing import Callable

from ..compiler.errors import InputError
from .base import CompileOptions

# name -> factory(argument string, options) -> list of passes
PRUNE_METHODS: dict[str, Callable[[str, CompileOptions], list]] = {}
QUANTIZE_METHODS: dict[str, Callable[[str, CompileOptions], list]] = {}
DRAFTERS: dict[str, Callable[[str, CompileOptions], list]] = {}


def _lookup(kind: str, registry: dict, spec: str, options: CompileOptions) -> list:
    name, _, arg = spec.partition(":")
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none yet"
        raise InputError(f"unknown {kind} method '{name}' in '{spec}' (known: {known})")
    return registry[name](arg, options)


def compression(options: CompileOptions) -> list:
    # pruning before quantization: quantizers calibrate on the pruned weights
    passes = []
    if options.prune:
        passes += _lookup("pruning", PRUNE_METHODS, options.prune, options)
    if options.quantize:
        passes += _lookup("quantization", QUANTIZE_METHODS, options.quantize, options)
    return passes


def drafting(options: CompileOptions) -> list:
    # after compression: a compressed target gets a drafter derived from the compressed model
    if not options.drafter:
        return []
    kind = options.drafter if options.drafter in DRAFTERS else "external"
    if kind not in DRAFTERS:
        raise InputError(f"drafters are not available (asked for '{options.drafter}')")
    return DRAFTERS[kind](options.drafter, options)


def export(options: CompileOptions, static: bool) -> list:
    # ONNX first: the OpenVINO IR is converted from the same ONNX graph (one source of truth)
    from ..passes.export_onnx import ExportOnnxPass, ExportOnnxConfig
    from ..passes.export_openvino import ExportOpenVINOPass, ExportOpenVINOConfig
    return [
        ExportOnnxPass(ExportOnnxConfig(static=static, cache_len=options.cache_len,
                                        prefill_chunk=options.prefill_chunk, weights=options.weights)),
        ExportOpenVINOPass(ExportOpenVINOConfig(weights=options.weights)),
    ]


def validation(options: CompileOptions) -> list:
    if not options.validate:
        return []
    from ..passes.validate import ValidatePass, ValidateConfig
    return [ValidatePass(ValidateConfig(weights=options.weights))]
