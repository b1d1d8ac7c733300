"""Token selection from logits: greedy, or sampling with temperature, top-k and top-p (numpy).

Kept small and free of generation state so that speculative decoding can reuse `probabilities`
(the distribution a token is drawn from) and `Sampler`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiler.errors import InputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise InputError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits with everything below the k-th largest set to -inf (ties with it are kept). logits: [V]."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def top_p_mask(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability sums to >= p (nucleus). logits: [V]."""
    if p >= 1:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = _softmax(logits[order])
    before = np.cumsum(probs) - probs          # mass of the tokens ranked above each one
    drop = order[before >= p]                  # the top token always has before == 0 and is kept
    out = logits.copy()
    out[drop] = -np.inf
    return out


def probabilities(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The distribution a token is sampled from (float64 [V]); one-hot of the argmax when greedy."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if cfg.greedy:
        out = np.zeros_like(logits)
        out[int(np.argmax(logits))] = 1.0
        return out
    scaled = logits / cfg.temperature
    scaled = top_p_mask(top_k_mask(scaled, cfg.top_k), cfg.top_p)
    return _softmax(scaled)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


class Sampler:
    """Picks the next token from a logits row [V]; holds the random generator (seeded)."""

    def __init__(self, cfg: SamplingConfig = SamplingConfig()):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.cfg.greedy:
            return int(np.argmax(logits))
        return self.draw(probabilities(logits, self.cfg))

    def draw(self, probs: np.ndarray) -> int:
        """One index drawn from a probability vector (inverse CDF on one uniform number)."""
        c = np.cumsum(probs)
        return int(min(np.searchsorted(c, self.rng.random() * c[-1], side="right"), len(probs) - 1))
