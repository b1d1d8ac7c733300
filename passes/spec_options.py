"""Parsing `key=value` options of command-line method specs (`--prune`, `--quantize`, `--drafter`)."""
from __future__ import annotations

from ..compiler.errors import InputError

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
from ..compiler.train_device import TRAIN_DEVICES, check_train_device  # noqa: F401  (re-exported)


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
