"""Shared pieces of the pruning passes: parsing `--prune` specs, validating ratios, counting parameters.

Spec grammar (docs/passes/pruning.md): METHOD:TARGET[,key=value...] where TARGET is a ratio in
[0, 1) ("0.5") or, for unstructured-mask methods, an N:M pattern ("2:4": at most N nonzero weights
in every M consecutive input weights of a row).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ...compiler.errors import InputError
from ..spec_options import convert



def check_ratio(ratio: float, what: str = "pruning ratio") -> None:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) < 1.0:
        raise InputError(f"{what} must be in [0, 1), got {ratio!r}")


def check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int)) or m < 2 or not 0 < n < m or m > 64:
        raise InputError(f"N:M pattern must have 0 < N < M <= 64 (e.g. 2:4, 4:8), got {n}:{m}")


def parse_spec(method: str, arg: str, keys: dict[str, type], allow_nm: bool) -> dict[str, Any]:
    """'0.5,init=wanda,mlp=true' -> {'ratio': 0.5, 'init': 'wanda', 'mlp': True}; '2:4,...' -> n=2, m=4.

    `keys` maps each allowed option to its type (int, float, str, bool). Raises InputError naming
    the problem (unknown key, bad value, bad ratio or pattern).
    """
    parts = [p.strip() for p in (arg or "").split(",")]
    head, rest = parts[0], parts[1:]
    if not head:
        raise InputError(f"--prune {method}: give a ratio, e.g. {method}:0.5")
    out: dict[str, Any] = {}
    if ":" in head:
        if not allow_nm:
            raise InputError(f"--prune {method}: takes a ratio (e.g. {method}:0.3), not an N:M pattern '{head}'")
        a, _, b = head.partition(":")
        try:
            n, m = int(a), int(b)
        except ValueError:
            raise InputError(f"--prune {method}: bad N:M pattern '{head}' (e.g. 2:4)") from None
        check_nm(n, m)
        out.update(ratio=1.0 - n / m, n=n, m=m)
    else:
        try:
            ratio = float(head)
        except ValueError:
            raise InputError(f"--prune {method}: bad ratio '{head}' (a number in [0, 1))") from None
        check_ratio(ratio)
        out["ratio"] = ratio
    for item in rest:
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise InputError(f"--prune {method}: unknown option '{item}' (options: {known})")
        out[key] = convert("--prune", method, key, val.strip(), keys[key])
    return out


def decoder_linears(adapter, i: int, mlp: bool = True, attn: bool = True) -> dict[str, nn.Linear]:
    """The Linear modules of decoder layer i by short name ("attn.q", "mlp.down" ...)."""
    out: dict[str, nn.Linear] = {}
    if attn:
        out.update({f"attn.{k}": v for k, v in adapter.attn_proj(i).items()})
    if mlp:
        out.update({f"mlp.{k}": v for k, v in adapter.mlp_proj(i).items()})
    return out


def zero_count(adapter) -> tuple[int, int]:
    """(zero weights, all weights) over the decoder's Linear modules."""
    zeros = total = 0
    for lin in adapter.linears().values():
        zeros += int((lin.weight == 0).sum())
        total += lin.weight.numel()
    return zeros, total
