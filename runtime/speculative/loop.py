"""Speculative decoding over two "step models": a drafter proposes k tokens, the target verifies them
in one pass over k+1 positions, the longest agreeing prefix plus the target's own next token is kept,
and every KV cache is rolled back to the accepted length.

A step model (`StepModel`) is anything with
    length              tokens held in its KV cache
    forward(tokens)     append `tokens` (list of ints) after the cache; return their logits [T, V] (numpy)
    truncate(length)    forget everything after `length` cached tokens
so the algorithm runs the same on tiny torch models (tests), the artifact's graphs, or the fused
self-speculative drafter whose trunk KV cache is shared with the target (runtime/speculative/steps.py).

Acceptance (Leviathan et al. 2023; Chen et al. 2023):
- greedy: accept draft token d while d == argmax of the target; lossless (same tokens as greedy decoding).
- sampling: accept d with probability min(1, p(d)/q(d)); on rejection draw from norm(max(0, p - q));
  after k acceptances draw a bonus token from the target. Outputs follow the target's distribution
  exactly (p, q: the target's and drafter's distributions after temperature / top-k / top-p).
- fuzzy (Holsman et al. 2025, "Fuzzy Speculative Decoding"), off by default: also accept d when the
  divergence (JS or TV) between q and p at that position is below `fuzzy_threshold`; this trades exactness
  for speed. Here it is an extra acceptance path on top of the exact rule, so threshold 0 is exact SD.
Draft length:
- "fixed": k every round.
- "confidence" (SpecDec++ stopping rule, with the drafter's own probabilities as the acceptance estimate):
  stop drafting once the product of the drafter's probabilities of its drafted tokens < `stop_threshold`.
- "heuristic" (the grow/shrink baseline): k += 2 after a fully accepted round, k -= 1 otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ...compiler.errors import InputError
from ..sampling import Sampler, SamplingConfig, probabilities

DRAFT_MODES = ("fixed", "confidence", "heuristic")
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
    k_history: list[int] = field(default_factory=list)

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
                "verify_share": round(self.verify_s / decode, 4) if decode else 0.0,
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(decode, 4)}


def divergence(p: np.ndarray, q: np.ndarray, kind: str) -> float:
    """Total variation or Jensen-Shannon divergence (natural log) between two distributions [V]."""
    if kind == "tv":
        return 0.5 * float(np.abs(p - q).sum())
    m = 0.5 * (p + q)
    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())
    return 0.5 * kl(p) + 0.5 * kl(q)


def _feed(model: StepModel, seq: list[int], extra: Sequence[int] = ()) -> np.ndarray:
    """Give the model every token of `seq` it has not cached yet (plus `extra`); -> their logits."""
    pending = seq[model.length:] + list(extra)
    if not pending:
        raise ValueError("nothing to feed: the model already holds the whole sequence")
    return model.forward(pending)


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
        logits = _feed(target, seq)
        out.append(sampler(logits[-1]))
        seq.append(out[-1])
        if _done(out, len(out), max_new_tokens, eos):
            return out


def speculative_generate(target: StepModel, draft: StepModel, prompt: Sequence[int], max_new_tokens: int,
                         config: SpecConfig = SpecConfig(), sampling: SamplingConfig = SamplingConfig(),
                         eos_ids: Sequence[int] = (), sampler: Sampler | None = None,
                         stats: SpecStats | None = None) -> tuple[list[int], SpecStats]:
    """Generate up to `max_new_tokens` tokens after `prompt` with draft-then-verify rounds.

    Invariant between rounds: `seq` = prompt + emitted tokens; the target has cached all of `seq`
    but its last token; the drafter has cached a prefix of `seq` (it is fed what it lacks).
    """
    if max_new_tokens < 1 or not prompt:
        raise InputError("need a non-empty prompt and max_new_tokens >= 1")
    sampler = sampler or Sampler(sampling)
    stats = stats or SpecStats()
    eos = set(eos_ids)
    seq = list(prompt)
    out: list[int] = []
    target.truncate(0)
    draft.truncate(0)
    t0 = time.perf_counter()
    out.append(sampler(_feed(target, seq)[-1]))      # prefill: the target's first token
    seq.append(out[-1])
    stats.prefill_s += time.perf_counter() - t0
    k = config.first_k()
    while not _done(out, len(out), max_new_tokens, eos):
        k_round = max(0, min(k, max_new_tokens - len(out) - 1))   # never draft past the token budget
        # -- draft ----------------------------------------------------------------------------
        t0 = time.perf_counter()
        drafts, rows = _draft(draft, seq, k_round, config, sampling, sampler)
        t1 = time.perf_counter()
        stats.draft_s += t1 - t0
        # -- verify: one target pass over [last, d1..dk] -> k+1 distributions ---------------------
        logits = _feed(target, seq, drafts)[-(len(drafts) + 1):]
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
        draft.truncate(min(draft.length, len(seq) - 1))
        stats.rounds += 1
        stats.drafted += len(drafts)
        stats.accepted += accepted
        stats.k_history.append(len(drafts))
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


def _soft(logits: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """The sampling distribution, or the temperature-1 softmax when greedy (for confidences and divergences)."""
    return probabilities(logits, SamplingConfig(temperature=1.0) if sampling.greedy else sampling)


def _accept(drafts: list[int], rows: list[np.ndarray], logits: np.ndarray, config: SpecConfig,
            sampling: SamplingConfig, sampler: Sampler) -> tuple[int, int]:
    """-> (number of accepted drafts, the token that follows them). logits: target rows [len(drafts)+1, V]."""
    fuzzy = config.fuzzy is not None and config.fuzzy_threshold > 0
    for i, d in enumerate(drafts):
        if fuzzy and divergence(_soft(logits[i], sampling), _soft(rows[i], sampling), config.fuzzy) \
                < config.fuzzy_threshold:
            continue
        if sampling.greedy:
            best = int(np.argmax(logits[i]))
            if best == d:
                continue
            return i, best
        p, q = probabilities(logits[i], sampling), probabilities(rows[i], sampling)
        if q[d] > 0 and sampler.rng.random() * q[d] < p[d]:     # u < p(d) / q(d)
            continue
        residual = np.maximum(p - q, 0.0)
        total = residual.sum()
        return i, sampler.draw(residual / total if total > 0 else p)
    return len(drafts), sampler(logits[len(drafts)])
