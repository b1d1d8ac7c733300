"""Speculative decoding over two "step models": a drafter proposes k tokens, the target verifies them
in one pass over k+1 positions, the longest agreeing prefix plus the target's own next token is kept,
and every KV cache is rolled back to the accepted length.

A step model (`StepModel`) is anything with
    length              tokens held in its KV cache
    forward(tokens)     append `tokens` (list of ints) after the cache; return their logits [T, V] (numpy)
    truncate(length)    forget everything after `length` cached tokens
so the algorithm runs the same on tiny torch models (tests), the artifact's graphs, or the fused
self-speculative drafter whose trunk KV cache is shared with the target (runtime/speculative/steps.py).
A target may also have `room()`: how many tokens its next pass may take (None: any). A fixed-size KV cache
(runtime/fixed_cache.py) says how far its next cut is, and drafts are capped so that a verify pass never runs past
it: the cache is cut where one-token decoding cuts it, holding only verified tokens, and a rejected draft is
rolled back from slots written after the last cut (docs/runtime/kv-cache.md, "Speculative decoding").

Acceptance (Leviathan et al. 2023; Chen et al. 2023):
- greedy: accept draft token d while d == argmax of the target; lossless (same tokens as greedy decoding).
- sampling: accept d with probability min(1, p(d)/q(d)); on rejection draw from norm(max(0, p - q));
  after k acceptances draw a bonus token from the target. Outputs follow the target's distribution
  exactly (p, q: the target's and drafter's distributions after temperature / top-k / top-p).
- fuzzy (Holsman et al. 2025, "Fuzzy Speculative Decoding"), off by default: also accept d when the
  divergence (JS or TV) between q and p at that position is below `fuzzy_threshold`; this trades exactness
  for speed. Here it is an extra acceptance path on top of the exact rule, so threshold 0 is exact SD.
Drafts come from a proposer (runtime/speculative/proposers.py): a drafter step model (its logits rows are q),
prompt lookup (the continuation of the latest earlier match of the text's last n-gram; deterministic, so
q is one-hot on the drafted token and the sampling rule above stays exact), or lookup with a model
drafter where lookup finds nothing. A plain StepModel passed as `draft` is a model proposer.
Draft length:
- "fixed": k every round.
- "confidence" (SpecDec++ stopping rule, with the drafter's own probabilities as the acceptance estimate):
  stop drafting once the product of the drafter's probabilities of its drafted tokens < `stop_threshold`.
- "heuristic" (the grow/shrink baseline): k += 2 after a fully accepted round, k -= 1 otherwise.
- "cost": the draft length (0 = no speculation this round) that maximises expected tokens per second
  from the measured verify cost per width, draft cost per token and acceptance per draft position of
  the round's draft source (runtime/speculative/cost.py).
- "specdec" (SpecDec++, an EAGLE drafter with a trained acceptance head: runtime/speculative/accept_head.py):
  the cost model decides whether to speculate this round; when it does, drafting runs up to k_max and stops
  once the head's predicted probability that some draft is rejected crosses the threshold (`reject_threshold`,
  or by default the one the measured costs set each round).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ...compiler.errors import InputError
from ..sampling import Sampler, SamplingConfig, probabilities

DRAFT_MODES = ("fixed", "confidence", "heuristic", "cost", "specdec")
DIVERGENCES = ("js", "tv")


class StepModel(Protocol):
    length: int

    def forward(self, tokens: Sequence[int]) -> np.ndarray: ...   # -> logits [T, V]

    def truncate(self, length: int) -> None: ...


@dataclass(frozen=True)
class SpecConfig:
    k: int = 4                       # draft length ("fixed"), start length ("heuristic"), cap ("confidence")
    draft_mode: str = "confidence"
    stop_threshold: float = 0.4      # "confidence": stop when prod of draft probabilities < this
    k_min: int = 1
    k_max: int = 8                   # cap for "heuristic" and "confidence"
    fuzzy: str | None = None         # "js" or "tv" to enable fuzzy acceptance
    fuzzy_threshold: float = 0.0
    reject_threshold: float | None = None   # "specdec": SpecDec++'s fixed h; None: from the measured costs

    def __post_init__(self):
        if self.draft_mode not in DRAFT_MODES:
            raise InputError(f"unknown draft mode '{self.draft_mode}' (choose from {', '.join(DRAFT_MODES)})")
        if not 1 <= self.k_min <= self.k_max:
            raise InputError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if not self.k >= 1:
            raise InputError(f"draft length k must be >= 1, got {self.k}")
        if not 0.0 <= self.stop_threshold <= 1.0:
            raise InputError(f"stop threshold must be in [0, 1], got {self.stop_threshold}")
        if self.fuzzy is not None and self.fuzzy not in DIVERGENCES:
            raise InputError(f"unknown divergence '{self.fuzzy}' (choose from {', '.join(DIVERGENCES)})")
        if not self.fuzzy_threshold >= 0:
            raise InputError(f"fuzzy threshold must be >= 0, got {self.fuzzy_threshold}")
        if self.reject_threshold is not None and not 0.0 <= self.reject_threshold <= 1.0:
            raise InputError(f"reject threshold must be in [0, 1], got {self.reject_threshold}")

    def first_k(self) -> int:
        return self.k_max if self.draft_mode == "confidence" else self.k


@dataclass
class SpecStats:
    rounds: int = 0
    drafted: int = 0                 # draft tokens proposed
    accepted: int = 0                # draft tokens accepted
    emitted: int = 0                 # tokens produced (prefill's first token included)
    draft_s: float = 0.0
    verify_s: float = 0.0
    prefill_s: float = 0.0
    other_s: float = 0.0             # acceptance maths, bookkeeping
    catch_up_s: float = 0.0          # part of draft_s: an idle drafter catching up (CATCH_UP), not drafting
    k_history: list[int] = field(default_factory=list)
    position_drafted: list[int] = field(default_factory=list)    # [i]: rounds that drafted an (i+1)-th token
    position_accepted: list[int] = field(default_factory=list)   # [i]: ... and had it accepted
    sources: dict = field(default_factory=dict)                  # draft source -> rounds it drafted

    def record(self, drafted: int, accepted: int, source: str | None) -> None:
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.k_history.append(drafted)
        for i in range(drafted):
            if i == len(self.position_drafted):
                self.position_drafted.append(0)
                self.position_accepted.append(0)
            self.position_drafted[i] += 1
            self.position_accepted[i] += i < accepted
        if drafted:
            self.sources[source] = self.sources.get(source, 0) + 1

    def add(self, other: "SpecStats") -> None:
        """Sum another generation's statistics into these (a benchmark over several prompts)."""
        for name in ("draft_s", "verify_s", "other_s", "prefill_s", "catch_up_s", "emitted", "rounds", "drafted",
                     "accepted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.k_history += other.k_history
        for i, (d, a) in enumerate(zip(other.position_drafted, other.position_accepted)):
            if i == len(self.position_drafted):
                self.position_drafted.append(0)
                self.position_accepted.append(0)
            self.position_drafted[i] += d
            self.position_accepted[i] += a
        for k, v in other.sources.items():
            self.sources[k] = self.sources.get(k, 0) + v

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Tokens emitted per target verification pass (accepted drafts + the target's own token)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0

    def to_json(self) -> dict:
        decode = self.draft_s + self.verify_s + self.other_s
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted, "emitted": self.emitted,
                "acceptance_rate": round(self.acceptance_rate, 4), "mean_accepted": round(self.mean_accepted, 3),
                "mean_k": round(float(np.mean(self.k_history)), 3) if self.k_history else 0.0,
                "draft_share": round(self.draft_s / decode, 4) if decode else 0.0,
                "catch_up_share": round(self.catch_up_s / decode, 4) if decode else 0.0,
                "verify_share": round(self.verify_s / decode, 4) if decode else 0.0,
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(decode, 4),
                "acceptance_by_position": [round(a / d, 4) for a, d in zip(self.position_accepted,
                                                                           self.position_drafted)],
                "drafted_by_position": list(self.position_drafted), "rounds_by_source": dict(self.sources)}


def divergence(p: np.ndarray, q: np.ndarray, kind: str) -> float:
    """Total variation or Jensen-Shannon divergence (natural log) between two distributions [V]."""
    if kind == "tv":
        return 0.5 * float(np.abs(p - q).sum())
    m = 0.5 * (p + q)
    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())
    return 0.5 * kl(p) + 0.5 * kl(q)


