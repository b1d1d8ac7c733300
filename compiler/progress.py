"""Progress display for the CLI (stderr, so stdout stays clean for --json)."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def bar(total: int, desc: str, enabled: bool = True):
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")


def status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PassProgress:
    """PassManager instrument: one line per pass with its time."""

    def __init__(self):
        self.t0 = 0.0

    def __call__(self, kind, index, total, p, record):
        if kind == "start":
            self.t0 = time.perf_counter()
            status(f"[{index + 1}/{total}] {p.name} ...")
        else:
            extra = ", ".join(f"{k}={v}" for k, v in list(record.metrics.items())[:4])
            status(f"[{index + 1}/{total}] {p.name} done in {record.seconds:.1f}s" + (f" ({extra})" if extra else ""))
