"""Tuned-state files of PV-Tuning (state=FILE): integer codes pack exactly at their bit width, a compile naming an
existing file loads the same weights a training wrote without training, a file from another spec is refused, the
time budget stops the steps, the options are checked before any model loads."""
import pytest
import torch

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import InputError, PassError
from accelc.models.adapter import ArchAdapter
from accelc.models.tiny import tiny_model
from accelc.passes.quantization.codebook_linear import codebook_layers
from accelc.passes.quantization.int_linear import code_range, int_layers, pack_codes, unpack_codes
from accelc.passes.quantization.int_quant import IntPVTuningPass
from accelc.passes.quantization.pv_tuning import norm_parameters
from accelc.passes.quantization.quant_methods import build


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 8, 37, 4096])
def test_codes_pack_densely_and_round_trip(bits, n):
    lo, hi = code_range(bits)
    codes = torch.randint(lo, hi + 1, (n,), dtype=torch.int8, generator=torch.Generator().manual_seed(n))
    codes[0], codes[-1] = lo, hi
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8 * bits
    assert torch.equal(unpack_codes(packed, bits, (n,)), codes)
    with pytest.raises(ValueError):
        unpack_codes(packed[:-1], bits, (n,))


def _bundle(seed=0):
    model = tiny_model("llama", seed=seed, initializer_range=0.25)
    b = ModelBundle(model=model, tokenizer=None, adapter=ArchAdapter(model))
    b.records["calibration_ids"] = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    return b


def _run(spec: str, method: str = "pv-int", seed: int = 0) -> ModelBundle:
    b = _bundle(seed)
    for p in build(method, spec, None):
        p(b)
    return b


def _weights(b) -> dict:
    out = {k: v.clone() for k, v in b.model.state_dict().items()}
    out.update({f"norm{i}": p.detach().clone() for i, p in enumerate(norm_parameters(b.adapter))})
    return out


def test_state_file_is_written_then_loaded_without_training(tmp_path, monkeypatch):
    path = tmp_path / "tuned.safetensors"
    spec = f"4,group=32,steps=5,batch=4,lr=3e-3,lr_v=1e-2,tau=0.05,device=cpu,state={path}"
    first = _run(spec)
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    t1 = first.records["quantization"]["tuning"]
    assert t1["steps"] == 5 and t1["saved_to"]["state"] == str(path) and t1["device"] == "cpu"
    # the 4-bit codes are stored at 4 bits: the file is far smaller than int8 codes would be
    n_codes = sum(q.codes.numel() for q in int_layers(first.model).values())
    assert path.stat().st_size < n_codes * 0.75

    def no_training(*a, **k):
        raise AssertionError("trained although a state file was given")
    monkeypatch.setattr(IntPVTuningPass, "_train", no_training)
    second = _run(spec)
    t2 = second.records["quantization"]["tuning"]
    assert t2["losses"] == t1["losses"] and t2["loaded_from"]["key"] == t1["saved_to"]["key"]
    w1, w2 = _weights(first), _weights(second)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    ids = first.records["calibration_ids"][:2]
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert all(q.scales.dtype == torch.float16 for q in int_layers(second.model).values())
    # the device is not part of the key: device=auto loads the same file
    _run(spec.replace("device=cpu", "device=auto"))


def test_state_file_of_another_spec_or_model_is_refused(tmp_path):
    path = tmp_path / "tuned.safetensors"
    _run(f"4,group=32,steps=2,state={path}")
    for other, seed in ((f"4,group=32,steps=2,lr=1e-3,state={path}", 0), (f"2,group=32,steps=2,state={path}", 0),
                        (f"4,group=32,steps=2,state={path}", 1)):
        with pytest.raises(PassError, match="tuned for another") as e:
            _run(other, seed=seed)
        assert e.value.exit_code == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PassError, match="not a tuned-state file"):
        _run(f"4,group=32,steps=2,state={bad}")


def test_codebook_state_round_trips(tmp_path):
    path = tmp_path / "pv.safetensors"
    spec = f"1x4g4,steps=3,batch=4,lr=1e-3,tau=0.1,state={path}"
    first = _run(spec, "pv")
    second = _run(spec, "pv")
    assert "loaded_from" in second.records["quantization"]["tuning"]
    for (n, a), (_, b) in zip(codebook_layers(first.model).items(), codebook_layers(second.model).items()):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.codebooks, b.codebooks), n


def test_time_budget_stops_the_steps():
    b = _run("4,group=32,steps=50,seconds=0.000001")
    t = b.records["quantization"]["tuning"]
    assert t["steps"] == 1 and t["steps_asked"] == 50 and len(t["losses"]) == 1


def test_options_are_checked_before_a_model_loads(tmp_path):
    for bad, msg in (("4,device=gpu", "device must be one of"), ("4,seconds=-1", "seconds must be"),
                     (f"4,state={tmp_path}/missing/x.st", "does not exist"), (f"4,state={tmp_path}", "not a file")):
        with pytest.raises(InputError, match=msg):
            build("pv-int", bad, None)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            build("pv-int", "4,device=cuda", None)
        with pytest.raises(InputError, match="no CUDA device"):
            build("pv", "2x8g8,device=cuda", None)


def _codes(b) -> dict:
    return {n: q.codes.clone() for n, q in int_layers(b.model).items()}


def test_from_continues_a_tuned_state_under_a_key_of_its_own(tmp_path):
    a, b_path, fresh_path = tmp_path / "a.st", tmp_path / "b.st", tmp_path / "fresh.st"
    base = "4,group=32,batch=4,lr=3e-3,lr_v=1e-2,tau=0.05,device=cpu"
    tuned = _codes(_run(f"{base},steps=6,state={a}"))
    # one cosine step from the tuned state: its first step has rates and trust 0 (one weight per layer may move)
    cont = _run(f"{base},steps=1,schedule=cosine,from={a},state={b_path}")
    fresh = _run(f"{base},steps=1,schedule=cosine,state={fresh_path}")
    moved = {n: int((c != tuned[n]).sum()) for n, c in _codes(cont).items()}
    assert max(moved.values()) <= 1
    assert sum(int((c != tuned[n]).sum()) for n, c in _codes(fresh).items()) > 4 * len(tuned)
    rec = cont.records["quantization"]["tuning"]
    assert rec["started_from"]["state"] == str(a) and rec["started_from"]["steps"] == 6
    assert rec["started_from"]["teacher_checked"]
    keys = [fresh.records["quantization"]["tuning"]["saved_to"]["key"], rec["saved_to"]["key"]]
    assert keys[0] != keys[1]                                 # the continued state is not the fresh spec's
    # a compile of the continued spec loads it, without from='s file being read again
    again = _run(f"{base},steps=1,schedule=cosine,from={a},state={b_path}")
    assert again.records["quantization"]["tuning"]["loaded_from"]["key"] == keys[1]


def test_from_refuses_another_model_and_non_state_files(tmp_path):
    a = tmp_path / "a.st"
    _run(f"4,group=32,steps=1,batch=4,device=cpu,state={a}")
    with pytest.raises((InputError, PassError), match="another model"):
        _run(f"4,group=32,steps=1,batch=4,device=cpu,from={a}", seed=1)
    junk = tmp_path / "junk.st"
    junk.write_bytes(b"not a state")
    for bad in (junk, tmp_path / "missing.st"):
        with pytest.raises(InputError, match="not a tuned-state file"):
            build("pv-int", f"4,from={bad}", None)