def _feed(model: StepModel, seq: list[int], extra: Sequence[int] = (), rows: int | None = None) -> np.ndarray:
    """Give the model every token of `seq` it has not cached yet (plus `extra`); -> their logits, or only the
    last `rows` of them (a model with `forward_last(tokens, n)` then computes no more than it must)."""
    pending = seq[model.length:] + list(extra)
    if not pending:
        raise ValueError("nothing to feed: the model already holds the whole sequence")
    if rows is not None and hasattr(model, "forward_last"):
        return model.forward_last(pending, rows)
    out = model.forward(pending)
    return out if rows is None else out[-rows:]


CATCH_UP = 16     # a drafter lagging by more positions than this was idle (k = 0 rounds): its catch-up is apart


def catch_up(model: StepModel, seq: list[int]) -> float:
    """Feed a lagging drafter every pending token of `seq` but the last, in one pass, when it lags by more than
    CATCH_UP positions; -> the seconds it took (0.0 otherwise). A drafter used every round lags by the last round's
    accepted tokens plus one and feeds them with its first draft pass: that is its steady cost per round. After
    idle rounds it must first catch up on every token since; the cost model (cost.py) keeps that time out of the
    draft cost per token, or one catch-up after idleness would price the drafter out for good."""
    pending = len(seq) - 1 - model.length
    if pending <= CATCH_UP:
        return 0.0
    t0 = time.perf_counter()
    model.forward(seq[model.length:len(seq) - 1])
    return time.perf_counter() - t0


