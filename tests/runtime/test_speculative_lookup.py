"""Prompt lookup drafting, the combined proposer and the cost model: lossless greedy, exact sampling with
deterministic drafts, the n-gram index, the cost model's choices, and lookup on tiny artifacts through every
backend and `accelc run --draft-mode lookup`."""
import json

import numpy as np
import pytest
from scipy.stats import chisquare

from accelc.compiler.cli import main
from accelc.compiler.errors import InputError
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.sampling import Sampler, SamplingConfig
from accelc.runtime.speculative.artifact import run_speculative
from accelc.runtime.speculative.cost import CostModel, measure_verify
from accelc.runtime.speculative.loop import SpecConfig, autoregressive_generate, speculative_generate
from accelc.runtime.speculative.proposers import CombinedProposer, LookupProposer, ModelProposer

from test_speculative import ToyLM, _exact_joint


def test_lookup_index_finds_the_longest_latest_match():
    lk = LookupProposer(max_ngram=3)
    seq = [1, 2, 3, 9, 8, 1, 2, 3, 7, 5, 2, 3]
    assert lk.match(seq) == (2, 8)             # "2 3" last continued by 7 (at 8); "1 2 3"... ends differently
    assert lk.propose(seq, 3, None, None, None) == ([7, 5, 2], [None] * 3)
    seq += [7]                                 # now "2 3 7" occurred before (positions 6..8)
    assert lk.source(seq) == "lookup:3" and lk.propose(seq, 2, None, None, None)[0] == [5, 2]
    fresh = LookupProposer()
    assert fresh.source([4, 5, 6]) is None     # nothing repeats: nothing to draft
    assert fresh.source([4, 5, 6, 5]) == "lookup:1" and fresh.propose([4, 5, 6, 5], 4, None, None, None)[0] == [6, 5]
    with pytest.raises(ValueError):
        fresh.match([4])                       # a shorter sequence needs start()
    fresh.start()
    assert fresh.match([4]) is None
    with pytest.raises(InputError):
        LookupProposer(max_ngram=1, min_ngram=2)


def test_lookup_source_names_the_match_length_bucket():
    text = list(range(10, 22))                 # 12 distinct tokens, then their first n again
    for n, name in ((1, "lookup:1"), (3, "lookup:3"), (5, "lookup:4"), (7, "lookup:6"), (8, "lookup:8"),
                    (11, "lookup:8")):
        lk = LookupProposer()
        seq = [99] + text + text[:n]
        assert lk.match(seq) == (min(n, 8), 1 + n)
        assert lk.source(seq) == name
        assert lk.propose(seq, 4, None, None, None)[0] == seq[1 + n:5 + n]
    assert LookupProposer(max_ngram=3).source([99] + text + text[:8]) == "lookup:3"


class Cyclic(ToyLM):
    """Greedy output that falls into repeats (logits from the last token only), so lookup has matches."""

    def logits_after(self, ctx):
        return super().logits_after([0, ctx[-1]])


class Bound(Cyclic):
    """A target whose pass costs about the same for 1..5 tokens (like a memory-bound decoder step)."""

    def forward(self, tokens):
        import time
        time.sleep(0.002)
        return super().forward(tokens)


@pytest.mark.parametrize("mode", ["fixed", "cost"])
def test_greedy_lookup_equals_greedy(mode):
    accepted = 0
    for seed in range(10):
        target = Bound(12, seed)
        prompt = [seed % 12, 3, 5, seed % 7]
        ref = autoregressive_generate(target, prompt, 40, eos_ids=[11])
        out, stats = speculative_generate(target, LookupProposer(), prompt, 40,
                                          SpecConfig(k=4, k_max=4, draft_mode=mode), eos_ids=[11])
        assert out == ref
        accepted += stats.accepted
        assert (stats.position_drafted or [0])[0] == sum(stats.sources.values())     # rounds that drafted
    assert accepted > 50                       # the repeats were drafted and accepted


