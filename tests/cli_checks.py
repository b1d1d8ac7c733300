"""Shared checks for CLI tests: exactly one `accelc: error:` line and no traceback; the model never loaded."""
import pytest


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("accelc: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_model_load(monkeypatch) -> None:
    """Fail the test if the model source is loaded (checks that must come before the slow load)."""
    import accelc.models.sources as S
    monkeypatch.setattr(S, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
