"""OpenVINO-only rewrite of our explicit-cache decoder into a stateful one (KV cache in ReadValue/Assign).

Our exported graph (docs/architecture.md) takes past_key.{i}/past_value.{i} [B,P,H,D] and, per layer,
concatenates the new key/value to them and runs explicit attention (grouped MatMul, Softmax, MatMul).
Every decode step therefore copies the whole cache twice inside the graph (Concat, then a Transpose to
[B,H,D,S]), and the caller's view of it is re-bound each step: cost that grows with the context.

This rewrite, done on the IR at load time (the artifact is unchanged), per layer:
  - replaces the explicit attention by opset13 ScaledDotProductAttention over
    Transpose(q), Transpose(Reshape(Broadcast(Unsqueeze(concat_k)))) (the GQA head repeat), same for v,
    with the graph's own additive mask and scale;
  - turns past_key.{i}/past_value.{i} into ReadValue -> Gather(beam_idx) variables whose Assign takes the
    concatenated cache.
That is the pattern the CPU plugin's StatefulSDPAFusion matches: it fuses Concat + Assign + attention into
one ScaledDotProductAttentionWithKVCache node that appends the new rows in place (no copy of the past).
The graph gains an input beam_idx (i32 [B], always 0 here) and loses its new_key/new_value outputs.
The fused drafter's graphs (hidden_in instead of input_ids, absolute layer numbers) are rewritten the same way
(runtime/speculative/openvino.py).

Rolling back (speculative decoding) trims the states: `trim_states` keeps the first n rows of each as an
ROI of the state's own tensor (no copy by us).
"""
from __future__ import annotations

import numpy as np

from ...compiler.errors import ArtifactError
from ...compiler.graph import BEAM_IDX, HIDDEN_IN, INPUT_IDS, LOGITS, PAST_KEY, is_new, past_key, past_layers, past_value

ORDER = np.array([0, 2, 1, 3], np.int64)            # [B, S, H, D] <-> [B, H, S, D]


def _only(node, typ: str):
    found = [t.get_node() for t in node.output(0).get_target_inputs() if t.get_node().get_type_name() == typ]
    if len(found) != 1:
        raise ArtifactError(f"stateful rewrite: {node.get_friendly_name()} has {len(found)} {typ} consumers")
    return found[0]


def _layer_attention(concat_k):
    """The explicit-attention nodes of one layer, found from its key Concat (see the module docstring)."""
    qk = _only(_only(_only(concat_k, "Transpose"), "Unsqueeze"), "MatMul")
    mul = _only(qk, "Multiply")
    add = _only(mul, "Add")
    av = _only(_only(add, "Softmax"), "MatMul")
    out = _only(av, "Transpose")                           # [B, Hkv, G, T, D] -> [B, T, Hkv, G, D]
    q_rope = qk.input_value(0).get_node().input_value(0).get_node().input_value(0)   # Transpose <- Reshape <- q
    return q_rope, mul.input_value(1), add.input_value(1), out