def test_greedy_lookup_on_a_tiny_torch_decoder():
    from test_speculative import tiny_step
    target, _ = tiny_step(0, capacity=160)
    prompt = [5, 9, 17, 30, 5, 9, 17, 30, 5, 9]
    ref = autoregressive_generate(target, prompt, 40)
    out, stats = speculative_generate(target, LookupProposer(), prompt, 40, SpecConfig(k=4, draft_mode="fixed"))
    assert out == ref and stats.drafted > 0


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.8, top_k=3)])
def test_sampling_with_deterministic_drafts_matches_the_target(cfg):
    """Lookup drafts have q one-hot: accept with p(d), else draw from p without d. The joint law of the output
    stays the target's (prompt [0, 1, 0, 1] always has a match, so every round drafts)."""
    V, n, runs = 3, 3, 3000
    target = ToyLM(V, 21, scale=1.5)
    prompt = [0, 1, 0, 1]
    exact = _exact_joint(target, prompt, n, cfg)
    keys = list(exact)

    def histogram(spec):
        counts, drafted = dict.fromkeys(keys, 0), 0
        for seed in range(runs):
            out, st = speculative_generate(target, LookupProposer(), prompt, n, spec, cfg,
                                           sampler=Sampler(SamplingConfig(cfg.temperature, cfg.top_k, seed=seed)))
            counts[tuple(out)] += 1
            drafted += st.drafted
        return np.array([counts[k] for k in keys], dtype=float), drafted

    obs, drafted = histogram(SpecConfig(k=3, draft_mode="fixed"))
    assert drafted > 0.8 * runs                # almost every generation drafted from the prompt
    expected = np.array([exact[k] for k in keys]) * runs
    keep = expected > 0
    assert obs[~keep].sum() == 0
    assert chisquare(obs[keep], expected[keep]).pvalue > 1e-3
    assert 0.5 * np.abs(obs - expected).sum() / runs < 0.08
    # the test has teeth: accepting every lookup draft (fuzzy, huge threshold) copies the prompt instead
    broken, _ = histogram(SpecConfig(k=3, draft_mode="fixed", fuzzy="tv", fuzzy_threshold=2.0))
    assert chisquare(broken[keep], expected[keep] * broken[keep].sum() / expected[keep].sum()).pvalue < 1e-6


def test_combined_uses_lookup_when_it_matches_and_the_model_otherwise():
    used = {}
    for seed in range(6):
        target = Cyclic(12, seed)
        draft = Cyclic(12, seed + 50, base=target, noise=0.3)
        prompt = [seed % 12, 4]
        ref = autoregressive_generate(target, prompt, 40)
        proposer = CombinedProposer(LookupProposer(min_ngram=2), ModelProposer(draft))
        out, stats = speculative_generate(target, proposer, prompt, 40, SpecConfig(k=3, k_max=3, draft_mode="fixed"))
        assert out == ref
        for s, n in stats.sources.items():
            used[s.split(":")[0]] = used.get(s.split(":")[0], 0) + n
    assert used.get("model", 0) >= 3 and used.get("lookup", 0) >= 3


def test_cost_model_speculates_only_when_it_pays():
    cm = CostModel(k_max=6)
    assert cm.best_k("lookup:3") == 6                       # nothing measured: try the cap
    cm.observe(None, 0, 0, 0.0, 0.010)                      # a plain step: 10 ms
    assert cm.verify_cost(3) == pytest.approx(0.010 * (1 + 0.05 * 2))
    assert cm.best_k("lookup:3") > 0                        # optimistic prior: speculation is tried
    for _ in range(40):                                     # drafts never accepted, verify of 7 costs 16 ms
        cm.observe("lookup:1", 6, 0, 0.0, 0.016)
    assert cm.verify_cost(4) == pytest.approx(0.010 + 0.001 * 3, rel=1e-3)    # the line through widths 1 and 7
    assert cm.rate_best_k("lookup:1", 6) == 0               # never accepted: plain decoding pays best
    assert cm.best_k("lookup:1") == 0                       # (a plain step: its cost is REFRESH rounds old)
    cm.observe(None, 0, 0, 0.0, 0.010)
    assert cm.best_k("lookup:1") == 1                       # 1 draft (width 2) was never measured: tried once
    cm.observe("lookup:1", 1, 0, 0.0, 0.0105)
    assert cm.best_k("lookup:1") == 0
    for _ in range(40):                                     # always accepted: the cap pays
        cm.observe("lookup:3", 6, 6, 0.0, 0.016)
    assert cm.best_k("lookup:3") == 0                       # ... after a plain step every REFRESH rounds
    cm.observe(None, 0, 0, 0.0, 0.010)
    assert cm.best_k("lookup:3") == 6
    cm.observe("model", 2, 2, 0.400, 0.011)                 # a first round: not timed (one-time costs)
    assert cm.draft_cost("model") == 0.0
    cm.observe("model", 2, 2, 0.040, 0.011)                 # a drafter costing 20 ms per token never pays
    assert cm.draft_cost("model") == pytest.approx(0.020) and cm.rate_best_k("model", 6) == 0
    for _ in range(3):                                       # ... until it gets cheap: followed within a few rounds
        cm.observe("model", 2, 2, 0.002, 0.011)
    assert cm.draft_cost("model") < 0.005 and cm.rate_best_k("model", 6) > 0


