"""The pass manager: runs a pipeline (a list of passes) in order, times it, measures its peak resident
memory (compiler/memory.py), records it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .bundle import ModelBundle
from .errors import PassBugError, PassError
from .memory import PeakMeter, release
from .pass_base import Pass

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """One entry of the pass log that goes into the artifact manifest."""

    name: str
    config: dict[str, Any]
    seconds: float
    changed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)   # resident memory (compiler/memory.py PeakMeter)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "seconds": round(self.seconds, 3),
                "changed": self.changed, "metrics": self.metrics, "memory": self.memory}


class PassManager:
    """Runs passes in order. `on_event(kind, index, total, pass_, record)` is an instrument hook
    (the CLI uses it to show progress); kind is "start" or "end"."""

    def __init__(self, passes: list[Pass], on_event: Callable[..., None] | None = None):
        self.passes = list(passes)
        self.on_event = on_event

    def run(self, bundle: ModelBundle) -> list[PassRecord]:
        records: list[PassRecord] = bundle.records.setdefault("pass_log", [])
        done: list[str] = [r.name for r in records]
        total = len(self.passes)
        meter = PeakMeter()
        for i, p in enumerate(self.passes):
            if self.on_event:
                self.on_event("start", i, total, p, None)
            meter.start()
            t0 = time.perf_counter()
            try:
                result = p(bundle)
            except PassError as e:
                # re-raise (same class and exit code) with the full history of this run
                raise PassError(e.pass_name, _strip(str(e)), before=done, exit_code=e.exit_code) from e
            except PassBugError as e:
                raise PassBugError(e.pass_name, _strip(str(e)), before=done) from e
            release()                   # what the pass freed leaves the process before the next one starts
            rec = PassRecord(p.name, p.config_dict(), time.perf_counter() - t0, result.changed, result.metrics,
                             meter.stop())
            records.append(rec)
            done.append(p.name)
            # the compile's peak so far (model load included): the largest of the passes' peaks
            bundle.records["peak_rss_mb"] = round(meter.process_peak, 1)
            log.info("pass %s: %.2fs peak %s MiB changed=%s %s", p.name, rec.seconds, rec.memory["peak_rss_mb"],
                     rec.changed, rec.metrics)
            if self.on_event:
                self.on_event("end", i, total, p, rec)
        return records


def _strip(msg: str) -> str:
    # PassError's message is "pass 'x' failed: MSG (passes completed before it: ...)": keep MSG
    head, _, rest = msg.partition("failed: ")
    return rest.rsplit(" (passes completed before it:", 1)[0] if rest else msg
