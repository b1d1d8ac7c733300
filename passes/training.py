"""Pieces shared by the passes that train (the EAGLE drafter, encoder-decoder adaptation): the device and precision
they train in, a key for a model's weights, the resume state (trainable weights, AdamW's moments, step, losses,
seconds spent) as safetensors, the learning-rate schedule over a step or time budget, and one optimizer step."""
from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch

from .spec_options import check_train_device


def train_device(choice: str = "auto") -> torch.device:
    """Where a pass trains: `auto` is a CUDA device when torch sees one (a lent GPU), else the CPU; `cuda` insists.
    Training moves the modules there and back to the CPU afterwards: export and validation run on the CPU."""
    check_train_device("training", choice)
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
    """'cpu', or 'cuda (NVIDIA H200)': what a training ran on, for the manifest and the docs."""
    return f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "cpu"


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions (AVX-512 BF16 or AMX), where autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """precision auto: bfloat16 autocast on a GPU that has it and on a CPU with bf16 instructions (emulated bf16 is
    several times slower than float32), else float32; bf16 / f32 as asked."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bf16_supported()


@contextmanager
def moved_to(dev: torch.device, *modules: torch.nn.Module):
    """The modules on `dev` inside the block and back on the CPU after it, also on an error (a training pass trains
    on a GPU; export and validation read the weights on the CPU). Modules sharing parameters stay sharing."""
    for m in modules:
        m.to(dev)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on `device` when bf16, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def fingerprint(model: torch.nn.Module, windows: torch.Tensor) -> str:
    """A key for the target's features: its weights and the token windows."""
    h = hashlib.sha256()
    h.update(windows.numpy().tobytes())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def run_key(feature_key: str, config: dict) -> str:
    """The resume file's key: the features' key and every option that changes training."""
    blob = json.dumps({"features": feature_key, **config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cosine_rate(lr: float, step: int, steps: int, elapsed: float, seconds: float, warmup: float = 0.05) -> float:
    """Warm-up over the first `warmup` of the budget, then cosine decay, over whichever of steps / seconds runs out
    first."""
    frac = min(1.0, max(step / steps, elapsed / seconds))
    return lr * min(1.0, (frac + 1e-9) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))


def apply_step(opt, params: list, loss: torch.Tensor, lr: float, clip: float = 1.0, backward: bool = True) -> float:
    """Backward, clip the gradient norm, one optimizer step at `lr`; -> the loss as a float. backward=False: the
    caller zeroed the gradients and backpropagated the loss itself (a chunked loss does). A parameter group with
    an "lr_scale" runs at lr times that."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if backward:
        opt.zero_grad(set_to_none=True)
        loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return float(loss.detach())


ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time, straight from each tensor's memory. safetensors' own
    save_file first copies every tensor into a bytes object (the whole file in memory at once: 10 GB more for
    the weights and AdamW moments of a 0.85B-parameter encoder-decoder)."""
    header, offset = {}, 0
    for name, t in tensors.items():
        if t.dtype not in ST_DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors name")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


def save_state(path: Path, params, opt, step: int, losses: list[float], seconds: float,
               devices: list[str] | tuple = ()) -> None:
    """devices: what the training ran on so far (device_name), kept in the file's metadata."""
    t = {}
    for i, p in enumerate(params):
        t[f"p{i}"] = p.detach()
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                t[f"{k}{i}"] = st[k]
    meta = {"step": str(step), "seconds": str(seconds), "losses": json.dumps([round(x, 5) for x in losses]),
            "devices": json.dumps(list(devices))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_tensors(tmp, t, meta)
    tmp.replace(path)


def _state_meta(path: Path | None) -> dict:
    """A resume file's metadata ({} without a readable one)."""
    from safetensors import safe_open
    if path is None or not path.is_file():
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def state_devices(path: Path | None) -> list[str]:
    """The devices a resumable training ran on so far, from its resume file's metadata ([] without one)."""
    try:
        return list(json.loads(_state_meta(path).get("devices", "[]")))
    except ValueError:
        return []


def devices_after(prior: list[str], dev: torch.device, ran: bool) -> list[str]:
    """prior (state_devices) plus `dev` when training steps ran on it in this call."""
    here = device_name(dev)
    return prior + [here] if (ran or not prior) and here not in prior else list(prior)


def finished(path: Path, steps: int, seconds: float) -> bool:
    """Whether the resume file at `path` holds a training that already ran its steps or its time budget (a rerun
    then reuses its weights and needs no training data)."""
    meta = _state_meta(path)
    try:
        return int(meta["step"]) >= steps or float(meta.get("seconds", 0.0)) >= seconds
    except (KeyError, ValueError):
        return False


def load_state(path: Path, params, opt) -> tuple[int, list[float], float]:
    """Restore the weights and AdamW's moments saved by save_state, one tensor at a time (onto each weight's device:
    a run saved on a GPU resumes on the CPU and the other way round)."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        step = int(meta["step"])
        keys = set(f.keys())
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(f.get_tensor(f"p{i}"))
                if f"exp_avg{i}" in keys:
                    opt.state[p] = {"step": torch.tensor(float(step)),
                                    "exp_avg": f.get_tensor(f"exp_avg{i}").to(p.device, copy=True),
                                    "exp_avg_sq": f.get_tensor(f"exp_avg_sq{i}").to(p.device, copy=True)}
    return step, json.loads(meta.get("losses", "[]")), float(meta.get("seconds", 0.0))
