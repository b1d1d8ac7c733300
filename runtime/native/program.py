"""One model's forward pass as a single native function, run by every thread in lock step.

    forward(ctx, tid)   runs T tokens (T, P and every buffer's address are read from ctx, an int64 array)
    worker(ctx, tid)    a worker thread's loop: wait for a job, run forward, until told to stop
    run(ctx)            post a job and run forward as thread 0: one Python-to-native call per step

Work inside a step is split into phases separated by a spinning barrier (atomic counter + generation):
row-parallel linear layers (rows split in blocks of 16 between threads), attention split over query
heads, RoPE/cache stores split over heads, norms and residuals split over token rows. Waiting workers
spin with a pause, then back off to usleep so an idle model does not hold the cores.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import llvmlite.ir as ir

from . import kernels
from .kernels_avx2 import linear_avx2
from .irgen import I32, I64, PF32, PI8, PI64, VOID, Fn, c64

# sync block (int64 words, each on its own cache line): barrier count, barrier generation, job word, stop.
# The job word is (job number << JOB_SHIFT) | the job's thread count, posted in one store: a worker decides
# whether it takes part in the job it sees from that same word, never from a later step's ctx (a worker that
# read the thread count separately could join the next step early, out of lock step with thread 0).
SYNC_COUNT, SYNC_GEN, SYNC_JOB, SYNC_STOP = 0, 8, 16, 24
SYNC_WORDS = 32
JOB_SHIFT = 8
MAX_THREADS = (1 << JOB_SHIFT) - 1
SPINS_BEFORE_SLEEP = 1 << 16
SPINS_BEFORE_YIELD = 1 << 11
ROW_BLOCK = 16


def cb_kernel() -> str:
    """The codebook kernel: "lut" (table lookups), "decode" (codebook vectors times x, FMA, one row at a time)
    or "rows" (the same over two rows at a time, codes read four groups per load);
    ACCELC_NATIVE_CB chooses (benchmarks); the default is the one measured faster (docs/runtime/native.md)."""
    import os
    v = os.environ.get("ACCELC_NATIVE_CB", CB_DEFAULT).strip().lower()
    return v if v in ("lut", "decode", "rows") else CB_DEFAULT


CB_DEFAULT = "rows"


@dataclass
class Slots:
    """Names of the ctx array's entries, in order (filled by the runtime: model.py)."""

    names: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)


