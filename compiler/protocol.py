"""The evaluation protocol's parameters (torch-free, so the CLI can show its defaults without importing torch).
compiler/evaluate.py runs it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    text: str = "brown-eval"       # or the path of the user's --eval-text file
    window: int = 512
    max_tokens: int = 32768
    bos: bool = False

    def __post_init__(self):
        if self.window < 2:
            raise ValueError("window must be >= 2")
        if self.max_tokens < self.window:
            raise ValueError("max_tokens must be >= window")


SAMPLE_PROMPT = "The history of the printing press"
