import numpy as np
import pytest

from accelc.compiler.errors import InputError
from accelc.runtime.kv_cache import KVCache


def _new(T, layers=2, H=2, D=4, start=0.0):
    return [np.full((1, T, H, D), start + j, dtype=np.float32) for j in range(2 * layers)]


def test_append_writes_in_place_and_views_share_memory():
    c = KVCache(layers=2, capacity=8, kv_heads=2, head_dim=4)
    bufs = [b for b in c.buffers]
    c.append(_new(3))
    assert c.length == 3
    c.append(_new(2, start=10.0))
    assert c.length == 5
    for j, b in enumerate(c.buffers):
        assert b is bufs[j]                                    # same buffers, never reallocated
        np.testing.assert_array_equal(b[0, :3], j)
        np.testing.assert_array_equal(b[0, 3:5], 10.0 + j)
        np.testing.assert_array_equal(b[0, 5:], 0.0)
    views = c.views()
    assert all(v.shape == (1, 5, 2, 4) for v in views)
    assert all(np.shares_memory(v, b) and v.flags["C_CONTIGUOUS"] for v, b in zip(views, c.buffers))


def test_append_first_n_rows_only():
    c = KVCache(1, 8, 1, 2)
    new = [np.arange(8, dtype=np.float32).reshape(1, 4, 1, 2)] * 2
    c.append(new, n=2)
    assert c.length == 2
    np.testing.assert_array_equal(c.buffers[0][0, :2, 0], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(c.buffers[0][0, 2:], 0)


def test_rollback_sets_length_and_next_append_overwrites():
    c = KVCache(1, 8, 1, 2)
    c.append(_new(5, layers=1, H=1, D=2))
    c.rollback(2)
    assert c.length == 2 and c.views()[0].shape[1] == 2
    c.append(_new(1, layers=1, H=1, D=2, start=7.0))
    assert c.length == 3
    np.testing.assert_array_equal(c.buffers[0][0, 2], 7.0)
    with pytest.raises(ValueError):
        c.rollback(4)                                          # cannot roll forward


def test_overflow_is_a_clear_input_error():
    c = KVCache(1, 4, 1, 2)
    c.append(_new(3, layers=1, H=1, D=2))
    with pytest.raises(InputError, match="holds 4 tokens"):
        c.append(_new(2, layers=1, H=1, D=2))
    assert c.length == 3                                       # unchanged after the failed append
