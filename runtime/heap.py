"""Giving freed heap memory back to the system.

Loading a tokenizer (the tokenizers library parses its JSON into a tree it then drops) or compiling kernels
leaves tens of megabytes free inside glibc's heap that it does not return on its own; malloc_trim does.
A no-op where the C library has no malloc_trim (musl, macOS, Windows)."""
from __future__ import annotations

import ctypes
import gc
import sys


def trim_heap() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    gc.collect()
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
