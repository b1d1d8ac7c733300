"""The artifact: a directory written atomically (staging dir, then rename) with a manifest.

See docs/artifact.md for the format.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, InputError

FORMAT = "accelc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputError(f"output directory {out} exists (choose another -o or pass --force to replace it)")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"{out.parent} is a file, not a directory")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temp dir beside `out`; removed on any failure, so nothing half-written is left."""
    out.parent.mkdir(parents=True, exist_ok=True)   # `-o out/model` in a fresh checkout
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    from ..models.sources import sha256_file
    return sha256_file(path)


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `stage` into manifest['files'] and write manifest.json."""
    files = {}
    for p in sorted(stage.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(stage).as_posix()
            files[rel] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest, "files": files}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest


def publish(stage: Path, out: Path, force: bool) -> None:
    """Move the finished staging dir into place (atomic rename; an old artifact is replaced)."""
    os.chmod(stage, 0o755)
    if out.exists():
        if not force:
            raise InputError(f"output directory {out} exists")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)


def read_manifest(path: Path) -> dict[str, Any]:
    mp = Path(path) / MANIFEST
    if not Path(path).is_dir():
        raise ArtifactError(f"no such artifact directory: {path}")
    if not mp.is_file():
        raise ArtifactError(f"{path} is not an accelc artifact (no {MANIFEST})")
    try:
        m = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mp} is corrupt ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mp} is not an accelc manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mp} has format version {m.get('format_version')}; this accelc reads {FORMAT_VERSION}")
    return m


def verify(path: Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file's size and sha256 against the manifest; raise naming the first bad file."""
    path = Path(path)
    m = manifest or read_manifest(path)
    for rel, info in m.get("files", {}).items():
        p = path / rel
        if not p.is_file():
            raise ArtifactError(f"artifact file missing: {rel}")
        if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
            raise ArtifactError(f"artifact file corrupt (sha256 mismatch): {rel}")
    return m
