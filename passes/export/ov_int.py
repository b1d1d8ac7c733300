"""OpenVINO IR for `gptq-int` / `pv-int` models: NNCF's compressed layout, carrying accelc's own codes.

The fp32 ONNX graph holds each quantized Linear as a dense weight (scales * codes, exact in float32)
and the embedding / tied head as their int8-dequantized values. Here:

  1. every f32 weight constant of the converted ov.Model is matched to the torch layer it came from by
     value (its transpose for MatMuls that read [in, out]); a layer with no match is an error;
  2. NNCF compresses the model data-free in the mode of the layer's storage width (`CONTAINER`: INT4_SYM
     -> i4, INT2_SYM -> u2 with one zero point 2; groups of G; the embedding and head INT8_ASYM per
     row, NNCF's backup precision), which writes the decompression subgraph the CPU plugin runs
     compressed (Constant -> Convert -> [Subtract] -> Multiply -> Reshape -> Convert -> MatMul).
     int3 codes are stored as i4: OpenVINO 2026.4's CPU plugin constant-folds u3 (INT3_SYM) weights into
     float32 at compile_model, so a u3 IR is 3-bit on disk and 32-bit in memory; in i4 the same codes run
     compressed at 4 bits (the native backend keeps them at 3, runtime/native);
  3. the code, scale and zero-point constants NNCF computed are replaced by accelc's (the same shapes
     and element types), so the IR holds exactly the tuned model: NNCF's own rounding of W would
     not give back the tuned codes.
"""
from __future__ import annotations

import logging

import numpy as np

from ...compiler.errors import PreconditionError

log = logging.getLogger(__name__)
# the element width each code width is stored in: the narrowest the CPU plugin keeps compressed (u3 is folded to f32)
CONTAINER = {4: 4, 3: 4, 2: 2}
ELEMENT = {4: "i4", 2: "u2"}          # OpenVINO's element type of each storage width


