"""PV-Tuning: V steps change at most tau of the codes, P steps lower the distillation loss, the pass."""
import copy
import math

import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import PassError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.quantization.codebook import TEACHER, CodebookQuantConfig, CodebookQuantPass
from accelc.passes.quantization.codebook_linear import codebook_layers
from accelc.passes.quantization.codebook_search import l2_encode
from accelc.passes.quantization.pv_tuning import PVTrainer, PVTuningConfig, PVTuningPass, distill_loss, norm_parameters
from accelc.targets import phases
from accelc.targets.base import CompileOptions


@pytest.fixture(scope="module")
def quantized():
    """A tiny Llama quantized 1x4g4 (codebook pass, teacher kept)."""
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    CodebookQuantPass(CodebookQuantConfig(scheme="1x4g4", keep_teacher=True))(b)
    return b


def _fresh(quantized):
    b = copy.deepcopy(quantized)
    b.records[TEACHER] = quantized.records[TEACHER]
    return b


def test_v_step_changes_at_most_tau_of_the_codes(quantized):
    b = _fresh(quantized)
    before = {n: q.codes.clone() for n, q in codebook_layers(b.model).items()}
    books = {n: q.codebooks.clone() for n, q in codebook_layers(b.model).items()}
    tr = PVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-3, lr_v=5e-2)
    ids = b.records["calibration_ids"][:4]
    tau = 0.05
    _, frac = tr.v_step(ids, tau=tau)
    tr.finish()
    changed_total = 0
    for n, q in codebook_layers(b.model).items():
        changed = (q.codes != before[n]).any(-1).sum().item()
        assert changed <= math.ceil(tau * before[n].shape[0] * before[n].shape[1])
        assert torch.equal(q.codebooks, books[n])            # a V step leaves codebooks alone
        changed_total += changed
    # forced updates: nearly every selected group changes (a small lr_v alone would move none)
    assert changed_total > 0 and 0.8 * tau < frac <= tau + 0.01


def test_trust_ratio_bounds_the_relative_weight_change(quantized):
    b = _fresh(quantized)
    before = {n: q.dequantize().detach().clone() for n, q in codebook_layers(b.model).items()}
    tr = PVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-3, lr_v=5e-2, trust=0.02)
    _, frac = tr.v_step(b.records["calibration_ids"][:4], tau=0.2)
    capped = 0
    for n, q in tr.layers.items():
        w = q.dequantize().detach()
        rel = float((w - before[n]).norm() / before[n].norm())
        group = float(((w - before[n]).abs().max()) * math.sqrt(q.scheme.group) / before[n].norm())
        assert rel <= 0.02 + group                             # the bound, up to the one extra group
        capped += rel > 0
    tr.finish()
    assert capped > 0 and 0 < frac < 0.2                       # it changed some codes, fewer than tau allows


def test_p_step_lowers_the_loss_on_its_batch_and_keeps_codes(quantized):
    b = _fresh(quantized)
    codes = {n: q.codes.clone() for n, q in codebook_layers(b.model).items()}
    teacher = b.records[TEACHER]
    ids = b.records["calibration_ids"][:4]
    tr = PVTrainer(b.model, teacher, norm_parameters(b.adapter), lr=1e-3, lr_v=1e-4)
    with torch.no_grad():
        l0 = float(distill_loss(b.model, teacher, ids))
    l_step = tr.p_step(ids)
    with torch.no_grad():
        l1 = float(distill_loss(b.model, teacher, ids))
    tr.finish()
    assert abs(l_step - l0) < 1e-6 * max(1.0, l0)             # the step's loss is the loss before it
    assert l1 < l0, (l0, l1)
    assert all(torch.equal(q.codes, codes[n]) for n, q in codebook_layers(b.model).items())
    assert all(q.codebooks.dtype == torch.float16 for q in codebook_layers(b.model).values())


def test_ste_step_re_encodes_every_group_to_its_buffer(quantized):
    b = _fresh(quantized)
    tr = PVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-4, lr_v=2e-2)
    tr.v_step(b.records["calibration_ids"][:4], tau=1.0, also_p=True)
    name, q = next(iter(tr.layers.items()))
    target = tr.buffers[name][0]
    out_f, ng, m = q.codes.shape
    goal = (target / q.scales).reshape(out_f * ng, -1)
    flat = q.codes.reshape(-1, m).long()
    # every group holds the nearest codeword to its buffer (1 codebook: l2_encode is exact)
    assert torch.equal(l2_encode(goal, flat, q.codebooks.detach()), flat)
    tr.finish()


