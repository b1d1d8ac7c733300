"""Opening an artifact: verify it, load its tokenizer and generation config, pick a backend and device,
and load the decoder graph(s).

    art = open_artifact("out/smollm2-cpu")          # NPU, then CUDA, then CPU unless told
    state = art.new_state(capacity=256)             # preallocated cache + input buffers
    logits = prefill(state, ids); tok = argmax ...  # runtime/decode.py
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.artifact import artifact_file, verify
from ..compiler.errors import ArtifactError, InputError
from ..compiler.graph import decoder_roles
from .backends import Backend, default_threads
from .device import Choice, select
from .graph_set import load_graphs, static_geometry
from .heap import trim_heap

log = logging.getLogger(__name__)


class _Context:
    """The positions a generation may use (needs .static, .cache_len, .manifest)."""

    @property
    def context(self) -> int | None:
        return context_of(self)

    @property
    def context_name(self) -> str:
        return context_name_of(self)


@dataclass
class Artifact(_Context):
    """An opened artifact with its graphs loaded on one backend/device."""

    path: Path
    manifest: dict[str, Any]
    tokenizer: Any
    generation_config: dict[str, Any]
    choice: Choice
    threads: int
    static: bool
    runners: dict[str, Backend]          # dynamic: {"decoder"}; static: {"prefill", "decode"}
    layers: int
    kv_heads: int
    head_dim: int
    cache_len: int | None = None         # static graphs: the fixed cache length
    prefill_chunk: int | None = None     # static graphs: tokens per prefill call
    eos_ids: frozenset[int] = field(default_factory=frozenset)
    kv_cache: Any = None                 # a fixed-size cache's spec (compiler/kv_spec.py), else None
    compress: Any = None                 # its compression graph runner (lococo)
    encoder: Any = None                  # an encoder-decoder's encoder (runtime/encoder.py)

    @property
    def weights(self) -> str:
        return str(self.manifest.get("options", {}).get("weights", "fp32"))

    @property
    def engine(self) -> str:
        """e.g. 'openvino-int8' (the label evaluation and benchmarks report)."""
        return f"{self.choice.backend}-{self.weights}"

    def max_tokens(self) -> int | None:
        return self.cache_len if self.static and self.kv_cache is None else None

    def new_state(self, capacity: int):
        from .graph_set import new_state
        return new_state(self, capacity)


def context_of(art) -> int | None:
    """Positions a generation may use: the static cache length, else the model's trained context (None: unknown).
    A fixed-size cache (--kv-cache) has no limit: it forgets instead."""
    if fixed_spec(art) is not None:
        return None
    if art.static:
        return art.cache_len
    n = (art.manifest.get("model") or {}).get("max_positions")
    return n if isinstance(n, int) else None


def fixed_spec(art):
    if getattr(art, "kv_cache", None) is not None:
        return art.kv_cache
    roles = getattr(art, "roles", None)
    if roles:
        from .graph_set import fixed_cache
        return fixed_cache(roles)
    return None


def context_name_of(art) -> str:
    return "the artifact's static KV cache" if art.static else "the model's context"


def load_tokenizer(path: Path):
    """The runtime's own tokenizer (runtime/tokenizer.py: tokenizers + jinja2, no transformers import) for every
    fast tokenizer; transformers' AutoTokenizer for others, or when ACCELC_TOKENIZER=transformers."""
    tdir = path / "tokenizer"
    if tdir.is_symlink() or not tdir.is_dir():
        raise ArtifactError(f"{path} has no tokenizer/ folder")
    try:
        if os.environ.get("ACCELC_TOKENIZER", "runtime") != "transformers":
            from .tokenizer import runtime_tokenizer
            tok = runtime_tokenizer(tdir)
            if tok is not None:
                trim_heap()        # the tokenizer's parse leaves ~20 MB free in the heap (runtime/heap.py)
                return tok
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(tdir))
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(f"could not load the artifact's tokenizer ({type(e).__name__}: {str(e)[:160]})") from None


