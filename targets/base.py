"""What a target is, and the options `accelc compile` passes to it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

from ..compiler.errors import InputError
from ..compiler.kv_spec import parse_kv_cache

WEIGHTS = ("fp32", "fp16", "int8", "int4")
# what an artifact can ship: graph formats (OpenVINO IR is converted from ONNX), and "genai", the optimum-style
# OpenVINO folder (openvino/) that openvino-genai and optimum-intel open; it shares the OpenVINO IR's weights;
# and "native", the weights in the formats the native CPU backend runs (native/: runtime/native/)
FORMATS = ("openvino", "onnx", "genai", "native")
GRAPH_FORMATS = ("openvino", "onnx")


def parse_formats(value) -> tuple | None:
    """'openvino,onnx' / ('onnx',) -> a tuple in FORMATS order; None stays None (the target's default)."""
    if value is None:
        return None
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in FORMATS]
    if bad or not items:
        raise InputError(f"unknown graph format '{bad[0] if bad else value}' in --formats "
                         f"(choose one or more of {', '.join(FORMATS)}, comma-separated)")
    if "genai" in items and "openvino" not in items:
        raise InputError("--formats genai needs openvino too (the genai folder shares the OpenVINO IR's weights)")
    return tuple(f for f in FORMATS if f in items)


def codebook_bits(quantize: str | None) -> int | None:
    """B of a codebook spec ("pv:2x8g8,..." -> 8); None for no spec, rtn or an unparsable one (its pass says why)."""
    m = re.match(r"^(aqlm|pv|ste):\d+x(\d+)g\d+(,|$)", quantize or "")
    return int(m.group(2)) if m else None


@dataclass(frozen=True)
class CompileOptions:
    weights: str = "fp32"            # weight precision of the exported graphs (NNCF for int8/int4)
    prune: str | None = None         # e.g. "cfsp:0.3", "dsnot:0.6" (see docs/passes/pruning.md)
    quantize: str | None = None      # e.g. "pv:2x8g8" (see docs/passes/quantization.md)
    drafter: str | None = None       # "fused" or a path to a draft model
    calib: str | None = None         # calibration text file (default: the Brown calibration split)
    cache_len: int = 1024            # static KV-cache length for static-shape targets
    prefill_chunk: int = 64          # static prefill chunk for static-shape targets
    validate: bool = True            # compare the exported graphs to torch before writing
    formats: tuple | None = None     # graph formats to ship, e.g. ("openvino",); None: the target's default
    kv_cache: str = "full"           # --kv-cache: full, window:M, sink:M, h2o:M, lococo:M[,...] (compiler/kv_spec.py)
    convert: str | None = None       # --convert encdec[:decoder_layers=N,...] (passes/encdec/)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
        if self.cache_len < 16:
            raise InputError(f"--cache-len must be at least 16, got {self.cache_len}")
        if not 1 <= self.prefill_chunk <= self.cache_len:
            raise InputError(f"--prefill-chunk must be between 1 and the cache length, got {self.prefill_chunk}")
        object.__setattr__(self, "kv_cache", (self.kv_cache or "full").strip())
        spec = parse_kv_cache(self.kv_cache)
        if spec.fixed and self.drafter and self.drafter.partition(":")[0] != "eagle":
            raise InputError(f"--kv-cache {spec} with --drafter {self.drafter.partition(':')[0]}: only an EAGLE drafter "
                             "runs over a fixed-size cache (--drafter eagle); or speculate by prompt lookup: accelc "
                             "run ART --draft-mode lookup")
        if self.convert:
            from ..passes.encdec.options import parse_convert
            parse_convert(self.convert)
            for flag, value in (("--drafter", self.drafter), ("--quantize", self.quantize)):
                if value:
                    raise InputError(f"--convert {self.convert.partition(':')[0]} with {flag}: not supported yet "
                                     f"(an encoder-decoder takes --prune and --weights int8/int4)")
            if spec.fixed:
                raise InputError(f"--convert {self.convert.partition(':')[0]} with --kv-cache {spec}: a fixed-size "
                                 "cache over an encoder's memory is not built (use --kv-cache full)")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    static_shapes: bool                                  # NPU: every graph input shape fixed
    devices: tuple[str, ...]                             # runtime device preference for artifacts
    build: Callable[[CompileOptions], list] = field(repr=False)
    formats: tuple[str, ...] = GRAPH_FORMATS             # formats shipped unless --formats says otherwise
    needs: tuple[str, ...] = ()                          # formats this target cannot do without

    def resolve(self, options: CompileOptions) -> CompileOptions:
        """`options` with formats filled in from the target's default, checked against what it needs. The native
        backend runs 8-bit codebooks only: another codebook width leaves native out of the default formats, and
        is refused here (before the model loads) when --formats asks for native."""
        formats = options.formats or self.formats
        if parse_kv_cache(options.kv_cache).fixed:
            # the native backend and the genai folder's stateful graph keep a growing cache
            asked = [f for f in ("native", "genai") if f in (options.formats or ())]
            if asked:
                raise InputError(f"--kv-cache {options.kv_cache.split(',')[0]}: the {asked[0]} format keeps a "
                                 "growing cache; leave it out of --formats")
            formats = tuple(f for f in formats if f not in ("native", "genai"))
        if options.convert:
            # the native backend and the genai folder run decoder-only models
            asked = [f for f in ("native", "genai") if f in (options.formats or ())]
            if asked:
                raise InputError(f"--convert encdec: the {asked[0]} format runs decoder-only models; leave it out "
                                 "of --formats")
            formats = tuple(f for f in formats if f not in ("native", "genai"))
        bits = codebook_bits(options.quantize)
        if "native" in formats and bits not in (None, 8):
            if options.formats:
                raise InputError(f"the native format runs 8-bit codebooks (MxBgG with B = 8), not --quantize "
                                 f"{options.quantize.split(',')[0]}: leave native out of --formats")
            formats = tuple(f for f in formats if f != "native")
        if "genai" in formats and self.static_shapes:
            raise InputError(f"--target {self.name} makes static graphs; the genai folder holds a dynamic stateful "
                             "graph (use --target cpu, or leave genai out of --formats)")
        missing = [f for f in self.needs if f not in formats]
        if missing:
            raise InputError(f"--target {self.name} needs the {missing[0]} format (asked for --formats "
                             f"{','.join(formats)})")
        return replace(options, formats=formats)

    def pipeline(self, options: CompileOptions) -> list:
        return self.build(self.resolve(options))