def test_cost_model_explores_an_expensive_drafter_only_while_it_drafts():
    """From k = 0, a longer draft is explored only for a source whose drafts cost little (prompt lookup): a model
    drafter that pays its catch-up on every token since its last draft is not woken every EXPLORE rounds."""
    from accelc.runtime.speculative import cost as cost_mod
    cm = CostModel(k_max=4)
    for w in range(1, 6):
        cm.verify[w], cm.seen[w] = (0.010 * (1 + 0.1 * (w - 1)), 3), 0
    for _ in range(2):                               # the first round is not timed; then 8 ms per draft: never pays
        cm.observe("eagle", 1, 0, 0.008, 0.011)
    picks = [cm.best_k("eagle") for _ in range(1)]
    for _ in range(3 * cost_mod.EXPLORE):
        k = cm.best_k("eagle")
        picks.append(k)
        cm.observe("eagle" if k else None, k, 0, 0.008 * k, 0.010 * (1 + 0.1 * k))
    assert set(picks) == {0}
    for _ in range(40):                              # prompt lookup: free drafts, never accepted so far
        cm.observe("lookup:2", 4, 0, 0.0, 0.014)
    assert cm.rate_best_k("lookup:2", 4) == 0
    looks = []
    for _ in range(3 * cost_mod.EXPLORE):
        k = cm.best_k("lookup:2")
        looks.append(k)
        cm.observe("lookup:2" if k else None, k, 0, 0.0, 0.010 * (1 + 0.1 * k))
    assert 0 < looks.count(1) <= 4 and set(looks) == {0, 1}      # explored every EXPLORE rounds
    assert cm.verify_cost(2) >= cm.verify_cost(1)


def test_cost_model_follows_the_prompt_at_hand():
    """Acceptance counts decay: after a run of accepted drafts, a run of rejected ones turns speculation off within
    tens of rounds (cumulative counts would need as many rejections as there were acceptances)."""
    cm = CostModel(k_max=4)
    for w in range(1, 6):
        cm.verify[w] = (0.010 * (1 + 0.1 * (w - 1)), 1)
    for _ in range(500):
        cm.observe("eagle", 4, 4, 0.004, 0.013)
        cm.observe(None, 0, 0, 0.0, 0.010)
    assert cm.best_k("eagle") == 4
    for _ in range(60):
        cm.observe("eagle", 1, 0, 0.001, 0.011)
    assert cm.best_k("eagle") == 0
    cm.verify[1] = (0.080, 1)                   # a stale or noisy figure for one position (a first pass at a shape)
    for _ in range(500):
        cm.observe("eagle", 4, 4, 0.004, 0.013)
    picks = []
    for _ in range(100):                        # plain steps stay reachable: the stale figure gets measured again
        k = cm.best_k("eagle")
        picks.append(k)
        cm.observe("eagle" if k else None, k, k, 0.001 * k, 0.010 + 0.001 * k)
    assert picks[0] == 0 and picks.count(0) <= 4 and cm.verify_cost(1) < 0.05    # one in REFRESH, moving to 10 ms


