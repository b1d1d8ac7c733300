"""Export the EAGLE drafter's graphs (passes/drafting/eagle.py) and validate them against torch.

Two graphs join the artifact's `decoder` graph (docs/passes/drafter.md):

    eagle_target  role "eagle_target"  the whole model    input_ids -> logits [.., V], hidden_out [.., C] (+ KV)
    eagle_draft   role "eagle_draft"   fc + one layer     input_ids, hidden_in -> logits [.., S], hidden_out (+ KV)

The runtime (runtime/speculative/eagle.py) verifies with eagle_target, which also hands the drafter the target's
last hidden state of every position. The head's token ids go to graphs/draft_vocab.json. Weights: eagle_target
holds the target's weights a second time (the `decoder` graph keeps the first copy for plain decoding); eagle_draft
holds its layer, fc, the kept head rows and a copy of the embedding table.
"""
from __future__ import annotations

import numpy as np

from ...compiler.bundle import ModelBundle
from ...compiler.errors import PreconditionError
from ...compiler.pass_base import Pass, PassResult
from ...runtime.backends import default_threads
from ...runtime.speculative.artifact import open_drafter
from ...compiler.graph import EAGLE_STEP
from ..export.validate import prompt_ids, torch_reference, uncut_room
from .eagle import EagleDrafter
from .eagle_model import target_graph
from .export_drafter import ExportDrafterPass, ValidateDrafterConfig, judge

ROLES = {"eagle_target": "eagle_target", "eagle_draft": "eagle_draft"}
STATIC_ROLES = {**ROLES, EAGLE_STEP: EAGLE_STEP}
STATIC_VERIFY = 9        # static graphs: tokens per target call, the runtime's default draft cap (8) + 1


def eagle_graphs(bundle: ModelBundle) -> dict:
    d = bundle.records.get("drafter_module")
    if not isinstance(d, EagleDrafter):
        raise PreconditionError("no EAGLE drafter attached (run drafter-eagle first)")
    fixed = fixed_cache_record(bundle) is not None
    return {"eagle_target": target_graph(bundle.model, bundle.adapter, scores=fixed), "eagle_draft": d.graph.eval()}


def fixed_cache_record(bundle: ModelBundle) -> dict | None:
    """The decoder graph's fixed-cache spec (its record's kv_cache) when it was exported with one, else None: the
    EAGLE target then runs over the same fixed cache (runtime/speculative/artifact.py FixedFeatureTarget)."""
    dec = (bundle.records.get("graphs") or {}).get("decoder") or {}
    return dec.get("kv_cache") if dec.get("cache") == "fixed" else None


class ExportEaglePass(ExportDrafterPass):
    name = "export-eagle"
    roles = STATIC_ROLES
    what = "the EAGLE drafter's graphs"
    source = {EAGLE_STEP: "eagle_target"}    # static artifacts only: eagle_target again, one token per call

    def graphs(self, bundle: ModelBundle) -> dict:
        return eagle_graphs(bundle)

    def static_specs(self, cache_len: int) -> dict[str, tuple]:
        """--target npu: the target verifies (and prefills) STATIC_VERIFY tokens per call, and takes single tokens
        (rounds without drafts) through a one-token copy, eagle_target_step, as cheap as plain decoding; the drafter
        drafts one token per call. All over the artifact's fixed cache (the runtime pads and windows:
        runtime/speculative/steps.StaticGraph)."""
        return {"eagle_target": (1, min(STATIC_VERIFY, cache_len), cache_len), EAGLE_STEP: (1, 1, cache_len),
                "eagle_draft": (1, 1, cache_len)}

    def kv_cache(self, bundle: ModelBundle, name: str) -> dict | None:
        return fixed_cache_record(bundle) if name == "eagle_target" else None

    def fields(self, name: str, graph, bundle: ModelBundle, vocab: str | None) -> dict:
        if name == "eagle_draft":
            return {"vocab_ids": vocab, "accept_head": write_accept_head(bundle),
                    "weight_storage": "own fc, layer, kept head rows and a copy of the embedding table"}
        if name == EAGLE_STEP:
            return {"weight_storage": "the target's weights again (eagle_target's, at one token per call)"}
        return {"weight_storage": "second copy of the target (the decoder graph holds the first)"}


ACCEPT_HEAD = "graphs/eagle_accept.safetensors"