def pack_low_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (0 .. 2^bits - 1) -> bytes in OpenVINO's element order (element 0 in the low bits);
    3 bits use openvino.helpers.pack_data (OpenVINO's u3 layout)."""
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 3:
        import openvino as ov
        from openvino.helpers import pack_data
        return pack_data(v, ov.Type.u3)
    per = 8 // bits
    if v.size % per:
        v = np.concatenate([v, np.zeros(per - v.size % per, np.uint8)])
    v = v.reshape(-1, per).astype(np.uint8)
    out = np.zeros(v.shape[0], np.uint8)
    for j in range(per):
        out |= (v[:, j] & ((1 << bits) - 1)) << (bits * j)
    return out


def low_bit_constant(values: np.ndarray, ov_type, bits: int):
    """An ov Constant of a low-bit element type from unsigned (or, for i4, two's-complement) codes. The
    bytes are copied into a tensor OpenVINO owns (a Tensor over a numpy buffer only borrows it)."""
    import openvino as ov
    raw = np.ascontiguousarray(values).astype(np.int16) & ((1 << bits) - 1)
    packed = pack_low_bits(raw.astype(np.uint8), bits)
    t = ov.Tensor(ov_type, ov.Shape(list(values.shape)))
    dst = t.data
    if dst.size != packed.size:
        raise PreconditionError(f"int export: {bits}-bit packing gave {packed.size} bytes, OpenVINO wants {dst.size}")
    dst[...] = packed.view(dst.dtype).reshape(dst.shape)
    return ov.op.Constant(t)


class ValueMatcher:
    """Which torch layer a graph's weight tensor came from, by value: candidates by shape (either orientation), the
    tensor read only when a shape fits; equal, or within float32 rounding of the layer's largest weight."""

    def __init__(self, dense: dict[str, np.ndarray]):
        self.dense = dense
        self.by_shape: dict[tuple, list[str]] = {}
        for name, w in dense.items():
            self.by_shape.setdefault(w.shape, []).append(name)

    def find(self, shape: tuple, load, orientations=(False, True)) -> tuple[str, bool] | None:
        """-> (layer name, transposed) for a tensor of `shape` whose values `load()` returns, or None."""
        data = None
        for transposed in orientations:
            for name in self.by_shape.get(shape[::-1] if transposed else shape, []):
                data = load() if data is None else data
                w, cand = self.dense[name], (data.T if transposed else data)
                if np.array_equal(cand, w) or np.allclose(cand, w, rtol=0, atol=1e-6 * float(np.abs(w).max() + 1e-30)):
                    return name, transposed
        return None


def _match_constants(model, dense: dict[str, np.ndarray]) -> dict[str, tuple[str, bool]]:
    """friendly name of each f32 rank-2 Constant equal to a dense weight -> (layer name, transposed)."""
    matcher, found = ValueMatcher(dense), {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or str(op.get_element_type()) != "<Type: 'float32'>":
            continue
        shape = tuple(op.get_output_shape(0))
        hit = matcher.find(shape, op.get_data) if len(shape) == 2 else None
        if hit:
            found[op.get_friendly_name()] = hit
    return found


def _by_name(model) -> dict:
    return {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}


def _replace(old, new) -> None:
    new.set_friendly_name(old.get_friendly_name())
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(new.output(0))


def compress_int_ov(model, layers: dict, tables: dict, bits: int, group: int):
    """model: ov.Model with dense f32 weights; layers: name -> IntGroupLinear; tables: "<embedding>" (and
    "<head>" when untied) -> {"weight": dequantized [V, C] f32, "codes": u8 [V, C], "scales": f16 [V, 1],
    "zeros": u8 [V, 1]}. -> the compressed model."""
    import nncf
    import openvino as ov
    from nncf import CompressWeightsMode
    from .onnx_weights import quiet_nncf
    dense = {n: q.dequantize().detach().numpy().astype(np.float32) for n, q in layers.items()}
    for key, t in tables.items():
        dense[key] = t["weight"]
    matched = _match_constants(model, dense)
    missing = sorted(set(dense) - {n for n, _ in matched.values()})
    if missing:
        raise PreconditionError(f"int export: no weight constant in the OpenVINO model matches {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''}")
    quiet_nncf()
    store = CONTAINER[bits]
    mode = {4: CompressWeightsMode.INT4_SYM, 2: CompressWeightsMode.INT2_SYM}[store]
    model = nncf.compress_weights(model, mode=mode, group_size=group, ratio=1.0)
    consts = _by_name(model)
    code_type = getattr(ov.Type, ELEMENT[store])
    for cname, (lname, transposed) in matched.items():
        codes_op, scale_op = consts.get(cname), consts.get(cname + "/scale")
        if codes_op is None or scale_op is None:
            raise PreconditionError(f"int export: NNCF did not compress '{cname}' ({lname}) as expected")
        if lname in tables:
            _swap_int8(consts, cname, codes_op, scale_op, tables[lname], transposed)
            continue
        q = layers[lname]
        codes = q.codes.numpy().astype(np.int16)                       # [N, ng, G] signed
        scales = q.scales.detach().float().numpy().astype(np.float16)  # [N, ng, 1]
        if transposed:                                                  # NNCF grouped along axis 0: [ng, G, N]
            codes, scales = codes.transpose(1, 2, 0), scales.transpose(1, 2, 0)
        shape = tuple(codes_op.get_output_shape(0))
        if shape != codes.shape or tuple(scale_op.get_output_shape(0)) != scales.shape:
            raise PreconditionError(f"int export: NNCF's layout of {lname} {shape} is not the expected {codes.shape}")
        if str(codes_op.get_element_type()) != str(code_type):
            raise PreconditionError(f"int export: NNCF stored {lname} as {codes_op.get_element_type()}, not {code_type}")
        stored = codes if store == 4 else codes + (1 << (store - 1))   # u2 carries the zero point 2
        _replace(codes_op, low_bit_constant(stored, code_type, store))
        _replace(scale_op, ov.op.Constant(np.ascontiguousarray(scales)))     # (a strided f16 array becomes i16)
        if store != 4:
            zp = consts.get(cname + "/zero_point")
            if zp is None or int(np.asarray(zp.get_data()).reshape(-1)[0]) != 1 << (store - 1):
                raise PreconditionError(f"int export: unexpected zero point for {lname}")
    model.validate_nodes_and_infer_types()
    return model


def _swap_int8(consts, cname, codes_op, scale_op, embed, transposed) -> None:
    import openvino as ov
    zp_op = consts.get(cname + "/zero_point")
    codes, scales, zeros = embed["codes"], embed["scales"].astype(np.float16), embed["zeros"]
    if transposed:
        codes, scales, zeros = codes.T, scales.T, zeros.T
    if (zp_op is None or tuple(codes_op.get_output_shape(0)) != codes.shape
            or tuple(scale_op.get_output_shape(0)) != scales.shape or tuple(zp_op.get_output_shape(0)) != zeros.shape):
        raise PreconditionError("int export: NNCF's int8 layout of the embedding is not per row as expected")
    _replace(codes_op, ov.op.Constant(np.ascontiguousarray(codes, dtype=np.uint8)))
    _replace(scale_op, ov.op.Constant(np.ascontiguousarray(scales)))
    _replace(zp_op, ov.op.Constant(np.ascontiguousarray(zeros, dtype=np.uint8)))
