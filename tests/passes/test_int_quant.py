"""gptq-int / pv-int: codes in range, GPTQ beats round-to-nearest on the output error, V steps stay in
their trust region, PV steps lower the distillation loss, the specs; the tuning's precision (bf16 trunk, f32 head
and loss) and schedule (cosine rates) options, and the state key that keeps older tuned-state files loadable."""
import copy
import math
from dataclasses import asdict

import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.quantization.codebook import TEACHER
from accelc.passes.quantization.codebook_search import output_error
from accelc.passes.quantization.int_gptq import gptq_int
from accelc.passes.quantization.int_linear import IntGroupLinear, code_range, encode, int_layers, sym_scales
from accelc.passes.quantization.int_quant import IntPVTrainer, IntPVTuningPass, IntQuantConfig, IntQuantPass
from accelc.passes.quantization.pv_tuning import PVTuningConfig, distill_loss, norm_parameters
from accelc.passes.quantization.quant_methods import build
from accelc.passes.quantization.tuned_state import state_key


@pytest.fixture(scope="module", params=[2, 4])
def quantized(request):
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, initializer_range=0.25)     # peaked next-token distributions
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    IntQuantPass(IntQuantConfig(bits=request.param, group=32, keep_teacher=True))(b)
    return b


def _fresh(quantized):
    b = copy.deepcopy(quantized)
    b.records[TEACHER] = quantized.records[TEACHER]
    return b


def _correlated(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, k, generator=g) @ (torch.eye(k) + 0.3 * torch.randn(k, k, generator=g))
    return torch.randn(n, k, generator=g) * 0.05, x.T @ x / 512


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_codes_in_range_and_better_than_rounding(bits, act_order):
    w, h = _correlated(24, 128)
    codes, scales = gptq_int(w, h, bits, 32, act_order=act_order)
    lo, hi = code_range(bits)
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert torch.equal(scales, scales.half().float())                   # stored as fp16 exactly
    q = IntGroupLinear(codes, scales, bits)
    wg = w.reshape(24, 4, 32)
    s = sym_scales(wg, bits).half().float()
    rtn = (encode(wg, s, bits).float() * s).reshape(24, 128)
    assert output_error(q.dequantize(), w, h).sum() < 0.8 * output_error(rtn, w, h).sum()


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_flip_takes_negative_scales_where_a_group_leans_positive(bits, act_order):
    """Each row's groups hold one large weight, positive in even rows, negative in odd rows: the codes reach
    -2^(B-1) below zero but only 2^(B-1) - 1 above, so flip picks negative scales for the even rows (and only
    there), and the output error drops."""
    w, h = _correlated(24, 128, seed=1)
    wg = w.reshape(24, 4, 32)
    wg[:, :, 5] = 0.4 * torch.where(torch.arange(24) % 2 == 0, 1.0, -1.0)[:, None]
    w = wg.reshape(24, 128)
    errs = {}
    for flip in (False, True):
        codes, scales = gptq_int(w, h, bits, 32, act_order=act_order, flip=flip)
        lo, hi = code_range(bits)
        assert int(codes.min()) >= lo and int(codes.max()) <= hi and torch.equal(scales, scales.half().float())
        neg = scales.squeeze(-1) < 0
        assert neg.any() == flip
        if flip:
            assert neg[0::2].all() and not neg[1::2].any()
        errs[flip] = float(output_error(IntGroupLinear(codes, scales, bits).dequantize(), w, h).sum())
    assert errs[True] < 0.9 * errs[False]


def test_v_step_with_negative_scales_moves_codes_towards_the_target():
    """A layer whose scales are all negative: the V step's targets are read in signed code units, so a code
    moves the way its buffer asks (the dequantized weight towards T), within range."""
    model = tiny_model("llama", seed=0)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    IntQuantPass(IntQuantConfig(bits=3, group=32, keep_teacher=True, flip=True))(b)
    tr = IntPVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-3, lr_v=5e-2)
    name, q = next(iter(tr.layers.items()))
    with torch.no_grad():
        q.scales.copy_(-q.scales.abs())
    before = q.dequantize().clone()
    target = before + 3 * q.scales.detach().abs().expand(-1, -1, q.group).reshape(before.shape)   # 3 levels up
    tr.buffers[name] = [target.clone(), torch.zeros_like(target), 10**6]
    tr.lr_v, tr.trust = 1e-12, 0.0                      # the buffer stays where it is put
    tr._update_codes(name, q, torch.zeros_like(target), tau=0.1)
    moved = q.dequantize() - before
    changed = moved != 0
    assert changed.float().mean() > 0.05 and (moved[changed] > 0).all()
    lo, hi = code_range(3)
    assert int(q.codes.min()) >= lo and int(q.codes.max()) <= hi
    tr.finish()


