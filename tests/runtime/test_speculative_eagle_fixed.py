"""An EAGLE drafter over a fixed-size KV cache (issue 17): `--drafter eagle` with `--kv-cache sink:M` / `lococo:M`
exports the EAGLE target over the same fixed cache (attn_scores and hidden_out), the runtime verifies through the
cache's cuts, and greedy output equals plain decoding's for the position-rule caches; memory stays bounded."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.sources import cache_dir
from accelc.runtime.artifact import open_artifact
from accelc.runtime.generate import generate
from accelc.runtime.speculative.artifact import FixedFeatureTarget, generate_speculative, load_drafter
from accelc.runtime.speculative.eagle import RingRows
from accelc.runtime.sampling import SamplingConfig
from accelc.runtime.speculative.loop import SpecConfig
from accelc.runtime.speculative.proposers import LookupProposer
from accelc.targets import CompileOptions, get_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_compile import compile_tiny  # noqa: E402

torch.set_num_threads(1)
EAGLE = ("eagle:steps=20,seq_len=32,windows=8,batch=2,vocab=96,eval_prompts=2,eval_tokens=8,head_prompts=4,"
         "head_tokens=8,head_hidden=8")
SINK = "sink:12,sinks=2"               # cuts at 16 slots (buffer 4 below): many cuts in 60 tokens
PROMPT = list(range(65, 100))
NEW = 60


def _compile(d, kv):
    (d / "cache").mkdir()
    (d / "cache" / "corpus").symlink_to(cache_dir() / "corpus")      # a fresh cache for the drafter, same corpus
    old = os.environ.get("ACCELC_CACHE")
    os.environ["ACCELC_CACHE"] = str(d / "cache")
    try:
        out, _ = compile_tiny(d, lambda calib: CompileOptions(drafter=EAGLE, calib=calib, kv_cache=kv,
                                                              formats=("onnx", "openvino"), prefill_chunk=8))
    finally:
        if old is None:
            os.environ.pop("ACCELC_CACHE", None)
        else:
            os.environ["ACCELC_CACHE"] = old
    return out


@pytest.fixture(scope="module")
def sink_art(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("eagle-sink"), SINK + ",buffer=4")


def test_the_eagle_target_is_exported_over_the_fixed_cache_and_validated(sink_art):
    m = json.loads((sink_art / "manifest.json").read_text())
    g = m["graphs"]
    tgt = g["eagle_target"]
    assert tgt["cache"] == "fixed" and tgt["kv_cache"] == g["decoder"]["kv_cache"]
    outs = list(tgt["outputs"])
    assert outs[:2] == ["logits", "hidden_out"] and outs[-1].startswith("attn_scores.")
    assert g["eagle_draft"].get("cache", "full") == "full"
    val = next(p for p in m["passes"] if p["name"] == "validate-eagle")["metrics"]
    for b in ("onnxruntime", "openvino"):
        assert val[f"{b}_target_max_diff"] < 1e-3 and val[f"{b}_target_greedy"] == 1.0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_greedy_eagle_over_a_fixed_cache_equals_plain_decoding(sink_art, backend):
    art = open_artifact(sink_art, backend=backend, report=False, full_logits=True)
    want = generate(art, PROMPT, NEW).tokens
    drafter = load_drafter(art)
    assert drafter.fixed is not None and drafter.fixed.spec.slots == 12
    res, stats = generate_speculative(art, drafter, PROMPT, NEW, config=SpecConfig(k=4, draft_mode="fixed", k_max=4))
    assert res.tokens == want
    assert stats.drafted > 0
    # with prompt lookup first (the tiny model's greedy text repeats itself), drafts are also accepted across cuts
    res, stats = generate_speculative(art, drafter, PROMPT, NEW, config=SpecConfig(k=4, draft_mode="fixed", k_max=4),
                                      lookup=LookupProposer())
    assert res.tokens == want
    assert stats.accepted > 0 and stats.sources.get("eagle", 0) > 0


def test_the_target_cache_and_the_drafter_stay_bounded(sink_art):
    """Through many cuts: the target's slots never pass M + buffer, its hidden states are a ring of bounded size,
    and the drafter's own cache never holds more than its window plus a round's drafts."""
    art = open_artifact(sink_art, backend="onnxruntime", report=False, full_logits=True)
    drafter = load_drafter(art)
    target, proposer = drafter.steps(10_000)
    assert isinstance(target, FixedFeatureTarget) and target.features.size <= 2 * 12 + 4 + 2
    assert proposer.window == 12
    most_slots = most_draft = 0
    seq = list(PROMPT)
    seq.append(int(np.argmax(target.forward_last(seq, 1)[-1])))   # the target holds all of seq but its last token
    for _ in range(40):
        drafts, _ = proposer.propose(seq, 3, SpecConfig(k=3, draft_mode="fixed", k_max=3), SamplingConfig(),
                                     lambda row: int(np.argmax(row)))
        drafts = drafts[:max(target.room() - 1, 0)]
        logits = target.forward([seq[-1], *drafts])
        seq.append(int(np.argmax(logits[0])))                  # keep one token a round, reject the rest
        target.truncate(len(seq) - 1)
        proposer.rolled_back(len(seq) - 1)
        most_slots = max(most_slots, target.state.cache.slots)
        most_draft = max(most_draft, proposer.cache.length)
    assert target.state.cache.cuts >= 3
    assert most_slots <= 12 + 4
    assert most_draft <= 12 + 3


def test_ring_rows_read_like_an_array_and_refuse_forgotten_positions():
    r = RingRows(8, 2)
    rows = np.arange(40, dtype=np.float32).reshape(20, 2)
    r[0:20] = rows                          # longer than the ring: its newest 8 rows are kept
    np.testing.assert_array_equal(r[12:20], rows[12:20])
    r[20:23] = rows[:3]
    np.testing.assert_array_equal(r[18:23], np.concatenate((rows[18:20], rows[:3])))
    with pytest.raises(ValueError):
        r[10:12]
    r[16:17] = rows[5:6]                    # a rollback rewrites position 16: 17.. are stale now
    np.testing.assert_array_equal(r[15:17], np.stack((rows[15], rows[5])))


def test_lococo_with_eagle_runs_through_the_compression_graph(tmp_path):
    """lococo cuts with the artifact's compression graph; its slot scores come from the verify passes, so output is
    only checked to be the target's own tokens: every emitted token is the argmax of a verify pass."""
    out = _compile(tmp_path, "lococo:12,steps=2,seq_len=64,buffer=4")
    art = open_artifact(out, backend="openvino", report=False, full_logits=True)
    drafter = load_drafter(art)
    assert drafter.fixed.compress is not None and drafter.fixed.compress is art.compress   # loaded once
    res, stats = generate_speculative(art, drafter, PROMPT, NEW, config=SpecConfig(k=4, draft_mode="fixed", k_max=4))
    assert len(res.tokens) == NEW or res.stop_reason == "eos"
    assert stats.drafted > 0


@pytest.mark.parametrize("drafter, target", [("fused", "cpu"), ("eagle", "npu")])
def test_drafters_a_fixed_cache_cannot_take_are_refused_before_the_model_loads(drafter, target):
    with pytest.raises(InputError, match="fixed|eagle|EAGLE"):
        get_target(target).pipeline(CompileOptions(drafter=drafter, kv_cache="sink:64"))
