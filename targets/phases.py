"""Phase functions shared by targets. Each returns a list of passes; targets concatenate them.

Method specs on the command line ("cfsp:0.3", "pv:2x8g8") are looked up in the registries below,
filled by the pass modules (a dict lookup, not an if/elif chain).
"""
from __future__ import annotations

from typing import Callable

from ..compiler.errors import InputError
from ..compiler.kv_spec import parse_kv_cache
from .base import FORMATS, GRAPH_FORMATS, CompileOptions

# name -> factory(argument string, options) -> list of passes
PRUNE_METHODS: dict[str, Callable[[str, CompileOptions], list]] = {}
QUANTIZE_METHODS: dict[str, Callable[[str, CompileOptions], list]] = {}
DRAFTERS: dict[str, Callable[[str, CompileOptions], list]] = {}


def _lazy(module: str, function: str, *head) -> Callable[[str, CompileOptions], list]:
    """A registry entry that imports passes/<module>.py only when a spec names it, then calls
    <function>(*head, arg, options)."""
    def factory(arg: str, options: CompileOptions) -> list:
        import importlib
        return getattr(importlib.import_module(f"..passes.{module}", __package__), function)(*head, arg, options)
    return factory


# pruning (docs/passes/pruning.md): structured MLP channels (cfsp.py; baselines wanda_sp.py, flap.py),
# unstructured / N:M masks (sparsity.py: magnitude, wanda; dsnot.py), e.g. cfsp:0.3,round=32  flap:0.3
# wanda:2:4  dsnot:0.6,mlp=true
PRUNE_METHODS.update({
    "cfsp": _lazy("pruning.cfsp", "build", "cfsp"),
    "cfsp-uniform": _lazy("pruning.cfsp", "build", "cfsp-uniform"),
    "channel-magnitude": _lazy("pruning.cfsp", "build", "channel-magnitude"),
    "wanda-sp": _lazy("pruning.wanda_sp", "build", "wanda-sp"),
    "flap": _lazy("pruning.flap", "build", "flap"),
    "magnitude": _lazy("pruning.sparsity", "build", "magnitude"),
    "wanda": _lazy("pruning.sparsity", "build", "wanda"),
    "dsnot": _lazy("pruning.dsnot", "build", "dsnot"),
})

# extreme quantization (docs/passes/quantization.md): codebooks (aqlm), + PV-Tuning (pv), + straight-through
# tuning (ste), round-to-nearest baseline (rtn), e.g. pv:2x8g8,steps=200  aqlm:1x8g8  rtn:2g64
QUANTIZE_METHODS.update({m: _lazy("quantization.quant_methods", "build", m)
                         for m in ("aqlm", "pv", "ste", "rtn", "gptq-int", "pv-int")})
CODEBOOK_METHODS = ("aqlm", "pv", "ste")      # their layers hold packed codes: nothing left to train by gradient
INT_METHODS = ("gptq-int", "pv-int")          # integer codes and fp16 scales as buffers: the same

# drafters (passes/drafting/drafter.py): fused self-speculative early exit ("fused", "fused:layers=8,steps=300,vocab=8192")
# or an external draft model with the same tokenizer (--drafter PATH)
DRAFTERS.update({"fused": _lazy("drafting.drafter", "build_fused"), "external": _lazy("drafting.drafter", "build_external")})
# EAGLE (passes/drafting/eagle.py): a one-layer drafter on the target's own hidden states ("eagle", "eagle:seconds=600")
DRAFTERS.update({"eagle": _lazy("drafting.eagle", "build_eagle")})


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


def conversion(options: CompileOptions) -> list:
    # after compression (the encoder copies the pruned layers), before export
    if not options.convert:
        return []
    from ..passes.encdec.convert import build
    return build(options.convert.partition(":")[2], options)


def drafting(options: CompileOptions, static: bool = False) -> list:
    # after compression: a compressed target gets a drafter derived from the compressed model
    if not options.drafter:
        return []
    name, _, arg = options.drafter.partition(":")
    if static and parse_kv_cache(options.kv_cache).fixed:
        raise InputError(f"--drafter {name} with --kv-cache {options.kv_cache.split(',')[0]} on a static-shape "
                         "target: an EAGLE drafter over a fixed-size cache runs on dynamic graphs (--target cpu)")
    quant = (options.quantize or "").partition(":")[0]
    if name in ("fused", "eagle") and quant in CODEBOOK_METHODS + INT_METHODS:
        # after packing, a codebook layer's codebooks and scales are buffers: the fused drafter's exit layer
        # would train only its two norm weights, so the combination is refused until it can train them
        raise InputError(f"--drafter {name} cannot follow --quantize {quant}: the drafter's layer would be "
                         "quantized layers with frozen codes and scales (only its norms would train); "
                         "use --weights int8/int4 with the drafter, or a draft model path")
    if name in DRAFTERS and name != "external":      # "fused", "fused:layers=8,steps=300", "eagle:seconds=600"
        return DRAFTERS[name](arg, options)
    if "external" not in DRAFTERS:
        raise InputError(f"drafters are not available (asked for '{options.drafter}')")
    return DRAFTERS["external"](options.drafter, options)   # a path to a draft model


def kv_spec(options: CompileOptions):
    """The --kv-cache spec with its chunk resolved (the spec's chunk=, else --prefill-chunk): training, the dynamic
    runtime and the static graphs all feed tokens in chunks of this size."""
    from dataclasses import replace
    spec = parse_kv_cache(options.kv_cache)
    if not spec.fixed:
        return spec
    return replace(spec, options={**spec.options, "chunk": int(spec.options.get("chunk", options.prefill_chunk))})


