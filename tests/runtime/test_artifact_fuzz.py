"""Property-based: any mutation of a manifest or of an artifact's files gives exit 0 or one line with exit 2,
never a traceback or an internal error, never a file opened outside the artifact, never a file written
into it."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from accelc.compiler.cli import main

from opened import outside, watch_opens

EVIL_PATHS = ["../../../../etc/passwd", "/etc/passwd", "../outside.bin", "graphs/../../outside.bin", "graphs/",
              "graphs\\decoder.bin", "C:/x", "graphs/./decoder.bin", "manifest.json", "tokenizer", "\x00", "",
              "graphs/decoder.bin", "tokenizer/tokenizer.json", "graphs/decoder.onnx.data"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                      st.text(max_size=12), st.sampled_from(EVIL_PATHS))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3) |
                          st.dictionaries(st.text(max_size=8) | st.sampled_from(EVIL_PATHS), kids, max_size=3),
                          max_leaves=6)


def manifest_paths(m, prefix=()):
    """Every key path in the manifest (dicts and lists), to pick one to mutate."""
    out = [prefix] if prefix else []
    if isinstance(m, dict):
        for k, v in m.items():
            out += manifest_paths(v, prefix + (k,))
    elif isinstance(m, list):
        for i, v in enumerate(m):
            out += manifest_paths(v, prefix + (i,))
    return out


def apply_manifest_edit(m, path, action, value):
    *head, last = path
    parent = m
    for k in head:
        parent = parent[k]
    if action == "delete":
        del parent[last]
    elif action == "rename" and isinstance(parent, dict) and isinstance(value, str):
        parent[value] = parent.pop(last)
    else:
        parent[last] = value


def apply_file_edit(art: Path, rel: str, action: str, outside_file: Path):
    p = art / rel
    if action == "truncate":
        p.write_bytes(p.read_bytes()[: max(0, p.stat().st_size // 2)])
    elif action == "append":
        with open(p, "ab") as f:
            f.write(b"\0junk")
    elif action == "delete":
        p.unlink()
    elif action == "extra":
        (p.parent / "extra.json").write_text('{"eos_token_id": 1}')
    elif action == "symlink":
        p.unlink()
        os.symlink(outside_file, p)
    elif action == "flip":
        data = bytearray(p.read_bytes())
        if data:
            data[len(data) // 3] ^= 0x5A
            p.write_bytes(bytes(data))


def check(art: Path, cache: Path, argv_tail):
    before = sorted(str(p) for p in art.rglob("*"))
    with watch_opens() as seen:
        import io
        import contextlib
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([argv_tail[0], str(art), *argv_tail[1:]])
    text = err.getvalue()
    assert "Traceback" not in text and "internal error" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len([ln for ln in text.splitlines() if ln.startswith("accelc: error: ")]) == 1, text
    assert not outside(seen, art, also=(cache,)), outside(seen, art, also=(cache,))
    assert sorted(str(p) for p in art.rglob("*")) == before, "the command wrote into the artifact"


COMMANDS = [("inspect", "--verify"), ("inspect",), ("run", "--prompt", "hi", "--max-new-tokens", "2"),
            ("run", "--prompt", "hi", "--max-new-tokens", "2", "--backend", "onnxruntime")]
FUZZ = settings(max_examples=int(os.environ.get("ACCELC_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tiny_artifact):
    return tiny_artifact


def fresh_copy(pristine):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    art = tmp / "art"
    shutil.copytree(pristine, art, symlinks=True)
    (tmp / "outside.bin").write_bytes(b"secret")
    return tmp, art


@FUZZ
@given(data=st.data())
def test_manifest_mutations(pristine, data, monkeypatch):
    tmp, art = fresh_copy(pristine)
    monkeypatch.setenv("ACCELC_CACHE", str(tmp / "cache"))
    try:
        m = json.loads((art / "manifest.json").read_text())
        path = data.draw(st.sampled_from(manifest_paths(m)))
        action = data.draw(st.sampled_from(["set", "delete", "rename"]))
        apply_manifest_edit(m, path, action, data.draw(json_value))
        (art / "manifest.json").write_text(json.dumps(m))
        check(art, tmp / "cache", data.draw(st.sampled_from(COMMANDS)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_file_mutations(pristine, data, monkeypatch):
    tmp, art = fresh_copy(pristine)
    monkeypatch.setenv("ACCELC_CACHE", str(tmp / "cache"))
    try:
        files = sorted(json.loads((art / "manifest.json").read_text())["files"]) + ["manifest.json"]
        for _ in range(data.draw(st.integers(1, 2))):
            rel = data.draw(st.sampled_from(files))
            if (art / rel).is_file() and not (art / rel).is_symlink():
                apply_file_edit(art, rel, data.draw(st.sampled_from(
                    ["truncate", "append", "delete", "extra", "symlink", "flip"])), tmp / "outside.bin")
        check(art, tmp / "cache", data.draw(st.sampled_from(COMMANDS)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
