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

# not what the tuning computes (the windows themselves are in the key; from='s file joins it by its own key)
KEY_SKIP = ("device", "state", "calib", "start")
# options added after state files existed, left out of the key at the value that computes what those files hold
KEY_LATER = {"precision": "f32", "schedule": "constant"}


def state_key(teacher: torch.nn.Module, ids: torch.Tensor, config: dict, start_key: str | None = None) -> str:
    """start_key: the key of the state a continued tuning started from (from=FILE), part of the new key."""
    cfg = {k: v for k, v in config.items() if k not in KEY_SKIP and KEY_LATER.get(k, object()) != v}
    if start_key:
        cfg["start_key"] = start_key
    return run_key(fingerprint(teacher, ids), cfg)


def teacher_key(teacher: torch.nn.Module) -> str:
    """A key for the teacher's (the unquantized model's) weights alone: what a continued tuning checks."""
    return fingerprint(teacher, torch.zeros(0, dtype=torch.int64))


def save_tuned(path: Path, key: str, layers: dict, norms: list, record: dict, teacher: str = "") -> None:
    """Write the tuned layers (after PVTrainer.finish: stored precision) and norms; a temporary file renamed at the
    end, so a stopped run leaves no half-written state. teacher: teacher_key(), for a later from=FILE."""
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
    save_tensors(tmp, t, {"key": key, "record": json.dumps(record), "teacher": teacher})
    tmp.replace(path)


def read_meta(path: Path) -> dict:
    """A tuned-state file's metadata ({} when it is not one)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def read_key(path: Path) -> str | None:
    return read_meta(path).get("key")


def start_from(path: Path, meta: dict, teacher: str, layers: dict, norms: list) -> dict:
    """from=FILE: load a tuned state to continue tuning it (any spec); meta: the file's (read_meta), teacher: this
    model's teacher_key(); -> {"state", "key", "steps", "teacher_checked"}. The file must be a tuned-state file that
    fits the layers; one that records its teacher must have been tuned from this model (files written before
    2026-12-05 do not record it: then only the fit is checked)."""
    if not meta.get("key"):
        raise InputError(f"from={path}: not a tuned-state file")
    if meta.get("teacher") and meta["teacher"] != teacher:
        raise InputError(f"from={path}: tuned from another model")
    record = load_tuned(path, meta["key"], layers, norms)
    return {"state": str(path), "key": meta["key"], "steps": record.get("steps"),
            "teacher_checked": bool(meta.get("teacher"))}


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


def check_start_path(what: str, value: str) -> str:
    """The from= option, checked before the model loads: an existing tuned-state file."""
    p = Path(value).expanduser()
    if not p.is_file() or not read_key(p):
        raise InputError(f"{what}: from={value} is not a tuned-state file")
    return str(p)


def check_state_path(what: str, value: str) -> str:
    """The state= option, checked before the model loads: an existing file, or a new one in an existing folder."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_file():
        raise InputError(f"{what}: state={value} is not a file")
    if not p.exists() and not p.parent.is_dir():
        raise InputError(f"{what}: state={value}: folder {p.parent} does not exist")
    return str(p)
