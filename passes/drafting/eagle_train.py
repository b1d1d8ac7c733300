"""Training the EAGLE drafter (eagle_model.py) by distillation on the frozen target's own hidden states.

The target's last hidden states f (before its final norm) over the calibration windows are computed once and
cached as safetensors under $ACCELC_CACHE/eagle/ (keyed by the target's weights and the windows). Each step
feeds pairs (f_t + noise, token t+1) and trains on
    loss = reg + cls_weight * cls        (EAGLE's weighting: 1 and 0.1)
    reg  = SmoothL1(f^_{t+1} / rms, f_{t+1} / rms)        the state's direction (what its readers see)
    cls  = KL(p_S || q)   p_S: the target's next-token distribution renormalised over the drafter's head S
With unroll=2 a second pass feeds the drafter's own estimates back (inputs f^_t instead of f_t, every position
at once) and adds the same losses for the next position: a cheap form of EAGLE-3's training-time test, whose
context is all estimated rather than true-then-estimated (named as a departure in docs/passes/drafter.md).
Resumable: the trainable weights, AdamW's moments and the step are saved every `save_s` seconds beside the
features, and a rerun with the same configuration continues from there. Both the target's states and the training
run on a CUDA device when one is there (device=auto; training.train_device), the modules moved there and back.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...compiler.progress import bar
from ..training import (apply_step, autocast, cosine_rate, devices_after, load_state, moved_to, save_state,
                        state_devices)
from ..export.decoder_graph import DecoderGraph
from .drafter_train import _summary
from .eagle_model import EagleGraph

log = logging.getLogger(__name__)


def cache_root() -> Path:
    from ...models.sources import cache_dir
    return cache_dir() / "eagle"


@torch.no_grad()
def target_features(model, adapter, windows: torch.Tensor, key: str | None = None, chunk: int = 4,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The target's last hidden states [n, T, C] (float16 on disk and in memory, on the CPU), computed once per key,
    on `device` (the model is moved there and back)."""
    from safetensors.torch import load_file, save_file
    path = cache_root() / f"features-{key}.safetensors" if key else None
    if path is not None and path.is_file():
        try:
            return load_file(str(path))["features"]
        except Exception as e:           # a damaged cache entry is recomputed
            log.warning("recomputing the EAGLE features (%s: %s)", path.name, e)
    dev = torch.device(device)
    graph = DecoderGraph(model, adapter, output="hidden").eval()
    out = []
    with moved_to(dev, graph), bar(len(windows), "eagle: target states") as pb:     # the graph shares the model's weights
        for i in range(0, len(windows), chunk):
            x = windows[i:i + chunk].to(dev)
            B, T = x.shape
            h = graph(x, torch.arange(T, device=dev)[None].expand(B, T),
                      torch.ones(B, T, dtype=torch.long, device=dev), *graph.empty_cache(B, 0, device=dev))[0]
            out.append(h.to(torch.float16).cpu())
            pb.update(len(x))
    feats = torch.cat(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": feats.contiguous()}, str(tmp))
        tmp.replace(path)
    return feats


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)


def _head_logits(drafter: EagleGraph, h: torch.Tensor) -> torch.Tensor:
    g = drafter.layer
    z = g.head(g.final_norm(h))
    return torch.tanh(z / g.final_softcap) * g.final_softcap if g.final_softcap else z


def _losses(drafter: EagleGraph, ids, f_in, f_next, p_log, bf16: bool):
    """One drafter pass over pairs (f_in[t], ids[t]) -> (reg, cls, its estimates); matmuls in bfloat16 when asked,
    losses in float32."""
    B, T = ids.shape
    dev = ids.device
    pos = torch.arange(T, device=dev)[None].expand(B, T)
    with autocast(dev, bf16):
        logits, h, *_ = drafter(ids, f_in, pos, torch.ones(B, T, dtype=torch.long, device=dev),
                                *drafter.empty_cache(B, 0, device=dev))
    h = h.float()
    reg = F.smooth_l1_loss(_unit(h), _unit(f_next))
    cls = F.kl_div(F.log_softmax(logits.float(), -1), p_log, log_target=True, reduction="none").sum(-1).mean()
    return reg, cls, h


