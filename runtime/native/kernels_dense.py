"""The dense float linear kernel (f32, f16, bf16 weights): two rows times a tile of tokens per weight load.

Same arguments and result as kernels.linear, which hands dense formats here. A verify or prefill step of T tokens used to read each weight
vector once per token (one load of W and one of x per FMA: the load ports, not the FMA units, set the
pace once the weights are in cache). Here each 8-float weight vector of a row pair is loaded (and, for f16 /
bf16, widened) once per tile of DENSE_TILE tokens, each token's 8 inputs once per row pair: two rows x two
tokens take four loads for four FMAs.

Strict float arithmetic, as the integer and codebook kernels: explicit FMAs; the 8-wide groups of a row
alternate between two accumulators by parity; a fixed-order reduction, then the k % 8 tail in order. A
token's output is bitwise the same whichever tile, row pair or thread range computes it, so a speculative
verify step of k + 1 tokens reproduces one-token decoding exactly (greedy losslessness), and any chunking
of a prefill gives the same cache.
"""
from __future__ import annotations

import llvmlite.ir as ir

from .irgen import F32, I32, PI8, Fn, c64
from .kernels import LINEAR_ARGS, _cached, _dense, _dense_value, _hsum, _intrinsic, prefetch, row_pairs_in_tiles

DENSE_TILE = 2       # tokens per weight load (2 rows x 2 tokens x 2 chains: 8 accumulators + 4 operands)
PREFETCH_AHEAD = 4096  # bytes: software prefetch in token tiles, whose longer loop keeps fewer weight loads in
                       # flight (its effect on speculative decoding: docs/passes/drafter.md); one-token steps go without
LANES = 8
V8F = ir.VectorType(F32, LANES)


def linear_dense_rows(module: ir.Module, fmt: str, n: int, k: int, bias: bool) -> ir.Function:
    if fmt not in ("f32", "f16", "bf16"):
        raise ValueError(f"no dense kernel for {fmt}")
    name = f"lind2_{fmt}_{n}x{k}{'_b' if bias else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, LINEAR_ARGS)
    b = f.b
    fma = _intrinsic(f, "llvm.fma.v8f32", V8F, [ir.Constant(V8F, None)] * 3)
    groups = k // LANES
    zero = ir.Constant(V8F, [0.0] * LANES)
    elem = {"f32": 4, "f16": 2, "bf16": 2}[fmt]
    wbase = _dense(f, fmt)

    def widen(v):
        """A loaded vector of stored weights as <8 x float>."""
        if fmt == "f32":
            return v
        if fmt == "f16":
            return b.fpext(v, V8F)
        v32 = b.shl(b.zext(v, ir.VectorType(I32, LANES)), ir.Constant(ir.VectorType(I32, LANES), [16] * LANES))
        return b.bitcast(v32, V8F)

    def w_vec(row, g):
        p = f.at(wbase, f.mul(row, k), f.mul(g, LANES))
        ty = ir.VectorType(wbase.type.pointee, LANES)
        return widen(b.load(b.bitcast(p, ty.as_pointer()), align=2 if elem == 2 else 4))

    def w_scalar(row, i: int):
        return _dense_value(f, fmt, f.load(wbase, f.mul(row, k), i))

    def x_vec(t, g):
        p = f.at(f["x"], f.mul(t, f["ldx"]), f.mul(g, LANES))
        return b.load(b.bitcast(p, V8F.as_pointer()), align=4)

    def step(g, parity, rows, toks, accs):
        xs = [x_vec(t, g) for t in toks]
        for i, r in enumerate(rows):
            wv = w_vec(r, g)
            for j, xv in enumerate(xs):
                acc = accs[i][j][parity]
                b.store(b.call(fma, [wv, xv, b.load(acc)]), acc)

    def finish(row, pair, t):
        total = _hsum(f, b.fadd(b.load(pair[0]), b.load(pair[1])), LANES, strict=True)
        xt = f.at(f["x"], f.mul(t, f["ldx"]))
        for i in range(groups * LANES, k):          # the k % 8 tail, in order
            total = b.fadd(total, b.fmul(w_scalar(row, i), f.load(xt, i)))
        if bias:
            total = b.fadd(total, f.load(f["bias"], row))
        f.store(total, f["y"], f.mul(t, f["ldy"]), row)

    def block(rows, toks):
        accs = [[[f.var(V8F, zero), f.var(V8F, zero)] for _ in toks] for _ in rows]
        with f.loop(0, groups // 2) as gp:
            if len(toks) > 1:     # the line PREFETCH_AHEAD bytes on in each row (a later row, for short rows)
                for r in rows:
                    prefetch(f, f.at(b.bitcast(f["w0"], PI8), f.mul(r, k * elem), f.mul(gp, 2 * LANES * elem),
                                     PREFETCH_AHEAD), 1)
            for par in range(2):
                step(f.add(f.mul(gp, 2), par), par, rows, toks, accs)
        if groups % 2:
            step(c64(groups - 1), (groups - 1) % 2, rows, toks, accs)
        for i, r in enumerate(rows):
            for j, t in enumerate(toks):
                finish(r, accs[i][j], t)

    row_pairs_in_tiles(f, DENSE_TILE, block)
    return f.finish()

