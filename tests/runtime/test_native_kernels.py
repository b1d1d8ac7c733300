"""Native kernels against numpy, every weight format, odd shapes, several token rows, row ranges, bias."""
import ctypes

import llvmlite.ir as ir
import numpy as np
import pytest

from accelc.passes.export.export_native import decode, encode, pack_low_bit, unpack_low_bit
from accelc.runtime.native import kernels
from accelc.runtime.native.jit import compile_ir
from accelc.runtime.native.kernels_avx2 import linear_avx2
from accelc.runtime.native.kernels_dense import linear_dense_rows


def _linear(fmt, n, k, bias, group=0, books=0):
    m = ir.Module("t")
    fn = kernels.linear(m, fmt, n, k, bias, group, books)
    fn.linkage = "external"
    c = compile_ir(str(m), [fn.name])
    proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5))
    return c, proto(c.addresses[fn.name])


def _stored(fmt, n, k, rng, group, books):
    if fmt == "cb":
        t = {"codes": rng.integers(0, 256, (n, k // group, books), dtype=np.uint8),
             "codebooks": rng.standard_normal((books, 256, group)).astype(np.float16),
             "scales": (rng.random(n) + 0.5).astype(np.float16)}
        parts = [t["codes"], t["codebooks"].astype(np.float32), t["scales"].astype(np.float32)]
        return t, parts
    t = _encoded(fmt, n, k, rng, group)
    return t, list(t.values())


def _encoded(fmt, n, k, rng, group):
    """Stored tensors of a random weight: quantized from floats, or (q2s / q3s: the layers of gptq-int / pv-int)
    random codes over the whole range and random group scales."""
    if fmt in ("q2s", "q3s"):
        bits = int(fmt[1])
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (n, k // group, group))
        return pack_low_bit(codes, (rng.random((n, k // group)) + 0.5).astype(np.float32), bits)
    return encode(rng.standard_normal((n, k)).astype(np.float32), fmt, group)


CASES = [("f32", 37, 75, 0, 0), ("f16", 29, 33, 0, 0), ("q8a", 45, 97, 0, 0), ("q4s", 21, 96, 32, 0),
         ("q4s", 17, 128, 64, 0), ("q2s", 13, 96, 32, 0), ("q2s", 9, 40, 8, 0), ("q3s", 15, 128, 64, 0),
         ("q3s", 7, 48, 16, 0), ("cb", 19, 72, 8, 2), ("cb", 23, 40, 8, 1), ("cb", 9, 64, 16, 2), ("cb", 11, 36, 4, 3)]


@pytest.mark.parametrize("fmt,n,k,group,books", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_numpy(fmt, n, k, group, books, bias):
    rng = np.random.default_rng(n * k + bias)
    stored, parts = _stored(fmt, n, k, rng, group, books)
    w = decode(stored, fmt, group)
    b = rng.standard_normal(n).astype(np.float32)
    T, ldx, ldy = 3, k + 5, n + 7                       # padded rows: the kernel must honour the strides
    x = rng.standard_normal((T, ldx)).astype(np.float32)
    y = np.full((T, ldy), 7.0, dtype=np.float32)
    keep, fn = _linear(fmt, n, k, bias, group, books)
    ptrs = [p.ctypes.data for p in parts] + [None] * (3 - len(parts))
    r0, r1 = 3, n - 2                                   # a row range: other rows stay untouched
    fn(*ptrs, b.ctypes.data if bias else None, x.ctypes.data, y.ctypes.data, T, r0, r1, ldx, ldy)
    ref = x[:, :k] @ w.T + (b if bias else 0)
    np.testing.assert_allclose(y[:, r0:r1], ref[:, r0:r1], rtol=2e-5, atol=2e-4)
    assert (y[:, :r0] == 7).all() and (y[:, r1:] == 7).all()


def test_quantizers_round_trip_within_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    q8 = encode(w, "q8a")
    assert np.abs(decode(q8, "q8a") - w).max() <= q8["scale"].max() / 2 + 1e-6
    q4 = encode(w, "q4s", 64)
    err = np.abs(decode(q4, "q4s", 64) - w).reshape(16, 2, 64)
    assert (err <= q4["scale"].astype(np.float32)[:, :, None] * 1.01).all()   # clamped max: <= one step


@pytest.mark.parametrize("bits,group", [(2, 8), (2, 64), (3, 16), (3, 128)])
def test_low_bit_layout_round_trips_every_code(bits, group):
    rng = np.random.default_rng(bits * group)
    codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (5, 3, group))
    stored = pack_low_bit(codes, np.ones((5, 3), np.float32), bits)
    assert stored["q"].shape == (5, 3 * group // 4) and (bits == 2 or stored["h"].shape == (5, 3 * group // 8))
    np.testing.assert_array_equal(unpack_low_bit(stored, group, bits), codes.reshape(5, -1))
    # the planes: element j + s G/4 of a group sits in bits 2s of byte j; a q3s high bit of element j + s G/8 in
    # bit s of byte j of the group's G/8
    u = codes.reshape(5, -1) + (1 << (bits - 1))
    assert (stored["q"][0, 1] >> 2) & 3 == u[0, 1 + group // 4] & 3
    if bits == 3:
        assert (stored["h"][0, group // 8 + 1] >> 3) & 1 == u[0, group + 1 + 3 * group // 8] >> 2
    with pytest.raises(ValueError):
        pack_low_bit(codes + (1 << bits), np.ones((5, 3), np.float32), bits)


def _quantized_rows(x, block):
    """numpy model of the VNNI kernels' activation quantization: per block of `block`, s = max|x| / 127."""
    T, k = x.shape
    xb = x.reshape(T, k // block, block)
    s = np.abs(xb).max(axis=2) / 127.0
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1), 0)
    q = np.rint(xb * inv[:, :, None]).clip(-127, 127)
    return (q * s[:, :, None]).reshape(T, k).astype(np.float32)


VNNI_CASES = [("q8a", 40, 128, 0), ("q8a", 19, 576, 0), ("q4s", 21, 128, 32), ("q4s", 33, 192, 64), ("q4s", 18, 256, 128),
              ("q2s", 21, 128, 32), ("q2s", 17, 576, 64), ("q3s", 19, 192, 64), ("q3s", 12, 256, 128), ("q3s", 9, 96, 32)]


HOST = __import__("accelc.runtime.native.jit", fromlist=["x"]).host_target().features.split(",")
ISA_NEEDS = {"vnni": "+avx512vnni", "avx2": "+avx2"}


@pytest.mark.parametrize("isa", [pytest.param(i, marks=pytest.mark.skipif(ISA_NEEDS[i] not in HOST,
                                                                          reason=f"the host has no {ISA_NEEDS[i]}"))
                                 for i in kernels.INT_ISAS])
@pytest.mark.parametrize("fmt,n,k,group", VNNI_CASES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 2, 3, 6, 9])      # the AVX2 kernel's token tiles of 4 and remainder tiles of 1-3
def test_vnni_linear_matches_numpy(fmt, n, k, group, bias, isa, T):
    m = ir.Module("t")
    tmax = 12
    if isa == "vnni" and fmt in ("q2s", "q3s"):     # the AVX2 kernel runs them on VNNI hosts (program.py)
        with pytest.raises(ValueError):
            kernels.linear_vnni(m, fmt, n, k, bias, group, tmax)
        return
    fn = (kernels.linear_vnni(m, fmt, n, k, bias, group, tmax) if isa == "vnni"
          else linear_avx2(m, fmt, n, k, bias, group, tmax))
    fn.linkage = "external"
    c = compile_ir(str(m), [fn.name])
    call = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_void_p]))(c.addresses[fn.name])
    rng = np.random.default_rng(n + k)
    stored = _encoded(fmt, n, k, rng, group or None)
    parts = list(stored.values())
    w = decode(stored, fmt, group or None)
    b = rng.standard_normal(n).astype(np.float32)
    ldx, ldy = k + 3, n + 1
    x = rng.standard_normal((T, ldx)).astype(np.float32)
    y = np.full((T, ldy), 7.0, dtype=np.float32)
    scratch = np.zeros(kernels.scratch_bytes(tmax, k), dtype=np.uint8)
    ptrs = [p.ctypes.data for p in parts] + [None] * (3 - len(parts))
    r0, r1 = 2, n - 1                                   # a row range: other rows stay untouched
    call(*ptrs, b.ctypes.data if bias else None, x.ctypes.data, y.ctypes.data, T, r0, r1, ldx, ldy, scratch.ctypes.data)
    block = kernels.vnni_block(fmt, k, group)
    ref = _quantized_rows(x[:, :k], block) @ w.T + (b if bias else 0)
    np.testing.assert_allclose(y[:, r0:r1], ref[:, r0:r1], rtol=1e-4, atol=1e-3)
    assert (y[:, :r0] == 7).all() and (y[:, r1:] == 7).all()
    exact = x[:, :k] @ w.T + (b if bias else 0)
    assert np.abs(y[:, r0:r1] - exact[:, r0:r1]).max() < 0.05 * np.abs(exact).max()   # int8 activations: close


def _check_tiled(call, parts, w, n, k, bias, seed):
    """A row-pair x token-tile kernel against numpy, and bitwise the same over row ranges and token tiles."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n).astype(np.float32)
    T, ldx, ldy = 7, k + 1, n + 2                 # tiles of 4, 2 and 1 tokens
    x = rng.standard_normal((T, ldx)).astype(np.float32)

    def run(xs, r0, r1):
        y = np.full((len(xs), ldy), 7.0, dtype=np.float32)
        xs = np.ascontiguousarray(xs)
        call(*[p.ctypes.data for p in parts], *[None] * (3 - len(parts)), b.ctypes.data if bias else None,
             xs.ctypes.data, y.ctypes.data, len(xs), r0, r1, ldx, ldy)
        return y

    ref = x[:, :k] @ w.T + (b if bias else 0)
    full = run(x, 0, n)
    for r0, r1 in ((0, n), (1, n), (2, n - 1)):                 # even and odd row ranges
        y = run(x, r0, r1)
        np.testing.assert_allclose(y[:, r0:r1], ref[:, r0:r1], rtol=2e-5, atol=2e-4)
        assert (y[:, :r0] == 7).all() and (y[:, r1:] == 7).all()
        # bitwise the same whichever row pair (or the odd-row path) computes a row
        np.testing.assert_array_equal(y[:, r0:r1], full[:, r0:r1])
    # and whichever token tile: T tokens at once equal one at a time and any chunking
    one = np.concatenate([run(x[t:t + 1], 0, n) for t in range(T)])
    np.testing.assert_array_equal(full, one)
    np.testing.assert_array_equal(np.concatenate([run(x[:3], 0, n), run(x[3:], 0, n)]), full)


def _compiled(fn_of):
    m = ir.Module("t")
    fn = fn_of(m)
    fn.linkage = "external"
    c = compile_ir(str(m), [fn.name])
    return c, ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5))(c.addresses[fn.name])


@pytest.mark.parametrize("n,k,group,books", [(19, 72, 8, 2), (23, 40, 8, 1), (9, 64, 16, 2), (11, 36, 4, 3), (8, 24, 8, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_codebook_two_row_kernel_matches_numpy(n, k, group, books, bias):
    keep, call = _compiled(lambda m: kernels.linear_cb_rows(m, n, k, group, books, bias))
    rng = np.random.default_rng(n * k + 1)
    stored, parts = _stored("cb", n, k, rng, group, books)
    _check_tiled(call, parts, decode(stored, "cb", group), n, k, bias, n * k + 2)


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n,k", [(19, 75), (8, 16), (13, 33), (6, 7), (17, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_two_row_kernel_matches_numpy(fmt, n, k, bias):
    keep, call = _compiled(lambda m: linear_dense_rows(m, fmt, n, k, bias))
    rng = np.random.default_rng(n * k + 3)
    w = rng.standard_normal((n, k)).astype(np.float32)
    if fmt == "bf16":                       # bfloat16: the upper half of a float32's bits
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)
        parts, w = [bits], (bits.astype(np.uint32) << 16).view(np.float32)
    elif fmt == "f16":
        parts = [w.astype(np.float16)]
        w = parts[0].astype(np.float32)
    else:
        parts = [w]
    _check_tiled(call, parts, w, n, k, bias, n * k + 4)


def test_inline_exp_matches_numpy_to_a_few_ulp():
    """kernels._exp (vectorizable Cephes expf, used by softmax and SiLU) against float64 numpy over its range,
    and its clamps: no inf, no NaN, no denormals."""
    from accelc.runtime.native.irgen import F32, PF32, Fn
    m = ir.Module("t")
    f = Fn(m, "vexp", [("x", PF32), ("y", PF32), ("n", ir.IntType(64))], internal=False)
    with f.loop(0, f["n"]) as i:
        f.store(kernels._exp(f, f.load(f["x"], i)), f["y"], i)
    f.finish()
    c = compile_ir(str(m), ["vexp"])
    call = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(c.addresses["vexp"])
    x = np.concatenate([np.linspace(-87, 88, 200001), np.random.default_rng(0).uniform(-20, 5, 10001)]).astype(np.float32)
    y = np.zeros_like(x)
    call(x.ctypes.data, y.ctypes.data, len(x))
    ref = np.exp(x.astype(np.float64))
    rel = np.abs(y - ref) / ref
    assert rel.max() < 2.5e-7, rel.max()         # 1.2e-7 measured (numpy's own float32 exp: 2e-7)
    edge = np.array([-1e30, -200, -87.5, 88.5, 1e30, 0.0], dtype=np.float32)
    out = np.zeros_like(edge)
    call(edge.ctypes.data, out.ctypes.data, len(edge))
    assert np.isfinite(out).all() and (out[:3] < 2e-38).all() and (out[:3] > 0).all() and out[5] == 1.0
    assert out[3] == out[4] and out[3] > 1e38
