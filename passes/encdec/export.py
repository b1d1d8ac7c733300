"""The encoder graph of an encoder-decoder artifact (`export-encoder`, after export-onnx has written the decoder).

graphs/encoder.onnx (role "encoder", compiler/graph.py): input_ids, position_ids, attention_mask [B, T] ->
new_key.{j} / new_value.{j} [B, T, H, D] for every decoder layer j. Dynamic (cpu, cuda): T symbolic. Static (npu):
T = `length`, the prompt padded on the right with attention_mask 0 (padded slots are never attended to and never
copied into the decoder's cache). Weights at the artifact's precision (NNCF for int8/int4, as the decoder); the
OpenVINO pass converts it with the other graphs. The decoder graphs' records get "memory": "encoder".
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...compiler.errors import InputError, PreconditionError
from ...compiler.graph import MEMORY_ENCODER, encoder_input_names, encoder_output_names
from ...compiler.pass_base import Pass, PassConfig, PassResult
from ..export.export_onnx import (FORMATS, OPSET, WEIGHTS, _quiet, _scratch, check_formats, emit_graph,
                                  needs_scratch, write_output_dims)
from ..export.onnx_storage import save_onnx, scratch_dir
from ..export.onnx_weights import narrow_initializers


@dataclass(frozen=True)
class ExportEncoderConfig(PassConfig):
    weights: str = "fp32"
    formats: tuple = FORMATS
    length: int | None = None        # static: the encoder's fixed input length (None: dynamic)

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")
        check_formats(self.formats)
        if self.length is not None and self.length < 1:
            raise InputError(f"the static encoder length must be >= 1, got {self.length}")


def shapes(graph, length: int | None) -> tuple[dict, dict]:
    B, T = (1, length) if length else ("batch", "new")
    ins = {n: [B, T] for n in encoder_input_names()}
    outs = {n: [B, T, graph.kv_heads, graph.head_dim] for n in encoder_output_names(len(graph.memory))}
    return ins, outs


def export_encoder(graph, path, length: int | None = None) -> None:
    """Trace the EncoderGraph (model.py) to ONNX at `path` (weights in path + '.data')."""
    import onnx
    ins, outs = shapes(graph, length)
    T = length or 3
    args = (torch.zeros(1, T, dtype=torch.long), torch.arange(T)[None], torch.ones(1, T, dtype=torch.long))
    dyn = {n: {i: d for i, d in enumerate(s) if isinstance(d, str)} for n, s in {**ins, **outs}.items()}
    dyn = {n: d for n, d in dyn.items() if d}
    with scratch_dir("accelc-trace-") as tmpdir:
        tmp = tmpdir / "encoder.onnx"
        with torch.no_grad(), _quiet():
            torch.onnx.export(graph.eval(), args, str(tmp), dynamo=False, input_names=list(ins),
                              output_names=list(outs), dynamic_axes=dyn or None, opset_version=OPSET)
        model = onnx.load(str(tmp))
    narrow_initializers(model)
    write_output_dims(model, outs)
    save_onnx(model, path)


class ExportEncoderPass(Pass):
    name = "export-encoder"
    config_class = ExportEncoderConfig

    def requires(self, bundle) -> None:
        if "encdec_module" not in bundle.records:
            raise PreconditionError("no encoder-decoder to export (run convert-encdec first)")
        if not bundle.records.get("graphs"):
            raise PreconditionError("export the decoder first (export-onnx)")

    def call(self, bundle) -> PassResult:
        cfg, ed = self.config, bundle.records["encdec_module"]
        graph = ed.enc_graph.eval()
        emit = "onnx" in cfg.formats
        src = (_scratch(bundle.workdir) / "encoder.onnx") if needs_scratch(cfg.weights, cfg.formats) \
            else bundle.workdir / "graphs" / "encoder.onnx"
        src.parent.mkdir(parents=True, exist_ok=True)
        metrics = {}
        t0 = time.perf_counter()
        export_encoder(graph, src, cfg.length)
        metrics["encoder_export_s"] = round(time.perf_counter() - t0, 2)
        bundle.records.setdefault("onnx_fp32", {})["encoder"] = src
        ins, outs = shapes(graph, cfg.length)
        rec = {"role": "encoder", "static": cfg.length is not None, "inputs": ins, "outputs": outs,
               "layers": [0, graph.body.last], "num_layers": len(graph.memory), "memory_layers": list(graph.memory),
               "kv_heads": graph.kv_heads, "head_dim": graph.head_dim, "weights": cfg.weights}
        if emit:
            rec.update(emit_graph(bundle, "encoder", src, cfg.weights, metrics))
        graphs = bundle.records["graphs"]
        for r in graphs.values():                 # the decoder graphs start from the encoder's memory
            r["memory"] = MEMORY_ENCODER
        graphs["encoder"] = rec
        return PassResult(True, metrics)

    def ensures(self, bundle, result) -> None:
        rec = bundle.records["graphs"].get("encoder")
        if rec is None or ("onnx" in self.config.formats and not (bundle.workdir / rec["onnx"]).is_file()):
            raise PreconditionError("the encoder graph was not written")
