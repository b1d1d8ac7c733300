"""llama.cpp in `accelc bench --against` (compiler/harness/bench_llama.py), on a fake llama.cpp build: finding the
build, the skip line, reading llama-bench's JSON, and the GGUF files made once and cached per source and type."""
import hashlib
from pathlib import Path

import pytest
from fake_llama_cpp import PP_NS_PER_TOKEN, TG_NS_PER_TOKEN, calls, make_fake_build

from accelc.compiler.errors import InputError
from accelc.compiler.harness import bench_llama as L


@pytest.fixture
def build(tmp_path, monkeypatch):
    bin_dir = make_fake_build(tmp_path / "llama.cpp")
    monkeypatch.setenv(L.ENV, str(bin_dir))
    monkeypatch.setenv("ACCELC_CACHE", str(tmp_path / "cache"))
    return bin_dir


def gguf_source(tmp_path: Path, name: str = "m", data: bytes = b"GGUF-source-weights") -> dict:
    f = tmp_path / f"{name}.gguf"
    f.write_bytes(data)
    return {"name": name, "format": "gguf", "path": str(f), "sha256": hashlib.sha256(data).hexdigest()}


def test_find_build_from_env_var_or_path(tmp_path, monkeypatch):
    bin_dir = make_fake_build(tmp_path / "llama.cpp")
    found = L.find_llama_cpp({L.ENV: str(bin_dir)})
    assert found.bench == bin_dir / "llama-bench" and found.quantize == bin_dir / "llama-quantize"
    assert found.convert == tmp_path / "llama.cpp" / "convert_hf_to_gguf.py"      # two folders above bin
    on_path = L.find_llama_cpp({"PATH": str(bin_dir)})
    assert on_path.bench == bin_dir / "llama-bench" and on_path.convert == found.convert
    assert L.find_llama_cpp({"PATH": str(tmp_path)}) is None                     # nothing: a skip, not an error
    with pytest.raises(InputError, match="has no executable llama-bench"):
        L.find_llama_cpp({L.ENV: str(tmp_path)})                                  # set but wrong: an error


def test_no_build_skips_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(L.ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    said = []
    assert L.llama_factories(L.find_llama_cpp(), gguf_source(tmp_path), ["F16"], 2, said.append) == []
    assert said == [L.SKIP_LINE] and "ACCELC_LLAMA_CPP" in said[0] and "skipped" in said[0]


def test_engine_reads_llama_bench_json(build, tmp_path):
    f = tmp_path / "Q8_0.gguf"
    f.write_bytes(b"x" * 3_000_000)
    eng = L.LlamaCppEngine(build / "llama-bench", f, "Q8_0", threads=2)
    t = eng.run(list(range(7)), 16)
    (kind, args), = calls(build)
    assert kind == "bench" and args == ["-m", str(f), "-t", "2", "-p", "7", "-n", "16", "-r", "1", "-o", "json"]
    assert (t.prompt_tokens, t.new_tokens, t.decode_steps) == (7, 16, 16)
    assert t.decode_s == pytest.approx(16 * TG_NS_PER_TOKEN / 1e9) and t.decode_tok_s == pytest.approx(500)
    assert t.ttft_s == pytest.approx(7 * PP_NS_PER_TOKEN / 1e9) and t.prefill_tok_s == pytest.approx(2000)
    assert eng.name == "llama.cpp Q8_0 (3 MB)" and eng.info["file_mb"] == 3.0
    assert eng.info["model_type"] == "llama ?B Q8_0" and eng.info["build_commit"] == "fake123"
    assert 40 < eng.peak_rss_mb < 150               # the child's own peak (it holds 40 MB), not this process's


def test_engine_failure_is_one_error_line(build, tmp_path):
    f = tmp_path / "FAIL.gguf"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match=r"llama-bench failed on FAIL.gguf \(exit 1\): .*bad magic"):
        L.LlamaCppEngine(build / "llama-bench", f, "x", 1).run([1, 2], 4)


def test_bench_json_parsing():
    pp, tg = L.parse_bench_json('[{"n_prompt": 0, "n_gen": 8, "avg_ns": 100}]')
    assert pp is None and tg["n_gen"] == 8
    with pytest.raises(InputError, match="no JSON"):
        L.parse_bench_json("| model | size |")
    with pytest.raises(InputError, match="no tg record"):
        L.parse_bench_json('[{"n_prompt": 5, "n_gen": 0, "avg_ns": 100}]')


def test_types_option():
    assert L.parse_types("source, q8_0,Q4_0,Q4_0") == ["source", "Q8_0", "Q4_0"]
    for bad in ("", "Q4_0;rm", ","):
        with pytest.raises(InputError, match="--llama-types"):
            L.parse_types(bad)


