"""Greedy generation through every backend on tiny compiled artifacts equals transformers greedy."""
import numpy as np
import pytest

from accelc.compiler.errors import InputError
from accelc.runtime.artifact import open_artifact
from accelc.runtime.decode import decode_one, prefill
from accelc.runtime.generate import generate

PROMPT = [72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33]     # 13 tokens: 2 static chunks of 8


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "torch"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_greedy_equals_transformers(kind, backend, tiny_artifact, tiny_static_artifact, torch_greedy):
    art = open_artifact(tiny_static_artifact if kind == "static" else tiny_artifact, backend=backend)
    assert art.static == (kind == "static") and art.choice.backend == backend
    ref = torch_greedy(PROMPT, 24)
    assert len(set(ref)) > 5                                   # the reference is not a trivial repetition
    r = generate(art, PROMPT, 24)
    assert r.tokens == ref and r.stop_reason == "length" and r.decode_steps == 23


def test_static_and_dynamic_logits_agree(tiny_artifact, tiny_static_artifact):
    dyn = open_artifact(tiny_artifact, backend="onnxruntime")
    sta = open_artifact(tiny_static_artifact, backend="openvino")
    a, b = dyn.new_state(40), sta.new_state(40)
    la, lb = prefill(a, PROMPT, all_logits=True), prefill(b, PROMPT, all_logits=True)
    assert la.shape == lb.shape == (len(PROMPT), 257)
    np.testing.assert_allclose(la, lb, atol=1e-4)
    for tok in (5, 77, 200):
        np.testing.assert_allclose(decode_one(a, tok), decode_one(b, tok), atol=1e-4)
    assert a.cache.length == b.cache.length == len(PROMPT) + 3
    # roll back to PROMPT + [5], feed 77 again: same logits as a fresh prefill of PROMPT + [5, 77]
    for st, art in ((a, dyn), (b, sta)):
        st.cache.rollback(len(PROMPT) + 1)
        fresh = prefill(art.new_state(40), PROMPT + [5, 77])
        np.testing.assert_allclose(decode_one(st, 77), fresh, atol=1e-4)


def test_static_cache_overflow_is_input_error(tiny_static_artifact):
    art = open_artifact(tiny_static_artifact, backend="openvino")
    with pytest.raises(InputError, match="static KV cache of 48"):
        generate(art, PROMPT, 40)
    with pytest.raises(InputError, match="static KV cache"):
        art.new_state(49)


def test_unavailable_device_is_input_error(tiny_artifact):
    with pytest.raises(InputError, match="no usable backend/device"):
        open_artifact(tiny_artifact, device="npu")
    with pytest.raises(InputError, match="unknown backend"):
        open_artifact(tiny_artifact, backend="tensorflow")