def write_accept_head(bundle: ModelBundle) -> str | None:
    """SpecDec++'s acceptance head (runtime/speculative/accept_head.py) as safetensors; -> its path, or None when
    the drafter was trained without one (eagle option head=0)."""
    from safetensors.numpy import save_file
    head = bundle.records["drafter_module"].accept_head
    if not head:
        return None
    (bundle.workdir / "graphs").mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in head.items()},
              str(bundle.workdir / ACCEPT_HEAD))
    bundle.add_file(ACCEPT_HEAD, bundle.workdir / ACCEPT_HEAD)
    return ACCEPT_HEAD


# -- the native drafter ---------------------------------------------------------------------------------
NATIVE_CONFIG = "native/eagle_draft.json"
NATIVE_WEIGHTS = "native/eagle_draft.safetensors"


def describe_eagle(drafter, family, weights: str) -> tuple[dict, dict]:
    """The EAGLE drafter for the native backend (runtime/speculative/native_draft.py): its layer, final norm and
    head as a native model fed hidden states (export_native.describe, the artifact's linear format), and the
    input mix (cfg["mix"]): the runtime RMS-norms the embedding row (the target's native embedding, with its
    embed_scale) and the input state in float32 and concatenates them; the native model's first linear, fc [C, 2C]
    in the artifact's linear format, maps them to the layer's input."""
    from ..export.export_native import LINEAR_FORMAT, _np, _Writer, describe, int4_group
    cfg, tensors = describe(drafter.layer, family, weights)
    fmt = LINEAR_FORMAT[weights]
    C = drafter.hidden_size
    w = _Writer()
    fc = w.weight("mix.fc", drafter.fc, fmt, int4_group([2 * C]) if fmt == "q4s" else None)
    tensors.update(w.tensors)
    tensors["mix.norm_embed"] = _np(drafter.norm_embed.weight)
    tensors["mix.norm_hidden"] = _np(drafter.norm_hidden.weight)
    cfg["mix"] = {"fc": fc, "norm_embed": {"weight": "mix.norm_embed", "eps": drafter.norm_embed.eps},
                  "norm_hidden": {"weight": "mix.norm_hidden", "eps": drafter.norm_hidden.eps}}
    return cfg, tensors


def export_native_eagle(bundle: ModelBundle, weights: str) -> dict | None:
    """Write native/eagle_draft.{json,safetensors} when an EAGLE drafter is attached; -> their record or None."""
    import json
    import torch
    from ..export.export_native import save_safetensors
    d = bundle.records.get("drafter_module")
    if not isinstance(d, EagleDrafter):
        return None
    with torch.no_grad():
        cfg, tensors = describe_eagle(d.graph.eval(), bundle.adapter.family, weights)
    folder = bundle.workdir / "native"
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(bundle.workdir / NATIVE_WEIGHTS, tensors)
    (bundle.workdir / NATIVE_CONFIG).write_text(json.dumps(cfg, indent=1))
    bundle.add_file(NATIVE_WEIGHTS, bundle.workdir / NATIVE_WEIGHTS)
    bundle.add_file(NATIVE_CONFIG, bundle.workdir / NATIVE_CONFIG)
    return {"config": NATIVE_CONFIG, "weights": NATIVE_WEIGHTS,
            "bytes": int(sum(a.nbytes for a in tensors.values()))}


