"""What a target is, and the options `accelc compile` passes to it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..compiler.errors import InputError

WEIGHTS = ("fp32", "fp16", "int8", "int4")


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
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
        if self.cache_len < 16:
            raise InputError(f"--cache-len must be at least 16, got {self.cache_len}")
        if not 1 <= self.prefill_chunk <= self.cache_len:
            raise InputError(f"--prefill-chunk must be between 1 and the cache length, got {self.prefill_chunk}")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    static_shapes: bool                                  # NPU: every graph input shape fixed
    devices: tuple[str, ...]                             # runtime device preference for artifacts
    build: Callable[[CompileOptions], list] = field(repr=False)

    def pipeline(self, options: CompileOptions) -> list:
        return self.build(options)
