"""A safetensors file mapped read-only: tensors are numpy views of the mapping (no copies, no torch).

The header is checked before any tensor is used: known dtypes, offsets inside the file, sizes that agree
with shapes, no overlaps. A file that fails any check is refused with one line (ArtifactError).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...compiler.errors import ArtifactError

DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64}
MAX_HEADER = 64 << 20


def map_safetensors(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path.name} is not a safetensors file (too short)")
        n = int.from_bytes(head, "little")
        if not 2 <= n <= min(MAX_HEADER, size - 8):
            raise ArtifactError(f"{path.name} has a bad safetensors header length ({n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path.name} has an unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path.name}: the safetensors header is not an object")
    base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > base else np.zeros(0, np.uint8)
    out, spans = {}, []
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[rec["dtype"]]
            shape = [int(d) for d in rec["shape"]]
            start, end = (int(v) for v in rec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path.name}: tensor {name!r} has a bad header entry") from None
        count = int(np.prod(shape)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= start <= end <= size - base or end - start != count * np.dtype(dtype).itemsize:
            raise ArtifactError(f"{path.name}: tensor {name!r} has offsets or a size that do not fit its shape")
        spans.append((start, end, name))
        arr = data[base + start:base + end].view(dtype).reshape(shape)
        out[name] = arr
    spans.sort()
    for (s0, e0, a), (s1, _, b) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ArtifactError(f"{path.name}: tensors {a!r} and {b!r} overlap")
    return out


def drop_pages(arrays) -> int:
    """Let the process drop the resident pages of mapped tensors it will not read again (a float32 weight once
    its bfloat16 copy is made): madvise(MADV_DONTNEED) on the whole pages inside each array's bytes. The mapping
    is read-only and backed by the file, so a later read faults the same bytes back in; nothing is lost, the pages
    just stop counting in resident memory. Arrays that are not numpy views of a mapping are skipped. Returns the bytes
    advised (0 where the OS has no MADV_DONTNEED)."""
    import mmap
    if not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    page, done = mmap.PAGESIZE, 0
    for arr in arrays:
        m = arr if isinstance(arr, np.ndarray) else None
        while m is not None and not (isinstance(m, np.memmap) and getattr(m, "_mmap", None) is not None):
            m = m.base if isinstance(m.base, np.ndarray) else None
        if m is None:
            continue
        mm = m._mmap
        start = arr.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
        lo, hi = -(-start // page) * page, (start + arr.nbytes) // page * page
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            done += hi - lo
    return done
