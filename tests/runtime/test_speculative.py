"""Speculative decoding: lossless greedy, exact sampling distribution, rollback, adaptive draft length, fuzzy."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from accelc.compiler.errors import InputError
from accelc.models.tiny import tiny_model
from accelc.passes.export.decoder_graph import DecoderGraph
from accelc.runtime.sampling import Sampler, SamplingConfig, probabilities
from accelc.runtime.speculative.steps import GraphStep, cache_for, torch_graph_fn
from accelc.runtime.speculative.loop import (SpecConfig, autoregressive_generate, divergence, speculative_generate)


class ToyLM:
    """A step model whose logits are a fixed random function of the last two tokens (numpy, microseconds)."""

    def __init__(self, vocab: int, seed: int, scale: float = 2.0, base: "ToyLM | None" = None, noise: float = 0.0):
        self.vocab, self.seed, self.scale, self.base, self.noise = vocab, seed, scale, base, noise
        self.seq: list[int] = []
        self.calls = 0

    @property
    def length(self):
        return len(self.seq)

    def logits_after(self, ctx) -> np.ndarray:
        key = (self.seed, *ctx[-2:])
        rng = np.random.default_rng(abs(hash(key)) % (2 ** 32))
        own = rng.normal(size=self.vocab) * self.scale
        if self.base is None:
            return own
        return self.base.logits_after(ctx) + self.noise * own

    def forward(self, tokens):
        self.calls += 1
        out = []
        for t in tokens:
            self.seq.append(int(t))
            out.append(self.logits_after(self.seq))
        return np.stack(out)

    def truncate(self, length):
        assert 0 <= length <= len(self.seq)
        del self.seq[length:]


def tiny_step(seed: int, noise_from=None, noise: float = 0.0, capacity: int = 128):
    model = tiny_model("llama", seed=seed)
    if noise_from is not None:   # a drafter close to the target: target weights plus noise
        with torch.no_grad():
            for p, q in zip(model.parameters(), noise_from.parameters()):
                p.copy_(q + noise * torch.randn_like(q))
    graph = DecoderGraph(model)
    return GraphStep(torch_graph_fn(graph), cache_for(graph, capacity)), model


PROMPTS = [[1, 5, 9], [200, 3, 3, 3, 17, 64], [42]]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_pair():
    target, tmodel = tiny_step(0)
    refs = [autoregressive_generate(target, p, 20) for p in PROMPTS]
    drafts = [tiny_step(1)[0], tiny_step(2, noise_from=tmodel, noise=0.02)[0]]
    return target, drafts, refs


@pytest.mark.parametrize("mode", ["fixed", "confidence", "heuristic"])
def test_greedy_speculative_equals_greedy_tiny_torch(mode, tiny_pair):
    target, drafts, refs = tiny_pair
    for j, draft in enumerate(drafts):   # an unrelated drafter and a near copy of the target
        accepted = 0
        for prompt, ref in zip(PROMPTS, refs):
            out, stats = speculative_generate(target, draft, prompt, 20, SpecConfig(k=3, draft_mode=mode))
            assert out == ref
            accepted += stats.accepted
        if j == 1:
            assert accepted > 0   # the near copy is accepted often: partial and full rounds both ran


def test_rollback_leaves_the_caches_as_a_fresh_prefill():
    target, tmodel = tiny_step(0)
    draft, _ = tiny_step(3, noise_from=tmodel, noise=0.05)
    prompt = PROMPTS[1]
    out, stats = speculative_generate(target, draft, prompt, 20, SpecConfig(k=4, draft_mode="fixed"))
    assert stats.accepted < stats.drafted  # some rounds were rolled back
    seq = prompt + out
    assert target.length == len(seq) - 1 and draft.length <= len(seq) - 1
    fresh, _ = tiny_step(0)
    fresh.forward(seq[:-1])
    for a, b in zip(target.cache.views(), fresh.cache.views()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the drafter's cached prefix also matches its fresh prefill
    fresh_d, _ = tiny_step(3, noise_from=tmodel, noise=0.05)
    fresh_d.forward(seq[:draft.length])
    for a, b in zip(draft.cache.views(), fresh_d.cache.views()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_greedy_toy_many_pairs_and_eos():
    for seed in range(12):
        target = ToyLM(16, seed)
        draft = ToyLM(16, seed + 100, base=target, noise=0.7)
        prompt = [seed % 16, 3]
        ref = autoregressive_generate(target, prompt, 30, eos_ids=[7])
        out, _ = speculative_generate(target, draft, prompt, 30, SpecConfig(k=5, draft_mode="fixed"), eos_ids=[7])
        assert out == ref
        assert 7 not in out[:-1]


def test_confidence_stopping_rule_drafts_until_the_product_falls_below_threshold():
    class Peaked(ToyLM):      # the drafter's top token always has probability 0.8
        def logits_after(self, ctx):
            x = np.full(self.vocab, np.log(0.2 / (self.vocab - 1)))
            x[(ctx[-1] + 1) % self.vocab] = np.log(0.8)
            return x
    target = Peaked(8, 0)     # drafter == target: everything is accepted
    draft = Peaked(8, 0)
    _, stats = speculative_generate(target, draft, [0], 60, SpecConfig(draft_mode="confidence", stop_threshold=0.5,
                                                                       k_max=8))
    # 0.8, 0.64, 0.512, 0.4096 < 0.5: four drafts per round (the last round may be cut by the budget)
    assert stats.k_history[:-1] == [4] * (len(stats.k_history) - 1)
    out, stats = speculative_generate(target, draft, [0], 60, SpecConfig(draft_mode="confidence",
                                                                         stop_threshold=0.3, k_max=8))
    assert stats.k_history[0] == 6      # 0.8^5 = 0.328 >= 0.3, 0.8^6 = 0.262 < 0.3
    assert stats.acceptance_rate == 1.0
    assert stats.mean_accepted == pytest.approx((len(out) - 1) / stats.rounds) and stats.mean_accepted > 6


def test_heuristic_grows_on_full_acceptance_and_shrinks_otherwise():
    target = ToyLM(16, 0)
    _, stats = speculative_generate(target, ToyLM(16, 0), [1], 80, SpecConfig(k=2, draft_mode="heuristic", k_max=8))
    assert stats.k_history[:4] == [2, 4, 6, 8]
    bad = ToyLM(16, 0, base=target, noise=-1.0)    # logits = 0 * target ... - own: never the target's argmax
    bad.logits_after = lambda ctx: -target.logits_after(ctx)
    _, stats = speculative_generate(target, bad, [1], 30, SpecConfig(k=5, draft_mode="heuristic", k_max=8))
    assert stats.k_history[:5] == [5, 4, 3, 2, 1] and stats.accepted == 0


def _exact_joint(target: ToyLM, prompt, n: int, cfg: SamplingConfig) -> dict:
    """Exact probability of every n-token continuation under the target."""
    out = {}
    for seq in itertools.product(range(target.vocab), repeat=n):
        ctx, prob = list(prompt), 1.0
        for t in seq:
            prob *= probabilities(target.logits_after(ctx), cfg)[t]
            ctx.append(t)
        out[seq] = prob
    return out


class Reduced(ToyLM):
    """A drafter with a reduced vocabulary: token 3 is never proposed (logit -inf), like a reduced head."""

    def logits_after(self, ctx):
        x = super().logits_after(ctx)
        x[3] = -np.inf
        return x


@pytest.mark.parametrize("cfg,reduced", [(SamplingConfig(temperature=1.0), False),
                                         (SamplingConfig(temperature=0.8, top_k=3), False),
                                         (SamplingConfig(temperature=1.0), True)])
def test_sampling_matches_the_target_distribution(cfg, reduced):
    V, n, runs = 4, 3, 3000
    target = ToyLM(V, 11, scale=1.0)
    draft = (Reduced if reduced else ToyLM)(V, 12, scale=1.0, base=target, noise=1.0)
    exact = _exact_joint(target, [0], n, cfg)
    keys = list(exact)

    def histogram(spec: SpecConfig):
        counts = dict.fromkeys(keys, 0)
        for seed in range(runs):
            out, _ = speculative_generate(target, draft, [0], n, spec, cfg, sampler=Sampler(
                SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p, seed=seed)))
            counts[tuple(out)] += 1
        return np.array([counts[k] for k in keys], dtype=float)

    expected = np.array([exact[k] for k in keys]) * runs
    keep = expected > 0
    obs = histogram(SpecConfig(k=3, draft_mode="fixed"))
    assert obs[~keep].sum() == 0
    assert chisquare(obs[keep], expected[keep]).pvalue > 1e-3
    assert 0.5 * np.abs(obs / runs - expected / runs).sum() < 0.08
    # the test has teeth: accepting every draft (fuzzy, huge threshold) samples the drafter instead
    broken = histogram(SpecConfig(k=3, draft_mode="fixed", fuzzy="tv", fuzzy_threshold=2.0))
    assert chisquare(broken[keep], expected[keep] * broken[keep].sum() / expected[keep].sum()).pvalue < 1e-6


@pytest.mark.parametrize("kind", ["js", "tv"])
def test_fuzzy_threshold_zero_is_exact_and_large_accepts_all(kind):
    target = ToyLM(16, 5)
    draft = ToyLM(16, 6, base=target, noise=1.0)
    cfg = SamplingConfig(temperature=1.0)
    for seed in range(5):
        exact, s0 = speculative_generate(target, draft, [2], 40, SpecConfig(k=4, draft_mode="fixed"), cfg,
                                         sampler=Sampler(SamplingConfig(1.0, seed=seed)))
        fuzzy0, s1 = speculative_generate(target, draft, [2], 40, SpecConfig(k=4, draft_mode="fixed", fuzzy=kind),
                                          cfg, sampler=Sampler(SamplingConfig(1.0, seed=seed)))
        assert exact == fuzzy0 and s0.accepted == s1.accepted
    g_exact, _ = speculative_generate(target, draft, [2], 40, SpecConfig(k=4, draft_mode="fixed"))
    g_fuzzy, st = speculative_generate(target, draft, [2], 40, SpecConfig(k=4, draft_mode="fixed", fuzzy=kind,
                                                                          fuzzy_threshold=10.0))
    assert st.acceptance_rate == 1.0 and g_fuzzy != g_exact   # lossy when loose


def test_divergences():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.0, 0.5, 0.5])
    assert divergence(p, p, "js") == 0 and divergence(p, p, "tv") == 0
    assert divergence(p, q, "tv") == pytest.approx(0.5)
    assert divergence(p, q, "js") == pytest.approx(0.5 * np.log(2))


def test_bad_options_raise_input_error():
    with pytest.raises(InputError):
        SpecConfig(draft_mode="sometimes")
    with pytest.raises(InputError):
        SpecConfig(fuzzy="kl")
    with pytest.raises(InputError):
        SpecConfig(k=0)
