"""Faults: --force replaces only accelc artifacts, SIGTERM/SIGHUP clean up like Ctrl-C, stale staging dirs of
dead processes go, an unwritable output parent is one line before the model loads."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from accelc.compiler.artifact import remove_stale_stages, staging
from accelc.compiler.cli import main
from accelc.models.tiny import save_tiny_model_folder
from cli_checks import error_line, no_model_load


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("m") / "tiny-llama")


def test_force_refuses_a_directory_that_is_not_an_artifact(capsys, tmp_path, tiny_folder, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    no_model_load(monkeypatch)
    assert main(["compile", str(tiny_folder), "-o", str(out), "--force"]) == 2
    assert "not one" in error_line(capsys) and (out / "keep.txt").read_text() == "mine"
    (out / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    assert main(["compile", str(tiny_folder), "-o", str(out), "--force"]) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_force_refuses_a_file_and_a_symlink(capsys, tmp_path, tiny_folder, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "f").write_text("x")
    assert main(["compile", str(tiny_folder), "-o", str(tmp_path / "f"), "--force"]) == 2
    error_line(capsys)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("mine")
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert main(["compile", str(tiny_folder), "-o", str(tmp_path / "link"), "--force"]) == 2
    error_line(capsys)
    assert (tmp_path / "f").read_text() == "x" and (tmp_path / "real" / "keep.txt").read_text() == "mine"


def test_force_replaces_an_artifact_and_an_empty_directory(capsys, tmp_path, tiny_folder):
    out = tmp_path / "art"
    out.mkdir()                                                  # empty: nothing to lose
    assert main(["compile", str(tiny_folder), "-o", str(out), "--force", "--no-validate"]) == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    assert main(["compile", str(tiny_folder), "-o", str(out), "--force", "--no-validate"]) == 0
    assert json.loads((out / "manifest.json").read_text())["format"] == "accelc-artifact" and first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art.")]


def test_unwritable_parent_is_one_line_before_the_load(capsys, tmp_path, tiny_folder, monkeypatch):
    parent = "/sys/accelc-test-unwritable"                       # not writable even as root
    if os.access("/sys", os.W_OK) and not os.path.exists("/sys/kernel"):
        pytest.skip("no read-only location on this machine")
    no_model_load(monkeypatch)
    assert main(["compile", str(tiny_folder), "-o", f"{parent}/out"]) == 2
    assert "cannot write the artifact" in error_line(capsys)


def test_stale_staging_dirs_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".art.partial-{dead.pid}-abc123"
    stale_old = tmp_path / f".art.old-{dead.pid}"
    alive = tmp_path / f".art.partial-{os.getppid()}-xyz"          # a live process's stage stays
    mine = tmp_path / ".art.partial-notapid-x"                      # not ours: stays
    for d in (stale, stale_old, alive, mine):
        d.mkdir()
        (d / "big.bin").write_bytes(b"0" * 10)
    assert set(remove_stale_stages(tmp_path)) == {stale, stale_old}
    assert alive.is_dir() and mine.is_dir() and not stale.exists()
    stale.mkdir()
    with staging(tmp_path / "art") as stage:                        # the next compile into that parent cleans up
        assert not stale.exists() and stage.name.startswith(f".art.partial-{os.getpid()}-")



def test_fp32_scratch_sits_beside_the_stage_and_is_swept_after_a_crash(tmp_path):
    """The export's fp32 scratch folder is named after the staging dir, so a compile that died without its exit
    handlers leaves it to the next compile's sweep, not to /tmp for ever."""
    from accelc.passes.export.export_onnx import _scratch
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / f".art.partial-{dead.pid}-abc123"
    stage.mkdir()
    scratch = _scratch(stage)
    assert scratch.parent == tmp_path and scratch.name.startswith(stage.name + "-fp32-")
    (scratch / "decoder.onnx").write_bytes(b"0" * 10)
    assert scratch in remove_stale_stages(tmp_path) and not scratch.exists()

SLOW_COMPILE = textwrap.dedent("""
    import sys, time
    from accelc.compiler.pass_base import Pass
    from accelc.targets import TARGETS
    from accelc.compiler.cli import main

    class Slow(Pass):
        name = "slow"
        def call(self, bundle):
            (bundle.workdir / "half.onnx").write_bytes(b"half" * 1000)
            print("STAGED", flush=True)
            time.sleep(60)

    t = TARGETS["cpu"]
    TARGETS["cpu"] = type(t)(t.name, t.description, t.static_shapes, t.devices, build=lambda o: [Slow()])
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_clean_up_the_staging_dir(tmp_path, tiny_folder, sig):
    out = tmp_path / "out"
    # the child starts with default dispositions: under `nohup` SIGHUP is inherited as ignored, a background
    # job of a non-interactive shell inherits SIGINT ignored, and accelc rightly leaves ignored signals alone
    p = subprocess.Popen([sys.executable, "-c", SLOW_COMPILE, "compile", str(tiny_folder), "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)])
    deadline = time.time() + 120
    while time.time() < deadline and "STAGED" not in p.stdout.readline():
        pass
    assert [d for d in tmp_path.iterdir() if d.name.startswith(".out.partial-")], "the compile never staged"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig or (sig == signal.SIGINT and p.returncode == 130), (p.returncode, err)
    assert "Traceback" not in err
    assert not [d for d in tmp_path.iterdir() if d.name.startswith(".out.") or d.name == "out"]