def test_layout_round_trips_exactly():
    codes = torch.randint(-4, 4, (6, 2, 16), dtype=torch.int8)
    scales = torch.rand(6, 2, 1) + 0.1
    q = IntGroupLinear(codes, scales, 3)
    w = q.dequantize().reshape(6, 2, 16)
    s = q.scales.float()
    assert torch.equal(encode(w, s, 3), codes)                           # decode -> encode is the identity
    assert q.bits()["total"] == 6 * 32 * 3 + 12 * 16
    with pytest.raises(ValueError):
        IntGroupLinear(torch.full((1, 1, 4), 4, dtype=torch.int8), torch.ones(1, 1, 1), 3)


def test_quant_pass_replaces_every_linear(quantized):
    layers = int_layers(quantized.model)
    assert len(layers) == len(quantized.adapter.linears())
    rec = quantized.records["quantization"]
    bits = rec["int"]["bits"]
    assert abs(rec["bits_per_weight"] - (bits + 16 / 32)) < 1e-6
    assert all(q.scales.dtype == torch.float16 for q in layers.values())


def test_v_step_moves_codes_within_range_and_trust(quantized):
    b = _fresh(quantized)
    before = {n: (q.codes.clone(), q.dequantize().clone()) for n, q in int_layers(b.model).items()}
    tr = IntPVTrainer(b.model, b.records[TEACHER], norm_parameters(b.adapter), lr=1e-3, lr_v=5e-2, trust=0.02)
    tau = 0.05
    _, frac = tr.v_step(b.records["calibration_ids"][:4], tau=tau)
    scales = {n: q.scales.detach().clone() for n, q in tr.layers.items()}
    tr.finish()
    assert 0 < frac <= tau
    for n, q in int_layers(b.model).items():
        old_codes, old_w = before[n]
        lo, hi = code_range(q.nbits)
        assert int(q.codes.min()) >= lo and int(q.codes.max()) <= hi
        assert (q.codes != old_codes).sum() <= math.ceil(tau * old_codes.numel())
        moved = (q.codes.float() - old_codes.float()) * scales[n].float()
        step = moved.abs().amax().item()
        # the trust region, plus the one change that crosses it
        assert moved.norm() <= 0.02 * old_w.norm() + step + 1e-6


def test_v_step_ranks_weights_by_their_distance_in_quantization_levels():
    """The first V step moves the buffer by the same amount everywhere (Adam's first step is sign-like), so ranking
    by absolute distance is all ties: the rank is |T - W| over the weight's scale, the fraction of a level T has
    moved, so the forced one-level changes go first where a level is small. (Ranked by absolute distance, the
    tie order put them anywhere.)"""
    from accelc.passes.quantization.int_quant import IntPVTrainer as Tr
    codes = torch.zeros(2, 2, 32, dtype=torch.int8)
    scales = torch.tensor([0.1, 0.001, 0.1, 0.1]).reshape(2, 2, 1)        # group (0, 1) has the small level
    q = IntGroupLinear(codes, scales, 4)
    q.unpack()
    tr = Tr.__new__(Tr)
    tr.buffers, tr.lr_v, tr.decay, tr.trust = {}, 1e-3, 0.0, 0.0
    changed, total = tr._update_codes("l", q, torch.ones(2, 64), tau=16 / 128)
    moved = (q.codes != 0).reshape(2, 2, 32)
    assert changed == 16 and total == 128
    assert moved[0, 1].sum() == 16 and moved.sum() == 16                # all in the small-level group
    assert (q.codes[0, 1][moved[0, 1]] == -1).all()                       # one level against the gradient


def test_pv_lowers_the_distillation_loss(quantized):
    b = _fresh(quantized)
    ids = b.records["calibration_ids"][:4]        # the pass trains on these (it holds out the last batch)
    with torch.no_grad():
        before = float(distill_loss(b.model, b.records[TEACHER], ids))
    IntPVTuningPass(PVTuningConfig(steps=12, batch=4, lr=3e-3, lr_v=1e-2, tau=0.01))(b)
    with torch.no_grad():
        after = float(distill_loss(b.model, quantized.records[TEACHER], ids))
    assert after < 0.8 * before
    rec = b.records["quantization"]
    assert rec["method"] == "pv-int" and rec["tuning"]["steps"] == 12
    for q in int_layers(b.model).values():
        lo, hi = code_range(q.nbits)
        assert q.scales.dtype == torch.float16 and int(q.codes.min()) >= lo and int(q.codes.max()) <= hi


