"""ONNX -> OpenVINO conversion that keeps codebook decompression (Gather of a constant table by constant
codes) as ops instead of folding it into a dense weight.

ov.convert_model's MOC transformations constant-fold every all-constant subgraph, so a codebook
layer's Gather(codebook, Convert(uint8 codes)) becomes a dense float32 weight (SmolLM2 2x8g8: a
538 MB IR instead of 142 MB). Here the ONNX frontend converts without folding, the Gathers whose
data and indices are constants (through Converts) and those Converts get OpenVINO's
DisableConstantFolding runtime attribute (serialized into the IR, honoured when it is compiled),
then the usual MOC transformations run. Graphs without such Gathers take ov.convert_model unchanged.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)
DISABLE_CF = "DisableConstantFolding_0"      # rt_info key of ov::pass::DisableConstantFolding
NARROW = {f"<Type: '{t}'>" for t in ("uint8_t", "int8_t", "uint16_t", "int16_t")}


def _const_source(out, narrow: bool = False) -> list | None:
    """The Convert nodes between `out` and a Constant, or None when `out` is not a constant (with
    `narrow`: not an 8/16-bit integer constant, as passes/onnx_weights.narrow_initializers stores codes)."""
    chain, node = [], out.get_node()
    while node.get_type_name() == "Convert":
        chain.append(node)
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    if narrow and str(node.get_element_type()) not in NARROW:
        return None
    return chain


def mark_constant_gathers(model) -> int:
    """Disable constant folding on Gather(constant data, constant indices) and their Converts; -> count."""
    n = 0
    for op in model.get_ops():
        if op.get_type_name() != "Gather":
            continue
        data, idx = _const_source(op.input_value(0)), _const_source(op.input_value(1), narrow=True)
        if data is None or idx is None:
            continue
        for node in [op, *data, *idx]:
            node.get_rt_info()[DISABLE_CF] = ""
        n += 1
    return n


def convert_onnx(path: str):
    """ov.Model from an ONNX file, keeping constant table lookups (codebook decompression) unfolded."""
    import openvino as ov
    from openvino._offline_transformations import apply_fused_names_cleanup, apply_moc_transformations
    from openvino.frontend import FrontEndManager
    fe = FrontEndManager().load_by_framework("onnx")
    model = fe.convert(fe.load(path))
    n = mark_constant_gathers(model)
    if n == 0:
        return ov.convert_model(path)
    apply_moc_transformations(model, cf=False)
    apply_fused_names_cleanup(model)
    log.info("kept %d constant table lookups (codebook decompression) unfolded", n)
    return model
