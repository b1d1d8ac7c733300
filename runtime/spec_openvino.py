"""OpenVINO graph functions for speculative decoding's step models (runtime/spec_steps.py).

The drafter's graphs (trunk: ids -> hidden, draft head: hidden -> logits, verify tail: hidden -> logits)
name their inputs and outputs by absolute layer (past_key.8 ...) and carry hidden states, so they are run
here by name rather than through the decoder-only backends. Same CPU settings as backend_openvino:
f32 precision hint, pinned threads, one stream; inputs are shared (no copy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .spec_steps import GraphFn


def openvino_graph_fn(path: str | Path, input_names: Sequence[str], output_names: Sequence[str],
                      threads: int, device: str = "CPU") -> GraphFn:
    import openvino as ov
    core = ov.Core()
    props = {"PERFORMANCE_HINT": "LATENCY"}
    if device.upper() == "CPU":
        props.update({"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1})
    compiled = core.compile_model(core.read_model(str(path)), device.upper(), props)
    request = compiled.create_infer_request()
    ins, outs = list(input_names), list(output_names)

    def fn(inputs, position_ids, attention_mask, past):
        for name, arr in zip(ins, (inputs, position_ids, attention_mask, *past)):
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(arr), shared_memory=True))
        request.infer()
        res = [request.get_tensor(n).data for n in outs]
        return res[0], res[1:]
    return fn
