"""Watching which files a piece of code opens (Python's audit hook: builtins.open, os.open, io.open ...).

    with watch_opens() as seen:
        code()
    assert not outside(seen, artifact_dir)

Audit hooks cannot be removed, so one hook is installed per process and only records while watched.
Files opened by native libraries (ONNX Runtime's, OpenVINO's C++ file reads) are not seen; the artifact
loader confines the paths it hands them (tests check those separately).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

_seen: list[str] | None = None
_installed = False


def _hook(event, args):
    if _seen is not None and event in ("open", "os.open") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        p = args[0]
        _seen.append(os.fsdecode(p) if not isinstance(p, str) else p)


@contextlib.contextmanager
def watch_opens():
    global _seen, _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _seen = []
    try:
        yield _seen
    finally:
        seen, _seen = _seen, None
        seen[:] = list(seen)


# reads that are not the artifact's: Python and library code, the process's own state
ALLOWED = (sys.prefix, sys.base_prefix, "/proc/", "/sys/", "/dev/", "/usr/", "/etc/ld.so", "/lib")
CODE = (".py", ".pyc", ".so")          # imports (accelc's own modules load lazily)


def outside(seen: list[str], root: Path, also: tuple[str, ...] = ()) -> list[str]:
    """Opened paths that are neither inside `root` nor library/system reads nor the accelc cache."""
    root = os.path.realpath(root)
    allowed = ALLOWED + tuple(os.path.realpath(a) for a in also)
    bad = []
    for p in seen:
        rp = os.path.realpath(p)
        if rp == root or rp.startswith(root + os.sep) or rp.startswith(allowed) or rp.endswith(CODE):
            continue
        bad.append(p)
    return bad
