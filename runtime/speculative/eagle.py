"""EAGLE drafting (passes/drafting/eagle_model.py): a one-layer drafter that reads the target's last hidden state.

- FeatureTarget: the target graph (role "eagle_target": ids -> logits and hidden) as the loop's target step
  model; it keeps the hidden state f_p of every position p it has processed (rows past a rollback go stale and
  are overwritten when the position is processed again).
- FixedFeatureTarget (runtime/speculative/artifact.py): the same over the artifact's fixed-size cache (--kv-cache
  window/sink/h2o/lococo): the target graph then also outputs attn_scores and runs through
  runtime/fixed_cache.FixedState; only the newest hidden states are kept (RingRows), and the proposer's own cache
  restarts once it holds `window` pairs (the cache's M), so memory stays flat.
- EagleProposer: the loop's proposer. Its graph's cache holds pairs (f_t, token t+1) at position t. Each round it
  first feeds, in one pass, the pairs whose f_t the target computed since the last round (all true states: the
  target holds every token of the sequence but the last), which yields the first draft; further drafts feed back
  the drafter's own estimate of the next state. Drafted pairs are dropped from its cache at the next round.
  After idle rounds (more than CATCH_UP pairs behind, and at a prompt's first draft) it restarts its cache from
  the last CATCH_UP pairs instead of feeding every pair since (a departure from EAGLE, whose drafter attends to
  all earlier pairs): rotary attention depends only on relative positions, so the window sits at cache positions
  0.. and is exact for the pairs it holds; what is lost is context older than the window, which the target's
  states carry anyway. Catching up on a whole prompt before a first draft had cost a tenth of a short answer's
  decode time on native.
Greedy drafts are the argmax of the drafter's logits (rows expanded to the full vocabulary, -inf outside its
reduced head), so the loop's acceptance rules apply unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..kv_cache import KVCache
from .loop import CATCH_UP
from .steps import GraphFn, _run


class FeatureTarget:
    """The target step model that also records its hidden states (features[p] for position p)."""

    def __init__(self, fn: GraphFn, cache: KVCache, hidden_size: int):
        self.fn, self.cache = fn, cache
        self.features = np.zeros((cache.capacity, hidden_size), dtype=np.float32)

    @property
    def length(self) -> int:
        return self.cache.length

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        start = self.cache.length
        logits, hidden = _run(self.fn, self.cache, np.asarray([list(tokens)], dtype=np.int64))
        self.features[start:start + len(hidden)] = hidden
        return logits

    def truncate(self, length: int) -> None:
        self.cache.rollback(min(length, self.length))


class BackendFeatureTarget:
    """FeatureTarget over a decoder backend that keeps its own KV cache and reports the last layer's residual
    stream itself (the native backend: forward_stateful(..., hidden=, all_logits=True)). The EAGLE target graph is
    then not needed: the artifact's own decoder verifies, and only the draft graph runs elsewhere."""

    def __init__(self, backend, capacity: int, hidden_size: int):
        self.backend, self.capacity = backend, int(capacity)
        self.features = np.zeros((self.capacity, hidden_size), dtype=np.float32)
        self.held = 0

    @property
    def length(self) -> int:
        return self.held

    def _pass(self, tokens: Sequence[int], every: bool = True) -> np.ndarray:
        ids = np.asarray([list(tokens)], dtype=np.int64)
        start, n = self.held, ids.shape[1]
        if start + n > self.capacity:
            raise ValueError(f"the target's capacity is {self.capacity} positions; {start + n} needed")
        pos = np.arange(start, start + n, dtype=np.int64)[None]
        logits = self.backend.forward_stateful(ids, pos, None, start, hidden=self.features[start:start + n],
                                               all_logits=every)
        self.held = start + n
        return logits[0]

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        return np.array(self._pass(tokens))     # a copy: the backend reuses its output buffer

    def forward_last(self, tokens: Sequence[int], n: int) -> np.ndarray:
        """The last n rows of forward(tokens) as a view of the backend's buffer, valid until the next call (the
        loop reads them at once: a k = 0 round then copies no 196 KB row). For n = 1 a backend opened for
        generation computes only the last row's logits (a prompt's prefill skips the head on the others)."""
        return self._pass(tokens, every=n > 1)[-n:]

    def truncate(self, length: int) -> None:
        self.held = min(int(length), self.held)


class RingRows:
    """Rows [size, C] indexed by sequence position modulo size: a fixed-cache target keeps the hidden states of its
    last `size` positions only (the drafter reads at most CATCH_UP + 1 of the newest), so memory stays flat however
    long the text. Slices read and write as on a plain array while they lie inside the newest `size` rows."""

    def __init__(self, size: int, width: int):
        self.size = int(size)
        self.rows = np.zeros((self.size, width), dtype=np.float32)
        self.end = 0                 # one past the newest position written

    def __setitem__(self, key: slice, value) -> None:
        value = np.asarray(value)
        start = key.start or 0
        if len(value) > self.size:                     # a long prompt chunk: only its newest rows can be read
            start, value = start + len(value) - self.size, value[-self.size:]
        self.rows[np.arange(start, start + len(value)) % self.size] = value
        self.end = start + len(value)

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop = key.start or 0, key.stop
        if stop - start > self.size or start < self.end - self.size:
            raise ValueError(f"positions {start}..{stop} are no longer kept (the newest {self.size} are)")
        return self.rows[np.arange(start, stop) % self.size]


