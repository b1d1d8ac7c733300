"""`--quantize` specs -> quantization passes (docs/passes/quantization.md).

    aqlm:MxBgG[,key=value...]   codebook quantization, no tuning           e.g. aqlm:2x8g8
    pv:MxBgG[,key=value...]     codebooks + PV-Tuning                       e.g. pv:2x8g8,steps=200,tau=0.01
    ste:MxBgG[,key=value...]    codebooks + straight-through tuning         e.g. ste:1x8g8,steps=200
    rtn:BgS                     round-to-nearest B-bit, groups of S         e.g. rtn:2g64
    gptq-int:B[,key=value...]   GPTQ into NNCF's INT{B}_SYM groups          e.g. gptq-int:4,group=64
    pv-int:B[,key=value...]     GPTQ init + PV-Tuning of codes and scales   e.g. pv-int:2,group=64,steps=200

The tuned methods (pv, ste, pv-int) also take device=auto|cpu|cuda (where the steps run), seconds=S (a time budget)
state=FILE (a tuned-state file: loaded when it exists, written when it does not; passes/quantization/tuned_state.py)
tune_samples=N (the tuning's calibration windows; samples= sets the quantizer's, and the tuning's unless given),
precision=f32|bf16|auto (the trunk's matmuls while tuning), schedule=constant|cosine (the rates over the budget) and
from=FILE (continue tuning from a tuned-state file: its codes, scales and norms; its key joins state='s key).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from ...compiler.errors import InputError
from ..spec_options import convert
from .codebook import CodebookQuantConfig, CodebookQuantPass
from .codebook_linear import Scheme
from .pv_tuning import PVTuningConfig, PVTuningPass
from .tuned_state import check_start_path, check_state_path
from .rtn import RTNConfig, RTNQuantPass, parse_rtn

# option name on the command line -> (config field, type)
QUANT_KEYS = {"samples": ("samples", int), "seqlen": ("seqlen", int), "kmeans": ("kmeans_iters", int),
              "weighted": ("weighted_init", bool), "beam": ("beam", int), "rounds": ("rounds", int),
              "cb_steps": ("cb_steps", int), "cb_lr": ("cb_lr", float), "seed": ("seed", int)}
TUNE_KEYS = {"steps": ("steps", int), "batch": ("batch", int), "lr": ("lr", float), "lr_v": ("lr_v", float),
             "tau": ("tau", float), "v_every": ("v_every", int), "decay": ("decay", float),
             "trust": ("trust", float), "device": ("device", str), "seconds": ("seconds", float),
             "state": ("state", str), "tune_samples": ("tune_samples", int), "precision": ("precision", str),
             "schedule": ("schedule", str), "from": ("start", str)}
INT_KEYS = {"group": ("group", int), "samples": ("samples", int), "seqlen": ("seqlen", int),
            "damp": ("damp", float), "clip": ("clip", bool), "act_order": ("act_order", bool),
            "flip": ("flip", bool), "seed": ("seed", int)}
# quantizer options added after tuned-state files existed: left out of the key at the value those files were made with
INIT_LATER = {"flip": False}
METHODS = ("aqlm", "pv", "ste", "rtn", "gptq-int", "pv-int")


def parse_options(method: str, items: list[str], keys: dict[str, tuple[str, type]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or key not in keys:
            raise InputError(f"--quantize {method}: unknown option '{item}' (options: {', '.join(sorted(keys)) or 'none'})")
        field, typ = keys[key]
        out[field] = convert("--quantize", method, key, val, typ)
    if "state" in out:
        out["state"] = check_state_path(f"--quantize {method}", out["state"])
    if "start" in out:
        out["start"] = check_start_path(f"--quantize {method}", out["start"])
    return out


def tuning_config(mode: str, opts: dict, quantizer, shared: tuple[str, ...], calib) -> PVTuningConfig:
    """The tuning pass's config from the parsed options: its own (TUNE_KEYS), the quantizer options it shares when
    given (`shared`: its calibration windows; tune_samples= gives the tuning a window count of its own), and the
    quantizer's options as one string, part of a tuned-state file's key (tuned_state.py)."""
    fields = {field for field, _ in TUNE_KEYS.values()}
    tune = {k: v for k, v in opts.items() if k in fields and k in PVTuningConfig.__dataclass_fields__}
    tune.update({k: opts[k] for k in shared if k in opts})
    if "tune_samples" in opts:
        tune["samples"] = opts["tune_samples"]
    init = json.dumps({k: v for k, v in asdict(quantizer).items()
                       if k not in ("keep_teacher", "calib") and INIT_LATER.get(k, object()) != v}, sort_keys=True)
    return PVTuningConfig(mode=mode, calib=calib, init=init, **tune)


def build(method: str, arg: str, options) -> list:
    """The passes for `--quantize method:arg` (arg = scheme[,key=value...])."""
    if method not in METHODS:
        raise InputError(f"unknown quantization method '{method}' (known: {', '.join(METHODS)})")
    head, *items = [p.strip() for p in (arg or "").split(",")]
    calib = getattr(options, "calib", None)
    if method in ("gptq-int", "pv-int"):
        return build_int(method, head, items, calib, options)
    if method == "rtn":
        if items:
            raise InputError(f"--quantize rtn takes no options, got '{','.join(items)}'")
        parse_rtn(head)
        return [RTNQuantPass(RTNConfig(scheme=head))]
    if not head:
        raise InputError(f"--quantize {method}: give a scheme MxBgG, e.g. {method}:2x8g8")
    Scheme.parse(head)
    keys = dict(QUANT_KEYS, **(TUNE_KEYS if method in ("pv", "ste") else {}))
    opts = parse_options(method, items, keys)
    quant = {k: v for k, v in opts.items() if k in CodebookQuantConfig.__dataclass_fields__}
    passes = [CodebookQuantPass(CodebookQuantConfig(scheme=head, calib=calib, keep_teacher=method != "aqlm",
                                                     method=method, **quant))]
    if method in ("pv", "ste"):
        passes.append(PVTuningPass(tuning_config(method, opts, passes[0].config, ("samples", "seqlen"), calib)))
    return passes


def build_int(method: str, head: str, items: list[str], calib, options=None) -> list:
    """`gptq-int:B[,group=G,...]` and `pv-int:B[,group=G,steps=N,...]` (passes/quantization/int_quant.py)."""
    from .int_quant import IntPVTuningPass, IntQuantConfig, IntQuantPass
    weights = getattr(options, "weights", "fp32")
    if weights != "fp32":
        raise InputError(f"--quantize {method} sets the graph weights itself (int codes, int8 embedding); "
                         f"drop --weights {weights}")
    if not head.isdigit():
        raise InputError(f"--quantize {method}: give the bits first, e.g. {method}:4,group=64 (bits 2, 3 or 4)")
    keys = dict(INT_KEYS, **(TUNE_KEYS if method == "pv-int" else {}))
    opts = parse_options(method, items, keys)
    quant = {k: v for k, v in opts.items() if k in IntQuantConfig.__dataclass_fields__}
    passes = [IntQuantPass(IntQuantConfig(bits=int(head), calib=calib, keep_teacher=method == "pv-int",
                                          method=method, **quant))]
    if method == "pv-int":
        passes.append(IntPVTuningPass(tuning_config("pv", opts, passes[0].config, ("samples", "seqlen", "seed"),
                                                    calib)))
    return passes
