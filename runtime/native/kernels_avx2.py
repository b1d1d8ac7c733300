"""The AVX2 integer linear kernel: q8a / q4s weights times int8-quantized activations, tokens in tiles.

Same arguments and result as kernels.linear_vnni (the activation rows are quantized per block into the
per-thread scratch first: kernels.quantized_input), built for hosts with AVX2 but no AVX512-VNNI:

- Per block of B inputs (B = 64 for q8a, the group for q4s) the weights are read and prepared once for a
  tile of up to TILE tokens (a verify or prefill step of T tokens reads each weight row once per tile, not
  once per token); the tile's tokens then each take 32-byte vpmaddubsw (u8 x s8 -> i16 pairs) and vpmaddwd
  with ones (-> i32) per chunk, the chunks' i32 sums are added in integers, and one convert and one FMA with
  the block's scale go into 8 float lanes per token.
- q8a codes (0..255) would saturate vpmaddubsw's i16 pairs, so they are centred (w' = w - 128, a xor) and,
  as llama.cpp's AVX2 Q8_0 kernel does, vpsignb moves w''s sign onto x: vpmaddubsw(|w'|, sign(w') x) is exact.
  The sum is then of (w - 128) x, and 128 sum(x) is added back with the zero point once per row; the
  correction sum_b s_b sum(xq_b) depends only on the token, so it is summed once per call, not per row.
- Every float operation here is strict (no fast-math reassociation or contraction; the block update is an explicit
  FMA), so a token's result is bitwise the same whether it ran alone or at any place in a tile: a speculative
  verify step of k + 1 tokens then reproduces plain decoding's logits exactly, which greedy losslessness needs
  (int8 activation rounding would otherwise amplify one-ulp differences into different tokens).
- q4s codes (q + 8, 0..15) cannot saturate: no centring, and a block's chunks (at most 4, group 128) add their
  i16 pairs before one vpmaddwd. Its correction (8 sum_g scale_g s_g sum(xq_g)) depends
  on the row's group scales and is accumulated per (row, token).
- q2s / q3s codes (q + 2, 0..3; q + 4, 0..7) are unpacked to bytes in registers (unpack_group, plane_chunks: the
  packed bytes broadcast, each 4- or 8-byte lane shifted by its plane's count, masked; q3s's high-bit plane the
  same way, moved to bit 2 and or-ed in) and then run as q4s, with their own offset in the correction.
"""
from __future__ import annotations

import llvmlite.ir as ir

from .irgen import F32, I8, I16, I32, PF16, PF32, Fn, cf
from .kernels import (VNNI_ARGS, _cached, _hsum, _intrinsic, code_row_bytes, int_offset, prefetch, prefetch_rows,
                      quantized_input, vnni_block)

TILE = 4          # tokens sharing one read of a weight block (4 float accumulators + the block's chunks in ymm)
V8F = ir.VectorType(F32, 8)
V8I = ir.VectorType(I32, 8)
V16S = ir.VectorType(I16, 16)
V32B = ir.VectorType(I8, 32)


