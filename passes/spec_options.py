"""Parsing `key=value` options of command-line method specs (`--prune`, `--quantize`, `--drafter`)."""
from __future__ import annotations

from ..compiler.errors import InputError

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
TRAIN_DEVICES = ("auto", "cpu", "cuda")     # a training pass's device= (passes/training.py train_device)


def check_train_device(what: str, device: str) -> None:
    """A training pass's device= option, checked when the options are read (before the model loads): one of
    TRAIN_DEVICES, and cuda only where torch sees a CUDA device (torch is imported for that case alone)."""
    if device not in TRAIN_DEVICES:
        raise InputError(f"{what}: device must be one of {', '.join(TRAIN_DEVICES)}, got '{device}'")
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise InputError(f"{what}: device=cuda, but torch sees no CUDA device here (use device=auto or cpu)")


def convert(flag: str, method: str, key: str, val: str, typ: type):
    """`val` as `typ` (bool accepts true/false/1/0/yes/no/on/off), or InputError naming the flag and key."""
    if typ is bool:
        if val.lower() in TRUE:
            return True
        if val.lower() in FALSE:
            return False
        raise InputError(f"{flag} {method}: {key} must be true or false, got '{val}'")
    try:
        return typ(val)
    except ValueError:
        raise InputError(f"{flag} {method}: {key} must be {typ.__name__}, got '{val}'") from None
