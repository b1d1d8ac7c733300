"""SpecDec++'s acceptance head: its features, the numpy head against torch, training that separates accepted from
rejected drafts, rollout labels that agree with the loop's own counts, the two stopping rules, and greedy decoding
in draft mode specdec that stays token-identical to plain decoding."""
import numpy as np
import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.drafting.accept_head import auc, evaluate_head, rollouts, train_head
from accelc.passes.drafting.eagle_model import EagleGraph, target_graph
from accelc.passes.drafting.eagle_train import target_features, train_eagle
from accelc.passes.drafting.drafter_train import token_windows
from accelc.passes.export.decoder_graph import DecoderGraph
from accelc.runtime.speculative.accept_head import AcceptHead, CostStop, FixedStop, features
from accelc.runtime.speculative.eagle import eagle_steps
from accelc.runtime.speculative.loop import SpecConfig, autoregressive_generate, speculative_generate
from accelc.runtime.speculative.steps import GraphStep, cache_for, torch_graph_fn

torch.set_num_threads(1)
V = 257


def test_features_hold_the_normalised_state_and_the_drafters_own_probability():
    rng = np.random.default_rng(0)
    h, row = rng.normal(size=16).astype(np.float32) * 3, rng.normal(size=10).astype(np.float32)
    x = features(h, row, 4, 2)
    q = np.exp(row - row.max())
    q /= q.sum()
    assert x.shape == (16 + 3,)
    assert np.allclose(x[:16], h / np.sqrt((h * h).mean() + 1e-6), atol=1e-5)
    assert np.isclose(x[16], np.log(q[4]), atol=1e-5)
    assert np.isclose(x[17], -(q * np.log(q)).sum(), atol=1e-5)
    assert np.isclose(x[18], 3 / 8)


def _synthetic(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    y = ((X[:, 0] * X[:, 1] + 0.5 * X[:, 2]) > 0).astype(np.float32)      # not linearly separable
    return {"features": X, "labels": y, "baseline": np.full(n, 0.5)}


def test_trained_head_separates_the_classes_and_numpy_matches_torch():
    tensors, summary = train_head(_synthetic(3000, 0), hidden=32, rank=9, epochs=400, lr=1e-2)
    assert summary["bce"]["holdout"] < 0.6 * summary["bce"]["first"] and summary["epochs"] > 10
    ev = evaluate_head(tensors, _synthetic(1000, 1))
    assert ev["head"]["auc"] > 0.9 and ev["drafter_probability"]["auc"] == 0.5
    assert ev["head"]["bce"] < ev["drafter_probability"]["bce"]
    head = AcceptHead(tensors)
    x = _synthetic(5, 2)["features"]
    with torch.no_grad():
        t = torch.from_numpy(x)
        for i in range(3):
            t = t @ torch.from_numpy(tensors[f"w{i}"]).T + torch.from_numpy(tensors[f"b{i}"])
            t = torch.nn.functional.silu(t) if i < 2 else torch.sigmoid(t)
    assert np.allclose([head.prob(r) for r in x], t[:, 0].numpy(), atol=1e-5)


def test_auc_counts_ties_as_half():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1.0])) == 0.75
    assert auc(np.array([0.5, 0.5]), np.array([0, 1.0])) == 0.5
    assert auc(np.array([0.5]), np.array([1.0])) is None


def test_fixed_stop_is_specdecs_threshold_on_the_rejection_probability():
    s = FixedStop(0.5)
    assert not s(0.9) and not s(0.8) and s(0.6)        # 1 - .9*.8 = .28, 1 - .432 = .568 > .5


def test_cost_stop_weighs_the_next_drafts_gain_against_its_time():
    verify = [0.0, 1.0, 1.1, 1.2, 1.3, 1.4]          # width 1..5
    sure = CostStop(verify, 0.1)
    assert [sure(1.0) for _ in range(3)] == [False, False, False]
    assert sure(1.0)                                  # the cap: no wider verify pass measured
    assert CostStop(verify, 0.1)(0.05)                # a first draft unlikely to pass: stop there
    costly = CostStop([0.0, 1.0, 2.0, 3.0], 0.5)      # each extra position costs as much as a token is worth
    assert costly(0.9)


@pytest.fixture(scope="module")
def drafted():
    m = tiny_model("llama", seed=0, vocab_size=V, num_hidden_layers=3, initializer_range=0.1)
    ad = ArchAdapter(m)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 64, (40,), generator=g)
    stream = torch.cat([base[torch.randperm(40, generator=g)[:30]] for _ in range(200)])
    windows = token_windows(stream, 40, 33, seed=0)
    drafter = EagleGraph(m, ad, None, init_from=2)
    train_eagle(drafter, windows, target_features(m, ad, windows), steps=60, seconds=1e9, batch=4, lr=3e-3, seed=0)
    prompts = [stream[i * 97:i * 97 + 12].tolist() for i in range(12)]
    return m, ad, drafter.eval(), prompts


