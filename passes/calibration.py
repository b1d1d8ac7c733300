"""Layer-by-layer calibration capture, shared by the pruning passes (CFSP, Wanda, DSnoT).

The model's decoder layers are run one at a time on the calibration hidden states, as Wanda and
DSnoT do: the inputs of layer i are the outputs of layers 0..i-1 *as they are when layer i is
reached*, so a pass that prunes inside `on_layer` feeds the already-pruned outputs forward.
Per-input-channel statistics of chosen Linear modules are gathered with forward hooks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..compiler.errors import InputError
from ..compiler.pass_base import Pass, PassConfig
from ..compiler.progress import bar

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 32    # 32 x 256 tokens: the real model's pass stays within minutes on 2 cores
DEFAULT_SEQLEN = 256


@dataclass(frozen=True)
class CalibrationConfig(PassConfig):
    """The calibration options every calibrated pass shares: spec keys samples, seqlen, seed; --calib."""
    samples: int = DEFAULT_SAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0
    calib: str | None = None

    def check_calibration(self, who: str) -> None:
        if self.samples < 1 or self.seqlen < 2:
            raise InputError(f"{who}: samples >= 1 and seqlen >= 2 are required, got {self.samples}, {self.seqlen}")


class CalibratedPass(Pass):
    """A pass that draws its calibration windows (when `needs_data()`) and hands them to `prune(bundle, ids)`."""

    def needs_data(self) -> bool:
        return self.config.ratio > 0

    def call(self, bundle):
        c = self.config
        ids = calibration_ids(bundle, c.samples, c.seqlen, c.seed, c.calib) if self.needs_data() else None
        return self.prune(bundle, ids)


def calibration_ids(bundle, samples: int = DEFAULT_SAMPLES, seqlen: int = DEFAULT_SEQLEN, seed: int = 0,
                    path: str | None = None) -> torch.Tensor:
    """[samples, seqlen] token windows from the Brown calibration split (or the user's --calib file)."""
    from ..models.corpus import calibration_batches
    return calibration_batches(bundle.tokenizer, n_samples=samples, seq_len=seqlen, seed=seed, path=path)


class InputStats:
    """Running per-input-channel statistics of a Linear's input: token count, sum x, sum x^2, and
    sum over windows of (window sum x)^2 / window length (so `window_var`, the mean within-window variance).

    With `skip` > 0 the first `skip` positions of every window are also summed apart, so `tail()`
    gives the statistics of the later positions alone (DSnoT's `skip` option). With `gram` it also
    sums x x^T (products in float32, sums in float64): `gram_mean` is E[x x^T].
    """

    def __init__(self, columns: int, skip: int = 0, gram: bool = False):
        self.tokens = 0
        self.sum = torch.zeros(columns, dtype=torch.float64)
        self.sumsq = torch.zeros(columns, dtype=torch.float64)
        self.xtx = torch.zeros(columns, columns, dtype=torch.float64) if gram else None
        self.between = torch.zeros(columns, dtype=torch.float64)        # sum_w T_w mean_w^2
        self.tail_between = torch.zeros(columns, dtype=torch.float64)   # the same over positions >= skip (skip > 0)
        self.skip = skip
        self.head: InputStats | None = InputStats(columns, gram=gram) if skip else None

    def add(self, x: torch.Tensor) -> None:
        """x [windows, T, C] (or [tokens, C]: one window)."""
        if self.head is not None and x.dim() >= 3:
            self.head.add(x[:, :self.skip])
        w = x.detach().reshape(-1, x.shape[-2], x.shape[-1]).to(torch.float64)       # [windows, T, C]
        self.between += (w.sum(1) ** 2).sum(0) / w.shape[1]
        if self.skip and w.shape[1] > self.skip:
            t = w[:, self.skip:]
            self.tail_between += (t.sum(1) ** 2).sum(0) / t.shape[1]
        x = x.detach().reshape(-1, x.shape[-1])
        if self.xtx is not None:
            xf = x.float()
            self.xtx += (xf.T @ xf).double()
        x = x.to(torch.float64)
        self.tokens += x.shape[0]
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)

    def tail(self) -> "InputStats":
        """Statistics of the positions from `skip` on (self when skip is 0)."""
        if self.head is None:
            return self
        out = InputStats(self.sum.numel())
        out.tokens = self.tokens - self.head.tokens
        out.sum = self.sum - self.head.sum
        out.sumsq = self.sumsq - self.head.sumsq
        out.xtx = None if self.xtx is None else self.xtx - self.head.xtx
        out.between = out.tail_between = self.tail_between
        return out

    @property
    def gram_mean(self) -> torch.Tensor:     # E[x x^T] (needs gram=True)
        return (self.xtx / max(self.tokens, 1)).float()

    @property
    def mean(self) -> torch.Tensor:          # E[x_j]
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def sq_mean(self) -> torch.Tensor:       # E[x_j^2]; sqrt of it is Wanda's ||X_j|| up to a constant
        return (self.sumsq / max(self.tokens, 1)).float()

    @property
    def var(self) -> torch.Tensor:           # Var[x_j] over all calibration tokens
        m = self.sum / max(self.tokens, 1)
        return (self.sumsq / max(self.tokens, 1) - m * m).clamp_min(0).float()

    @property
    def window_var(self) -> torch.Tensor:    # token-weighted mean over windows of Var[x_j] within the window
        return ((self.sumsq - self.between) / max(self.tokens, 1)).clamp_min(0).float()


