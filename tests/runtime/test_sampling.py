import numpy as np
import pytest

from accelc.compiler.errors import InputError
from accelc.runtime.sampling import Sampler, SamplingConfig, probabilities, top_k_mask, top_p_mask

# a known distribution: probabilities 0.4, 0.3, 0.15, 0.1, 0.05 in shuffled order
P = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
LOGITS = np.log(P)


def test_top_k_keeps_exactly_the_k_largest():
    out = top_k_mask(LOGITS, 2)
    assert np.isfinite(out).tolist() == [False, True, False, True, False]
    np.testing.assert_allclose(out[[1, 3]], LOGITS[[1, 3]])
    assert top_k_mask(LOGITS, 0) is LOGITS and top_k_mask(LOGITS, 5) is LOGITS


def test_top_p_keeps_smallest_set_reaching_p():
    # 0.4 + 0.3 = 0.7 >= 0.7 -> two tokens; 0.71 needs the third (0.85)
    assert np.isfinite(top_p_mask(LOGITS, 0.7)).tolist() == [False, True, False, True, False]
    assert np.isfinite(top_p_mask(LOGITS, 0.71)).tolist() == [False, True, False, True, True]
    assert np.isfinite(top_p_mask(LOGITS, 0.1)).tolist() == [False, True, False, False, False]
    assert top_p_mask(LOGITS, 1.0) is LOGITS


def test_probabilities_renormalise_after_masks_and_temperature():
    p = probabilities(LOGITS, SamplingConfig(temperature=1.0, top_k=3))
    np.testing.assert_allclose(p, np.array([0, 0.4, 0, 0.3, 0.15]) / 0.85, rtol=1e-12)
    p2 = probabilities(LOGITS, SamplingConfig(temperature=2.0))
    expect = np.sqrt(P) / np.sqrt(P).sum()                     # p^(1/T), renormalised
    np.testing.assert_allclose(p2, expect, rtol=1e-12)
    np.testing.assert_array_equal(probabilities(LOGITS, SamplingConfig()), [0, 1, 0, 0, 0])


def test_greedy_is_argmax():
    assert Sampler()(LOGITS) == 1


def test_seed_reproducibility_and_frequencies():
    cfg = SamplingConfig(temperature=1.0, seed=123)
    a = [Sampler(cfg)(LOGITS) for _ in range(1)]
    s1, s2, s3 = Sampler(cfg), Sampler(cfg), Sampler(SamplingConfig(temperature=1.0, seed=124))
    d1 = [s1(LOGITS) for _ in range(4000)]
    d2 = [s2(LOGITS) for _ in range(4000)]
    d3 = [s3(LOGITS) for _ in range(4000)]
    assert d1 == d2 and d1 != d3 and a[0] == d1[0]
    freq = np.bincount(d1, minlength=5) / len(d1)
    np.testing.assert_allclose(freq, P, atol=0.03)             # draws follow the distribution
    masked = Sampler(SamplingConfig(temperature=1.0, top_p=0.7, seed=0))
    assert {masked(LOGITS) for _ in range(300)} == {1, 3}      # never outside the nucleus


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5)])
def test_bad_config_is_input_error(kw):
    with pytest.raises(InputError):
        SamplingConfig(**kw)
