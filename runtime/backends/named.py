"""A graph run by input and output names on OpenVINO or ONNX Runtime: the graphs beside the decoder that take no
KV cache of their own (a fixed cache's compression graph, an encoder-decoder's encoder)."""
from __future__ import annotations

import numpy as np

from ...compiler.errors import ArtifactError


class NamedGraph:
    def __init__(self, path, backend: str, device: str, threads: int, inputs: list[str], outputs: list[str],
                 what: str):
        self._in, self._out = list(inputs), list(outputs)
        if backend == "openvino":
            import openvino as ov
            props = {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"} \
                if device.upper() == "CPU" else {}
            self.compiled = ov.Core().compile_model(str(path), device.upper(), props)
            names = {n for o in self.compiled.outputs for n in o.get_names()}
            self.request = self.compiled.create_infer_request()
            self.kind = "openvino"
        elif backend == "onnxruntime":
            import onnxruntime as ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            so.log_severity_level = 3
            prov = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
            self.session = ort.InferenceSession(str(path), so, providers=prov)
            names = {o.name for o in self.session.get_outputs()}
            self.kind = "onnxruntime"
        else:
            raise ArtifactError(f"the {backend} backend does not run {what} (use --backend openvino or onnxruntime)")
        missing = [n for n in self._out if n not in names]
        if missing:
            raise ArtifactError(f"{what} lacks outputs {', '.join(missing[:4])}")

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = dict(zip(self._in, arrays))
        if self.kind == "onnxruntime":
            return self.session.run(self._out, feeds)
        res = self.request.infer(feeds)
        return [res[self.compiled.output(n)] for n in self._out]
