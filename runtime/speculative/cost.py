"""The cost model of draft_mode "cost": how many tokens to draft this round, 0 meaning no speculation.

A round with k drafts costs   verify(k + 1) + k * draft_per_token(source)
and emits on average          1 + sum_{j=1..k} prod_{i<=j} a_i(source)
where a_i is the running rate at which the i-th draft of that source was accepted given the (i-1)-th was
(a Beta(1, 1) prior, so an untried position counts 0.5; counts decay by DECAY per round of the source, so the
rate follows the prompt at hand rather than every prompt seen since the artifact was opened). The model picks the k in [0, k_max] with the most
tokens per second. Everything is measured in the running generation on the backend in use:
- verify(n): the time of the target's passes over n positions per width: the plain mean of its first 1 / EMA
  passes, then an exponential moving average that follows a faster pass with weight EMA_DOWN (timing noise on a
  shared CPU only ever adds time, so a slow pass is the likelier outlier).
  Widths not seen yet come from a least-squares line through the seen widths' means (with one width seen, a
  slope of SLOPE_PRIOR of its time per extra position, optimistic so that longer drafts get tried) and are
  never below a narrower width's cost.
- A plain step's cost is only measured when k = 0 is chosen, so a stale figure could keep k = 0 from ever being
  chosen again: when it is more than REFRESH rounds old, the round is a plain step (never slower than plain
  decoding) and refreshes it.
- Likewise a longer draft's figures (its verify width's cost, its last position's acceptance) are only updated when
  that length is drafted, so one slow pass or an untried position could keep it away for good: when the width one
  past the best draft is more than EXPLORE rounds old, the round drafts one more token than the best (at most one
  round in EXPLORE + 1 costs that extra position). From k = 0 only while a draft costs under EXPLORE_FROM_PLAIN of
  a plain step (prompt lookup): a model drafter idle since its last draft must first catch up on every token since,
  and exploring it every EXPLORE rounds made an EAGLE drafter's decoding 9-16% slower than plain (2026-12-04).
- draft_per_token: the draft time per drafted token of that source (about 0 for prompt lookup), averaged like
  verify(n). A source's first drafting round is not timed: it pays one-time costs (a drafter's first pass, and its
  catch-up on the whole prompt), and taken as the cost of every draft it kept an EAGLE drafter from ever drafting
  again (2026-12-04). Later rounds are timed without a catch-up after idle rounds (loop.catch_up: a drafter lagging
  by more than CATCH_UP positions feeds them in a pass of its own, reported as the loop's catch_up_s): a drafter
  used every round pays only its steady cost, which is what a choice of k commits to.
k = 0 is a plain decoding step, so speculation happens only when the measurements say it pays.

The estimates above leave out what a round costs beyond its draft and verify passes (a model drafter's catch-up
after idle rounds, the acceptance bookkeeping), and a drafter whose first draft is accepted a quarter of the time
sits near break-even, where a small bias decides: an EAGLE drafter on the native backend, estimated to pay on the
benchmark's grounded prompts, decoded them about a tenth slower than plain (docs/passes/drafter.md). So each source's realized rate is also kept: the tokens
its drafting rounds emitted over their whole wall time, against the plain rounds' (decayed sums, REALIZED_DECAY
per round of that kind; before GUARD_ROUNDS plain rounds, plain's rate is one over a one-position pass's cost).
After GUARD_ROUNDS of its rounds, a source whose realized rate is below plain's drafts nothing (k = 0) except one
round after RETRY rounds, which keeps its figure current; each such round that leaves it still below doubles the
wait, up to RETRY_MAX (a drafter that does not pay on the prompts at hand then costs a restart every thousand
rounds, not every 64).

`measure_verify` times the target's passes over 1..k_max+1 positions once, before the first generation, so the
first rounds do not guess; the artifact runtime keeps one model per loaded artifact and drafter
(runtime/speculative/artifact.py), so acceptance learned on one prompt carries to the next.
"""
from __future__ import annotations

import time

import numpy as np

EMA = 0.2
EMA_DOWN = 0.5
SLOPE_PRIOR = 0.05
DECAY = 0.97          # per round of a source: its acceptance counts cover about the last 30 rounds
REFRESH = 32          # rounds after which the one-position (plain step) cost is measured again
EXPLORE = 16          # rounds after which a draft one longer than the best is tried again
EXPLORE_FROM_PLAIN = 0.05   # ... from k = 0 only for sources whose draft costs less than this share of a plain step
EXPLORE_OVERHEAD = 0.02     # ... and less often when a two-position pass costs EXPLORE_PADDED or more plain steps
EXPLORE_PADDED = 2.0        # (a padded static pass; a small model's timings below that are mostly noise): at most
                            # this share of the time then
