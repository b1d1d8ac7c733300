"""Speculative decoding over an artifact: its fused-drafter graphs (passes/drafting/export_drafter.py), prompt
lookup on its own decoder (any artifact, any backend), or both.

    spec = load_drafter(art)                       # None when the artifact has no drafter graphs
    result, stats = generate_speculative(art, spec, prompt_ids, 64)
    result, stats = run_speculative(art, prompt_ids, 64, SamplingConfig(), draft_mode="lookup")

The trunk graph (layers [0, L)) runs once per token; its KV cache and hidden states are shared by the
draft head and the verify tail (runtime/speculative/steps.py). Greedy decoding is lossless (same tokens as
plain decoding); sampling uses the rejection rule (runtime/speculative/loop.py). OpenVINO is preferred,
then ONNX Runtime: the artifact's backend choice is kept when it is one of them. On the native backend an EAGLE
drafter's draft graph runs on OpenVINO and the native decoder itself verifies (eagle.BackendFeatureTarget).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...compiler.artifact import artifact_file
from ...compiler.errors import ArtifactError, InputError
from ...compiler.kv_spec import KVCacheSpec
from ...compiler.graph import DRAFTER_ROLES, EAGLE_ROLES, EAGLE_STEP, cache_dims, is_new, record_dim, role_of
from ..backends import load_backend
from ..decode import decode_one, prefill
from ..kv_cache import KVCache
from ..sampling import Sampler, SamplingConfig
from .cost import CostModel, measure_verify
from .loop import SpecConfig, speculative_generate
from .proposers import CombinedProposer, LookupProposer, as_proposer
from .eagle import BackendFeatureTarget, RingRows, eagle_steps
from .steps import GraphFn, StaticGraph, fused_steps, is_stateful

ROLES = DRAFTER_ROLES
SPEC_BACKENDS = ("openvino", "onnxruntime")
NATIVE = "native"                        # verifies EAGLE drafts with its own decoder (load_drafter)


@dataclass
class FixedTarget:
    """What an EAGLE target graph exported over a fixed-size cache runs with (runtime/fixed_cache.FixedState): the
    cache spec, the lococo compression graph (else None) and the geometry FixedState reads (static, layers, ...)."""
    spec: object
    compress: object
    static: bool
    layers: int
    kv_heads: int
    head_dim: int
    prefill_chunk: int | None = None
    cache_len: int | None = None


@dataclass
class Drafter:
    backend: str
    fns: dict[str, GraphFn]              # role -> graph function
    records: dict[str, dict]             # role -> manifest graph record
    vocab_ids: np.ndarray | None
    hidden_size: int
    vocab_size: int
    target: object | None = None         # a decoder backend that verifies and reports features itself (native)
    accept_head: object | None = None    # EAGLE: SpecDec++'s acceptance head (accept_head.AcceptHead), if trained
    fixed: FixedTarget | None = None     # EAGLE over a fixed-size cache: its spec, compression graph and geometry

    @property
    def kind(self) -> str:
        return "eagle" if "eagle_draft" in self.records else "fused"

    def steps(self, capacity: int):
        """Fresh (target step, draft) with caches of `capacity` tokens: the fused drafter's shared-trunk step
        models, or EAGLE's feature-keeping target and its proposer (runtime/speculative/eagle.py)."""
        def cache(role):
            r = self.records[role]
            size = capacity
            if r.get("static"):         # a fixed-shape graph reads its whole cache of the compiled length
                size = static_capacity(r)
                if capacity > size:
                    raise InputError(f"speculative decoding needs {capacity} cache positions; the artifact's static "
                                     f"KV cache holds {size} (shorten the prompt or --max-new-tokens, or compile "
                                     "with a larger --cache-len)")
            return KVCache(r["num_layers"], size, r["kv_heads"], r["head_dim"],
                           allocate=not is_stateful(self.fns[role]))
        if self.kind == "eagle":
            window = None
            if self.fixed is not None:        # flat memory: the drafter's cache holds at most M pairs plus a round
                f = self.fixed
                window = f.spec.slots
                capacity = min(capacity, 2 * window + f.spec.buffer + 2)
                target = FixedFeatureTarget(f, self.fns["eagle_target"], capacity, self.hidden_size)
            elif self.target is not None:
                target = BackendFeatureTarget(self.target, capacity, self.hidden_size)
            else:
                target = (self.fns["eagle_target"], cache("eagle_target"))
            t, proposer = eagle_steps(target, (self.fns["eagle_draft"], cache("eagle_draft")), self.hidden_size,
                                      self.vocab_size, self.vocab_ids)
            proposer.head, proposer.window = self.accept_head, window
            return t, proposer
        return fused_steps(*((self.fns[r], cache(r)) for r in ("trunk", "draft_head", "verify_tail")),
                           self.hidden_size, self.vocab_size, self.vocab_ids)