def test_cost_model_tries_a_longer_draft_again():
    """One slow pass over 3 positions, and every longer width estimated no cheaper: the model settles on one draft a
    round. Every EXPLORE rounds it drafts one more; the second position's acceptance and the width's true cost are
    measured, and it moves to longer drafts (without exploration it stays at one draft for good)."""
    from accelc.runtime.speculative import cost as cost_mod
    cm = CostModel(k_max=4)
    for w, t in ((1, 0.010), (2, 0.0105), (3, 0.050)):
        cm.verify[w], cm.seen[w] = (t, 3), 0
    true_cost = lambda w: 0.010 + 0.0005 * (w - 1)          # noqa: E731
    picks = []
    for _ in range(10 * cost_mod.EXPLORE):
        k = cm.best_k("lookup:3")
        picks.append(k)
        cm.observe("lookup:3", k, k, 0.0, true_cost(k + 1))    # every draft accepted
    assert picks[0] == 1 and 2 in picks[:cost_mod.EXPLORE + 2]
    assert picks[-5:] == [4] * 5 and cm.verify_cost(3) < 0.015
    assert picks.count(1) < len(picks) / 2                     # it leaves the trap within a few explorations


def test_measure_verify_skips_each_width_first_pass():
    """A backend's first pass at a new width pays one-time costs: the timings are taken after one untimed pass."""
    import time as _time

    class Slow:
        length, seen = 0, set()

        def forward(self, toks):
            if len(toks) not in self.seen:       # first pass at this width: 100 ms of set-up
                self.seen.add(len(toks))
                _time.sleep(0.1)
            _time.sleep(0.005)                   # then 5 ms a pass at every width: drafts are free
            self.length += len(toks)

        def truncate(self, n):
            self.length = n
    cm = CostModel(k_max=3)
    measure_verify(cm, Slow(), context=4)
    assert all(cm.verify[w][0] < 0.05 for w in range(1, 5))
    # equal costs (steady sleeps, not microsecond no-ops whose timing noise on a loaded machine decides the ranking)
    assert cm.best_k("lookup:3") == 3


# -- artifacts ------------------------------------------------------------------------------------------------
PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 46, 32, 72, 101, 108, 108, 111, 32]   # "Hello world. Hello "


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "native"])
def test_lookup_on_artifacts_equals_plain_decoding(backend, tiny_artifact, tiny_static_artifact, monkeypatch):
    from accelc.runtime.speculative import cost as cost_mod
    # this tiny model's multi-token passes can time at several one-token steps (overhead-bound), which would space
    # the cost model's tries from plain steps far apart (EXPLORE_PADDED): keep every EXPLORE rounds, so it drafts
    monkeypatch.setattr(cost_mod, "EXPLORE_PADDED", float("inf"))
    art = open_artifact(tiny_artifact, backend=backend, full_logits=True, report=False)
    ref = generate(open_artifact(tiny_artifact, backend=backend, report=False), PROMPT, 30).tokens
    res, stats = run_speculative(art, PROMPT, 30, SamplingConfig(), draft_mode="lookup")
    assert res.tokens == ref and stats.rounds < 30 and stats.drafted > 0
    if backend == "openvino":                  # the static (NPU) graphs verify in their fixed chunks
        st = open_artifact(tiny_static_artifact, backend="openvino", full_logits=True, report=False)
        res, _ = run_speculative(st, PROMPT, 20, SamplingConfig(), k=4, draft_mode="lookup")
        assert res.tokens == ref[:20]


def test_combined_without_drafter_warns_and_runs_lookup(tiny_artifact):
    art = open_artifact(tiny_artifact, backend="onnxruntime", full_logits=True, report=False)
    said = []
    res, stats = run_speculative(art, PROMPT, 12, SamplingConfig(), draft_mode="combined", warn=said.append)
    assert said and "lookup only" in said[0] and len(res.tokens) == 12
    with pytest.raises(InputError):
        run_speculative(art, PROMPT, 12, SamplingConfig(), draft_mode="sometimes")
    said.clear()        # a drafter's mode asked of an artifact without one: a note, then plain decoding
    assert run_speculative(art, PROMPT, 12, SamplingConfig(), draft_mode="specdec", warn=said.append) is None
    assert said and "has none" in said[0]
    said.clear()
    assert run_speculative(art, PROMPT, 12, SamplingConfig(), draft_mode="cost", warn=said.append) is None
    assert not said


