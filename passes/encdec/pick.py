"""`pick=greedy`: choose an N-layer decoder's source layers by measurement instead of by position.

Greedy removal: start from all the source's layers and remove, one at a time, the layer whose removal raises the
decoder's distillation loss least, until N remain. The loss is the one adaptation starts from: on `windows`
calibration windows of seq_len tokens split at seq_len - min(CONTINUATION, seq_len / 3) (the evaluation
protocol's 256 + 128 at the default seq_len), the decoder (the kept layers, in order, final norm and head) reads
the window's last tokens over the layer-aligned memory of the source's own causal keys/values of the prefix, and its KL(p_source || p_decoder)
per token is averaged. That memory is exactly what the converted model reads with encoder=causal (the unbalanced
recipe); with a bidirectional or blended encoder it is the memory at its start, before adaptation opens the
encoder's mask. Cost: about (n + N) (n - N) / 2 decoder forwards (410 for 10 of 30 layers, a few minutes on 2
cores); the result is cached by the source's weights and the search's options.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ...compiler.progress import bar
from ..training import autocast

log = logging.getLogger(__name__)
CONTINUATION = 128
CPU = torch.device("cpu")


def split_point(seq_len: int) -> int:
    """n: the encoder reads a window's first n - 1 tokens, the decoder the rest but its last."""
    return seq_len - min(CONTINUATION, seq_len // 3)


@torch.no_grad()
def _targets(teacher, x: torch.Tensor, bf16: bool):
    """Run the source once over the windows x [B, W]: (decoder inputs [B, C], positions [B, C], memory per source
    layer (key, value [B, P, H, D] interleaved), the source's log-probabilities [B * C, V])."""
    B, T = x.shape[0], x.shape[1] - 1
    n = split_point(x.shape[1])
    with autocast(CPU, bf16):
        h, kv, _ = teacher.trunk(x[:, :-1], torch.arange(T)[None].expand(B, T), torch.ones(B, T, dtype=torch.long),
                                 *teacher.empty_cache(B, 0))
        logp = F.log_softmax(teacher.head_logits(h[:, n - 1:]).float(), -1).reshape(-1, teacher.vocab)
    mem = [t[:, :n - 1].float() for t in kv]
    dec = x[:, n - 1:-1]
    pos = torch.arange(n - 1, T)[None].expand(B, dec.shape[1])
    return dec, pos, mem, logp


@torch.no_grad()
def _loss(teacher, layers: list[int], dec, pos, mem, logp, bf16: bool) -> float:
    """The mean KL(source || decoder of `layers`) per decoder token."""
    B, C = dec.shape
    P = mem[0].shape[1]
    past = [mem[2 * j + i] for j in layers for i in (0, 1)]
    with autocast(CPU, bf16):
        h = teacher.trunk(dec, pos, torch.ones(B, P + C, dtype=torch.long), *past, only=layers)[0]
        s = F.log_softmax(teacher.head_logits(h).float(), -1).reshape(-1, teacher.vocab)
    return float(F.kl_div(s, logp, log_target=True, reduction="sum")) / s.shape[0]


def greedy_layers(teacher, windows: torch.Tensor, k: int, bf16: bool = False) -> tuple[list[int], list[dict]]:
    """k source layers by greedy removal over the calibration windows [B, seq_len] (module docstring) -> (the kept
    layers, sorted; the trace: per removal the layer removed and the loss after it)."""
    n = teacher.last - teacher.first
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    dec, pos, mem, logp = _targets(teacher, windows, bf16)
    keep = list(range(n))
    trace = [{"removed": None, "loss": round(_loss(teacher, keep, dec, pos, mem, logp, bf16), 5)}]
    total = (n + k + 1) * (n - k) // 2
    with bar(total, "encdec: greedy layer search") as pb:
        while len(keep) > k:
            best = None
            for j in keep:
                trial = [i for i in keep if i != j]
                loss = _loss(teacher, trial, dec, pos, mem, logp, bf16)
                if best is None or loss < best[1]:
                    best = (j, loss)
                pb.update(1)
            keep.remove(best[0])
            trace.append({"removed": best[0], "loss": round(best[1], 5)})
            log.info("greedy layer search: removed layer %d, loss %.4f, %d left", best[0], best[1], len(keep))
    return keep, trace
