"""The passes of `--kv-cache` (issue 17): train LoCoCo's compressors, export their compression graph, and check
the artifact's fixed-cache run against the torch reference (passes/kvcache/fixed_run.py).

    --kv-cache lococo:128[,steps=N]  ->  lococo-train, ..., export-onnx, export-compress, export-openvino, ...,
                                          validate, validate-kv-cache
    --kv-cache window:M / sink:M / h2o:M  ->  the decoder graphs output attn_scores; validate-kv-cache
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, PreconditionError, ValidationError
from ...compiler.graph import by_role
from ...compiler.kv_spec import KVCacheSpec
from ...compiler.pass_base import Pass, PassConfig, PassResult

log = logging.getLogger(__name__)
DEFAULT_STEPS = 60          # training sequences (1,024 tokens each by default)


@dataclass(frozen=True)
class LoCoCoConfig(PassConfig):
    spec: dict = field(default_factory=dict)      # KVCacheSpec.to_json()
    calib: str | None = None


def compressors_of(bundle: ModelBundle):
    comps = bundle.records.get("lococo_compressors")
    if comps is None:
        raise PreconditionError("no trained LoCoCo compressors (run lococo-train first)")
    return comps


class LoCoCoPass(Pass):
    """Trains one compressor per layer on next-token loss over long calibration sequences (train_lococo.py)."""
    name = "lococo-train"
    config_class = LoCoCoConfig

    def call(self, bundle: ModelBundle) -> PassResult:
        from ..calibration import calibration_ids
        from ..export.decoder_graph import DecoderGraph
        from .train_lococo import LoCoCoTrainConfig, train
        spec = KVCacheSpec.from_json(self.config.spec)
        cfg = LoCoCoTrainConfig.from_spec(spec)
        if "steps" not in spec.options:
            cfg = LoCoCoTrainConfig(**{**cfg.__dict__, "steps": DEFAULT_STEPS})
        graph = DecoderGraph(bundle.model, bundle.adapter, scores=True).eval()
        need = spec.slots + spec.buffer + cfg.chunk
        if cfg.seq_len <= need:
            raise InputError(f"--kv-cache {spec}: seq_len={cfg.seq_len} never fills the cache (M + buffer + chunk "
                             f"= {need}); give seq_len > {need}")
        seqs = calibration_ids(bundle, min(cfg.steps, 64), cfg.seq_len, cfg.seed, self.config.calib)
        comps, rec = train(graph, spec, seqs, cfg)
        comps.eval()
        for p in comps.parameters():
            p.requires_grad_(False)
        bundle.records["lococo_compressors"] = comps
        losses = rec.pop("losses")
        bundle.records["kv_cache"] = {**spec.to_json(), "training": {
            **rec, "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "text": self.config.calib or "brown-calib"}}
        return PassResult(True, {"loss_last": losses[-1] if losses else None, "seconds": rec["seconds"]})


@dataclass(frozen=True)
class ExportCompressConfig(PassConfig):
    spec: dict = field(default_factory=dict)
    capacity: int | None = None       # static graphs: the cache buffer's slots; None: dynamic
    formats: tuple = ("openvino", "onnx")


class ExportCompressPass(Pass):
    """graphs/compress.onnx (the fp32 source the OpenVINO pass converts) and kvcache/lococo.safetensors."""
    name = "export-compress"
    config_class = ExportCompressConfig

    def requires(self, bundle: ModelBundle) -> None:
        compressors_of(bundle)
        if bundle.workdir is None:
            raise PreconditionError("the bundle has no workdir to write graphs into")

    def call(self, bundle: ModelBundle) -> PassResult:
        from safetensors.torch import save_file
        from ..export.export_onnx import _scratch
        from .compress_graph import export_compress
        spec = KVCacheSpec.from_json(self.config.spec)
        comps = compressors_of(bundle)
        ad = bundle.adapter.describe()
        emit = "onnx" in self.config.formats
        rel = "graphs/compress.onnx"
        path = bundle.workdir / rel if emit else _scratch(bundle.workdir) / "compress.onnx"
        t0 = time.perf_counter()
        rec = export_compress(comps, path, int(ad["kv_heads"]), int(ad["head_dim"]), spec.slots,
                              self.config.capacity if self.config.capacity else "slots")
        bundle.records.setdefault("onnx_fp32", {})["compress"] = path
        rec.update(weights="fp32", kv_cache=spec.to_json())
        if emit:
            bundle.add_file(rel, path)
            bundle.add_file(rel + ".data", path.with_name(path.name + ".data"))
            rec["onnx"] = rel
        bundle.records["graphs"]["compress"] = rec
        st = bundle.workdir / "kvcache" / "lococo.safetensors"
        st.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in comps.state_dict().items()}, str(st))
        bundle.add_file("kvcache/lococo.safetensors", st)
        return PassResult(True, {"export_s": round(time.perf_counter() - t0, 2)})


@dataclass(frozen=True)
class ValidateKVConfig(PassConfig):
    spec: dict = field(default_factory=dict)
    backends: tuple = ("openvino", "onnxruntime")
    weights: str = "fp32"
    decode_steps: int = 40


def reference_logits(bundle: ModelBundle, spec: KVCacheSpec, tokens: np.ndarray, n_prompt: int,
                     chunk: int) -> np.ndarray:
    """The torch fixed-cache run with the runtime's schedule: the prompt in chunks, then one token at a time."""
    from ..export.decoder_graph import DecoderGraph
    from .fixed_run import FixedCacheRun
    graph = DecoderGraph(bundle.model, bundle.adapter, scores=True).eval()
    run = FixedCacheRun(graph, spec, bundle.records.get("lococo_compressors"))
    ids = torch.from_numpy(tokens)[None]
    rows = []
    with torch.no_grad():
        for s in range(0, n_prompt, chunk):
            rows.append(run.step(ids[:, s:min(s + chunk, n_prompt)])[0].numpy())
        for t in range(n_prompt, tokens.shape[0]):
            rows.append(run.step(ids[:, t:t + 1])[0].numpy())
    return np.concatenate(rows)