def _done(tokens: list[int], n_new: int, max_new: int, eos: set[int]) -> bool:
    return n_new >= max_new or (bool(eos) and tokens[-1] in eos)


def autoregressive_generate(target: StepModel, prompt: Sequence[int], max_new_tokens: int,
                            sampling: SamplingConfig = SamplingConfig(), eos_ids: Sequence[int] = (),
                            sampler: Sampler | None = None) -> list[int]:
    """Plain decoding, one target pass per token: the reference speculative decoding must match."""
    sampler = sampler or Sampler(sampling)
    eos = set(eos_ids)
    seq = list(prompt)
    target.truncate(0)
    out: list[int] = []
    while True:
        logits = _feed(target, seq, rows=1)
        out.append(sampler(logits[-1]))
        seq.append(out[-1])
        if _done(out, len(out), max_new_tokens, eos):
            return out


def speculative_generate(target: StepModel, draft, prompt: Sequence[int], max_new_tokens: int,
                         config: SpecConfig = SpecConfig(), sampling: SamplingConfig = SamplingConfig(),
                         eos_ids: Sequence[int] = (), sampler: Sampler | None = None,
                         stats: SpecStats | None = None, cost=None) -> tuple[list[int], SpecStats]:
    """Generate up to `max_new_tokens` tokens after `prompt` with draft-then-verify rounds. `draft`: a proposer
    (proposers.py) or a drafter StepModel; `cost`: the CostModel of draft_mode "cost" (a fresh one if None).

    Invariant between rounds: `seq` = prompt + emitted tokens; the target has cached all of `seq`
    but its last token; a model drafter has cached a prefix of `seq` (it is fed what it lacks).
    """
    from .accept_head import FixedStop
    from .proposers import as_proposer
    if max_new_tokens < 1 or not prompt:
        raise InputError("need a non-empty prompt and max_new_tokens >= 1")
    sampler = sampler or Sampler(sampling)
    stats = stats or SpecStats()
    proposer = as_proposer(draft)
    if config.draft_mode == "specdec" and getattr(getattr(proposer, "model", proposer), "head", None) is None:
        raise InputError("draft mode specdec needs an EAGLE drafter with an acceptance head "
                         "(compile with --drafter eagle; the head is trained with it)")
    if config.draft_mode in ("cost", "specdec") and cost is None:
        from .cost import CostModel
        cost = CostModel(config.k_max)
    eos = set(eos_ids)
    seq = list(prompt)
    out: list[int] = []
    target.truncate(0)
    proposer.start()
    t0 = time.perf_counter()
    out.append(sampler(_feed(target, seq, rows=1)[-1]))      # prefill: the target's first token
    seq.append(out[-1])
    stats.prefill_s += time.perf_counter() - t0
    k = config.first_k()
    while not _done(out, len(out), max_new_tokens, eos):
        budget = max(0, max_new_tokens - len(out) - 1)            # never draft past the token budget
        room = target.room() if hasattr(target, "room") else None
        if room is not None:      # a fixed-size cache: the pass [last, drafts] must not run past its next cut
            budget = min(budget, max(room - 1, 0))
        # -- draft ----------------------------------------------------------------------------
        t0 = time.perf_counter()
        source = proposer.source(seq)                              # None: nothing to draft from this round
        if source is None:
            k_round = 0
        elif config.draft_mode in ("cost", "specdec"):
            k_round = min(cost.best_k(source, config.k_max), budget)
        else:
            k_round = min(k, budget)
        stop = None
        if config.draft_mode == "specdec" and k_round and getattr(proposer, "head", None) is not None:
            # the head decides the length, up to k_max (prompt lookup's rounds in a combined proposer: the cost model)
            k_round = min(config.k_max, budget)
            stop = (FixedStop(config.reject_threshold) if config.reject_threshold is not None
                    else cost.stopper(source, k_round))
        drafts, rows = proposer.propose(seq, k_round, config, sampling, sampler, stop=stop) if k_round else ([], [])
        t1 = time.perf_counter()
        caught = getattr(proposer, "catch_up_s", 0.0) if k_round else 0.0
        stats.draft_s += t1 - t0
        stats.catch_up_s += caught
        # -- verify: one target pass over [last, d1..dk] -> k+1 distributions ---------------------
        logits = _feed(target, seq, drafts, rows=len(drafts) + 1)
        t2 = time.perf_counter()
        stats.verify_s += t2 - t1
        accepted, nxt = _accept(drafts, rows, logits, config, sampling, sampler)
        new = drafts[:accepted] + [nxt]
        if eos:   # stop at the first end-of-sequence token
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            new = new[:cut]
        seq += new
        out += new
        # -- roll back: the target keeps everything but the new last token --------------------
        target.truncate(len(seq) - 1)
        proposer.rolled_back(len(seq) - 1)
        stats.record(len(drafts), accepted, source if drafts else None)
        if cost is not None:
            cost.observe(source, len(drafts), accepted, t1 - t0 - caught, t2 - t1,
                         round_s=time.perf_counter() - t0, emitted=len(new))
        if config.draft_mode == "heuristic" and drafts:
            k = min(config.k_max, k + 2) if accepted == len(drafts) else max(config.k_min, k - 1)
        stats.other_s += time.perf_counter() - t2
    out = out[:max_new_tokens]
    stats.emitted += len(out)
    return out, stats


