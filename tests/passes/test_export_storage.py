"""How graphs are stored: one data file per graph, no stray files, the tied head stored once (ONNX and
OpenVINO), --formats (openvino only: no .onnx; onnx only: no IR), outputs still match torch."""
import numpy as np
import onnx
import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import InputError
from accelc.compiler.manager import PassManager
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from graph_runner import GraphCache, run_chunk
from graph_runner import make_runner
from accelc.targets import CompileOptions, get_target

GRAPH_FILES = {"onnx": {"decoder.onnx", "decoder.onnx.data"}, "openvino": {"decoder.xml", "decoder.bin"}}


def _compile(tmp_path, family="llama", weights="fp32", formats="openvino,onnx"):
    # the graph formats only: these bundles have no tokenizer for the genai folder (tests/passes/test_export_genai.py)
    m = tiny_model(family)
    b = ModelBundle(m, None, ArchAdapter(m), workdir=tmp_path)
    passes = get_target("cpu").pipeline(CompileOptions(weights=weights, formats=formats))
    PassManager(passes).run(b)
    return b


def _table_sized(path, V, C):
    """Initializers of the embedding's size ([V, C] or [C, V], any dtype, int4 blocks [V, n, b] included)."""
    m = onnx.load(str(path), load_external_data=False)
    return [i.name for i in m.graph.initializer if _table_like(list(i.dims), V, C)]


def _table_like(dims, V, C):
    return V in (dims[:1] + dims[-1:]) and int(np.prod(dims)) >= V * C // 2


def _ov_table_sized(path, V, C):
    import openvino as ov
    model = ov.Core().read_model(str(path))
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Constant"
            and _table_like(list(op.get_output_shape(0)), V, C)]


def _logits(b, key, tokens):
    rec = b.records["graphs"]["decoder"]
    run = make_runner("onnxruntime" if key == "onnx" else "openvino", str(b.workdir / rec[key]))
    cache = GraphCache.allocate(rec["num_layers"], tokens.shape[0], tokens.shape[1], rec["kv_heads"], rec["head_dim"])
    return np.concatenate([run_chunk(run, cache, tokens[:, :5])] +
                          [run_chunk(run, cache, tokens[:, t:t + 1]) for t in range(5, tokens.shape[1])], axis=1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fp32_tied_head_stored_once_one_data_file_and_exact(tmp_path, family):
    b = _compile(tmp_path, family)
    V, C = b.adapter.vocab_size, b.adapter.hidden_size
    assert b.adapter.tied_embeddings
    assert {p.name for p in (tmp_path / "graphs").iterdir()} == GRAPH_FILES["onnx"] | GRAPH_FILES["openvino"]
    assert len(_table_sized(tmp_path / "graphs/decoder.onnx", V, C)) == 1       # the exporter made 2 before
    assert len(_ov_table_sized(tmp_path / "graphs/decoder.xml", V, C)) == 1
    m = onnx.load(str(tmp_path / "graphs/decoder.onnx"), load_external_data=False)
    assert {i.external_data[0].value for i in m.graph.initializer if i.external_data} == {"decoder.onnx.data"}
    tokens = np.random.default_rng(0).integers(0, V, (2, 8))
    with torch.no_grad():
        ref = b.model(torch.from_numpy(tokens)).logits.numpy()
    for key in ("onnx", "openvino"):
        assert np.abs(_logits(b, key, tokens) - ref).max() < 1e-4, key
    assert b.records["validation"]["backends"]["onnxruntime"]["max_logit_diff"] < 1e-3
    assert b.records["formats"] == ["openvino", "onnx"]


def test_untied_head_keeps_its_own_weight(tmp_path):
    b = _compile(tmp_path, "mistral")
    assert not b.adapter.tied_embeddings
    V, C = b.adapter.vocab_size, b.adapter.hidden_size
    assert len(_table_sized(tmp_path / "graphs/decoder.onnx", V, C)) == 2       # embedding + head: both needed
    ops = {n.op_type for n in onnx.load(str(tmp_path / "graphs/decoder.onnx"), load_external_data=False).graph.node}
    assert "Gemm" not in ops


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_tied_head_stored_once(tmp_path, weights):
    b = _compile(tmp_path, "llama", weights)
    V, C = b.adapter.vocab_size, b.adapter.hidden_size
    assert {p.name for p in (tmp_path / "graphs").iterdir()} == GRAPH_FILES["onnx"] | GRAPH_FILES["openvino"]
    assert len(_table_sized(tmp_path / "graphs/decoder.onnx", V, C)) == 1
    assert len(_ov_table_sized(tmp_path / "graphs/decoder.xml", V, C)) == 1
    v = b.records["validation"]["backends"]
    assert v["onnxruntime"]["greedy_agreement"] >= 0.9 and v["openvino"]["greedy_agreement"] >= 0.9


def test_formats_openvino_writes_no_onnx(tmp_path):
    b = _compile(tmp_path, "llama", "int8", formats="openvino")
    assert {p.name for p in (tmp_path / "graphs").iterdir()} == GRAPH_FILES["openvino"]
    rec = b.records["graphs"]["decoder"]
    assert "onnx" not in rec and rec["openvino"] == "graphs/decoder.xml"
    assert not any(name.endswith((".onnx", ".onnx.data")) for name in b.files)
    assert set(b.records["validation"]["backends"]) == {"openvino"}         # only what was written
    assert b.records["formats"] == ["openvino"]
    from accelc.runtime.device import select, why_not
    assert why_not("onnxruntime", "cpu", {}, rec) == "the artifact has no ONNX graph"
    assert select({}, rec).backend == "openvino"


def test_formats_onnx_writes_no_ir(tmp_path):
    b = _compile(tmp_path, "llama", "fp32", formats="onnx")
    assert {p.name for p in (tmp_path / "graphs").iterdir()} == GRAPH_FILES["onnx"]
    rec = b.records["graphs"]["decoder"]
    assert "openvino" not in rec
    assert set(b.records["validation"]["backends"]) == {"onnxruntime"}
    from accelc.runtime.device import select
    assert select({}, rec).backend == "onnxruntime"


def test_formats_option_is_checked():
    assert CompileOptions(formats="onnx, openvino").formats == ("openvino", "onnx")
    assert CompileOptions().formats is None
    assert get_target("cpu").resolve(CompileOptions()).formats == ("openvino", "onnx", "genai", "native")
    cpu = [p.name for p in get_target("cpu").pipeline(CompileOptions())]
    assert "export-native" in cpu and cpu.index("export-native") > cpu.index("export-openvino")
    assert "export-native" not in [p.name for p in get_target("npu").pipeline(CompileOptions())]
    with pytest.raises(InputError, match="unknown graph format 'tflite'"):
        CompileOptions(formats="onnx,tflite")
    with pytest.raises(InputError, match="needs the openvino format"):
        get_target("npu").pipeline(CompileOptions(formats="onnx"))
    names = [p.name for p in get_target("cpu").pipeline(CompileOptions(formats="onnx"))]
    assert "export-openvino" not in names and "export-onnx" in names