def static_width(record: dict) -> int:
    """New tokens per call of a fixed-shape drafter graph (its first input's second dimension)."""
    return int(record_dim(record, next(iter(record["inputs"])), 1))


def static_capacity(record: dict) -> int:
    """Cache positions a fixed-shape drafter graph reads."""
    return int(cache_dims(record)[1])


def drafter_records(manifest: dict) -> dict[str, dict] | None:
    """role -> graph record of the drafter's graphs (fused or EAGLE), or None when the artifact has none."""
    found = {role_of(n, r): r for n, r in (manifest.get("graphs") or {}).items()
             if role_of(n, r) in ROLES + EAGLE_ROLES + (EAGLE_STEP,)}
    if not found:
        return None
    roles = EAGLE_ROLES if any(r in EAGLE_ROLES for r in found) else ROLES
    missing = [r for r in roles if r not in found]
    if missing:
        raise ArtifactError(f"the artifact's drafter graphs are incomplete (missing roles: {', '.join(missing)})")
    optional = (EAGLE_STEP,) if roles == EAGLE_ROLES and EAGLE_STEP in found else ()
    return {r: found[r] for r in roles + optional}


def onnxruntime_graph_fn(path, input_names: Sequence[str], output_names: Sequence[str], threads: int) -> GraphFn:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins, outs = list(input_names), list(output_names)
    main = sum(1 for n in outs if not is_new(n))

    def fn(inputs, position_ids, attention_mask, past):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        res = sess.run(outs, dict(zip(ins, (*xs, position_ids, attention_mask, *past))))
        return (tuple(res[:main]) if main > 1 else res[0]), res[main:]
    return fn


def load_drafter(art, backend: str | None = None) -> Drafter | None:
    """The drafter's graph functions on the artifact's backend (openvino or onnxruntime); None without drafter.
    On the native backend (EAGLE drafters only) the artifact's native decoder verifies and reports the features,
    and the drafter runs natively beside it (native/eagle_draft.*: runtime/speculative/native_draft.py) when the
    artifact has it and ACCELC_NATIVE_DRAFT is not 0, else its draft graph on OpenVINO with one thread."""
    backend = backend or art.choice.backend
    if backend == NATIVE:
        recs = drafter_records(art.manifest)
        if recs is None:
            return None
        if "eagle_draft" not in recs:
            raise InputError("the native backend verifies for EAGLE drafters only; this artifact's fused drafter "
                             "runs on openvino or onnxruntime (pass --backend openvino)")
        target = art.runners["decoder"]
        native = ((art.manifest.get("records") or {}).get("native") or {}).get("eagle_draft")
        if native and os.environ.get("ACCELC_NATIVE_DRAFT", "1").strip() != "0":
            return native_eagle_drafter(art.path, art.manifest, native, target)
        drafter = open_drafter(art.path, art.manifest, "openvino", 1, "cpu", roles=("eagle_draft",))
        drafter.target = target
        return drafter
    device = art.choice.device if art.choice.backend == "openvino" else "cpu"
    same = backend == art.choice.backend          # the artifact's compression graph runs on its own backend
    return open_drafter(art.path, art.manifest, backend, art.threads, device,
                        compress=getattr(art, "compress", None) if same else None)


def native_eagle_drafter(folder, manifest: dict, record: dict, target) -> Drafter:
    """The EAGLE drafter run natively (record: the manifest's records.native.eagle_draft) beside the native decoder
    backend `target`, which verifies and reports the features (load_drafter; the compiler's validate-eagle)."""
    from .native_draft import open_native_draft
    drafter = open_drafter(folder, manifest, "openvino", 1, "cpu", roles=())   # vocabulary and head, no graphs
    drafter.fns["eagle_draft"] = open_native_draft(folder, record, target)
    drafter.backend, drafter.target = NATIVE, target
    return drafter


def spec_backend_problem(art) -> str | None:
    """Why the artifact's drafter cannot run on the chosen backend, or None."""
    eagle = "eagle_draft" in (drafter_records(art.manifest) or {})
    able = SPEC_BACKENDS + ((NATIVE,) if eagle else ())
    if art.choice.backend in able:
        return None
    return f"this artifact's drafter runs on {' or '.join(able)}; decoding token by token on {art.choice.backend}"


