"""Adaptation of the converted model: PrefixLM with distillation from the source (T5Gemma's recipe, on a CPU budget).

Each step draws `batch` windows of seq_len tokens from the calibration text and `splits` split points n in
[min_prefix, seq_len - min_target] (the source runs once per window for all of them): the encoder reads tokens [0, n - 1), the decoder tokens [n - 1, seq_len - 1)
(as the runtime splits a prompt of n tokens), and every decoder position t predicts token t + 1 with
    loss = kd * KL(p_source || p_student) + (1 - kd) * cross-entropy(token t + 1)
where p_source is the frozen source model's distribution over the same window read causally. With train=all every
parameter of the encoder and decoder trains (embeddings and head shared); with train=decoder only the decoder's
layers and final norm (the embeddings and head, shared with the encoder, stay the source's), and with a causal
encoder its memory is then taken from the teacher's own forward (the same keys/values, no encoder run). AdamW, warm-up then cosine decay
over whichever of steps / seconds ends first; bf16 autocast where the CPU has bf16 instructions (or on a GPU), else
float32. On a CUDA device when one is there (device=auto; training.train_device): the models move there for the
adaptation and back to the CPU afterwards. Resumable: weights, AdamW's moments and the step are saved every `save_s`
seconds under $ACCELC_CACHE/encdec/ and a rerun with the same source weights and options continues (or, when
finished, reuses the result without training), on either device.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...compiler.progress import bar
from ..drafting.drafter_train import _summary
from ..training import (apply_step, autocast, cosine_rate, devices_after, load_state, moved_to, save_state,
                        state_devices)

log = logging.getLogger(__name__)


def cache_root() -> Path:
    from ...models.sources import cache_dir
    return cache_dir() / "encdec"


LOSS_CHUNK = 256     # decoder positions per head + softmax chunk of the loss


def _teacher(teacher, x: torch.Tensor, bf16: bool):
    """The source over the window x[:, :-1], causally: (its last residual stream [B, W-1, C], its keys/values per
    layer). The head runs later, a chunk of positions at a time (_step_loss)."""
    B, W = x.shape
    T, dev = W - 1, x.device
    with torch.no_grad(), autocast(dev, bf16):
        h, kv, _ = teacher.trunk(x[:, :-1], torch.arange(T, device=dev)[None].expand(B, T),
                                 torch.ones(B, T, dtype=torch.long, device=dev), *teacher.empty_cache(B, 0, device=dev))
        return h, kv


def _step_loss(ed, teacher, x: torch.Tensor, n: int, cfg, bf16: bool, source_memory: bool, taught=None,
               scale: float | None = None, chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """The loss of split point n (the encoder reads x[:, :n-1]). source_memory: the encoder is the source's layers,
    causal and frozen, so its memory is the teacher's own keys/values over the prefix (no encoder run).
    taught: _teacher's result for x, when already computed (several split points share one teacher run).

    The head, the softmaxes and the loss run over `chunk` decoder positions at a time, so no [positions, vocab]
    tensor larger than a chunk is alive (at a 151,936-token vocabulary and 2 x 383 positions a whole one is
    465 MB, and the loss held several, with their gradients). scale: also backpropagate loss * scale now, each
    chunk to the decoder's last hidden states, then once through the layers; the loss is then returned detached."""
    t_h, kv = taught if taught is not None else _teacher(teacher, x, bf16)
    dev = x.device
    mem = None
    with torch.no_grad():
        if source_memory:
            mem = [kv[2 * m + i][:, :n - 1].float() for m in ed.memory for i in (0, 1)]
        elif cfg.train == "decoder":
            with autocast(dev, bf16):
                mem = [t.float() for t in ed.encode(x[:, :n - 1])]
    with autocast(dev, bf16):
        s_h = ed.decode_hidden(ed.encode(x[:, :n - 1]) if mem is None else mem, x[:, n - 1:-1])
    flat = s_h.reshape(-1, s_h.shape[-1])
    hs = flat.detach().requires_grad_(True) if scale is not None else flat
    t_flat = t_h[:, n - 1:].reshape(-1, t_h.shape[-1])
    tgt = x[:, n:].reshape(-1)
    N = flat.shape[0]
    total = torch.zeros((), device=dev)
    for i in range(0, N, chunk):
        with torch.no_grad(), autocast(dev, bf16):
            t_log = F.log_softmax(teacher.head_logits(t_flat[i:i + chunk]).float(), -1)
        with autocast(dev, bf16):
            s_log = F.log_softmax(ed.dec_graph.head_logits(hs[i:i + chunk]).float(), -1)
        part = torch.zeros((), device=dev)
        if cfg.kd > 0:
            part = part + cfg.kd * F.kl_div(s_log, t_log, log_target=True, reduction="sum") / N
        if cfg.kd < 1:
            part = part + (1 - cfg.kd) * F.nll_loss(s_log, tgt[i:i + chunk], reduction="sum") / N
        if scale is not None:
            (part * scale).backward()
            part = part.detach()
        total = total + part
    if scale is not None:
        flat.backward(hs.grad)
    return total