class Program:
    """Emits forward/worker/run for a model description (export_native's model.json, plus runtime sizes)."""

    def __init__(self, cfg: dict, tmax: int, int_isa: str | None = None):
        """int_isa: run q8a/q4s/q3s/q2s linears with int8-quantized inputs and integer dot products, vpdpbusd ("vnni":
        AVX512-VNNI hosts) or vpmaddubsw/vpmaddwd ("avx2"); None: the float kernels."""
        self.cfg, self.tmax, self.int_isa = cfg, tmax, int_isa
        self.cb_kernel = cb_kernel()
        recs = [L[p] for L in cfg["layers"] for p in ("q", "k", "v", "o", "gate", "up", "down")]
        if cfg.get("mix"):
            recs.append(cfg["mix"]["fc"])
        ks = [r["shape"][1] for r in recs]
        luts = [kernels.lut_bytes(r["shape"][1], r["group"], r["codebooks"]) for r in recs if r["format"] == "cb"]
        self.scratch_stride = max([kernels.scratch_bytes(tmax, max(ks + [cfg["hidden"]]))] + luts)
        self.slots = Slots()
        for name in ("sync", "T", "P", "cap", "nthreads", "logit_row0", "ids", "logits",
                     "h", "xn", "qkv", "attn", "gu", "act", "mlp", "scores", "qscratch"):
            self.slots(name)
        self.module = ir.Module(name="accelc_native")

    # -- ctx access ------------------------------------------------------------------------------
    def _int(self, f: Fn, name: str):
        return f.load(f["ctx"], self.slots(name))

    def _ptr(self, f: Fn, name: str, ty=PF32):
        return f.b.inttoptr(self._int(f, name), ty)

    def _weight(self, f: Fn, rec: dict | None, part: str):
        """w0/w1/w2/bias pointers of a weight record (null where the format has no such tensor)."""
        parts = len(kernels.WEIGHT_PARTS[rec["format"]]) if rec else 0
        if int(part[1]) >= parts:
            return ir.Constant(PI8, None)
        return self._ptr(f, f"{rec['name']}:{part}", PI8)

    # -- synchronisation -------------------------------------------------------------------------
    def _pause(self, f: Fn):
        if "x86" in (self.module.triple or "") or self.module.triple == "":
            fn = self.module.globals.get("llvm.x86.sse2.pause") or ir.Function(
                self.module, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
            f.b.call(fn, [])

    def _back_off(self, f: Fn, spins, limit: int, slow) -> None:
        """One round of a wait loop: count it; below `limit` rounds pause, past it call slow() (yield, sleep)."""
        b = f.b
        n = b.add(b.load(spins), c64(1))
        b.store(n, spins)
        with b.if_else(b.icmp_signed("<", n, c64(limit))) as (fast, other):
            with fast:
                self._pause(f)
            with other:
                slow()

    def _sched_yield(self) -> ir.Function:
        return self.module.globals.get("sched_yield") or ir.Function(self.module, ir.FunctionType(I32, []),
                                                                     "sched_yield")

    def _barrier_fn(self) -> ir.Function:
        f = Fn(self.module, "barrier", [("sync", PI64), ("n", I64)], noalias=False)
        b = f.b
        gen_p, cnt_p = f.at(f["sync"], SYNC_GEN), f.at(f["sync"], SYNC_COUNT)
        gen = b.load_atomic(gen_p, "acquire", 8)
        old = b.atomic_rmw("add", cnt_p, c64(1), "acq_rel")
        last = b.icmp_signed("==", old, b.sub(f["n"], c64(1)))
        with b.if_else(last) as (then, other):
            with then:
                b.store_atomic(c64(0), cnt_p, "monotonic", 8)
                b.store_atomic(b.add(gen, c64(1)), gen_p, "release", 8)
            with other:
                # spin with pause; past SPINS_BEFORE_YIELD, yield the core each round (a preempted partner
                # thread, e.g. on a busy machine, then gets it back instead of waiting out our time slice)
                spins = f.var(I64, c64(0))
                spin = b.append_basic_block("spin")
                out = b.append_basic_block("out")
                b.branch(spin)
                b.position_at_end(spin)
                self._back_off(f, spins, SPINS_BEFORE_YIELD, lambda: b.call(self._sched_yield(), []))
                now = b.load_atomic(gen_p, "acquire", 8)
                b.cbranch(b.icmp_signed("==", now, gen), spin, out)
                b.position_at_end(out)
        return f.finish()

    # -- work splitting --------------------------------------------------------------------------
    @staticmethod
    def _split(f: Fn, tid, nth, total, block: int = 1):
        """[lo, hi) of `total` items for thread tid, in blocks of `block`."""
        b = f.b
        total = c64(total) if isinstance(total, int) else total
        per = b.sdiv(b.add(total, b.sub(b.mul(nth, c64(block)), c64(1))), b.mul(nth, c64(block)))
        per = b.mul(per, c64(block))
        lo = f.min64(b.mul(tid, per), total)
        hi = f.min64(b.add(lo, per), total)
        return lo, hi

    # -- phases ----------------------------------------------------------------------------------
    def _linear(self, f: Fn, tid, nth, rec: dict, x, ldx, y, ldy, T, col0: int = 0):
        fmt, (n, kk) = rec["format"], rec["shape"]
        vnni = self.int_isa is not None and kernels.vnni_block(fmt, kk, rec.get("group", 0)) is not None
        if fmt == "cb" and self.cb_kernel == "lut":   # table lookups (codebooks stored transposed: model.py)
            k = kernels.linear_cb_lut(self.module, n, kk, rec["group"], rec["codebooks"], bool(rec.get("bias")))
            vnni = True                     # takes the per-thread scratch
        elif fmt == "cb" and self.cb_kernel == "rows":
            k = kernels.linear_cb_rows(self.module, n, kk, rec["group"], rec["codebooks"], bool(rec.get("bias")))
        elif vnni and (self.int_isa == "avx2" or fmt in ("q2s", "q3s")):    # AVX-512 hosts have AVX2
            k = linear_avx2(self.module, fmt, n, kk, bool(rec.get("bias")), rec.get("group", 0), self.tmax)
        elif vnni:
            k = kernels.linear_vnni(self.module, fmt, n, kk, bool(rec.get("bias")), rec.get("group", 0), self.tmax)
        else:
            k = kernels.linear(self.module, fmt, n, kk, bool(rec.get("bias")), rec.get("group", 0),
                               rec.get("codebooks", 0))
        lo, hi = self._split(f, tid, nth, n, ROW_BLOCK)
        bias = self._ptr(f, f"{rec['name']}:bias") if rec.get("bias") else ir.Constant(PF32, None)
        yy = f.at(y, col0) if col0 else y
        args = [self._weight(f, rec, "w0"), self._weight(f, rec, "w1"), self._weight(f, rec, "w2"), bias,
                x, yy, T, lo, hi, ldx, ldy]
        if vnni:
            args.append(f.at(self._ptr(f, "qscratch", PI8), f.mul(tid, self.scratch_stride)))
        f.b.call(k, args)

    def build(self) -> ir.Module:
        cfg = self.cfg
        mod = self.module
        barrier = self._barrier_fn()
        f = Fn(mod, "forward", [("ctx", PI64), ("tid", I64)], internal=False, noalias=False)
        b = f.b
        tid = f["tid"]
        sync = self._ptr(f, "sync", PI64)
        nth = self._int(f, "nthreads")
        T, P, cap = self._int(f, "T"), self._int(f, "P"), self._int(f, "cap")

        def sync_all():
            b.call(barrier, [sync, nth])

        C, H, Hkv, D = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
        width = (H + 2 * Hkv) * D
        h, xn = self._ptr(f, "h"), self._ptr(f, "xn")
        qkv, attn, gu, act, mlp = (self._ptr(f, n) for n in ("qkv", "attn", "gu", "act", "mlp"))
        scores = f.at(self._ptr(f, "scores"), f.mul(tid, cap))
        t0, t1 = self._split(f, tid, nth, T)

        # embedding (a model fed hidden states finds them in h, or mixes them into h: an EAGLE drafter's fc over
        # [normed embedding; normed state] rows in mix_in), then the first layer's input norm
        e = cfg.get("embed")
        if cfg.get("mix"):
            self._linear(f, tid, nth, cfg["mix"]["fc"], self._ptr(f, "mix_in"), c64(2 * C), h, c64(C), T)
            sync_all()
        elif e is not None:
            b.call(kernels.embed(mod, e["format"], C, cfg.get("embed_scale")),
                   [self._weight(f, e, "w0"), self._weight(f, e, "w1"), self._weight(f, e, "w2"),
                    self._ptr(f, "ids", PI64), h, t0, t1])
        layers = cfg["layers"]
        null = ir.Constant(PF32, None)
        first = layers[0]["norms"]["input"]
        b.call(kernels.add_norm(mod, C, None, first["eps"]), [h, null, null, self._ptr(f, first["weight"]), xn,
                                                             t0, t1, c64(C)])
        sync_all()
        for j, L in enumerate(layers):
            norms = L["norms"]
            # q, k, v into one [T, (H + 2 Hkv) D] buffer
            for part, col in (("q", 0), ("k", H * D), ("v", (H + Hkv) * D)):
                self._linear(f, tid, nth, L[part], xn, c64(C), qkv, c64(width), T, col)
            sync_all()
            rope = L["rope"]
            qn = self._ptr(f, norms["q"]["weight"]) if cfg["qk_norm"] else null
            kn = self._ptr(f, norms["k"]["weight"]) if cfg["qk_norm"] else null
            u0, u1 = self._split(f, tid, nth, H + Hkv)
            kc, vc = self._ptr(f, f"cache.{j}.k"), self._ptr(f, f"cache.{j}.v")
            b.call(kernels.qk_prep(mod, H, Hkv, D, norms["q"]["eps"] if cfg["qk_norm"] else None,
                                   norms["k"]["eps"] if cfg["qk_norm"] else None),
                   [qkv, self._ptr(f, f"rope.{rope}.cos"), self._ptr(f, f"rope.{rope}.sin"), qn, kn, kc, vc,
                    T, P, cap, u0, u1])
            sync_all()
            h0, h1 = self._split(f, tid, nth, H)
            b.call(kernels.attention(mod, H, Hkv, D, L["scaling"], L["window"], cfg.get("attn_softcap")),
                   [qkv, kc, vc, attn, scores, T, P, cap, h0, h1])
            sync_all()
            self._linear(f, tid, nth, L["o"], attn, c64(H * D), mlp, c64(C), T)
            sync_all()
            post = norms.get("post_attn") if cfg["sandwich"] else None
            b.call(kernels.add_norm(mod, C, post["eps"] if post else None, norms["pre_ffn"]["eps"]),
                   [h, mlp, self._ptr(f, post["weight"]) if post else null, self._ptr(f, norms["pre_ffn"]["weight"]),
                    xn, t0, t1, c64(C)])
            sync_all()
            ff = L["gate"]["shape"][0]
            self._linear(f, tid, nth, L["gate"], xn, c64(C), gu, c64(2 * ff), T)
            self._linear(f, tid, nth, L["up"], xn, c64(C), gu, c64(2 * ff), T, ff)
            r0, r1 = self._split(f, tid, nth, ff, ROW_BLOCK)
            b.call(kernels.gated_act(mod, cfg["activation"], ff), [gu, act, T, r0, r1])
            sync_all()
            self._linear(f, tid, nth, L["down"], act, c64(ff), mlp, c64(C), T)
            sync_all()
            post = norms.get("post_ffn") if cfg["sandwich"] else None
            nxt = layers[j + 1]["norms"]["input"] if j + 1 < len(layers) else cfg["final_norm"]
            b.call(kernels.add_norm(mod, C, post["eps"] if post else None, nxt["eps"]),
                   [h, mlp, self._ptr(f, post["weight"]) if post else null, self._ptr(f, nxt["weight"]), xn,
                    t0, t1, c64(C)])
            sync_all()
        # head over rows [logit_row0, T) of the final-normed states
        row0 = self._int(f, "logit_row0")
        V = cfg["vocab"]
        nrows = b.sub(T, row0)
        self._linear(f, tid, nth, cfg["head"], f.at(xn, f.mul(row0, C)), c64(C), self._ptr(f, "logits"), c64(V),
                     nrows)
        if cfg.get("final_softcap"):
            v0, v1 = self._split(f, tid, nth, V, ROW_BLOCK)
            sync_all()
            b.call(kernels.softcap(mod, cfg["final_softcap"]), [self._ptr(f, "logits"), nrows, v0, v1, c64(V)])
        sync_all()
        f.finish()
        self._worker_fns(f.fn)
        return mod

    def _worker_fns(self, forward: ir.Function) -> None:
        mod = self.module
        usleep = ir.Function(mod, ir.FunctionType(I32, [I32]), "usleep")
        w = Fn(mod, "worker", [("ctx", PI64), ("tid", I64)], internal=False, noalias=False)
        b = w.b
        sync = b.inttoptr(w.load(w["ctx"], self.slots("sync")), PI64)
        job_p, stop_p = w.at(sync, SYNC_JOB), w.at(sync, SYNC_STOP)
        seen = w.var(I64, c64(0))          # jobs count from 0: a job posted before this thread runs is still seen
        spins = w.var(I64, c64(0))
        wait, idle, got, done = (b.append_basic_block(n) for n in ("wait", "idle", "got", "done"))
        b.branch(wait)
        b.position_at_end(wait)
        now = b.load_atomic(job_p, "acquire", 8)
        b.cbranch(b.icmp_signed("!=", now, b.load(seen)), got, idle)
        b.position_at_end(idle)
        self._back_off(w, spins, SPINS_BEFORE_SLEEP, lambda: b.call(usleep, [ir.Constant(I32, 100)]))
        b.branch(wait)
        b.position_at_end(got)
        b.store(now, seen)
        b.store(c64(0), spins)
        stop = b.load_atomic(stop_p, "acquire", 8)
        cont = b.append_basic_block("work")
        b.cbranch(b.icmp_signed("!=", stop, c64(0)), done, cont)
        b.position_at_end(cont)
        # a worker past the job's thread count (NativeModel.set_threads) sits this step out
        active = b.icmp_signed("<", w["tid"], b.and_(now, c64(MAX_THREADS)))
        with b.if_then(active):
            b.call(forward, [w["ctx"], w["tid"]])
        b.branch(wait)
        b.position_at_end(done)
        w.finish()

        r = Fn(mod, "run", [("ctx", PI64)], internal=False, noalias=False)
        b = r.b
        sync = b.inttoptr(r.load(r["ctx"], self.slots("sync")), PI64)
        job_p = r.at(sync, SYNC_JOB)      # only thread 0 posts jobs (and close(), after the last one)
        number = b.ashr(b.load_atomic(job_p, "monotonic", 8), c64(JOB_SHIFT))
        word = b.or_(b.shl(b.add(number, c64(1)), c64(JOB_SHIFT)),
                     b.and_(r.load(r["ctx"], self.slots("nthreads")), c64(MAX_THREADS)))
        b.store_atomic(word, job_p, "release", 8)
        b.call(forward, [r["ctx"], c64(0)])
        r.finish()
