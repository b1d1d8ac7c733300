"""Native CPU backend: runs the artifact's decoder from native/weights.safetensors with kernels generated
for this model and compiled for this CPU (runtime/native/, docs/runtime/native.md).

Like the OpenVINO backend's stateful graph, it keeps the KV cache itself: `forward_stateful(ids, pos, mask,
past_len)` runs T tokens after the first past_len cached positions (a smaller past_len rolls back), and
the runtime's KVCache only counts positions (decode.py). The explicit-cache `forward` (validation and
the speculative runners) copies the caller's cache in first. Inputs must be unpadded (an all-ones mask).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...compiler.artifact import artifact_file
from ...compiler.errors import ArtifactError, InputError


def native_record(manifest: dict) -> dict | None:
    rec = (manifest.get("records") or {}).get("native")
    return rec if isinstance(rec, dict) else None


def unavailable_reason(manifest: dict) -> str | None:
    rec = native_record(manifest)
    if rec is None:
        return "the artifact has no native weights (compile with --formats ...,native)"
    try:
        import llvmlite  # noqa: F401
    except ImportError:
        return "llvmlite is not installed"
    return None


class NativeBackend:
    name = "native"
    device = "cpu"
    stateful = True
    rows_on_request = True          # forward_stateful(all_logits=...) computes only the logits rows asked for

    def __init__(self, cfg: dict, tensors: dict, threads: int, full_logits: bool, manifest: dict,
                 precision: str = "auto"):
        from ..native.config_check import check_config
        from ..native.model import NativeModel
        check_config(cfg, tensors)
        model = manifest.get("model") or {}
        for key, have in (("layers", len(cfg["layers"])), ("kv_heads", cfg["kv_heads"]), ("head_dim", cfg["head_dim"])):
            if key in model and model[key] != have:
                raise ArtifactError(f"the manifest says {key} = {model[key]} but native/model.json has {have}")
        self.cfg, self.tensors = cfg, tensors          # as stored (an EAGLE drafter reads the embedding rows)
        self.layers = len(cfg["layers"])
        self.vocab = cfg["vocab"]
        self.last_logits_only = not full_logits
        self.model = NativeModel(cfg, tensors, threads, precision=precision)
        self.held = 0

    def forward_stateful(self, input_ids, position_ids, attention_mask, past_len: int, hidden=None,
                         all_logits: bool | None = None):
        """hidden: [T, C] float32, receives the last layer's residual stream (the EAGLE feature); all_logits:
        True, every row's logits even when opened for generation (speculative verification); False, the last row
        only even when opened with full logits (a prompt's prefill: the head skips the other rows); None, as
        opened."""
        if attention_mask is not None and not np.all(np.asarray(attention_mask) == 1):
            raise InputError("the native backend runs unpadded inputs (an all-ones attention mask)")
        last = self.last_logits_only if all_logits is None else not all_logits
        logits = self.model.step(input_ids[0], position_ids[0], int(past_len), last, hidden)
        self.held = int(past_len) + input_ids.shape[1]
        return logits[None]

    def forward(self, input_ids, position_ids, attention_mask, cache):
        """Explicit cache [1, P, Hkv, D] per key/value: copied in, then the step; -> (logits, new kv)."""
        P = cache[0].shape[1] if cache else 0
        self.model.load_cache(cache)
        logits = self.forward_stateful(input_ids, position_ids, attention_mask, P)
        if self.last_logits_only:
            raise InputError("this backend was opened for generation (last-token logits only)")
        T = input_ids.shape[1]
        new = []
        for j in range(self.layers):
            k, v = self.model.cache_view(j, P + T)
            new += [np.transpose(k[:, P:], (1, 0, 2))[None].copy(), np.transpose(v[:, P:], (1, 0, 2))[None].copy()]
        return logits, new

    def close(self) -> None:
        self.model.close()


def load(artifact_dir: Path, graph: dict, device: str, threads: int, manifest: dict,
         full_logits: bool = True, precision: str = "auto") -> NativeBackend:
    if device != "cpu":
        raise ArtifactError(f"the native backend runs on cpu, not {device}")
    rec = native_record(manifest)
    if rec is None:
        raise ArtifactError("this artifact has no native weights for the native backend")
    cfg, tensors = read_native(artifact_dir, rec, "native")
    if precision == "auto" and rec.get("precision") == "f32":
        precision = "f32"          # the compiler's validation found the reduced-precision drift too large
    return NativeBackend(cfg, tensors, threads, full_logits, manifest, precision)


def read_native(artifact_dir, rec: dict, what: str) -> tuple[dict, dict]:
    """(model.json dict, mapped tensors) of a native record {"config": ..., "weights": ...} of the artifact (the
    decoder's, or the EAGLE drafter's); a missing file or bad JSON is one ArtifactError line."""
    from ..native.weights import map_safetensors
    cfg_path = artifact_file(Path(artifact_dir), rec.get("config"), f"{what} config")
    weights = artifact_file(Path(artifact_dir), rec.get("weights"), f"{what} weights")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{cfg_path.name} is not valid JSON ({e})") from None
    return cfg, map_safetensors(weights)
