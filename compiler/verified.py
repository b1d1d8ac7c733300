"""Verification records: an artifact whose files have not changed since they were last hashed opens
without rehashing them.

A record lives in the accelc cache (ACCELC_CACHE, default ~/.cache/accelc/verified/), never inside the
artifact, one JSON file per artifact directory. It holds the manifest's sha256 and, for every file that
hashed correctly, (size, mtime_ns, ctime_ns, inode, device). A file counts as unchanged only when the
manifest is byte-identical and all five still match; any write, copy, rename over or `touch` changes
ctime (which user space cannot set), so a changed file is always rehashed. `accelc inspect --verify`
and `verify(full=True)` ignore records and hash everything. A record that cannot be read is ignored;
one that cannot be written is skipped (the next open hashes again).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def _cache_root() -> Path:
    root = os.environ.get("ACCELC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "accelc")
    return Path(root) / "verified"


def _key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class VerificationRecord:
    def __init__(self, file: Path, path: str, manifest_sha: str, known: dict[str, list[int]]):
        self.file, self.path, self.manifest_sha, self.known = file, path, manifest_sha, known
        self.fresh: dict[str, list[int]] = {}

    @classmethod
    def open(cls, artifact: Path, manifest_sha: str) -> "VerificationRecord":
        real = os.path.realpath(artifact)
        file = _cache_root() / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json")
        known: dict[str, list[int]] = {}
        try:
            data = json.loads(file.read_text())
            if data.get("path") == real and data.get("manifest_sha256") == manifest_sha:
                known = {k: v for k, v in data.get("files", {}).items() if isinstance(v, list)}
        except (OSError, ValueError, AttributeError):
            pass
        return cls(file, real, manifest_sha, known)

    def unchanged(self, rel: str, st: os.stat_result) -> bool:
        if self.known.get(rel) == _key(st):
            self.fresh[rel] = self.known[rel]
            return True
        return False

    def mark(self, rel: str, st: os.stat_result) -> None:
        self.fresh[rel] = _key(st)

    def save(self) -> None:
        data = {"path": self.path, "manifest_sha256": self.manifest_sha, "files": self.fresh}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.file)
        except OSError:
            pass
