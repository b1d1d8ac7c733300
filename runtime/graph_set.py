"""An artifact's whole-model graphs loaded on one backend: what runtime/decode.py's DecodeState runs.

    graphs = load_graphs(folder, manifest["graphs"], "openvino", "cpu", threads, model_record)
    state = DecodeState(graphs, capacity); logits = prefill(state, ids); logits = decode_one(state, tok)

open_artifact builds its Artifact on this; the compiler's validation passes run the graphs they just wrote
the same way (passes/export/validate.py), so the graphs are checked on the runtime's own code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..compiler.errors import ArtifactError
from ..compiler.graph import INPUT_IDS, decoder_roles, past_key, record_dim
from .backends import Backend, default_threads, load_backend


@dataclass
class GraphSet:
    static: bool
    runners: dict[str, Backend]          # role -> backend session: {"decoder"} or {"prefill", "decode"}
    layers: int
    kv_heads: int
    head_dim: int
    cache_len: int | None = None         # static graphs: the fixed cache length
    prefill_chunk: int | None = None     # static graphs: tokens per prefill call

    def new_state(self, capacity: int):
        from .decode import DecodeState
        return DecodeState(self, capacity)


def static_geometry(roles: dict[str, dict], options: dict | None = None) -> tuple[int, int]:
    """(cache length, prefill chunk) of static prefill + decode graphs, from their shapes (else the options)."""
    opts = options or {}
    cache_len = record_dim(roles["decode"], past_key(0), 1) or opts.get("cache_len")
    chunk = record_dim(roles["prefill"], INPUT_IDS, 1) or opts.get("prefill_chunk")
    if not isinstance(cache_len, int) or not isinstance(chunk, int) or cache_len < 1 or chunk < 1:
        raise ArtifactError("static graphs without a recorded cache length / prefill chunk")
    return cache_len, chunk


def load_graphs(folder, graphs: dict[str, dict], backend: str, device: str, threads: int | None = None,
                manifest: dict | None = None, full_logits: bool = True, precision: str | None = None) -> GraphSet:
    """Load the decoding roles of `graphs` (compiler/graph.py decoder_roles) from `folder` on one backend/device.
    manifest: the artifact's manifest (or {"model": ...}) for the backends' cache-shape checks."""
    manifest = manifest or {}
    static, roles = decoder_roles(graphs)
    cache_len = chunk = None
    if static:
        cache_len, chunk = static_geometry(roles, manifest.get("options"))
    runners = {role: load_backend(backend, Path(folder), g, device, threads or default_threads(), manifest,
                                  full_logits, precision)
               for role, g in roles.items()}
    layers = {r.layers for r in runners.values()}
    want = (manifest.get("model") or {}).get("layers")
    if len(layers) != 1 or (want is not None and layers != {want}):
        raise ArtifactError(f"the artifact's graphs have {sorted(layers)} layers; the manifest says {want}")
    rec = next(iter(roles.values()))
    model = manifest.get("model") or {}
    return GraphSet(static, runners, layers.pop(), int(model.get("kv_heads", rec.get("kv_heads"))),
                    int(model.get("head_dim", rec.get("head_dim"))), cache_len, chunk)