def test_cli_run_lookup_json(tiny_artifact, capsys):
    args = ["run", str(tiny_artifact), "--prompt", "Hello world. Hello ", "--raw", "--max-new-tokens", "16", "--json",
            "--backend", "openvino"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--draft-mode", "lookup"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"] and "speculative" not in plain
    s = spec["speculative"]
    assert s["rounds"] + s["accepted"] == 15 and len(s["acceptance_by_position"]) == len(s["drafted_by_position"])
    assert main(args + ["--draft-mode", "lookup", "--draft-k", "0"]) == 2


@pytest.mark.parametrize("spec,fragment", [("kl:0.3", "unknown divergence 'kl'"), ("js", "DIV:THRESHOLD"),
                                           ("js:-1", "fuzzy threshold must be >= 0"), ("tv:abc", "must be a number")])
def test_cli_bad_fuzzy_is_one_line_before_the_load(tiny_artifact, capsys, monkeypatch, spec, fragment):
    import accelc.runtime.artifact as ra

    def no_load(*a, **k):
        raise AssertionError("the artifact was opened before --fuzzy was checked")
    monkeypatch.setattr(ra, "open_artifact", no_load)
    code = main(["run", str(tiny_artifact), "--prompt", "Hi", "--raw", "--draft-mode", "lookup", "--fuzzy", spec])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_cli_fuzzy_accepts_more_than_exact(tiny_artifact, capsys):
    """JS divergence is at most ln 2, so a threshold of 1 accepts every draft: no round ends on a rejection."""
    args = ["run", str(tiny_artifact), "--prompt", "Hello world. Hello ", "--raw", "--max-new-tokens", "16", "--json",
            "--backend", "openvino", "--draft-mode", "lookup"]
    assert main(args) == 0
    exact = json.loads(capsys.readouterr().out)["speculative"]
    assert main(args + ["--fuzzy", "js:1"]) == 0
    fuzzy = json.loads(capsys.readouterr().out)["speculative"]
    assert fuzzy["accepted"] == fuzzy["drafted"] and fuzzy["accepted"] >= exact["accepted"]


class Slow(Cyclic):
    """A drafter whose pass costs 2 ms per token fed, recording each pass's width."""

    def forward(self, tokens):
        import time
        self.widths = getattr(self, "widths", []) + [len(tokens)]
        time.sleep(0.002 * len(tokens))
        return super().forward(tokens)


class Scripted(CostModel):
    """best_k from a script (idle rounds, then drafting); records the draft seconds the loop observes."""

    def __init__(self, ks):
        super().__init__(k_max=2)
        self.ks, self.seen_draft = list(ks), []

    def best_k(self, source, k_max=None):
        return self.ks.pop(0) if self.ks else 2

    def observe(self, source, drafted, accepted, draft_s, verify_s, **round_):
        if drafted:
            self.seen_draft.append(draft_s)
        super().observe(source, drafted, accepted, draft_s, verify_s, **round_)


def test_catch_up_after_idle_rounds_is_kept_out_of_the_draft_cost():
    """A drafter idle for more than CATCH_UP positions first catches up in a pass of its own; the loop reports it as
    catch_up_s and the cost model sees only the drafting time (else one catch-up priced the drafter out for good)."""
    from accelc.runtime.speculative.loop import CATCH_UP
    target = Cyclic(12, 3)
    draft = Slow(12, 40, base=target, noise=0.3)
    prompt = [1, 4]
    ref = autoregressive_generate(target, prompt, 60)
    cost = Scripted([0] * (CATCH_UP + 10))                 # idle rounds, then two drafts per round
    out, stats = speculative_generate(target, ModelProposer(draft), prompt, 60,
                                      SpecConfig(k=2, k_max=2, draft_mode="cost"), cost=cost)
    assert out == ref
    first = draft.widths.index(max(draft.widths))
    assert draft.widths[first] > CATCH_UP and draft.widths[first + 1] == 1       # catch-up, then the draft pass
    assert stats.catch_up_s >= 0.002 * CATCH_UP and stats.catch_up_s < stats.draft_s
    assert max(cost.seen_draft) < 0.002 * CATCH_UP                               # never the catch-up's time
    assert stats.to_json()["catch_up_share"] > 0
    # a drafter used every round lags by a few tokens: no separate pass, no catch-up time
    d2 = Slow(12, 40, base=target, noise=0.3)
    _, s2 = speculative_generate(target, ModelProposer(d2), prompt, 60, SpecConfig(k=2, k_max=2, draft_mode="fixed"))
    assert s2.catch_up_s == 0.0 and max(d2.widths[1:]) <= 3


