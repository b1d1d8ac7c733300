"""The resume state of the training passes (passes/training.py): the streaming safetensors writer and the
save / load round trip of weights and AdamW moments."""
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from accelc.passes.training import apply_step, load_state, save_state, save_tensors


def test_streamed_file_reads_back_with_safetensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "c": torch.randint(-9, 9, (2, 2, 3), generator=g, dtype=torch.int64), "d": torch.zeros(0, 4),
               "e": torch.randn(4, 6, generator=g).t(),               # not contiguous
               "f": torch.tensor([True, False, True]), "g": torch.randint(0, 255, (5,), dtype=torch.uint8)}
    save_tensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    back = load_file(tmp_path / "x.safetensors")
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t), k
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_state_round_trip_continues_training_identically(tmp_path):
    def setup():
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        params = list(net.parameters())
        return net, params, torch.optim.AdamW(params, lr=1e-2)
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(2)), torch.randn(16, 3)
    step = lambda net, opt, params: apply_step(opt, params, ((net(x) - y) ** 2).mean(), 1e-2)   # noqa: E731
    net, params, opt = setup()
    losses = [step(net, opt, params) for _ in range(3)]
    save_state(tmp_path / "s.safetensors", params, opt, 3, losses, 1.5)
    ahead = [step(net, opt, params) for _ in range(2)]
    net2, params2, opt2 = setup()                       # a fresh run resumes from the file
    start, old, spent = load_state(tmp_path / "s.safetensors", params2, opt2)
    assert (start, spent) == (3, 1.5) and old == [round(v, 5) for v in losses]
    resumed = [step(net2, opt2, params2) for _ in range(2)]
    assert resumed == ahead                             # same weights and moments: the same next steps


def test_state_records_its_devices_and_when_it_is_finished(tmp_path):
    from accelc.passes.training import devices_after, finished, state_devices
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p])
    path = tmp_path / "s.safetensors"
    assert state_devices(path) == [] and not finished(path, 10, 60.0)
    save_state(path, [p], opt, 4, [1.0], 30.0, ["cuda (NVIDIA H200)"])
    assert state_devices(path) == ["cuda (NVIDIA H200)"]
    cpu = torch.device("cpu")
    assert devices_after(state_devices(path), cpu, ran=False) == ["cuda (NVIDIA H200)"]     # reused only
    assert devices_after(state_devices(path), cpu, ran=True) == ["cuda (NVIDIA H200)", "cpu"]
    assert devices_after([], cpu, ran=False) == ["cpu"]
    assert not finished(path, 10, 60.0)                  # neither budget ran out
    assert finished(path, 4, 60.0) and finished(path, 10, 30.0)
    path.write_bytes(b"not a safetensors file")
    assert not finished(path, 1, 1.0) and state_devices(path) == []


def test_training_device_choice():
    import pytest
    from accelc.compiler.errors import InputError
    from accelc.passes.drafting.eagle import parse_eagle
    from accelc.passes.encdec.options import parse_convert
    from accelc.passes.training import train_device, use_bf16
    assert train_device("cpu").type == "cpu"
    assert train_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device=cuda, but torch sees no CUDA device"):
            train_device("cuda")
    with pytest.raises(InputError, match="device"):
        train_device("tpu")
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("f32", torch.device("cpu"))
    assert parse_convert("encdec:device=cpu").device == "cpu" and parse_eagle("device=auto").device == "auto"
    for bad in (lambda: parse_convert("encdec:device=gpu"), lambda: parse_eagle("device=tpu")):
        with pytest.raises(InputError, match="device must be one of auto, cpu, cuda"):
            bad()
    if not torch.cuda.is_available():       # refused when the options are read, before any model loads
        for bad in (lambda: parse_convert("encdec:device=cuda"), lambda: parse_eagle("device=cuda")):
            with pytest.raises(InputError, match="device=cuda, but torch sees no CUDA device"):
                bad()
