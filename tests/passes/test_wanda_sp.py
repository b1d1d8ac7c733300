"""Wanda-SP: uniform structured MLP-channel pruning by |W| x ||X|| summed over a channel's weights, block by block."""
import copy

import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import random_ids as ids, tiny_bundle as bundle
from accelc.passes.pruning.cfsp import kept_count
from accelc.passes.pruning.wanda_sp import WandaSpConfig, WandaSpPass, wanda_sp_scores
from accelc.targets import CompileOptions
from accelc.targets.phases import compression

torch.set_num_threads(1)


def kept_index(pruned: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Which rows of `dense` the rows of `pruned` are (random weights: every row is unique)."""
    same = (pruned.detach()[:, None, :] == dense.detach()[None, :, :]).all(-1)        # [kept, all]
    assert bool((same.sum(1) == 1).all())
    return same.float().argmax(1)


def zero_channels(mlp: dict, keep: torch.Tensor) -> None:
    """Zero every channel but `keep` in a dense MLP's gate/up rows and down columns."""
    drop = torch.ones(mlp["up"].weight.shape[0], dtype=torch.bool)
    drop[keep] = False
    with torch.no_grad():
        mlp["gate"].weight[drop] = 0
        mlp["up"].weight[drop] = 0
        mlp["down"].weight[:, drop] = 0


def input_norms(model, layer: int, x) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(E[x^2]) of the MLP input and of down_proj's input of one block, from hooks on a full forward."""
    mlp = ArchAdapter(model).mlp_proj(layer)
    got = {}

    def keep(k):
        def hook(_m, inp, _o):
            got[k] = inp[0].detach()          # returns None: the module's output stays as it was
        return hook

    hs = [mlp[k].register_forward_hook(keep(k)) for k in ("gate", "down")]
    with torch.no_grad():
        model(input_ids=x, use_cache=False)
    for h in hs:
        h.remove()
    return tuple(got[k].reshape(-1, got[k].shape[-1]).double().pow(2).mean(0).sqrt().float() for k in ("gate", "down"))


def reference_score(mlp: dict, xn: torch.Tensor, hn: torch.Tensor, weights: str) -> torch.Tensor:
    """S_j written out channel by channel."""
    g, u, d = (mlp[k].weight.detach().double() for k in ("gate", "up", "down"))
    out = []
    for j in range(g.shape[0]):
        s = sum(abs(d[i, j]) * hn[j] for i in range(d.shape[0]))
        if weights == "all":
            s = s + sum((abs(g[j, k]) + abs(u[j, k])) * xn[k] for k in range(g.shape[1]))
        out.append(float(s))
    return torch.tensor(out)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("weights", ["all", "down"])
def test_pruned_equals_dense_with_channels_zeroed(family, weights):
    b = bundle(family)
    x = ids()
    dense = copy.deepcopy(b.model)
    r = WandaSpPass(WandaSpConfig(ratio=0.4, weights=weights)).prune(b, x)
    assert r.changed and r.metrics["parameters"] < r.metrics["parameters_before"]
    ad_d = ArchAdapter(dense)
    for i in range(3):
        p, d = b.adapter.mlp_proj(i), ad_d.mlp_proj(i)
        k = kept_index(p["gate"].weight, d["gate"].weight)
        assert torch.equal(k, k.sort().values)                          # original order kept
        assert torch.equal(p["up"].weight, d["up"].weight[k]) and torch.equal(p["down"].weight, d["down"].weight[:, k])
        assert p["down"].bias is None                                    # Wanda-SP adds no bias
        zero_channels(d, k)
    y = ids(4, 24, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(b.model(input_ids=y).logits, dense(input_ids=y).logits, rtol=1e-4, atol=1e-5)
    rec = b.records["pruning"]
    assert rec["method"] == "wanda-sp" and rec["kept_channels"] == [kept_count(128, 0.6, 1)] * 3   # uniform: 77 each
    assert b.model.config.intermediate_size == 128


@pytest.mark.parametrize("weights", ["all", "down"])
def test_scores_and_block_by_block_measurement(weights):
    """Block 0 keeps the top channels of S_j on the dense inputs; block 1 those of S_j measured after block 0
    was pruned (the sequential order of the reference)."""
    b = bundle(seed=2)
    x = ids()
    dense = copy.deepcopy(b.model)
    WandaSpPass(WandaSpConfig(ratio=0.5, weights=weights)).prune(b, x)
    ad_d = ArchAdapter(dense)
    xn, hn = input_norms(dense, 0, x)
    want0 = torch.topk(reference_score(ad_d.mlp_proj(0), xn, hn, weights), 64).indices.sort().values
    assert torch.equal(kept_index(b.adapter.mlp_proj(0)["gate"].weight, ad_d.mlp_proj(0)["gate"].weight), want0)
    half = copy.deepcopy(dense)                                          # block 0 pruned, block 1 still dense
    half.model.layers[0].mlp = copy.deepcopy(b.model.model.layers[0].mlp)
    xn, hn = input_norms(half, 1, x)
    want1 = torch.topk(reference_score(ad_d.mlp_proj(1), xn, hn, weights), 64).indices.sort().values
    assert torch.equal(kept_index(b.adapter.mlp_proj(1)["gate"].weight, ad_d.mlp_proj(1)["gate"].weight), want1)
    # the vectorised score is the written-out one
    p = ad_d.mlp_proj(1)
    torch.testing.assert_close(wanda_sp_scores(p["gate"].weight, p["up"].weight, p["down"].weight, xn, hn, weights),
                               reference_score(p, xn, hn, weights), rtol=1e-5, atol=1e-5)


def test_ratio_zero_is_noop_and_rounding():
    b = bundle()
    ref = copy.deepcopy(b.model)
    r = WandaSpPass(WandaSpConfig(ratio=0.0)).prune(b, None)
    assert not r.changed and b.adapter.intermediate_sizes() == [128] * 3
    assert all(torch.equal(p, q) for p, q in zip(b.model.parameters(), ref.parameters()))
    assert b.records["pruning"]["kept_channels"] == [128] * 3
    b = bundle()
    WandaSpPass(WandaSpConfig(ratio=0.3, round=32)).prune(b, ids())
    assert b.adapter.intermediate_sizes() == [96] * 3


@pytest.mark.parametrize("spec", ["wanda-sp:1.0", "wanda-sp:-0.2", "wanda-sp:2:4", "wanda-sp:", "wanda-sp:0.3,a=1",
                                  "wanda-sp:0.3,weights=gate", "wanda-sp:0.3,round=-1", "wanda-sp:0.3,samples=0",
                                  "wanda-sp:x"])
def test_bad_specs_refused_with_one_line(spec):
    with pytest.raises(InputError) as e:
        compression(CompileOptions(prune=spec))
    msg = str(e.value)
    assert "\n" not in msg and ("wanda-sp" in msg or "ratio" in msg), msg


def test_spec_syntax():
    (p,) = compression(CompileOptions(prune="wanda-sp:0.25,weights=down,round=32,samples=8,seqlen=64,seed=3"))
    c = p.config
    assert (c.ratio, c.weights, c.round, c.samples, c.seqlen, c.seed) == (0.25, "down", 32, 8, 64, 3)
