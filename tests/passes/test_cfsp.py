"""CFSP structured MLP-channel pruning, its baselines, allocation, rounding and LoRA recovery."""
import copy

import pytest
import torch
import torch.nn as nn

from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import random_ids as ids, tiny_bundle as bundle
from accelc.compiler.errors import InputError
from accelc.passes.pruning.cfsp import CfspConfig, CfspPass, allocate, fine_scores, kept_count, rounding_for
from accelc.passes.pruning.lora_recovery import LoRALinear, lm_loss

torch.set_num_threads(1)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("method", ["cfsp", "cfsp-uniform", "channel-magnitude"])
def test_pruned_equals_dense_with_channels_zeroed(family, method):
    b = bundle(family)
    x = ids()
    dense = copy.deepcopy(b.model)
    p = CfspPass(CfspConfig(ratio=0.4, method=method))
    keep, _ = p.select(b, x)
    r = p.prune(b, x)
    assert r.changed and r.metrics["parameters"] < r.metrics["parameters_before"]
    ad_d = ArchAdapter(dense)
    with torch.no_grad():
        for i, k in enumerate(keep):
            pj, pd = b.adapter.mlp_proj(i), ad_d.mlp_proj(i)
            assert pj["up"].weight.shape == (k.numel(), 64) and pj["down"].weight.shape == (64, k.numel())
            assert torch.equal(pj["gate"].weight, pd["gate"].weight[k])
            assert torch.equal(pj["down"].weight, pd["down"].weight[:, k])
            drop = torch.ones(pd["up"].weight.shape[0], dtype=torch.bool)
            drop[k] = False
            pd["up"].weight[drop] = 0
            pd["gate"].weight[drop] = 0
            pd["down"].weight[:, drop] = 0
        y = ids(4, 24, seed=3)
        torch.testing.assert_close(b.model(input_ids=y).logits, dense(input_ids=y).logits, rtol=1e-4, atol=1e-5)
    assert b.model.config.intermediate_size == 128          # nothing global rewritten
    kept = b.records["pruning"]["kept_channels"]
    assert abs(sum(kept) / (128 * 3) - 0.6) < 0.02


def test_ratio_zero_is_noop():
    b = bundle()
    ref = copy.deepcopy(b.model)
    r = CfspPass(CfspConfig(ratio=0.0)).prune(b, ids())
    assert not r.changed and b.adapter.intermediate_sizes() == [128] * 3
    assert all(torch.equal(p, q) for p, q in zip(b.model.parameters(), ref.parameters()))


def test_kept_count_rounding():
    assert kept_count(1536, 0.7, 1) == 1075
    assert kept_count(1536, 0.7, 32) == 1088 and kept_count(1536, 0.7, 64) == 1088
    assert kept_count(1536, 0.7, 8) == 1072
    assert kept_count(100, 0.01, 32) == 32 and kept_count(100, 0.99, 32) == 96
    b = bundle()
    CfspPass(CfspConfig(ratio=0.3, round=32)).prune(b, ids())
    assert all(k % 32 == 0 for k in b.adapter.intermediate_sizes())
    # the default (0, auto): multiples of 64 on real-size blocks, none on the tiny model's 128 channels
    assert rounding_for(1536, 0) == 64 and rounding_for(8192, 0) == 64 and rounding_for(128, 0) == 1
    assert rounding_for(128, 32) == 32 and rounding_for(1536, 1) == 1
    b = bundle()
    CfspPass(CfspConfig(ratio=0.3)).prune(b, ids())
    rec = b.records["pruning"]
    assert rec["round"] == "auto" and rec["round_multiples"] == [1, 1, 1]
    assert rec["kept_channels"] == [kept_count(128, f, 1) for f in rec["keep_fraction"]]
    with pytest.raises(InputError):
        CfspConfig(ratio=0.3, round=-1)


def test_allocation_follows_importance():
    d = [0.05, 0.2, 0.1, 0.3, 0.12]
    for ratio in (0.2, 0.5):
        f = allocate(d, ratio, a=13.1)
        assert abs(sum(f) / len(f) - (1 - ratio)) < 1e-9 and max(f) < 1
        order = sorted(range(5), key=lambda i: d[i])
        assert all(f[order[j]] < f[order[j + 1]] for j in range(4))
    assert allocate([0.2, 0.2, 0.2], 0.3, 13.1) == pytest.approx([0.7] * 3)
    # on a model: blocks with larger measured importance keep more channels
    b = bundle(seed=1)
    CfspPass(CfspConfig(ratio=0.4, a=200.0)).prune(b, ids())
    rec = b.records["pruning"]
    imp, kept = rec["block_importance"], rec["kept_channels"]
    order = sorted(range(3), key=lambda i: imp[i])
    assert kept[order[0]] < kept[order[2]] and kept[order[0]] <= kept[order[1]] <= kept[order[2]]


