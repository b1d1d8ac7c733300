"""Export the fused drafter's graphs (passes/drafting/drafter.py) and validate them against torch.

Three graphs join the artifact's `decoder` graph (docs/passes/drafter.md):

    draft_trunk  role "trunk"        layers [0, L)          input_ids -> hidden_out  (+ KV of layers 0..L-1)
    draft_head   role "draft_head"   exit layer+norm+head   hidden_in -> logits [.., S] (+ KV of the exit layer)
    verify_tail  role "verify_tail"  layers [L, N)          hidden_in -> logits [.., V] (+ KV of layers L..N-1)

The runtime (runtime/speculative/artifact.py) runs trunk once per token and shares its KV cache and hidden
states between the drafter (head) and the verifier (tail). A reduced-vocabulary head's token ids go to
graphs/draft_vocab.json. Weights: trunk + tail hold the target's layers a second time (the `decoder`
graph keeps its own copy for plain decoding), and the head holds a copy of the head rows it keeps;
nothing is shared between graph files on disk.

ExportDrafterPass runs between export-onnx and export-openvino: it writes the fp32 ONNX graphs, registers
them in bundle.records["graphs"] / ["onnx_fp32"], and export-openvino converts them like the decoder.
ValidateDrafterPass (validation phase) checks, per backend, trunk+tail logits against the torch model
and draft-head logits against the drafter's torch head, teacher-forced on the validation prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, PreconditionError, ValidationError
from ...compiler.graph import cache_dims
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ...runtime.backends import default_threads
from ...runtime.speculative.artifact import open_drafter
from .drafter_model import FusedDrafter
from ..export.export_onnx import FORMATS, WEIGHTS, _scratch, check_formats, needs_scratch, write_graph
from ..export.validate import TOLERANCES, ValidateConfig, prompt_ids, torch_reference

DYNAMIC = ("batch", "new", "past")
ROLES = {"draft_trunk": "trunk", "draft_head": "draft_head", "verify_tail": "verify_tail"}
VOCAB_FILE = "graphs/draft_vocab.json"


def drafter_graphs(bundle: ModelBundle) -> dict:
    """name -> DecoderGraph for the attached fused drafter."""
    d = bundle.records.get("drafter_module")
    if not isinstance(d, FusedDrafter):
        raise PreconditionError("no fused drafter attached (run drafter-fused first)")
    return {"draft_trunk": d.trunk_graph(bundle.model, bundle.adapter), "draft_head": d.head_graph(),
            "verify_tail": d.tail_graph(bundle.model, bundle.adapter)}


@dataclass(frozen=True)
class ExportDrafterConfig(PassConfig):
    weights: str = "fp32"
    formats: tuple = FORMATS      # as export-onnx's: without "onnx" the graphs only feed export-openvino

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
        check_formats(self.formats)


def write_vocab(bundle: ModelBundle, vocab_ids) -> str | None:
    """The reduced head's token ids as graphs/draft_vocab.json in the artifact; -> its path (None: full head)."""
    if vocab_ids is None:
        return None
    (bundle.workdir / "graphs").mkdir(parents=True, exist_ok=True)
    (bundle.workdir / VOCAB_FILE).write_text(json.dumps([int(i) for i in vocab_ids]))
    bundle.add_file(VOCAB_FILE, bundle.workdir / VOCAB_FILE)
    return VOCAB_FILE


