"""OpenVINO graph functions for speculative decoding's step models (runtime/speculative/steps.py).

The drafter's graphs (trunk: ids -> hidden, draft head: hidden -> logits, verify tail: hidden -> logits)
name their inputs and outputs by absolute layer (past_key.8 ...) and carry hidden states, so they are run
here by name rather than through the decoder-only backends. Same CPU settings as backends/openvino.py:
f32 precision hint, pinned threads, one stream; inputs are shared (no copy).

On CPU each graph is rewritten at load time into a stateful one (runtime/backends/ov_stateful.py, as the decoder
backend does): its KV cache lives in the infer request's states, the CPU plugin appends new rows in place,
and rolling back trims the states. The caller's KVCache is then bookkeeping only (`stateful` attribute of
the function; steps._run). The past length of each call is read from the attention mask, so a
rollback of the caller's cache is applied to the states on the next call. ACCELC_OV_KV=explicit keeps the
explicit-cache graphs (the caller's buffers passed in, new rows copied out).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ...compiler.graph import ATTENTION_MASK, BEAM_IDX, POSITION_IDS, is_new, is_past
from ..backends.ov_stateful import run_request
from .steps import GraphFn

log = logging.getLogger(__name__)


def openvino_graph_fn(path: str | Path, input_names: Sequence[str], output_names: Sequence[str],
                      threads: int, device: str = "CPU", stateful: bool | None = None) -> GraphFn:
    import openvino as ov
    from ..backends.openvino import kv_mode
    core = ov.Core()
    props = {"PERFORMANCE_HINT": "LATENCY"}
    cpu = device.upper() == "CPU"
    if cpu:
        props.update({"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    model = core.read_model(str(path))
    if stateful is None:
        stateful = cpu and kv_mode() == "stateful"
    if stateful:
        from ...compiler.errors import ArtifactError
        from ..backends.ov_stateful import make_stateful
        try:
            make_stateful(model)
        except ArtifactError as e:            # a graph the rewrite does not know: keep the explicit cache
            log.warning("%s: keeping the explicit KV cache: %s", Path(path).name, e)
            stateful = False
            model = core.read_model(str(path))
        else:
            props["KV_CACHE_PRECISION"] = "f32"
    compiled = core.compile_model(model, device.upper(), props)
    request = compiled.create_infer_request()
    if stateful:
        return StatefulGraphFn(request, [n for n in input_names if n not in (POSITION_IDS, ATTENTION_MASK)
                                         and not is_past(n)], [n for n in output_names if not is_new(n)])
    ins, outs = list(input_names), list(output_names)
    main = sum(1 for n in outs if not is_new(n))

    def fn(inputs, position_ids, attention_mask, past):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        for name, arr in zip(ins, (*xs, position_ids, attention_mask, *past)):
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr), shared_memory=True))
        run_request(request)
        res = [request.get_tensor(n).data for n in outs]
        return (tuple(res[:main]) if main > 1 else res[0]), res[main:]
    return fn


class StatefulGraphFn:
    """The graph contract's function over a stateful infer request: `past` is ignored (the states hold it),
    the past length is attention_mask width - T, and the second result is None (nothing to append)."""

    stateful = True

    def __init__(self, request, input_names, output_names):
        import openvino as ov
        self.request, self._Tensor = request, ov.Tensor
        self._inputs = [input_names] if isinstance(input_names, str) else list(input_names)
        self._outputs = [output_names] if isinstance(output_names, str) else list(output_names)
        self._beam = np.zeros(1, dtype=np.int32)
        self.held = 0                            # positions in the request's states; -1: unknown

    def __call__(self, inputs, position_ids, attention_mask, past=()):
        from ..backends.ov_stateful import sync_states
        req, Tensor = self.request, self._Tensor
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        n = xs[0].shape[1]
        past_len = attention_mask.shape[1] - n
        sync_states(req, self.held, past_len)
        for name, arr in (*zip(self._inputs, xs), (POSITION_IDS, position_ids),
                          (ATTENTION_MASK, attention_mask), (BEAM_IDX, self._beam)):
            req.set_tensor(name, Tensor(np.ascontiguousarray(arr), shared_memory=True))
        self.held = -1
        run_request(req)
        self.held = past_len + n
        outs = tuple(req.get_tensor(o).data for o in self._outputs)
        return (outs if len(outs) > 1 else outs[0]), None
