"""CPU target: dynamic shapes (any prompt and cache length): OpenVINO IR, ONNX, the genai folder and the
native backend's weights."""
from .base import CompileOptions, Target
from . import phases


def build(options: CompileOptions) -> list:
    return [
        *phases.compression(options),   # prune, then quantize
        *phases.conversion(options),    # --convert encdec: encoder-decoder (adapted) from the compressed model
        *phases.drafting(options),      # drafter from the compressed target
        *phases.kv_cache(options),      # lococo: train the cache compressors on the compressed model
        *phases.export(options, static=False),
        *phases.validation(options),    # exported graphs vs torch
        *phases.genai_folder(options),  # after validation: it moves the validated IR's weights into openvino/
    ]


TARGET = Target("cpu", "x86/ARM CPU: dynamic-shape ONNX + OpenVINO IR (+ an openvino-genai/optimum-intel folder)",
                static_shapes=False, devices=("cpu",), build=build, formats=("openvino", "onnx", "genai", "native"))
