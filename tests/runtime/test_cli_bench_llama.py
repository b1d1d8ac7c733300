"""`accelc bench --against llama.cpp` on a tiny artifact with a fake llama.cpp build (tests/fake_llama_cpp.py);
without a build the rows are skipped with one line and the bench still succeeds."""
import json
import os

import pytest

from cli_checks import error_line
from fake_llama_cpp import calls, make_fake_build

from accelc.compiler.cli import main

ARGS = ["--prompts", "2", "--max-new-tokens", "6", "--json", "--backend", "onnxruntime", "--threads", "1"]


def test_bench_against_llama_cpp_rows(tiny_artifact, tmp_path, monkeypatch, capsys):
    bin_dir = make_fake_build(tmp_path / "llama.cpp")
    monkeypatch.setenv("ACCELC_LLAMA_CPP", str(bin_dir))
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_GGUF_PAD", str(3_000_000))
    assert main(["bench", str(tiny_artifact), "--against", "llama.cpp", "--llama-types", "F16,Q8_0", *ARGS]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    rows = res["engines"]
    assert [r["engine"].split(" (")[0] for r in rows] == ["accelc", "llama.cpp F16", "llama.cpp Q8_0"]
    for r in rows[1:]:
        assert r["decode_tok_s"] == 500.0 and r["prefill_tok_s"] == 2000.0 and r["new_tokens"] == 12
        size = os.path.getsize(r["gguf"])
        assert r["gguf"].endswith(r["engine"].split()[1] + ".gguf") and r["file_mb"] == round(size / 1e6, 1) == 3.0
        assert r["engine"].endswith("(3 MB)") and 40 < r["peak_rss_mb"] < 150
        assert r["accelc_decode_ratio"] == round(rows[0]["decode_tok_s"] / 500.0, 3)
        assert r["weight_bytes_per_token"] == size                  # not a real GGUF: its size stands in
        own_roof = res["read_bandwidth_gb_s"] * 1e9 / size            # each file its own roofline, not the artifact's
        assert abs(r["roofline_fraction"] - 500.0 / own_roof) < 0.02 * r["roofline_fraction"]
    benches = [a for k, a in calls(bin_dir) if k == "bench"]
    assert len(benches) == 2 * 3                            # a warm-up and two prompts per file
    assert all(a[a.index("-t") + 1] == "1" and a[a.index("-n") + 1] in ("6", "8") for a in benches)
    assert "converting" in out.err                          # the tiny source is a transformers folder


def test_bench_without_llama_cpp_skips_with_one_line(tiny_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ACCELC_LLAMA_CPP", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", str(tiny_artifact), "--against", "llama.cpp", *ARGS]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["engines"]) == 1
    assert [ln for ln in out.err.splitlines() if "llama.cpp" in ln] == [
        "llama.cpp: no build found (set ACCELC_LLAMA_CPP to a llama.cpp build/bin folder, or put llama-bench on "
        "PATH; scripts/build_llama_cpp.sh builds one): llama.cpp rows skipped"]


def test_bench_against_bad_input_is_one_line_before_the_artifact_opens(tiny_artifact, tmp_path, monkeypatch, capsys):
    import accelc.runtime.artifact as A
    monkeypatch.setattr(A, "open_artifact", lambda *a, **k: pytest.fail("the artifact was opened"))
    assert main(["bench", str(tiny_artifact), "--against", "llama.cpp,vllm"]) == 2
    assert "--against takes 'all' or a comma list of" in error_line(capsys)
    monkeypatch.setenv("ACCELC_LLAMA_CPP", str(tmp_path))
    assert main(["bench", str(tiny_artifact), "--against", "llama.cpp"]) == 2
    assert f"ACCELC_LLAMA_CPP={tmp_path} has no executable llama-bench" in error_line(capsys)
