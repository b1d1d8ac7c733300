"""OpenVINO backend: runs the artifact's IR (graphs/*.xml) on CPU or NPU.

CPU runs are pinned: INFERENCE_NUM_THREADS = threads and INFERENCE_PRECISION_HINT = f32, so that
hosts that default to bf16 compute the same numbers and comparisons with other engines are fair.
Inputs are wrapped as ov.Tensor(..., shared_memory=True) (no copy); outputs are views of the
request's tensors.

KV cache representation on CPU (docs/runtime.md, "cache representation"): by default the dynamic decoder
graph is rewritten at load time into a stateful one (runtime/backends/ov_stateful.py): the KV cache lives in the
infer request's variables and the CPU plugin appends to it in place inside its fused attention node. Then
`forward` is not used; `forward_stateful(ids, pos, mask, past_len)` is, and the runtime's KV cache is
bookkeeping only (decode.py). Opened with full_logits=False (generation), the stateful graph also gets
genai's slice before the head (last position's logits only; ov_stateful.slice_last_logits).
ACCELC_OV_KV=explicit keeps the explicit-cache graph (the caller's preallocated buffers, passed as views
every call), as do NPU and static graphs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...compiler.errors import ArtifactError
from ...compiler.graph import (ATTENTION_MASK, BEAM_IDX, INPUT_IDS, LOGITS, POSITION_IDS, count_layers, input_names,
                              output_kind, output_names, past_key, past_value)
from . import check_cache_dims, graph_file
from .ov_stateful import run_request

log = logging.getLogger(__name__)
KV_MODES = ("stateful", "explicit")


def kv_mode() -> str:
    mode = os.environ.get("ACCELC_OV_KV", "stateful").strip().lower()
    if mode not in KV_MODES:
        raise ArtifactError(f"ACCELC_OV_KV must be one of {', '.join(KV_MODES)}, got '{mode}'")
    return mode


def available_devices() -> list[str]:
    import openvino as ov
    return list(ov.Core().available_devices)


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, xml: Path, device: str, threads: int, stateful: bool = False, full_logits: bool = True,
                 manifest: dict | None = None, weights: Path | None = None, scores: bool = False,
                 output: str = "logits"):
        import openvino as ov
        self._Tensor = ov.Tensor
        core = ov.Core()
        ov_device = device.upper()
        if ov_device not in core.available_devices:
            raise ArtifactError(f"OpenVINO has no {ov_device} device (available: {', '.join(core.available_devices)})")
        self._xml, self._weights, self._threads = xml, weights, int(threads)
        self._scores = scores          # a fixed cache's graph: attn_scores outputs after the new keys/values
        self._output = output          # "both": logits then hidden_out (an EAGLE target): forward's outs[0] is hidden
        # weights: the IR's .bin when it is not beside the .xml (graphs/decoder.xml reads openvino/openvino_model.bin,
        # shared with the optimum-style folder: passes/export/export_genai.py)
        model = core.read_model(str(xml), str(weights)) if weights else core.read_model(str(xml))
        names = [n for p in model.inputs for n in p.get_names()]
        self.layers = count_layers(names, xml.name)
        past = model.input(past_key(0)).get_partial_shape()
        check_cache_dims([d.get_length() if d.is_static else None for d in past], manifest or {}, xml.name)
        props = {"PERFORMANCE_HINT": "LATENCY"}
        if ov_device == "CPU":
            props.update({"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32",
                          "NUM_STREAMS": 1})
        self.device = device.lower()
        self.stateful = False
        self.last_logits_only = False         # stateful graph sliced to the last position's logits
        if stateful and ov_device == "CPU":
            self.stateful = self._make_stateful(model)
            if self.stateful:
                props["KV_CACHE_PRECISION"] = "f32"
                if not full_logits:
                    from .ov_stateful import slice_last_logits
                    self.last_logits_only = slice_last_logits(model)
        self.compiled = core.compile_model(model, ov_device, props)
        if self.stateful:
            self.request = self.compiled.create_infer_request()
            self.held = 0                         # positions in the request's KV states
            self._beam = np.zeros(1, dtype=np.int32)
            self._s_in = [next(i for i, p in enumerate(self.compiled.inputs) if n in p.get_names())
                          for n in (INPUT_IDS, POSITION_IDS, ATTENTION_MASK, BEAM_IDX)]
            self._logits = next(i for i, p in enumerate(self.compiled.outputs) if LOGITS in p.get_names())
            self._explicit = None             # compiled on first forward() (explicit-cache callers)
            return
        self._bind_explicit(self.compiled)

    def _bind_explicit(self, compiled) -> None:
        self.request = compiled.create_infer_request()
        in_index = {n: i for i, p in enumerate(compiled.inputs) for n in p.get_names()}
        out_index = {n: i for i, p in enumerate(compiled.outputs) for n in p.get_names()}
        outs = output_names(self.layers, output=self._output, scores=self._scores)
        missing = [n for n in outs if n not in out_index]
        if missing:
            raise ArtifactError(f"{self._xml.name} lacks outputs {', '.join(missing[:4])}")
        self._in = [in_index[n] for n in input_names(self.layers)]
        self._out = [out_index[n] for n in outs]

    @staticmethod
    def _make_stateful(model) -> bool:
        from .ov_stateful import make_stateful
        try:
            make_stateful(model)
        except ArtifactError as e:          # a graph this rewrite does not know: keep the explicit cache
            log.warning("keeping the explicit KV cache: %s", e)
            return False
        return True

    def forward_stateful(self, input_ids, position_ids, attention_mask, past_len: int):
        """Stateful graphs: run input_ids [1, T] after the first past_len cached positions (trimming or
        resetting the request's KV states first when they hold more) -> logits [1, T, V] (a view); [1, 1, V]
        (the last position) when the backend was opened with full_logits=False."""
        from .ov_stateful import sync_states
        req, Tensor = self.request, self._Tensor
        sync_states(req, self.held, past_len)
        for idx, arr in zip(self._s_in, (input_ids, position_ids, attention_mask, self._beam)):
            req.set_input_tensor(idx, Tensor(arr, shared_memory=True))
        self.held = -1                       # unknown until infer returns (a failed call resets on the next)
        run_request(req)
        self.held = past_len + input_ids.shape[1]
        return req.get_output_tensor(self._logits).data

    def write_states(self, cache: list[np.ndarray]) -> None:
        """Stateful graphs: replace the request's KV states by cache (key.0, value.0, ... [1, P, H, D], in input
        order): an encoder-decoder's memory, written before the decoder's first call (runtime/encoder.py)."""
        names = [n for i in range(self.layers) for n in (past_key(i), past_value(i))]
        by_name = dict(zip(names, cache))
        states = list(self.request.query_state())
        if len(states) != len(names) or any(vs.name not in by_name for vs in states):
            raise ArtifactError("the stateful graph's KV states do not match the encoder's memory")
        for vs in states:
            vs.state = self._Tensor(np.ascontiguousarray(by_name[vs.name]))
        self.held = cache[0].shape[1]

    def forward(self, input_ids, position_ids, attention_mask, cache):
        """The explicit-cache call (backends.py). On a stateful backend this compiles the unmodified graph
        once, beside the stateful one, so callers that manage their own cache keep working."""
        if self.stateful:
            if self._explicit is None:
                self._explicit = OpenVINOBackend(self._xml, self.device, self._threads, weights=self._weights,
                                                 output=self._output)
            return self._explicit.forward(input_ids, position_ids, attention_mask, cache)
        req, Tensor = self.request, self._Tensor
        for idx, arr in zip(self._in, (input_ids, position_ids, attention_mask, *cache)):
            req.set_input_tensor(idx, Tensor(arr, shared_memory=True))
        run_request(req)
        outs = [req.get_output_tensor(i).data for i in self._out]
        return outs[0], outs[1:]


def load(artifact_dir: Path, graph: dict, device: str, threads: int, manifest: dict,
         full_logits: bool = True) -> OpenVINOBackend:
    fixed = graph.get("cache") == "fixed"      # the runtime cuts a fixed cache: it passes the cache explicitly
    stateful = not graph.get("static") and not fixed and kv_mode() == "stateful"
    weights = graph_file(artifact_dir, graph, "openvino_bin", "openvino") if graph.get("openvino_bin") else None
    return OpenVINOBackend(graph_file(artifact_dir, graph, "openvino", "openvino"), device, threads, stateful,
                           full_logits, manifest, weights, scores=fixed, output=output_kind(graph))
