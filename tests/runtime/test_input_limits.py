"""Input limits of `accelc run` and `accelc compile`: prompts past the context, bad bytes, absurd numbers, empty
prompts, prompts from files and stdin, and draft-model paths, each one line and exit 2 before the slow part."""
import json
import subprocess
import sys

import pytest

from accelc.compiler.cli import main
from cli_checks import error_line, no_model_load


def no_graphs(monkeypatch):
    import accelc.runtime.graph_set as G
    monkeypatch.setattr(G, "load_backend", lambda *a, **k: pytest.fail("graphs were loaded"))


def test_prompt_past_the_context_is_refused_before_the_graphs_load(tiny_artifact, capsys, monkeypatch):
    no_graphs(monkeypatch)                                   # the tiny model's context is 512 positions
    assert main(["run", str(tiny_artifact), "--prompt", "x" * 600, "--raw", "--max-new-tokens", "4"]) == 2
    line = error_line(capsys)
    assert "context of 512" in line and "--truncate" in line
    assert main(["run", str(tiny_artifact), "--prompt", "hi", "--max-new-tokens", "600"]) == 2
    assert "does not fit" in error_line(capsys)


def test_truncate_keeps_the_last_tokens_and_warns(tiny_artifact, capsys):
    assert main(["run", str(tiny_artifact), "--prompt", "x" * 600, "--raw", "--max-new-tokens", "4", "--truncate",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert "cut to its last 508 tokens" in err
    assert json.loads(out)["prompt_tokens"] == 508


@pytest.mark.parametrize("value", ["99999999999999999999", "0", "-3"])
def test_absurd_max_new_tokens(tiny_artifact, capsys, value, monkeypatch):
    no_graphs(monkeypatch)
    assert main(["run", str(tiny_artifact), "--prompt", "hi", "--max-new-tokens", value]) == 2
    assert "--max-new-tokens" in error_line(capsys)


def test_empty_prompt_is_refused_before_the_artifact_opens(tmp_path, capsys):
    for extra in (["--raw"], []):
        assert main(["run", str(tmp_path / "no-such-artifact"), "--prompt", "  ", *extra]) == 2
        assert "is empty" in error_line(capsys)


def test_non_utf8_prompt_bytes(tiny_artifact):
    cmd = [sys.executable, "-m", "accelc.compiler.cli", "run", str(tiny_artifact).encode(), b"--prompt", b"caf\xe9 \xff"]
    r = subprocess.run(cmd, capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("accelc: error: --prompt is not valid UTF-8")


def test_prompt_file_and_stdin_give_the_same_tokens(tiny_artifact, tmp_path, capsys):
    args = ["--raw", "--max-new-tokens", "6", "--json"]
    assert main(["run", str(tiny_artifact), "--prompt", "hello there", *args]) == 0
    ref = json.loads(capsys.readouterr().out)["tokens"]
    f = tmp_path / "p.txt"
    f.write_text("hello there")
    assert main(["run", str(tiny_artifact), "--prompt-file", str(f), *args]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == ref
    r = subprocess.run([sys.executable, "-m", "accelc.compiler.cli", "run", str(tiny_artifact), "--prompt-file", "-",
                        *args], input=b"hello there", capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["tokens"] == ref
    f.write_bytes(b"\xff\xfe bad")
    assert main(["run", str(tiny_artifact), "--prompt-file", str(f)]) == 2
    assert "not valid UTF-8" in error_line(capsys)
    assert main(["run", str(tiny_artifact), "--prompt-file", str(tmp_path / "none.txt")]) == 2
    assert "no such file" in error_line(capsys)


def test_draft_model_path_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from accelc.models.tiny import save_tiny_model_folder
    src = save_tiny_model_folder(tmp_path / "tiny")
    no_model_load(monkeypatch)
    assert main(["compile", str(src), "-o", str(tmp_path / "out"), "--drafter", str(tmp_path / "notmodel")]) == 2
    assert "no such model or path" in error_line(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out") or p.name == "out"]


def test_pickled_weights_beside_safetensors_are_never_loaded(tmp_path, monkeypatch):
    import torch
    from accelc.models.sources import load_model
    from accelc.models.tiny import save_tiny_model_folder
    src = save_tiny_model_folder(tmp_path / "tiny")
    (src / "pytorch_model.bin").write_bytes(b"not a pickle you want to load")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a pickle"))
    assert load_model(str(src)).adapter.num_layers > 0
