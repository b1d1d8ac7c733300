"""The native backend's kernels, emitted as LLVM IR specialised to one model's shapes and weight formats.

Each emitter adds one internal function to a module (once per distinct signature) and returns it.
Row-parallel kernels take a row range [r0, r1) so the caller can split rows between threads; the others
take a range of token rows or heads. All activations are float32.

Linear kernels compute y[t, n] = sum_k W[n, k] x[t, k] (+ bias[n]) for n in [r0, r1), t in [0, T), with
x rows `ldx` apart and y rows `ldy` apart, reading W in its stored format (export_native.py):

    f32 / f16   dense rows, converted in registers
    bf16        dense rows of bfloat16 (made at load from f32 by the precision policy: model.py)
    q8a         u8 codes, w = (q - zero[n]) * scale[n]: accumulates (q - zero) x, scales once per row
    q4s         two signed 4-bit codes per byte; byte j of group g holds elements g*G + j (low nibble)
                and g*G + G/2 + j (high nibble), both stored as q + 8; f16 scale per (row, group)
    q2s         four signed 2-bit codes per byte, stored as q + 2; byte j of group g holds elements
                g*G + j + s*G/4 in bits 2s, 2s + 1 (s = 0..3: planes, unpacked with shifts and one mask);
                f16 scale per (row, group)
    q3s         signed 3-bit codes stored as q + 4: the low two bits as q2s (w0), the high bits in a second
                plane (w2) of G/8 bytes per group, byte j holding elements g*G + j + s*G/8 in bit s; f16 scale
                per (row, group)
    cb          AQLM codebooks MxBgG (B = 8): per group, the M selected codebook vectors (f32, G wide,
                L1-resident) times x's group, G partial sums kept in registers; one scale per row
"""
from __future__ import annotations

import math
import os

import llvmlite.ir as ir

from .irgen import F16, F32, FAST, I8, I16, I32, I64, PF16, PF32, PI8, PI64, Fn, c64, cf


def c32(v: int) -> ir.Constant:
    return ir.Constant(I32, int(v))

LINEAR_ARGS = [("w0", PI8), ("w1", PI8), ("w2", PI8), ("bias", PF32), ("x", PF32), ("y", PF32),
               ("T", I64), ("r0", I64), ("r1", I64), ("ldx", I64), ("ldy", I64)]


def _cached(module: ir.Module, name: str):
    return module.globals.get(name)


# grouped symmetric integer formats: bits per code; a code is stored as q + 2^(bits - 1) (unsigned)
INT_GROUP_BITS = {"q4s": 4, "q3s": 3, "q2s": 2}
# the stored tensors of each format a linear kernel reads, in the order of its w0, w1, w2 arguments
WEIGHT_PARTS = {"f32": ("w",), "f16": ("w",), "bf16": ("w",), "q8a": ("q", "scale", "zero"), "q4s": ("q", "scale"),
                "q3s": ("q", "scale", "h"), "q2s": ("q", "scale"), "cb": ("codes", "codebooks", "scales")}


def int_offset(fmt: str) -> int:
    return 1 << (INT_GROUP_BITS[fmt] - 1)