def test_pv_pass_from_spec_records_tuning(quantized):
    model = tiny_model("llama", seed=0)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (12, 32), generator=torch.Generator().manual_seed(0))
    passes = phases.compression(CompileOptions(quantize="pv:1x4g4,steps=6,batch=4,lr=1e-3,lr_v=1e-3,tau=0.1,v_every=2"))
    for p in passes:
        p(b)
    rec = b.records["quantization"]
    t = rec["tuning"]
    assert rec["method"] == "pv" and t["mode"] == "pv" and len(t["losses"]) == 6
    assert len(t["code_change_fraction"]) == 3 and max(t["code_change_fraction"]) <= 0.1
    # random tokens on a random tiny model: held-out KL is tiny (~3e-3) and 6 steps on 8 windows do
    # not generalise; the bound is that tuning does not blow the held-out KL up
    assert 0 < t["kl_heldout_after"] < 1.5 * t["kl_heldout_before"]
    assert TEACHER not in b.records                           # the teacher copy is released
    assert all(q.codebooks.dtype == torch.float16 and not q.codebooks.requires_grad
               for q in codebook_layers(b.model).values())
    assert not any(p.requires_grad and p.grad is not None for p in b.model.parameters())


def test_pv_pass_needs_a_codebook_model_and_teacher():
    model = tiny_model("llama", seed=0)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    with pytest.raises(PassError, match="precondition"):
        PVTuningPass(PVTuningConfig())(b)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma2", "gemma3_text"])
def test_chunked_distill_loss_equals_the_full_logits_kl(family):
    """The head and softmax in chunks of tokens: the same loss and the same gradients as the full [tokens, vocab]
    KL (Gemma2: final logit soft-capping; Gemma: the scaled embedding)."""
    import torch.nn.functional as F
    student, teacher = tiny_model(family, seed=0), tiny_model(family, seed=1)
    ids = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(2))
    t = F.log_softmax(teacher(input_ids=ids).logits.float(), -1).flatten(0, 1).detach()
    s = F.log_softmax(student(input_ids=ids).logits.float(), -1).flatten(0, 1)
    full = F.kl_div(s, t, log_target=True, reduction="batchmean")
    full.backward()
    want = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    got = distill_loss(student, teacher, ids, backward=True, chunk=5)      # 33 tokens: 7 chunks, the last short
    torch.testing.assert_close(got, full.detach(), rtol=1e-5, atol=1e-6)
    assert want and all(torch.allclose(p.grad, want[n], rtol=1e-4, atol=1e-7)
                        for n, p in student.named_parameters() if n in want)
    with torch.no_grad():
        torch.testing.assert_close(distill_loss(student, teacher, ids), full.detach(), rtol=1e-5, atol=1e-6)


def test_teacher_shares_the_frozen_embedding_once(quantized):
    from accelc.passes.quantization.pv_tuning import share_frozen_embeddings
    b = _fresh(quantized)
    teacher = copy.deepcopy(quantized.records[TEACHER])
    saved = share_frozen_embeddings(b.model, teacher)
    assert saved > 0 and teacher.get_input_embeddings().weight is b.model.get_input_embeddings().weight
    assert share_frozen_embeddings(b.model, teacher) == 0                 # already shared
    other = copy.deepcopy(quantized.records[TEACHER])
    with torch.no_grad():
        other.get_input_embeddings().weight.add_(1.0)                      # differs: kept apart
    assert share_frozen_embeddings(b.model, other) == 0
    assert other.get_input_embeddings().weight is not b.model.get_input_embeddings().weight


def test_checkpointed_layers_give_the_same_v_step(quantized):
    """Activation checkpointing recomputes each layer in the backward pass: the same loss, the same tapped weight
    gradients and so the same code changes and continuous updates as without it."""
    results = []
    for checkpoint in (False, True):
        b = _fresh(quantized)
        tr = PVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-3, lr_v=5e-2,
                       checkpoint=checkpoint)
        assert bool(tr.decoder_layers) == checkpoint
        loss, frac = tr.v_step(b.records["calibration_ids"][:4], tau=0.05, also_p=True)
        state = {n: q.codes.clone() for n, q in tr.layers.items()}
        books = {n: q.codebooks.detach().clone() for n, q in tr.layers.items()}
        tr.finish()
        results.append((loss, frac, state, books))
        assert all("forward" not in vars(layer) for layer in b.adapter.layers)     # unwrapped again
    (l0, f0, c0, b0), (l1, f1, c1, b1) = results
    assert abs(l0 - l1) < 1e-6 and f0 == f1 > 0
    assert all(torch.equal(c0[n], c1[n]) for n in c0)
    assert all(torch.allclose(b0[n], b1[n], atol=1e-6) for n in b0)
