"""Loading a cached kernel object without LLVM: a minimal ELF relocatable-object loader (Linux, x86-64).

The kernel cache (jit.py) holds the object files LLVM's MCJIT wrote for the host. Opening an artifact whose
kernels are cached only needs that machine code placed in memory, relocated and made executable; doing it
here keeps LLVM (libllvmlite, about 40 MB resident once loaded) out of the process. The objects come from
our own code generator in the large code model, so they need only absolute (R_X86_64_64) and 64-bit
PC-relative (R_X86_64_PC64) relocations; anything else - another relocation type, a common symbol, an
unresolvable external - raises LoadError and the caller compiles with LLVM as before.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import struct
import sys
from dataclasses import dataclass

SHT_SYMTAB, SHT_RELA, SHT_NOBITS = 2, 4, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
SHT_X86_64_UNWIND = 0x70000001
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
R_NONE, R_64, R_PC32, R_PLT32, R_PC64 = 0, 1, 2, 4, 24
PAGE = mmap.PAGESIZE


class LoadError(Exception):
    """The object cannot be loaded here; compile with LLVM instead."""


def supported() -> bool:
    import platform
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


@dataclass
class Loaded:
    memory: mmap.mmap         # the mapping (kept alive: the code runs from it)
    addresses: dict[str, int]


@dataclass
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _symbol_address(name: str) -> int:
    """An external function the kernels call (expf, tanhf, usleep, sched_yield, memset ...)."""
    for lib in (None, ctypes.util.find_library("m"), ctypes.util.find_library("c")):
        try:
            fn = getattr(ctypes.CDLL(lib), name)
        except (OSError, AttributeError, TypeError):
            continue
        addr = ctypes.cast(fn, ctypes.c_void_p).value
        if addr:
            return addr
    raise LoadError(f"unresolved symbol {name}")


def _sections(obj: bytes) -> list[_Section]:
    if len(obj) < 64 or obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        raise LoadError("not a 64-bit little-endian ELF object")
    e_type, e_machine = struct.unpack_from("<HH", obj, 16)
    if e_type != 1 or e_machine != 62:
        raise LoadError("not an x86-64 relocatable object")
    shoff, = struct.unpack_from("<Q", obj, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", obj, 58)
    if shentsize != 64 or shoff + shnum * 64 > len(obj):
        raise LoadError("bad section headers")
    raw = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * 64) for i in range(shnum)]
    strtab = raw[shstrndx]
    out = []
    for name, typ, flags, _addr, off, size, link, info, align, _ent in raw:
        if typ != SHT_NOBITS and off + size > len(obj):
            raise LoadError("section past the end of the object")
        end = obj.index(b"\0", strtab[4] + name)
        out.append(_Section(obj[strtab[4] + name:end].decode(), typ, flags, off, size, link, info, max(1, align)))
    return out


def load(obj: bytes, names: list[str]) -> Loaded:
    """Place the object's allocated sections in fresh memory, relocate, protect (code read+execute, constants
    read-only); -> the addresses of the global functions `names`."""
    if not supported():
        raise LoadError("the object loader runs on Linux x86-64 only")
    secs = _sections(obj)
    # layout: executable sections, then read-only, then writable, each group starting on a page
    groups = {"x": [], "r": [], "w": []}
    for i, s in enumerate(secs):
        if not s.flags & SHF_ALLOC or s.type == SHT_X86_64_UNWIND or s.size == 0:
            continue
        groups["x" if s.flags & SHF_EXECINSTR else "w" if s.flags & SHF_WRITE else "r"].append(i)
    place, spans, pos = {}, [], 0
    for kind in ("x", "r", "w"):
        start = pos
        for i in groups[kind]:
            pos = -(-pos // secs[i].align) * secs[i].align
            place[i] = pos
            pos += secs[i].size
        pos = -(-pos // PAGE) * PAGE
        spans.append((kind, start, pos))
    if pos == 0:
        raise LoadError("the object has no code")
    mem = mmap.mmap(-1, pos, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    for i, off in place.items():
        s = secs[i]
        if s.type != SHT_NOBITS:
            mem[off:off + s.size] = obj[s.offset:s.offset + s.size]
    # symbols
    symtab = next((s for s in secs if s.type == SHT_SYMTAB), None)
    if symtab is None:
        raise LoadError("the object has no symbol table")
    strs = secs[symtab.link]
    syms, globals_, funcs = [], {}, []
    for k in range(symtab.size // 24):
        st_name, st_info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", obj, symtab.offset + k * 24)
        end = obj.index(b"\0", strs.offset + st_name)
        name = obj[strs.offset + st_name:end].decode()
        if shndx == SHN_UNDEF:
            addr = _symbol_address(name) if name else 0
        elif shndx == SHN_ABS:
            addr = value
        elif shndx == SHN_COMMON or shndx >= len(secs):
            raise LoadError(f"unsupported symbol {name or k}")
        elif shndx in place:
            addr = base + place[shndx] + value
        else:
            addr = None          # a section we did not load (unwind tables): nothing may refer to it
        syms.append(addr)
        if st_info & 0xF == 2 and addr and shndx in place:                       # STT_FUNC: kernels
            funcs.append((addr, size, name))
        if st_info >> 4 == 1 and addr is not None and shndx != SHN_UNDEF:       # STB_GLOBAL
            globals_[name] = addr
    # relocations of the loaded sections
    for s in secs:
        if s.type != SHT_RELA or s.info not in place:
            continue
        target = place[s.info]
        for k in range(s.size // 24):
            r_off, r_info, addend = struct.unpack_from("<QQq", obj, s.offset + k * 24)
            typ, sym = r_info & 0xFFFFFFFF, r_info >> 32
            if typ == R_NONE:
                continue
            S = syms[sym] if sym < len(syms) else None
            if S is None:
                raise LoadError("a relocation refers to a section that is not loaded")
            P = base + target + r_off
            if r_off + 8 > secs[s.info].size and typ in (R_64, R_PC64):
                raise LoadError("relocation past its section")
            where = target + r_off
            if typ == R_64:
                struct.pack_into("<Q", mem, where, (S + addend) & (2 ** 64 - 1))
            elif typ == R_PC64:
                struct.pack_into("<q", mem, where, S + addend - P)
            elif typ in (R_PC32, R_PLT32):
                v = S + addend - P
                if not -2 ** 31 <= v < 2 ** 31:
                    raise LoadError("a 32-bit relative relocation is out of range")
                struct.pack_into("<i", mem, where, v)
            else:
                raise LoadError(f"unsupported relocation type {typ}")
    libc = _libc()
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prot = {"x": mmap.PROT_READ | mmap.PROT_EXEC, "r": mmap.PROT_READ, "w": mmap.PROT_READ | mmap.PROT_WRITE}
    for kind, start, end in spans:
        if end > start and libc.mprotect(base + start, end - start, prot[kind]) != 0:
            raise LoadError(f"mprotect failed (errno {ctypes.get_errno()})")
    if os.environ.get("ACCELC_NATIVE_PERFMAP", "").strip() not in ("", "0"):
        _perf_map(funcs)
    missing = [n for n in names if n not in globals_]
    if missing:
        raise LoadError(f"the object lacks {missing}")
    return Loaded(mem, {n: globals_[n] for n in names})


def _perf_map(funcs: list[tuple[int, int, str]]) -> None:
    """ACCELC_NATIVE_PERFMAP=1: name every kernel for `perf report` in /tmp/perf-PID.map (perf's convention for
    code generated at run time)."""
    with open(f"/tmp/perf-{os.getpid()}.map", "a") as fh:
        for addr, size, name in funcs:
            fh.write(f"{addr:x} {size:x} accelc:{name}\n")
