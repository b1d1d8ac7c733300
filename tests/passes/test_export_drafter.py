"""Fused-drafter export: a tiny model compiled with `--drafter fused` gets trunk / draft head / verify tail graphs
(ONNX + OpenVINO, roles in the manifest) that match torch, and the artifact runtime's speculative decoding gives
the same greedy tokens as plain decoding."""
import json

import numpy as np
import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import PassError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.drafting.export_drafter import ExportDrafterConfig, ExportDrafterPass, run_split
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.speculative.artifact import (drafter_records, generate_speculative, load_drafter, open_drafter,
                                          run_speculative)
from accelc.runtime.speculative.loop import SpecConfig
from accelc.targets import CompileOptions, get_target
from tiny_compile import EOS, compile_tiny

torch.set_num_threads(1)
SPEC = "fused:layers=1,steps=20,seq_len=32,windows=8,holdout=1,batch=2,vocab=96"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(artifact dir, bundle) of a tiny 3-layer Llama compiled for cpu with a fused drafter, as `accelc compile`."""
    return compile_tiny(tmp_path_factory.mktemp("drafter-art"), lambda calib: CompileOptions(drafter=SPEC, calib=calib))


def test_pipeline_has_drafter_passes():
    names = [p.name for p in get_target("cpu").pipeline(CompileOptions(drafter="fused"))]
    assert names.index("export-onnx") < names.index("export-drafter") < names.index("export-openvino")
    assert names[-2:] == ["validate-drafter", "export-genai"]     # the genai folder last: it moves validated weights
    # no-op where it should be: no drafter, no drafter passes
    names = [p.name for p in get_target("cpu").pipeline(CompileOptions())]
    assert "export-drafter" not in names and "validate-drafter" not in names


def test_artifact_has_drafter_graphs(compiled):
    out, bundle = compiled
    m = json.loads((out / "manifest.json").read_text())
    roles = {n: g.get("role") for n, g in m["graphs"].items()}
    assert roles == {"decoder": "decoder", "draft_trunk": "trunk", "draft_head": "draft_head",
                     "verify_tail": "verify_tail"}
    g = m["graphs"]
    assert g["draft_trunk"]["layers"] == [0, 1] and g["verify_tail"]["layers"] == [1, 3]
    assert "input_ids" in g["draft_trunk"]["inputs"] and "hidden_out" in g["draft_trunk"]["outputs"]
    assert "hidden_in" in g["verify_tail"]["inputs"] and g["verify_tail"]["outputs"]["logits"][2] == EOS + 1
    assert g["draft_head"]["outputs"]["logits"][2] == 96                        # reduced head
    for rec in g.values():
        assert (out / rec["onnx"]).is_file() and (out / rec["openvino"]).is_file()
    assert len(json.loads((out / g["draft_head"]["vocab_ids"]).read_text())) == 96
    val = next(p for p in m["passes"] if p["name"] == "validate-drafter")["metrics"]
    for b in ("onnxruntime", "openvino"):
        assert val[f"{b}_target_max_diff"] < 1e-3 and val[f"{b}_draft_max_diff"] < 1e-3
        assert val[f"{b}_target_greedy"] == 1.0 and val[f"{b}_draft_greedy"] == 1.0


def test_split_graphs_match_full_model(compiled):
    """trunk + tail (exported) == the torch model's logits; a head graph run on the tail's hidden input differs."""
    out, bundle = compiled
    m = json.loads((out / "manifest.json").read_text())
    recs = {n: m["graphs"][n] for n in ("draft_trunk", "draft_head", "verify_tail")}
    drafter = open_drafter(out, m, "onnxruntime", 2)
    tokens = np.array([[5, 17, 99, 3, 200, 41, 7, 7, 64]], dtype=np.int64)
    logits, draft = run_split(drafter, tokens, 5)
    with torch.inference_mode():
        ref = bundle.model(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(logits - ref).max() < 1e-4
    # the drafter is a different (shallower) model: its logits are not the target's
    ids = json.loads((out / recs["draft_head"]["vocab_ids"]).read_text())
    assert np.abs(draft - ref[..., ids]).max() > 1e-2


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_runtime_speculative_greedy_is_lossless(compiled, backend):
    out, _ = compiled
    art = open_artifact(out, backend=backend, report=False)
    art.eos_ids = frozenset()
    drafter = load_drafter(art)
    assert drafter.backend == backend and len(drafter.vocab_ids) == 96
    prompts = [[(7 * i + s) % EOS for i in range(5 + s)] for s in range(6)]
    for mode in ("fixed", "confidence", "heuristic"):
        for p in prompts:
            ref = generate(art, p, 20).tokens
            res, stats = generate_speculative(art, drafter, p, 20, config=SpecConfig(k=3, draft_mode=mode))
            assert res.tokens == ref
            assert stats.rounds > 0 and stats.drafted > 0


def test_openvino_drafter_graphs_are_stateful_and_match_explicit(compiled, monkeypatch):
    """On OpenVINO CPU the trunk/head/tail run stateful (KV in the request's states, trimmed on rollback) and
    give the explicit-cache graphs' logits, through a rollback, within float tolerance."""
    from accelc.runtime.speculative.steps import is_stateful
    out, _ = compiled
    runs = {}
    for mode in ("stateful", "explicit"):
        monkeypatch.setenv("ACCELC_OV_KV", mode)
        art = open_artifact(out, backend="openvino", report=False)
        drafter = load_drafter(art)
        assert all(is_stateful(f) == (mode == "stateful") for f in drafter.fns.values())
        target, draft = drafter.steps(64)
        rows = [target.forward([5, 17, 99, 3, 200]), draft.forward([5, 17, 99, 3, 200, 41])]
        rows += [draft.forward([7]), target.forward([41, 7, 8])]      # drafts 41, 7; the target checks them
        target.truncate(6)                                            # keep 41, reject 7 and 8
        draft.truncate(6)
        rows += [target.forward([9]), draft.forward([9, 12])]
        assert target.length == 7 and draft.length == 8 and target.trunk.length == 8
        runs[mode] = rows
    for a, b in zip(runs["stateful"], runs["explicit"]):
        assert a.shape == b.shape
        finite = np.isfinite(b)
        assert (np.isfinite(a) == finite).all() and np.abs(a[finite] - b[finite]).max() < 1e-4


def test_run_speculative_off_without_drafter(compiled, tmp_path):
    """No drafter graphs -> None (plain decoding); the torch backend also falls back."""
    out, _ = compiled
    art = open_artifact(out, backend="onnxruntime", report=False)
    art.manifest = {**art.manifest, "graphs": {"decoder": art.manifest["graphs"]["decoder"]}}
    assert drafter_records(art.manifest) is None
    assert run_speculative(art, [1, 2, 3], 4, None, k=2) is None


def test_export_drafter_needs_a_drafter():
    m = tiny_model("llama", seed=0)
    b = ModelBundle(model=m, tokenizer=None, adapter=ArchAdapter(m))
    b.records["graphs"] = {"decoder": {}}
    with pytest.raises(PassError, match="no fused drafter"):
        ExportDrafterPass(ExportDrafterConfig())(b)


def test_cli_run_json_has_speculative_metrics(compiled, capsys):
    from accelc.compiler.cli import main
    out, _ = compiled
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--draft-mode", "fixed", "--draft-k", "3"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["speculative"]["rounds"] >= 1 and 0 <= spec["speculative"]["acceptance_rate"] <= 1
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--no-speculative"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "speculative" not in plain and plain["tokens"] == spec["tokens"]