def open_drafter(folder, manifest: dict, backend: str, threads: int, device: str = "cpu",
                 roles: Sequence[str] | None = None, compress=None) -> Drafter | None:
    """The drafter graphs of `manifest` (or {"graphs": ...}) in `folder` as graph functions on `backend` (only
    `roles` when given); None when there are none. The compiler's drafter validation
    (passes/drafting/export_drafter.py) runs them this way too. compress: the artifact's already loaded lococo
    compression graph, shared by an EAGLE target over its fixed cache (else it is loaded here)."""
    recs = drafter_records(manifest)
    if recs is None:
        return None
    if backend not in SPEC_BACKENDS:
        raise InputError(f"speculative decoding runs on {' or '.join(SPEC_BACKENDS)}, not {backend} "
                         "(pass --no-speculative, or --backend openvino)")
    fns = {}
    for role, r in recs.items():
        if roles is not None and role not in roles and not (role == EAGLE_STEP and "eagle_target" in roles):
            continue
        key = "openvino" if backend == "openvino" else "onnx"
        if not r.get(key):
            raise ArtifactError(f"the drafter graph '{role}' has no {key} file")
        path = artifact_file(folder, r[key], f"drafter graph {role}")
        if r.get("cache") == "fixed":             # EAGLE's target over a fixed cache: the decoder backends run it
            fns[role] = load_backend(backend, Path(folder), r, device, threads, manifest)
            continue
        ins, outs = list(r["inputs"]), list(r["outputs"])
        static = bool(r.get("static"))
        if backend == "openvino":
            from .openvino import openvino_graph_fn
            fns[role] = openvino_graph_fn(path, ins, outs, threads, device, stateful=False if static else None)
        else:
            fns[role] = onnxruntime_graph_fn(path, ins, outs, threads)
        if static:          # --target npu: fixed shapes, run in windows of the graph's width (steps.StaticGraph)
            fns[role] = StaticGraph({static_width(r): fns[role]})
    step = fns.pop(EAGLE_STEP, None)
    if step is not None and "eagle_target" in fns:    # the one-token target joins the verifying one
        fns["eagle_target"] = StaticGraph({**step.fns, **fns["eagle_target"].fns})
    eagle = "eagle_draft" in recs
    draft, target = ("eagle_draft", "eagle_target") if eagle else ("draft_head", "verify_tail")
    vocab = recs[draft].get("vocab_ids")
    vocab_ids = np.asarray(json.loads(artifact_file(folder, vocab).read_text()), dtype=np.int64) if vocab else None
    head = recs[draft].get("accept_head") if eagle else None
    if head:
        from .accept_head import load_head
        head = load_head(artifact_file(folder, head, "the drafter's acceptance head"))
    return Drafter(backend, fns, recs, vocab_ids, int(recs[draft if eagle else "trunk"]["hidden_size"]),
                   int(recs[target]["vocab"]), accept_head=head,
                   fixed=fixed_target(folder, manifest, recs, backend, device, threads, compress))


def fixed_target(folder, manifest: dict, recs: dict, backend: str, device: str, threads: int,
                 compress=None) -> FixedTarget | None:
    """An EAGLE target exported over a fixed-size cache: its spec, compression graph (`compress` when the caller has
    it loaded) and geometry; else None."""
    rec = recs.get("eagle_target") or {}
    if rec.get("cache") != "fixed":
        return None
    from ..graph_set import load_compress
    spec = KVCacheSpec.from_json(rec.get("kv_cache"))
    layers = int(rec["num_layers"])
    if compress is None:
        compress = load_compress(folder, manifest.get("graphs") or {}, spec, backend, device, threads, layers)
    return FixedTarget(spec, compress, False, layers, int(rec["kv_heads"]), int(rec["head_dim"]))


