"""The device= option of the passes that train (EAGLE, encoder-decoder adaptation, PV-Tuning, LoCoCo), checked where
the option is read, before the model loads. Here in the compiler core so `--kv-cache` parsing (compiler/kv_spec.py)
can check it too; passes/spec_options.py re-exports it."""
from __future__ import annotations

from .errors import InputError

TRAIN_DEVICES = ("auto", "cpu", "cuda")     # passes/training.py train_device


def check_train_device(what: str, device: str) -> None:
    """One of TRAIN_DEVICES, and cuda only where torch sees a CUDA device (torch is imported for that case alone)."""
    if device not in TRAIN_DEVICES:
        raise InputError(f"{what}: device must be one of {', '.join(TRAIN_DEVICES)}, got '{device}'")
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise InputError(f"{what}: device=cuda, but torch sees no CUDA device here (use device=auto or cpu)")
