"""OpenVINO backend: runs the artifact's IR (graphs/*.xml) on CPU or NPU.

CPU runs are pinned: INFERENCE_NUM_THREADS = threads and INFERENCE_PRECISION_HINT = f32, so that
hosts that default to bf16 compute the same numbers and comparisons with other engines are fair.
Inputs are wrapped as ov.Tensor(..., shared_memory=True) (no copy); outputs are views of the
request's tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..compiler.errors import ArtifactError
from .backends import count_layers, graph_file, input_names, output_names


def available_devices() -> list[str]:
    import openvino as ov
    return list(ov.Core().available_devices)


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, xml: Path, device: str, threads: int):
        import openvino as ov
        self._Tensor = ov.Tensor
        core = ov.Core()
        ov_device = device.upper()
        if ov_device not in core.available_devices:
            raise ArtifactError(f"OpenVINO has no {ov_device} device (available: {', '.join(core.available_devices)})")
        model = core.read_model(str(xml))
        names = [n for p in model.inputs for n in p.get_names()]
        self.layers = count_layers(names, xml.name)
        props = {"PERFORMANCE_HINT": "LATENCY"}
        if ov_device == "CPU":
            props.update({"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32",
                          "NUM_STREAMS": 1})
        self.device = device.lower()
        self.compiled = core.compile_model(model, ov_device, props)
        self.request = self.compiled.create_infer_request()
        in_index = {n: i for i, p in enumerate(self.compiled.inputs) for n in p.get_names()}
        out_index = {n: i for i, p in enumerate(self.compiled.outputs) for n in p.get_names()}
        missing = [n for n in output_names(self.layers) if n not in out_index]
        if missing:
            raise ArtifactError(f"{xml.name} lacks outputs {', '.join(missing[:4])}")
        self._in = [in_index[n] for n in input_names(self.layers)]
        self._out = [out_index[n] for n in output_names(self.layers)]

    def forward(self, input_ids, position_ids, attention_mask, cache):
        req, Tensor = self.request, self._Tensor
        for idx, arr in zip(self._in, (input_ids, position_ids, attention_mask, *cache)):
            req.set_input_tensor(idx, Tensor(arr, shared_memory=True))
        req.infer()
        outs = [req.get_output_tensor(i).data for i in self._out]
        return outs[0], outs[1:]


def load(artifact_dir: Path, graph: dict, device: str, threads: int, manifest: dict) -> OpenVINOBackend:
    return OpenVINOBackend(graph_file(artifact_dir, graph, "openvino", "openvino"), device, threads)