def train_eagle(drafter: EagleGraph, windows: torch.Tensor, feats: torch.Tensor, steps: int, seconds: float,
                batch: int, lr: float, seed: int, cls_weight: float = 0.1, noise: float = 0.1, unroll: int = 1,
                resume: Path | None = None, save_s: float = 60.0, bf16: bool = False,
                device: torch.device | str = "cpu") -> dict:
    """AdamW on the drafter's trainable weights (the rest frozen, master weights float32; bf16: bfloat16 autocast
    for the matmuls) on `device` (the drafter, and the target modules it shares, are moved there and back to the
    CPU afterwards); -> {"steps", "seconds", "loss", "resumed_at", "device"}."""
    dev = torch.device(device)
    with moved_to(dev, drafter):
        return _train(drafter, windows, feats, steps, seconds, batch, lr, seed, cls_weight, noise, unroll, resume,
                      save_s, bf16, dev)


def _train(drafter, windows, feats, steps, seconds, batch, lr, seed, cls_weight, noise, unroll, resume, save_s,
           bf16, dev) -> dict:
    params = drafter.trainable()
    ids_p = {id(p) for p in params}
    saved = {p: p.requires_grad for p in drafter.parameters()}
    for p in drafter.parameters():
        p.requires_grad_(id(p) in ids_p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    prior = state_devices(resume)
    start, losses, spent = 0, [], 0.0
    if resume is not None and resume.is_file():
        start, losses, spent = load_state(resume, params, opt)
        log.info("EAGLE training resumes at step %d (%s)", start, resume.name)

    g = torch.Generator().manual_seed(seed + start)
    t0, last_save = time.perf_counter(), time.perf_counter()
    drafter.train()
    step = start
    try:
        with bar(steps, "eagle: training") as pb:
            pb.update(start)
            for step in range(start, steps):
                if spent + time.perf_counter() - t0 > seconds:
                    log.info("EAGLE training stopped by its time budget after %d steps", step)
                    break
                idx = torch.randint(0, len(windows), (min(batch, len(windows)),), generator=g)
                ids, f = windows[idx].to(dev), feats[idx].to(dev).float()
                with torch.no_grad(), autocast(dev, bf16):
                    p_log = F.log_softmax(_head_logits(drafter, f[:, 1:]).float(), dim=-1)
                    f_in = f[:, :-1]
                    if noise:   # EAGLE's uniform feature noise, relative to each state's scale
                        f_in = f_in + noise * f_in.pow(2).mean(-1, keepdim=True).sqrt() * \
                            (2 * torch.rand(f_in.shape, generator=g) - 1).to(dev)
                reg, cls, h = _losses(drafter, ids[:, 1:], f_in, f[:, 1:], p_log, bf16)
                loss = reg + cls_weight * cls
                if unroll >= 2:
                    reg2, cls2, _ = _losses(drafter, ids[:, 2:], h[:, :-1], f[:, 2:], p_log[:, 1:], bf16)
                    loss = loss + reg2 + cls_weight * cls2
                losses.append(apply_step(opt, params, loss,
                                         cosine_rate(lr, step, steps, spent + time.perf_counter() - t0, seconds)))
                pb.update(1)
                if resume is not None and time.perf_counter() - last_save > save_s:
                    save_state(resume, params, opt, step + 1, losses, spent + time.perf_counter() - t0,
                               devices_after(prior, dev, True))
                    last_save = time.perf_counter()
            else:
                step = steps
    finally:
        drafter.eval()
        for p, r in saved.items():          # the target's shared modules as they were; the drafter frozen
            p.requires_grad_(r and id(p) not in ids_p)
    total = spent + time.perf_counter() - t0
    devices = devices_after(prior, dev, step > start)
    if resume is not None:
        save_state(resume, params, opt, step, losses, total, devices)
    return {"steps": step, "seconds": round(total, 2), "resumed_at": start, "loss": _summary(losses),
            "device": ", ".join(devices)}


def held_out_acceptance(model, adapter, drafter: EagleGraph, prompts: list[list[int]], new_tokens: int,
                        k: int = 8) -> tuple[dict, dict]:
    """Per-position acceptance in greedy generation (torch, fixed k drafts per round) on held-out prompts; -> (the
    summary, the rollouts' acceptance-head data: accept_head.rollouts)."""
    from .accept_head import rollouts
    data, j = rollouts(model, adapter, drafter, prompts, new_tokens, k, what="eagle: held-out acceptance")
    return ({"prompts": len(prompts), "new_tokens": new_tokens, "k": k,
             "acceptance_by_position": j.get("acceptance_by_position"),
             "tokens_per_round": j["mean_accepted"], "acceptance_rate": j["acceptance_rate"]}, data)