def runtime_logits(graphs, tokens: np.ndarray, n_prompt: int) -> tuple[np.ndarray, int]:
    from ...runtime.decode import decode_one, prefill
    state = graphs.new_state(tokens.shape[0])
    rows = [prefill(state, tokens[:n_prompt], all_logits=True)]
    for t in tokens[n_prompt:]:
        rows.append(np.array(decode_one(state, int(t)))[None])
    return np.concatenate(rows), state.cache.cuts


class ValidateKVCachePass(Pass):
    """The artifact's graphs run through the runtime's fixed cache (runtime/fixed_cache.py) on a text long enough
    to cut the cache several times, against the torch reference with the same schedule (greedy agreement and
    the largest logit difference)."""
    name = "validate-kv-cache"
    config_class = ValidateKVConfig

    def call(self, bundle: ModelBundle) -> PassResult:
        from ...models.corpus import load_text, token_stream
        from ...runtime.graph_set import load_graphs
        from ..export.validate import INT_CODES, TOLERANCES
        spec = KVCacheSpec.from_json(self.config.spec)
        graphs_rec = bundle.records["graphs"]
        dec = next(r for r in by_role(graphs_rec).values() if r.get("cache") == "fixed")
        static = bool(dec.get("static"))
        chunk = int(dec["inputs"]["input_ids"][1]) if static else int(spec.options.get("chunk", 64))
        n_prompt = spec.slots + 2 * max(spec.buffer, chunk) + 3
        steps = max(self.config.decode_steps, 3 * spec.buffer)
        tokens = token_stream(bundle.tokenizer, load_text("eval"))[:n_prompt + steps].numpy().astype(np.int64)
        ref = reference_logits(bundle, spec, tokens, n_prompt, chunk)
        int_codes = "int" in (bundle.records.get("quantization") or {})
        max_diff, agree = INT_CODES if int_codes else TOLERANCES[self.config.weights]
        results, bad = {}, []
        for backend in self.config.backends:
            t0 = time.perf_counter()
            loaded = load_graphs(bundle.workdir, graphs_rec, backend, "cpu", full_logits=True)
            got, cuts = runtime_logits(loaded, tokens, n_prompt)
            picks = slice(n_prompt - 1, None)
            res = {"max_logit_diff": float(f"{np.abs(got - ref).max():.3g}"),
                   "greedy_agreement": round(float((got[picks].argmax(-1) == ref[picks].argmax(-1)).mean()), 4),
                   "tokens": int(tokens.shape[0]), "cuts": int(cuts), "seconds": round(time.perf_counter() - t0, 2)}
            results[backend] = res
            if res["greedy_agreement"] < agree or res["max_logit_diff"] > max_diff or cuts < 2:
                bad.append(f"{backend}: max |logit diff| {res['max_logit_diff']} (limit {max_diff}), greedy agreement "
                           f"{res['greedy_agreement']} (min {agree}), {cuts} cuts")
        bundle.records.setdefault("kv_cache", spec.to_json())["validation"] = results
        if bad:
            raise ValidationError(f"the {spec} cache run through the exported graphs differs from torch: " + "; ".join(bad))
        return PassResult(False, {f"{b}_max_diff": r["max_logit_diff"] for b, r in results.items()})
