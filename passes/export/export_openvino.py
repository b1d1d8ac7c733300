"""Convert the exported ONNX graph(s) to OpenVINO IR and compress weights with NNCF.

Source of truth: the fp32 ONNX graph written by export-onnx (kept in a scratch dir when the ONNX
side itself is compressed). int8 = NNCF INT8_ASYM, int4 = NNCF INT4_SYM with the largest group
size in (128, 64, 32) dividing every layer input; fp16 = compress_to_fp16 on save; fp32 keeps fp32.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ...compiler.bundle import ModelBundle
from ...compiler.errors import InputError, PreconditionError
from ...compiler.pass_base import Pass, PassConfig, PassResult
from .onnx_weights import group_size_for, quiet_nncf
from .ov_decompression import convert_onnx

log = logging.getLogger(__name__)
WEIGHTS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class ExportOpenVINOConfig(PassConfig):
    weights: str = "fp32"

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise InputError(f"unknown weight precision '{self.weights}' (choose from {', '.join(WEIGHTS)})")


def compress_ov(model, weights: str, adapter):
    """NNCF weight compression of an ov.Model for int8/int4; fp32/fp16 are handled at save time."""
    if weights not in ("int8", "int4"):
        return model
    import nncf
    from nncf import CompressWeightsMode
    quiet_nncf()
    if weights == "int8":
        return nncf.compress_weights(model, mode=CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(model, mode=CompressWeightsMode.INT4_SYM, group_size=group_size_for(adapter),
                                 ratio=1.0)


def compress_int(model, bundle):
    """`gptq-int` / `pv-int` models: NNCF's layout with the model's own codes (passes/export/ov_int.py)."""
    from ..quantization.int_linear import int_layers
    from .ov_int import CONTAINER, ELEMENT, compress_int_ov
    layers = int_layers(bundle.model)
    spec = bundle.records["quantization"]["int"]
    spec["openvino_element"] = ELEMENT[CONTAINER[spec["bits"]]]       # what the IR stores the codes in
    ad = bundle.adapter
    extra = {}
    for key, mod in (("<embedding>", ad.embed), ("<head>", None if ad.tied_embeddings else ad.head)):
        if mod is not None and getattr(mod, "int8", None) is not None:
            extra[key] = {"weight": mod.weight.detach().float().numpy(),
                          **{k: v.numpy() for k, v in mod.int8.items()}}
    return compress_int_ov(model, layers, extra, spec["bits"], spec["group"])


def has_int_layers(bundle) -> bool:
    return "int" in (bundle.records.get("quantization") or {})


class ExportOpenVINOPass(Pass):
    name = "export-openvino"
    config_class = ExportOpenVINOConfig

    def requires(self, bundle: ModelBundle) -> None:
        graphs = bundle.records.get("graphs")
        if not graphs:
            raise PreconditionError("no ONNX graphs to convert (run export-onnx first)")
        sources = bundle.records.get("onnx_fp32", {})
        for name in graphs:
            src = sources.get(name)
            if src is None or not src.is_file():
                raise PreconditionError(f"the fp32 ONNX graph '{name}' is missing (run export-onnx first)")
        if graphs[next(iter(graphs))].get("weights", self.config.weights) != self.config.weights:
            raise PreconditionError("export-onnx used a different weight precision")

    def call(self, bundle: ModelBundle) -> PassResult:
        import openvino as ov
        metrics = {}
        for name, rec in bundle.records["graphs"].items():
            src = bundle.records["onnx_fp32"][name]
            t0 = time.perf_counter()
            model = convert_onnx(str(src))       # keeps codebook decompression (passes/export/ov_decompression.py)
            if has_int_layers(bundle):
                model = compress_int(model, bundle)
            else:
                model = compress_ov(model, self.config.weights, bundle.adapter)
            rel = f"graphs/{name}.xml"
            out = bundle.workdir / rel
            ov.save_model(model, str(out), compress_to_fp16=self.config.weights == "fp16")
            metrics[f"{name}_convert_s"] = round(time.perf_counter() - t0, 2)
            bin_rel = rel[:-4] + ".bin"
            bundle.add_file(rel, out)
            bundle.add_file(bin_rel, bundle.workdir / bin_rel)
            rec["openvino"] = rel
            metrics[f"{name}_mb"] = round((bundle.workdir / bin_rel).stat().st_size / 1e6, 1)
        return PassResult(True, metrics)

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        for name, rec in bundle.records["graphs"].items():
            if not (bundle.workdir / rec["openvino"]).is_file():
                raise PreconditionError(f"{rec['openvino']} was not written")
