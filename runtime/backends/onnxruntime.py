"""ONNX Runtime backend: runs the artifact's ONNX graph (graphs/*.onnx) on CPU, or CUDA when the
CUDAExecutionProvider is installed.

Intra-op threads are pinned to `threads`, inter-op to 1 (sequential execution). On CPU, contiguous
numpy inputs of the right dtype are used by ONNX Runtime in place (no copy).
On CUDA the cache lives on the host and crosses to the device at every call (simple, not fast).
"""
from __future__ import annotations

from pathlib import Path

from ...compiler.errors import ArtifactError
from ...compiler.graph import count_layers, input_names, output_kind, output_names, past_key
from . import check_cache_dims, graph_file


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str, threads: int, manifest: dict | None = None,
                 scores: bool = False, output: str = "logits"):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ArtifactError("ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ArtifactError(f"the onnxruntime backend runs on cpu or cuda, not {device}")
        self.device = device
        self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        names = [i.name for i in self.session.get_inputs()]
        self.layers = count_layers(names, onnx_path.name)
        past = next(i for i in self.session.get_inputs() if i.name == past_key(0))
        check_cache_dims(past.shape, manifest or {}, onnx_path.name)
        self._in = input_names(self.layers)
        # scores: a fixed cache's attn_scores after new_kv; output "both": logits then hidden_out (an EAGLE target)
        self._out = output_names(self.layers, output=output, scores=scores)
        have = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self._out if n not in have]
        if missing:
            raise ArtifactError(f"{onnx_path.name} lacks outputs {', '.join(missing[:4])}")

    def forward(self, input_ids, position_ids, attention_mask, cache):
        outs = self.session.run(self._out, dict(zip(self._in, (input_ids, position_ids, attention_mask, *cache))))
        return outs[0], outs[1:]


def load(artifact_dir: Path, graph: dict, device: str, threads: int, manifest: dict,
         full_logits: bool = True) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(graph_file(artifact_dir, graph, "onnx", "onnxruntime"), device, threads, manifest,
                              scores=graph.get("cache") == "fixed", output=output_kind(graph))
