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
from ..compiler.graph import INPUT_IDS, by_role, decoder_roles, memory_of, past_key, record_dim
from ..compiler.kv_spec import KVCacheSpec
from .backends import Backend, default_threads, graph_file, load_backend


@dataclass
class GraphSet:
    static: bool
    runners: dict[str, Backend]          # role -> backend session: {"decoder"} or {"prefill", "decode"}
    layers: int
    kv_heads: int
    head_dim: int
    cache_len: int | None = None         # static graphs: the fixed cache length
    prefill_chunk: int | None = None     # static graphs: tokens per prefill call
    kv_cache: KVCacheSpec | None = None  # a fixed-size cache (runtime/fixed_cache.py), else None
    compress: object = None              # its compression graph (lococo)
    encoder: object = None               # an encoder-decoder's encoder (runtime/encoder.py), else None

    def new_state(self, capacity: int):
        return new_state(self, capacity)


def new_state(graphs, capacity: int):
    """The decode state of an artifact's graphs (GraphSet or Artifact): a fixed cache, or today's growing one."""
    if graphs.kv_cache is not None:
        from .fixed_cache import FixedState
        return FixedState(graphs, graphs.kv_cache, graphs.compress)
    from .decode import DecodeState
    return DecodeState(graphs, capacity)


def fixed_cache(roles: dict[str, dict]) -> KVCacheSpec | None:
    """The decoder graphs' fixed cache spec (compiler/kv_spec.py), or None for a full cache."""
    rec = next(iter(roles.values()))
    if rec.get("cache", "full") != "fixed":
        return None
    spec = KVCacheSpec.from_json(rec.get("kv_cache"))
    if not spec.fixed or spec.slots < 2:
        raise ArtifactError("a fixed-cache graph without a valid kv_cache record")
    return spec


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
    n_layers = layers.pop()
    spec = fixed_cache(roles)
    compress = load_compress(folder, graphs, spec, backend, device, threads, n_layers)
    encoder = load_encoder(folder, graphs, rec, backend, device, threads, n_layers)
    if encoder is not None and spec is not None:
        raise ArtifactError("an encoder-decoder artifact with a fixed-size cache is not supported")
    return GraphSet(static, runners, n_layers, int(model.get("kv_heads", rec.get("kv_heads"))),
                    int(model.get("head_dim", rec.get("head_dim"))), cache_len, chunk, spec, compress, encoder)


def role_graph(folder, graphs: dict, role: str, backend: str, what: str) -> tuple[Path, dict]:
    """(file on `backend`, record) of the artifact's graph with `role`; ArtifactError naming `what` without one."""
    rec = by_role(graphs).get(role)
    if rec is None:
        raise ArtifactError(f"this {what} artifact has no {role} graph (role {role})")
    key = "openvino" if backend == "openvino" else "onnx"
    return graph_file(Path(folder), rec, key, backend), rec


def load_compress(folder, graphs: dict, spec: KVCacheSpec | None, backend: str, device: str, threads: int | None,
                  layers: int):
    """A lococo cache's compression graph (role "compress") on `backend`, else None (no fixed cache, or one that
    selects slots without a graph)."""
    if spec is None or spec.kind != "lococo":
        return None
    from .fixed_cache import CompressRunner
    path, _ = role_graph(folder, graphs, "compress", backend, "lococo")
    return CompressRunner(path, backend, device, threads or default_threads(), layers)


def load_encoder(folder, graphs: dict, decoder_rec: dict, backend: str, device: str, threads: int | None,
                 layers: int):
    """The encoder of an encoder-decoder artifact (its decoder graphs' memory is "encoder"), else None."""
    if memory_of(decoder_rec) is None:
        return None
    from .encoder import EncoderRunner
    path, rec = role_graph(folder, graphs, "encoder", backend, "encoder-decoder")
    return EncoderRunner(path, backend, device, threads or default_threads(), rec, layers)