def adapt(ed, teacher, stream: torch.Tensor, cfg, resume: Path | None = None, save_s: float = 600.0,
          bf16: bool = False, device: torch.device | str = "cpu") -> dict:
    """Train every parameter of `ed` (EncDec) against `teacher` (a DecoderGraph of the source, frozen) on windows of
    `stream`, on `device` (both modules are moved there and back to the CPU afterwards, also on an error);
    -> {"steps", "seconds", "resumed_at", "loss", "device"}."""
    dev = torch.device(device)
    with moved_to(dev, ed, teacher):
        return _adapt(ed, teacher, stream, cfg, resume, save_s, bf16, dev)


def _adapt(ed, teacher, stream, cfg, resume, save_s, bf16, dev) -> dict:
    if cfg.train == "decoder":      # its layers and final norm: the embeddings and head are the encoder's too
        shared = {id(p) for p in ed.encoder.parameters()}
        params = [p for p in ed.decoder.parameters() if id(p) not in shared]
    else:
        params = list(ed.parameters())
    for p in ed.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    source_memory = cfg.train == "decoder" and ed.causal_encoder
    gate = ed.enc_graph.body.blend_gate
    groups = [{"params": [p for p in params if p is not gate]}]
    if gate is not None and any(p is gate for p in params):      # a blended encoder's gates learn at gate_lr
        groups.append({"params": [gate], "lr_scale": cfg.gate_lr / cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    prior = state_devices(resume)
    start, losses, spent = 0, [], 0.0
    if resume is not None and resume.is_file():
        start, losses, spent = load_state(resume, params, opt)
        log.info("encoder-decoder adaptation resumes at step %d (%s)", start, resume.name)
    if stream.numel() <= cfg.seq_len:
        raise ValueError(f"the calibration text ({stream.numel()} tokens) is shorter than seq_len {cfg.seq_len}")

    g = torch.Generator().manual_seed(cfg.seed + start)
    t0, last_save = time.perf_counter(), time.perf_counter()
    ed.train()
    ed.checkpoint_layers(True)      # each layer's intermediates are recomputed in the backward pass
    step = start
    try:
        # the bar counts seconds of the time budget (the usual limit), the description the steps
        with bar(int(cfg.seconds), "encdec: adaptation") as pb:
            pb.update(min(int(spent), int(cfg.seconds)))
            for step in range(start, cfg.steps):
                if spent + time.perf_counter() - t0 > cfg.seconds:
                    log.info("adaptation stopped by its time budget after %d steps", step)
                    break
                off = torch.randint(0, stream.numel() - cfg.seq_len, (cfg.batch,), generator=g)
                x = torch.stack([stream[o:o + cfg.seq_len] for o in off.tolist()]).to(dev)
                taught = _teacher(teacher, x, bf16)          # shared by the step's split points
                splits = torch.randint(cfg.min_prefix, cfg.seq_len - cfg.min_target + 1, (cfg.splits,), generator=g)
                opt.zero_grad(set_to_none=True)              # each split point backpropagates its own share
                loss = sum(_step_loss(ed, teacher, x, int(n), cfg, bf16, source_memory, taught, scale=1 / cfg.splits)
                           for n in splits.tolist()) / cfg.splits
                losses.append(apply_step(opt, params, loss, cosine_rate(
                    cfg.lr, step, cfg.steps, spent + time.perf_counter() - t0, cfg.seconds), backward=False))
                pb.update(max(0, min(int(spent + time.perf_counter() - t0), int(cfg.seconds)) - pb.n))
                pb.set_description_str(f"encdec: adaptation, step {step + 1}, loss {losses[-1]:.3f}, seconds")
                if resume is not None and time.perf_counter() - last_save > save_s:
                    save_state(resume, params, opt, step + 1, losses, spent + time.perf_counter() - t0,
                               devices_after(prior, dev, True))
                    last_save = time.perf_counter()
            else:
                step = cfg.steps
    finally:
        if gate is not None:
            with torch.no_grad():
                gate.clamp_(0.0, 1.0)            # the forward clamps too: this only makes the stored values honest
        ed.eval()
        ed.checkpoint_layers(False)
        for p in ed.parameters():
            p.requires_grad_(False)
    total = spent + time.perf_counter() - t0
    devices = devices_after(prior, dev, step > start)
    if resume is not None and step > start:
        save_state(resume, params, opt, step, losses, total, devices)
    return {"steps": step, "seconds": round(total, 2), "resumed_at": start, "loss": _summary(losses),
            "device": ", ".join(devices)}

