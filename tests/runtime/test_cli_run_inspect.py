"""`accelc run`, `accelc inspect` and `accelc eval` on a tiny compiled artifact."""
import json

from accelc.compiler.cli import main


def test_run_json_is_greedy_and_reports_choice(tiny_artifact, torch_greedy, capsys):
    rc = main(["run", str(tiny_artifact), "--prompt", "Hello", "--raw", "--max-new-tokens", "12", "--json",
               "--backend", "onnxruntime"])
    out = capsys.readouterr()
    assert rc == 0
    res = json.loads(out.out)
    assert res["backend"] == "onnxruntime" and res["device"] == "cpu" and res["new_tokens"] == 12
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(tiny_artifact / "tokenizer")("Hello")["input_ids"]
    assert res["prompt_tokens"] == len(ids) == 5
    assert res["tokens"] == torch_greedy(ids, 12)
    assert "onnxruntime on cpu (as asked" in out.err             # the one-line choice report


def test_run_streams_text(tiny_artifact, capsys):
    assert main(["run", str(tiny_artifact), "--prompt", "Hi", "--max-new-tokens", "8", "--temperature", "0.7",
                 "--seed", "1", "--top-k", "20"]) == 0
    out = capsys.readouterr()
    assert out.out.endswith("\n") and "8 tokens, stop: length" in out.err


def test_run_bad_input_exits_2(tiny_artifact, tmp_path, capsys):
    assert main(["run", str(tiny_artifact), "--prompt", "x", "--top-p", "2"]) == 2
    assert main(["run", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "--top-p must be in (0, 1]" in err and "not an accelc artifact" in err


def test_run_static_overflow_exits_2(tiny_static_artifact, capsys):
    assert main(["run", str(tiny_static_artifact), "--prompt", "x" * 40, "--raw", "--max-new-tokens", "20"]) == 2
    assert "exceed the artifact's static KV cache of 48" in capsys.readouterr().err


def test_inspect_text_and_json(tiny_static_artifact, capsys):
    assert main(["inspect", str(tiny_static_artifact), "--verify"]) == 0
    text = capsys.readouterr().out
    for needle in ("target    npu", "export-onnx", "validate", "prefill: all static", "decode: all static",
                   "[1, 8]", "past_key/value   [1, 48, 2, 16] x 6", "graphs/decode.xml", "verified"):
        assert needle in text, needle
    assert main(["inspect", str(tiny_static_artifact), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m["graphs"]) == {"prefill", "decode"} and m["target"]["name"] == "npu"


def test_eval_artifact_matches_torch(tiny_artifact, tmp_path, capsys):
    """The artifact's perplexity (OpenVINO graphs) equals the torch source model's under the same protocol."""
    import random
    rnd = random.Random(0)
    text = " ".join("".join(rnd.choice("abcdefgh ") for _ in range(6)) for _ in range(300))
    f = tmp_path / "t.txt"
    f.write_text(text)
    args = ["eval", "--eval-text", str(f), "--window", "64", "--max-tokens", "512", "--json", "--no-sample"]
    assert main([*args, str(tiny_artifact), "--backend", "openvino"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main([*args, str(tiny_artifact) + "-source"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert ours["engine"] == "openvino-fp32" and ref["engine"] == "torch-fp32"
    assert ours["windows"] == ref["windows"] == 8 and ours["tokens"] == ref["tokens"]
    assert abs(ours["perplexity"] - ref["perplexity"]) < 1e-3 * ref["perplexity"]


def test_eval_second_text(tiny_artifact, capsys):
    """`--text sotu` scores the second text: other windows than Brown's, so another perplexity."""
    args = ["eval", str(tiny_artifact) + "-source", "--window", "64", "--max-tokens", "256", "--json", "--no-sample"]
    assert main([*args, "--text", "sotu"]) == 0
    sotu = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    brown = json.loads(capsys.readouterr().out)
    assert sotu["protocol"]["text"] == "sotu" and brown["protocol"]["text"] == "brown-eval"
    assert sotu["windows"] == brown["windows"] == 4 and sotu["perplexity"] != brown["perplexity"]


def test_bench_json_on_tiny_artifact(tiny_artifact, capsys):
    assert main(["bench", str(tiny_artifact), "--prompts", "2", "--max-new-tokens", "6", "--json",
                 "--backend", "onnxruntime", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    (row,) = res["engines"]
    assert res["threads"] == 1 and len(res["prompt_tokens"]) == 2 and row["prompts"] == 2
    assert row["new_tokens"] == 12 and row["decode_tok_s"] > 0 and row["accelc_decode_ratio"] == 1.0
    m = json.loads((tiny_artifact / "manifest.json").read_text())
    embed = 257 * 64 * 4                                       # the tied embedding table is not streamed
    assert res["weight_bytes_per_token"] == m["files"]["openvino/openvino_model.bin"]["bytes"] - embed
    assert res["roofline_decode_tok_s"] > 0 and res["read_bandwidth_gb_s"] > 0


def test_bench_plot_without_matplotlib_is_input_error(tiny_artifact, tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib here")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["bench", str(tiny_artifact), "--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_bench_plot_writes_a_png(tiny_artifact, tmp_path, capsys):
    png = tmp_path / "bench.png"
    assert main(["bench", str(tiny_artifact), "--prompts", "1", "--max-new-tokens", "4", "--backend", "onnxruntime",
                 "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