def test_rollout_labels_follow_the_rounds(drafted):
    m, ad, drafter, prompts = drafted
    data, stats = rollouts(m, ad, drafter, prompts[:6], 24, k=4)
    y, pos = data["labels"], data["positions"]
    assert data["features"].shape == (len(y), ad.hidden_size + 3)
    # every round contributes its accepted drafts, then its first rejected one (none after)
    assert int(y.sum()) == stats["accepted"] > 0 and (y == 0).any()
    assert int((pos == 0).sum()) == sum(stats["rounds_by_source"].values())
    for i in range(3):
        assert int((pos == i + 1).sum()) <= int(((pos == i) & (y == 1)).sum())
    assert np.allclose(data["baseline"], np.exp(data["features"][:, -3]))


def _spec(m, ad, drafter, head, prompt, n, config):
    tg = target_graph(m, ad)
    cap = len(prompt) + n + 12
    target, prop = eagle_steps((torch_graph_fn(tg), cache_for(tg, cap)), (torch_graph_fn(drafter),
                               cache_for(drafter, cap)), ad.hidden_size, ad.vocab_size, None)
    prop.head = head
    return speculative_generate(target, prop, prompt, n, config)


def test_specdec_mode_is_lossless_and_the_head_sets_the_draft_length(drafted):
    m, ad, drafter, prompts = drafted
    data, _ = rollouts(m, ad, drafter, prompts[6:], 24, k=4)
    tensors, _ = train_head(data, hidden=16, epochs=100)
    assert set(tensors) == {"w0", "b0", "w1", "b1", "w2", "b2"} and tensors["w0"].shape == (16, ad.hidden_size + 3)
    g = DecoderGraph(m, ad)
    for p in prompts[:3]:
        ref = autoregressive_generate(GraphStep(torch_graph_fn(g), cache_for(g, 64)), p, 24)
        for thr in (None, 0.5):
            out, stats = _spec(m, ad, drafter, AcceptHead(tensors), p, 24,
                               SpecConfig(k=6, k_max=6, draft_mode="specdec", reject_threshold=thr))
            assert out == ref and stats.drafted > 0
    # a head sure of rejection stops after one draft; one sure of acceptance drafts to the cap
    never = {**tensors, "b2": np.array([-40.0], dtype=np.float32), "w2": np.zeros_like(tensors["w2"])}
    always = {**tensors, "b2": np.array([40.0], dtype=np.float32), "w2": np.zeros_like(tensors["w2"])}
    cfg = SpecConfig(k=6, k_max=6, draft_mode="specdec", reject_threshold=0.5)
    _, s_never = _spec(m, ad, drafter, AcceptHead(never), prompts[0], 24, cfg)
    _, s_always = _spec(m, ad, drafter, AcceptHead(always), prompts[0], 40, cfg)
    assert set(s_never.k_history) - {0} == {1}          # (0: the cost model's plain rounds)
    assert max(s_always.k_history) == 6


def test_specdec_needs_a_head(drafted):
    m, ad, drafter, prompts = drafted
    with pytest.raises(InputError, match="acceptance head"):
        _spec(m, ad, drafter, None, prompts[0], 8, SpecConfig(draft_mode="specdec"))


def test_projection_and_standardisation_fold_into_the_first_layer():
    """The state enters through its principal directions: a label carried by the state's main direction is learnt
    (rank 1), and the folded w0 reads the raw layout (the head's prediction moves with that direction)."""
    rng = np.random.default_rng(4)
    n, C = 4000, 20
    direction = rng.normal(size=C)
    direction /= np.linalg.norm(direction)
    t = rng.normal(size=n) * 5
    X = np.concatenate([t[:, None] * direction + rng.normal(size=(n, C)) * 0.3, rng.normal(size=(n, 3))], 1)
    data = {"features": X.astype(np.float32), "labels": (t > 0).astype(np.float32), "baseline": np.full(n, 0.5)}
    tensors, summary = train_head(data, hidden=8, rank=1)
    assert summary["state_rank"] == 1
    head = AcceptHead(tensors)
    up = np.r_[3 * direction, 0, 0, 0].astype(np.float32)
    assert head.prob(up) > 0.9 > 0.1 > head.prob(-up)


def test_rollouts_with_one_outcome_give_a_constant_head():
    data = _synthetic(50, 3)
    data["labels"][:] = 0.0
    tensors, summary = train_head(data, hidden=8)
    assert summary["constant"] and np.isclose(AcceptHead(tensors).prob(data["features"][0]), 1 / 52)
