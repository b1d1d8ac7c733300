"""Training LoCoCo's compressors (passes/kvcache/lococo.py) on next-token loss, with the model's norm weights.

Long token sequences (`seq_len`, default 1024) from the calibration split are fed chunk by chunk (`chunk`, default 64
tokens) through the torch decoder graph with a lococo:M cache (passes/kvcache/fixed_run.py). Each chunk's
cross-entropy is back-propagated at once: the cache is detached between chunks (as in the reference), so the
gradient reaches the compressors through the compressed slots the chunk attends to. Adam on every compressor's
convolution and lambda (`lr`).

`tune=norms` (the default) is the reference's "inference mode": the model's normalisation weights (every parameter
whose name holds "norm": RMSNorm/LayerNorm scales and biases, q/k norms) train too, at their own rate `norm_lr`
(2.5e-4: the reference's learning rate 5e-5 x its norm_lr_scale 5), on every chunk's loss (chunks before the first
cut too, which keep the model's uncompressed behaviour in the loss). They are changed in place: the exported graphs
carry them, so a lococo artifact's weights differ from the source's in those vectors (recorded in the manifest).
The reference trains the embeddings as well; here they stay frozen (a departure: 28M tied embedding/head weights
on a few dozen calibration sequences). `tune=none` keeps the whole model frozen and learns from the chunks that
attend to compressed slots only. `device=` (auto: a CUDA device when torch sees one) is where the steps run; the
model and the compressors are moved there and back to the CPU afterwards, float32 on either device.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...compiler.progress import bar
from ..training import device_name, moved_to, train_device
from .fixed_run import FixedCacheRun
from .lococo import KEEP_RATE, KERNEL, LAMBDA_INIT, Compressor
from .policies import KVCacheSpec

log = logging.getLogger(__name__)
NORM_LR = 2.5e-4


def norm_parameters(graph) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's normalisation weights inside the decoder graph: every parameter whose name holds "norm"."""
    return [(n, p) for n, p in graph.named_parameters() if "norm" in n.lower()]


@dataclass(frozen=True)
class LoCoCoTrainConfig:
    steps: int = 100          # sequences
    seq_len: int = 1024
    chunk: int = 64
    lr: float = 1e-3
    keep: float = KEEP_RATE   # the reference's; a parsed --kv-cache spec always sets keep and local (lococo_defaults)
    kernel: int = KERNEL
    local: int = 0            # the reference's local_len: most recent slots always kept
    lam: float = LAMBDA_INIT  # lambda's start (the reference's: 0.5)
    tune: str = "norms"       # norms: the model's norm weights train too (the reference's inference mode); none
    norm_lr: float = NORM_LR
    seed: int = 0
    device: str = "auto"      # where it trains: auto (a CUDA device when torch sees one), cpu, cuda

    @classmethod
    def from_spec(cls, spec: KVCacheSpec) -> "LoCoCoTrainConfig":
        return cls(**{k: v for k, v in spec.options.items() if k in cls.__dataclass_fields__})


def make_compressors(graph, spec: KVCacheSpec, cfg: LoCoCoTrainConfig) -> torch.nn.ModuleList:
    torch.manual_seed(cfg.seed)
    return torch.nn.ModuleList(Compressor(graph.head_dim, spec.slots, cfg.keep, cfg.kernel, cfg.local, cfg.lam)
                               for _ in range(graph.last - graph.first))


def train(graph, spec: KVCacheSpec, sequences: torch.Tensor, cfg: LoCoCoTrainConfig,
          compressors: torch.nn.ModuleList | None = None) -> tuple[torch.nn.ModuleList, dict]:
    """graph: DecoderGraph(scores=True) of the model; sequences [N, seq_len] token ids (cycled). -> (compressors,
    record with the loss curve). With cfg.tune == "norms" the graph's norm weights are trained in place. A window,
    sink or h2o spec trains the norms alone under that cache (no compressors: the baselines' counterpart of
    tune=norms, scripts/bench_kvcache.py)."""
    if compressors is None:
        compressors = make_compressors(graph, spec, cfg) if spec.kind == "lococo" else torch.nn.ModuleList()
    comps = compressors
    frozen = [(p, p.requires_grad) for p in graph.parameters()]
    for p in graph.parameters():
        p.requires_grad_(False)
    for p in comps.parameters():
        p.requires_grad_(True)
    norms = norm_parameters(graph) if cfg.tune == "norms" else []
    for _, p in norms:
        p.requires_grad_(True)
    dev = train_device(cfg.device)
    losses, t0 = [], time.perf_counter()
    steps = cfg.steps if any(c.fused for c in comps) or norms else 0    # keep=1, tune=none: nothing to learn
    if not steps:
        why = "keeps every slot verbatim (keep=1)" if spec.kind == "lococo" else "has no learned slots"
        log.info("%s:%d %s and tune=none: nothing to train", spec.kind, spec.slots, why)
    try:
        with moved_to(dev, graph, comps), bar(steps, f"lococo:{spec.slots} training") as pb:
            groups = [{"params": list(comps.parameters()), "lr": cfg.lr}] if len(comps) else []
            if norms:
                groups.append({"params": [p for _, p in norms], "lr": cfg.norm_lr})
            opt = torch.optim.Adam(groups)
            run = FixedCacheRun(graph, spec, comps)
            for step in range(steps):
                seq = sequences[step % sequences.shape[0]][None, :cfg.seq_len].to(dev)
                run.reset()
                total, n = 0.0, 0
                for i in range(0, seq.shape[1] - 1, cfg.chunk):
                    ids = seq[:, i:i + cfg.chunk]
                    target = seq[:, i + 1:i + 1 + ids.shape[1]]
                    cut_before = run.cuts
                    logits = run.step(ids)[:, :target.shape[1]]
                    if run.cuts == cut_before and not norms:    # no compressed slots: nothing for the compressors
                        continue
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, n = total + float(loss.detach()), n + 1
                losses.append(round(total / max(n, 1), 5))
                pb.set_postfix_str(f"loss {losses[-1]:.4f}")
                pb.update(1)
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
    rec = {"steps": steps, "seq_len": cfg.seq_len, "chunk": cfg.chunk, "lr": cfg.lr, "keep": cfg.keep,
           "kernel": cfg.kernel, "local": cfg.local, "lam_init": cfg.lam, "losses": losses,
           "tune": cfg.tune, "norm_lr": cfg.norm_lr if norms else None, "norm_weights": sum(p.numel() for _, p in norms),
           "seconds": round(time.perf_counter() - t0, 1),
           "lambda": [round(float(c.lam.detach().clamp(0, 1)), 4) for c in comps], "device": device_name(dev)}
    log.info("lococo:%d: %d sequences, loss %.4f -> %.4f, %.1fs", spec.slots, steps, losses[0] if losses else 0,
             losses[-1] if losses else 0, rec["seconds"])
    return comps, rec