def test_fine_score_uses_weights_and_activations():
    g = torch.Generator().manual_seed(0)
    gate, up, down = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g), torch.randn(16, 32, generator=g)
    act = torch.rand(32, generator=g) + 0.5
    s = fine_scores(gate, up, down, act)
    up2 = up.clone()
    up2[5] *= 10                                             # a larger channel weight raises that channel
    assert fine_scores(gate, up2, down, act)[5] > s[5]
    act2 = act.clone()
    act2[7] *= 3
    assert fine_scores(gate, up, down, act2)[7] > s[7]
    # the reference code's normalisation reduces to the activation norm alone
    ref = fine_scores(gate, up, down, act, norm="reference")
    assert torch.allclose(ref, act * 3 / 16)


def test_channel_magnitude_removes_small_channels():
    b = bundle()
    small = torch.tensor([3, 17, 40, 99])
    proj = b.adapter.mlp_proj(0)
    with torch.no_grad():
        proj["gate"].weight[small] *= 1e-3
        proj["up"].weight[small] *= 1e-3
        proj["down"].weight[:, small] *= 1e-3
    p = CfspPass(CfspConfig(ratio=0.1, method="channel-magnitude"))
    keep, _ = p.select(b, None)
    assert not any(int(c) in keep[0].tolist() for c in small)


def test_recovery_lowers_loss_and_merges():
    x = ids(2, 32)
    b0, b1 = bundle(), bundle()
    CfspPass(CfspConfig(ratio=0.4)).prune(b0, x)
    r = CfspPass(CfspConfig(ratio=0.4, recover=15, lr=5e-3, batch=2, rank=4)).prune(b1, x)
    rec = b1.records["pruning"]["recovery"]
    assert rec["steps"] == 15 and len(rec["ranks"]) == 3 and rec["loss_last"] < rec["loss_first"]
    assert not any(isinstance(m, LoRALinear) for m in b1.model.modules())
    assert all(type(m) is nn.Linear for m in b1.adapter.linears().values())
    assert all(p.requires_grad for p in b1.model.parameters())          # flags restored as they were
    with torch.no_grad():
        before, after = float(lm_loss(b0.model, x)), float(lm_loss(b1.model, x))
    assert after < before - 0.05, (before, after)
    assert r.metrics["recovery_loss"][1] < r.metrics["recovery_loss"][0]
    assert rec["first_batch_loss_after"] == pytest.approx(after, rel=1e-4)      # merged == trained
    assert rec["first_batch_loss_before"] == pytest.approx(before, rel=1e-4)


def test_pruned_model_runs_through_the_export_graph():
    """Per-layer channel counts differ; the decoder graph the exporter builds uses the smaller modules as they are."""
    dg = pytest.importorskip("accelc.passes.export.decoder_graph")
    b = bundle()
    CfspPass(CfspConfig(ratio=0.4, a=200.0)).prune(b, ids())
    assert len(set(b.adapter.intermediate_sizes())) > 1
    graph = dg.DecoderGraph(b.model).eval()
    x = ids(1, 7, seed=5)
    with torch.no_grad():
        out = graph(x, torch.arange(7)[None], torch.ones(1, 7, dtype=torch.long), *graph.empty_cache(1))
        torch.testing.assert_close(out[0], b.model(input_ids=x).logits, rtol=1e-4, atol=1e-4)


def test_long_recovery_draws_fresh_windows(monkeypatch):
    """A recovery longer than one pass over the scoring windows trains on windows drawn afresh from the calibration
    text (cycling 32 windows for 2,000 steps memorized them); a short one, or one without a tokenizer, keeps them."""
    from types import SimpleNamespace

    import torch

    from accelc.passes import calibration as cal
    from accelc.passes.pruning import cfsp
    ids = torch.zeros(8, 16, dtype=torch.long)
    drawn = []
    monkeypatch.setattr(cal, "calibration_ids", lambda b, n, L, seed, path: drawn.append((n, L, seed)) or
                        torch.ones(n, L, dtype=torch.long))
    bundle = SimpleNamespace(tokenizer=object())
    cfg = SimpleNamespace(recover=3, batch=2, seed=0, calib=None)
    assert cfsp.recovery_ids(bundle, ids, cfg) is ids and not drawn
    cfg.recover = 100
    got = cfsp.recovery_ids(bundle, ids, cfg)
    assert got.shape == (200, 16) and drawn == [(200, 16, 1)]
    cfg.recover = 10 ** 6
    assert cfsp.recovery_ids(bundle, ids, cfg).shape[0] == cfsp.RECOVERY_WINDOWS
    assert cfsp.recovery_ids(SimpleNamespace(tokenizer=None), ids, cfg) is ids
