"""Small helpers over llvmlite.ir for writing kernels as plain loops.

Kernels are written as scalar loops with constant trip counts where the shape is known and fast-math
flags on the float arithmetic; LLVM's loop and SLP vectorizers turn them into the host's vector code
(AVX2, AVX-512) when the module is compiled for the host CPU (jit.py). Accumulators live in allocas
placed in the entry block (promoted to registers by mem2reg/SROA).
"""
from __future__ import annotations

from contextlib import contextmanager

import llvmlite.ir as ir

F32 = ir.FloatType()
F16 = ir.HalfType()
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
VOID = ir.VoidType()
PF32 = F32.as_pointer()
PF16 = F16.as_pointer()
PI8 = I8.as_pointer()
PI64 = I64.as_pointer()
FAST = ("fast",)
NOVEC = "accelc.novec"


def no_vectorize_metadata(ir_text: str) -> str:
    """Turn the placeholder loop metadata into LLVM's self-referential loop ID that disables vectorization
    (llvmlite's IR builder cannot write a distinct self-referencing node)."""
    import re
    out, extra = [], []
    pat = re.compile(r'^!(\d+) = !\{ !"' + re.escape(NOVEC) + r'" \}$')
    base = 1 + max([int(n) for n in re.findall(r"^!(\d+) =", ir_text, flags=re.M)] or [0])
    for line in ir_text.splitlines():
        m = pat.match(line.strip())
        if m:
            n = m.group(1)
            out.append(f"!{n} = distinct !{{!{n}, !{base}, !{base + 1}}}")
            extra = [f'!{base} = !{{!"llvm.loop.vectorize.enable", i1 false}}',
                     f'!{base + 1} = !{{!"llvm.loop.interleave.count", i32 1}}']
        else:
            out.append(line)
    return "\n".join(out + extra) + "\n"


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def cf(v: float) -> ir.Constant:
    return ir.Constant(F32, float(v))


class Fn:
    """A function under construction: an alloca block, then the body."""

    def __init__(self, module: ir.Module, name: str, args: list[tuple[str, ir.Type]], internal: bool = True,
                 noalias: bool = True):
        self.fn = ir.Function(module, ir.FunctionType(VOID, [t for _, t in args]), name)
        if internal:
            self.fn.linkage = "internal"
            self.fn.attributes.add("noinline")    # one copy per shape, called from every layer (compile time)
        self.args = {}
        for a, (n, t) in zip(self.fn.args, args):
            a.name = n
            if noalias and isinstance(t, ir.PointerType):
                a.add_attribute("noalias")
            self.args[n] = a
        self._allocas = self.fn.append_basic_block("allocas")
        body = self.fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self.module = module

    def __getitem__(self, name: str):
        return self.args[name]

    def var(self, ty: ir.Type, init=None, name: str = "") -> ir.AllocaInstr:
        with self.b.goto_block(self._allocas):
            a = self.b.alloca(ty, name=name)
        if init is not None:
            self.b.store(init, a)
        return a

    def finish(self) -> ir.Function:
        self.b.ret_void()
        with self.b.goto_block(self._allocas):
            self.b.branch(self.fn.blocks[1])
        return self.fn

    # -- control flow --------------------------------------------------------------------------
    @contextmanager
    def loop(self, lo, hi, step: int = 1, vectorize: bool = True):
        """for (i = lo; i < hi; i += step) - yields i (i64). vectorize=False keeps LLVM's loop vectorizer off
        this loop (e.g. table lookups it would turn into gathers, slow on AMD Zen): see no_vectorize_metadata."""
        b = self.b
        lo = c64(lo) if isinstance(lo, int) else lo
        hi = c64(hi) if isinstance(hi, int) else hi
        pre = b.block
        head, body, end = (b.append_basic_block(n) for n in ("loop", "body", "done"))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64)
        i.add_incoming(lo, pre)
        b.cbranch(b.icmp_signed("<", i, hi), body, end)
        b.position_at_end(body)
        yield i
        nxt = b.add(i, c64(step))
        i.add_incoming(nxt, b.block)
        br = b.branch(head)
        if not vectorize:
            br.set_metadata("llvm.loop", self.module.add_metadata([ir.MetaDataString(self.module, NOVEC)]))
        b.position_at_end(end)

    @contextmanager
    def when(self, cond):
        with self.b.if_then(cond):
            yield

    # -- arithmetic shorthands -----------------------------------------------------------------
    def at(self, ptr, *idx):
        """Pointer to ptr[sum of idx] (i64 values or ints)."""
        b = self.b
        off = None
        for i in idx:
            i = c64(i) if isinstance(i, int) else i
            off = i if off is None else b.add(off, i)
        return b.gep(ptr, [off if off is not None else c64(0)])

    def load(self, ptr, *idx):
        return self.b.load(self.at(ptr, *idx))

    def store(self, value, ptr, *idx):
        self.b.store(value, self.at(ptr, *idx))

    def mul(self, a, b):
        a = c64(a) if isinstance(a, int) else a
        b = c64(b) if isinstance(b, int) else b
        return self.b.mul(a, b)

    def add(self, a, b):
        a = c64(a) if isinstance(a, int) else a
        b = c64(b) if isinstance(b, int) else b
        return self.b.add(a, b)

    def fadd(self, a, b):
        return self.b.fadd(a, b, flags=FAST)

    def fsub(self, a, b):
        return self.b.fsub(a, b, flags=FAST)

    def fmul(self, a, b):
        return self.b.fmul(a, b, flags=FAST)

    def fdiv(self, a, b):
        return self.b.fdiv(a, b, flags=FAST)

    def to_f32(self, v):
        if v.type == F32:
            return v
        if v.type == F16:
            return self.b.fpext(v, F32)
        return self.b.sitofp(v, F32)

    def u8_f32(self, v):
        return self.b.uitofp(v, F32)

    def accumulate(self, acc, value):
        self.b.store(self.fadd(self.b.load(acc), value), acc)

    def intrinsic(self, name: str, *args):
        fn = self.module.declare_intrinsic(name, [a.type for a in args[:1]])
        return self.b.call(fn, list(args))

    def libm(self, name: str, x):
        """A float -> float C library function (expf, tanhf), resolved from the process at JIT time."""
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(F32, [F32]), name)
        return self.b.call(fn, [x])

    def min64(self, a, b):
        return self.b.select(self.b.icmp_signed("<", a, b), a, b)

    def max64(self, a, b):
        return self.b.select(self.b.icmp_signed(">", a, b), a, b)

    def fmax(self, a, b):
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)
