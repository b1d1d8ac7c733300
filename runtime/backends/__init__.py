"""The one interface every backend implements, and the registry that loads them.

A backend runs one exported decoder graph (docs/architecture.md, "The exported graph contract"):

    forward(input_ids      int64 [1, T],
            position_ids   int64 [1, T],
            attention_mask int64 [1, P+T],
            cache          list of float32 [1, P, H, D]: key and value of layer 0, of layer 1, ...)
        -> logits float32 [1, T, V], new_kv list of float32 [1, T, H, D] (same order as cache)

Inputs are passed without copying where the library allows it. The returned arrays may be views of
the backend's own output buffers: they are valid until the next forward call (copy to keep them).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ...compiler.artifact import artifact_file
from ...compiler.errors import ArtifactError
from ...compiler.graph import past_key

# backend name -> module (in this package, accelc.runtime.backends) with load(artifact_dir, graph, device, threads)
BACKENDS = {
    "openvino": "openvino",
    "onnxruntime": "onnxruntime",
    "torch": "torch",
    "native": "native",
}


class Backend(Protocol):
    name: str
    device: str

    def forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]: ...


def graph_file(artifact_dir: Path, graph: dict, key: str, backend: str) -> Path:
    """The graph's file: confined to the artifact, a regular file (compiler/artifact.py artifact_file).
    ONNX external data is confined by ONNX Runtime itself (it refuses paths outside the graph's folder),
    and every file there is listed and hashed (unlisted files make verify() refuse the artifact)."""
    rel = graph.get(key)
    if not rel:
        raise ArtifactError(f"this artifact has no {key} graph file for the {backend} backend")
    return artifact_file(Path(artifact_dir), rel, f"graph {key} file")


def check_cache_dims(dims, manifest: dict, where: str) -> None:
    """The loaded graph's first cache input dims [B, P, H, D] agree with the manifest's kv_heads/head_dim."""
    model = manifest.get("model") or {}
    for axis, key in ((2, "kv_heads"), (3, "head_dim")):
        have = dims[axis] if dims is not None and len(dims) == 4 else None
        if isinstance(have, int) and key in model and have != model[key]:
            raise ArtifactError(f"the manifest says {key} = {model[key]} but {where} has {have} "
                                f"({past_key(0)} shape {list(dims)})")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_backend(name: str, artifact_dir: Path, graph: dict, device: str, threads: int | None = None,
                 manifest: dict | None = None, full_logits: bool = True, precision: str | None = None) -> Backend:
    """full_logits=False lets a backend return only the last position's logits from its stateful graph
    (faster decode; OpenVINO's stateful graph only)."""
    module = importlib.import_module(f".{BACKENDS[name]}", __package__)
    extra = {"precision": precision} if name == "native" and precision else {}     # the others always run f32
    return module.load(Path(artifact_dir), graph, device, threads or default_threads(), manifest or {},
                       full_logits, **extra)
