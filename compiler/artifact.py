"""The artifact: a directory written atomically (staging dir, then rename) with a manifest.

See docs/artifact.md for the format and its trust rules: every path the manifest names is confined
to the artifact and hashed (compiler/manifest_check.py), files the manifest does not list are refused,
and a verification record (compiler/verified.py) lets an unchanged artifact open without rehashing.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, InputError
from .manifest_check import check_manifest, confined

FORMAT = "accelc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def is_artifact(path: Path) -> bool:
    """True when `path` is a directory whose manifest says it is an accelc artifact."""
    mp = Path(path) / MANIFEST
    try:
        if mp.is_symlink() or not mp.is_file() or mp.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        return json.loads(mp.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(out: Path, force: bool) -> None:
    """-o DIR may be new, or (with --force) an accelc artifact or an empty directory; nothing else is replaced."""
    if out.exists() or out.is_symlink():
        if not force:
            raise InputError(f"output directory {out} exists (choose another -o or pass --force to replace it)")
        if out.is_symlink() or not out.is_dir():
            raise InputError(f"--force replaces only an accelc artifact directory; {out} is not a directory")
        if any(out.iterdir()) and not is_artifact(out):
            raise InputError(f"--force replaces only an accelc artifact; {out} exists and is not one "
                             "(no accelc manifest.json): choose another -o")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"{out.parent} is a file, not a directory")


STAGE_MARK = ".partial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_stages(parent: Path) -> list[Path]:
    """Remove `.NAME.partial-PID-*` / `.NAME.old-PID` dirs left in `parent` by accelc processes that are gone."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(".") or p.is_symlink() or not p.is_dir():
            continue
        for mark in (STAGE_MARK, ".old-"):
            head, sep, tail = p.name.rpartition(mark)
            pid = tail.split("-", 1)[0]
            if sep and head and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                break
    return removed


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temp dir beside `out`, named after this process; removed on any failure (SIGINT, SIGTERM and SIGHUP
    included: the CLI turns them into exceptions), so nothing half-written is left. Stale staging dirs of
    dead processes in the same parent are removed first."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)   # `-o out/model` in a fresh checkout
        remove_stale_stages(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGE_MARK}{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise InputError(f"cannot write the artifact into {out.parent}: {e.strerror or e}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `stage` into manifest['files'] and write manifest.json."""
    files = {}
    for p in sorted(stage.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(stage).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest, "files": files}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
    return manifest


def publish(stage: Path, out: Path, force: bool) -> None:
    """Move the finished staging dir into place (atomic rename; an old artifact is replaced)."""
    os.chmod(stage, 0o755)
    if out.exists():
        check_output_dir(out, force)          # it may have changed while the compile ran
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, format- and schema-checked (compiler/manifest_check.py); no other file is opened."""
    path = Path(path)
    mp = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"no such artifact directory: {path}")
    if mp.is_symlink() or not mp.is_file():
        raise ArtifactError(f"{path} is not an accelc artifact (no {MANIFEST})")
    if mp.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{mp} is too large for a manifest")
    try:
        m = json.loads(mp.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mp} is corrupt ({str(e)[:120]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{mp} is not an accelc manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mp} has format version {str(m.get('format_version'))[:20]}; "
                            f"this accelc reads {FORMAT_VERSION}")
    return check_manifest(m)


def artifact_file(path: Path, rel: str, where: str = "files") -> Path:
    """The listed file `rel` inside the artifact: confined, a regular file, not a symlink, not outside."""
    confined(rel, where)
    p = Path(path) / rel
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {rel}") from None
    except OSError as e:
        raise ArtifactError(f"artifact file unreadable: {rel} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"artifact file {rel} is not a regular file (links are not followed)")
    root = os.path.realpath(path)
    if os.path.commonpath([root, os.path.realpath(p)]) != root:
        raise ArtifactError(f"artifact file {rel} resolves outside the artifact")
    return p


def unlisted_files(path: Path, files: dict) -> list[str]:
    """Files and links under the artifact that the manifest does not list (they are never read)."""
    extra = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = Path(dirpath, name).relative_to(path).as_posix()
            if rel != MANIFEST and rel not in files:
                extra.append(rel)
    return sorted(extra)


def verify(path: Path, manifest: dict[str, Any] | None = None, full: bool = True) -> dict[str, Any]:
    """Check the artifact against its manifest, naming the first bad file: no unlisted files, every listed
    file a regular file inside the artifact with the recorded size and sha256. full=False skips rehashing
    files whose verification record (compiler/verified.py) shows them unchanged since they last verified."""
    from .verified import VerificationRecord
    path = Path(path)
    m = manifest or read_manifest(path)
    files = m["files"]
    extra = unlisted_files(path, files)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ArtifactError(f"artifact holds a file its manifest does not list: {extra[0]}{more} "
                            "(unlisted files are not trusted; remove it or recompile)")
    record = VerificationRecord.open(path, sha256_file(path / MANIFEST))
    for rel, info in files.items():
        p = artifact_file(path, rel)
        st = p.stat()
        if st.st_size != info["bytes"]:
            raise ArtifactError(f"artifact file corrupt (size differs from the manifest): {rel}")
        if not full and record.unchanged(rel, st):
            continue
        if sha256_file(p) != info["sha256"]:
            raise ArtifactError(f"artifact file corrupt (sha256 mismatch): {rel}")
        record.mark(rel, st)
    record.save()
    return m
