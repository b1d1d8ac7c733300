"""Magnitude / Wanda masks, the shared calibration capture, and the --prune spec parser."""
import copy

import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.tiny import random_ids as ids, tiny_bundle as bundle
from accelc.passes import calibration as cal
from accelc.passes.pruning.sparsity import (MagnitudePruningPass, SparsityConfig, WandaPruningPass, is_nm, keep_mask,
                                    wanda_score)
from accelc.targets import CompileOptions
from accelc.targets.phases import compression

torch.set_num_threads(1)


def weights(b):
    return {k: v.weight.detach().clone() for k, v in b.adapter.linears().items()}


def test_row_mask_exact_count_and_nm_pattern():
    s = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    keep = keep_mask(s, 0.7)
    assert (keep.sum(1) == 64 - 45).all()
    # the pruned ones are the lowest of each row
    assert (s[~keep].reshape(16, -1).max(1).values <= s[keep].reshape(16, -1).min(1).values).all()
    for n, m in ((2, 4), (4, 8)):
        k = keep_mask(s, 1 - n / m, n, m)
        assert is_nm(k, n, m) and k.float().mean() == n / m


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("spec", [dict(ratio=0.5), dict(ratio=0.7), dict(ratio=0.5, n=2, m=4), dict(ratio=0.5, n=4, m=8)])
def test_wanda_exact_sparsity_and_kept_weights_unchanged(family, spec):
    b = bundle(family)
    w0 = weights(b)
    r = WandaPruningPass(SparsityConfig(method="wanda", **spec)).prune(b, ids())
    assert r.changed
    for name, lin in b.adapter.linears().items():
        w = lin.weight.detach()
        keep = w != 0
        if spec.get("m"):
            assert is_nm(keep, spec["n"], spec["m"]), name
        else:
            assert (keep.sum(1) == w.shape[1] - round(w.shape[1] * spec["ratio"])).all(), name
        assert torch.equal(w[keep], w0[name][keep])
    assert abs(b.records["pruning"]["mask_sparsity"] - spec["ratio"]) <= 0.5 / 64


def test_ratio_zero_is_noop():
    for P, method in ((WandaPruningPass, "wanda"), (MagnitudePruningPass, "magnitude")):
        b = bundle()
        w0 = weights(b)
        r = P(SparsityConfig(method=method, ratio=0.0)).prune(b, ids())
        assert not r.changed
        assert all(torch.equal(w0[k], v.weight) for k, v in b.adapter.linears().items())


def test_stats_and_sequential_inputs():
    """Layer 0's mask is Wanda on the dense inputs; layer 1's uses inputs from the pruned layer 0."""
    b = bundle()
    dense = copy.deepcopy(b.model)
    x = ids()
    w0 = weights(b)
    WandaPruningPass(SparsityConfig(method="wanda", ratio=0.5)).prune(b, x)

    def captured_input(model, i):
        got = []
        h = model.model.layers[i].self_attn.q_proj.register_forward_hook(lambda m, inp, o: got.append(inp[0]))
        with torch.no_grad():
            model(input_ids=x, use_cache=False)
        h.remove()
        st = cal.InputStats(got[0].shape[-1])
        st.add(got[0])
        return st

    for i, model in ((0, dense), (1, b.model)):   # in the final model, layer 1's q input comes from pruned layer 0
        name = f"layers.{i}.attn.q"
        expect = keep_mask(wanda_score(w0[name], captured_input(model, i)), 0.5)
        assert torch.equal(b.adapter.linears()[name].weight != 0, expect)


def test_wanda_beats_magnitude_with_outlier_channels():
    """Numerical bound: with a few large input channels, Wanda keeps layer-0 outputs closer than magnitude."""
    x = ids()
    errs = {}
    for P, method in ((WandaPruningPass, "wanda"), (MagnitudePruningPass, "magnitude")):
        b = bundle()
        with torch.no_grad():
            b.adapter.norms(0)["input"].weight[:4] *= 20.0
        q = b.adapter.attn_proj(0)["q"]
        got = []
        h = q.register_forward_hook(lambda m, inp, o: got.append((inp[0], o)))
        with torch.no_grad():
            b.model(input_ids=x, use_cache=False)
        P(SparsityConfig(method=method, ratio=0.5)).prune(b, x)
        inp, out = got[0]
        with torch.no_grad():
            errs[method] = float((q(inp) - out).norm() / out.norm())
        h.remove()
    assert errs["wanda"] < errs["magnitude"] < 1.0, errs


@pytest.mark.parametrize("spec", ["cfsp:1.0", "cfsp:-0.1", "wanda:1.5", "dsnot:1", "wanda:3:2", "wanda:0:4",
                                  "dsnot:2:2", "magnitude:2:x", "cfsp:2:4", "wanda:0.5,foo=1", "dsnot:0.5,mlp=maybe",
                                  "cfsp:0.3,round=-1", "dsnot:0.5,init=sparsegpt", "cfsp:"])
def test_bad_specs_refused_at_parse_time(spec):
    with pytest.raises(InputError):
        compression(CompileOptions(prune=spec))


def test_spec_syntax():
    (p,) = compression(CompileOptions(prune="dsnot:2:4,init=magnitude,mlp=true,cycles=7"))
    c = p.config
    assert (c.n, c.m, c.ratio, c.init, c.mlp, c.max_cycles) == (2, 4, 0.5, "magnitude", True, 7)
    (p,) = compression(CompileOptions(prune="cfsp:0.3,round=32,recover=200"))
    assert (p.config.ratio, p.config.round, p.config.recover, p.config.method) == (0.3, 32, 200, "cfsp")
