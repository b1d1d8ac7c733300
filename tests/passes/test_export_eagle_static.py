"""EAGLE on a static-shape artifact (`--target npu --drafter eagle`): fixed-shape eagle_target (9 tokens per call)
and eagle_draft (one token per call) graphs over the artifact's fixed cache, validated against torch, and the
artifact runtime's speculative decoding over them gives the same greedy tokens as plain (static) decoding."""
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
from accelc.runtime.speculative.steps import StaticGraph
from accelc.compiler.errors import InputError
from accelc.targets import CompileOptions
from tiny_compile import EOS, compile_tiny

torch.set_num_threads(1)
SPEC = "eagle:steps=20,seq_len=32,windows=8,batch=2,vocab=96,eval_prompts=2,eval_tokens=8,head=0"
CACHE = 96


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("eagle-static")
    (d / "cache").mkdir()
    (d / "cache" / "corpus").symlink_to(cache_dir() / "corpus")
    old = os.environ.get("ACCELC_CACHE")
    os.environ["ACCELC_CACHE"] = str(d / "cache")
    try:
        out, bundle = compile_tiny(d, lambda calib: CompileOptions(drafter=SPEC, calib=calib, cache_len=CACHE,
                                                                    prefill_chunk=8, formats=("onnx", "openvino")),
                                   target="npu")
        yield out, bundle
    finally:
        if old is None:
            os.environ.pop("ACCELC_CACHE", None)
        else:
            os.environ["ACCELC_CACHE"] = old


def test_static_eagle_graphs_have_fixed_shapes_and_match_torch(compiled):
    out, _ = compiled
    m = json.loads((out / "manifest.json").read_text())
    g = m["graphs"]
    assert {n: r.get("role") for n, r in g.items()} == {"prefill": "prefill", "decode": "decode",
                                                         "eagle_target": "eagle_target", "eagle_draft": "eagle_draft",
                                                         "eagle_target_step": "eagle_target_step"}
    t, d, one = g["eagle_target"], g["eagle_draft"], g["eagle_target_step"]
    assert t["static"] and d["static"] and one["static"]
    assert one["inputs"]["input_ids"] == [1, 1] and list(one["outputs"])[:2] == ["logits", "hidden_out"]
    assert t["inputs"]["input_ids"] == [1, 9] and t["inputs"]["attention_mask"] == [1, CACHE + 9]
    assert d["inputs"]["input_ids"] == [1, 1] and d["inputs"]["hidden_in"] == [1, 1, t["hidden_size"]]
    assert t["inputs"]["past_key.0"][1] == CACHE and d["inputs"]["past_key.0"][1] == CACHE
    for rec in g.values():
        assert all(isinstance(x, int) for s in rec["inputs"].values() for x in s)
    val = next(p for p in m["passes"] if p["name"] == "validate-eagle")["metrics"]
    for b in ("onnxruntime", "openvino"):
        assert val[f"{b}_target_max_diff"] < 1e-3 and val[f"{b}_draft_max_diff"] < 1e-3
        assert val[f"{b}_target_greedy"] == 1.0 and val[f"{b}_draft_greedy"] == 1.0


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_static_eagle_greedy_is_lossless(compiled, backend):
    out, _ = compiled
    art = open_artifact(out, backend=backend, report=False)
    art.eos_ids = frozenset()
    assert art.static
    drafter = load_drafter(art)
    assert drafter.kind == "eagle" and all(isinstance(f, StaticGraph) for f in drafter.fns.values())
    assert sorted(drafter.fns["eagle_target"].fns) == [1, 9] and sorted(drafter.fns) == ["eagle_draft", "eagle_target"]
    prompts = [[(7 * i + s) % EOS for i in range(5 + 3 * s)] for s in range(4)]    # up to 14 tokens: 2 windows
    for mode, k in (("fixed", 3), ("cost", 8), ("confidence", 12)):           # k = 12: verify in two windows
        for p in prompts:
            ref = generate(art, p, 20).tokens
            res, stats = generate_speculative(art, drafter, p, 20, config=SpecConfig(k=k, draft_mode=mode, k_max=k))
            assert res.tokens == ref, (mode, p)
            assert stats.rounds > 0
    p = [1, 2, 3, 1, 2, 3, 1, 2]
    res, _ = generate_speculative(art, drafter, p, 20, config=SpecConfig(k=4, draft_mode="cost", k_max=4),
                                  lookup=LookupProposer())
    assert res.tokens == generate(art, p, 20).tokens


def test_static_eagle_refuses_past_the_fixed_cache(compiled):
    out, _ = compiled
    art = open_artifact(out, backend="openvino", report=False)
    with pytest.raises(InputError, match="static KV cache holds 96"):
        generate_speculative(art, load_drafter(art), list(range(40)), 60, config=SpecConfig(k=3, draft_mode="fixed"))


def test_cli_run_with_static_eagle(compiled, capsys):
    from accelc.compiler.cli import main
    out, _ = compiled
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--draft-mode", "cost"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["speculative"]["rounds"] >= 1
    assert main(["run", str(out), "--prompt", "abc", "--raw", "--max-new-tokens", "12", "--json",
                 "--no-speculative"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == spec["tokens"]


def test_fused_drafter_keeps_refusing_static_graphs():
    from types import SimpleNamespace
    from accelc.compiler.errors import PreconditionError
    from accelc.passes.drafting.export_drafter import ExportDrafterConfig, ExportDrafterPass
    from accelc.passes.drafting.export_eagle import ExportEaglePass
    static = {"decode": {"static": True, "inputs": {"input_ids": [1, 1], "past_key.0": [1, 96, 2, 8]}}}
    bundle = SimpleNamespace(records={"graphs": static})
    with pytest.raises(PreconditionError, match="EAGLE drafter only"):
        ExportDrafterPass(ExportDrafterConfig()).specs(bundle)
    specs = ExportEaglePass(ExportDrafterConfig()).specs(bundle)
    assert specs == {"eagle_target": (1, 9, 96), "eagle_target_step": (1, 1, 96), "eagle_draft": (1, 1, 96)}
    dynamic = SimpleNamespace(records={"graphs": {"decoder": {"static": False}}})
    assert set(ExportEaglePass(ExportDrafterConfig()).specs(dynamic)) == {"eagle_target", "eagle_draft"}
    with pytest.raises(PreconditionError, match="no decoder graph"):
        ExportEaglePass(ExportDrafterConfig()).specs(SimpleNamespace(records={"graphs": {}}))