class DecoderStep:
    """The artifact's own decoder as the target step model, on whatever backend opened it (decode.py's prefill
    over a DecodeState; the artifact must be opened with full_logits=True). Prompt lookup needs no drafter
    graphs, so it verifies on every backend this way."""

    def __init__(self, art, capacity: int, state=None):
        self.state = state if state is not None else art.new_state(capacity)
        self.static = bool(art.static)

    @property
    def length(self) -> int:
        return self.state.cache.length

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        tokens = list(tokens)
        if self.static and len(tokens) == 1:    # the one-token graph: a round without drafts costs a plain step
            return np.array(decode_one(self.state, tokens[0]))[None]     # (prefill pads to the chunk graph)
        return prefill(self.state, tokens, all_logits=True)

    def forward_last(self, tokens: Sequence[int], n: int) -> np.ndarray:
        """Logits of the last n tokens only (a long prompt's other rows are never copied out)."""
        tokens = list(tokens)
        if self.static and len(tokens) == 1:
            return self.forward(tokens)
        if n == 1 and getattr(self.state, "fixed", False):
            # a fixed cache cuts between chunks: the prompt goes in whole, in the chunks plain prefill uses
            return prefill(self.state, tokens)[None]
        if len(tokens) > n:
            prefill(self.state, tokens[:-n])
        return prefill(self.state, tokens[-n:], all_logits=True)

    def truncate(self, length: int) -> None:
        self.state.cache.rollback(min(length, self.length))

    def room(self) -> int | None:
        """Tokens the next verify pass may take (a fixed-size cache: up to its next cut); None: no limit."""
        return self.state.room() if getattr(self.state, "fixed", False) else None


class FixedFeatureTarget(DecoderStep):
    """EAGLE's feature target over the artifact's fixed-size cache (docs/runtime/kv-cache.md): the EAGLE target graph
    (exported with attn_scores outputs) runs through runtime/fixed_cache.FixedState, which cuts the cache as plain
    decoding does, and hands its hidden states to a ring of the newest positions (eagle.RingRows); the rest is
    DecoderStep's (room() caps the drafts so every cut falls between rounds)."""

    RING = 1024        # hidden-state rows kept (positions), whatever the text's length

    def __init__(self, fixed: FixedTarget, backend, capacity: int, hidden_size: int):
        from ..fixed_cache import FixedState
        self.features = RingRows(min(int(capacity), self.RING), hidden_size)
        super().__init__(fixed, capacity, FixedState(fixed, fixed.spec, fixed.compress, runner=backend,
                                                     on_hidden=self._keep))

    def _keep(self, start: int, rows: np.ndarray) -> None:
        self.features[start:start + len(rows)] = rows


def generate_speculative(art, drafter: Drafter | None, prompt_ids: Sequence[int], max_new_tokens: int,
                         sampling: SamplingConfig = SamplingConfig(), config: SpecConfig = SpecConfig(),
                         stop: Sequence[str] = (), lookup: LookupProposer | None = None):
    """-> (GenerationResult, SpecStats). Drafts come from the fused drafter's graphs (`drafter`), prompt lookup
    (`lookup`, on the artifact's own decoder when there is no drafter), or both (lookup first). EOS ends
    generation (not included in tokens, as in generate()); stop strings cut the text (decoding itself runs to
    EOS or the token budget)."""
    from ..generate import GenerationResult
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if drafter is None and lookup is None:
        raise InputError("speculative decoding needs drafter graphs or prompt lookup")
    capacity = max(len(prompt_ids) + max_new_tokens, COST_CONTEXT) + config.k_max + 2
    if drafter is not None:
        target, draft = drafter.steps(capacity)
        model = as_proposer(draft)
        proposer = model if lookup is None else CombinedProposer(lookup, model)
    else:
        target, proposer = DecoderStep(art, capacity), lookup
    cost = None
    if config.draft_mode in ("cost", "specdec"):   # one cost model per artifact, drafter and cap: learns across prompts
        key = (drafter.kind if drafter is not None else None, lookup is not None, config.k_max)
        models = art.__dict__.setdefault("_spec_costs", {})
        if key not in models:
            models[key] = CostModel(config.k_max)
            measure_verify(models[key], target, COST_CONTEXT)
        cost = models[key]
    t0 = time.perf_counter()
    tokens, stats = speculative_generate(target, proposer, list(prompt_ids), max_new_tokens, config, sampling,
                                         eos_ids=sorted(art.eos_ids), sampler=Sampler(sampling), cost=cost)
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


MODEL_MODES = ("confidence", "fixed", "heuristic", "cost", "specdec")   # the drafter's draft-length rules
LOOKUP_MODES = ("lookup", "combined")                    # prompt lookup; combined adds the drafter where it has none
RUN_MODES = MODEL_MODES + LOOKUP_MODES
LOOKUP_K = 8                                             # draft cap of the lookup modes
COST_CONTEXT = 32                                        # cached positions while the cost model times verify passes


def wants_full_logits(draft_mode: str, speculative: bool = True) -> bool:
    """Whether `accelc run` must open the artifact with full logits (lookup verifies on its decoder)."""
    return speculative and draft_mode in LOOKUP_MODES


