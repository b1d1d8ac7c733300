"""Checks on a manifest before anything it names is opened: schema, path confinement, consistency.

An artifact may come from anyone. Every path in its manifest must be a plain relative path inside the
artifact (no absolute paths, no `..`, no backslashes, normalised) and listed with its hash in `files`;
graph records may only name listed files; the model record must agree with the graphs' recorded
shapes. Every failure is one ArtifactError line, raised before any file the manifest names is read.
"""
from __future__ import annotations

import posixpath
import re
from typing import Any

from .errors import ArtifactError
from .graph import CACHE_KINDS, MEMORY_ENCODER, ROLES, cache_dims, past_key, past_layers, role_of

SHA256 = re.compile(r"^[0-9a-f]{64}$")
# keys of a graph record that name files in the artifact
GRAPH_FILE_KEYS = ("onnx", "openvino", "openvino_bin", "vocab_ids")
# model-record integers and their sane ranges
MODEL_INTS = {"layers": (1, 4096), "kv_heads": (1, 4096), "head_dim": (1, 65536), "heads": (1, 4096),
              "hidden": (1, 1 << 20), "vocab": (1, 1 << 24), "max_positions": (1, 1 << 31)}
MAX_BYTES = 1 << 44


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def confined(rel: Any, where: str) -> str:
    """`rel` if it is a normalised relative POSIX path that stays inside the artifact, else ArtifactError."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"manifest {where}: expected a relative path, got {type(rel).__name__} {rel!r:.60}")
    bad = (rel.startswith("/") or "\\" in rel or "\x00" in rel or ":" in rel.split("/")[0]
           or rel != posixpath.normpath(rel) or any(p in ("", ".", "..") for p in rel.split("/")))
    if bad or any(ord(c) < 32 for c in rel):
        raise ArtifactError(f"manifest {where}: path {rel!r:.80} is not a plain relative path inside the artifact")
    return rel


def _check_files(files: Any) -> dict[str, dict]:
    if not isinstance(files, dict):
        raise ArtifactError("manifest 'files' must be an object of {path: {sha256, bytes}}")
    for rel, info in files.items():
        confined(rel, "files")
        if rel == "manifest.json":
            raise ArtifactError("manifest 'files' must not list manifest.json itself")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) \
                or not SHA256.match(info["sha256"]):
            raise ArtifactError(f"manifest files[{rel!r}]: sha256 must be 64 lowercase hex digits")
        b = info.get("bytes")
        if not _is_int(b) or not 0 <= b <= MAX_BYTES:
            raise ArtifactError(f"manifest files[{rel!r}]: bytes must be a non-negative integer")
    return files


def graph_files(graph: dict) -> list[str]:
    """The artifact files a graph record names (an OpenVINO .xml brings its .bin: `openvino_bin`, else beside it)."""
    out = []
    for key in GRAPH_FILE_KEYS:
        rel = graph.get(key)
        if rel is None:
            continue
        out.append(rel)
        if key == "openvino" and not graph.get("openvino_bin") and isinstance(rel, str) and rel.endswith(".xml"):
            out.append(rel[:-4] + ".bin")
    return out


def _check_graphs(graphs: Any, files: dict, model: dict) -> None:
    if not isinstance(graphs, dict) or not graphs:
        raise ArtifactError("manifest 'graphs' must be a non-empty object")
    for name, g in graphs.items():
        if not isinstance(g, dict):
            raise ArtifactError(f"manifest graphs[{name!r}] must be an object")
        _typed(g, f"graphs[{name!r}]", {"inputs": (dict,), "outputs": (dict,), "static": (bool,), "role": (str,),
                                        "cache": (str,), "layers": (list,), "weights": (str,)})
        if "role" in g and g["role"] not in ROLES:
            raise ArtifactError(f"manifest graphs[{name!r}].role {g['role']!r:.40} is not one of {', '.join(ROLES)}")
        if g.get("memory") not in (None, MEMORY_ENCODER):
            raise ArtifactError(f"manifest graphs[{name!r}].memory {g['memory']!r:.40} is not known (update accelc)")
        if "cache" in g and g["cache"] not in CACHE_KINDS:
            raise ArtifactError(f"manifest graphs[{name!r}].cache {g['cache']!r:.40} is not one of "
                                f"{', '.join(CACHE_KINDS)} (an artifact from a newer accelc?)")
        for io in ("inputs", "outputs"):
            for k, shape in (g.get(io) or {}).items():
                dims = shape.get("shape") if isinstance(shape, dict) else shape
                if not isinstance(dims, list) or not all(isinstance(d, (int, str)) for d in dims):
                    raise ArtifactError(f"manifest graphs[{name!r}].{io}[{k!r}] must be a list of dimensions")
        for key in GRAPH_FILE_KEYS:
            if key in g and g[key] is not None:
                confined(g[key], f"graphs[{name!r}].{key}")
        for rel in graph_files(g):
            if rel not in files:
                raise ArtifactError(f"manifest graphs[{name!r}] names {rel}, which 'files' does not list with a hash")
        role = ROLES.get(role_of(name, g))
        if role is None or role.whole:
            _check_decoder_graph(name, g, model)


def _check_decoder_graph(name: str, g: dict, model: dict) -> None:
    """The graph record's cache dims and layer count agree with the model record."""
    for key in ("num_layers", "kv_heads", "head_dim", "vocab"):
        if key in g and not _is_int(g[key]):
            raise ArtifactError(f"manifest graphs[{name!r}].{key} must be an integer")
    pairs = [("num_layers", "layers"), ("kv_heads", "kv_heads"), ("head_dim", "head_dim"), ("vocab", "vocab")]
    dims = cache_dims(g)
    if dims is not None:
        pairs_dims = {"kv_heads": dims[2], "head_dim": dims[3]}
        for k, v in pairs_dims.items():
            if _is_int(v) and v != model[k]:
                raise ArtifactError(f"manifest model.{k} = {model[k]} disagrees with graphs[{name!r}] "
                                    f"{past_key(0)} shape {list(dims)}")
    for gk, mk in pairs:
        if gk in g and mk in model and g[gk] != model[mk]:
            raise ArtifactError(f"manifest model.{mk} = {model[mk]} disagrees with graphs[{name!r}].{gk} = {g[gk]}")
    inputs = g.get("inputs")
    if isinstance(inputs, dict) and "num_layers" in g:
        n = len(past_layers(inputs))
        if n != g["num_layers"]:
            raise ArtifactError(f"manifest graphs[{name!r}] records {n} cache inputs for {g['num_layers']} layers")


