"""Targets: each builds its pipeline (a list of passes) from compile options. Dispatch is a dict."""
from __future__ import annotations

from ..compiler.errors import InputError
from .base import CompileOptions, Target
from . import cpu, cuda, npu

TARGETS: dict[str, Target] = {t.name: t for t in (cpu.TARGET, npu.TARGET, cuda.TARGET)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target '{name}' (known targets: {', '.join(TARGETS)})") from None


__all__ = ["CompileOptions", "Target", "TARGETS", "get_target"]
