"""Export the decoder graph (passes/export/decoder_graph.py) to ONNX, then compress its weights.

Exporter: torch.onnx's TorchScript exporter (dynamo=False). On SmolLM2-135M it took 15 s against
136 s for dynamo=True with identical contract; our graph builds its own mask, so the legacy exporter's
known failure inside transformers' mask code does not apply. Its constant folding gives a tied head
its own transposed copy of the embedding matrix (+113 MB at fp32 for SmolLM2, +544 MB for a 0.5B
Qwen2): passes/onnx_storage.share_tied_head puts the head back on the embedding initializer.

Storage (passes/export/onnx_storage.py): external data from the start, one `NAME.onnx.data` per graph; the
exporter's own output (per-tensor files past 2 GB) stays in a private temporary folder.

Weights: fp32 as exported; fp16 stores every large float initializer as float16 followed by a Cast
(compute stays fp32, as OpenVINO's compress_to_fp16); int8/int4 use NNCF's ONNX backend
(INT8_ASYM per channel; INT4_SYM grouped -> com.microsoft MatMulNBits, embeddings/head kept int8).
The fp32 graph is kept in a scratch dir for the OpenVINO pass (one source of truth) when the artifact's
ONNX graph is not that fp32 graph (other precisions, or `formats` without "onnx": no ONNX is shipped).
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ...compiler.bundle import ModelBundle
from ...compiler.graph import (ATTENTION_MASK, ATTN_SCORES, HIDDEN_IN, HIDDEN_OUT, INPUT_IDS, LOGITS, POSITION_IDS,
                               past_key)
from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from .decoder_graph import DecoderGraph
from .onnx_storage import data_name, save_onnx, scratch_dir, share_tied_head
from .onnx_weights import compress_onnx, group_size_for, narrow_initializers

log = logging.getLogger(__name__)
WEIGHTS = ("fp32", "fp16", "int8", "int4")
FORMATS = ("openvino", "onnx")
OPSET = 17


def check_formats(formats) -> None:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"unknown graph format '{bad[0] if bad else ''}' (choose one or more of {', '.join(FORMATS)})")


def needs_scratch(weights: str, formats) -> bool:
    """Whether the fp32 ONNX graph goes to a scratch dir (it is not the artifact's ONNX graph)."""
    return weights != "fp32" or "onnx" not in formats


@dataclass(frozen=True)
class ExportOnnxConfig(PassConfig):
    static: bool = False          # npu: fixed shapes, graphs "prefill" (T = prefill_chunk) and "decode" (T = 1)
    cache_len: int = 1024         # P of the static graphs
    prefill_chunk: int = 64       # T of the static prefill graph
    weights: str = "fp32"
    formats: tuple = FORMATS      # what the artifact gets: "onnx" graphs and/or "openvino" IR (converted from ONNX)
    kv_cache: dict | None = None  # a fixed cache's spec (compiler/kv_spec.py to_json): the graphs output attn_scores

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
        check_formats(self.formats)
        if self.cache_len < 2 or not 1 <= self.prefill_chunk <= self.cache_len:
            raise InputError(f"static shapes need 1 <= prefill_chunk ({self.prefill_chunk}) <= cache_len "
                             f"({self.cache_len}) and cache_len >= 2")


def graph_specs(cfg: ExportOnnxConfig) -> dict[str, tuple]:
    """name -> (B, T, P): ints for static dims, strings for symbolic ones."""
    if cfg.static:
        return {"prefill": (1, cfg.prefill_chunk, cfg.cache_len), "decode": (1, 1, cfg.cache_len)}
    return {"decoder": ("batch", "new", "past")}


def input_shapes(graph: DecoderGraph, spec: tuple) -> dict[str, list]:
    B, T, P = spec
    total = P + T if isinstance(P, int) and isinstance(T, int) else "total"
    known = {INPUT_IDS: [B, T], HIDDEN_IN: [B, T, graph.hidden_size], POSITION_IDS: [B, T], ATTENTION_MASK: [B, total]}
    return {n: known.get(n, [B, P, graph.kv_heads, graph.head_dim]) for n in graph.input_names()}


def output_shapes(graph: DecoderGraph, spec: tuple) -> dict[str, list]:
    B, T, P = spec
    total = P + T if isinstance(P, int) and isinstance(T, int) else "total"
    known = {LOGITS: [B, T, graph.vocab], HIDDEN_OUT: [B, T, graph.hidden_size]}
    return {n: [B, graph.kv_heads, total] if n.startswith(ATTN_SCORES) else
            known.get(n, [B, T, graph.kv_heads, graph.head_dim]) for n in graph.output_names()}


def tied_embedding(graph: DecoderGraph):
    """The embedding matrix [V, C] (numpy) when the graph's head reuses it as its weight, else None."""
    e = getattr(getattr(graph, "embed", None), "weight", None)
    w = getattr(getattr(graph, "head", None), "weight", None)
    if not isinstance(e, torch.Tensor) or not isinstance(w, torch.Tensor) or e.shape != w.shape:
        return None
    if e.data_ptr() != w.data_ptr() and not torch.equal(e, w):
        return None
    return e.detach().float().numpy()


def export_graph(graph: DecoderGraph, path: Path, spec: tuple) -> None:
    """Trace `graph` to ONNX at `path` (weights in `path.name + '.data'`) with the contract's names and shapes."""
    import onnx
    ins, outs = input_shapes(graph, spec), output_shapes(graph, spec)
    example = {k: [2 if isinstance(d, str) else d for d in v] for k, v in ins.items()}  # symbolic dims: 2, not 0/1
    if isinstance(spec[2], str):
        example[ATTENTION_MASK][1] = example[past_key(graph.first)][1] + example[POSITION_IDS][1]
    args = []
    for name, shape in example.items():
        if name == INPUT_IDS:
            args.append(torch.zeros(shape, dtype=torch.long))
        elif name == POSITION_IDS:
            args.append(torch.arange(shape[1]).repeat(shape[0], 1) + example[past_key(graph.first)][1])
        elif name == ATTENTION_MASK:
            args.append(torch.ones(shape, dtype=torch.long))
        else:
            args.append(torch.zeros(shape, dtype=torch.float32))
    dyn = {n: {i: d for i, d in enumerate(s) if isinstance(d, str)} for n, s in {**ins, **outs}.items()}
    dyn = {n: d for n, d in dyn.items() if d}
    # the exporter writes a model past 2 GB as one file per tensor beside its output: keep those private
    with scratch_dir("accelc-trace-") as tmpdir:
        tmp = tmpdir / "graph.onnx"
        with torch.no_grad(), _quiet():
            torch.onnx.export(graph.eval(), tuple(args), str(tmp), dynamo=False, input_names=list(ins),
                              output_names=list(outs), dynamic_axes=dyn or None, opset_version=OPSET)
        model = onnx.load(str(tmp))
    share_tied_head(model, tied_embedding(graph))   # before narrowing: the head must read the fp32 table
    narrow_initializers(model)      # constant folding widened uint8 codes to int64, fp16 codebooks to fp32
    write_output_dims(model, outs)
    save_onnx(model, path)


def write_output_dims(model, outs: dict[str, list]) -> None:
    """The tracer names some output dims oddly: write the contract's shapes (ints static, strings symbolic)."""
    for vi in model.graph.output:
        dims = vi.type.tensor_type.shape.dim
        for d, want in zip(dims, outs[vi.name]):
            d.Clear()
            setattr(d, "dim_param" if isinstance(want, str) else "dim_value", want)


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _scratch(workdir: Path | None = None) -> Path:
    """The fp32 graph's folder, removed at exit. Beside the staging dir when there is one, named after it
    (`.NAME.partial-PID-...-fp32-...`): on the output's file system rather than a small /tmp, and a compile that
    dies without its exit handlers (a crash, SIGKILL) leaves it to the next compile's sweep of dead processes'
    staging dirs (compiler/artifact.py remove_stale_stages)."""
    if workdir is not None and workdir.name.startswith("."):
        d = Path(tempfile.mkdtemp(prefix=f"{workdir.name}-fp32-", dir=workdir.parent))
    else:
        d = Path(tempfile.mkdtemp(prefix="accelc-fp32-onnx-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def write_graph(bundle: ModelBundle, graph, name: str, spec, weights: str, scratch: Path | None,
                metrics: dict, emit: bool = True, int_codes: dict | None = None, kv_cache: dict | None = None) -> dict:
    """Export `graph` and return its graph record. The fp32 graph (the OpenVINO pass's source) goes to
    `scratch` when given, else straight to graphs/<name>.onnx in the bundle's workdir. With `emit`, the
    artifact gets graphs/<name>.onnx (+ .data) at the requested weight precision; without it, the
    record has no "onnx" key (an OpenVINO-only artifact) and nothing is compressed here."""
    rel = f"graphs/{name}.onnx"
    out = bundle.workdir / rel
    if scratch is None and not (emit and weights == "fp32"):
        raise PreconditionError(f"graph {name}: a {weights} or OpenVINO-only export needs a scratch dir")
    src = (scratch / f"{name}.onnx") if scratch else out
    t0 = time.perf_counter()
    export_graph(graph, src, spec)
    metrics[f"{name}_export_s"] = round(time.perf_counter() - t0, 2)
    # Path values keep this out of the manifest; the OpenVINO pass converts from the fp32 graph
    bundle.records.setdefault("onnx_fp32", {})[name] = src
    rec = {"inputs": input_shapes(graph, spec), "outputs": output_shapes(graph, spec),
           "layers": [graph.first, graph.last], "num_layers": graph.last - graph.first,
           "kv_heads": graph.kv_heads, "head_dim": graph.head_dim, "vocab": graph.vocab, "weights": weights,
           "cache": "fixed" if kv_cache else "full", **({"kv_cache": kv_cache} if kv_cache else {})}
    if not emit:
        return rec
    return {"onnx": rel, **rec, **emit_graph(bundle, name, src, weights, metrics, int_codes)}


def emit_graph(bundle: ModelBundle, name: str, src: Path, weights: str, metrics: dict, int_codes: dict | None = None) -> dict:
    """The artifact's graphs/<name>.onnx (+ .data) from the fp32 graph at `src`, at the requested weight precision
    (the same file when src is already there at fp32); -> {"onnx": its path in the artifact}."""
    rel = f"graphs/{name}.onnx"
    out = bundle.workdir / rel
    if int_codes is not None:        # gptq-int / pv-int: MatMulNBits with the layers' own codes (passes/export/onnx_int.py)
        from .onnx_int import block_bits, match_initializers, swap_codes
        int_codes["spec"]["onnx_matmulnbits_bits"] = block_bits(int_codes["spec"]["bits"])    # recorded in the manifest
        t0 = time.perf_counter()
        edit = swap_codes(match_initializers(src, int_codes["layers"]), int_codes["layers"])
        compress_onnx(src, out, "int4", bundle.adapter, group=int_codes["group"], edit=edit)
        metrics[f"{name}_compress_s"] = round(time.perf_counter() - t0, 2)
    elif src != out:
        t0 = time.perf_counter()
        compress_onnx(src, out, weights, bundle.adapter)
        metrics[f"{name}_compress_s"] = round(time.perf_counter() - t0, 2)
    data = out.with_name(data_name(out))
    bundle.add_file(rel, out)
    bundle.add_file(rel + ".data", data)
    metrics[f"{name}_mb"] = round((out.stat().st_size + data.stat().st_size) / 1e6, 1)
    return {"onnx": rel}


def int_code_layers(bundle: ModelBundle) -> dict | None:
    """{"layers", "group", "spec"} of a gptq-int / pv-int model (its ONNX graph gets MatMulNBits), else None."""
    spec = (bundle.records.get("quantization") or {}).get("int")
    if not spec:
        return None
    from ..quantization.int_linear import int_layers
    return {"layers": int_layers(bundle.model), "group": spec["group"], "spec": spec}


class ExportOnnxPass(Pass):
    name = "export-onnx"
    config_class = ExportOnnxConfig

    def requires(self, bundle: ModelBundle) -> None:
        if bundle.workdir is None:
            raise PreconditionError("the bundle has no workdir to write graphs into")

    def call(self, bundle: ModelBundle) -> PassResult:
        cfg, ad = self.config, bundle.adapter
        if cfg.weights == "int4":
            group_size_for(ad)   # InputError before the (slow) export when no int4 group size fits
        graph = DecoderGraph(bundle.model, ad, scores=bool(cfg.kv_cache)).eval()
        records = bundle.records.setdefault("graphs", {})
        int_codes = int_code_layers(bundle)
        scratch = _scratch(bundle.workdir) if needs_scratch(cfg.weights, cfg.formats) or int_codes else None
        metrics = {}
        for name, spec in graph_specs(cfg).items():
            records[name] = write_graph(bundle, graph, name, spec, cfg.weights, scratch, metrics,
                                        emit="onnx" in cfg.formats, int_codes=int_codes, kv_cache=cfg.kv_cache)
            records[name].update(static=cfg.static, role=name)      # decoder, or prefill + decode
        bundle.records["formats"] = [f for f in FORMATS if f in cfg.formats]
        return PassResult(True, metrics)

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        for name in graph_specs(self.config):
            rec = bundle.records["graphs"][name]
            if "onnx" in self.config.formats and not (bundle.workdir / rec["onnx"]).is_file():
                raise PreconditionError(f"{rec['onnx']} was not written")
            if "onnx" not in self.config.formats and "onnx" in rec:
                raise PreconditionError(f"graph {name} has an ONNX file though the artifact's formats exclude it")
            if self.config.static and any(isinstance(d, str) for s in rec["inputs"].values() for d in s):
                raise PreconditionError(f"static graph {name} has symbolic input dims")
