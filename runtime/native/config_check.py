"""Checks of native/model.json against the mapped weights, before any native code reads them.

The kernels trust shapes compiled into them, so every record is checked here: known formats, the
geometry of each projection, and every tensor present with exactly the dtype and shape its format needs.
A failure is one line (ArtifactError).
"""
from __future__ import annotations

import numpy as np

from ...compiler.errors import ArtifactError

FORMATS = ("f32", "f16", "q8a", "q4s", "q3s", "q2s", "cb")
ACTIVATIONS = ("silu", "gelu_tanh")


def _int(v, where: str, lo: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ArtifactError(f"native/model.json: {where} must be an integer >= {lo}, got {v!r}")
    return v


def _num(v, where: str, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or (positive and v <= 0):
        raise ArtifactError(f"native/model.json: {where} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


def _tensor(t: dict, name: str, dtype, shape: tuple) -> np.ndarray:
    a = t.get(name)
    if a is None:
        raise ArtifactError(f"native weights lack tensor {name!r}")
    if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape):
        raise ArtifactError(f"native tensor {name!r} is {a.dtype}{list(a.shape)}, expected "
                            f"{np.dtype(dtype)}{list(shape)}")
    return a


def check_weight(rec, t: dict, where: str, shape: tuple[int, int]) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise ArtifactError(f"native/model.json: {where} is not a weight record")
    fmt = rec.get("format")
    if fmt not in FORMATS:
        raise ArtifactError(f"native/model.json: {where} has weight format {fmt!r} (the native backend runs "
                            f"{', '.join(FORMATS)})")
    if list(rec.get("shape") or []) != list(shape):
        raise ArtifactError(f"native/model.json: {where} has shape {rec.get('shape')}, the model needs {list(shape)}")
    n, k = shape
    name = rec["name"]
    if fmt in ("f32", "f16"):
        _tensor(t, f"{name}.w", np.float32 if fmt == "f32" else np.float16, (n, k))
    elif fmt == "q8a":
        _tensor(t, f"{name}.q", np.uint8, (n, k))
        _tensor(t, f"{name}.scale", np.float32, (n,))
        _tensor(t, f"{name}.zero", np.float32, (n,))
    elif fmt == "q4s":
        g = _int(rec.get("group"), f"{where}.group", 2)
        if g % 2 or k % g:
            raise ArtifactError(f"native/model.json: {where} group {g} does not divide {k} in even groups")
        _tensor(t, f"{name}.q", np.uint8, (n, k // 2))
        _tensor(t, f"{name}.scale", np.float16, (n, k // g))
    elif fmt in ("q3s", "q2s"):
        g = _int(rec.get("group"), f"{where}.group", 8)
        if g % 8 or k % g:
            raise ArtifactError(f"native/model.json: {where} group {g} does not divide {k} in groups of 8n")
        _tensor(t, f"{name}.q", np.uint8, (n, k // 4))
        _tensor(t, f"{name}.scale", np.float16, (n, k // g))
        if fmt == "q3s":
            _tensor(t, f"{name}.h", np.uint8, (n, k // 8))
    else:
        g = _int(rec.get("group"), f"{where}.group")
        m = _int(rec.get("codebooks"), f"{where}.codebooks")
        if k % g or m > 8 or g > 64:
            raise ArtifactError(f"native/model.json: {where} codebook groups of {g} x {m} do not fit {k} inputs")
        _tensor(t, f"{name}.codes", np.uint8, (n, k // g, m))
        _tensor(t, f"{name}.codebooks", np.float16, (m, 256, g))
        _tensor(t, f"{name}.scales", np.float16, (n,))
    if rec.get("bias"):
        _tensor(t, f"{name}.bias", np.float32, (n,))


def _norm(rec, t: dict, where: str, size: int) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("weight"), str):
        raise ArtifactError(f"native/model.json: {where} is not a norm record")
    _num(rec.get("eps"), f"{where}.eps", positive=True)
    _tensor(t, rec["weight"], np.float32, (size,))


def check_config(cfg, t: dict) -> None:
    if not isinstance(cfg, dict):
        raise ArtifactError("native/model.json is not an object")
    if cfg.get("format_version") != 1:
        raise ArtifactError(f"native/model.json has format_version {cfg.get('format_version')!r} (this accelc reads 1)")
    C, H, Hkv, D, V = (_int(cfg.get(k), k) for k in ("hidden", "heads", "kv_heads", "head_dim", "vocab"))
    if H % Hkv or D % 2:
        raise ArtifactError(f"native/model.json: {H} heads over {Hkv} kv heads of dim {D} is not a valid geometry")
    if cfg.get("activation") not in ACTIVATIONS:
        raise ArtifactError(f"native/model.json: activation {cfg.get('activation')!r} is not one of {ACTIVATIONS}")
    for k in ("embed_scale", "final_softcap", "attn_softcap"):
        if cfg.get(k) is not None:
            _num(cfg[k], k, positive=True)
    for k in ("sandwich", "qk_norm", "tied"):
        if not isinstance(cfg.get(k), bool):
            raise ArtifactError(f"native/model.json: {k} must be true or false")
    ropes = cfg.get("rope")
    if not isinstance(ropes, dict) or not ropes:
        raise ArtifactError("native/model.json: rope must name at least one rotary table")
    for name, r in ropes.items():
        if not isinstance(r, dict) or not isinstance(r.get("inv_freq"), str):
            raise ArtifactError(f"native/model.json: rope {name!r} is not a rotary record")
        _num(r.get("scaling"), f"rope.{name}.scaling")
        _tensor(t, r["inv_freq"], np.float32, (D // 2,))
    hidden_input = cfg.get("input", "ids") == "hidden"      # a drafter fed hidden states (no embedding)
    if cfg.get("input", "ids") not in ("ids", "hidden"):
        raise ArtifactError(f"native/model.json: input must be ids or hidden, got {cfg.get('input')!r}")
    if hidden_input and (cfg.get("embed") is not None or cfg["tied"]):
        raise ArtifactError("native/model.json: a model fed hidden states has no embedding (and no tied head)")
    if not hidden_input:
        check_weight(cfg.get("embed"), t, "embed", (V, C))
    if cfg.get("mix") is not None:
        if not hidden_input or not isinstance(cfg["mix"], dict):
            raise ArtifactError("native/model.json: an input mix belongs to a model fed hidden states")
        check_weight(cfg["mix"].get("fc"), t, "mix.fc", (C, 2 * C))
    check_weight(cfg.get("head"), t, "head", (V, C))
    if any(r is not None and r["format"] in ("q4s", "q3s", "q2s", "cb") for r in (cfg["head"], cfg.get("embed"))):
        raise ArtifactError("native/model.json: the embedding and head must be f32, f16 or q8a")
    if cfg["tied"] and cfg["head"] != cfg["embed"]:
        raise ArtifactError("native/model.json: a tied head must be the embedding record")
    _norm(cfg.get("final_norm"), t, "final_norm", C)
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ArtifactError("native/model.json: layers must be a non-empty list")
    need = ["input", "pre_ffn"] + (["post_attn", "post_ffn"] if cfg["sandwich"] else [])
    for j, L in enumerate(layers):
        w = f"layers[{j}]"
        if not isinstance(L, dict):
            raise ArtifactError(f"native/model.json: {w} is not an object")
        if L.get("rope") not in ropes:
            raise ArtifactError(f"native/model.json: {w}.rope names no rotary table")
        if L.get("window") is not None:
            _int(L["window"], f"{w}.window")
        _num(L.get("scaling"), f"{w}.scaling", positive=True)
        norms = L.get("norms")
        if not isinstance(norms, dict):
            raise ArtifactError(f"native/model.json: {w}.norms is not an object")
        for k in need:
            _norm(norms.get(k), t, f"{w}.norms.{k}", C)
        if cfg["qk_norm"]:
            _norm(norms.get("q"), t, f"{w}.norms.q", D)
            _norm(norms.get("k"), t, f"{w}.norms.k", D)
        shape = L["gate"].get("shape") if isinstance(L.get("gate"), dict) else None
        ff = _int(shape[0] if isinstance(shape, list) and shape else None, f"{w}.gate rows")
        for p, shape in (("q", (H * D, C)), ("k", (Hkv * D, C)), ("v", (Hkv * D, C)), ("o", (C, H * D)),
                         ("gate", (ff, C)), ("up", (ff, C)), ("down", (C, ff))):
            check_weight(L.get(p), t, f"{w}.{p}", shape)
