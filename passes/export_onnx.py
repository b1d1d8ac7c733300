"""Export the decoder graph (passes/decoder_graph.py) to ONNX, then compress its weights.

Exporter: torch.onnx's TorchScript exporter (dynamo=False). On SmolLM2-135M it took 15 s against
136 s for dynamo=True with identical contract; our graph builds its own mask, so the legacy exporter's
known failure inside transformers' mask code does not apply. Its drawback: a tied head gets its own
transposed copy of the embedding matrix (+113 MB at fp32 for SmolLM2).

Weights: fp32 as exported; fp16 stores every large float initializer as float16 followed by a Cast
(compute stays fp32, as OpenVINO's compress_to_fp16); int8/int4 use NNCF's ONNX backend
(INT8_ASYM per channel; INT4_SYM grouped -> com.microsoft MatMulNBits, embeddings/head kept int8).
The fp32 graph is kept in a scratch dir for the OpenVINO pass (one source of truth).
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

from ..compiler.bundle import ModelBundle
from ..compiler.errors import InputError, PreconditionError
from ..compiler.pass_base import Pass, PassConfig, PassResult
from .decoder_graph import DecoderGraph
from .onnx_weights import compress_onnx, group_size_for, narrow_initializers

log = logging.getLogger(__name__)
WEIGHTS = ("fp32", "fp16", "int8", "int4")
OPSET = 17


@dataclass(frozen=True)
class ExportOnnxConfig(PassConfig):
    static: bool = False          # npu: fixed shapes, graphs "prefill" (T = prefill_chunk) and "decode" (T = 1)
    cache_len: int = 1024         # P of the static graphs
    prefill_chunk: int = 64       # T of the static prefill graph
    weights: str = "fp32"

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
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
    first = [B, T] if graph.input_kind == "ids" else [B, T, graph.hidden_size]
    shapes = {graph.input_names()[0]: first, "position_ids": [B, T], "attention_mask": [B, total]}
    for name in graph.input_names()[3:]:
        shapes[name] = [B, P, graph.kv_heads, graph.head_dim]
    return shapes


def output_shapes(graph: DecoderGraph, spec: tuple) -> dict[str, list]:
    B, T, _ = spec
    last = graph.vocab if graph.output_kind == "logits" else graph.hidden_size
    shapes = {graph.output_names()[0]: [B, T, last]}
    for name in graph.output_names()[1:]:
        shapes[name] = [B, T, graph.kv_heads, graph.head_dim]
    return shapes


def export_graph(graph: DecoderGraph, path: Path, spec: tuple) -> None:
    """Trace `graph` to ONNX at `path` (weights in `path.name + '.data'`) with the contract's names and shapes."""
    import onnx
    ins, outs = input_shapes(graph, spec), output_shapes(graph, spec)
    example = {k: [2 if isinstance(d, str) else d for d in v] for k, v in ins.items()}  # symbolic dims: 2, not 0/1
    if isinstance(spec[2], str):
        example["attention_mask"][1] = example["past_key.%d" % graph.first][1] + example["position_ids"][1]
    args = []
    for name, shape in example.items():
        if name in ("input_ids",):
            args.append(torch.zeros(shape, dtype=torch.long))
        elif name == "position_ids":
            args.append(torch.arange(shape[1]).repeat(shape[0], 1) + example[graph.input_names()[3]][1])
        elif name == "attention_mask":
            args.append(torch.ones(shape, dtype=torch.long))
        else:
            args.append(torch.zeros(shape, dtype=torch.float32))
    dyn = {n: {i: d for i, d in enumerate(s) if isinstance(d, str)} for n, s in {**ins, **outs}.items()}
    dyn = {n: d for n, d in dyn.items() if d}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), _quiet():
        torch.onnx.export(graph.eval(), tuple(args), str(tmp), dynamo=False, input_names=list(ins),
                          output_names=list(outs), dynamic_axes=dyn or None, opset_version=OPSET)
    model = onnx.load(str(tmp))
    tmp.unlink()
    narrow_initializers(model)      # constant folding widened uint8 codes to int64, fp16 codebooks to fp32
    for vi in model.graph.output:   # the tracer names some output dims oddly: write the contract's shapes
        dims = vi.type.tensor_type.shape.dim
        for d, want in zip(dims, outs[vi.name]):
            d.Clear()
            setattr(d, "dim_param" if isinstance(want, str) else "dim_value", want)
    save_onnx(model, path)


def save_onnx(model, path: Path) -> None:
    import onnx
    data = path.name + ".data"
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(data)):
        p.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    path.with_name(data).chmod(0o644)   # onnx writes the data file 0600


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _scratch() -> Path:
    d = Path(tempfile.mkdtemp(prefix="accelc-fp32-onnx-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def write_graph(bundle: ModelBundle, graph, name: str, spec, weights: str, scratch: Path | None,
                metrics: dict) -> dict:
    """Export `graph` as graphs/<name>.onnx in the bundle's workdir (via an fp32 scratch copy that is
    then weight-compressed when `scratch` is given), register its files, and return its graph record."""
    rel = f"graphs/{name}.onnx"
    out = bundle.workdir / rel
    src = (scratch / f"{name}.onnx") if scratch else out
    t0 = time.perf_counter()
    export_graph(graph, src, spec)
    metrics[f"{name}_export_s"] = round(time.perf_counter() - t0, 2)
    if scratch:
        t0 = time.perf_counter()
        compress_onnx(src, out, weights, bundle.adapter)
        metrics[f"{name}_compress_s"] = round(time.perf_counter() - t0, 2)
    data = out.with_name(out.name + ".data")
    bundle.add_file(rel, out)
    bundle.add_file(rel + ".data", data)
    # Path values keep this out of the manifest; the OpenVINO pass converts from the fp32 graph
    bundle.records.setdefault("onnx_fp32", {})[name] = src
    metrics[f"{name}_mb"] = round((out.stat().st_size + data.stat().st_size) / 1e6, 1)
    return {"onnx": rel, "inputs": input_shapes(graph, spec), "outputs": output_shapes(graph, spec),
            "layers": [graph.first, graph.last], "num_layers": graph.last - graph.first,
            "kv_heads": graph.kv_heads, "head_dim": graph.head_dim, "vocab": graph.vocab, "weights": weights}


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
        graph = DecoderGraph(bundle.model, ad).eval()
        records = bundle.records.setdefault("graphs", {})
        scratch = _scratch() if cfg.weights != "fp32" else None
        metrics = {}
        for name, spec in graph_specs(cfg).items():
            records[name] = write_graph(bundle, graph, name, spec, cfg.weights, scratch, metrics)
            records[name]["static"] = cfg.static
        return PassResult(True, metrics)

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        for name in graph_specs(self.config):
            rec = bundle.records["graphs"][name]
            if not (bundle.workdir / rec["onnx"]).is_file():
                raise PreconditionError(f"{rec['onnx']} was not written")
            if self.config.static and any(isinstance(d, str) for s in rec["inputs"].values() for d in s):
                raise PreconditionError(f"static graph {name} has symbolic input dims")
