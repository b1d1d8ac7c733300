"""The OpenVINO stateful rewrite (runtime/backends/ov_stateful.py) and the backend's stateful KV cache."""
import numpy as np
import openvino as ov
import pytest

from accelc.compiler.errors import ArtifactError, InputError
from accelc.runtime.artifact import open_artifact
from accelc.runtime.decode import decode_one, prefill
from accelc.runtime.backends.ov_stateful import make_stateful, run_request, slice_last_logits

PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33]


def _read(artifact):
    """The decoder IR with its weights (openvino/openvino_model.bin, shared with the genai folder)."""
    import json
    rec = json.loads((artifact / "manifest.json").read_text())["graphs"]["decoder"]
    return ov.Core().read_model(str(artifact / rec["openvino"]), str(artifact / rec["openvino_bin"]))


def test_rewrite_makes_states_and_fuses_attention(tiny_artifact):
    m = _read(tiny_artifact)
    before = [n for p in m.inputs for n in p.get_names()]
    layers = make_stateful(m)
    names = [n for p in m.inputs for n in p.get_names()]
    assert layers == sum(n.startswith("past_key.") for n in before) > 0
    assert sorted(names) == ["attention_mask", "beam_idx", "input_ids", "position_ids"]
    assert [n for r in m.outputs for n in r.get_names()] == ["logits"]
    assert len(m.get_variables()) == 2 * layers
    types = [n.get_type_name() for n in m.get_ordered_ops()]
    assert types.count("ScaledDotProductAttention") == layers and "Softmax" not in types
    cm = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"})
    fused = [n.get_rt_info()["layerType"].astype(str) for n in cm.get_runtime_model().get_ordered_ops()]
    assert fused.count("ScaledDotProductAttention") == layers      # the plugin's fused SDPA-with-KV-cache node
    assert fused.count("MemoryInput") == 2 * layers and "Softmax" not in fused


def test_rewrite_refuses_a_graph_without_the_pattern():
    x = ov.opset13.parameter([1, 4], ov.Type.f32, name="input_ids")
    m = ov.Model([ov.opset13.relu(x)], [x])
    with pytest.raises(ArtifactError):
        make_stateful(m)


def test_explicit_mode_keeps_the_explicit_graph(tiny_artifact, monkeypatch):
    monkeypatch.setenv("ACCELC_OV_KV", "explicit")
    art = open_artifact(tiny_artifact, backend="openvino")
    assert not art.runners["decoder"].stateful and not art.new_state(8).stateful
    monkeypatch.setenv("ACCELC_OV_KV", "bogus")
    with pytest.raises(ArtifactError):
        open_artifact(tiny_artifact, backend="openvino")


def test_stateful_logits_and_rollback_match_explicit(tiny_artifact, monkeypatch):
    st_art = open_artifact(tiny_artifact, backend="openvino", full_logits=True)
    assert not st_art.runners["decoder"].last_logits_only
    monkeypatch.setenv("ACCELC_OV_KV", "explicit")
    ex_art = open_artifact(tiny_artifact, backend="openvino")
    a, b = st_art.new_state(40), ex_art.new_state(40)
    assert a.stateful and not b.stateful and a.cache.buffers == []
    np.testing.assert_allclose(prefill(a, PROMPT, all_logits=True), prefill(b, PROMPT, all_logits=True), atol=1e-4)
    for tok in (5, 77, 200, 9):
        la, lb = decode_one(a, tok), decode_one(b, tok)
        assert np.abs(lb).max() > 1e-2
        np.testing.assert_allclose(la, lb, atol=1e-4)
    assert a.cache.length == b.cache.length == len(PROMPT) + 4
    assert st_art.runners["decoder"].held == a.cache.length
    # speculative-style rollback: forget 3 tokens, feed a different one; equals a fresh prefill
    a.cache.rollback(len(PROMPT) + 1)
    got = decode_one(a, 31)
    assert st_art.runners["decoder"].held == len(PROMPT) + 2
    fresh = prefill(ex_art.new_state(40), PROMPT + [5, 31])
    np.testing.assert_allclose(got, fresh, atol=1e-4)
    # a reset state (generate() reuses states) starts over
    a.cache.reset()
    np.testing.assert_allclose(prefill(a, PROMPT[:4]), prefill(ex_art.new_state(8), PROMPT[:4]), atol=1e-4)
    # the explicit-cache call still works on a stateful backend (callers that keep their own cache)
    c = ex_art.new_state(40)
    logits, new_kv = st_art.runners["decoder"].forward(np.array([PROMPT]), np.arange(len(PROMPT))[None],
                                                        np.ones((1, len(PROMPT)), np.int64), c.cache.views(0))
    np.testing.assert_allclose(logits[0], prefill(c, PROMPT, all_logits=True), atol=1e-4)
    assert len(new_kv) == 2 * st_art.layers