class ExportDrafterPass(Pass):
    """Writes the drafter's graphs beside the decoder graph. Subclasses (export_eagle.py) give their graphs,
    roles and record fields through `graphs`, `roles` and `fields`."""

    name = "export-drafter"
    config_class = ExportDrafterConfig
    roles = ROLES
    what = "the fused drafter's graphs"
    source: dict = {}        # an exported graph that is another graph at other shapes: its name -> that graph's

    def graphs(self, bundle: ModelBundle) -> dict:
        return drafter_graphs(bundle)

    def fields(self, name: str, graph, bundle: ModelBundle, vocab: str | None) -> dict:
        rec = {"exit_layer": bundle.records["drafter_module"].exit_layer}
        if name == "draft_head":
            return {**rec, "vocab_ids": vocab,          # None: the head covers the full vocabulary
                    "weight_storage": "own copy of the exit layer and of the kept head rows"}
        return {**rec, "weight_storage": "second copy of the target's layers (the decoder graph holds the first)"}

    def kv_cache(self, bundle: ModelBundle, name: str) -> dict | None:
        """The fixed-cache spec graph `name` runs over (export_onnx.write_graph's kv_cache), None: a growing cache."""
        return None

    def static_specs(self, cache_len: int) -> dict[str, tuple] | None:
        """name -> (B, T, P) of each graph for a static-shape artifact (--target npu); None: not supported."""
        return None

    def specs(self, bundle: ModelBundle) -> dict[str, tuple]:
        graphs = bundle.records.get("graphs") or {}
        if "decoder" in graphs:          # a graph that is another at other shapes has nothing to add here
            return {name: DYNAMIC for name in self.roles if name not in self.source}
        decode = graphs.get("decode") or {}
        if not decode.get("static"):
            raise PreconditionError("no decoder graph exported (run export-onnx first)")
        specs = self.static_specs(int(cache_dims(decode)[1]))
        if specs is None:
            raise PreconditionError(f"{self.what} need dynamic shapes: use --target cpu or cuda "
                                    "(static npu graphs are exported for the EAGLE drafter only)")
        return specs

    def requires(self, bundle: ModelBundle) -> None:
        self.specs(bundle)
        self.graphs(bundle)

    def call(self, bundle: ModelBundle) -> PassResult:
        cfg = self.config
        records = bundle.records["graphs"]
        scratch = _scratch(bundle.workdir) if needs_scratch(cfg.weights, cfg.formats) else None
        vocab = write_vocab(bundle, bundle.records["drafter_module"].vocab_ids)
        metrics = {}
        specs = self.specs(bundle)
        graphs = self.graphs(bundle)
        for name, spec in specs.items():
            graph = graphs[self.source.get(name, name)]
            rec = write_graph(bundle, graph, name, spec, cfg.weights, scratch, metrics, emit="onnx" in cfg.formats,
                              kv_cache=self.kv_cache(bundle, name))
            rec.update(static=spec is not DYNAMIC, role=self.roles[name], hidden_size=graph.hidden_size,
                       **self.fields(name, graph, bundle, vocab))
            records[name] = rec
        return PassResult(True, metrics)

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        for name in self.specs(bundle):
            rec = bundle.records["graphs"].get(name)
            if rec is None or ("onnx" in self.config.formats and not (bundle.workdir / rec["onnx"]).is_file()):
                raise PreconditionError(f"drafter graph {name} was not written")


# -- validation ------------------------------------------------------------------------------------
def run_split(drafter, tokens: np.ndarray, n_prompt: int) -> tuple[np.ndarray, np.ndarray]:
    """The runtime's shared-trunk steps (runtime/speculative/artifact.py Drafter.steps): prefill n_prompt tokens, then
    one at a time; the verifier and the drafter read the same trunk. -> (target logits [1, N, V], draft logits
    [1, N, S] over the head's own vocabulary)."""
    target, draft = drafter.steps(tokens.shape[1])
    logits, out = [], []
    cuts = [0, n_prompt, *range(n_prompt + 1, tokens.shape[1] + 1)]
    for a, b in zip(cuts[:-1], cuts[1:]):
        logits.append(target.forward(tokens[0, a:b]))
        d = draft.forward(tokens[0, a:b])
        out.append(d if drafter.vocab_ids is None else d[:, drafter.vocab_ids])
    return np.concatenate(logits)[None], np.concatenate(out)[None]


