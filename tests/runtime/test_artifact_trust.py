"""Artifacts from anyone: paths in a manifest stay inside the artifact, unlisted files are refused, manifest
fields are checked against the graphs, and each refusal is one line with exit 2 before any outside file opens."""
import json
import os
import shutil

import pytest

from accelc.compiler.cli import main
from accelc.compiler.errors import ArtifactError
from accelc.runtime.artifact import open_artifact

from opened import outside, watch_opens


@pytest.fixture
def art(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path / "cache"))
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def edit_manifest(art, fn):
    p = art / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def one_line_exit_2(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    info = ("accelc: openvino on", "accelc: onnxruntime on")          # the backend choice, reported as usual
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith(info)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("accelc: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def run_watched(capsys, art, argv, *fragments, cache=None):
    with watch_opens() as seen:
        line = one_line_exit_2(capsys, argv, *fragments)
    assert not outside(seen, art, also=(cache,) if cache else ()), outside(seen, art)
    return line


@pytest.mark.parametrize("rel", ["../../../../etc/passwd", "/etc/passwd", "graphs/../../x", "./graphs/decoder.onnx",
                                 "graphs//decoder.onnx", "graphs\\decoder.onnx", ""])
def test_file_entries_outside_or_unnormalised_are_refused(art, capsys, rel, tmp_path):
    edit_manifest(art, lambda m: m["files"].update({rel: {"sha256": "0" * 64, "bytes": 1}}))
    for argv in (["inspect", str(art), "--verify"], ["run", str(art), "--prompt", "hi", "--max-new-tokens", "2"]):
        run_watched(capsys, art, argv, "manifest files", cache=tmp_path / "cache")


@pytest.mark.parametrize("key,rel", [("openvino", "/etc/passwd"), ("openvino", "../elsewhere/decoder.xml"),
                                     ("onnx", "/etc/passwd"), ("onnx", "graphs/unlisted.onnx")])
def test_graph_paths_must_be_confined_and_listed(art, capsys, key, rel, tmp_path):
    elsewhere = art.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(art / "graphs" / "decoder.xml", elsewhere / "decoder.xml")
    shutil.copy(art / "openvino" / "openvino_model.bin", elsewhere / "decoder.bin")
    edit_manifest(art, lambda m: m["graphs"]["decoder"].update({key: rel}))
    backend = "openvino" if key == "openvino" else "onnxruntime"
    for argv in (["inspect", str(art), "--verify"],
                 ["run", str(art), "--prompt", "hi", "--max-new-tokens", "2", "--backend", backend]):
        run_watched(capsys, art, argv, f"graphs['decoder']", cache=tmp_path / "cache")


def test_unlisted_file_is_refused(art, capsys, tmp_path):
    (art / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2, 3]}))
    line = run_watched(capsys, art, ["run", str(art), "--prompt", "hi"], "does not list", "generation_config.json",
                       cache=tmp_path / "cache")
    assert "generation_config.json" in line
    one_line_exit_2(capsys, ["inspect", str(art), "--verify"], "generation_config.json")


def test_symlinked_file_is_not_followed(art, capsys, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text((art / "tokenizer" / "tokenizer.json").read_text())
    (art / "tokenizer" / "tokenizer.json").unlink()
    os.symlink(secret, art / "tokenizer" / "tokenizer.json")
    with watch_opens() as seen:
        one_line_exit_2(capsys, ["inspect", str(art), "--verify"], "tokenizer/tokenizer.json", "not a regular file")
    assert str(secret) not in seen


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_model_fields_are_checked_against_the_graphs(art, capsys, backend):
    edit_manifest(art, lambda m: m["model"].update(kv_heads=4))
    one_line_exit_2(capsys, ["run", str(art), "--prompt", "hi", "--backend", backend], "kv_heads")

    def both(m):      # the graph record too: only the loaded graph can tell
        m["model"]["kv_heads"] = 4
        g = m["graphs"]["decoder"]
        g["kv_heads"] = 4
        for k, v in g["inputs"].items():
            if k.startswith("past_"):
                v[2] = 4
    edit_manifest(art, both)
    one_line_exit_2(capsys, ["run", str(art), "--prompt", "hi", "--backend", backend], "kv_heads", "has 2")


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: m["model"].update(layers="3"), "model.layers"),
    (lambda m: m["model"].update(head_dim=-1), "model.head_dim"),
    (lambda m: m["model"].pop("kv_heads"), "kv_heads"),
    (lambda m: m.update(files=[]), "'files'"),
    (lambda m: m.update(graphs={}), "'graphs'"),
    (lambda m: m["files"]["tokenizer/tokenizer.json"].update(sha256="xyz"), "sha256"),
    (lambda m: m["files"]["tokenizer/tokenizer.json"].update(bytes=True), "bytes"),
    (lambda m: m["graphs"]["decoder"].update(num_layers=7), "layers"),
])
def test_schema(art, capsys, edit, fragment):
    edit_manifest(art, edit)
    one_line_exit_2(capsys, ["inspect", str(art)], fragment)


def test_unchanged_artifact_is_not_rehashed_but_a_changed_file_is(art, monkeypatch):
    import accelc.compiler.artifact as A
    calls = []
    real = A.sha256_file
    monkeypatch.setattr(A, "sha256_file", lambda p, *a: calls.append(os.path.basename(p)) or real(p, *a))
    A.verify(art, full=False)
    first = len(calls)
    assert first == len(json.loads((art / "manifest.json").read_text())["files"]) + 1   # + the manifest
    calls.clear()
    A.verify(art, full=False)
    assert calls == ["manifest.json"]                       # the record vouches for the rest
    calls.clear()
    A.verify(art, full=True)
    assert len(calls) == first                              # --verify: everything again
    # a same-size change with the old mtime put back: ctime moved, so it is rehashed and caught
    p = art / "graphs" / "decoder.onnx.data"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ArtifactError, match="decoder.onnx.data"):
        A.verify(art, full=False)


def test_open_artifact_after_record_still_runs(art):
    a = open_artifact(art, report=False)
    b = open_artifact(art, report=False)
    assert a.layers == b.layers == 3


def test_torch_backend_is_never_chosen_automatically(art):
    from accelc.runtime.device import DEVICE_BACKENDS
    assert all("torch" not in v for v in DEVICE_BACKENDS.values())
