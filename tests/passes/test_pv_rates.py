"""PV-Tuning's precision (bf16 trunk, f32 head and loss) and schedule (cosine rates) options, and the state key
that keeps older tuned-state files loadable."""
import copy
from dataclasses import asdict

import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import InputError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.quantization.codebook import TEACHER
from accelc.passes.quantization.int_linear import int_layers
from accelc.passes.quantization.int_quant import IntPVTrainer, IntPVTuningPass, IntQuantConfig, IntQuantPass
from accelc.passes.quantization.pv_tuning import PVTuningConfig, distill_loss, norm_parameters
from accelc.passes.quantization.quant_methods import build
from accelc.passes.quantization.tuned_state import state_key


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0, initializer_range=0.25)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    IntQuantPass(IntQuantConfig(bits=3, group=32, keep_teacher=True))(b)
    return b


def _fresh(quantized):
    b = copy.deepcopy(quantized)
    b.records[TEACHER] = quantized.records[TEACHER]
    return b


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