def test_cost_model_stops_a_source_whose_rounds_are_slower_than_plain():
    """The component estimates say a drafter pays (cheap drafts, a quarter accepted), but its whole rounds emit
    tokens more slowly than plain steps (a cost the estimates leave out): after GUARD_ROUNDS of each it drafts only
    after RETRY rounds, then after twice as many, up to RETRY_MAX; a source whose rounds beat plain keeps drafting."""
    from accelc.runtime.speculative import cost as cost_mod
    cm = CostModel(k_max=2)
    for w in range(1, 4):
        cm.verify[w], cm.seen[w] = (0.010 * (1 + 0.05 * (w - 1)), 3), 0
    for _ in range(20):                      # estimates: 1 ms drafts, a quarter accepted -> k = 1 looks better
        cm.observe("eagle", 1, 0, 0.001, 0.0105, round_s=0.016, emitted=1)
        cm.observe("eagle", 1, 0, 0.001, 0.0105, round_s=0.016, emitted=1)
        cm.observe("eagle", 1, 0, 0.001, 0.0105, round_s=0.016, emitted=1)
        cm.observe("eagle", 1, 1, 0.001, 0.0105, round_s=0.016, emitted=2)
    assert cm.rate_best_k("eagle", 2) > 0 and cm.best_k("eagle") == 0      # no plain rounds seen yet: REFRESH
    tries = []
    for r in range(3 * cost_mod.RETRY_MAX):
        k = cm.best_k("eagle")
        if k:
            tries.append(r)
            cm.observe("eagle", k, 0, 0.001 * k, 0.0105, round_s=0.016, emitted=1)
        else:
            cm.observe(None, 0, 0, 0.0, 0.010, round_s=0.010, emitted=1)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert cm.losing("eagle") and 2 <= len(tries) <= 6               # a try now and then, each still slower
    assert all(cost_mod.RETRY < g <= cost_mod.RETRY_MAX + 2 for g in gaps) and gaps == sorted(gaps), (tries, gaps)
    good = CostModel(k_max=2)
    for w in range(1, 4):
        good.verify[w], good.seen[w] = (0.010 * (1 + 0.05 * (w - 1)), 3), 0
    for _ in range(40):
        good.observe("eagle", 2, 2, 0.002, 0.011, round_s=0.014, emitted=3)
        good.observe(None, 0, 0, 0.0, 0.010, round_s=0.010, emitted=1)
    assert not good.losing("eagle") and good.best_k("eagle") == 2


def test_cost_model_explores_from_plain_steps_in_proportion_to_the_cost():
    """A static graph's padded pass (two positions cost 7 one-token steps): free lookup drafts that never pay are
    tried from k = 0 rarely enough that trying costs at most EXPLORE_OVERHEAD of the time, not every EXPLORE rounds."""
    from accelc.runtime.speculative import cost as cost_mod
    cm = CostModel(k_max=8)
    cm.verify[1], cm.seen[1] = (0.024, 3), 0
    for w in range(2, 10):
        cm.verify[w], cm.seen[w] = (0.165, 3), 0
    assert cm.explore_every(0) == (0.165 / 0.024 - 1) / cost_mod.EXPLORE_OVERHEAD
    picks, spent = [], 0.0
    for _ in range(1000):
        k = cm.best_k("lookup:2")
        picks.append(k)
        t = 0.165 if k else 0.024
        spent += t
        cm.observe("lookup:2" if k else None, k, 0, 0.0, t)
    assert picks.count(0) >= 990 and spent / (1000 * 0.024) < 1.03
