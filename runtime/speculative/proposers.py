"""Where draft tokens come from (runtime/speculative/loop.py asks a proposer each round).

- ModelProposer: a drafter step model samples k tokens one by one (its logits rows are the drafter's q).
- LookupProposer: prompt lookup decoding (Saxena 2023, "Prompt Lookup Decoding"; openvino-genai's
  prompt_lookup): the longest of the text's last n-grams (n = max_ngram .. min_ngram) that occurred
  earlier in the prompt or the generated text proposes what followed its latest earlier occurrence.
  Training free, no model call: drafts are deterministic (q one-hot), so every acceptance rule stays exact.
  The match length is the draft's best predictor of acceptance, so matches are sought up to MAX_NGRAM = 8
  tokens (the paper and openvino-genai stop at 3) and the source names its length bucket (BUCKETS: 1, 2, 3,
  4-5, 6-7, 8): on SmolLM2-135M's greedy int8 outputs for the benchmark's grounded prompts, a draft after an
  8-token match equalled the output at its first position 96% of the time and for 8 or more tokens 68% of the
  time, after a 3-token match 76% and 39% (scripts/lookup_match_stats.py,
  docs/passes/results/lookup_match_stats_2026-12-04.json).
- CombinedProposer: lookup when the text has a match, the model drafter otherwise.

A proposer has
    start()                       a new generation begins
    source(seq) -> str | None     the draft source this round would use ("model", "lookup:3", ...) or None
                                  when it has nothing to propose (the round then verifies one token)
    propose(seq, k, config, sampling, sampler) -> (drafts, rows)    up to k drafts; rows[i]: logits or None
    catch_up_s                    (optional) seconds of this round's propose spent catching up after idle rounds
    rolled_back(length)           the target kept `length` tokens of the sequence
The source names key the cost model's acceptance statistics (cost.py): matches of different n-gram
lengths are accepted at different rates.
"""
from __future__ import annotations

from typing import Sequence

from ...compiler.errors import InputError


MAX_NGRAM = 8                    # the longest match sought
BUCKETS = (1, 2, 3, 4, 6, 8)     # match lengths that name a lookup source (a length counts as the bucket below)


def bucket(n: int) -> int:
    """The lookup source bucket of an n-token match: the largest of BUCKETS not above n."""
    return max(b for b in BUCKETS if b <= n)


class ModelProposer:
    def __init__(self, step):
        self.step = step
        self.catch_up_s = 0.0          # this round's catch-up after idle rounds (loop.catch_up)

    def start(self) -> None:
        self.step.truncate(0)

    def source(self, seq) -> str:
        return "model"

    def propose(self, seq, k, config, sampling, sampler, stop=None):     # stop: no acceptance head here
        from .loop import _draft, catch_up
        self.catch_up_s = catch_up(self.step, seq)
        return _draft(self.step, seq, k, config, sampling, sampler)

    def rolled_back(self, length: int) -> None:
        self.step.truncate(min(self.step.length, length))


class LookupProposer:
    """Prompt lookup over an index of every n-gram (min_ngram..max_ngram) of the sequence -> the position
    just after its latest occurrence that has a continuation. The loop's sequence only grows within one
    generation, so the index is extended, never rebuilt."""

    def __init__(self, max_ngram: int = MAX_NGRAM, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise InputError(f"need 1 <= min n-gram <= max n-gram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = int(max_ngram), int(min_ngram)
        self.start()

    def start(self) -> None:
        self.index: dict[tuple[int, ...], int] = {}
        self.indexed = 0            # positions p < indexed were recorded as continuations
        self._match: tuple[int, int] | None = None    # (n, position of the continuation) for len(seq)

    def _extend(self, seq: Sequence[int]) -> None:
        for p in range(max(self.indexed, 1), len(seq)):          # seq[p] continues the n-grams ending at p-1
            for n in range(self.min_ngram, min(self.max_ngram, p) + 1):
                self.index[tuple(seq[p - n:p])] = p
        self.indexed = max(self.indexed, len(seq))

    def match(self, seq: Sequence[int]) -> tuple[int, int] | None:
        """(n, p): the longest suffix n-gram of seq seen before, and where its latest continuation starts."""
        if len(seq) < self.indexed:
            raise ValueError("the sequence shrank: call start() for a new generation")
        self._extend(seq)
        for n in range(min(self.max_ngram, len(seq)), self.min_ngram - 1, -1):
            p = self.index.get(tuple(seq[-n:]))
            if p is not None:
                return n, p
        return None

    def source(self, seq) -> str | None:
        self._match = self.match(seq)
        return None if self._match is None else f"lookup:{bucket(self._match[0])}"

    def propose(self, seq, k, config, sampling, sampler, stop=None):     # stop: no acceptance head here
        m = self._match if self._match is not None else self.match(seq)
        if m is None:
            return [], []
        drafts = list(seq[m[1]:m[1] + k])
        return drafts, [None] * len(drafts)

    def rolled_back(self, length: int) -> None:
        pass


class CombinedProposer:
    """Lookup when it finds a match, else the model drafter (which is kept fed either way by the loop's
    invariant: it is given what it lacks when it next drafts)."""

    def __init__(self, lookup: LookupProposer, model: ModelProposer):
        self.lookup, self.model = lookup, model
        self._use = None

    def start(self) -> None:
        self.lookup.start()
        self.model.start()

    def source(self, seq) -> str:
        s = self.lookup.source(seq)
        self._use = self.lookup if s is not None else self.model
        return s if s is not None else self.model.source(seq)

    @property
    def head(self):
        """The model drafter's acceptance head in a round it drafts (draft mode specdec), else None."""
        return getattr(self.model, "head", None) if self._use is self.model else None

    def propose(self, seq, k, config, sampling, sampler, stop=None):
        if self._use is None:
            self.source(seq)
        return self._use.propose(seq, k, config, sampling, sampler, stop=stop)

    def rolled_back(self, length: int) -> None:
        self.model.rolled_back(length)

    @property
    def catch_up_s(self) -> float:
        return getattr(self._use, "catch_up_s", 0.0) if self._use is self.model else 0.0


def as_proposer(draft):
    """A proposer as is; a step model (forward/truncate/length) as a ModelProposer."""
    return draft if hasattr(draft, "propose") else ModelProposer(draft)