class EagleProposer:
    def __init__(self, target: FeatureTarget, fn: GraphFn, cache: KVCache, vocab_size: int,
                 vocab_ids: np.ndarray | None = None):
        self.target, self.fn, self.cache = target, fn, cache
        self.vocab_size = vocab_size
        self.vocab_ids = None if vocab_ids is None else np.asarray(vocab_ids, dtype=np.int64)
        self.true = 0           # the pairs (f_t, token t+1) for t < true are the target's own (true) states
        self.offset = 0         # the sequence position of the pair in cache slot 0 (a restart's window start)
        self.head = None        # SpecDec++'s acceptance head (accept_head.AcceptHead), read when propose gets `stop`
        self.collect = False    # keep each round's head features in `features` (the head's training rollouts)
        self.features: list[np.ndarray] = []
        self._col = None        # token id -> its column in the drafter's head
        self.window = None      # a fixed-cache target: the drafter's own cache restarts past this many pairs

    def start(self) -> None:
        self.cache.rollback(0)
        self.true = self.offset = 0

    def source(self, seq) -> str:
        return "eagle"

    def _full(self, row: np.ndarray) -> np.ndarray:
        if self.vocab_ids is None:
            return row
        full = np.full(self.vocab_size, -np.inf, dtype=np.float32)
        full[self.vocab_ids] = row
        return full

    def _step(self, ids: Sequence[int], feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, hidden = _run(self.fn, self.cache, (np.asarray([list(ids)], dtype=np.int64), feats[None]))
        return self._full(logits[-1]), hidden[-1], logits[-1]

    def _head_input(self, h: np.ndarray, own: np.ndarray, tok: int, position: int) -> np.ndarray:
        from .accept_head import features
        if self.vocab_ids is None:
            return features(h, own, tok, position)
        if self._col is None:
            self._col = np.full(self.vocab_size, -1, dtype=np.int64)
            self._col[self.vocab_ids] = np.arange(len(self.vocab_ids))
        return features(h, own, int(self._col[tok]), position)

    def propose(self, seq, k, config, sampling, sampler, stop=None):
        """Up to k drafts. stop(p) (draft mode "specdec", accept_head.py): called with the head's acceptance
        probability after each draft, True ends the round's drafting."""
        from .loop import _soft
        n = len(seq) - 1                      # the target holds seq[:n]: f_0 .. f_{n-1} are known
        if self.target.length < n:
            raise ValueError(f"the target holds {self.target.length} tokens, the drafter needs {n}")
        if n - self.true > CATCH_UP or (self.window is not None and n - self.offset > self.window):
            # idle since its last draft, or (fixed-size target) its window is full: restart from the last pairs
            keep = CATCH_UP if self.window is None else max(1, min(CATCH_UP, self.window // 2))
            self.offset = self.true = n - keep
            self.cache.rollback(0)
        else:
            self.cache.rollback(min(self.true - self.offset, self.cache.length))
        row, h, own = self._step(seq[self.true + 1:n + 1], self.target.features[self.true:n])
        self.true = n
        drafts, rows, confidence = [], [], 1.0
        stop = stop if self.head is not None else None
        if self.collect:
            self.features = []
        while True:
            tok = sampler(row)
            drafts.append(tok)
            rows.append(row)
            if stop is not None or self.collect:
                x = self._head_input(h, own, tok, len(drafts) - 1)
                if self.collect:
                    self.features.append(x)
                if stop is not None and len(drafts) < k and stop(self.head.prob(x)):
                    break
            if len(drafts) >= k:
                break
            if config.draft_mode == "confidence" and len(drafts) >= config.k_min:
                confidence *= float(_soft(row, sampling)[tok])
                if confidence < config.stop_threshold:
                    break
            row, h, own = self._step([tok], h[None])
        return drafts, rows

    def rolled_back(self, length: int) -> None:
        self.true = max(min(self.true, length), self.offset)


def eagle_steps(target, draft: tuple[GraphFn, KVCache], hidden_size: int,
                vocab_size: int, vocab_ids=None) -> tuple[FeatureTarget, EagleProposer]:
    """(target step, proposer) of an EAGLE drafter: draft is (graph function, its cache); target is (graph
    function, its cache) or an already built feature target (BackendFeatureTarget, artifact.FixedFeatureTarget). The
    one place they are wired (the artifact runtime, the drafter's torch evaluation and the tests call it)."""
    t = FeatureTarget(target[0], target[1], hidden_size) if isinstance(target, tuple) else target
    return t, EagleProposer(t, draft[0], draft[1], vocab_size, vocab_ids)
