"""ONNX graphs of `gptq-int` / `pv-int` models: com.microsoft MatMulNBits carrying the model's own codes.

The fp32 graph holds each quantized Linear as its dense weight, transposed ([in, out] initializers, exact in float32).
Each such initializer is matched to its layer by value; NNCF's ONNX backend then writes INT4_SYM in groups of G as
MatMulNBits (`<name>_quantized` uint8 [N, K/G, G/2], element 2j in the low nibble, stored code + 8 with the default
zero point 8; `<name>_scale` float32 [N, K/G]), the embedding and head at int8 (NNCF's backup precision), and the
quantized and scale initializers are replaced by the layer's own codes and scales.

NNCF's ONNX backend has no 2- or 3-bit mode, and ONNX Runtime's MatMulNBits takes bits 2, 4 and 8 only. So:
int4 and int3 codes are written 4-bit (int3's [-4, 3] in the 4-bit blocks: 4 bits per weight in memory); int2 nodes
are rewritten to `bits=2` (`<name>_quantized` [N, K/G, G/4], code + 2, element 4j in the lowest two bits) with
`accuracy_level=4` (int8 activations): ONNX Runtime 1.32 runs 2-bit blocks at level 0 by dequantizing the whole
weight at every call (an 8192 x 8192 layer: 373-396 ms against 2.3 ms at level 4, scripts/bench_matmulnbits.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...compiler.errors import PreconditionError


def pack_matmulnbits(codes: np.ndarray, bits: int = 4) -> np.ndarray:
    """Signed codes [N, nb, G] -> MatMulNBits' uint8 blocks [N, nb, G * bits / 8] (code + 2^(bits-1), the default zero
    point; element j of each byte in bits j*bits .. j*bits + bits - 1: OpenVINO's low-bit order, ov_int.pack_low_bits)."""
    from .ov_int import pack_low_bits
    u = codes.astype(np.int16) + (1 << (bits - 1))
    if u.min(initial=0) < 0 or u.max(initial=0) >= 1 << bits:
        raise PreconditionError(f"int export: codes outside the {bits}-bit MatMulNBits range")
    n, nb, g = u.shape
    return pack_low_bits(u.astype(np.uint8), bits).reshape(n, nb, g * bits // 8)


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


def block_bits(bits: int) -> int:
    """MatMulNBits' width for codes of `bits` (ONNX Runtime has no 3-bit blocks)."""
    return 4 if bits == 3 else bits


def swap_codes(matched: dict[str, str], layers: dict):
    """An `edit` for compress_onnx: replace NNCF's (4-bit) MatMulNBits tensors with the layers' own, in 2-bit blocks
    for int2 layers."""
    from onnx import helper, numpy_helper

    def edit(model) -> None:
        inits = {t.name: t for t in model.graph.initializer}
        nodes = {n.input[1]: n for n in model.graph.node if n.op_type == "MatMulNBits"}
        for wname, lname in matched.items():
            qt, st = inits.get(wname + "_quantized"), inits.get(wname + "_scale")
            node = nodes.get(wname + "_quantized")
            q = layers[lname]
            n, nb, g = q.codes.shape
            if (qt is None or st is None or node is None or list(qt.dims) != [n, nb, g // 2]
                    or list(st.dims) != [n, nb]):
                raise PreconditionError(f"int export: NNCF did not write {lname} as MatMulNBits blocks of {g}")
            bits = block_bits(q.nbits)
            qt.CopyFrom(numpy_helper.from_array(pack_matmulnbits(q.codes.numpy(), bits), qt.name))
            st.CopyFrom(numpy_helper.from_array(q.scales.detach().float().numpy().reshape(n, nb), st.name))
            if bits != 4:
                keep = [a for a in node.attribute if a.name not in ("bits", "accuracy_level")]
                del node.attribute[:]
                node.attribute.extend(keep + [helper.make_attribute("bits", bits),
                                              helper.make_attribute("accuracy_level", 4)])
        int8_tables(model)
    return edit


def head_block(width: int) -> int | None:
    """MatMulNBits' block size for an 8-bit head over `width` inputs (a power of two from 16 dividing it), or None."""
    return next((b for b in (128, 64, 32, 16) if width % b == 0), None)


def int8_tables(model) -> int:
    """Rewrite NNCF's int8 tables (a DequantizeLinear, axis 0, of a constant uint8 [V, C] with per-row scale and zero
    point) where they feed a Gather of rows or a Gemm(transB=1) head, so ONNX Runtime no longer expands the whole
    table to float32 at every call (it does not fold a DequantizeLinear): the Gather takes the int8 rows and their
    scales and dequantizes only those (the same float32 values); the head becomes an 8-bit MatMulNBits (the row's
    scale and zero point in each block, accuracy_level 4: int8 activations, as the int2 nodes). -> tables rewritten."""
    import onnx
    from onnx import helper, numpy_helper
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return 0                                  # Unsqueeze takes its axes as an input from opset 13
    inits = {t.name: t for t in model.graph.initializer}
    done = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 3]:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        q, s, z = (inits.get(i) for i in dq.input)
        if (axis != 0 or q is None or s is None or z is None or len(q.dims) != 2 or q.data_type != onnx.TensorProto.UINT8
                or any(t.data_location == onnx.TensorProto.EXTERNAL for t in (q, s, z))):
            continue
        v, c = q.dims
        if list(s.dims) != [v] or list(z.dims) != [v] or head_block(c) is None:
            continue
        users = [n for n in model.graph.node if dq.output[0] in n.input]
        fits = all((n.op_type == "Gather" and list(n.input).index(dq.output[0]) == 0
                    and all(a.i == 0 for a in n.attribute if a.name == "axis"))
                   or (n.op_type == "Gemm" and len(n.input) == 2 and n.input[1] == dq.output[0]
                       and {a.name: (a.i if a.type == a.INT else a.f) for a in n.attribute} == {"transB": 1})
                   for n in users)
        if not users or not fits:
            continue
        base, bs = dq.output[0], head_block(c)
        extra = [numpy_helper.from_array(np.array([-1], np.int64), base + "/last")]
        head = any(n.op_type == "Gemm" for n in users)
        if head:                  # one copy of the codes, in MatMulNBits' [V, C/bs, bs] blocks; the Gathers read it too
            qa, sa, za = (numpy_helper.to_array(t) for t in (q, s, z))
            extra += [numpy_helper.from_array(qa.reshape(v, c // bs, bs), base + "/w8"),
                      numpy_helper.from_array(np.repeat(sa[:, None], c // bs, 1).astype(np.float32), base + "/s8"),
                      numpy_helper.from_array(np.repeat(za[:, None], c // bs, 1), base + "/z8"),
                      numpy_helper.from_array(np.array([c], np.int64), base + "/width")]
        for k, n in enumerate(users):             # each replaced where it stands (the graph stays in topological order)
            out, p = n.output[0], f"{base}/{k}"
            if n.op_type == "Gather":
                ids = n.input[1]
                rows = ([helper.make_node("Gather", [base + "/w8", ids], [p + "/qb"], axis=0),
                         helper.make_node("Shape", [ids], [p + "/ids_shape"]),
                         helper.make_node("Concat", [p + "/ids_shape", base + "/width"], [p + "/shape"], axis=0),
                         helper.make_node("Reshape", [p + "/qb", p + "/shape"], [p + "/q"])] if head
                        else [helper.make_node("Gather", [q.name, ids], [p + "/q"], axis=0)])
                new = rows + [helper.make_node("Gather", [s.name, ids], [p + "/s"], axis=0),
                              helper.make_node("Gather", [z.name, ids], [p + "/z"], axis=0),
                              helper.make_node("Cast", [p + "/q"], [p + "/qf"], to=onnx.TensorProto.FLOAT),
                              helper.make_node("Cast", [p + "/z"], [p + "/zf"], to=onnx.TensorProto.FLOAT),
                              helper.make_node("Unsqueeze", [p + "/zf", base + "/last"], [p + "/zu"]),
                              helper.make_node("Unsqueeze", [p + "/s", base + "/last"], [p + "/su"]),
                              helper.make_node("Sub", [p + "/qf", p + "/zu"], [p + "/d"]),
                              helper.make_node("Mul", [p + "/d", p + "/su"], [out])]
            else:
                new = [helper.make_node("MatMulNBits", [n.input[0], base + "/w8", base + "/s8", base + "/z8"], [out],
                                        domain="com.microsoft", K=c, N=v, bits=8, block_size=bs, accuracy_level=4)]
            at = list(model.graph.node).index(n)
            model.graph.node.remove(n)
            for i, m in enumerate(new):
                model.graph.node.insert(at + i, m)
        model.graph.node.remove(dq)
        if head and not any(q.name in n.input for n in model.graph.node):
            model.graph.initializer.remove(q)      # read through its blocks now
        model.graph.initializer.extend(extra)
        done += 1
    return done