def kv_cache(options: CompileOptions) -> list:
    """--kv-cache lococo:M trains its compressors on the (compressed) model, before export."""
    spec = kv_spec(options)
    if spec.kind != "lococo":
        return []
    from ..passes.kvcache.kv_passes import LoCoCoConfig, LoCoCoPass
    return [LoCoCoPass(LoCoCoConfig(spec=spec.to_json(), calib=options.calib))]


def fixed_cache_len(options: CompileOptions) -> int:
    """Static graphs with a fixed cache: M + max(buffer, prefill chunk) slots, what the runtime fills at most."""
    spec = kv_spec(options)
    return spec.slots + max(spec.buffer, spec.options["chunk"]) if spec.fixed else options.cache_len


def _formats(options: CompileOptions) -> tuple:
    """The graph formats to export ("genai" is a folder made from the OpenVINO IR, not a graph format)."""
    formats = options.formats or FORMATS    # Target.pipeline resolves None to the target's default first
    return tuple(f for f in formats if f in GRAPH_FORMATS)


def genai_folder(options: CompileOptions) -> list:
    if "genai" not in (options.formats or ()):
        return []
    from ..passes.export.export_genai import ExportGenAIPass
    return [ExportGenAIPass()]


def export(options: CompileOptions, static: bool) -> list:
    # ONNX first, always: the OpenVINO IR is converted from the same ONNX graph (one source of truth);
    # without "onnx" in the formats that graph stays in a scratch dir and the artifact ships no .onnx
    from ..passes.export.export_onnx import ExportOnnxPass, ExportOnnxConfig
    from ..passes.export.export_openvino import ExportOpenVINOPass, ExportOpenVINOConfig
    formats = _formats(options)
    spec = kv_spec(options)
    chunk = spec.options["chunk"] if spec.fixed else options.prefill_chunk
    compress = []
    if spec.kind == "lococo":
        from ..passes.kvcache.kv_passes import ExportCompressConfig, ExportCompressPass
        compress = [ExportCompressPass(ExportCompressConfig(spec=spec.to_json(), formats=formats,
                                                            capacity=fixed_cache_len(options) if static else None))]
    return [
        ExportOnnxPass(ExportOnnxConfig(static=static, cache_len=fixed_cache_len(options),
                                        prefill_chunk=chunk, weights=options.weights,
                                        formats=formats, kv_cache=spec.to_json() if spec.fixed else None)),
        *compress,                      # before OpenVINO: it converts every registered ONNX graph
        *_encoder_export(options, static, formats),
        *_drafter_export(options),
        *([ExportOpenVINOPass(ExportOpenVINOConfig(weights=options.weights))] if "openvino" in formats else []),
        *native(options, static),
    ]


def _encoder_export(options: CompileOptions, static: bool, formats: tuple) -> list:
    if not options.convert:
        return []
    from ..passes.encdec.export import ExportEncoderConfig, ExportEncoderPass
    # static: the encoder takes half the cache at most (a longer prompt's rest goes through the decoder's prefill)
    return [ExportEncoderPass(ExportEncoderConfig(weights=options.weights, formats=formats,
                                                  length=options.cache_len // 2 if static else None))]


def native(options: CompileOptions, static: bool) -> list:
    """The native backend's weights (native/), checked against torch unless --no-validate."""
    if "native" not in (options.formats or ()) or static:
        return []
    from ..passes.export.export_native import ExportNativePass, ExportNativeConfig
    return [ExportNativePass(ExportNativeConfig(weights=options.weights, validate=options.validate))]


def _drafter_kind(options: CompileOptions) -> str | None:
    """"fused" or "eagle" (drafters exported as graphs of the artifact), else None."""
    kind = (options.drafter or "").partition(":")[0]
    return kind if kind in ("fused", "eagle") else None


def _drafter_export(options: CompileOptions) -> list:
    kind = _drafter_kind(options)
    if kind is None:
        return []
    from ..passes.drafting.export_drafter import ExportDrafterConfig
    cfg = ExportDrafterConfig(weights=options.weights, formats=_formats(options))
    if kind == "eagle":
        from ..passes.drafting.export_eagle import ExportEaglePass
        return [ExportEaglePass(cfg)]
    from ..passes.drafting.export_drafter import ExportDrafterPass
    return [ExportDrafterPass(cfg)]


def validation(options: CompileOptions) -> list:
    if not options.validate:
        return []
    from ..passes.export.validate import ValidatePass, ValidateConfig, backends_for
    backends = backends_for(_formats(options))     # validate exactly the formats that are written
    passes = [ValidatePass(ValidateConfig(weights=options.weights, backends=backends))]
    spec = kv_spec(options)
    if spec.fixed:
        from ..passes.kvcache.kv_passes import ValidateKVCachePass, ValidateKVConfig
        passes.append(ValidateKVCachePass(ValidateKVConfig(spec=spec.to_json(), backends=backends,
                                                           weights=options.weights)))
    kind = _drafter_kind(options)
    if kind is not None:
        from ..passes.drafting.export_drafter import ValidateDrafterPass, ValidateDrafterConfig
        cfg = ValidateDrafterConfig(weights=options.weights, backends=backends)
        if kind == "eagle":
            from ..passes.drafting.export_eagle import ValidateEaglePass
            passes.append(ValidateEaglePass(cfg))
        else:
            passes.append(ValidateDrafterPass(cfg))
    return passes
