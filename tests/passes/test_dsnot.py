"""DSnoT: mask refinement keeps sparsity and the N:M pattern, never raises the tracked error, moves no weight."""
import copy

import pytest
import torch

from accelc.models.tiny import random_ids as ids, tiny_bundle as bundle
from accelc.compiler.errors import InputError
from accelc.passes.pruning.dsnot import RULES, DsnotConfig, DsnotPass, cycles_for, dsnot_refine
from accelc.passes.pruning.sparsity import SparsityConfig, WandaPruningPass, is_nm, keep_mask

torch.set_num_threads(1)


def problem(rows=32, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    mean = torch.randn(cols, generator=g) * 0.5 + 0.2
    var = torch.rand(cols, generator=g) + 0.1
    score = w.abs() * (mean ** 2 + var).sqrt()
    return w, mean, var, score


def gram_of(mean, var, seed=0):
    """E[x x^T] of inputs with this mean and variance and random correlations between channels."""
    g = torch.Generator().manual_seed(seed + 100)
    a = torch.randn(mean.numel(), 4, generator=g)
    s = a @ a.T + torch.eye(mean.numel())
    corr = s / torch.outer(s.diagonal().sqrt(), s.diagonal().sqrt())
    sd = var.sqrt()
    return corr * torch.outer(sd, sd) + torch.outer(mean, mean)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("nm", [(0, 0), (2, 4), (4, 8)])
def test_refine_keeps_count_pattern_and_lowers_error(nm, rule):
    n, m = nm
    w, mean, var, score = problem()
    keep0 = keep_mask(score, 0.6 if not m else 1 - n / m, n, m)
    keep, e0, e1, swaps = dsnot_refine(w, keep0, mean, var, score, n, m, max_cycles=50, threshold=0.0, rule=rule,
                                       gram=gram_of(mean, var))
    assert torch.equal(keep.sum(1), keep0.sum(1))                       # sparsity fixed, row by row
    if m:
        assert is_nm(keep, n, m)
    # the error it reports is the error of the mask it returns
    for k, e in ((keep0, e0), (keep, e1)):
        assert torch.allclose((w * mean * (~k)).sum(1).abs(), e, atol=1e-5)
    assert (e1 <= e0 + 1e-6).all()                                      # never above its start
    assert swaps.sum() > 0 and e1.mean() < e0.mean()                    # and it does work
    if rule not in ("variance", "exact"):                               # (which refuse most swaps here)
        assert (e1 < e0).sum() > rows_half(e0) and e1.mean() < 0.5 * e0.mean()
    assert torch.equal((keep != keep0).sum(1), 2 * swaps)               # swaps counts the returned mask's swaps


def test_variance_rule_never_raises_the_diagonal_squared_error():
    w, mean, var, score = problem(rows=64, cols=128, seed=3)
    keep0 = keep_mask(score, 0.7)
    J = lambda k: (w * mean * (~k)).sum(1) ** 2 + (w * w * var * (~k)).sum(1)
    keep_v, *_ = dsnot_refine(w, keep0, mean, var, score, max_cycles=50, threshold=0.0, rule="variance")
    keep_d, *_ = dsnot_refine(w, keep0, mean, var, score, max_cycles=50, threshold=0.0, rule="descent")
    assert (J(keep_v) <= J(keep0) + 1e-5).all()
    assert (J(keep_d) > J(keep0) + 1e-5).any()                          # which descent alone does not ensure
    assert (keep_v != keep0).any()


@pytest.mark.parametrize("nm", [(0, 0), (2, 4)])
def test_exact_rule_never_raises_the_rows_reconstruction_error(nm):
    n, m = nm
    w, mean, var, score = problem(rows=64, cols=128, seed=3)
    C = gram_of(mean, var, seed=3)
    keep0 = keep_mask(score, 0.7 if not m else 0.5, n, m)
    E = lambda k: ((w * (~k)) @ C * (w * (~k))).sum(1)                 # w_p^T E[x x^T] w_p per row
    keep_x, e0, e1, sw = dsnot_refine(w, keep0, mean, var, score, n, m, max_cycles=50, threshold=0.0,
                                      rule="exact", gram=C)
    keep_d, *_ = dsnot_refine(w, keep0, mean, var, score, n, m, max_cycles=50, threshold=0.0, rule="descent")
    assert (E(keep_x) <= E(keep0) + 1e-4).all() and E(keep_x).sum() < E(keep0).sum()
    assert (E(keep_d) > E(keep0) + 1e-4).any()                          # which descent alone does not ensure
    assert sw.sum() > 0 and (e1 <= e0 + 1e-6).all()
    with pytest.raises(ValueError):
        dsnot_refine(w, keep0, mean, var, score, rule="exact")


def test_swap_budget_scales_with_row_width():
    assert cycles_for(4096, None) == 50 and cycles_for(576, None) == 7 and cycles_for(64, None) == 1
    assert cycles_for(576, 50) == 50 and cycles_for(576, 0) == 0
    with pytest.raises(InputError):
        DsnotConfig(rule="bogus")


def rows_half(e):
    return e.numel() // 2


def test_refine_zero_cycles_is_noop():
    w, mean, var, score = problem()
    keep0 = keep_mask(score, 0.5)
    keep, e0, e1, swaps = dsnot_refine(w, keep0, mean, var, score, max_cycles=0)
    assert torch.equal(keep, keep0) and torch.equal(e0, e1) and swaps.sum() == 0


@pytest.mark.parametrize("spec", [dict(ratio=0.6), dict(ratio=0.5, n=2, m=4, mlp=True), dict(ratio=0.7, mlp=True),
                                  dict(ratio=0.7, rule="exact")])
def test_pass_sparsity_and_weights_outside_mask_unchanged(spec):
    b = bundle()
    w0 = {k: v.weight.detach().clone() for k, v in b.adapter.linears().items()}
    r = DsnotPass(DsnotConfig(**spec)).prune(b, ids())
    assert r.changed and r.metrics["swaps"] > 0
    assert r.metrics["row_error_after"] < r.metrics["row_error_before"]
    for name, lin in b.adapter.linears().items():
        w = lin.weight.detach()
        keep = w != 0
        if spec.get("m"):
            assert is_nm(keep, spec["n"], spec["m"])
        else:
            assert (keep.sum(1) == w.shape[1] - round(w.shape[1] * spec["ratio"])).all()
        assert torch.equal(w[keep], w0[name][keep])


def test_zero_cycles_equals_wanda_and_mlp_option():
    x = ids()
    b_w, b_0, b_d = bundle(), bundle(), bundle()
    WandaPruningPass(SparsityConfig(method="wanda", ratio=0.6)).prune(b_w, x)
    DsnotPass(DsnotConfig(ratio=0.6, max_cycles=0, mlp=True)).prune(b_0, x)
    DsnotPass(DsnotConfig(ratio=0.6, mlp=False)).prune(b_d, x)
    lw, l0, ld = (bb.adapter.linears() for bb in (b_w, b_0, b_d))
    assert all(torch.equal(lw[k].weight, l0[k].weight) for k in lw)
    # mlp=False: layer 0's MLP keeps its Wanda mask (same dense stats); its attention masks changed
    assert all(torch.equal(lw[f"layers.0.mlp.{p}"].weight, ld[f"layers.0.mlp.{p}"].weight) for p in ("gate", "up", "down"))
    assert not torch.equal(lw["layers.0.attn.q"].weight, ld["layers.0.attn.q"].weight)


def test_ratio_zero_is_noop():
    b = bundle()
    ref = copy.deepcopy(b.model)
    r = DsnotPass(DsnotConfig(ratio=0.0)).prune(b, ids())
    assert not r.changed
    assert all(torch.equal(p, q) for p, q in zip(b.model.parameters(), ref.parameters()))


def test_output_error_bound_vs_dense():
    """60% DSnoT keeps the tiny model's logits within a bounded distance of the dense model on fixed inputs."""
    b = bundle()
    x = ids()
    with torch.no_grad():
        dense = b.model(input_ids=x).logits
    DsnotPass(DsnotConfig(ratio=0.6)).prune(b, x)
    with torch.no_grad():
        out = b.model(input_ids=x).logits
    rel = float((out - dense).norm() / dense.norm())
    assert 0.0 < rel < 1.0, rel


def test_input_stats_tail_equals_stats_of_later_positions():
    from accelc.passes.calibration import InputStats
    x = torch.randn(3, 10, 5, dtype=torch.float64)
    x[:, 0] *= 50                                     # a sink-like first position
    st, ref = InputStats(5, skip=2), InputStats(5)
    st.add(x[:2])
    st.add(x[2:])
    ref.add(x[:, 2:])
    tail = st.tail()
    assert tail.tokens == ref.tokens == 24 and st.tokens == 30
    assert torch.allclose(tail.mean, ref.mean) and torch.allclose(tail.var, ref.var, atol=1e-6)
    assert not torch.allclose(st.mean, ref.mean)      # the full stats still count position 0
    assert InputStats(5).tail().tokens == 0
    g = InputStats(5, skip=2, gram=True)
    g.add(x)
    flat = x[:, 2:].reshape(-1, 5)
    assert torch.allclose(g.tail().gram_mean.double(), flat.T @ flat / 24, rtol=1e-4, atol=1e-3)  # float32 products
    assert torch.allclose(g.gram_mean.diagonal(), g.sq_mean, rtol=1e-4)


def test_skip_changes_only_the_refinement_statistics():
    x = ids()
    b_0, b_s, b_w = bundle(), bundle(), bundle()
    DsnotPass(DsnotConfig(ratio=0.6, max_cycles=0, skip=1)).prune(b_0, x)
    WandaPruningPass(SparsityConfig(method="wanda", ratio=0.6)).prune(b_w, x)
    r = DsnotPass(DsnotConfig(ratio=0.6, skip=1)).prune(b_s, x)
    l0, lw, ls = (bb.adapter.linears() for bb in (b_0, b_w, b_s))
    assert all(torch.equal(lw[k].weight, l0[k].weight) for k in lw)       # same Wanda start
    assert r.metrics["swaps"] > 0 and r.metrics["row_error_after"] < r.metrics["row_error_before"]
    with pytest.raises(InputError):
        DsnotConfig(ratio=0.6, seqlen=8, skip=8)


def test_window_variance_is_the_mean_of_per_window_variances():
    """`var=reference`'s statistic: each window's variance about its own mean, averaged over windows (the DSnoT
    reference's lib/layerwrapper.py); the default's variance over all tokens also counts the spread of the
    window means (law of total variance)."""
    from accelc.passes.calibration import InputStats
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 20, 5, generator=g, dtype=torch.float64) + 3 * torch.randn(6, 1, 5, generator=g, dtype=torch.float64)
    st = InputStats(5, skip=3)
    st.add(x[:4])
    st.add(x[4:])
    within = x.var(1, unbiased=False).mean(0)
    assert torch.allclose(st.window_var.double(), within, rtol=1e-5)
    assert torch.allclose(st.var.double(), within + x.mean(1).var(0, unbiased=False), rtol=1e-5)
    assert torch.allclose(st.tail().window_var.double(), x[:, 3:].var(1, unbiased=False).mean(0), rtol=1e-5)
    one = InputStats(5)
    one.add(x[0])                                     # [tokens, C]: one window
    assert torch.allclose(one.window_var, one.var, rtol=1e-5)