def _check_model(model: Any) -> dict:
    if not isinstance(model, dict):
        raise ArtifactError("manifest 'model' must be an object")
    for key in ("layers", "kv_heads", "head_dim"):
        if key not in model:
            raise ArtifactError(f"manifest model record lacks {key}")
    for key, (lo, hi) in MODEL_INTS.items():
        if key in model and (not _is_int(model[key]) or not lo <= model[key] <= hi):
            raise ArtifactError(f"manifest model.{key} must be an integer in [{lo}, {hi}], got {model[key]!r:.40}")
    return model


def _typed(obj: dict, where: str, fields: dict[str, tuple], nullable: bool = True) -> None:
    """Each present field of `obj` has one of the given types (bool is not an int here; None where nullable)."""
    for key, types in fields.items():
        if key in obj and (obj[key] is not None or not nullable):
            v = obj[key]
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                names = "/".join(t.__name__ for t in types)
                raise ArtifactError(f"manifest {where}.{key} must be {names}, got {type(v).__name__}")


def _check_passes(passes: Any) -> None:
    if passes is None:
        return
    if not isinstance(passes, list) or not all(isinstance(p, dict) for p in passes):
        raise ArtifactError("manifest 'passes' must be a list of objects")
    for i, p in enumerate(passes):
        _typed(p, f"passes[{i}]", {"name": (str,), "seconds": (int, float), "changed": (bool,),
                                    "metrics": (dict,), "config": (dict,), "memory": (dict,)}, nullable=False)


def _check_sections(m: dict) -> None:
    for key in ("options", "target", "source", "records"):
        if key in m and m[key] is not None and not isinstance(m[key], dict):
            raise ArtifactError(f"manifest '{key}' must be an object")
    _typed(m, "", {"created": (str,)})
    _typed(m.get("source") or {}, "source", {"name": (str,), "format": (str,), "path": (str,), "sha256": (str,)})
    target = m.get("target") or {}
    _typed(target, "target", {"name": (str,), "static_shapes": (bool,), "devices": (list,)})
    if not all(isinstance(d, str) for d in target.get("devices") or []):
        raise ArtifactError("manifest target.devices must be a list of strings")
    _typed(m.get("options") or {}, "options", {"weights": (str,), "cache_len": (int,), "prefill_chunk": (int,),
                                               "prune": (str,), "quantize": (str,), "drafter": (str,),
                                               "kv_cache": (str,), "convert": (str,)})
    _check_passes(m.get("passes"))


def check_manifest(m: dict) -> dict:
    """Schema, confinement and consistency of a manifest (already known to be an accelc manifest)."""
    files = _check_files(m.get("files"))
    model = _check_model(m.get("model"))
    _check_sections(m)
    _check_graphs(m.get("graphs"), files, model)
    return m
