"""The evaluation protocol's parameters (torch-free, so the CLI can show its defaults without importing torch).
compiler/evaluate.py runs it."""
from __future__ import annotations

from dataclasses import dataclass


# the named evaluation texts: Brown's evaluation split, and the second text off the calibration domain
# (State of the Union addresses 1990-2021, models/corpus.py)
TEXTS = ("brown-eval", "sotu")


@dataclass(frozen=True)
class Protocol:
    text: str = "brown-eval"       # one of TEXTS; a user's --eval-text file replaces it
    window: int = 512
    max_tokens: int = 32768
    bos: bool = False

    def __post_init__(self):
        if self.window < 2:
            raise ValueError("window must be >= 2")
        if self.max_tokens < self.window:
            raise ValueError("max_tokens must be >= window")
        if self.text not in TEXTS:
            raise ValueError(f"unknown evaluation text {self.text!r}; choose one of {', '.join(TEXTS)}")


SAMPLE_PROMPT = "The history of the printing press"
