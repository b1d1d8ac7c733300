"""EAGLE export: a tiny model compiled with `--drafter eagle:...` gets eagle_target / eagle_draft graphs (ONNX +
OpenVINO, roles in the manifest) that match torch, and the artifact runtime's speculative decoding with them gives
the same greedy tokens as plain decoding on both backends, stateful or not."""
import json
import os

import pytest
import torch

from accelc.models.sources import cache_dir
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.speculative.artifact import generate_speculative, load_drafter
from accelc.runtime.speculative.loop import SpecConfig
from accelc.runtime.speculative.proposers import LookupProposer
from accelc.targets import CompileOptions, get_target
from tiny_compile import EOS, compile_tiny

torch.set_num_threads(1)
SPEC = ("eagle:steps=20,seq_len=32,windows=8,batch=2,vocab=96,eval_prompts=2,eval_tokens=8,head_prompts=6,"
        "head_tokens=16,head_hidden=8")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("eagle-art")
    (d / "cache").mkdir()
    (d / "cache" / "corpus").symlink_to(cache_dir() / "corpus")      # a fresh cache for the drafter, same corpus
    old = os.environ.get("ACCELC_CACHE")
    os.environ["ACCELC_CACHE"] = str(d / "cache")
    try:
        out, bundle = compile_tiny(d, lambda calib: CompileOptions(drafter=SPEC, calib=calib,
                                                                    formats=("onnx", "openvino", "native")))
        yield out, bundle, d / "cache"
    finally:
        if old is None:
            os.environ.pop("ACCELC_CACHE", None)
        else:
            os.environ["ACCELC_CACHE"] = old


def test_pipeline_has_eagle_passes():
    names = [p.name for p in get_target("cpu").pipeline(CompileOptions(drafter="eagle"))]
    assert names.index("drafter-eagle") < names.index("export-onnx") < names.index("export-eagle") \
        < names.index("export-openvino") < names.index("validate-eagle")


def test_artifact_has_eagle_graphs_that_match_torch(compiled):
    out, bundle, cache = compiled
    m = json.loads((out / "manifest.json").read_text())
    g = m["graphs"]
    assert {n: r.get("role") for n, r in g.items()} == {"decoder": "decoder", "eagle_target": "eagle_target",
                                                         "eagle_draft": "eagle_draft"}
    assert list(g["eagle_target"]["outputs"])[:2] == ["logits", "hidden_out"]
    assert list(g["eagle_draft"]["inputs"])[:4] == ["input_ids", "hidden_in", "position_ids", "attention_mask"]
    assert g["eagle_draft"]["outputs"]["logits"][2] == 96 and g["eagle_draft"]["layers"] == [0, 1]
    for rec in g.values():
        assert (out / rec["onnx"]).is_file() and (out / rec["openvino"]).is_file()
    val = next(p for p in m["passes"] if p["name"] == "validate-eagle")["metrics"]
    for b in ("onnxruntime", "openvino", "native"):       # native: its decoder verifying, its drafter drafting
        assert val[f"{b}_target_max_diff"] < 1e-3 and val[f"{b}_draft_max_diff"] < 1e-3
        assert val[f"{b}_target_greedy"] == 1.0 and val[f"{b}_draft_greedy"] == 1.0
    # SpecDec++'s acceptance head: a file of the artifact, trained on rollouts, measured on held-out ones
    assert g["eagle_draft"]["accept_head"] == "graphs/eagle_accept.safetensors"
    assert "graphs/eagle_accept.safetensors" in m["files"]
    head = json.loads(json.dumps(bundle.records["drafter"]["accept_head"]))      # JSON, for the manifest
    assert head["train"]["examples"] > 0 and head["held_out"]["examples"] > 0
    assert set(head["held_out"]) >= {"head", "drafter_probability"}
    # the target's states were cached once, and the training run can resume
    assert len(list(cache.glob("eagle/features-*.safetensors"))) == 1
    assert len(list(cache.glob("eagle/train-*.safetensors"))) == 1


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "native"])
def test_runtime_eagle_greedy_is_lossless(compiled, backend):
    out, *_ = compiled
    art = open_artifact(out, backend=backend, report=False)
    art.eos_ids = frozenset()
    drafter = load_drafter(art)
    assert drafter.kind == "eagle" and len(drafter.vocab_ids) == 96
    if backend == "native":      # the native decoder verifies: only the draft graph is opened
        assert set(drafter.fns) == {"eagle_draft"} and drafter.target is art.runners["decoder"]
    prompts = [[(7 * i + s) % EOS for i in range(5 + s)] for s in range(5)]
    assert drafter.accept_head is not None
    for mode in ("fixed", "confidence", "cost", "specdec"):
        for p in prompts:
            ref = generate(art, p, 20).tokens
            res, stats = generate_speculative(art, drafter, p, 20, config=SpecConfig(k=3, draft_mode=mode))
            assert res.tokens == ref, (mode, p)
            assert stats.rounds > 0
    res, stats = generate_speculative(art, drafter, [1, 2, 3, 1, 2, 3, 1, 2], 20,
                                      config=SpecConfig(k=4, draft_mode="cost", k_max=4), lookup=LookupProposer())
    assert res.tokens == generate(art, [1, 2, 3, 1, 2, 3, 1, 2], 20).tokens