def make_stateful(model) -> int:
    """Rewrite `model` (an ov.Model of our decoder graph) in place; -> the number of layers rewritten."""
    import openvino as ov
    import openvino.opset13 as op
    import openvino.opset6 as op6
    from openvino.op.util import Variable, VariableInfo

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    # layer numbers as named in the graph: 0..N-1 for the decoder, absolute ones for the drafter's
    # trunk (0..L-1) and verify tail (L..N-1) graphs (passes/drafting/export_drafter.py)
    ids = past_layers(params)
    if not ids or not ({INPUT_IDS, HIDDEN_IN} & set(params)):
        raise ArtifactError(f"stateful rewrite: the graph has no {PAST_KEY}* inputs")
    beam_idx = op.parameter(ov.PartialShape([-1]), ov.Type.i32, name=BEAM_IDX)
    beam_idx.output(0).get_tensor().set_names({BEAM_IDX})
    order = op.constant(ORDER)
    for i in ids:
        pk, pv = params[past_key(i)], params[past_value(i)]
        ck, cv = _only(pk, "Concat"), _only(pv, "Concat")
        q_rope, scale, mask5, out = _layer_attention(ck)
        h_kv, d = pk.get_output_partial_shape(0)[2].get_length(), pk.get_output_partial_shape(0)[3].get_length()
        h_q = q_rope.get_partial_shape()[2].get_length()

        def heads(c):        # [B, S, Hkv, D] -> [B, Hq, S, D], each kv head repeated Hq/Hkv times
            u = op.unsqueeze(c.output(0), op.constant(np.array([3], np.int64)))
            b = op.broadcast(u, op.constant(np.array([1, 1, 1, h_q // h_kv, 1], np.int64)),
                             broadcast_spec="BIDIRECTIONAL")
            r = op.reshape(b, op.constant(np.array([0, 0, h_q, d], np.int64)), True)
            return op.transpose(r, order)

        mask = op.squeeze(mask5, op.constant(np.array([1], np.int64)))            # [B,1,1,T,S] -> [B,1,T,S]
        sc = op.reshape(scale, op.constant(np.array([], np.int64)), False)
        att = op.scaled_dot_product_attention(op.transpose(q_rope, order), heads(ck), heads(cv), mask, sc,
                                              causal=False)
        res = op.transpose(att, order)                                             # [B, T, Hq, D]
        res = op.reshape(res, op.constant(np.array([0, 0, h_kv, h_q // h_kv, d], np.int64)), True)
        for t in list(out.output(0).get_target_inputs()):
            t.replace_source_output(res.output(0))
        del out, q_rope, scale, mask5          # drop the last handles on the dead explicit-attention nodes
        for p, c in ((pk, ck), (pv, cv)):
            name = p.get_friendly_name()
            init = op.constant(np.zeros((1, 0, h_kv, d), np.float32))
            info = VariableInfo()
            info.variable_id, info.data_type, info.data_shape = name, ov.Type.f32, ov.PartialShape([-1, -1, h_kv, d])
            var = Variable(info)
            model.add_variables([var])
            rv = op6.read_value(init, var)
            g = op.gather(rv, beam_idx, op.constant(np.array(0, np.int64)))
            for t in list(p.output(0).get_target_inputs()):
                t.replace_source_output(g.output(0))
            model.add_sinks([op6.assign(c, var)])
            model.remove_parameter(p)
    for r in list(model.get_results()):
        names = r.output(0).get_names() | r.input(0).get_tensor().get_names()
        if any(is_new(n) for n in names):
            model.remove_result(r)
    model.add_parameters([beam_idx])
    model.validate_nodes_and_infer_types()
    return len(ids)


def slice_last_logits(model) -> bool:
    """Insert Slice(hidden, [-1:], axis 1) before the head MatMul that feeds the `logits` output, as
    openvino-genai does: the graph then returns the last position's logits only (prefill skips the head for
    every other prompt position) and the head's M dimension is bounded to 1. Decode, SmolLM2-135M, lockstep
    sliced / unsliced: fp32 1.004, int8 1.000, int4 1.031 (docs/runtime.md, "Closing in on genai").
    -> False (model unchanged) when no MatMul feeds `logits`."""
    import openvino.opset13 as op
    res = [r for r in model.get_results() if LOGITS in r.output(0).get_names() | r.input_value(0).get_names()]
    if len(res) != 1:
        return False
    node = res[0].input_value(0).get_node()
    while node.get_type_name() != "MatMul":          # through a final softcap (Gemma-2) or a Convert
        if node.get_type_name() not in ("Convert", "Multiply", "Divide", "Tanh"):
            return False
        node = node.input_value(0).get_node()
    x = node.input_value(0)
    i64 = lambda v: op.constant(np.array([v], np.int64))
    last = op.slice(x, i64(-1), i64(np.iinfo(np.int64).max), i64(1), i64(1))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return True


def run_request(request) -> None:
    """Run an infer request whose inputs are set; read its outputs with get_output_tensor / get_tensor.
    Not `request.infer()`: the Python wrapper copies every output into a new OVDict on each
    call. Decode vs openvino-genai, SmolLM2-135M int8, interleaved:
    0.84-0.87 with infer(), 0.986 with start_async + wait (docs/runtime.md)."""
    request.start_async()
    request.wait()


def sync_states(request, held: int, past_len: int) -> None:
    """Before a call on `past_len` cached positions: reset the states when their length is unknown (held < 0,
    after a failed call), trim them when they hold more; more requested than held is an error."""
    if held < 0:
        request.reset_state()
        held = 0
    if past_len != held:
        if past_len > held:
            raise ValueError(f"the KV states hold {held} positions, not {past_len}")
        trim_states(request, past_len)


def trim_states(request, length: int) -> None:
    """Keep the first `length` positions of every KV state of an infer request ([B, S, H, D] states)."""
    import openvino as ov
    if length == 0:
        request.reset_state()
        return
    for vs in request.query_state():
        t = vs.state
        shape = list(t.shape)
        if shape[1] < length:
            raise ValueError(f"state {vs.name} holds {shape[1]} positions, cannot keep {length}")
        if shape[1] != length:
            vs.state = ov.Tensor(t, ov.Coordinate([0] * len(shape)), ov.Coordinate([shape[0], length, *shape[2:]]))