def test_slice_bounds_the_head_to_the_last_position(tiny_artifact):
    m = _read(tiny_artifact)
    make_stateful(m)
    assert m.output("logits").get_partial_shape()[1].is_dynamic
    slices = [n.get_type_name() for n in m.get_ordered_ops()].count("Slice")
    assert slice_last_logits(m)
    dim = m.output("logits").get_partial_shape()[1]
    assert dim.get_max_length() == 1                           # [?, ..1, V]: the head's M is at most 1
    assert [n.get_type_name() for n in m.get_ordered_ops()].count("Slice") == slices + 1
    x = ov.opset13.parameter([1, 4], ov.Type.f32, name="input_ids")
    assert not slice_last_logits(ov.Model([ov.opset13.relu(x)], [x]))     # no head: unchanged


def test_generation_default_slices_and_matches_full_logits(tiny_artifact, monkeypatch):
    gen_art = open_artifact(tiny_artifact, backend="openvino")             # full_logits=False: generation
    assert gen_art.runners["decoder"].stateful and gen_art.runners["decoder"].last_logits_only
    monkeypatch.setenv("ACCELC_OV_KV", "explicit")
    ex_art = open_artifact(tiny_artifact, backend="openvino")
    a, b = gen_art.new_state(40), ex_art.new_state(40)
    np.testing.assert_allclose(prefill(a, PROMPT), prefill(b, PROMPT), atol=1e-4)
    for tok in (5, 77, 200):
        np.testing.assert_allclose(decode_one(a, tok), decode_one(b, tok), atol=1e-4)
    a.cache.rollback(len(PROMPT) + 1)                                       # rollback still trims the states
    np.testing.assert_allclose(decode_one(a, 31), prefill(ex_art.new_state(40), PROMPT + [5, 31]), atol=1e-4)
    with pytest.raises(InputError, match="full_logits"):
        prefill(gen_art.new_state(40), PROMPT, all_logits=True)


def test_run_request_runs_rereads_shared_inputs_and_raises():
    import openvino.opset13 as op
    x = op.parameter(ov.PartialShape([-1]), ov.Type.f32, name="x")
    y = op.reshape(op.multiply(x, op.constant(np.float32(2))), op.constant(np.array([2, 3], np.int64)), False)
    req = ov.Core().compile_model(ov.Model([y], [x]), "CPU").create_infer_request()
    a = np.arange(6, dtype=np.float32)
    req.set_input_tensor(0, ov.Tensor(a, shared_memory=True))
    run_request(req)
    np.testing.assert_array_equal(req.get_output_tensor(0).data, (2 * a).reshape(2, 3))
    a[:] = -a                                   # shared input memory: the next run sees the new values
    run_request(req)
    np.testing.assert_array_equal(req.get_output_tensor(0).data, (2 * a).reshape(2, 3))
    req.set_input_tensor(0, ov.Tensor(np.zeros(5, np.float32)))     # 5 values cannot take shape [2, 3]
    with pytest.raises(RuntimeError):
        run_request(req)