def linear_avx2(module: ir.Module, fmt: str, n: int, k: int, bias: bool, group: int, tmax: int) -> ir.Function:
    block = vnni_block(fmt, k, group)
    if block is None:
        raise ValueError(f"no AVX2 integer kernel for {fmt} with k={k}, group={group}")
    ahead = prefetch_rows()
    name = f"lin2_{fmt}_{n}x{k}_g{group}{'_b' if bias else ''}{f'_p{ahead}' if ahead else ''}"
    fn = _cached(module, name)
    if fn is not None:
        return fn
    f = Fn(module, name, VNNI_ARGS)
    b = f.b
    nb = k // block
    T = f["T"]
    xq, sx, sq = quantized_input(f, k, block, tmax)
    ops = _Ops(f)
    q8 = fmt == "q8a"
    corr_t = None
    if q8:      # per token: sum_b s_b sum(xq_b), the same for every row
        corr_t = f.var(ir.ArrayType(F32, tmax))
        with f.loop(0, T) as t:
            tot = f.var(F32, cf(0))
            with f.loop(0, nb) as blk:
                b.store(b.fadd(b.load(tot), f.load(sq, f.add(f.mul(t, nb), blk))), tot)
            b.store(b.load(tot), b.gep(corr_t, [ir.Constant(I32, 0), t]))
    whole = b.sub(T, b.srem(T, ir.Constant(T.type, TILE)))
    row_bytes = code_row_bytes(fmt, k)
    with f.loop(f["r0"], f["r1"]) as row:
        if ahead:       # prefetch never faults: rows past the matrix's end are harmless
            prefetch(f, f.at(f["w0"], f.mul(f.add(row, ahead), row_bytes)), row_bytes)
            if fmt == "q3s":
                prefetch(f, f.at(f["w2"], f.mul(f.add(row, ahead), k // 8)), k // 8)
        with f.loop(0, whole, TILE) as t0:
            _tile(f, ops, fmt, row, t0, TILE, k, nb, block, group, xq, sx, sq, corr_t, bias)
        # the T % TILE tokens left run as one smaller tile (a verify step of 2 or 3 tokens reads each weight
        # block once, not once per token)
        left = b.sub(T, whole)
        for tt in range(TILE - 1, 0, -1):
            with b.if_then(b.icmp_signed("==", left, ir.Constant(T.type, tt))):
                _tile(f, ops, fmt, row, whole, tt, k, nb, block, group, xq, sx, sq, corr_t, bias)
    return f.finish()


def unpack_group(f: Fn, fmt: str, row, blk, k: int, group: int) -> list:
    """The stored codes (q + offset) of group blk of a q4s / q3s / q2s row, in element order, as <32 x i8> chunks."""
    b = f.b

    def load(w: str, row_bytes: int, n: int):
        p = f.at(f[w], f.mul(row, row_bytes), f.mul(blk, n))
        return b.load(b.bitcast(p, ir.VectorType(I8, n).as_pointer()), align=1)

    if fmt == "q4s":
        half = group // 2
        packed = load("w0", k // 2, half)
        nib = ir.VectorType(I8, half)
        w = _concat(f, [b.and_(packed, ir.Constant(nib, [15] * half)), b.lshr(packed, ir.Constant(nib, [4] * half))])
        return [_slice(f, w, c, 32) for c in range(0, group, 32)]
    chunks = plane_chunks(f, load("w0", k // 4, group // 4), 2, group)
    if fmt == "q3s":        # the high-bit plane, each bit moved to bit 2 of its element's byte
        two = ir.Constant(V32B, [2] * 32)
        high = plane_chunks(f, load("w2", k // 8, group // 8), 1, group)
        chunks = [b.or_(lo, b.shl(hi, two)) for lo, hi in zip(chunks, high)]
    return chunks


def plane_chunks(f: Fn, packed, bits: int, group: int) -> list:
    """A group's `bits`-bit planes (P = packed bytes; element e of the group in bits bits * (e // P) and up of byte
    e % P) as <32 x i8> chunks of its elements in order. Each chunk is the packed bytes repeated (a broadcast) with
    every lane of W = min(P, 8) bytes shifted right by its own count (vpsrlvd / vpsrlvq: all bytes of a lane belong
    to one plane), then masked: no byte shuffles, no inserts."""
    b = f.b
    P = packed.type.count
    W = min(P, 8)
    lanes = ir.VectorType(ir.IntType(8 * W), 32 // W)
    out = []
    for c in range(group // 32):
        rep = b.shuffle_vector(packed, ir.Constant(packed.type, ir.Undefined),
                               ir.Constant(ir.VectorType(I32, 32), [(32 * c + i) % P for i in range(32)]))
        counts = [bits * ((32 * c + W * lane) // P) for lane in range(32 // W)]
        v = b.bitcast(rep, lanes)
        if any(counts):
            v = b.lshr(v, ir.Constant(lanes, counts))
        out.append(b.and_(b.bitcast(v, V32B), ir.Constant(V32B, [(1 << bits) - 1] * 32)))
    return out


def _slice(f: Fn, v, start: int, count: int):
    return f.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                              ir.Constant(ir.VectorType(I32, count), list(range(start, start + count))))


def _concat(f: Fn, parts: list):
    """The vectors one after another (2^j of the same type: concatenated pairwise, level by level)."""
    while len(parts) > 1:
        n = 2 * parts[0].type.count
        parts = [f.b.shuffle_vector(a, c, ir.Constant(ir.VectorType(I32, n), list(range(n))))
                 for a, c in zip(parts[::2], parts[1::2])]
    return parts[0]


class _Ops:
    """The AVX2 intrinsics a tile uses."""

    def __init__(self, f: Fn):
        self.f = f
        self.ubs = _intrinsic(f, "llvm.x86.avx2.pmadd.ub.sw", V16S, [ir.Constant(V32B, None)] * 2)
        self.wd = _intrinsic(f, "llvm.x86.avx2.pmadd.wd", V8I, [ir.Constant(V16S, None)] * 2)
        self.sign = _intrinsic(f, "llvm.x86.avx2.psign.b", V32B, [ir.Constant(V32B, None)] * 2)
        self.ones = ir.Constant(V16S, [1] * 16)
        self.fma = _intrinsic(f, "llvm.fma.v8f32", V8F, [ir.Constant(V8F, None)] * 3)

    def pairs(self, w, x):
        """<16 x i16>: sums of adjacent products of 32 u8 weights and 32 s8 activations (must not saturate)."""
        return self.f.b.call(self.ubs, [w, x])

    def widen(self, p):
        """<8 x i32>: sums of adjacent i16 pairs."""
        return self.f.b.call(self.wd, [p, self.ones])

    def splat(self, s):
        b = self.f.b
        v = b.insert_element(ir.Constant(V8F, ir.Undefined), s, ir.Constant(I32, 0))
        return b.shuffle_vector(v, ir.Constant(V8F, ir.Undefined), ir.Constant(V8I, [0] * 8))


def _tile(f: Fn, ops: _Ops, fmt: str, row, t0, tt: int, k: int, nb: int, block: int, group: int,
          xq, sx, sq, corr_t, bias: bool) -> None:
    """y[t0 .. t0 + tt - 1, row]: the block loop with tt token accumulators."""
    b = f.b
    q8 = fmt == "q8a"
    toks = [f.add(t0, j) for j in range(tt)]
    accs = [f.var(V8F, ir.Constant(V8F, [0.0] * 8)) for _ in range(tt)]
    corr = None if q8 else [f.var(F32, cf(0)) for _ in range(tt)]
    with f.loop(0, nb) as blk:
        if q8:
            wp = f.at(f["w0"], f.mul(row, k), f.mul(blk, block))
            w = b.load(b.bitcast(wp, ir.VectorType(I8, block).as_pointer()), align=1)
            chunks = []
            for c in range(0, block, 32):
                wc = b.xor(_slice(f, w, c, 32), ir.Constant(V32B, [-128] * 32))      # w - 128 as s8
                chunks.append((b.call(ops.sign, [wc, wc]), wc, c))                    # |w - 128|, its sign
            sc = None
        else:
            chunks = [(w, None, 32 * c) for c, w in enumerate(unpack_group(f, fmt, row, blk, k, group))]
            scp = f.at(b.bitcast(f["w1"], PF16), f.mul(row, nb))
            sc = f.to_f32(f.load(scp, blk))
        for j, t in enumerate(toks):
            cell = f.add(f.mul(t, nb), blk)
            xr = f.at(xq, f.mul(t, k), f.mul(blk, block))
            d = None
            for wv, sign, off in chunks:
                xv = b.load(b.bitcast(f.at(xr, off), V32B.as_pointer()), align=1)
                if sign is not None:
                    xv = b.call(ops.sign, [xv, sign])
                p = ops.pairs(wv, xv)
                if q8:          # |pairs| <= 2 x 128 x 127: widened to i32 before any addition
                    p = ops.widen(p)
                d = p if d is None else b.add(d, p)
            if not q8:          # int4 pairs <= 2 x 15 x 127 = 3,810: up to 4 chunks add in i16, widened once
                # (int3 / int2 pairs are smaller)
                d = ops.widen(d)
            s = f.load(sx, cell)
            if sc is not None:
                s = b.fmul(s, sc)
                b.store(b.fadd(b.load(corr[j]), b.fmul(sc, f.load(sq, cell))), corr[j])
            b.store(b.call(ops.fma, [b.sitofp(d, V8F), ops.splat(s), b.load(accs[j])]), accs[j])
    for j, t in enumerate(toks):
        total = _hsum(f, b.load(accs[j]), 8, strict=True)
        if q8:      # sum of (w - 128) xq s: add 128 sum(xq s) back, subtract the zero point's
            zero = b.fsub(f.load(b.bitcast(f["w2"], PF32), row), cf(128.0))
            c = b.load(b.gep(corr_t, [ir.Constant(I32, 0), t]))
            out = b.fmul(b.fsub(total, b.fmul(zero, c)), f.load(b.bitcast(f["w1"], PF32), row))
        else:       # stored codes are q + 8 (q + 4, q + 2)
            out = b.fsub(total, b.fmul(cf(float(int_offset(fmt))), b.load(corr[j])))
        if bias:
            out = b.fadd(out, f.load(f["bias"], row))
        f.store(out, f["y"], f.mul(t, f["ldy"]), row)