def code_row_bytes(fmt: str, k: int) -> int:
    """Bytes of one row's codes in w0 (the q3s high-bit plane, k / 8 bytes a row, is w2)."""
    return {"q8a": k, "q4s": k // 2, "q3s": k // 4, "q2s": k // 4}[fmt]


def linear(module: ir.Module, fmt: str, n: int, k: int, bias: bool, group: int = 0, books: int = 0) -> ir.Function:
    if fmt in ("f32", "f16", "bf16"):      # dense rows: two rows x a token tile per weight load
        from .kernels_dense import linear_dense_rows
        return linear_dense_rows(module, fmt, n, k, bias)
    name = f"lin_{fmt}_{n}x{k}_g{group}_m{books}{'_b' if bias else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, LINEAR_ARGS)
    b = f.b
    x, y, T = f["x"], f["y"], f["T"]
    with f.loop(f["r0"], f["r1"]) as row:
        with f.loop(0, T) as t:
            xt = f.at(x, f.mul(t, f["ldx"]))
            if fmt == "q8a":
                q = f.at(f["w0"], f.mul(row, k))
                scale = f.load(b.bitcast(f["w1"], PF32), row)
                zero = f.load(b.bitcast(f["w2"], PF32), row)
                acc = f.var(F32, cf(0))
                with f.loop(0, k) as i:
                    f.accumulate(acc, f.fmul(f.fsub(f.u8_f32(f.load(q, i)), zero), f.load(xt, i)))
                out = f.fmul(b.load(acc), scale)
            elif fmt == "q4s":
                half = group // 2
                q = f.at(f["w0"], f.mul(row, k // 2))
                sc = f.at(b.bitcast(f["w1"], PF16), f.mul(row, k // group))
                tot = f.var(F32, cf(0))
                with f.loop(0, k // group) as g:
                    qg = f.at(q, f.mul(g, half))
                    xg = f.at(xt, f.mul(g, group))
                    acc = f.var(F32)
                    b.store(cf(0), acc)
                    with f.loop(0, half) as j:
                        byte = b.zext(f.load(qg, j), I32)
                        lo = b.sitofp(b.sub(b.and_(byte, c32(15)), c32(8)), F32)
                        hi = b.sitofp(b.sub(b.lshr(byte, c32(4)), c32(8)), F32)
                        f.accumulate(acc, f.fadd(f.fmul(lo, f.load(xg, j)), f.fmul(hi, f.load(xg, f.add(j, half)))))
                    f.accumulate(tot, f.fmul(b.load(acc), f.to_f32(f.load(sc, g))))
                out = b.load(tot)
            elif fmt in ("q2s", "q3s"):
                out = _low_bit_row(f, fmt, row, xt, k, group)
            elif fmt == "cb":
                out = _codebook_row(f, row, xt, k, group, books)
            else:
                raise ValueError(f"no native kernel for weight format {fmt}")
            if bias:
                out = f.fadd(out, f.load(f["bias"], row))
            f.store(out, y, f.mul(t, f["ldy"]), row)
    return f.finish()


def _low_bit_row(f: Fn, fmt: str, row, xt, k: int, group: int):
    """One output of a q2s / q3s layer in float32 (the float kernel: --precision f32, CPUs without AVX2)."""
    b = f.b
    quarter = group // 4
    q = f.at(f["w0"], f.mul(row, k // 4))
    sc = f.at(b.bitcast(f["w1"], PF16), f.mul(row, k // group))
    hb = f.at(f["w2"], f.mul(row, k // 8)) if fmt == "q3s" else None
    off = c32(int_offset(fmt))
    tot = f.var(F32, cf(0))
    with f.loop(0, k // group) as g:
        qg = f.at(q, f.mul(g, quarter))
        xg = f.at(xt, f.mul(g, group))
        acc = f.var(F32, cf(0))
        with f.loop(0, quarter) as j:
            byte = b.zext(f.load(qg, j), I32)
            for s in range(4):
                i = f.add(j, s * quarter)                   # the element within the group
                u = b.and_(b.lshr(byte, c32(2 * s)), c32(3))
                if hb is not None:                          # its high bit: bit i / (G/8) of byte i % (G/8)
                    eighth = group // 8
                    hbyte = b.zext(f.load(hb, f.mul(g, eighth), b.urem(i, c64(eighth))), I32)
                    bit = b.and_(b.lshr(hbyte, b.trunc(b.udiv(i, c64(eighth)), I32)), c32(1))
                    u = b.or_(u, b.shl(bit, c32(2)))
                f.accumulate(acc, f.fmul(b.sitofp(b.sub(u, off), F32), f.load(xg, i)))
        f.accumulate(tot, f.fmul(b.load(acc), f.to_f32(f.load(sc, g))))
    return b.load(tot)


def _dense(f: Fn, fmt: str):
    return f.b.bitcast(f["w0"], {"f32": PF32, "f16": PF16, "bf16": I16.as_pointer()}[fmt])


def _dense_value(f: Fn, fmt: str, v):
    """A stored dense weight as float32 (bf16: the upper half of a float32's bits)."""
    if fmt == "bf16":
        b = f.b
        return b.bitcast(b.shl(b.zext(v, I32), ir.Constant(I32, 16)), F32)
    return f.to_f32(v)


DECODE_CHAINS = 4        # vector accumulators of the decode-and-FMA codebook kernel


def _codebook_row(f: Fn, row, xt, k: int, group: int, books: int):
    """One output of a codebook layer: per input group, the sum of the M selected codebook vectors (one
    G-wide vector load each, contiguous: codebooks are [M, 256, G] f32) times x's group, accumulated in two
    G-wide vector registers (alternating groups, to hide the FMA latency), reduced once, times the row
    scale. No gathers: the codes index whole vectors."""
    b = f.b
    vt = ir.VectorType(F32, group)
    pv = vt.as_pointer()
    codes = f.at(f["w0"], f.mul(row, (k // group) * books))
    cbk = b.bitcast(f["w1"], PF32)
    scale = f.load(b.bitcast(f["w2"], PF32), row)
    zero = ir.Constant(vt, [0.0] * group)
    accs = [f.var(vt, zero) for _ in range(DECODE_CHAINS)]
    ngroups = k // group
    pairs = ngroups // DECODE_CHAINS

    def one(g, acc):
        xv = b.load(b.bitcast(f.at(xt, f.mul(g, group)), pv), align=4)
        vec = None
        for m in range(books):
            code = b.zext(f.load(codes, f.mul(g, books), m), I64)
            v = b.load(b.bitcast(f.at(cbk, f.mul(f.add(code, m * 256), group)), pv), align=4)
            vec = v if vec is None else b.fadd(vec, v, flags=FAST)
        b.store(b.fadd(b.load(acc), b.fmul(vec, xv, flags=FAST), flags=FAST), acc)

    with f.loop(0, pairs) as p:
        g0 = f.mul(p, DECODE_CHAINS)
        for j in range(DECODE_CHAINS):
            one(f.add(g0, j), accs[j])
    for g in range(pairs * DECODE_CHAINS, ngroups):
        one(c64(g), accs[0])
    vals = [b.load(a) for a in accs]
    while len(vals) > 1:
        vals = [b.fadd(vals[i], vals[i + 1], flags=FAST) if i + 1 < len(vals) else vals[i]
                for i in range(0, len(vals), 2)]
    tot = vals[0]
    total = b.extract_element(tot, ir.Constant(I32, 0))
    for i in range(1, group):
        total = f.fadd(total, b.extract_element(tot, ir.Constant(I32, i)))
    return f.fmul(total, scale)


def _rms(f: Fn, x, c: int, eps: float):
    """1 / sqrt(mean(x^2) + eps) of a row of c floats."""
    b = f.b
    ss = f.var(F32, cf(0))
    with f.loop(0, c) as i:
        v = f.load(x, i)
        f.accumulate(ss, f.fmul(v, v))
    mean = f.fadd(f.fdiv(b.load(ss), cf(c)), cf(eps))
    return f.fdiv(cf(1.0), f.intrinsic("llvm.sqrt", mean))


def add_norm(module: ir.Module, c: int, post_eps: float | None, next_eps: float | None) -> ir.Function:
    """Rows t in [t0, t1): h += r (or h += rmsnorm(r) * post_w with a post-norm); then, with a next norm,
    xn = rmsnorm(h) * next_w. r may be null (no residual: only the norm)."""
    name = f"add_norm_{c}_{post_eps}_{next_eps}".replace(".", "p").replace("-", "m")
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("h", PF32), ("r", PF32), ("post_w", PF32), ("next_w", PF32), ("xn", PF32),
                          ("t0", I64), ("t1", I64), ("ldr", I64)], noalias=False)
    b = f.b
    with f.loop(f["t0"], f["t1"]) as t:
        h = f.at(f["h"], f.mul(t, c))
        is_null = b.icmp_unsigned("==", b.ptrtoint(f["r"], I64), c64(0))
        with b.if_then(b.not_(is_null)):
            r = f.at(f["r"], f.mul(t, f["ldr"]))
            if post_eps is not None:
                inv = _rms(f, r, c, post_eps)
                with f.loop(0, c) as i:
                    f.store(f.fadd(f.load(h, i), f.fmul(f.fmul(f.load(r, i), inv), f.load(f["post_w"], i))), h, i)
            else:
                with f.loop(0, c) as i:
                    f.store(f.fadd(f.load(h, i), f.load(r, i)), h, i)
        if next_eps is not None:
            inv = _rms(f, h, c, next_eps)
            xn = f.at(f["xn"], f.mul(t, c))
            with f.loop(0, c) as i:
                f.store(f.fmul(f.fmul(f.load(h, i), inv), f.load(f["next_w"], i)), xn, i)
    return f.finish()


def embed(module: ir.Module, fmt: str, c: int, scale: float | None) -> ir.Function:
    """h[t] = row ids[t] of the embedding (f32 / f16 / q8a) times the embedding scale, t in [t0, t1)."""
    name = f"embed_{fmt}_{c}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("w0", PI8), ("w1", PI8), ("w2", PI8), ("ids", PI64), ("h", PF32),
                          ("t0", I64), ("t1", I64)])
    b = f.b
    s = cf(scale if scale is not None else 1.0)
    with f.loop(f["t0"], f["t1"]) as t:
        row = f.load(f["ids"], t)
        h = f.at(f["h"], f.mul(t, c))
        if fmt in ("f32", "f16", "bf16"):
            w = f.at(_dense(f, fmt), f.mul(row, c))
            with f.loop(0, c) as i:
                f.store(f.fmul(_dense_value(f, fmt, f.load(w, i)), s), h, i)
        elif fmt == "q8a":
            q = f.at(f["w0"], f.mul(row, c))
            sc = f.fmul(f.load(b.bitcast(f["w1"], PF32), row), s)
            zero = f.load(b.bitcast(f["w2"], PF32), row)
            with f.loop(0, c) as i:
                f.store(f.fmul(f.fsub(f.u8_f32(f.load(q, i)), zero), sc), h, i)
        else:
            raise ValueError(f"no native embedding kernel for format {fmt}")
    return f.finish()


def qk_prep(module: ir.Module, heads: int, kv_heads: int, d: int, q_eps: float | None, k_eps: float | None) -> ir.Function:
    """For units u in [u0, u1) - query heads 0..H-1, then key/value heads - and token rows t < T of the
    fused qkv buffer [T, (H + 2 Hkv) D]: optional per-head RMSNorm (q/k norms), RoPE (rotate-half form,
    cos/sin tables [T, D/2] with the attention scaling folded in), and for key/value heads the store of
    the rotated key and the value at cache position P + t (cache [Hkv, cap, D])."""
    name = f"qk_prep_{heads}_{kv_heads}_{d}_{q_eps is not None}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("qkv", PF32), ("cos", PF32), ("sin", PF32), ("qn", PF32), ("kn", PF32),
                          ("kc", PF32), ("vc", PF32), ("T", I64), ("P", I64), ("cap", I64),
                          ("u0", I64), ("u1", I64)], noalias=False)
    b = f.b
    width = (heads + 2 * kv_heads) * d
    half = d // 2
    with f.loop(f["u0"], f["u1"]) as u:
        is_q = b.icmp_signed("<", u, c64(heads))
        with f.loop(0, f["T"]) as t:
            x = f.at(f["qkv"], f.mul(t, width), f.mul(u, d))       # q head u, or key head u - H (keys follow queries)
            cs = f.at(f["cos"], f.mul(t, half))
            sn = f.at(f["sin"], f.mul(t, half))
            if q_eps is not None:
                with b.if_else(is_q) as (then, other):
                    with then:
                        _head_norm(f, x, f["qn"], d, q_eps)
                    with other:
                        _head_norm(f, x, f["kn"], d, k_eps)
            with f.loop(0, half) as i:
                a = f.load(x, i)
                c2 = f.load(x, f.add(i, half))
                co, si = f.load(cs, i), f.load(sn, i)
                f.store(f.fsub(f.fmul(a, co), f.fmul(c2, si)), x, i)
                f.store(f.fadd(f.fmul(c2, co), f.fmul(a, si)), x, f.add(i, half))
            with b.if_then(b.not_(is_q)):
                kvh = b.sub(u, c64(heads))
                slot = f.mul(f.add(f.mul(kvh, f["cap"]), f.add(f["P"], t)), d)
                v = f.at(x, kv_heads * d)
                kc, vc = f.at(f["kc"], slot), f.at(f["vc"], slot)
                with f.loop(0, d) as i:
                    f.store(f.load(x, i), kc, i)
                    f.store(f.load(v, i), vc, i)
    return f.finish()


def _head_norm(f: Fn, x, w, d: int, eps: float) -> None:
    inv = _rms(f, x, d, eps)
    with f.loop(0, d) as i:
        f.store(f.fmul(f.fmul(f.load(x, i), inv), f.load(w, i)), x, i)


def attention(module: ir.Module, heads: int, kv_heads: int, d: int, scaling: float, window: int | None,
              softcap: float | None) -> ir.Function:
    """Causal attention of the T new queries over the cache (which already holds their keys and values):
    query head h in [h0, h1), token t sees cache positions [start, P + t] (start = P + t + 1 - window with a
    sliding window). out [T, H D]; scores: per-thread scratch of cap floats."""
    name = f"attn_{heads}_{kv_heads}_{d}_{scaling:.6g}_{window}_{softcap}".replace(".", "p").replace("-", "m")
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("qkv", PF32), ("kc", PF32), ("vc", PF32), ("out", PF32), ("scores", PF32),
                          ("T", I64), ("P", I64), ("cap", I64), ("h0", I64), ("h1", I64)])
    b = f.b
    width = (heads + 2 * kv_heads) * d
    group = heads // kv_heads
    with f.loop(f["h0"], f["h1"]) as h:
        kvh = b.sdiv(h, c64(group))
        kbase = f.at(f["kc"], f.mul(f.mul(kvh, f["cap"]), d))
        vbase = f.at(f["vc"], f.mul(f.mul(kvh, f["cap"]), d))
        with f.loop(0, f["T"]) as t:
            q = f.at(f["qkv"], f.mul(t, width), f.mul(h, d))
            end = f.add(f.add(f["P"], t), 1)
            start = f.max64(c64(0), b.sub(end, c64(window))) if window else c64(0)
            mx = f.var(F32, cf(-math.inf))
            with f.loop(start, end) as s:
                kr = f.at(kbase, f.mul(s, d))
                acc = f.var(F32)
                b.store(cf(0), acc)
                with f.loop(0, d) as i:
                    f.accumulate(acc, f.fmul(f.load(q, i), f.load(kr, i)))
                sc = f.fmul(b.load(acc), cf(scaling))
                if softcap:
                    sc = f.fmul(f.libm("tanhf", f.fdiv(sc, cf(softcap))), cf(softcap))
                f.store(sc, f["scores"], s)
                b.store(f.fmax(b.load(mx), sc), mx)
            m = b.load(mx)
            tot = f.var(F32, cf(0))
            with f.loop(start, end) as s:
                e = _exp(f, f.fsub(f.load(f["scores"], s), m))
                f.store(e, f["scores"], s)
                f.accumulate(tot, e)
            inv = f.fdiv(cf(1.0), b.load(tot))
            o = f.at(f["out"], f.mul(t, heads * d), f.mul(h, d))
            with f.loop(0, d) as i:
                f.store(cf(0), o, i)
            with f.loop(start, end) as s:
                p = f.fmul(f.load(f["scores"], s), inv)
                vr = f.at(vbase, f.mul(s, d))
                with f.loop(0, d) as i:
                    f.store(f.fadd(f.load(o, i), f.fmul(p, f.load(vr, i))), o, i)
    return f.finish()


def _exp(f: Fn, x):
    """e^x for float32 x, inline and vectorizable (LLVM's llvm.exp is a call to libm's expf per element): Cephes'
    expf - x = n ln2 + r with n = round(x log2 e), r in [-ln2/2, ln2/2] (ln2 split in two for the subtraction),
    e^r by its degree-6 polynomial, times 2^n through the exponent bits. Inputs clamped to [-87.3, 88]
    (below: about 1e-38 instead of a denormal or 0; above: e^88 instead of inf). Relative error about
    1e-7 (1-2 ulp), measured against numpy in tests/runtime/test_native_kernels.py."""
    b = f.b
    x = f.fmax(cf(-87.33654), x)
    x = b.select(b.fcmp_ordered("<", x, cf(88.0)), x, cf(88.0))
    n = f.intrinsic("llvm.floor", f.fadd(f.fmul(x, cf(1.44269504088896341)), cf(0.5)))
    # strict: reassociated (fast-math) the two-part ln2 would collapse into one constant and lose the low bits
    r = b.fsub(b.fsub(x, b.fmul(n, cf(0.693359375))), b.fmul(n, cf(-2.12194440e-4)))
    p = cf(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = f.fadd(f.fmul(p, r), cf(c))
    y = f.fadd(f.fadd(f.fmul(p, f.fmul(r, r)), r), cf(1.0))
    bits = b.shl(b.add(b.fptosi(n, I32), c32(127)), c32(23))
    return f.fmul(y, b.bitcast(bits, F32))


def gated_act(module: ir.Module, kind: str, ff: int) -> ir.Function:
    """act[t, n] = act_fn(gu[t, n]) * gu[t, ff + n] for n in [r0, r1), t < T (gu rows 2 ff wide)."""
    name = f"act_{kind}_{ff}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("gu", PF32), ("out", PF32), ("T", I64), ("r0", I64), ("r1", I64)])
    b = f.b
    with f.loop(0, f["T"]) as t:
        g = f.at(f["gu"], f.mul(t, 2 * ff))
        o = f.at(f["out"], f.mul(t, ff))
        with f.loop(f["r0"], f["r1"]) as n:
            x = f.load(g, n)
            if kind == "silu":
                a = f.fdiv(x, f.fadd(cf(1.0), _exp(f, f.fsub(cf(0.0), x))))
            elif kind == "gelu_tanh":
                inner = f.fmul(cf(math.sqrt(2.0 / math.pi)), f.fadd(x, f.fmul(cf(0.044715), f.fmul(x, f.fmul(x, x)))))
                a = f.fmul(f.fmul(cf(0.5), x), f.fadd(cf(1.0), f.libm("tanhf", inner)))
            else:
                raise ValueError(f"no native activation {kind}")
            f.store(f.fmul(a, f.load(g, f.add(n, ff))), o, n)
    return f.finish()


def softcap(module: ir.Module, cap: float) -> ir.Function:
    """x = tanh(x / cap) * cap over elements [r0, r1) of rows t < T (rows ld apart)."""
    name = f"softcap_{cap}".replace(".", "p")
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, [("x", PF32), ("T", I64), ("r0", I64), ("r1", I64), ("ld", I64)])
    with f.loop(0, f["T"]) as t:
        row = f.at(f["x"], f.mul(t, f["ld"]))
        with f.loop(f["r0"], f["r1"]) as n:
            f.store(f.fmul(f.libm("tanhf", f.fdiv(f.load(row, n), cf(cap))), cf(cap)), row, n)
    return f.finish()


# -- integer dot products (AVX512-VNNI, or AVX2) ------------------------------------------------------
# int8 and int4 weights are multiplied with int8-quantized activations, as llama.cpp does: each token's input
# row is quantized per block of B inputs (B = 64, or the int4 group) with a scale max|x| / 127 into per-thread
# scratch, once per kernel call. On AVX512-VNNI one vpdpbusd multiplies 64 u8 weights by 64 s8 activations
# into 16 int32 lanes (linear_vnni); AVX2 hosts take vpmaddubsw / vpmaddwd with tokens in tiles
# (kernels_avx2.py).
VNNI_ARGS = LINEAR_ARGS + [("scratch", PI8)]
INT_ISAS = ("vnni", "avx2")


def int_isa(features: list[str]) -> str | None:
    """The integer dot-product instructions a host has for int8 activations: vnni, avx2 or None (float kernels)."""
    if "+avx512vnni" in features:
        return "vnni"
    return "avx2" if "+avx2" in features else None


def vnni_block(fmt: str, k: int, group: int = 0) -> int | None:
    """The activation block size for a VNNI kernel of this format and input size, or None (float kernel)."""
    if fmt == "q8a":
        return 64 if k % 64 == 0 else None
    if fmt in INT_GROUP_BITS:
        return group if group in (32, 64, 128) and k % group == 0 else None
    return None


def scratch_bytes(tmax: int, k: int) -> int:
    """Per-thread scratch of a VNNI kernel: int8 row, then per-block scales and sums (f32)."""
    blocks = k // 32 + 1
    return _align(tmax * k) + 2 * _align(4 * tmax * blocks)


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


def _intrinsic(f: Fn, name: str, ret, args):
    return f.module.globals.get(name) or ir.Function(f.module, ir.FunctionType(ret, [a.type for a in args]), name)


def _vdot(f: Fn, w, x, lanes: int):
    """vpdpbusd(0, w, x): integer dot products of w (u8) and x (s8), <4*lanes x i8> each -> <lanes x i32>
    (lane j: bytes 4j..4j+3), total sum_i w_i x_i."""
    vi = ir.VectorType(I32, lanes)
    fn = _intrinsic(f, f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", vi, [ir.Constant(vi, [0] * lanes)] * 3)
    return f.b.call(fn, [ir.Constant(vi, [0] * lanes), f.b.bitcast(w, vi), f.b.bitcast(x, vi)])


def _quantize_rows(f: Fn, x, ldx, T, k: int, block: int, xq, sx, sq) -> None:
    """xq[t, i] = round(x[t, i] / s_tb), s_tb = max|x| / 127 over block b; sx[t, b] = s_tb; sq[t, b] = s_tb *
    sum_i xq[t, i] over the block (the zero-point / offset correction term)."""
    b = f.b
    nb = k // block
    with f.loop(0, T) as t:
        xr = f.at(x, f.mul(t, ldx))
        qr = f.at(xq, f.mul(t, k))
        with f.loop(0, nb) as blk:
            xb = f.at(xr, f.mul(blk, block))
            mx = f.var(F32, cf(0))
            with f.loop(0, block) as i:
                v = f.intrinsic("llvm.fabs", f.load(xb, i))
                b.store(f.fmax(b.load(mx), v), mx)
            amax = b.load(mx)
            s = f.fdiv(amax, cf(127.0))
            inv = b.select(b.fcmp_ordered(">", amax, cf(0)), f.fdiv(cf(127.0), amax), cf(0))
            tot = f.var(I32, ir.Constant(I32, 0))
            qb = f.at(qr, f.mul(blk, block))
            with f.loop(0, block) as i:
                q = b.fptosi(f.intrinsic("llvm.rint", f.fmul(f.load(xb, i), inv)), I32)
                f.store(b.trunc(q, I8), qb, i)
                b.store(b.add(b.load(tot), q), tot)
            cell = f.add(f.mul(t, nb), blk)
            f.store(s, sx, cell)
            f.store(f.fmul(s, b.sitofp(b.load(tot), F32)), sq, cell)


def quantized_input(f: Fn, k: int, block: int, tmax: int):
    """Quantize the kernel's x rows (T of them) into its scratch: -> (xq int8 rows, sx block scales, sq block
    sums times scale); the scratch layout of scratch_bytes."""
    b = f.b
    xq = f["scratch"]
    sx = b.bitcast(f.at(xq, _align(tmax * k)), PF32)
    sq = b.bitcast(f.at(xq, _align(tmax * k) + _align(4 * tmax * (k // 32 + 1))), PF32)
    _quantize_rows(f, f["x"], f["ldx"], f["T"], k, block, xq, sx, sq)
    return xq, sx, sq


def linear_vnni(module: ir.Module, fmt: str, n: int, k: int, bias: bool, group: int, tmax: int) -> ir.Function:
    """q8a / q4s linear with int8 activations and vpdpbusd (AVX512-VNNI; same arguments as `linear`, plus
    scratch). AVX2 hosts use kernels_avx2.linear_avx2."""
    block = vnni_block(fmt, k, group)
    if fmt not in ("q8a", "q4s"):
        raise ValueError(f"no VNNI kernel for {fmt} (kernels_avx2.linear_avx2 runs it on AVX-512 hosts too)")
    name = f"linv_{fmt}_{n}x{k}_g{group}{'_b' if bias else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, VNNI_ARGS)
    b = f.b
    nb = k // block
    xq, sx, sq = quantized_input(f, k, block, tmax)
    lanes = 16
    vf = ir.VectorType(F32, lanes)
    with f.loop(f["r0"], f["r1"]) as row:
        with f.loop(0, f["T"]) as t:
            xr = f.at(xq, f.mul(t, k))
            acc = f.var(vf, ir.Constant(vf, [0.0] * lanes))
            corr = f.var(F32, cf(0))
            if fmt == "q8a":
                wr = f.at(f["w0"], f.mul(row, k))
                with f.loop(0, nb) as blk:
                    w = b.load(b.bitcast(f.at(wr, f.mul(blk, 64)), ir.VectorType(I8, 64).as_pointer()), align=1)
                    xv = b.load(b.bitcast(f.at(xr, f.mul(blk, 64)), ir.VectorType(I8, 64).as_pointer()), align=1)
                    d = b.sitofp(_vdot(f, w, xv, 16), vf)
                    s = f.load(sx, f.add(f.mul(t, nb), blk))
                    sv = b.shuffle_vector(b.insert_element(ir.Constant(vf, ir.Undefined), s, ir.Constant(I32, 0)),
                                          ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))
                    b.store(b.fadd(b.load(acc), b.fmul(d, sv, flags=FAST), flags=FAST), acc)
                    f.accumulate(corr, f.load(sq, f.add(f.mul(t, nb), blk)))
                zero = f.load(b.bitcast(f["w2"], PF32), row)
                scale = f.load(b.bitcast(f["w1"], PF32), row)
                out = f.fmul(f.fsub(_hsum(f, b.load(acc), lanes), f.fmul(zero, b.load(corr))), scale)
            else:
                half = group // 2
                wr = f.at(f["w0"], f.mul(row, k // 2))
                sc = f.at(b.bitcast(f["w1"], PF16), f.mul(row, nb))
                with f.loop(0, nb) as g:
                    s = f.fmul(f.to_f32(f.load(sc, g)), f.load(sx, f.add(f.mul(t, nb), g)))
                    sv = b.shuffle_vector(b.insert_element(ir.Constant(vf, ir.Undefined), s, ir.Constant(I32, 0)),
                                          ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))
                    packed = b.load(b.bitcast(f.at(wr, f.mul(g, half)), ir.VectorType(I8, half).as_pointer()), align=1)
                    lo = b.and_(packed, ir.Constant(ir.VectorType(I8, half), [15] * half))
                    hi = b.lshr(packed, ir.Constant(ir.VectorType(I8, half), [4] * half))
                    if group == 128:
                        parts = [(lo, 0), (hi, 64)]
                    else:                                       # 64: lo ++ hi is one 64-byte block; 32: 32 bytes
                        parts = [(b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, group), list(range(group)))), 0)]
                    xg = f.at(xr, f.mul(g, group))
                    for wv, off in parts:
                        width = wv.type.count
                        xv = b.load(b.bitcast(f.at(xg, off), ir.VectorType(I8, width).as_pointer()), align=1)
                        d = _vdot(f, wv, xv, width // 4)
                        if width // 4 < lanes:       # 8 lanes: widen to 16 with zeros
                            d = b.shuffle_vector(d, ir.Constant(d.type, [0] * (width // 4)),
                                                 ir.Constant(ir.VectorType(I32, lanes), list(range(lanes))))
                        b.store(b.fadd(b.load(acc), b.fmul(b.sitofp(d, vf), sv, flags=FAST), flags=FAST), acc)
                    # stored codes are q + 8: subtract 8 * sum(xq) of the group, scaled
                    f.accumulate(corr, f.fmul(f.to_f32(f.load(sc, g)), f.load(sq, f.add(f.mul(t, nb), g))))
                out = f.fsub(_hsum(f, b.load(acc), lanes), f.fmul(cf(8.0), b.load(corr)))
            if bias:
                out = f.fadd(out, f.load(f["bias"], row))
            f.store(out, f["y"], f.mul(t, f["ldy"]), row)
    return f.finish()


PREFETCH_ROWS = 8  # software prefetch of weight rows this many rows ahead (0: off; ACCELC_NATIVE_PREFETCH);
                   # measured in docs/runtime/native.md


def prefetch_rows() -> int:
    try:
        return max(0, int(os.environ.get("ACCELC_NATIVE_PREFETCH", PREFETCH_ROWS)))
    except ValueError:
        return PREFETCH_ROWS


def prefetch(f: Fn, base, nbytes: int) -> None:
    """Software prefetch (read, into all cache levels) of nbytes from base, one call per 64-byte line."""
    pf = f.module.globals.get("llvm.prefetch.p0i8") or ir.Function(
        f.module, ir.FunctionType(ir.VoidType(), [PI8, I32, I32, I32]), "llvm.prefetch.p0i8")
    for c in range(0, nbytes, 64):
        f.b.call(pf, [f.at(base, c), ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def _hsum(f: Fn, v, lanes: int, strict: bool = False):
    """Sum of a vector's lanes in lane order (strict: no fast-math flags, so the order is kept exactly)."""
    b = f.b
    add = b.fadd if strict else f.fadd
    total = b.extract_element(v, ir.Constant(I32, 0))
    for i in range(1, lanes):
        total = add(total, b.extract_element(v, ir.Constant(I32, i)))
    return total


# -- codebooks by table lookup ----------------------------------------------------------------------
LUT_L1_BYTES = 24 << 10  # lookup tables per pass over the rows: within L1 (32 KB on Zen 4 / most x86 cores)
LUT_CHAINS = 8           # independent accumulators in the lookup sequence


def _has(feature: str) -> bool:
    """Whether the host (the CPU the kernels are compiled for) has an x86 feature, e.g. "bmi"."""
    from .jit import host_target
    return f"+{feature}" in host_target().features.split(",")


def lut_bytes(k: int, group: int, books: int) -> int:
    return _align(4 * (k // group) * books * 256)


def linear_cb_lut(module: ir.Module, n: int, k: int, group: int, books: int, bias: bool) -> ir.Function:
    """Codebook linear by lookup tables (AQLM's CPU kernel idea): for each token, the dot products of every
    codebook entry with each input group are computed once, lut[g, m, c] = <codebook[m, c], x_g> (the
    codebooks are stored transposed, [M, G, 256], so this is G broadcast FMAs over 256 contiguous entries);
    then each output is sum over groups and codebooks of lut[g, m, code] - M table reads per G weights, no
    gathers of vectors - times its row scale. The table (K/G x M x 256 floats) lives in per-thread scratch."""
    name = f"lincb_{n}x{k}_g{group}_m{books}{'_b' if bias else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, VNNI_ARGS)
    b = f.b
    ng = k // group
    lut = b.bitcast(f["scratch"], PF32)
    cbt = b.bitcast(f["w1"], PF32)
    scales = b.bitcast(f["w2"], PF32)
    fma1 = _intrinsic(f, "llvm.fma.f32", F32, [cf(0)] * 3)
    bextr = _intrinsic(f, "llvm.x86.bmi.bextr.32", I32, [c32(0), c32(0)]) if _has("bmi") else None
    one = b.asm(ir.FunctionType(F32, [F32]), "", "=x,0", [cf(1.0)], False)   # 1.0 LLVM cannot fold away
    with f.loop(0, f["T"]) as t:
        xt = f.at(f["x"], f.mul(t, f["ldx"]))
        with f.loop(0, ng) as g:
            for m in range(books):
                row = f.at(lut, f.mul(f.add(f.mul(g, books), m), 256))
                xs = [f.load(xt, f.add(f.mul(g, group), i)) for i in range(group)]
                with f.loop(0, 256) as c:
                    acc = None
                    for i in range(group):
                        v = f.fmul(f.load(cbt, (m * group + i) * 256, c), xs[i])
                        acc = v if acc is None else f.fadd(acc, v)
                    f.store(acc, row, c)
        # lookups in blocks of groups whose tables fit L1 (LUT_L1_BYTES): every row's partial sum for one block,
        # then the next block (the partial sums accumulate in y, scaled once after the last block)
        per_group = books * 256 * 4
        bg = max(1, min(ng, LUT_L1_BYTES // per_group))
        blocks = [(g0, min(ng, g0 + bg)) for g0 in range(0, ng, bg)]
        yt = f.at(f["y"], f.mul(t, f["ldy"]))
        for bi, (g0, g1) in enumerate(blocks):
            with f.loop(f["r0"], f["r1"], vectorize=False) as r:
                codes = f.at(f["w0"], f.mul(r, ng * books))
                chains = min(LUT_CHAINS, (g1 - g0) * books)
                # strict adds: with fast-math flags LLVM reassociates the chains back into one dependent
                # sequence (one add's latency per lookup, measured 2x slower). Odd chains add through an FMA
                # with an opaque 1.0, so both the add and the FMA pipes take lookups.
                parts = [None] * chains
                seq = [(g, m) for g in range(g0, g1) for m in range(books)]
                words = {}
                for j, (g, m) in enumerate(seq):
                    pos = g * books + m
                    w0 = pos - pos % 8
                    if w0 + 8 <= ng * books:
                        if w0 not in words:
                            w = b.load(b.bitcast(f.at(codes, w0), PI64), align=1)
                            words[w0] = [b.trunc(w, I32), b.trunc(b.lshr(w, c64(32)), I32)]
                        half, byte = words[w0][(pos - w0) // 4], (pos - w0) % 4
                        if byte == 0:
                            code = b.and_(half, c32(255))
                        elif byte == 3:
                            code = b.lshr(half, c32(24))
                        else:       # one BEXTR (BMI1) instead of a copy, a shift and a zero-extension
                            code = b.call(bextr, [half, c32(8 * byte | 8 << 8)]) if bextr else \
                                b.and_(b.lshr(half, c32(8 * byte)), c32(255))
                        code = b.zext(code, I64)
                    else:
                        code = b.zext(f.load(codes, pos), I64)
                    v = f.load(lut, (g * books + m) * 256, code)
                    i = j % chains
                    if parts[i] is None:
                        parts[i] = v
                    elif i % 2:
                        parts[i] = b.call(fma1, [v, one, parts[i]])
                    else:
                        parts[i] = b.fadd(parts[i], v)
                while len(parts) > 1:                          # independent chains, summed pairwise
                    parts = [b.fadd(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                             for i in range(0, len(parts), 2)]
                total = parts[0] if bi == 0 else f.fadd(f.load(yt, r), parts[0])
                if bi == len(blocks) - 1:
                    total = f.fmul(total, f.load(scales, r))
                    if bias:
                        total = f.fadd(total, f.load(f["bias"], r))
                f.store(total, yt, r)
    return f.finish()


CB_TILE = 2     # tokens sharing one decode of a codebook group (2 rows x 2 tokens x 2 chains: 8 accumulators)


def linear_cb_rows(module: ir.Module, n: int, k: int, group: int, books: int, bias: bool) -> ir.Function:
    """Codebook linear, decode-and-FMA over two rows at a time (the default codebook kernel): per input group,
    each row's M codebook vectors (G floats, contiguous in the [M, 256, G] f32 codebooks, L1-resident) are
    summed once and FMA'd into that row's accumulators for a tile of CB_TILE tokens (x's group loaded once per
    token for both rows). The codes of four groups of a row are read with one integer load (4M bytes) and
    split with shifts, so the load ports serve the codebook vectors.

    Strict float arithmetic (no fast-math; explicit FMAs; groups alternate between two accumulators by their
    parity; a fixed-order reduction): a token's output is bitwise the same whatever tile, row pair or thread
    range computes it, so a multi-token verify step reproduces one-token decoding exactly."""
    ahead = prefetch_rows()
    name = f"lincbr2_{n}x{k}_g{group}_m{books}{'_b' if bias else ''}{f'_p{ahead}' if ahead else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, LINEAR_ARGS)
    b = f.b
    ng = k // group
    vt = ir.VectorType(F32, group)
    pv = vt.as_pointer()
    fma = _intrinsic(f, f"llvm.fma.v{group}f32", vt, [ir.Constant(vt, None)] * 3)
    cbk = b.bitcast(f["w1"], PF32)
    scales = b.bitcast(f["w2"], PF32)
    word = ir.IntType(32 * books)              # the codes of 4 groups of one row
    zero = ir.Constant(vt, [0.0] * group)

    entry = 4 * group                          # bytes of one codebook vector
    sh = entry.bit_length() - 1
    rotate = books <= 2 and entry == 1 << sh   # codes as byte offsets straight from the word (below)
    rorx = _has("bmi2")

    def rotated(w, n: int):
        """w rotated right by n bits: RORX (BMI2, non-destructive: no copy of w) through inline assembly,
        since LLVM turns a rotate that a mask follows back into a copy and a shift."""
        if rorx and n:
            op = "rorxq" if word.width == 64 else "rorxl"
            return b.asm(ir.FunctionType(word, [word]), f"{op} $${n}, $1, $0", "=r,r", [w], False)
        return b.or_(b.lshr(w, ir.Constant(word, n)), b.shl(w, ir.Constant(word, (word.width - n) % word.width)))

    def codes_of(row, quad):
        """-> 4 lists of M codes for groups 4*quad .. 4*quad + 3 of `row`: byte offsets code * entry (i64)
        where the word allows (one rotate, RORX with BMI2, and one AND per code: no copy, no separate scaling
        shift; measured 1.2x on the kernel), else code values."""
        p = f.at(f["w0"], f.mul(row, ng * books), f.mul(quad, 4 * books))
        w = b.load(b.bitcast(p, word.as_pointer()), align=1)
        if rotate:
            bits = 32 * books
            mask = ir.Constant(word, 255 << sh)
            vals = [b.zext(b.and_(rotated(w, (8 * i - sh) % bits), mask), I64)
                    for i in range(4 * books)]
        else:
            vals = [b.zext(b.trunc(b.lshr(w, ir.Constant(word, 8 * i)), I8), I64) for i in range(4 * books)]
        return [vals[j * books:(j + 1) * books] for j in range(4)]

    def codes_at(row, g):
        """The M code values (i64) of group g of `row` (g: an i64 value or a Python int)."""
        first = f.mul(g, books) if not isinstance(g, int) else g * books
        return [b.zext(f.load(f["w0"], f.mul(row, ng * books), first, m), I64) for m in range(books)]

    def decoded(codes, offsets=False):
        vec = None
        for m, code in enumerate(codes):
            if offsets:
                p = f.at(b.bitcast(f["w1"], PI8), f.add(code, m * 256 * entry))
            else:
                p = f.at(cbk, f.mul(f.add(code, m * 256), group))
            v = b.load(b.bitcast(p, pv), align=4)
            vec = v if vec is None else b.fadd(vec, v)
        return vec

    def x_of(t, g):
        return b.load(b.bitcast(f.at(f["x"], f.mul(t, f["ldx"]), f.mul(g, group)), pv), align=4)

    def step(g, parity, rows_codes, toks, accs, offsets=False):
        xs = [x_of(t, g) for t in toks]
        for i, codes in enumerate(rows_codes):
            vec = decoded(codes, offsets)
            for j, xv in enumerate(xs):
                acc = accs[i][j][parity]
                b.store(b.call(fma, [vec, xv, b.load(acc)]), acc)

    def finish(row, accs2, t):
        total = _hsum(f, b.fadd(b.load(accs2[0]), b.load(accs2[1])), group, strict=True)
        out = b.fmul(total, f.load(scales, row))
        if bias:
            out = b.fadd(out, f.load(f["bias"], row))
        f.store(out, f["y"], f.mul(t, f["ldy"]), row)

    def block(rows, toks):
        """y[toks, rows] for 1-2 rows and 1-CB_TILE tokens."""
        accs = [[[f.var(vt, zero), f.var(vt, zero)] for _ in toks] for _ in rows]
        quads = ng // 4
        if len(rows) == 2:
            with f.loop(0, quads) as q:
                cs = [codes_of(r, q) for r in rows]
                for j in range(4):
                    step(f.add(f.mul(q, 4), j), j % 2, [c[j] for c in cs], toks, accs, rotate)
            for g in range(quads * 4, ng):          # groups past the last whole quad
                step(c64(g), g % 2, [codes_at(r, g) for r in rows], toks, accs)
        else:
            r = rows[0]
            with f.loop(0, ng // 2) as gp:
                for par in range(2):
                    g = f.add(f.mul(gp, 2), par)
                    step(g, par, [codes_at(r, g)], toks, accs)
            if ng % 2:
                step(c64(ng - 1), (ng - 1) % 2, [codes_at(r, ng - 1)], toks, accs)
        for i, r in enumerate(rows):
            for j, t in enumerate(toks):
                finish(r, accs[i][j], t)

    def ahead_of(ra):   # the codes of the row pair `ahead` rows on (prefetch never faults past the end)
        prefetch(f, f.at(f["w0"], f.mul(f.add(ra, ahead), ng * books)), 2 * ng * books)

    row_pairs_in_tiles(f, CB_TILE, block, ahead_of if ahead else None)
    return f.finish()


def row_pairs_in_tiles(f: Fn, tile: int, block, before_pair=None) -> None:
    """The loops of a two-row kernel: rows [r0, r1) in pairs (an odd last row alone), tokens [0, T) in tiles of
    `tile`, the T mod tile left one at a time; block(rows, toks) computes y[toks, rows]; before_pair(first row)
    runs once per pair (a prefetch)."""
    b = f.b
    T = f["T"]
    whole = b.sub(T, b.srem(T, ir.Constant(T.type, tile)))
    span = b.sub(f["r1"], f["r0"])
    pairs_end = b.add(f["r0"], b.mul(b.sdiv(span, c64(2)), c64(2)))
    with f.loop(f["r0"], pairs_end, 2) as ra:
        rows = [ra, f.add(ra, 1)]
        if before_pair is not None:
            before_pair(ra)
        with f.loop(0, whole, tile) as t0:
            block(rows, [f.add(t0, j) for j in range(tile)])
        with f.loop(whole, T) as t:
            block(rows, [t])
    with f.loop(pairs_end, f["r1"]) as r:              # an odd last row
        with f.loop(0, T) as t:
            block([r], [t])
