"""Fixed-size KV caches in artifacts (issue 17): compile a tiny model with --kv-cache, run it through the runtime's
fixed cache on OpenVINO and ONNX Runtime, static (npu) and dynamic (cpu), against the torch reference."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from accelc.compiler.kv_spec import parse_kv_cache
from accelc.passes.kvcache.compress_graph import export_compress
from accelc.passes.kvcache.lococo import Compressor
from accelc.runtime.artifact import open_artifact
from accelc.runtime.fixed_cache import CompressRunner, FixedCache
from accelc.runtime.generate import generate
from accelc.targets import CompileOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_compile import compile_tiny  # noqa: E402

PROMPT = list(range(65, 115))
LOCOCO = "lococo:16,steps=2,seq_len=200,buffer=4"   # cuts at 20 slots, buffer of 24: masked cuts


def options(kind):
    return lambda calib: CompileOptions(calib=calib, kv_cache=kind, formats=("openvino", "onnx"), prefill_chunk=8)


@pytest.fixture(scope="module")
def lococo_cpu(tmp_path_factory):
    return compile_tiny(tmp_path_factory.mktemp("lc"), options(LOCOCO))


@pytest.fixture(scope="module")
def lococo_npu(tmp_path_factory):
    return compile_tiny(tmp_path_factory.mktemp("ln"), options(LOCOCO), target="npu")


def test_masked_compression_equals_the_filled_slots():
    torch.manual_seed(0)
    c = Compressor(8, 6)
    torch.nn.init.normal_(c.conv.weight)
    k, v, s = torch.randn(1, 16, 2, 8), torch.randn(1, 16, 2, 8), torch.rand(1, 2, 16)
    for filled in (7, 11, 16):
        mask = (torch.arange(16) < filled).long()[None]
        got = c(k, v, s, mask)
        want = c(k[:, :filled], v[:, :filled], s[:, :, :filled])
        for g, w in zip(got, want):
            assert g.shape == (1, 6, 2, 8)
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_compression_graph_matches_torch(tmp_path, backend):
    torch.manual_seed(1)
    comps = torch.nn.ModuleList(Compressor(8, 6) for _ in range(2))
    for c in comps:
        torch.nn.init.normal_(c.conv.weight)
    path = tmp_path / "compress.onnx"
    export_compress(comps, path, 2, 8, 6, "slots")
    if backend == "openvino":
        import openvino as ov
        xml = tmp_path / "compress.xml"
        ov.save_model(ov.convert_model(str(path)), str(xml), compress_to_fp16=False)
        path = xml
    run = CompressRunner(path, backend, "cpu", 1, 2)
    for S in (9, 22):
        caches, want = [], []
        for c in comps:
            k, v, s = torch.randn(1, S, 2, 8), torch.randn(1, S, 2, 8), torch.rand(1, 2, S)
            caches += [k.numpy(), v.numpy(), s.numpy()]
            want += [t.detach().numpy() for t in c(k, v, s)]
        got = run(np.ones((1, S), np.int64), caches)
        for g, w in zip(got, want):
            assert g.shape == (1, 6, 2, 8)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["window:8", "sink:12,sinks=2", "h2o:16"])
def test_fixed_cache_artifact_matches_torch_and_stays_bounded(tmp_path, kind):
    art, bundle = compile_tiny(tmp_path, options(kind))
    val = bundle.records["kv_cache"]["validation"]
    for backend in ("onnxruntime", "openvino"):
        assert val[backend]["cuts"] >= 2 and val[backend]["greedy_agreement"] == 1.0
        assert val[backend]["max_logit_diff"] < 1e-3
        a = open_artifact(art, backend=backend, report=False)
        assert a.context is None                       # a fixed cache has no length limit
        state = a.new_state(10)
        spec = parse_kv_cache(kind)
        from accelc.runtime.decode import decode_one, prefill
        prefill(state, PROMPT)
        for t in range(200):
            decode_one(state, 65 + t % 50)
            assert state.cache.slots <= spec.slots + spec.buffer
        assert state.cache.length == len(PROMPT) + 200 and state.cache.cuts >= 10


def test_lococo_artifact_static_and_dynamic_generate_the_same(lococo_cpu, lococo_npu):
    (cpu, b1), (npu, b2) = lococo_cpu, lococo_npu
    for b in (b1, b2):
        for r in b.records["kv_cache"]["validation"].values():
            assert r["cuts"] >= 2 and r["greedy_agreement"] == 1.0 and r["max_logit_diff"] < 1e-3
    assert "kvcache/lococo.safetensors" in b1.files
    capacity = lococo_npu[1].records["graphs"]["compress"]["inputs"]["slot_mask"][1]
    assert capacity == 16 + 8                       # M + max(buffer, chunk)
    runs = {}
    for path in (cpu, npu):
        for backend in ("openvino", "onnxruntime"):
            a = open_artifact(path, backend=backend, report=False)
            r = generate(a, PROMPT, 4 * capacity)       # 4x the static cache's length
            runs[(path.parent.name, backend)] = r.tokens
    assert len({tuple(t) for t in runs.values()}) == 1, runs
    assert len(next(iter(runs.values()))) > 0


def test_cache_that_never_cuts_equals_the_full_cache(lococo_cpu, tmp_path):
    """With the model frozen (tune=none) a cache that never cuts is the full cache; the default (tune=norms) artifact
    differs before any cut too: its graphs carry the norm weights trained with the compressors."""
    (tmp_path / "full").mkdir(), (tmp_path / "frozen").mkdir()
    full, _ = compile_tiny(tmp_path / "full", options("full"))
    frozen, b = compile_tiny(tmp_path / "frozen", options(LOCOCO + ",tune=none"))
    assert b.records["kv_cache"]["training"]["norm_weights"] == 0
    assert lococo_cpu[1].records["kv_cache"]["training"]["tune"] == "norms"
    from accelc.runtime.decode import prefill
    ids = PROMPT[:20]                                  # M + buffer = 20: no cut
    la, lb, lt = (prefill(open_artifact(p, backend="onnxruntime", report=False, full_logits=True).new_state(64), ids,
                          all_logits=True) for p in (frozen, full, lococo_cpu[0]))
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4)
    assert np.abs(lt - lb).max() > 1e-3
    # the torch backend runs the source model: refused where the norms were tuned
    from accelc.runtime.backends.torch import unavailable_reason
    manifest = lambda p: json.loads((p / "manifest.json").read_text())     # noqa: E731
    assert "norm weights" in unavailable_reason(manifest(lococo_cpu[0]))
    assert "norm weights" not in (unavailable_reason(manifest(frozen)) or "")


def test_rollback_since_the_last_cut_and_reset_before_it():
    c = FixedCache(parse_kv_cache("window:4,buffer=2"), 1, 1, 2, 8)
    c.slots, c.length = 3, 3
    c.rollback(2)
    assert (c.slots, c.length) == (2, 2)
    c.slots, c.length, c.floor = 6, 10, 8                # cut to 4 slots at 8 tokens, 2 since
    c.rollback(9)
    assert (c.slots, c.length) == (5, 9)
    c.rollback(8)
    assert (c.slots, c.length) == (4, 8)
    c.rollback(5)                                      # before the last cut: the cache starts over
    assert (c.slots, c.length, c.cuts) == (0, 0, 0)


def test_context_eval_of_a_full_artifact_equals_the_torch_reference(tmp_path, lococo_cpu):
    from accelc.compiler.harness.context_eval import evaluate_context
    full, bundle = compile_tiny(tmp_path, options("full"))
    a = evaluate_context(full, 96, max_tokens=192, backend="onnxruntime")
    t = evaluate_context(bundle, 96, max_tokens=192)
    assert (a["windows"], a["tokens"], a["cache"]) == (2, 190, "full") and t["tokens"] == 190
    assert abs(a["perplexity"] - t["perplexity"]) < 1e-3 * t["perplexity"]
    lc = evaluate_context(lococo_cpu[0], 96, max_tokens=192, passkey=2, backend="openvino")
    assert lc["cache"] == "lococo:16" and lc["chunk"] == 8 and lc["passkey"]["trials"] == 2
    assert np.isfinite(lc["perplexity"]) and lc["perplexity"] != a["perplexity"]


def test_eval_context_cli_json(lococo_cpu, capsys):
    import json
    from accelc.compiler.cli import main
    code = main(["eval", str(lococo_cpu[0]), "--context", "64", "--max-tokens", "64", "--passkey", "1", "--json",
                 "--backend", "onnxruntime"])
    out = capsys.readouterr().out
    r = json.loads(out[out.index("{"):])
    assert code == 0 and (r["context"], r["windows"], r["tokens"], r["cache"]) == (64, 1, 63, "lococo:16")
    assert r["passkey"]["trials"] == 1 and np.isfinite(r["perplexity"])
