"""A pass that crashes (an exception that is not an AccelcError) is a bug: exit 1, -v shows the traceback;
bad input inside a pass stays exit 2 with one line. Both name the pass."""
import pytest

from accelc.compiler.cli import main
from accelc.compiler.errors import InputError, PassBugError
from accelc.models.tiny import save_tiny_model_folder
from accelc.passes.export.export_onnx import ExportOnnxPass


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("m") / "tiny-llama")


def _compile(tiny_folder, out, *extra):
    return main([*extra, "compile", str(tiny_folder), "-o", str(out), "--no-validate"])


def test_crash_inside_a_pass_exits_1_and_names_it(capsys, tmp_path, tiny_folder, monkeypatch):
    def boom(self, bundle):
        raise RuntimeError("Failed to serialize proto")      # what protobuf raised past 2 GB
    monkeypatch.setattr(ExportOnnxPass, "call", boom)
    code = _compile(tiny_folder, tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 1
    assert "internal error" in err and "'export-onnx' failed: RuntimeError: Failed to serialize proto" in err
    assert "Traceback" not in err and "-v" in err
    assert not (tmp_path / "out").exists()


def test_crash_with_v_raises_with_the_original_cause(tmp_path, tiny_folder, monkeypatch):
    def boom(self, bundle):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(ExportOnnxPass, "call", boom)
    with pytest.raises(PassBugError, match="'export-onnx' failed") as e:   # -v: the CLI re-raises (traceback)
        _compile(tiny_folder, tmp_path / "out", "-v")
    chain, c = [], e.value
    while c is not None:
        chain.append(c)
        c = c.__cause__
    assert isinstance(chain[-1], RuntimeError) and "kaboom" in str(chain[-1])


def test_user_error_inside_a_pass_exits_2(capsys, tmp_path, tiny_folder, monkeypatch):
    def refuse(self, bundle):
        raise InputError("this model cannot be exported")
    monkeypatch.setattr(ExportOnnxPass, "call", refuse)
    code = _compile(tiny_folder, tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2 and "accelc: error: pass 'export-onnx' failed: this model cannot be exported" in err
    assert "Traceback" not in err