class _Stop(Exception):
    pass


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_inputs(model, layers: nn.ModuleList, ids: torch.Tensor, chunk: int):
    """-> (layer-0 hidden states per chunk, keyword arguments each layer is called with).

    The keyword arguments (masks, rotary embeddings, positions) are recorded from one batch-1
    forward, so they broadcast over any batch of equal-length windows; each layer gets its own
    (Gemma-2/3 alternate sliding and global layers).
    """
    kwargs_of: list[dict] = [{} for _ in layers]

    def record(i):
        def hook(_mod, args, kwargs):
            kwargs_of[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return hook

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model(input_ids=ids[:1], use_cache=False)
    finally:
        for h in handles:
            h.remove()

    hidden: list[torch.Tensor] = []

    def catch(_mod, args, kwargs):
        hidden.append((args[0] if args else kwargs["hidden_states"]).detach().clone())
        raise _Stop

    h = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for s in range(0, ids.shape[0], chunk):
            try:
                model(input_ids=ids[s:s + chunk], use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    return hidden, kwargs_of


@dataclass
class LayerRun:
    """What `on_layer` sees for decoder layer `index`."""

    index: int
    layer: nn.Module
    inputs: list[torch.Tensor]            # hidden states entering the layer, per chunk [b, T, hidden]
    outputs: list[torch.Tensor]           # what the layer returned before on_layer ran
    stats: dict[str, InputStats]          # per hooked Linear (by the name linears_of gave it)


def _run_layer(layer, inputs, kwargs) -> list[torch.Tensor]:
    return [_first_tensor(layer(x, **kwargs)).detach() for x in inputs]


@torch.no_grad()
def run_layerwise(model, layers: nn.ModuleList, ids: torch.Tensor,
                  linears_of: Callable[[int], dict[str, nn.Linear]],
                  on_layer: Callable[[LayerRun], bool], chunk: int = 8, desc: str = "calibration",
                  skip: int = 0, gram: Callable[[str], bool] | None = None) -> None:
    """Run the decoder layer by layer on `ids` [N, T].

    For each layer: hook the Linear modules `linears_of(i)` names, run the layer on every chunk,
    then call `on_layer(run)` (its stats also sum the first `skip` positions of every window apart:
    InputStats.tail; E[x x^T] too for the names `gram` accepts). If it returns True (it changed the layer), the layer is run again so
    the next layer sees the changed outputs; either way those outputs become the next inputs.
    """
    was_training = model.training
    model.eval()
    inputs, kwargs_of = capture_inputs(model, layers, ids, chunk)
    with bar(len(layers), desc) as pb:
        for i, layer in enumerate(layers):
            linears = linears_of(i)
            stats = {name: InputStats(lin.in_features, skip, bool(gram and gram(name))) for name, lin in linears.items()}
            handles = [lin.register_forward_hook(lambda _m, inp, _o, s=stats[name]: s.add(inp[0]))
                       for name, lin in linears.items()]
            try:
                outputs = _run_layer(layer, inputs, kwargs_of[i])
            finally:
                for h in handles:
                    h.remove()
            if on_layer(LayerRun(i, layer, inputs, outputs, stats)):
                outputs = _run_layer(layer, inputs, kwargs_of[i])
            inputs = outputs
            pb.update(1)
    model.train(was_training)