def load_generation_config(path: Path) -> dict[str, Any]:
    """generation_config.json (artifact root, else tokenizer/); verify() has refused unlisted files."""
    for rel in ("generation_config.json", "tokenizer/generation_config.json"):
        if (path / rel).exists():
            p = artifact_file(path, rel)
            try:
                gen = json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ArtifactError(f"{rel} is not valid JSON ({str(e)[:120]})") from None
            if not isinstance(gen, dict):
                raise ArtifactError(f"{rel} must hold a JSON object")
            return gen
    return {}


def eos_ids(tokenizer, gen: dict) -> frozenset[int]:
    ids = set()
    for v in (tokenizer.eos_token_id, gen.get("eos_token_id")):
        if isinstance(v, int) and not isinstance(v, bool):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ArtifactError("generation_config.json eos_token_id must be an integer or a list of integers")
            ids.update(v)
        elif v is not None:
            raise ArtifactError("generation_config.json eos_token_id must be an integer or a list of integers")
    return frozenset(ids)


@dataclass
class ArtifactFiles(_Context):
    """An artifact verified and read up to its graphs: manifest, tokenizer, generation config, limits.
    Cheap next to loading the graphs, so a command can check its input (the prompt's length) first."""

    path: Path
    manifest: dict[str, Any]
    static: bool
    roles: dict[str, dict]
    tokenizer: Any
    generation_config: dict[str, Any]
    cache_len: int | None
    prefill_chunk: int | None


def read_artifact(path, verify_all: bool = False) -> ArtifactFiles:
    """Verify the artifact (verify_all: rehash every file; else files unchanged since they last verified are
    not rehashed, compiler/verified.py) and read its manifest, tokenizer and generation config."""
    path = Path(path).expanduser()
    manifest = verify(path, full=verify_all)
    static, roles = decoder_roles(manifest["graphs"])
    cache_len = chunk = None
    if static:
        cache_len, chunk = static_geometry(roles, manifest.get("options"))
    return ArtifactFiles(path, manifest, static, roles, load_tokenizer(path), load_generation_config(path),
                         cache_len, chunk)


def open_artifact(path, backend: str | None = None, device: str | None = None, threads: int | None = None,
                  report: bool = True, full_logits: bool = False, verify_all: bool = False,
                  precision: str | None = None) -> Artifact:
    """Verify and read the artifact (or take an ArtifactFiles from read_artifact), load its graphs; report the
    backend choice on stderr. full_logits: prefill(all_logits=True) must work (evaluation); the default lets
    OpenVINO's stateful graph compute only the last position's logits. precision: "f32" pins float32
    arithmetic on the native backend (docs/runtime/native.md, "Precision"); the others always run f32."""
    if precision not in (None, "auto", "f32"):
        raise InputError(f"unknown precision '{precision}' (choose auto or f32)")
    files = path if isinstance(path, ArtifactFiles) else read_artifact(path, verify_all)
    manifest, roles = files.manifest, files.roles
    first = next(iter(roles.values()))
    choice = select(manifest, first, backend, device)
    if report:
        print(f"accelc: {choice.reason}", file=sys.stderr, flush=True)
    threads = threads or default_threads()
    graphs = load_graphs(files.path, manifest["graphs"], choice.backend, choice.device, threads, manifest,
                         full_logits, precision)
    tok, gen = files.tokenizer, files.generation_config
    return Artifact(path=files.path, manifest=manifest, tokenizer=tok, generation_config=gen, choice=choice,
                    threads=threads, static=graphs.static, runners=graphs.runners, layers=graphs.layers,
                    kv_heads=graphs.kv_heads, head_dim=graphs.head_dim, cache_len=graphs.cache_len,
                    prefill_chunk=graphs.prefill_chunk, eos_ids=eos_ids(tok, gen), kv_cache=graphs.kv_cache,
                    compress=graphs.compress, encoder=graphs.encoder)
