"""CUDA target: dynamic-shape graphs for ONNX Runtime's CUDA provider, torch as fallback."""
from .base import CompileOptions, Target
from . import phases


def build(options: CompileOptions) -> list:
    return [
        *phases.compression(options),
        *phases.conversion(options),    # --convert encdec: encoder-decoder (adapted) from the compressed model
        *phases.drafting(options),
        *phases.kv_cache(options),
        *phases.export(options, static=False),
        *phases.validation(options),
        *phases.genai_folder(options),  # only with --formats ...,genai
    ]


TARGET = Target("cuda", "NVIDIA GPU: dynamic-shape ONNX for ONNX Runtime CUDA (torch fallback)", static_shapes=False,
                devices=("cuda", "cpu"), build=build)
