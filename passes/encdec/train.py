"""Adaptation of the converted model: PrefixLM with distillation from the source (T5Gemma's recipe, on a CPU budget).

Each step draws `batch` windows of seq_len tokens from the calibration text and one split point n in
[min_prefix, seq_len - min_target]: the encoder reads tokens [0, n - 1), the decoder tokens [n - 1, seq_len - 1)
(as the runtime splits a prompt of n tokens), and every decoder position t predicts token t + 1 with
    loss = kd * KL(p_source || p_student) + (1 - kd) * cross-entropy(token t + 1)
where p_source is the frozen source model's distribution over the same window read causally. Every parameter of
the encoder and decoder trains (embeddings and head shared); AdamW, warm-up then cosine decay over whichever of
steps / seconds ends first; bf16 autocast where the CPU has bf16 instructions. Resumable: weights, AdamW's moments
and the step are saved every `save_s` seconds under $ACCELC_CACHE/encdec/ and a rerun with the same source weights
and options continues (or, when finished, reuses the result without training).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...compiler.progress import bar
from ..drafting.drafter_train import _summary
from ..drafting.eagle_train import _load, _save

log = logging.getLogger(__name__)


def cache_root() -> Path:
    from ...models.sources import cache_dir
    return cache_dir() / "encdec"


def _step_loss(ed, teacher, x: torch.Tensor, n: int, kd: float, bf16: bool) -> torch.Tensor:
    B, W = x.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        T = W - 1
        t_logits = teacher(x[:, :-1], torch.arange(T)[None].expand(B, T), torch.ones(B, T, dtype=torch.long),
                           *teacher.empty_cache(B, 0))[0][:, n - 1:]
        t_log = F.log_softmax(t_logits.float(), -1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        s_logits = ed(x[:, :n - 1], x[:, n - 1:-1])
    s_log = F.log_softmax(s_logits.float(), -1)
    tgt = x[:, n:]
    loss = torch.zeros(())
    if kd > 0:
        loss = loss + kd * F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1).mean()
    if kd < 1:
        loss = loss + (1 - kd) * F.nll_loss(s_log.reshape(-1, s_log.shape[-1]), tgt.reshape(-1))
    return loss


def adapt(ed, teacher, stream: torch.Tensor, cfg, resume: Path | None = None, save_s: float = 600.0,
          bf16: bool = False) -> dict:
    """Train every parameter of `ed` (EncDec) against `teacher` (a DecoderGraph of the source, frozen) on windows of
    `stream`; -> {"steps", "seconds", "resumed_at", "loss"}."""
    params = list(ed.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    start, losses, spent = 0, [], 0.0
    if resume is not None and resume.is_file():
        start, losses, spent = _load(resume, params, opt)
        log.info("encoder-decoder adaptation resumes at step %d (%s)", start, resume.name)
    if stream.numel() <= cfg.seq_len:
        raise ValueError(f"the calibration text ({stream.numel()} tokens) is shorter than seq_len {cfg.seq_len}")

    def rate(step: int, elapsed: float) -> float:
        frac = min(1.0, max(step / cfg.steps, elapsed / cfg.seconds))
        return cfg.lr * min(1.0, (frac + 1e-9) / 0.05) * 0.5 * (1 + math.cos(math.pi * frac))
    g = torch.Generator().manual_seed(cfg.seed + start)
    t0, last_save = time.perf_counter(), time.perf_counter()
    ed.train()
    step = start
    try:
        with bar(cfg.steps, "encdec: adaptation") as pb:
            pb.update(start)
            for step in range(start, cfg.steps):
                if spent + time.perf_counter() - t0 > cfg.seconds:
                    log.info("adaptation stopped by its time budget after %d steps", step)
                    break
                off = torch.randint(0, stream.numel() - cfg.seq_len, (cfg.batch,), generator=g)
                x = torch.stack([stream[o:o + cfg.seq_len] for o in off.tolist()])
                n = int(torch.randint(cfg.min_prefix, cfg.seq_len - cfg.min_target + 1, (1,), generator=g))
                loss = _step_loss(ed, teacher, x, n, cfg.kd, bf16)
                for group in opt.param_groups:
                    group["lr"] = rate(step, spent + time.perf_counter() - t0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                pb.update(1)
                pb.set_postfix(loss=f"{losses[-1]:.3f}")
                if resume is not None and time.perf_counter() - last_save > save_s:
                    _save(resume, params, opt, step + 1, losses, spent + time.perf_counter() - t0)
                    last_save = time.perf_counter()
            else:
                step = cfg.steps
    finally:
        ed.eval()
        for p in params:
            p.requires_grad_(False)
    total = spent + time.perf_counter() - t0
    if resume is not None and step > start:
        _save(resume, params, opt, step, losses, total)
    return {"steps": step, "seconds": round(total, 2), "resumed_at": start, "loss": _summary(losses)}