def test_specs():
    passes = build("pv-int", "3,group=64,steps=7,tau=0.02", None)
    assert [p.name for p in passes] == ["quantize-int", "tune-pv-int"]
    assert passes[0].config.bits == 3 and passes[0].config.group == 64 and passes[1].config.steps == 7
    assert [p.name for p in build("gptq-int", "4", None)] == ["quantize-int"]
    for bad in ("5", "x", "4,group=48", "4,steps=3"):
        with pytest.raises(InputError):
            build("gptq-int", bad, None)
    with pytest.raises(InputError):
        build("pv-int", "2,wat=1", None)


def _codes_and_scales(b):
    return {n: (q.codes.clone(), q.scales.clone()) for n, q in int_layers(b.model).items()}


def test_bf16_trunk_gives_close_loss_and_gradients(quantized):
    b = _fresh(quantized)
    ids, teacher = b.records["calibration_ids"][:4], b.records[TEACHER]
    with torch.no_grad():
        f32, bf16 = (float(distill_loss(b.model, teacher, ids, bf16=x)) for x in (False, True))
    assert f32 != bf16 and abs(bf16 - f32) < 0.05 * f32        # bf16 did run, and the loss is the same one
    grads = {}
    for x in (False, True):
        tr = IntPVTrainer(b.model, teacher, norm_parameters(b.adapter), 1e-4, 1e-3, bf16=x)
        for q in tr.layers.values():
            q.tap, q.tapped = True, None
        tr._backward(ids, tap=True)
        grads[x] = torch.cat([q.tapped.grad.flatten() for q in tr.layers.values()])
        assert grads[x].dtype == torch.float32
        tr.finish()
    assert torch.nn.functional.cosine_similarity(grads[False], grads[True], 0) > 0.98


def test_cosine_schedule_starts_from_zero_rates(quantized):
    before = _codes_and_scales(quantized)
    moved = {}
    for schedule in ("constant", "cosine"):
        b = _fresh(quantized)
        IntPVTuningPass(PVTuningConfig(steps=1, batch=4, lr=3e-3, lr_v=1e-1, tau=0.05, schedule=schedule))(b)
        after = _codes_and_scales(b)
        moved[schedule] = sum(int((after[n][0] != c).sum()) + int((after[n][1] != s).sum())
                              for n, (c, s) in before.items())
        assert b.records["quantization"]["tuning"]["schedule"] == schedule
    # the warm-up's first step has rates and trust 0: the V step's "plus one weight" per layer moves, nothing else
    assert moved["constant"] > 4 * len(before) and moved["cosine"] <= len(before)


def test_state_key_keeps_older_files_at_the_old_defaults(quantized):
    teacher, ids = quantized.records[TEACHER], quantized.records["calibration_ids"]
    cfg = asdict(PVTuningConfig())
    old = {k: v for k, v in cfg.items() if k not in ("precision", "schedule")}
    assert state_key(teacher, ids, cfg) == state_key(teacher, ids, old)
    assert state_key(teacher, ids, {**cfg, "schedule": "cosine"}) != state_key(teacher, ids, old)
    assert state_key(teacher, ids, {**cfg, "precision": "bf16"}) != state_key(teacher, ids, old)


def test_specs_take_precision_and_schedule():
    tune = build("pv-int", "3,precision=bf16,schedule=cosine", None)[1].config
    assert tune.precision == "bf16" and tune.schedule == "cosine"
    assert build("pv", "2x8g8,precision=auto", None)[1].config.precision == "auto"
    for bad in ("3,precision=fp8", "3,schedule=linear"):
        with pytest.raises(InputError):
            build("pv-int", bad, None)


def test_flip_spec_and_the_init_key():
    """flip= reaches the quantizer; at its default (false) the tuning's init string, part of a tuned-state file's key,
    is the one written before the option existed, so older state files still load; flip=true changes it."""
    quant, tune = build("pv-int", "2,flip=true", None)
    assert quant.config.flip is True and '"flip": true' in tune.config.init
    plain = build("pv-int", "2", None)[1].config.init
    assert "flip" not in plain and build("pv-int", "2,flip=false", None)[1].config.init == plain
    assert build("gptq-int", "4,flip=true", None)[0].config.flip is True
    with pytest.raises(InputError):
        build("pv-int", "2,flip=maybe", None)
