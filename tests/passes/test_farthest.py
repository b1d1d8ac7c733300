"""The V step's selection (passes/quantization/farthest.py) returns exactly torch.topk's entries."""
import pytest
import torch

from accelc.passes.quantization.farthest import SAMPLE, farthest


def _same_as_topk(x, n):
    got = farthest(x, n)
    ref = x.topk(n).indices
    assert got.shape == ref.shape and got.unique().numel() == n
    assert torch.equal(x[got], x[ref])                       # the same values, in decreasing order
    return got


@pytest.mark.parametrize("frac", [0.001, 0.01, 0.05])
def test_random_entries(frac):
    x = torch.randn(12 * SAMPLE, generator=torch.Generator().manual_seed(0)).abs()
    _same_as_topk(x, int(frac * x.numel()) + 1)


def test_a_misleading_sample_still_gives_topk(monkeypatch):
    """The strided sample sees only the largest values: its threshold passes fewer than n entries and the full topk
    runs (counted). The sample sees only zeros: every entry passes and the candidates' topk is the answer."""
    import accelc.passes.quantization.farthest as mod
    size = 10 * SAMPLE
    stride = size // SAMPLE
    seen = torch.arange(size) % stride == 0
    calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, *a, **k: calls.append(self.numel()) or real_topk(self, *a, **k))
    x = torch.rand(size, generator=torch.Generator().manual_seed(1))
    x[seen] += 10.0
    _same_as_topk(x, 500)
    assert size in calls[:1]                              # farthest's own call ran topk over every entry
    calls.clear()
    y = torch.rand(size, generator=torch.Generator().manual_seed(2)) + 1.0
    y[seen] = 0.0
    _same_as_topk(y, 500)


def test_ties_small_sizes_and_all():
    x = torch.cat([torch.ones(9 * SAMPLE), torch.zeros(SAMPLE)])            # all ties at the top
    got = _same_as_topk(x, 1000)
    assert (x[got] == 1).all()
    y = torch.randn(100, generator=torch.Generator().manual_seed(2))
    _same_as_topk(y, 7)                                                         # small: topk itself
    assert torch.equal(farthest(y, 100), y.argsort(descending=True))           # n = size: every entry, ordered
