"""Pieces shared by the passes that train (the EAGLE drafter, encoder-decoder adaptation): a key for a model's
weights, the resume state (trainable weights, AdamW's moments, step, losses, seconds spent) as safetensors, the
learning-rate schedule over a step or time budget, and one optimizer step."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch


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
    caller zeroed the gradients and backpropagated the loss itself (a chunked loss does)."""
    for group in opt.param_groups:
        group["lr"] = lr
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
                f.write(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))


def save_state(path: Path, params, opt, step: int, losses: list[float], seconds: float) -> None:
    t = {}
    for i, p in enumerate(params):
        t[f"p{i}"] = p.detach()
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                t[f"{k}{i}"] = st[k]
    meta = {"step": str(step), "seconds": str(seconds), "losses": json.dumps([round(x, 5) for x in losses])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_tensors(tmp, t, meta)
    tmp.replace(path)


def load_state(path: Path, params, opt) -> tuple[int, list[float], float]:
    """Restore the weights and AdamW's moments saved by save_state, one tensor at a time."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        step = int(meta["step"])
        keys = set(f.keys())
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(f.get_tensor(f"p{i}"))
                if f"exp_avg{i}" in keys:
                    opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": f.get_tensor(f"exp_avg{i}").clone(),
                                    "exp_avg_sq": f.get_tensor(f"exp_avg_sq{i}").clone()}
    return step, json.loads(meta.get("losses", "[]")), float(meta.get("seconds", 0.0))
