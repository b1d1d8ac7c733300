"""Export the decoder for the native CPU backend (runtime/native/, docs/runtime/native.md).

Writes native/model.json (the decoder's geometry and per-layer features) and native/weights.safetensors
(every weight in the form the native kernels execute, mapped without copies at load). Weight formats:

    f32, f16     dense [N, K]
    q8a          NNCF INT8_ASYM layout: u8 codes [N, K], per-row f32 scale and zero point
                 (w = (q - zero) * scale); also the embedding / tied head of low-bit artifacts (per row)
    q4s          NNCF INT4_SYM quantization: signed 4-bit codes in groups of G along K, two per byte
                 [N, K/2]: byte j of group g holds elements gG + j (low nibble) and gG + G/2 + j (high
                 nibble), each stored as q + 8 (contiguous halves: no shuffles in the kernel);
                 f16 scale per (row, group)
    q2s, q3s     NNCF INT2_SYM / INT3_SYM groups (gptq-int / pv-int layers): codes q + 2 (q + 4) in 2-bit planes,
                 byte j of group g holding elements gG + j + sG/4 in bits 2s, 2s + 1; q3s keeps each code's
                 high bit in a second plane [N, K/8], byte j of group g holding elements gG + j + sG/8 in bit s;
                 f16 scale per (row, group)
    cb           AQLM codebooks (passes/quantization/codebook_linear.py, MxBgG with B = 8): u8 codes [N, K/G, M],
                 f16 codebooks [M, 256, G], f16 row scales [N]

The quantized formats are computed here the way NNCF computes them data-free (its rounding and clamping),
from the same torch weights the graphs are exported from; codebook layers are written as they are stored.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, ValidationError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ..quantization.codebook_linear import CodebookLinear
from ..quantization.int_linear import IntGroupLinear
from .decoder_graph import DecoderGraph

log = logging.getLogger(__name__)
FOLDER = "native"
CONFIG = f"{FOLDER}/model.json"
WEIGHTS_FILE = f"{FOLDER}/weights.safetensors"
FORMAT_VERSION = 1
# --weights option -> format of the linear layers, and of the embedding (and tied head)
LINEAR_FORMAT = {"fp32": "f32", "fp16": "f16", "int8": "q8a", "int4": "q4s"}
EMBED_FORMAT = {"fp32": "f32", "fp16": "f16", "int8": "q8a", "int4": "q8a"}


@dataclass(frozen=True)
class ExportNativeConfig(PassConfig):
    weights: str = "fp32"           # fp32 | fp16 | int8 | int4 (the graphs' --weights)
    embed: str | None = None        # embedding / head format override (f32, f16, q8a)
    validate: bool = True           # run the exported weights on the native backend against torch


# -- quantizers (numpy, NNCF's data-free rounding) ----------------------------------------------------
def quantize_q8a(w: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row asymmetric 8-bit: scale = (max - min) / 255 over the row (with 0 inside the range)."""
    lo = np.minimum(w.min(axis=1), 0.0).astype(np.float32)
    hi = np.maximum(w.max(axis=1), 0.0).astype(np.float32)
    scale = (hi - lo) / 255.0
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 255).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]) + zero[:, None], 0, 255).astype(np.uint8)
    return {"q": q, "scale": scale, "zero": zero}


def dequantize_q8a(t: dict[str, np.ndarray]) -> np.ndarray:
    return (t["q"].astype(np.float32) - t["zero"][:, None]) * t["scale"][:, None]


