"""ONNX graphs of `gptq-int:4` / `pv-int:4` models: com.microsoft MatMulNBits (4-bit) carrying the model's own codes.

The fp32 graph holds each quantized Linear as its dense weight, transposed ([in, out] initializers, exact in float32).
Each such initializer is matched to its layer by value; NNCF's ONNX backend then writes INT4_SYM in groups of G as
MatMulNBits (`<name>_quantized` uint8 [N, K/G, G/2], element 2j in the low nibble, stored code + 8 with the default
zero point 8; `<name>_scale` float32 [N, K/G]), the embedding and head at int8 (NNCF's backup precision), and the
quantized and scale initializers are replaced by the layer's own codes and scales. NNCF's ONNX backend has no 2- or
3-bit mode: those models keep the dense fp32 ONNX graph (docs/passes/quantization.md, "pv-int").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...compiler.errors import PreconditionError


def pack_matmulnbits(codes: np.ndarray) -> np.ndarray:
    """Signed 4-bit codes [N, nb, G] -> MatMulNBits' uint8 blocks [N, nb, G/2] (code + 8, low nibble first)."""
    u = codes.astype(np.int16) + 8
    return (u[:, :, 0::2] | (u[:, :, 1::2] << 4)).astype(np.uint8)


def match_initializers(src: Path, layers: dict) -> dict[str, str]:
    """Name of each fp32 [in, out] initializer of `src` equal to a layer's weight (transposed) -> layer name."""
    import onnx
    from onnx import numpy_helper
    from .ov_int import ValueMatcher
    dense = {n: q.dequantize().detach().numpy() for n, q in layers.items()}
    matcher = ValueMatcher(dense)
    model = onnx.load(str(src), load_external_data=False)
    found: dict[str, str] = {}
    for init in model.graph.initializer:          # the exporter writes [in, out]: transposed only
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        hit = matcher.find(tuple(init.dims), lambda: numpy_helper.to_array(init, base_dir=str(Path(src).parent)),
                           orientations=(True,))
        if hit:
            found[init.name] = hit[0]
    missing = sorted(set(dense) - set(found.values()))
    if missing:
        raise PreconditionError(f"int export: no ONNX initializer matches {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''}")
    return found


def swap_codes(matched: dict[str, str], layers: dict):
    """An `edit` for compress_onnx: replace NNCF's MatMulNBits tensors with the layers' own."""
    from onnx import numpy_helper

    def edit(model) -> None:
        inits = {t.name: t for t in model.graph.initializer}
        for wname, lname in matched.items():
            qt, st = inits.get(wname + "_quantized"), inits.get(wname + "_scale")
            q = layers[lname]
            n, nb, g = q.codes.shape
            if qt is None or st is None or list(qt.dims) != [n, nb, g // 2] or list(st.dims) != [n, nb]:
                raise PreconditionError(f"int export: NNCF did not write {lname} as MatMulNBits blocks of {g}")
            qt.CopyFrom(numpy_helper.from_array(pack_matmulnbits(q.codes.numpy()), qt.name))
            st.CopyFrom(numpy_helper.from_array(q.scales.detach().float().numpy().reshape(n, nb), st.name))
    return edit