# -- validation ------------------------------------------------------------------------------------
def run_eagle(drafter, tokens: np.ndarray, n_prompt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runtime's EAGLE steps, teacher-forced: the target prefills n_prompt tokens then takes one at a time; the
    drafter reads pairs (f_t, token t+1) with the target's states. -> (target logits [N, V], states [N, C],
    draft logits [N-1, S] over the head's own vocabulary)."""
    from ...runtime.speculative.steps import _run
    target, prop = drafter.steps(tokens.shape[1])
    if getattr(prop.fn, "last_only", False):     # the native drafter: every row's logits, to compare them all
        prop.fn.last_only = False
    cuts = [0, n_prompt, *range(n_prompt + 1, tokens.shape[1] + 1)]
    logits = np.concatenate([target.forward(tokens[0, a:b]) for a, b in zip(cuts[:-1], cuts[1:])])
    feats = target.features[:tokens.shape[1]]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        b = min(b, tokens.shape[1] - 1)
        if b > a:
            lo, _ = _run(prop.fn, prop.cache, (tokens[:, a + 1:b + 1], feats[None, a:b]))
            out.append(lo)
    return logits, feats.copy(), np.concatenate(out)


def torch_eagle(bundle: ModelBundle, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Torch reference: the target's states [N, C] and the drafter's logits [N-1, S] on them."""
    import torch
    graphs = eagle_graphs(bundle)
    tg, dg = graphs["eagle_target"], graphs["eagle_draft"]
    ids = torch.from_numpy(tokens)
    N = ids.shape[1]
    with torch.inference_mode():
        _, h, *_ = tg(ids, torch.arange(N)[None], torch.ones_like(ids), *tg.empty_cache(1))
        lo = dg(ids[:, 1:], h[:, :-1], torch.arange(N - 1)[None], torch.ones(1, N - 1, dtype=torch.long),
                *dg.empty_cache(1))[0]
    return h[0].float().numpy(), lo[0].float().numpy()


class ValidateEaglePass(Pass):
    name = "validate-eagle"
    config_class = ValidateDrafterConfig

    def requires(self, bundle: ModelBundle) -> None:
        graphs = bundle.records.get("graphs") or {}
        for name in ROLES:
            if name not in graphs:
                raise PreconditionError(f"no {name} graph to validate (run export-eagle first)")
        eagle_graphs(bundle)

    def call(self, bundle: ModelBundle) -> PassResult:
        graphs = bundle.records["graphs"]
        recs = {n: graphs[n] for n in STATIC_ROLES if n in graphs}
        # over a fixed cache the graphs match torch's full cache until the first cut (validate-kv-cache checks the
        # decoder's cuts; the EAGLE target is the same model with its hidden state as a second output)
        limit = uncut_room({"eagle_target": recs["eagle_target"]})
        refs = []
        for ids in prompt_ids(bundle):
            tokens, logits = torch_reference(bundle.model, ids, self.config.steps)
            n_prompt = ids.shape[1]
            if limit is not None:
                tokens, logits, n_prompt = tokens[:, :limit], logits[:, :limit], min(n_prompt, limit - 2)
            refs.append((n_prompt, tokens, logits[0], *torch_eagle(bundle, tokens)))
        results = {}
        for backend in self.config.backends:     # the whole graph set: a lococo target reads the compression graph
            results[backend] = compare_eagle(open_drafter(bundle.workdir, {"graphs": graphs}, backend,
                                                          default_threads()), refs)
        native = (bundle.records.get("native") or {}).get("eagle_draft")
        if native:          # the native drafter beside the native decoder (export-native ran before this pass)
            drafter = native_drafter(bundle, recs)
            try:
                results["native"] = compare_eagle(drafter, refs)
            finally:
                drafter.fns["eagle_draft"].close()
                drafter.target.model.close()
        return judge(bundle, self.config, results, "EAGLE")


def native_drafter(bundle: ModelBundle, recs: dict):
    """The runtime's EAGLE drafter on the native backend (f32 precision: the weights' own tolerance applies), built
    from the artifact being written as runtime/speculative/artifact.load_drafter builds it."""
    from ...runtime.backends.native import NativeBackend, read_native
    from ...runtime.speculative.artifact import native_eagle_drafter
    rec = bundle.records["native"]
    cfg, tensors = read_native(bundle.workdir, rec, "native decoder")
    target = NativeBackend(cfg, tensors, default_threads(), True, {}, precision="f32")
    return native_eagle_drafter(bundle.workdir, {"graphs": recs}, rec["eagle_draft"], target)


def compare_eagle(drafter, refs: list) -> dict:
    """Max |logit diff|, state drift and greedy agreement of a drafter's target and draft steps against the torch
    references [(prompt length, tokens, target logits, target states, draft logits)]."""
    res = {"target_max_diff": 0.0, "draft_max_diff": 0.0, "target_greedy": 0, "draft_greedy": 0,
           "state_rel_diff": 0.0}
    total, total_draft = 0, 0
    for n_prompt, tokens, ref, ref_h, ref_draft in refs:
        logits, feats, draft = run_eagle(drafter, tokens, n_prompt)
        res["target_max_diff"] = max(res["target_max_diff"], float(np.abs(logits - ref).max()))
        res["draft_max_diff"] = max(res["draft_max_diff"], float(np.abs(draft - ref_draft).max()))
        res["state_rel_diff"] = max(res["state_rel_diff"], float(np.abs(feats - ref_h).max()
                                                                 / max(np.abs(ref_h).max(), 1e-6)))
        picks = slice(n_prompt - 1, None)
        res["target_greedy"] += int((logits[picks].argmax(-1) == ref[picks].argmax(-1)).sum())
        res["draft_greedy"] += int((draft[picks].argmax(-1) == ref_draft[picks].argmax(-1)).sum())
        total += ref.shape[0] - n_prompt + 1
        total_draft += draft.shape[0] - n_prompt + 1
    res["target_greedy"] = round(res["target_greedy"] / total, 4)
    res["draft_greedy"] = round(res["draft_greedy"] / max(total_draft, 1), 4)
    return res
