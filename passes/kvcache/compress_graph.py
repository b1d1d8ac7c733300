"""The fixed cache's compression step as a graph (role "compress", compiler/graph.py): every layer's S filled
slots -> exactly M, with LoCoCo's trained compressors (passes/kvcache/lococo.py).

    slot_mask int64 [1, S], then per layer past_key.{i} / past_value.{i} [1, S, H, D], attn_scores.{i} [1, H, S]
 -> per layer new_key.{i} / new_value.{i} [1, M, H, D]

Dynamic artifacts run it with S = the filled slots (a symbolic dim) and an all-ones mask; static (NPU) artifacts
with S = the cache's capacity and a mask of the filled slots (lococo.py: the same result).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ...compiler.graph import compress_input_names, compress_output_names
from ..export.export_onnx import OPSET, _quiet, write_output_dims
from ..export.onnx_storage import save_onnx, scratch_dir


class CompressGraph(nn.Module):
    def __init__(self, compressors: nn.ModuleList):
        super().__init__()
        self.compressors = compressors

    def forward(self, slot_mask: torch.Tensor, *caches: torch.Tensor):
        out = []
        for j, comp in enumerate(self.compressors):
            k, v, s = caches[3 * j], caches[3 * j + 1], caches[3 * j + 2]
            out += list(comp(k, v, s, slot_mask))
        return tuple(out)


def shapes(layers: int, kv_heads: int, head_dim: int, slots: int, capacity) -> tuple[dict, dict]:
    """(input shapes, output shapes) of the graph; capacity: an int (static) or the symbolic "slots"."""
    ins = {}
    for name in compress_input_names(layers):
        if name.startswith("attn_scores."):
            ins[name] = [1, kv_heads, capacity]
        elif name.startswith("past_"):
            ins[name] = [1, capacity, kv_heads, head_dim]
        else:
            ins[name] = [1, capacity]
    outs = {n: [1, slots, kv_heads, head_dim] for n in compress_output_names(layers)}
    return ins, outs


def export_compress(compressors: nn.ModuleList, path: Path, kv_heads: int, head_dim: int, slots: int,
                    capacity) -> dict:
    """Trace the compression graph to ONNX at `path`; -> its graph record (inputs, outputs)."""
    import onnx
    layers = len(compressors)
    ins, outs = shapes(layers, kv_heads, head_dim, slots, capacity)
    n = capacity if isinstance(capacity, int) else slots + 8
    g = torch.Generator().manual_seed(0)
    args = []
    for name, shape in ins.items():
        shape = [n if isinstance(d, str) else d for d in shape]
        if name.startswith("slot_mask"):
            args.append(torch.ones(shape, dtype=torch.long))
        else:
            args.append(torch.rand(shape, generator=g))
    dyn = {name: {i: d for i, d in enumerate(s) if isinstance(d, str)} for name, s in ins.items()}
    dyn = {k: v for k, v in dyn.items() if v} or None
    module = CompressGraph(compressors).eval()
    with scratch_dir("accelc-trace-") as tmpdir:
        tmp = tmpdir / "compress.onnx"
        with torch.no_grad(), _quiet():
            torch.onnx.export(module, tuple(args), str(tmp), dynamo=False, input_names=list(ins),
                              output_names=list(outs), dynamic_axes=dyn, opset_version=OPSET)
        model = onnx.load(str(tmp))
    write_output_dims(model, outs)
    save_onnx(model, path)
    return {"inputs": ins, "outputs": outs, "num_layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
            "role": "compress", "static": isinstance(capacity, int)}