@pytest.mark.parametrize("var", ["tokens", "reference"])
def test_var_option_chooses_the_variance_dsnot_sees(var, monkeypatch):
    import accelc.passes.pruning.dsnot as D
    seen = []
    real = D.dsnot_refine
    monkeypatch.setattr(D, "dsnot_refine", lambda w, keep, mean, v, *a, **k: seen.append(v) or real(w, keep, mean, v, *a, **k))
    b = bundle()
    x = ids()
    q = b.adapter.attn_proj(0)["q"]
    got = []
    h = q.register_forward_hook(lambda _m, inp, _o: got.append(inp[0].detach().double()))
    with torch.no_grad():
        b.model(input_ids=x, use_cache=False)
    h.remove()
    inp = got[0]                                                       # layer 0's q_proj input [windows, T, C]
    want = inp.var(1, unbiased=False).mean(0) if var == "reference" else inp.reshape(-1, inp.shape[-1]).var(0, unbiased=False)
    r = DsnotPass(DsnotConfig(ratio=0.6, var=var)).prune(b, x)
    assert torch.allclose(seen[0].double(), want, rtol=1e-4, atol=1e-7)   # the first refined projection: layer 0's q
    assert b.records["pruning"]["var"] == var and r.metrics["swaps"] > 0
    with pytest.raises(InputError):
        DsnotConfig(ratio=0.6, var="window")
    from accelc.targets import CompileOptions
    from accelc.targets.phases import compression
    assert compression(CompileOptions(prune=f"dsnot:0.6,var={var}"))[0].config.var == var
