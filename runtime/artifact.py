"""Opening an artifact: verify it, load its tokenizer and generation config, pick a backend and device,
and load the decoder graph(s).

    art = open_artifact("out/smollm2-cpu")          # NPU, then CUDA, then CPU unless told
    state = art.new_state(capacity=256)             # preallocated cache + input buffers
    logits = prefill(state, ids); tok = argmax ...  # runtime/decode.py
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.artifact import verify
from ..compiler.errors import ArtifactError
from .backends import Backend, default_threads, load_backend
from .device import Choice, select

log = logging.getLogger(__name__)


@dataclass
class Artifact:
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

    @property
    def weights(self) -> str:
        return str(self.manifest.get("options", {}).get("weights", "fp32"))

    @property
    def engine(self) -> str:
        """e.g. 'openvino-int8' (the label evaluation and benchmarks report)."""
        return f"{self.choice.backend}-{self.weights}"

    def max_tokens(self) -> int | None:
        return self.cache_len if self.static else None

    def new_state(self, capacity: int):
        from .decode import DecodeState
        return DecodeState(self, capacity)


def pick_graphs(graphs: dict[str, dict]) -> tuple[bool, dict[str, dict]]:
    """-> (static, {role: graph record}) from manifest['graphs']."""
    if "prefill" in graphs and "decode" in graphs:
        return True, {"prefill": graphs["prefill"], "decode": graphs["decode"]}
    if "decoder" in graphs:
        return bool(graphs["decoder"].get("static")), {"decoder": graphs["decoder"]}
    names = ", ".join(graphs) or "none"
    raise ArtifactError(f"the artifact has no decoder graph (graphs: {names}; expected 'decoder' or 'prefill'+'decode')")


def _dim(graph: dict, name: str, axis: int) -> int | None:
    shape = (graph.get("inputs") or {}).get(name)
    if isinstance(shape, dict):
        shape = shape.get("shape")
    if isinstance(shape, (list, tuple)) and len(shape) > axis and isinstance(shape[axis], int):
        return shape[axis]
    return None


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    tdir = path / "tokenizer"
    if not tdir.is_dir():
        raise ArtifactError(f"{path} has no tokenizer/ folder")
    try:
        return AutoTokenizer.from_pretrained(str(tdir))
    except Exception as e:
        raise ArtifactError(f"could not load the artifact's tokenizer ({type(e).__name__}: {str(e)[:160]})") from None


def load_generation_config(path: Path) -> dict[str, Any]:
    for p in (path / "generation_config.json", path / "tokenizer" / "generation_config.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{p.relative_to(path)} is not valid JSON ({e})") from None
    return {}


def eos_ids(tokenizer, gen: dict) -> frozenset[int]:
    ids = set()
    for v in (tokenizer.eos_token_id, gen.get("eos_token_id")):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return frozenset(ids)


def open_artifact(path, backend: str | None = None, device: str | None = None, threads: int | None = None,
                  report: bool = True, full_logits: bool = False) -> Artifact:
    """Verify the artifact (every file's sha256), load tokenizer and graphs; report the backend choice on stderr.
    full_logits: prefill(all_logits=True) must work (evaluation); the default lets OpenVINO's stateful graph
    compute only the last position's logits."""
    path = Path(path).expanduser()
    manifest = verify(path)
    static, roles = pick_graphs(manifest.get("graphs") or {})
    first = next(iter(roles.values()))
    choice = select(manifest, first, backend, device)
    if report:
        print(f"accelc: {choice.reason}", file=sys.stderr, flush=True)
    threads = threads or default_threads()
    runners = {role: load_backend(choice.backend, path, g, choice.device, threads, manifest, full_logits)
               for role, g in roles.items()}
    layers = {r.layers for r in runners.values()}
    if len(layers) != 1:
        raise ArtifactError(f"the artifact's graphs disagree on the number of layers: {sorted(layers)}")
    model = manifest.get("model", {})
    try:
        kv_heads, head_dim = int(model["kv_heads"]), int(model["head_dim"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError("the manifest's model record lacks kv_heads/head_dim") from None
    cache_len = chunk = None
    if static:
        opts = manifest.get("options", {})
        cache_len = _dim(roles["decode"], "past_key.0", 1) or opts.get("cache_len")
        chunk = _dim(roles["prefill"], "input_ids", 1) or opts.get("prefill_chunk")
        if not cache_len or not chunk:
            raise ArtifactError("static graphs without a recorded cache length / prefill chunk")
    tok = load_tokenizer(path)
    gen = load_generation_config(path)
    return Artifact(path=path, manifest=manifest, tokenizer=tok, generation_config=gen, choice=choice,
                    threads=threads, static=static, runners=runners, layers=layers.pop(), kv_heads=kv_heads,
                    head_dim=head_dim, cache_len=cache_len, prefill_chunk=chunk, eos_ids=eos_ids(tok, gen))
