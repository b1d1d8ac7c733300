"""A PV-Tuning result as a file (`--quantize pv-int:B,...,state=FILE` or `pv:...,state=FILE`): the tuned codes
(integer codes packed at their bit width), scales, codebooks, biases and norms, with the tuning's record and a key
(the teacher's weights, the calibration windows, the quantizer's and the tuning's options; not the device).

A compile whose spec names an existing state file with the same key loads it instead of training; one naming a
missing file trains and writes it. So a tuning run on a lent GPU (device=cuda, many steps) serves a CPU compile of
the same spec, and a long CPU tuning is not repeated for every export format."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...compiler.errors import InputError
from ..training import fingerprint, run_key, save_tensors
from .int_linear import IntGroupLinear, pack_codes, unpack_codes

KEY_SKIP = ("device", "state", "calib")   # not what the tuning computes (the windows themselves are in the key)
# options added after state files existed, left out of the key at the value that computes what those files hold
KEY_LATER = {"precision": "f32", "schedule": "constant"}


def state_key(teacher: torch.nn.Module, ids: torch.Tensor, config: dict) -> str:
    return run_key(fingerprint(teacher, ids), {k: v for k, v in config.items()
                                               if k not in KEY_SKIP and KEY_LATER.get(k, object()) != v})


def save_tuned(path: Path, key: str, layers: dict, norms: list, record: dict) -> None:
    """Write the tuned layers (after PVTrainer.finish: stored precision) and norms; a temporary file renamed at the
    end, so a stopped run leaves no half-written state."""
    t: dict[str, torch.Tensor] = {}
    for name, q in layers.items():
        for k, v in q.state_dict().items():
            if k == "codes" and isinstance(q, IntGroupLinear):
                t[f"{name}.codes.packed"] = pack_codes(v.cpu(), q.nbits)
            else:
                t[f"{name}.{k}"] = v.detach().cpu()
    for i, p in enumerate(norms):
        t[f"norm.{i}"] = p.detach().cpu()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_tensors(tmp, t, {"key": key, "record": json.dumps(record)})
    tmp.replace(path)


def read_key(path: Path) -> str | None:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:
        return None


def load_tuned(path: Path, key: str, layers: dict, norms: list) -> dict:
    """Load a state file into the quantized layers and norms (onto their devices); -> the tuning's record.
    InputError when the file was tuned for another model, calibration or spec, or does not fit the layers."""
    from safetensors import safe_open
    found = read_key(path)
    if found is None:
        raise InputError(f"state={path}: not a tuned-state file")
    if found != key:
        raise InputError(f"state={path}: tuned for another model, calibration or spec (key {found}, this compile's "
                         f"{key}); name a new file to tune again")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        record = json.loads(f.metadata().get("record", "{}"))
        with torch.no_grad():
            for name, q in layers.items():
                for k, v in q.state_dict().items():
                    if k == "codes" and isinstance(q, IntGroupLinear):
                        v.copy_(unpack_codes(f.get_tensor(f"{name}.codes.packed"), q.nbits, v.shape))
                        continue
                    src = f.get_tensor(f"{name}.{k}") if f"{name}.{k}" in keys else None
                    if src is None or src.shape != v.shape:
                        raise InputError(f"state={path}: does not fit layer {name} ({k})")
                    v.copy_(src)
            for i, p in enumerate(norms):
                p.copy_(f.get_tensor(f"norm.{i}"))
    return record


def check_state_path(what: str, value: str) -> str:
    """The state= option, checked before the model loads: an existing file, or a new one in an existing folder."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_file():
        raise InputError(f"{what}: state={value} is not a file")
    if not p.exists() and not p.parent.is_dir():
        raise InputError(f"{what}: state={value}: folder {p.parent} does not exist")
    return str(p)