def test_gguf_source_quantized_once_and_cached_by_source_and_type(build, tmp_path):
    llama = L.find_llama_cpp()
    src = gguf_source(tmp_path)
    files = L.gguf_files(llama, src, ["source", "F16", "Q8_0"], 2)
    folder = tmp_path / "cache" / "llama-cpp" / f"m-{src['sha256'][:16]}"
    assert files == {"source": Path(src["path"]), "F16": folder / "F16.gguf", "Q8_0": folder / "Q8_0.gguf"}
    made = calls(build)
    assert [a for _, a in made] == [["--allow-requantize", src["path"], str(folder / ".F16.gguf.partial"), "F16", "2"],
                                    ["--allow-requantize", src["path"], str(folder / ".Q8_0.gguf.partial"), "Q8_0",
                                     "2"]]
    assert files["Q8_0"].read_bytes() == b"GGUF-source-weightsQ8_0" and not list(folder.glob(".*partial"))
    assert L.gguf_files(llama, src, ["source", "F16", "Q8_0"], 2) == files
    assert len(calls(build)) == 2                                     # a rerun makes nothing
    (tmp_path / "o").mkdir()
    other = gguf_source(tmp_path / "o", name="m", data=b"other weights")
    assert L.gguf_files(llama, other, ["Q8_0"], 2)["Q8_0"].parent.name == f"m-{other['sha256'][:16]}"
    assert len(calls(build)) == 3                                     # same name, other weights: its own entry


def test_changed_or_missing_source_gguf_is_refused(build, tmp_path):
    llama = L.find_llama_cpp()
    src = gguf_source(tmp_path)
    Path(src["path"]).write_bytes(b"changed since the compile")
    with pytest.raises(InputError, match="not the GGUF the artifact was compiled from"):
        L.gguf_files(llama, src, ["Q4_0"], 2)
    with pytest.raises(InputError, match="not on this machine"):
        L.gguf_files(llama, {**src, "path": str(tmp_path / "gone.gguf")}, ["Q4_0"], 2)
    assert calls(build) == []


def test_failed_quantize_leaves_no_file(build, tmp_path):
    (build / "llama-quantize").write_text(f"#!{__import__('sys').executable}\nimport sys\n"
                                          "print('unknown type', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(InputError, match=r"llama-quantize to Q9_9 failed \(exit 3\): unknown type"):
        L.gguf_files(L.find_llama_cpp(), gguf_source(tmp_path), ["Q9_9"], 2)
    assert not list((tmp_path / "cache").rglob("*.gguf*"))


def test_transformers_folder_converted_to_f16_once(build, tmp_path, monkeypatch):
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    src = {"name": "hf-model", "format": "transformers", "path": str(hf), "sha256": "ab" * 32}
    deps = build.parent.parent / "python-deps"                         # where the build script puts sentencepiece
    deps.mkdir()
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    said = []
    files = L.gguf_files(L.find_llama_cpp(), src, ["source", "F16", "Q4_0"], 2, said.append)
    assert set(files) == {"F16", "Q4_0"}                               # no file of its own: F16 is the source
    assert files["F16"].read_bytes() == b"GGUF-F16-of-hf-model"
    assert files["Q4_0"].read_bytes() == b"GGUF-F16-of-hf-modelQ4_0"   # quantized from the F16 conversion
    made = calls(build)
    assert [k for k, _ in made] == ["convert", "convert-env", "quantize"]
    assert made[0][1][:3] == [str(hf), "--outtype", "f16"]
    assert made[1][1] == {"PYTHONPATH": f"{deps}:/elsewhere", "HF_HUB_OFFLINE": "1"}
    assert any("converting" in s for s in said)
    L.gguf_files(L.find_llama_cpp(), src, ["F16", "Q4_0"], 2)
    assert len(calls(build)) == 3


def test_factories_name_the_source_type(build, tmp_path, monkeypatch):
    monkeypatch.setattr(L, "gguf_type", lambda p: "Q4_1")
    src = gguf_source(tmp_path)
    names = [n for n, _ in L.llama_factories(L.find_llama_cpp(), src, ["source", "Q4_0"], 2, lambda s: None)]
    assert names == ["llama.cpp source Q4_1", "llama.cpp Q4_0"]
    _, factory = L.llama_factories(L.find_llama_cpp(), src, ["Q4_0"], 2, lambda s: None)[0]
    eng = factory()
    assert eng.threads == 2 and eng.gguf.name == "Q4_0.gguf"


def test_gguf_weight_bytes_per_token(tmp_path):
    """All tensors are read per token, less the embedding table when a separate output.weight is the head."""
    import numpy as np
    from gguf import GGUFWriter

    def write(path, tensors):
        w = GGUFWriter(str(path), "llama")
        for name, a in tensors.items():
            w.add_tensor(name, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path
    embd, layer, head = (np.zeros(s, np.float32) for s in ((100, 8), (8, 8), (100, 8)))
    tied = write(tmp_path / "tied.gguf", {"token_embd.weight": embd, "blk.0.attn_q.weight": layer})
    untied = write(tmp_path / "untied.gguf", {"token_embd.weight": embd, "blk.0.attn_q.weight": layer,
                                              "output.weight": head})
    assert L.gguf_weight_bytes(tied) == (800 + 64) * 4
    assert L.gguf_weight_bytes(untied) == (64 + 800) * 4
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf" * 10)
    assert L.gguf_weight_bytes(junk) == 100
