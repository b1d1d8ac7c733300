"""Pruning passes on the packaged real model (small calibration, one evaluation window)."""
import pytest
import torch

from accelc.compiler.evaluate import Protocol, evaluate_torch
from accelc.models.sources import load_model
from accelc.targets import CompileOptions
from accelc.targets.phases import compression

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def dense_ppl():
    torch.set_num_threads(1)
    return evaluate_torch(load_model("smollm2-135m"), Protocol(max_tokens=512), sample=False)["perplexity"]


def _prune(spec):
    torch.set_num_threads(1)
    b = load_model("smollm2-135m")
    (p,) = compression(CompileOptions(prune=spec))
    return b, p(b)


def test_cfsp_real(dense_ppl):
    b, r = _prune("cfsp:0.3,samples=4,seqlen=64,round=32")
    sizes = b.adapter.intermediate_sizes()
    assert all(s % 32 == 0 for s in sizes) and len(set(sizes)) > 1          # non-uniform, rounded
    assert abs(sum(sizes) / (1536 * 30) - 0.7) < 0.02
    assert r.metrics["parameters"] < 0.85 * r.metrics["parameters_before"]
    ppl = evaluate_torch(b, Protocol(max_tokens=512), sample=False)["perplexity"]
    assert dense_ppl < ppl < 4 * dense_ppl, (dense_ppl, ppl)


def test_dsnot_2_4_real(dense_ppl):
    b, r = _prune("dsnot:2:4,samples=4,seqlen=64")
    for lin in b.adapter.linears().values():     # at most 2 nonzero in every 4 (the GGUF weights hold a few exact zeros)
        nz = (lin.weight != 0).reshape(lin.weight.shape[0], -1, 4).sum(2)
        assert int(nz.max()) <= 2 and float((nz == 2).float().mean()) > 0.99
    assert r.metrics["row_error_after"] < r.metrics["row_error_before"]
    ppl = evaluate_torch(b, Protocol(max_tokens=512), sample=False)["perplexity"]
    assert dense_ppl < ppl < 40 * dense_ppl, (dense_ppl, ppl)