def torch_draft_logits(bundle: ModelBundle, tokens: np.ndarray) -> np.ndarray:
    """The drafter's logits [1, N, S] in torch (trunk then exit head, one call each)."""
    import torch
    d: FusedDrafter = bundle.records["drafter_module"]
    trunk, head = d.trunk_graph(bundle.model, bundle.adapter), d.head_graph()
    ids = torch.from_numpy(tokens)
    pos = torch.arange(ids.shape[1])[None]
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        h = trunk(ids, pos, mask, *trunk.empty_cache(1))[0]
        return head(h, pos, mask, *head.empty_cache(1))[0].float().numpy()


@dataclass(frozen=True)
class ValidateDrafterConfig(ValidateConfig):
    """Same options and tolerances as the decoder's validation."""


class ValidateDrafterPass(Pass):
    name = "validate-drafter"
    config_class = ValidateDrafterConfig

    def requires(self, bundle: ModelBundle) -> None:
        graphs = bundle.records.get("graphs") or {}
        for name in ROLES:
            if name not in graphs:
                raise PreconditionError(f"no {name} graph to validate (run export-drafter first)")
        drafter_graphs(bundle)

    def call(self, bundle: ModelBundle) -> PassResult:
        recs = {n: bundle.records["graphs"][n] for n in ROLES}
        refs = []
        for ids in prompt_ids(bundle):
            tokens, logits = torch_reference(bundle.model, ids, self.config.steps)
            refs.append((ids.shape[1], tokens, logits, torch_draft_logits(bundle, tokens)))
        results = {}
        for backend in self.config.backends:
            drafter = open_drafter(bundle.workdir, {"graphs": recs}, backend, default_threads())
            res = {"target_max_diff": 0.0, "draft_max_diff": 0.0, "target_greedy": 0, "draft_greedy": 0}
            total = 0
            for n_prompt, tokens, ref, ref_draft in refs:
                logits, draft = run_split(drafter, tokens, n_prompt)
                res["target_max_diff"] = max(res["target_max_diff"], float(np.abs(logits - ref).max()))
                res["draft_max_diff"] = max(res["draft_max_diff"], float(np.abs(draft - ref_draft).max()))
                picks = slice(n_prompt - 1, None)
                res["target_greedy"] += int((logits[0, picks].argmax(-1) == ref[0, picks].argmax(-1)).sum())
                res["draft_greedy"] += int((draft[0, picks].argmax(-1) == ref_draft[0, picks].argmax(-1)).sum())
                total += ref.shape[1] - n_prompt + 1
            for k in ("target_greedy", "draft_greedy"):
                res[k] = round(res[k] / total, 4)
            results[backend] = res
        return judge(bundle, self.config, results, "drafter")


def judge(bundle: ModelBundle, config: ValidateConfig, results: dict, what: str) -> PassResult:
    """Record {backend: {target_/draft_ max_diff, greedy}} as bundle.records["drafter_validation"]; InputError when
    a backend is outside the precision's tolerance."""
    max_diff, agree = TOLERANCES[config.weights]
    metrics, bad = {}, []
    for backend, res in results.items():
        metrics.update({f"{backend}_{k}": float(f"{v:.3g}") for k, v in res.items()})
        for part in ("target", "draft"):
            if res[f"{part}_max_diff"] > max_diff or res[f"{part}_greedy"] < agree:
                bad.append(f"{backend} {part}: max |logit diff| {res[part + '_max_diff']:.3g} (limit "
                           f"{max_diff}), greedy agreement {res[part + '_greedy']:.2f} (min {agree})")
    bundle.records["drafter_validation"] = {"weights": config.weights, "steps": config.steps,
                                            "tolerance": {"max_logit_diff": max_diff, "greedy_agreement": agree},
                                            "backends": results}
    if bad:
        raise ValidationError(f"exported {what} graphs differ from torch: " + "; ".join(bad))
    return PassResult(False, metrics)
