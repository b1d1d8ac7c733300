"""Compile generated LLVM IR for this CPU with llvmlite, with an on-disk object cache.

The target is the host CPU (llvmlite's host name and feature string: AVX2, AVX-512, AMX where present);
ACCELC_NATIVE_CPU=generic, or a host without AVX2, compiles for the baseline x86-64 (or the host triple's
generic CPU) instead. Objects are cached under $ACCELC_CACHE/native/ (default ~/.cache/accelc/native/),
keyed by sha256 of (IR text, CPU name, CPU features, llvmlite version); each entry starts with the
sha256 of the object that follows, and an entry that does not match it (truncated, corrupt) is deleted
and rebuilt, never loaded. An unwritable cache directory means compiling in memory, with one warning.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_INIT = False


def _init():
    global _INIT
    if not _INIT:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _INIT = True


def cache_root() -> Path:
    root = os.environ.get("ACCELC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "accelc")
    return Path(root) / "native"


@dataclass(frozen=True)
class HostTarget:
    cpu: str
    features: str
    generic: bool

    @property
    def isa(self) -> str:
        feats = self.features.split(",")
        if "+avx512f" in feats:
            return "avx512" + ("+vnni" if "+avx512vnni" in feats else "") + ("+bf16" if "+avx512bf16" in feats else "")
        if "+avx2" in feats:
            return "avx2"
        return "generic"


def host_target() -> HostTarget:
    _init()
    import llvmlite.binding as llvm
    cpu, feats = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    want_generic = os.environ.get("ACCELC_NATIVE_CPU", "").strip().lower() == "generic"
    if want_generic or "+avx2" not in feats.split(","):
        triple = llvm.get_process_triple()
        return HostTarget("x86-64" if triple.startswith("x86_64") else "generic", "", True)
    return HostTarget(cpu, feats, False)


@dataclass
class Compiled:
    engine: object            # keeps the machine code alive
    addresses: dict[str, int]
    seconds: float
    cached: bool
    key: str
    target: HostTarget


class _ObjectCache:
    def __init__(self, key: str):
        self.key = key
        self.dir = cache_root()
        self.path = self.dir / f"{key}.o"
        self.hit = False

    def load(self) -> bytes | None:
        try:
            blob = self.path.read_bytes()
        except OSError:
            return None
        digest, obj = blob[:32], blob[32:]
        if len(blob) <= 32 or hashlib.sha256(obj).digest() != digest:
            log.warning("native kernel cache entry %s is corrupt: rebuilding it", self.path.name)
            try:
                self.path.unlink()
            except OSError:
                pass
            return None
        return obj

    def store(self, obj: bytes) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(hashlib.sha256(obj).digest() + obj)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("native kernel cache %s is not writable (%s): compiled in memory only", self.dir, e.strerror)


def compile_ir(ir_text: str, names: list[str], opt: int = 3) -> Compiled:
    """IR text -> machine code for the host; -> addresses of `names`."""
    _init()
    import llvmlite
    import llvmlite.binding as llvm
    start = time.perf_counter()
    host = host_target()
    key = hashlib.sha256("\0".join([ir_text, host.cpu, host.features, llvmlite.__version__, str(opt)]).encode()).hexdigest()[:40]
    cache = _ObjectCache(key)
    obj = cache.load()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=host.cpu, features=host.features, opt=opt, jit=True,
                                      reloc="default", codemodel="jitdefault")
    from .irgen import no_vectorize_metadata
    mod = llvm.parse_assembly(no_vectorize_metadata(ir_text))
    mod.verify()
    if obj is None:
        pto = llvm.create_pipeline_tuning_options(speed_level=opt)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pto.loop_unrolling = True
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    stored = []

    def notify(_module, buffer):
        stored.append(bytes(buffer))

    def getbuffer(_module):
        return obj

    engine.set_object_cache(notify, getbuffer)
    engine.finalize_object()
    if obj is None and stored:
        cache.store(stored[0])
    addresses = {n: engine.get_function_address(n) for n in names}
    missing = [n for n, a in addresses.items() if not a]
    if missing:
        raise RuntimeError(f"native code lacks functions {missing}")
    return Compiled(engine, addresses, time.perf_counter() - start, obj is not None, key, host)