def quantize_q4s(w: np.ndarray, group: int) -> dict[str, np.ndarray]:
    """Symmetric signed 4-bit in groups of `group` inputs: scale = max|w| / 8, q in [-8, 7]."""
    n, k = w.shape
    if k % group or group % 2:
        raise InputError(f"int4 groups of {group} do not divide an input size of {k}")
    g = w.reshape(n, k // group, group)
    scale = (np.abs(g).max(axis=2) / 8.0).astype(np.float16)
    s = scale.astype(np.float32)
    s = np.where(s == 0, np.float32(1.0), s)
    return pack_q4s(np.clip(np.round(g / s[:, :, None]), -8, 7), scale)


def dequantize_q4s(t: dict[str, np.ndarray], group: int) -> np.ndarray:
    n = t["q"].shape[0]
    p = t["q"].reshape(n, -1, group // 2)
    q = np.concatenate([(p & 15), (p >> 4)], axis=2).astype(np.float32) - 8           # [n, groups, group]
    s = t["scale"].astype(np.float32)
    return (q * s[:, :, None]).reshape(n, -1)


def pack_q4s(codes: np.ndarray, scales: np.ndarray) -> dict[str, np.ndarray]:
    """Signed 4-bit codes [n, groups, group] in [-8, 7] and scales [n, groups] -> the q4s tensors (NNCF's data-free
    codes, or a gptq-int / pv-int layer's own, stored as they are)."""
    n, ng, group = codes.shape
    q = codes.astype(np.int16) + 8
    half = group // 2
    packed = (q[:, :, :half] | (q[:, :, half:] << 4)).astype(np.uint8).reshape(n, ng * group // 2)
    return {"q": packed, "scale": np.ascontiguousarray(scales.reshape(n, ng), dtype=np.float16)}


def pack_low_bit(codes: np.ndarray, scales: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """Signed codes [n, groups, group] in [-2^(bits-1), 2^(bits-1) - 1] (bits 2 or 3) and scales [n, groups] ->
    the q2s / q3s tensors (runtime/native/kernels.py describes the layout)."""
    n, ng, group = codes.shape
    if group % 8:
        raise InputError(f"int{bits} groups of {group} are not a multiple of 8 (the native layout needs that)")
    u = codes.astype(np.int16) + (1 << (bits - 1))
    if u.min(initial=0) < 0 or u.max(initial=0) >= 1 << bits:
        raise ValueError(f"codes outside the {bits}-bit range")
    quarter = group // 4
    low = u & 3
    q = sum(low[:, :, s * quarter:(s + 1) * quarter] << (2 * s) for s in range(4)).astype(np.uint8)
    out = {"q": q.reshape(n, ng * quarter), "scale": np.ascontiguousarray(scales.reshape(n, ng), dtype=np.float16)}
    if bits == 3:       # high bits: byte j of a group's G/8 holds elements j + sG/8 in bit s
        hi = (u >> 2).astype(np.uint8).reshape(n, ng, 8, group // 8)
        out["h"] = sum(hi[:, :, s] << s for s in range(8)).astype(np.uint8).reshape(n, ng * group // 8)
    return out


def unpack_low_bit(t: dict[str, np.ndarray], group: int, bits: int) -> np.ndarray:
    """The q2s / q3s tensors -> the signed codes [n, K] (tests, reference math)."""
    n = t["q"].shape[0]
    p = t["q"].reshape(n, -1, group // 4)
    u = np.concatenate([(p >> (2 * s)) & 3 for s in range(4)], axis=2).reshape(n, -1).astype(np.int16)
    if bits == 3:
        h = t["h"].reshape(n, -1, 1, group // 8)
        u |= np.concatenate([(h >> s) & 1 for s in range(8)], axis=2).reshape(n, -1).astype(np.int16) << 2
    return u - (1 << (bits - 1))


def encode(w: np.ndarray, fmt: str, group: int | None = None) -> dict[str, np.ndarray]:
    """A dense float weight [N, K] in format `fmt` -> its stored tensors (suffix -> array)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if fmt == "f32":
        return {"w": w}
    if fmt == "f16":
        return {"w": w.astype(np.float16)}
    if fmt == "q8a":
        return quantize_q8a(w)
    if fmt == "q4s":
        return quantize_q4s(w, group)
    raise ValueError(f"unknown native weight format {fmt}")


def decode(t: dict[str, np.ndarray], fmt: str, group: int | None = None) -> np.ndarray:
    """Stored tensors -> the dense float32 weight they represent (tests, reference math)."""
    if fmt in ("f32", "f16"):
        return t["w"].astype(np.float32)
    if fmt == "q8a":
        return dequantize_q8a(t)
    if fmt == "q4s":
        return dequantize_q4s(t, group)
    if fmt in ("q2s", "q3s"):
        q = unpack_low_bit(t, group, 2 if fmt == "q2s" else 3).astype(np.float32)
        n = q.shape[0]
        return (q.reshape(n, -1, group) * t["scale"].astype(np.float32)[:, :, None]).reshape(n, -1)
    if fmt == "cb":
        codes, books, scales = t["codes"], t["codebooks"].astype(np.float32), t["scales"].astype(np.float32)
        n, ng, m = codes.shape
        w = sum(books[j][codes[:, :, j]] for j in range(m))        # [N, K/G, G]
        return w.reshape(n, -1) * scales[:, None]
    raise ValueError(f"unknown native weight format {fmt}")


def int4_group(k_sizes) -> int:
    for g in (128, 64, 32):
        if all(k % g == 0 for k in k_sizes):
            return g
    raise InputError(f"int4 weights need a group size in 128/64/32 dividing every layer input size ({sorted(k_sizes)})")


# -- the export -------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


class _Writer:
    """Collects tensors and the JSON description of each weight."""

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}

    def weight(self, name: str, module: nn.Module, fmt: str, group: int | None) -> dict:
        bias = getattr(module, "bias", None)
        if isinstance(module, CodebookLinear):
            if module.scheme.bits != 8:
                raise InputError(f"the native backend runs 8-bit codebooks (MxBgG with B = 8), not {module.scheme}")
            codes = module.codes.detach().cpu().numpy().astype(np.uint8)
            stored = {"codes": np.ascontiguousarray(codes),
                      "codebooks": _np(module.codebooks).astype(np.float16),
                      "scales": _np(module.scales).reshape(-1).astype(np.float16)}
            rec = {"format": "cb", "shape": [module.out_features, module.in_features],
                   "codebooks": module.scheme.codebooks, "group": module.scheme.group}
        elif isinstance(module, IntGroupLinear):
            codes, scales = module.codes.numpy(), module.scales.detach().float().numpy()
            if module.nbits == 4:
                stored, fmt_ = pack_q4s(codes, scales), "q4s"
            else:
                stored, fmt_ = pack_low_bit(codes, scales, module.nbits), f"q{module.nbits}s"
            rec = {"format": fmt_, "shape": [module.out_features, module.in_features], "group": module.group}
        else:
            w = module.weight if isinstance(module.weight, torch.Tensor) else None
            if w is None or w.dim() != 2:
                raise InputError(f"{name}: a {type(module).__name__} has no 2-D weight the native backend can run")
            stored = encode(_np(w), fmt, group)
            rec = {"format": fmt, "shape": list(w.shape)}
            if fmt == "q4s":
                rec["group"] = group
        for suffix, arr in stored.items():
            self.tensors[f"{name}.{suffix}"] = np.ascontiguousarray(arr)
        if bias is not None:
            self.tensors[f"{name}.bias"] = _np(bias)
            rec["bias"] = True
        rec["name"] = name
        return rec

    def vector(self, name: str, t: torch.Tensor) -> str:
        self.tensors[name] = np.ascontiguousarray(_np(t).reshape(-1))
        return name


def _norm(writer: _Writer, name: str, norm) -> dict:
    w = norm.weight.detach().float()
    if norm.plus_one:
        w = 1.0 + w
    return {"weight": writer.vector(name, w), "eps": norm.eps}


def describe(graph: DecoderGraph, family, weights: str, embed_format: str | None = None):
    """-> (model.json dict, tensors) for a whole-model DecoderGraph, or for one fed hidden states (an EAGLE
    drafter's layer: "input": "hidden", no embedding, the head's own rows)."""
    if weights not in LINEAR_FORMAT:
        raise InputError(f"the native backend has no weight format for --weights {weights}")
    fmt = LINEAR_FORMAT[weights]
    linears = [graph.attn[j][p] for j in range(len(graph.attn)) for p in ("q", "k", "v", "o")]
    linears += [graph.mlp[j][p] for j in range(len(graph.mlp)) for p in ("gate", "up", "down")]
    low_bit = any(isinstance(m, (CodebookLinear, IntGroupLinear)) for m in linears)
    efmt = embed_format or ("q8a" if low_bit else EMBED_FORMAT[weights])
    group = int4_group({m.in_features for m in linears} | {graph.hidden_size}) if fmt == "q4s" else None
    w = _Writer()
    fed = graph.input_kind == "hidden"
    tied = (not fed and isinstance(graph.head, nn.Linear)
            and graph.head.weight.data_ptr() == graph.embed.weight.data_ptr())
    cfg = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "hidden": graph.hidden_size, "heads": graph.num_heads, "kv_heads": graph.kv_heads,
        "head_dim": graph.head_dim, "vocab": graph.head.weight.shape[0] if fed else graph.vocab,
        "input": graph.input_kind,
        "activation": family.activation,
        "embed_scale": None if fed else graph.embed_scale if graph.embed_scale is not None else (
            float(graph.embed.embed_scale) if hasattr(graph.embed, "embed_scale") else None),
        "final_softcap": graph.final_softcap, "attn_softcap": graph.attn_softcap,
        "sandwich": bool(graph.sandwich), "qk_norm": bool(graph.qk_norm),
        "weights": weights,
        "rope": {name: {"inv_freq": w.vector(f"rope.{name}.inv_freq", getattr(graph, f"inv_freq_{name}")),
                        "scaling": float(s)} for name, s in graph.rope_scaling.items()},
        "embed": None if fed else w.weight("embed", _EmbedView(graph.embed.weight), efmt, None),
        "tied": bool(tied),
        "final_norm": _norm(w, "final_norm", graph.final_norm),
        "layers": [],
    }
    cfg["head"] = cfg["embed"] if tied else w.weight("head", graph.head, efmt, None)
    for j in range(len(graph.attn)):
        a, m, n = graph.attn[j], graph.mlp[j], graph.norms[j]
        layer = {
            "rope": graph.layer_rope[j], "window": graph.layer_window[j], "scaling": graph.layer_scaling[j],
            "norms": {k: _norm(w, f"layers.{j}.norm.{k}", n[k]) for k in n.keys()},
        }
        for p in ("q", "k", "v", "o"):
            layer[p] = w.weight(f"layers.{j}.{p}", a[p], fmt, group)
        for p in ("gate", "up", "down"):
            layer[p] = w.weight(f"layers.{j}.{p}", m[p], fmt, group)
        cfg["layers"].append(layer)
    return cfg, w.tensors


class _EmbedView(nn.Module):
    """The embedding matrix seen as a linear weight [V, C] (no bias)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight
        self.bias = None


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors file written by hand (no torch, no pickles): 8-byte header length, JSON header, data;
    every tensor aligned to 64 bytes so the runtime can map it for vector loads."""
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint8): "U8",
              np.dtype(np.int8): "I8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}
    header, offset, order = {}, 0, sorted(tensors)
    for name in order:
        a = tensors[name]
        pad = (-offset) % 64
        offset += pad
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-(8 + len(blob))) % 64)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        pos = 0
        for name in order:
            start, end = header[name]["data_offsets"]
            f.write(b"\0" * (start - pos))
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
            pos = end


class ExportNativePass(Pass):
    name = "export-native"
    config_cls = ExportNativeConfig

    def call(self, bundle: ModelBundle) -> PassResult:
        graph = DecoderGraph(bundle.model, bundle.adapter).eval()
        with torch.no_grad():
            cfg, tensors = describe(graph, bundle.adapter.family, self.config.weights, self.config.embed)
        folder = Path(bundle.workdir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors(folder / "weights.safetensors", tensors)
        (folder / "model.json").write_text(json.dumps(cfg, indent=1))
        bundle.add_file(WEIGHTS_FILE, folder / "weights.safetensors")
        bundle.add_file(CONFIG, folder / "model.json")
        nbytes = sum(a.nbytes for a in tensors.values())
        bundle.records["native"] = {"config": CONFIG, "weights": WEIGHTS_FILE, "format_version": FORMAT_VERSION,
                                    "linear_formats": sorted({l[p]["format"] for l in cfg["layers"]
                                                              for p in ("q", "k", "v", "o", "gate", "up", "down")}),
                                    "embed_format": cfg["embed"]["format"], "bytes": nbytes}
        metrics = {"native_mb": round(nbytes / 2 ** 20, 1)}
        from ..drafting.export_eagle import export_native_eagle
        eagle = export_native_eagle(bundle, self.config.weights)
        if eagle is not None:           # the EAGLE drafter's layer and head, run by the native runtime beside the decoder
            bundle.records["native"]["eagle_draft"] = eagle
            metrics["native_eagle_mb"] = round(eagle["bytes"] / 2 ** 20, 1)
        if self.config.validate:
            metrics.update(validate_native(bundle, cfg, folder / "weights.safetensors"))
            bundle.records["native"]["validation"] = metrics
            if metrics.get("precision"):
                bundle.records["native"]["precision"] = metrics["precision"]
        return PassResult(True, metrics)


# the precision policy's own limits against torch (docs/runtime/native.md, "Precision"): bf16 weights for fp32
# artifacts; int8 activations keep the weights' own tolerance
BF16_TOLERANCE = (1.0, 0.85)


def validate_native(bundle: ModelBundle, cfg: dict, weights: Path) -> dict:
    """Teacher-forced logits of the native backend against the torch model on the validation prompts: at
    precision f32 with the tolerance of the weights' precision (a low-bit artifact's int8 embedding counts as
    int8), failing the compile past it; then at the default precision policy (bf16 weights, int8 activations
    where this CPU has them), recording "precision": "f32" in the artifact when the policy's drift is past its
    tolerance (the runtime then runs f32 by default)."""
    from ...runtime.backends import default_threads
    from ...runtime.native.config_check import check_config
    from ...runtime.native.model import NativeModel
    from ...runtime.native.weights import map_safetensors
    from .validate import INT_CODES, TOLERANCES, noise_limit, prompt_ids, self_noise, torch_reference
    tensors = map_safetensors(weights)
    check_config(cfg, tensors)
    precision = {"f32": "fp32", "f16": "fp16", "q8a": "int8", "q4s": "int4", "q3s": "int4", "q2s": "int4"}
    linear_fmts = {L[p]["format"] for L in cfg["layers"] for p in ("q", "k", "v", "o", "gate", "up", "down")}
    worst = max((precision.get(f, "fp32") for f in linear_fmts | {cfg["embed"]["format"]}), key=list(TOLERANCES).index)
    # a codebook artifact's int8 embedding (and tied head) is the only lossy step the native export adds: the
    # reference then runs with those same weights (swapped in place, restored after), so the check is of the
    # kernels, with the tolerance of the linears' own format; the int8 embedding's cost is in the quality table
    swap = "cb" in linear_fmts and cfg["embed"]["format"] == "q8a"
    params = [("embed", bundle.adapter.embed.weight)]
    if not cfg["tied"] and cfg["head"]["format"] == "q8a":
        params.append(("head", bundle.adapter.head.weight))
    saved = [p.data for _, p in params]
    try:
        if swap:
            for name, p in params:
                stored = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
                p.data = torch.from_numpy(decode(stored, "q8a")).to(p.dtype)
            worst = max((precision.get(f, "fp32") for f in linear_fmts), key=list(TOLERANCES).index)
        with torch.no_grad():
            refs = [(ids.shape[1], *torch_reference(bundle.model, ids, 8)) for ids in prompt_ids(bundle)]
            noise = max(self_noise(bundle.model, seq, ref) for _, seq, ref in refs) if worst == "fp32" else 0.0
    finally:
        for (_, p), data in zip(params, saved):
            p.data = data

    def measure(mode: str) -> tuple[float, float, NativeModel]:
        model = NativeModel(cfg, tensors, threads=default_threads(), precision=mode)
        diffs, agree, total = [], 0, 0
        try:
            for n, seq, ref in refs:
                got = model.step(seq[0], np.arange(seq.shape[1]), 0, last_only=False)
                diffs.append(float(np.abs(got - ref[0]).max()))
                picks = slice(n - 1, None)    # the last prompt position and every decode step
                agree += int((got[picks].argmax(-1) == ref[0, picks].argmax(-1)).sum())
                total += seq.shape[1] - n + 1
        finally:
            model.close()
        return max(diffs), agree / total, model

    diff, agree, _ = measure("f32")
    max_diff, agree_min = TOLERANCES[worst]
    if "int" in (bundle.records.get("quantization") or {}):
        worst = "int-codes"             # gptq-int / pv-int: the torch model holds the very codes stored here
        max_diff, agree_min = INT_CODES
    max_diff = noise_limit(max_diff, noise)
    out = {"native_max_abs_diff": round(diff, 6), "native_greedy_agreement": round(agree, 4), "native_tolerance": worst,
           "reference_embedding": "int8 (as stored)" if swap else "the model's"}
    if diff > max_diff or agree < agree_min:
        raise ValidationError(f"the native weights do not reproduce the model: max |logit diff| {diff:.4g} "
                         f"(allowed {max_diff}), greedy agreement {agree:.2f} (needs {agree_min})")
    pdiff, pagree, policy = measure("auto")
    if policy.bf16_weights or policy.int8_activations:
        if policy.bf16_weights and worst == "fp32":
            limit = BF16_TOLERANCE
        else:       # int8 activations: the int8 tolerance at least (a codebook artifact's int8 head)
            limit = max((max_diff, agree_min), TOLERANCES["int8"], key=lambda t: t[0])
        ok = pdiff <= limit[0] and pagree >= limit[1]
        out.update({"policy": "+".join(n for n, on in (("bf16-weights", policy.bf16_weights),
                                                       ("int8-activations", policy.int8_activations)) if on),
                    "policy_max_abs_diff": round(pdiff, 6), "policy_greedy_agreement": round(pagree, 4),
                    "policy_within_tolerance": ok})
        if not ok:
            log.warning("native: the reduced-precision policy drifts past its tolerance on this model (max |logit "
                        "diff| %.3g, greedy agreement %.2f): the artifact runs f32 by default", pdiff, pagree)
            out["precision"] = "f32"
    return out