def check_fuzzy(spec: str | None) -> dict:
    """'js:0.3' -> SpecConfig fields {fuzzy: "js", fuzzy_threshold: 0.3}, the divergence's name and the threshold
    checked (InputError) before anything loads; None or '' -> {} (exact acceptance)."""
    if not spec:
        return {}
    div, sep, thr = spec.partition(":")
    if not sep:
        raise InputError(f"--fuzzy takes DIV:THRESHOLD (e.g. js:0.3), got '{spec}'")
    try:
        value = float(thr)
    except ValueError:
        raise InputError(f"--fuzzy threshold must be a number, got '{thr}'") from None
    fz = {"fuzzy": div.strip().lower(), "fuzzy_threshold": value}
    SpecConfig(**fz)
    return fz


def run_speculative(art, prompt_ids: Sequence[int], max_new_tokens: int, sampling: SamplingConfig,
                    k: int | None = None, draft_mode: str = "fixed", stop: Sequence[str] = (), warn=None,
                    fuzzy: str | None = None, reject_threshold: float | None = None, model_rule: str = "cost"):
    """Speculative decoding when the artifact has drafter graphs on a backend that can run them, or when a
    lookup mode asks for it (every artifact; open it with full_logits=True): None otherwise (the caller
    decodes token by token; `warn(message)` hears why when the drafter exists but cannot run),
    else (result, stats). k: draft length (fixed), start/cap (confidence, heuristic) or cap (cost, specdec and the
    lookup modes: the cost model or the acceptance head picks the length each round; default LOOKUP_K).
    fuzzy: "DIV:T" (check_fuzzy) also accepts a draft whose divergence from the target is below T (a lookup
    draft's distribution is one-hot on it).
    reject_threshold: specdec's fixed threshold h (SpecDec++); None sets it from the measured costs each round.
    model_rule: the drafter's rounds in combined mode, "cost" or "specdec" (its acceptance head)."""
    fz = check_fuzzy(fuzzy)
    if draft_mode not in RUN_MODES:
        raise InputError(f"unknown draft mode '{draft_mode}' (choose from {', '.join(RUN_MODES)})")
    k = int(k if k is not None else (LOOKUP_K if draft_mode in LOOKUP_MODES + ("cost", "specdec") else 4))
    if k < 1:
        raise InputError(f"--draft-k must be >= 1, got {k}")
    has_drafter = drafter_records(art.manifest) is not None
    if draft_mode == "lookup" or (draft_mode == "combined" and not has_drafter):
        if draft_mode == "combined" and warn:
            warn("the artifact has no drafter graphs: prompt lookup only")
        return generate_speculative(art, None, prompt_ids, max_new_tokens, sampling,
                                    SpecConfig(k=k, draft_mode="cost", k_max=k, **fz), stop, LookupProposer())
    if not has_drafter:
        if warn and draft_mode != "cost":        # cost is the default: an artifact without a drafter decodes plainly
            warn(f"--draft-mode {draft_mode} needs drafter graphs and this artifact has none: decoding token by "
                 "token (--draft-mode lookup needs no drafter)")
        return None
    problem = spec_backend_problem(art)
    if problem:
        if warn:
            warn(problem)
        return None
    if model_rule not in ("cost", "specdec"):
        raise InputError(f"the drafter's rule in combined mode is cost or specdec, got '{model_rule}'")
    if draft_mode == "combined":
        drafter = _drafter(art)
        rule = model_rule if drafter.accept_head is not None else "cost"
        return generate_speculative(art, drafter, prompt_ids, max_new_tokens, sampling,
                                    SpecConfig(k=k, draft_mode=rule, k_max=k, reject_threshold=reject_threshold,
                                               **fz), stop, LookupProposer())
    config = SpecConfig(k=k, draft_mode=draft_mode, k_max=max(k, 8) if draft_mode == "heuristic" else k,
                        reject_threshold=reject_threshold, **fz)
    drafter = _drafter(art)
    if draft_mode == "specdec" and drafter.accept_head is None:
        raise InputError("--draft-mode specdec needs the drafter's acceptance head: this artifact has none "
                         "(compile it with --drafter eagle, which trains one)")
    return generate_speculative(art, drafter, prompt_ids, max_new_tokens, sampling, config, stop)


def _drafter(art) -> Drafter | None:
    """The artifact's drafter, loaded once per opened artifact (compiling its graphs or native kernels takes a
    fraction of a second: per prompt it was a second load every time, and an unreleased model each)."""
    key = art.choice.backend
    cache = art.__dict__.setdefault("_spec_drafters", {})
    if key not in cache:
        cache[key] = load_drafter(art)
    return cache[key]
