"""Speculative decoding over an artifact's fused-drafter graphs (passes/drafting/export_drafter.py).

    spec = load_drafter(art)                       # None when the artifact has no drafter graphs
    result, stats = generate_speculative(art, spec, prompt_ids, 64)

The trunk graph (layers [0, L)) runs once per token; its KV cache and hidden states are shared by the
draft head and the verify tail (runtime/speculative/steps.py). Greedy decoding is lossless (same tokens as
plain decoding); sampling uses the rejection rule (runtime/speculative/loop.py). OpenVINO is preferred,
then ONNX Runtime: the artifact's backend choice is kept when it is one of them.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...compiler.artifact import artifact_file
from ...compiler.errors import ArtifactError, InputError
from ...compiler.graph import DRAFTER_ROLES, role_of
from ..kv_cache import KVCache
from ..sampling import Sampler, SamplingConfig
from .steps import FusedDraftStep, FusedTargetStep, GraphFn, fused_steps, is_stateful
from .loop import SpecConfig, SpecStats, speculative_generate

ROLES = DRAFTER_ROLES
SPEC_BACKENDS = ("openvino", "onnxruntime")


@dataclass
class Drafter:
    backend: str
    fns: dict[str, GraphFn]              # role -> graph function
    records: dict[str, dict]             # role -> manifest graph record
    vocab_ids: np.ndarray | None
    hidden_size: int
    vocab_size: int

    def steps(self, capacity: int) -> tuple[FusedTargetStep, FusedDraftStep]:
        """Fresh shared-trunk step models with caches of `capacity` tokens."""
        def cache(role):
            r = self.records[role]
            return KVCache(r["num_layers"], capacity, r["kv_heads"], r["head_dim"],
                           allocate=not is_stateful(self.fns[role]))
        return fused_steps(*((self.fns[r], cache(r)) for r in ("trunk", "draft_head", "verify_tail")),
                           self.hidden_size, self.vocab_size, self.vocab_ids)


def drafter_records(manifest: dict) -> dict[str, dict] | None:
    """role -> graph record of the fused drafter's graphs, or None when the artifact has none."""
    found = {role_of(n, r): r for n, r in (manifest.get("graphs") or {}).items() if role_of(n, r) in ROLES}
    if not found:
        return None
    missing = [r for r in ROLES if r not in found]
    if missing:
        raise ArtifactError(f"the artifact's drafter graphs are incomplete (missing roles: {', '.join(missing)})")
    return found


def onnxruntime_graph_fn(path, input_names: Sequence[str], output_names: Sequence[str], threads: int) -> GraphFn:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins, outs = list(input_names), list(output_names)

    def fn(inputs, position_ids, attention_mask, past):
        res = sess.run(outs, dict(zip(ins, (inputs, position_ids, attention_mask, *past))))
        return res[0], res[1:]
    return fn


def load_drafter(art, backend: str | None = None) -> Drafter | None:
    """The drafter's graph functions on the artifact's backend (openvino or onnxruntime); None without drafter."""
    backend = backend or art.choice.backend
    device = art.choice.device if art.choice.backend == "openvino" else "cpu"
    return open_drafter(art.path, art.manifest, backend, art.threads, device)


def open_drafter(folder, manifest: dict, backend: str, threads: int, device: str = "cpu") -> Drafter | None:
    """The drafter graphs of `manifest` (or {"graphs": ...}) in `folder` as graph functions on `backend`; None when
    there are none. The compiler's drafter validation (passes/drafting/export_drafter.py) runs them this way too."""
    recs = drafter_records(manifest)
    if recs is None:
        return None
    if backend not in SPEC_BACKENDS:
        raise InputError(f"speculative decoding runs on {' or '.join(SPEC_BACKENDS)}, not {backend} "
                         "(pass --no-speculative, or --backend openvino)")
    fns = {}
    for role, r in recs.items():
        key = "openvino" if backend == "openvino" else "onnx"
        if not r.get(key):
            raise ArtifactError(f"the drafter graph '{role}' has no {key} file")
        path = artifact_file(folder, r[key], f"drafter graph {role}")
        ins, outs = list(r["inputs"]), list(r["outputs"])
        if backend == "openvino":
            from .openvino import openvino_graph_fn
            fns[role] = openvino_graph_fn(path, ins, outs, threads, device)
        else:
            fns[role] = onnxruntime_graph_fn(path, ins, outs, threads)
    vocab = recs["draft_head"].get("vocab_ids")
    vocab_ids = np.asarray(json.loads(artifact_file(folder, vocab).read_text()), dtype=np.int64) if vocab else None
    return Drafter(backend, fns, recs, vocab_ids, int(recs["trunk"]["hidden_size"]),
                   int(recs["verify_tail"]["vocab"]))


def generate_speculative(art, drafter: Drafter, prompt_ids: Sequence[int], max_new_tokens: int,
                         sampling: SamplingConfig = SamplingConfig(), config: SpecConfig = SpecConfig(),
                         stop: Sequence[str] = ()):
    """-> (GenerationResult, SpecStats). EOS ends generation (not included in tokens, as in generate());
    stop strings cut the text (decoding itself runs to EOS or the token budget)."""
    from ..generate import GenerationResult
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    target, draft = drafter.steps(len(prompt_ids) + max_new_tokens + config.k_max + 2)
    t0 = time.perf_counter()
    tokens, stats = speculative_generate(target, draft, list(prompt_ids), max_new_tokens, config, sampling,
                                         eos_ids=sorted(art.eos_ids), sampler=Sampler(sampling))
    wall = time.perf_counter() - t0
    reason = "length"
    if tokens and tokens[-1] in art.eos_ids:
        tokens, reason = tokens[:-1], "eos"
    text = art.tokenizer.decode(tokens, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if hits:
        text, reason = text[:min(hits)], "stop"
    decode_s = max(wall - stats.prefill_s, 0.0)
    result = GenerationResult(text=text, tokens=tokens, prompt_tokens=len(prompt_ids), stop_reason=reason,
                              ttft_s=stats.prefill_s, decode_s=decode_s, decode_steps=max(len(tokens) - 1, 0))
    return result, stats


def run_speculative(art, prompt_ids: Sequence[int], max_new_tokens: int, sampling: SamplingConfig, k: int = 3,
                    draft_mode: str = "fixed", stop: Sequence[str] = (), warn=None):
    """Speculative decoding when the artifact has drafter graphs and runs on a backend that can: None otherwise
    (the caller decodes token by token; `warn(message)` hears why when the drafter exists but cannot run),
    else (result, stats)."""
    if drafter_records(art.manifest) is None:
        return None
    if art.choice.backend not in SPEC_BACKENDS:
        if warn:
            warn(f"speculative decoding needs {' or '.join(SPEC_BACKENDS)}; decoding token by token on "
                 f"{art.choice.backend}")
        return None
    k = int(k)
    if k < 1:
        raise InputError(f"--draft-k must be >= 1, got {k}")
    config = SpecConfig(k=k, draft_mode=draft_mode, k_max=max(k, 8) if draft_mode == "heuristic" else k)
    drafter = load_drafter(art)
    return generate_speculative(art, drafter, prompt_ids, max_new_tokens, sampling, config, stop)
