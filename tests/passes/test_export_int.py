"""gptq-int / pv-int export: OpenVINO constants of u2/u3/i4 round-trip exactly, the IR holds the layer's own codes
in NNCF's layout (int3 in i4: the CPU plugin folds u3 to float32), the CPU plugin keeps them low-bit after compile,
ONNX graphs carry them in MatMulNBits (2-bit blocks for int2), and a compiled tiny artifact validates."""
import json

import numpy as np
import pytest
import torch

from accelc.passes.export.export_native import decode, pack_q4s
from accelc.passes.export.ov_int import compress_int_ov, low_bit_constant
from accelc.passes.quantization.int_linear import IntGroupLinear, code_range
from accelc.targets.base import CompileOptions
from tests.tiny_compile import compile_tiny

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

TYPES = {4: "i4", 3: "u3", 2: "u2"}                 # OpenVINO's element type of each width
STORED = {4: "i4", 3: "i4", 2: "u2"}                # what the IR of each code width holds
LOW = {"int4_t", "uint3_t", "uint2_t"}


def _layer(bits, rows=96, groups=2, group=64, seed=0):
    """Random codes; group scales of both signs (gptq-int's flip= gives negative ones)."""
    lo, hi = code_range(bits)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(lo, hi + 1, (rows, groups, group), generator=g, dtype=torch.int8)
    sign = torch.where(torch.rand(rows, groups, 1, generator=g) < 0.5, -1.0, 1.0)
    return IntGroupLinear(codes, sign * (torch.rand(rows, groups, 1, generator=g) * 0.1 + 0.01), bits)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_low_bit_constants_round_trip(bits):
    lo, hi = code_range(bits)
    codes = np.random.default_rng(bits).integers(lo, hi + 1, (40, 3, 64)).astype(np.int16)
    stored = codes if bits == 4 else codes - lo
    c = low_bit_constant(stored, getattr(ov.Type, TYPES[bits]), bits)
    out = ov.Core().compile_model(ov.Model([ops.convert(c, np.float32)], []), "CPU")({})[0]
    np.testing.assert_array_equal(out, stored.astype(np.float32))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("transpose_b", [True, False])
def test_ir_holds_the_layer_codes_and_stays_low_bit(bits, transpose_b):
    q = _layer(bits)
    w = q.dequantize().numpy()
    x = ops.parameter([-1, -1, 128], np.float32, name="x")
    const = ops.constant(w if transpose_b else np.ascontiguousarray(w.T), name="lin.weight")
    mm = ops.matmul(x, const, False, transpose_b, name="lin/MatMul")
    head = ops.constant(np.random.default_rng(1).standard_normal((10, 96)).astype(np.float32), name="head")
    model = compress_int_ov(ov.Model([ops.matmul(mm, head, False, True)], [x]), {"lin": q}, {}, bits, 64)
    conv = next(op for op in model.get_ops() if op.get_friendly_name() == "lin.weight/fq_weights_1/convert")
    dense = ov.Core().compile_model(ov.Model([conv.output(0)], []), "CPU")({})[0]
    np.testing.assert_array_equal(dense if transpose_b else dense.T, w)          # exactly the layer's weight
    assert {str(op.get_element_type()) for op in model.get_ops() if op.get_friendly_name() == "lin.weight"} == {
        str(getattr(ov.Type, STORED[bits]))}
    # every width stays compressed in the compiled model (int3 because it is stored as i4)
    assert "lin/MatMul" in _low_bit_matmuls(ov.Core().compile_model(model, "CPU"))


def test_u3_is_expanded_by_the_cpu_plugin():
    """Why int3 is stored as i4: OpenVINO's CPU plugin folds a u3 decompression into a float32 weight at compile. If
    this starts failing, a newer plugin runs u3 compressed and CONTAINER[3] can become 3."""
    x = ops.parameter([-1, 128], np.float32, name="x")
    codes = np.random.default_rng(3).integers(0, 8, (96, 2, 64)).astype(np.int16)
    w = ops.convert(low_bit_constant(codes, ov.Type.u3, 3), np.float16)
    w = ops.multiply(ops.subtract(w, ops.constant(np.float16(4))), ops.constant(np.full((96, 2, 1), 0.01, np.float16)))
    w = ops.convert(ops.reshape(w, [96, 128], False), np.float32)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, w, False, True, name="lin/MatMul")], [x]), "CPU")
    assert _low_bit_matmuls(compiled) == []


def _low_bit_matmuls(compiled) -> list[str]:
    """Names of the compiled model's nodes that read a u2/u3/i4 input (fully connected on compressed weights)."""
    return [op.get_friendly_name() for op in compiled.get_runtime_model().get_ops()
            if {str(i.get_element_type()).split("'")[1] for i in op.inputs()} & LOW]


def test_native_q4s_holds_the_layer_codes():
    q = _layer(4, rows=8, groups=3, group=32)
    stored = pack_q4s(q.codes.numpy(), q.scales.float().numpy())
    np.testing.assert_array_equal(decode(stored, "q4s", 32), q.dequantize().numpy())


@pytest.mark.parametrize("spec", ["pv-int:2,group=32,samples=8,seqlen=32,steps=2,batch=2",
                                  "gptq-int:4,group=32,samples=4,seqlen=32", "gptq-int:3,group=64,samples=4,seqlen=32",
                                  "gptq-int:2,group=32,samples=4,seqlen=32,flip=true"])
