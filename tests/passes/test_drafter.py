"""Fused self-speculative drafter: training changes only the exit layer, improves agreement with the target,
and speculative decoding with the shared-trunk drafter stays lossless (reduced vocabulary included)."""
import copy

import numpy as np
import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import InputError, PassError
from accelc.models.adapter import ArchAdapter
from accelc.models.corpus import split_text
from accelc.models.tiny import byte_tokenizer, tiny_model
from accelc.passes.export.decoder_graph import DecoderGraph
from accelc.passes.drafting.drafter import (ExternalDrafterConfig, ExternalDrafterPass, FusedDrafterConfig, FusedDrafterPass,
                                   check_same_tokenizer, parse_fused)
from accelc.passes.drafting.drafter_model import fused_steps
from accelc.runtime.sampling import Sampler, SamplingConfig
from accelc.runtime.speculative.steps import GraphStep, cache_for, torch_graph_fn
from accelc.runtime.speculative.loop import SpecConfig, autoregressive_generate, speculative_generate

torch.set_num_threads(1)
EOS = 256


def make_bundle(family="llama", seed=0, layers=4):
    m = tiny_model(family, seed=seed, vocab_size=EOS + 1, num_hidden_layers=layers, initializer_range=0.1)
    return ModelBundle(model=m, tokenizer=byte_tokenizer(), adapter=ArchAdapter(m))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(split_text("eval")[:30000])
    return str(p)


def small_cfg(calib, **kw):
    base = dict(layers=2, steps=150, batch=4, seq_len=48, windows=32, holdout=3, lr=1e-3, calib=calib)
    return FusedDrafterConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(calib):
    b = make_bundle()
    before = copy.deepcopy(b.model.state_dict())
    r = FusedDrafterPass(small_cfg(calib, vocab=96, init="last"))(b)
    return b, before, r


def test_only_the_exit_layer_trains_and_agreement_improves(trained):
    b, before, r = trained
    rec, drafter = b.records["drafter"], b.records["drafter_module"]
    # the target is untouched, bit for bit
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the exit layer moved away from its initial copy of the last layer
    assert rec["init_from_layer"] == 3
    init = b.adapter.layers[3].state_dict()
    moved = [k for k, v in drafter.exit_model.model.layers[0].state_dict().items() if not torch.equal(v, init[k])]
    assert moved
    assert rec["exit_layer"] == 2 and rec["vocab_size"] == 96 and drafter.exit_model.lm_head.weight.shape == (96, 64)
    loss = rec["train"]["loss"]
    assert rec["train"]["steps"] == 150 and loss["last"] < 0.5 * loss["first"]
    assert rec["acceptance"]["greedy"] > rec["acceptance_before"]["greedy"]
    assert rec["acceptance"]["sampled"] > rec["acceptance_before"]["sampled"]
    assert 0.5 < rec["vocab_coverage"] <= 1.0
    assert r.metrics["accept_greedy"] == rec["acceptance"]["greedy"]


def test_fused_steps_are_lossless_and_share_the_trunk(trained):
    b, _, _ = trained
    drafter = b.records["drafter_module"]
    target, draft = fused_steps(b.model, b.adapter, drafter, capacity=160)
    full = DecoderGraph(b.model, b.adapter).eval()
    plain = GraphStep(torch_graph_fn(full), cache_for(full, 160))
    prompt = b.tokenizer("The jury said that the city", add_special_tokens=False)["input_ids"]
    # trunk + tail reproduce the whole model's logits
    np.testing.assert_allclose(target.forward(prompt), plain.forward(prompt), atol=1e-4)
    ref = autoregressive_generate(plain, prompt, 40)
    for mode in ("fixed", "confidence"):
        out, stats = speculative_generate(target, draft, prompt, 40, SpecConfig(k=4, draft_mode=mode))
        assert out == ref
        assert stats.accepted > 0
    # the trunk ran once per distinct position, not once for the drafter and again for the verifier
    trunk = target.trunk
    trunk.computed = 0
    out, stats = speculative_generate(target, draft, prompt, 40, SpecConfig(k=4, draft_mode="fixed"))
    assert trunk.computed < stats.drafted + stats.rounds + len(prompt) + 1
    # reduced vocabulary: drafted tokens are always inside the head's set
    logits = draft.forward([prompt[0]])
    assert np.isinf(logits[0]).sum() == b.adapter.vocab_size - 96


def test_fused_sampling_runs_with_a_reduced_vocabulary(trained):
    b, _, _ = trained
    target, draft = fused_steps(b.model, b.adapter, b.records["drafter_module"], capacity=96)
    cfg = SamplingConfig(temperature=1.0)
    out, stats = speculative_generate(target, draft, [5, 6, 7], 30, SpecConfig(k=3, draft_mode="fixed"), cfg,
                                      sampler=Sampler(SamplingConfig(1.0, seed=1)))
    assert len(out) == 30 and 0 < stats.acceptance_rate <= 1


def test_full_vocabulary_and_last_layer_init(calib):
    b = make_bundle(layers=3)
    r = FusedDrafterPass(small_cfg(calib, layers=1, vocab=0, steps=5, seconds=60.0))(b)
    d = b.records["drafter_module"]
    assert d.vocab_ids is None and d.exit_model.lm_head is b.adapter.head      # shared head, not a copy
    assert b.records["drafter"]["init_from_layer"] == 1 and r.metrics["vocab"] == EOS + 1
    assert b.records["drafter"]["acceptance"]["sampled"] > 0.5     # full vocabulary: no mass lost outside S


def test_bad_specs_and_inputs(calib):
    assert parse_fused("layers=8,steps=300") == FusedDrafterConfig(layers=8, steps=300)
    for bad in ("layers=x", "depth=3", "steps=0", "init=middle", "layers"):
        with pytest.raises(InputError):
            parse_fused(bad)
    with pytest.raises(PassError, match="exit layer"):
        FusedDrafterPass(small_cfg(calib, layers=4))(make_bundle(layers=4))


def test_external_drafter_checks_the_tokenizer(tmp_path):
    target = make_bundle()
    good = tmp_path / "draft"
    tiny_model("llama", seed=3, vocab_size=EOS + 1, num_hidden_layers=1).save_pretrained(good)
    byte_tokenizer().save_pretrained(good)
    ExternalDrafterPass(ExternalDrafterConfig(path=str(good)))(target)
    assert target.records["drafter"]["layers"] == 1
    bad = tmp_path / "other"
    tiny_model("llama", seed=3, num_hidden_layers=1).save_pretrained(bad)   # vocab 256
    byte_tokenizer().save_pretrained(bad)
    with pytest.raises(PassError, match="vocabulary size"):
        ExternalDrafterPass(ExternalDrafterConfig(path=str(bad)))(make_bundle())
    other_tok = make_bundle()
    other_tok.tokenizer.add_tokens(["<extra>"])
    draft = make_bundle()
    with pytest.raises(InputError, match="different tokenizer"):
        check_same_tokenizer(other_tok, draft, "x")