def _draft(draft: StepModel, seq: list[int], k: int, config: SpecConfig, sampling: SamplingConfig,
           sampler: Sampler) -> tuple[list[int], list[np.ndarray]]:
    """Up to k draft tokens and the drafter's logits rows [V] they were drawn from."""
    drafts: list[int] = []
    rows: list[np.ndarray] = []
    confidence = 1.0
    while len(drafts) < k:
        logits = (draft.forward(drafts[-1:]) if drafts else _feed(draft, seq))[-1]
        tok = sampler(logits)
        drafts.append(tok)
        rows.append(logits)
        if config.draft_mode == "confidence" and len(drafts) >= config.k_min:
            confidence *= float(_soft(logits, sampling)[tok])
            if confidence < config.stop_threshold:
                break
    return drafts, rows


def _q(row, token: int, vocab: int, sampling: SamplingConfig) -> np.ndarray:
    """The drafter's distribution for one draft: its sampling distribution, or one-hot for a deterministic draft."""
    if row is not None:
        return _soft(row, sampling)
    q = np.zeros(vocab, dtype=np.float64)
    q[token] = 1.0
    return q


def _soft(logits: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """The sampling distribution, or the temperature-1 softmax when greedy (for confidences and divergences)."""
    return probabilities(logits, SamplingConfig(temperature=1.0) if sampling.greedy else sampling)


def _accept(drafts: list[int], rows: list, logits: np.ndarray, config: SpecConfig,
            sampling: SamplingConfig, sampler: Sampler) -> tuple[int, int]:
    """-> (number of accepted drafts, the token that follows them). logits: target rows [len(drafts)+1, V].
    rows[i]: the drafter's logits for draft i, or None for a deterministic draft (q one-hot on it)."""
    fuzzy = config.fuzzy is not None and config.fuzzy_threshold > 0
    for i, d in enumerate(drafts):
        if fuzzy and divergence(_soft(logits[i], sampling), _q(rows[i], d, logits.shape[1], sampling),
                                config.fuzzy) < config.fuzzy_threshold:
            continue
        if sampling.greedy:
            best = int(np.argmax(logits[i]))
            if best == d:
                continue
            return i, best
        p, q = probabilities(logits[i], sampling), _q(rows[i], d, logits.shape[1], sampling)
        if q[d] > 0 and sampler.rng.random() * q[d] < p[d]:     # u < p(d) / q(d)
            continue
        residual = np.maximum(p - q, 0.0)
        total = residual.sum()
        return i, sampler.draw(residual / total if total > 0 else p)
    return len(drafts), sampler(logits[len(drafts)])
