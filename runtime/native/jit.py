"""Compile generated LLVM IR for this CPU with llvmlite, with an on-disk object cache.

The target is the host CPU (llvmlite's host name and feature string: AVX2, AVX-512, AMX where present);
ACCELC_NATIVE_CPU=generic, or a host without AVX2, compiles for the baseline x86-64 (or the host triple's
generic CPU) instead. Objects are cached under $ACCELC_CACHE/native/ (default ~/.cache/accelc/native/),
keyed by sha256 of (IR text, CPU name, CPU features, llvmlite version); each entry starts with the
sha256 of the object that follows, and an entry that does not match it (truncated, corrupt) is deleted
and rebuilt, never loaded. An unwritable cache directory means compiling in memory, with one warning.

Opening a model whose kernels are cached needs no LLVM at all (libllvmlite is about 40 MB resident once
loaded, and building the IR costs time and memory): a *recipe* entry, keyed by sha256 of what determines
the IR (the generator's own source files, the model description, the runtime sizes, the ACCELC_NATIVE_*
settings, the host CPU and llvmlite's version), names the object and holds what the runtime needs from the
IR build (the ctx slot names); the object is then placed in memory by objload.py. The host CPU's LLVM name
and features are cached the same way, keyed by /proc/cpuinfo's identification lines. Any miss, mismatch or
loader refusal falls back to building the IR and compiling with LLVM.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_INIT = False


def _init():
    global _INIT
    if not _INIT:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        llvm.initialize_native_asmparser()     # inline assembly in kernels (RORX: kernels.linear_cb_rows)
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


def _detect_host(want_generic: bool) -> HostTarget:
    _init()
    import llvmlite.binding as llvm
    cpu, feats = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    if want_generic or "+avx2" not in feats.split(","):
        triple = llvm.get_process_triple()
        return HostTarget("x86-64" if triple.startswith("x86_64") else "generic", "", True)
    return HostTarget(cpu, feats, False)


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str | None:
    """/proc/cpuinfo's identification lines of the first CPU (vendor, family, model, stepping, name, flags):
    what LLVM's host detection reads through CPUID. None where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    keys = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    lines = [ln for ln in text.split("\n\n")[0].splitlines() if ln.split(":")[0].strip() in keys]
    return "\n".join(lines) if len(lines) == len(keys) else None


def _llvmlite_version() -> str:
    import llvmlite          # the package's version only: llvmlite.binding (the LLVM library) stays unloaded
    return llvmlite.__version__


_HOSTS: dict = {}


def host_target() -> HostTarget:
    """The CPU the kernels are compiled for. Asked of LLVM once per CPU identity, then read from the cache."""
    want_generic = os.environ.get("ACCELC_NATIVE_CPU", "").strip().lower() == "generic"
    ident = _cpu_identity()
    memo = (ident, want_generic, str(cache_root()))
    if memo in _HOSTS:
        return _HOSTS[memo]
    entry = None
    if ident is not None:
        key = hashlib.sha256("\0".join([ident, str(want_generic), _llvmlite_version()]).encode()).hexdigest()[:40]
        entry = _ObjectCache(key, ".host", quiet=True)
    host = None
    blob = entry.load() if entry else None
    if blob is not None:
        try:
            host = HostTarget(**json.loads(blob))
        except (ValueError, TypeError):
            host = None
    if host is None:
        host = _detect_host(want_generic)
        if entry:
            entry.store(json.dumps(asdict(host)).encode())
    _HOSTS[memo] = host
    return host


@dataclass
class Compiled:
    engine: object            # keeps the machine code alive
    addresses: dict[str, int]
    seconds: float
    cached: bool
    key: str
    target: HostTarget


class _ObjectCache:
    """One cache entry: the sha256 of the payload, then the payload (an object, a recipe, a host)."""

    def __init__(self, key: str, suffix: str = ".o", quiet: bool = False):
        self.key = key
        self.dir = cache_root()
        self.path = self.dir / f"{key}{suffix}"
        self.hit = False
        self.quiet = quiet

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
            if not self.quiet:
                log.warning("native kernel cache %s is not writable (%s): compiled in memory only", self.dir,
                            e.strerror)


@functools.lru_cache(maxsize=1)
def _generator_digest() -> str:
    """sha256 of the code generator's sources (this package's .py files): a changed generator is a new recipe."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


RUN_ONLY_ENV = ("ACCELC_NATIVE_PERFMAP", "ACCELC_NATIVE_ADAPT")


def recipe_key(*inputs) -> str:
    """The key of a program built from `inputs` (JSON-serialisable: the model description, runtime sizes,
    options) by this generator, for this host, with this environment's ACCELC_NATIVE_* settings (but those that
    only steer the running program: a perf map, adaptive threads)."""
    host = host_target()
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("ACCELC_NATIVE_") and k not in RUN_ONLY_ENV)
    text = json.dumps([_generator_digest(), inputs, env, host.cpu, host.features, _llvmlite_version()],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def load_recipe(recipe: str, names: list[str]) -> tuple[Compiled, dict] | None:
    """The cached program of a recipe, loaded without LLVM (objload.py) -> (compiled, the recipe's metadata);
    None when anything is missing or the loader declines (the caller then builds and compiles)."""
    from . import objload
    start = time.perf_counter()
    if not objload.supported():
        return None
    blob = _ObjectCache(recipe, ".recipe", quiet=True).load()
    if blob is None:
        return None
    try:
        rec = json.loads(blob)
        key, meta = str(rec["object"]), dict(rec["meta"])
    except (ValueError, KeyError, TypeError):
        return None
    obj = _ObjectCache(key).load()
    if obj is None:
        return None
    try:
        loaded = objload.load(obj, names)
    except objload.LoadError as e:
        log.info("cached kernels %s not loaded without LLVM (%s): compiling", key, e)
        return None
    return Compiled(loaded, loaded.addresses, time.perf_counter() - start, True, key, host_target()), meta


def compile_ir(ir_text: str, names: list[str], opt: int = 3, recipe: str | None = None,
               meta: dict | None = None) -> Compiled:
    """IR text -> machine code for the host; -> addresses of `names`. recipe: also record the object under
    that recipe key, with `meta` (load_recipe)."""
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
    if recipe and (stored or obj is not None):
        _ObjectCache(recipe, ".recipe", quiet=True).store(json.dumps({"object": key, "meta": meta or {}}).encode())
    return Compiled(engine, addresses, time.perf_counter() - start, obj is not None, key, host)