REALIZED_DECAY = 0.97 # per round of a kind: the realized rates follow about the last 30 rounds of each
GUARD_ROUNDS = 8      # rounds of a source and of plain steps before their realized rates are compared
RETRY = 64            # rounds between the drafting rounds of a source whose realized rate is below plain's ...
RETRY_MAX = 1024      # ... doubling after each such round that leaves it still below, up to this
PLAIN = "plain"


class CostModel:
    def __init__(self, k_max: int = 8):
        self.k_max = int(k_max)
        self.verify: dict[int, tuple[float, int]] = {}       # width -> (ema seconds, passes)
        self.draft: dict[str, tuple[float, int]] = {}        # source -> (seconds per drafted token, rounds timed)
        self.drafted_once: set[str] = set()                  # sources whose first (untimed) round is past
        self.tried: dict[str, np.ndarray] = {}               # source -> [k_max] drafts at position i
        self.accepted: dict[str, np.ndarray] = {}            # source -> [k_max] accepted at position i
        self.rounds = 0                                      # rounds observed
        self.seen: dict[int, int] = {}                       # width -> the round it was last observed
        self.realized: dict[str, list[float]] = {}           # source or PLAIN -> [tokens, seconds, rounds] (decayed)
        self.last_draft: dict[str, int] = {}                 # source -> the round it last drafted
        self.retry: dict[str, int] = {}                      # source -> its current RETRY interval

    # -- measurements -------------------------------------------------------------------------------
    def observe(self, source: str | None, drafted: int, accepted: int, draft_s: float, verify_s: float,
                round_s: float | None = None, emitted: int | None = None) -> None:
        """One round: its draft source and lengths, the draft and verify passes' seconds, and (round_s, emitted)
        the whole round's wall time and the tokens it emitted (the realized rates)."""
        w = drafted + 1
        self.rounds += 1
        self.seen[w] = self.rounds
        self.verify[w] = _average(self.verify.get(w), verify_s)
        if round_s is not None and emitted is not None:
            kind = source if (source is not None and drafted) else PLAIN
            r = self.realized.setdefault(kind, [0.0, 0.0, 0.0])
            r[0] = r[0] * REALIZED_DECAY + emitted
            r[1] = r[1] * REALIZED_DECAY + round_s
            r[2] += 1
        if source is not None and drafted:
            self.last_draft[source] = self.rounds
            # a source still below plain after this round waits twice as long for its next try
            self.retry[source] = min(2 * self.retry.get(source, RETRY // 2), RETRY_MAX) if self.losing(source) \
                else RETRY // 2
        if source is None or drafted == 0:
            return
        if source in self.drafted_once:
            self.draft[source] = _average(self.draft.get(source), draft_s / drafted)
        self.drafted_once.add(source)
        tried, acc = self._counts(source)
        tried *= DECAY                    # recent rounds weigh more: acceptance changes with the prompt
        acc *= DECAY
        tried[:min(drafted, self.k_max)] += 1
        acc[:min(accepted, self.k_max)] += 1

    def _counts(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        if source not in self.tried:
            self.tried[source] = np.zeros(self.k_max, dtype=np.float64)
            self.accepted[source] = np.zeros(self.k_max, dtype=np.float64)
        return self.tried[source], self.accepted[source]

    # -- estimates -------------------------------------------------------------------------------
    def verify_cost(self, width: int) -> float | None:
        """Estimated seconds of one target pass over `width` positions (None before any measurement)."""
        if not self.verify:
            return None
        if width in self.verify:
            return self.verify[width][0]
        ws = np.array(sorted(self.verify), dtype=np.float64)
        ts = np.array([self.verify[int(w)][0] for w in ws])
        if len(ws) >= 2:
            slope, icept = np.polyfit(ws, ts, 1)
            slope = max(float(slope), 0.0)
            est = icept + slope * width if slope > 0 else float(ts.mean())
        else:
            est = ts[0] * (1 + SLOPE_PRIOR * (width - ws[0]))
        below = [self.verify[int(w)][0] for w in ws if w < width]
        return max(float(est), max(below) if below else 0.0, 1e-9)

    def acceptance(self, source: str) -> np.ndarray:
        """a_i for i = 1..k_max: P(draft i accepted | draft i-1 accepted), Beta(1, 1) prior."""
        tried, acc = self._counts(source)
        return (acc + 1.0) / (tried + 2.0)

    def draft_cost(self, source: str) -> float:
        return self.draft[source][0] if source in self.draft else 0.0

    def realized_rate(self, kind: str) -> float | None:
        """Tokens per second of the rounds of `kind` (a source, or PLAIN), None before GUARD_ROUNDS of them."""
        r = self.realized.get(kind)
        return r[0] / r[1] if r is not None and r[2] >= GUARD_ROUNDS and r[1] > 0 else None

    def losing(self, source: str) -> bool:
        """Whether the source's drafting rounds have emitted tokens more slowly than plain steps."""
        mine, plain = self.realized_rate(source), self.realized_rate(PLAIN)
        if plain is None and self.verify_cost(1):      # few plain rounds yet: a one-position pass's rate
            plain = 1.0 / self.verify_cost(1)
        return mine is not None and plain is not None and mine < plain

    def rate_best_k(self, source: str, cap: int) -> int:
        """The draft length in [0, cap] with the most expected tokens per second, (1 + sum_{j<=k} prod_{i<=j} a_i) /
        (verify(k + 1) + k * draft cost), every k in one Python pass (this runs every round; per-k numpy calls
        cost a quarter of a millisecond a round)."""
        if not self.verify:
            return 0
        acc = self.acceptance(source).tolist()
        d = self.draft_cost(source)
        best, best_rate, emitted, chain = 0, -1.0, 1.0, 1.0
        for k in range(cap + 1):
            if k:
                chain *= acc[k - 1]
                emitted += chain
            rate = emitted / (self.verify_cost(k + 1) + k * d)
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def stopper(self, source: str, cap: int):
        """Draft mode "specdec": this round's stop rule from the measured costs (accept_head.CostStop)."""
        from .accept_head import CostStop
        return CostStop([0.0] + [self.verify_cost(w) or 0.0 for w in range(1, cap + 2)], self.draft_cost(source))

    def best_k(self, source: str, cap: int | None = None) -> int:
        """This round's draft length: the cap's before any measurement, a plain step when its cost is stale
        (REFRESH), one past the best when that width is stale or never measured (EXPLORE), else the best."""
        cap = self.k_max if cap is None else min(int(cap), self.k_max)
        if not self.verify:
            return cap
        if self.rounds - self.seen.get(1, 0) > REFRESH:
            return 0
        if self.losing(source) and self.rounds - self.last_draft.get(source, 0) <= self.retry.get(source, RETRY):
            return 0
        k = self.rate_best_k(source, cap)
        cheap = self.draft_cost(source) < EXPLORE_FROM_PLAIN * (self.verify_cost(1) or 0.0)
        if k < cap and (k > 0 or cheap) and self.rounds - self.seen.get(k + 2, 0) > self.explore_every(k):
            return k + 1
        return k

    def explore_every(self, k: int) -> float:
        """Rounds between tries of one draft longer than the best (k): EXPLORE; from plain steps (k = 0) more when
        a two-position pass costs EXPLORE_PADDED plain steps or more, so that trying stays within EXPLORE_OVERHEAD of
        the time (a static graph's padded pass at 7x a one-token step on a CPU, explored every 16 rounds, cost a fifth
        of the time). Past k = 0 the widths differ less, and a slow figure for one of them is more likely noise
        that exploring must be able to correct (test_cost_model_tries_a_longer_draft_again)."""
        now, longer = self.verify_cost(k + 1), self.verify_cost(k + 2)
        if k > 0 or not now or not longer or longer < EXPLORE_PADDED * now:
            return EXPLORE
        return max(EXPLORE, (longer / now - 1.0) / EXPLORE_OVERHEAD)


def _average(old: tuple[float, int] | None, x: float) -> tuple[float, int]:
    """(mean, samples) updated with x: the plain mean of the first 1 / EMA samples, then a moving average that
    follows a smaller sample with weight EMA_DOWN and a larger one with EMA."""
    if old is None or old[1] == 0:
        return (x, 1)
    t, n = old
    a = max(EMA_DOWN if x < t else EMA, 1.0 / (n + 1))
    return ((1 - a) * t + a * x, n + 1)


def measure_verify(cost: CostModel, target, context: int = 32, reps: int = 3) -> float:
    """Time the target's passes over 1..k_max+1 new positions after `context` cached ones (token id 0 throughout;
    the target is truncated to 0 afterwards) into `cost`: the median of `reps` passes per width, after one untimed
    pass per width (a backend's first pass at a new shape pays one-time costs: 3x a normal step seen on OpenVINO,
    which kept k = 0 from ever being chosen). -> seconds spent."""
    t0 = time.perf_counter()
    target.truncate(0)
    target.forward([0] * context)
    times: dict[int, list[float]] = {w: [] for w in range(1, cost.k_max + 2)}
    for rep in range(reps + 1):
        for w in times:
            t = time.perf_counter()
            target.forward([0] * w)
            if rep:
                times[w].append(time.perf_counter() - t)
            target.truncate(context)
    target.truncate(0)
    for w, ts in times.items():
        cost.verify[w] = (float(np.median(ts)), len(ts))
        cost.seen[w] = cost.rounds
    return time.perf_counter() - t0
