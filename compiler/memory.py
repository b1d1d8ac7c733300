"""Resident memory of this process, for the pass log: current RSS and the peak since a reset.

On Linux the kernel's high-water mark (VmHWM in /proc/self/status) can be reset to the current RSS by
writing "5" to /proc/self/clear_refs, which gives each pass its own peak. Where that is refused (or on
other systems) the peak is the process's ru_maxrss, which only says whether a pass raised the peak.
Child processes are not counted.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024          # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size in MiB (None where unknown)."""
    return _status_mb("VmRSS")


def process_peak_mb() -> float:
    """The process's peak RSS in MiB so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def release() -> None:
    """Collect garbage (reference cycles keep a finished pass's tensors, optimizer states included) and hand
    freed heap pages back to the system (glibc malloc_trim), so the next pass starts from what is really live."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (other systems, other C libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def peak_mb(was_reset: bool) -> float:
    """The peak RSS since the last reset (or of the whole process when it was not reset)."""
    hwm = _status_mb("VmHWM") if was_reset else None
    return hwm if hwm is not None else process_peak_mb()


class PeakMeter:
    """Measures one step: `start()` then `stop()` -> {"rss_before_mb", "rss_after_mb", "peak_rss_mb",
    "peak_scope": "step" (the step's own peak) or "process" (ru_maxrss: the process peak so far)}."""

    def __init__(self):
        self.process_peak = peak_mb(False)      # before any reset: model load and earlier work
        self._reset, self._before = False, None

    def start(self) -> None:
        self.process_peak = max(self.process_peak, peak_mb(self._reset))
        self._before = rss_mb()
        self._reset = reset_peak()

    def stop(self) -> dict:
        peak = peak_mb(self._reset)
        self.process_peak = max(self.process_peak, peak)
        return {"rss_before_mb": _r(self._before), "rss_after_mb": _r(rss_mb()), "peak_rss_mb": _r(peak),
                "peak_scope": "step" if self._reset else "process"}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
