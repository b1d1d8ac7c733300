"""NPU target: fully static graphs (fixed prefill chunk, fixed cache length), as NPU compilers need.

No NPU is present on the development machines: the static graphs are checked on the CPU plugin.
"""
from .base import CompileOptions, Target
from . import phases


def build(options: CompileOptions) -> list:
    return [
        *phases.compression(options),
        *phases.conversion(options),    # --convert encdec: encoder-decoder (adapted) from the compressed model
        *phases.drafting(options, static=True),
        *phases.kv_cache(options),      # lococo: train the cache compressors on the compressed model
        *phases.export(options, static=True),   # static: every input shape fixed
        *phases.validation(options),
    ]


TARGET = Target("npu", "Intel NPU via OpenVINO: static shapes (fixed chunk, fixed cache)", static_shapes=True,
                devices=("npu", "cpu"), build=build, needs=("openvino",))