def test_compiled_artifact_validates(tmp_path, spec):
    out, bundle = compile_tiny(tmp_path, lambda calib: CompileOptions(quantize=spec, calib=calib, formats=(
        "openvino", "native", "onnx")))
    manifest = json.loads((out / "manifest.json").read_text())
    val = next(p for p in manifest["passes"] if p["name"] == "validate")["metrics"]
    assert val["openvino_greedy"] >= 0.85 and val["onnxruntime_greedy"] >= 0.85
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(out / "graphs" / "decoder.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].endswith("_quantized")]
    bits = int(spec.split(":")[1][0])
    assert len(nbits) == 7 * bundle.adapter.num_layers            # every decoder linear, every width
    # the int8 embedding: its rows gathered and dequantized alone, the head an 8-bit MatMulNBits (onnx_int.int8_tables)
    assert not [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert [a.i for n in graph.node if n.op_type == "MatMulNBits" and n not in nbits
            for a in n.attribute if a.name == "bits"] == [8]
    assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {2 if bits == 2 else 4}
    from accelc.passes.export.onnx_int import pack_matmulnbits
    from accelc.passes.quantization.int_linear import int_layers
    q = int_layers(bundle.model)["model.layers.0.self_attn.q_proj"]          # its own codes, not NNCF's
    inits = {t.name: t for t in graph.initializer}
    packed = pack_matmulnbits(q.codes.numpy(), 2 if bits == 2 else 4)
    assert any(np.array_equal(numpy_helper.to_array(inits[n.input[1]]), packed) for n in nbits)
    xml = (out / "graphs" / "decoder.xml").read_text()
    assert f'element_type="{STORED[bits]}"' in xml and 'element_type="u3"' not in xml
    # the native backend runs every width in its stored form, checked against the torch model's own codes
    native = manifest["records"]["native"]
    assert native["linear_formats"] == [f"q{bits}s"] and native["validation"]["native_tolerance"] == "int-codes"
    assert bundle.records["quantization"]["int"]["openvino_element"] == STORED[bits]
    assert bundle.records["quantization"]["int"]["onnx_matmulnbits_bits"] == (2 if bits == 2 else 4)
    init = bundle.records["quantization"]["init"]
    assert (init["negative_scales"] > 0) == ("flip=true" in spec)      # negative scales reach every format
    from accelc.runtime.native.weights import map_safetensors
    from accelc.passes.quantization.int_linear import int_layers
    tensors = map_safetensors(out / "native" / "weights.safetensors")
    q = int_layers(bundle.model)["model.layers.0.mlp.down_proj"]
    stored = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith("layers.0.down.")}
    np.testing.assert_array_equal(decode(stored, f"q{bits}s", q.group), q.dequantize().numpy())
    assert stored["q"].nbytes * 8 == q.out_features * q.in_features * (4 if bits == 4 else 2)
    compiled = ov.Core().compile_model(str(out / "graphs" / "decoder.xml"), "CPU")
    assert len(_low_bit_matmuls(compiled)) == 7 * bundle.adapter.num_layers       # every decoder linear, low-bit


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmulnbits_runs_negative_scales(accuracy_level, bits):
    """ONNX Runtime's MatMulNBits multiplies each block by its scale whatever the sign (flip= writes negative
    ones): the layer's codes packed by pack_matmulnbits reproduce x @ W.T, int2 in 2-bit blocks, int3 in 4-bit."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from accelc.passes.export.onnx_int import block_bits, pack_matmulnbits
    q = _layer(bits, rows=16, groups=4, group=32, seed=3)
    n, nb, g = q.codes.shape
    scales = q.scales.detach().float().numpy().reshape(n, nb)
    assert (scales < 0).any() and (scales > 0).any()
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=nb * g, N=n,
                            bits=block_bits(bits), block_size=g, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, nb * g])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
                              [numpy_helper.from_array(pack_matmulnbits(q.codes.numpy(), block_bits(bits)), "w"),
                               numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x = np.random.default_rng(0).standard_normal((2, nb * g)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ q.dequantize().numpy().T
    tol = 1e-4 if accuracy_level == 0 else 2e-2                  # level 4: int8 activations per block
    assert np.abs(y - ref).max() <= tol * np.abs(ref).max()


def test_int8_table_rewrite_keeps_rows_exact_and_the_head_close():
    """NNCF's int8 embedding (DequantizeLinear of the whole table) feeding a Gather and a tied Gemm head: after
    int8_tables the Gather dequantizes only its rows (bit-exact) and the head is an 8-bit MatMulNBits."""
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from accelc.passes.export.onnx_int import int8_tables
    v, c = 300, 128
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (v, c)).astype(np.uint8)
    s = (rng.random(v) * 0.01 + 0.001).astype(np.float32)
    z = rng.integers(100, 156, v).astype(np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["t"], axis=0),
             helper.make_node("Gather", ["t", "ids"], ["e"]), helper.make_node("Reshape", ["e", "shp"], ["e2"]),
             helper.make_node("Gemm", ["e2", "t"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3, c]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, v])],
                              [numpy_helper.from_array(q, "q"), numpy_helper.from_array(s, "s"),
                               numpy_helper.from_array(z, "z"), numpy_helper.from_array(np.array([-1, c]), "shp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    ids = rng.integers(0, v, (2, 3))

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})
    e0, y0 = run(model)
    np.testing.assert_array_equal(e0, ((q.astype(np.float32) - z[:, None]) * s[:, None])[ids])
    assert int8_tables(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 0
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == 1
    assert sum(t.data_type == TensorProto.UINT8 and np.prod(t.dims) == v * c for t in model.graph.initializer) == 1
    e1, y1 = run(model)
    np.testing.assert_array_equal(e1, e0)                                     # the rows: the same float32 values
    assert np.abs(y1 - y0).max() <= 0.01 * np.abs(y0).max()                   # the head: int8 activations
    assert int8_tables(model) == 0                                            # nothing left to rewrite