def test_openvino_stateful_eagle_matches_explicit(compiled, monkeypatch):
    out, *_ = compiled
    runs = {}
    for mode in ("stateful", "explicit"):
        monkeypatch.setenv("ACCELC_OV_KV", mode)
        art = open_artifact(out, backend="openvino", report=False)
        art.eos_ids = frozenset()
        res, _ = generate_speculative(art, load_drafter(art), [5, 17, 99, 3, 200], 16,
                                      config=SpecConfig(k=3, draft_mode="fixed"))
        runs[mode] = res.tokens
    assert runs["stateful"] == runs["explicit"]


@pytest.mark.parametrize("backend", ["openvino", "native"])
def test_cli_run_with_eagle(compiled, capsys, backend):
    from accelc.compiler.cli import main
    out, *_ = compiled
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--draft-mode", "cost", "--backend", backend]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["backend"] == backend and spec["speculative"]["rounds"] >= 1
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--draft-mode", "specdec", "--backend", backend]) == 0
    assert json.loads(capsys.readouterr().out)["speculative"]["rounds"] >= 1
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--no-speculative", "--backend", backend]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == spec["tokens"]


def test_native_features_are_the_eagle_targets_hidden_state(compiled):
    """The native decoder's reported feature (the residual stream after the last layer) equals the eagle_target
    graph's hidden_out on the same tokens."""
    import numpy as np
    out, *_ = compiled
    art = open_artifact(out, backend="native", report=False, precision="f32")    # exact (bf16 hosts: bf16 weights)
    ids = np.array([[5, 17, 99, 3, 200, 11, 42]], dtype=np.int64)
    hidden = np.zeros((ids.shape[1], load_drafter(art).hidden_size), dtype=np.float32)
    logits = art.runners["decoder"].forward_stateful(ids, np.arange(7)[None], None, 0, hidden=hidden, all_logits=True)
    ov = load_drafter(open_artifact(out, backend="openvino", report=False))
    from accelc.runtime.kv_cache import KVCache
    from accelc.runtime.speculative.eagle import FeatureTarget
    from accelc.runtime.speculative.steps import is_stateful
    r = ov.records["eagle_target"]
    fn = ov.fns["eagle_target"]
    target = FeatureTarget(fn, KVCache(r["num_layers"], 16, r["kv_heads"], r["head_dim"], allocate=not is_stateful(fn)),
                           ov.hidden_size)
    ref_logits = target.forward(ids[0].tolist())
    np.testing.assert_allclose(hidden, target.features[:7], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[0], ref_logits, rtol=1e-4, atol=1e-4)


def test_native_drafter_matches_the_draft_graph(compiled, monkeypatch):
    """The native drafter (native/eagle_draft.*, runtime/speculative/native_draft.py) gives the eagle_draft graph's
    logits and states on the same teacher-forced inputs; ACCELC_NATIVE_DRAFT=0 keeps the OpenVINO graph."""
    import numpy as np
    from accelc.passes.drafting.export_eagle import run_eagle
    from accelc.runtime.speculative.native_draft import NativeDraftFn
    out, bundle, _ = compiled
    rec = json.loads((out / "manifest.json").read_text())["records"]["native"]["eagle_draft"]
    assert (out / rec["config"]).is_file() and (out / rec["weights"]).is_file()
    tokens = np.array([[5, 17, 99, 3, 200, 11, 42, 7, 64, 9]], dtype=np.int64)
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ACCELC_NATIVE_DRAFT", flag)
        drafter = load_drafter(open_artifact(out, backend="native", report=False, precision="f32"))
        assert isinstance(drafter.fns["eagle_draft"], NativeDraftFn) == (flag == "1")
        runs[flag] = run_eagle(drafter, tokens, 4)
    (lo_n, f_n, d_n), (lo_o, f_o, d_o) = runs["1"], runs["0"]
    np.testing.assert_array_equal(lo_n, lo_o)          # the same native decoder verifies in both
    assert np.abs(d_o).max() > 0.1 and np.abs(d_n - d_o).max() < 1e-3 * max(1.0, np.abs(d_o).max())
    assert (d_n.argmax(-1) == d_o.argmax(-1)).all()


def test_native_drafter_model_takes_input_rows_only(compiled):
    """The native drafter's model is fed [T, 2C] rows (its fc's input), never token ids, and its config refuses an
    embedding beside hidden input."""
    import numpy as np
    from accelc.compiler.errors import ArtifactError, InputError
    from accelc.runtime.native.config_check import check_config
    from accelc.runtime.native.weights import map_safetensors
    out, *_ = compiled
    drafter = load_drafter(open_artifact(out, backend="native", report=False))
    model = drafter.fns["eagle_draft"].model
    C = model.cfg["hidden"]
    with pytest.raises(InputError):
        model.step(np.zeros(2, dtype=np.int64), np.arange(2), 0, True)
    with pytest.raises(InputError):
        model.step(np.zeros(2, dtype=np.int64), np.arange(2), 0, True, x=np.zeros((2, C), np.float32))
    assert model.step(np.zeros(2, dtype=np.int64), np.arange(2), 0, True, x=np.ones((2, 2 * C), np.float32)).shape \
        == (1, len(drafter.vocab_ids))
    cfg = json.loads((out / "native" / "eagle_draft.json").read_text())
    tensors = map_safetensors(out / "native" / "eagle_draft.safetensors")
    check_config(cfg, tensors)
    with pytest.raises(ArtifactError):
        check_config({**cfg, "embed": cfg["head"]}, tensors)
    with pytest.raises(ArtifactError):
        check_config({**cfg, "input": "ids"}, tensors)
