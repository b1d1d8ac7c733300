"""Step models for speculative decoding (runtime/speculative/loop.py) built from explicit-cache graphs.

A graph function follows the graph contract (docs/architecture.md), on numpy arrays:
    fn(inputs [1,T] ids or [1,T,C] hidden, position_ids [1,T], attention_mask [1,P+T], past list of [1,P,H,D])
        -> (logits [1,T,V] or hidden [1,T,C], list of new key/value [1,T,H,D])
A graph with several leading inputs or outputs (EAGLE's: ids and hidden in, logits and hidden out) takes and
returns tuples in their place.
or, for a stateful graph (`fn.stateful` true; runtime/speculative/openvino.py), (output, None): the graph keeps its
own cache, reads the past length from the mask, and the caller's KVCache (allocate=False) only counts.
Backends (ONNX Runtime, OpenVINO) and torch DecoderGraph modules (`torch_graph_fn`) both provide one.

- GraphStep: a whole decoder (ids -> logits) with its own preallocated cache.
- SharedTrunk + FusedDraftStep + FusedTargetStep: the fused self-speculative drafter. The trunk
  (layers [0, L)) runs once per token and keeps its KV cache and its output hidden states; the drafter
  adds its exit layer + norm + (reduced) head, the target adds layers [L, N). Verification therefore
  only computes the trunk for the one draft token the drafter never fed, then the tail.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..kv_cache import KVCache, static_mask

GraphFn = Callable[..., tuple[np.ndarray, list[np.ndarray]]]


def _positions(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    pos = np.arange(start, start + n, dtype=np.int64)[None]                    # [1, T]
    mask = np.ones((1, start + n), dtype=np.int64)                             # [1, P+T]
    return pos, mask


class StaticGraph:
    """Fixed-shape graphs of one model (`--target npu`: T = width new tokens over the whole cache of its fixed
    length; one graph per width) behind the contract's call: n new tokens run in windows, each on the narrowest
    graph that holds what is left (else the widest), padded; each call gets the whole cache buffers and a mask
    [1, capacity + width] marking the filled slots and the real new tokens (as decode.py feeds the static
    decoder); only the real rows' outputs and new keys / values are kept."""

    static = True

    def __init__(self, fns: dict[int, GraphFn]):
        self.fns = {int(w): fn for w, fn in sorted(fns.items())}

    @property
    def width(self) -> int:
        return max(self.fns)

    def _pick(self, left: int) -> int:
        return next((w for w in self.fns if w >= left), self.width)

    def run(self, inputs, cache: KVCache):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        n, C = xs[0].shape[1], cache.capacity
        outs = []
        a = 0
        while a < n:
            W = self._pick(n - a)
            m = min(W, n - a)
            chunk = tuple(np.concatenate([x[:, a:a + m], np.zeros((1, W - m, *x.shape[2:]), x.dtype)], axis=1)
                          if m < W else x[:, a:a + W] for x in xs)
            L = cache.length
            pos = np.arange(L, L + W, dtype=np.int64)[None]
            mask = static_mask(np.zeros((1, C + W), dtype=np.int64), C, L, m)
            out, new_kv = self.fns[W](chunk if len(chunk) > 1 else chunk[0], pos, mask, cache.full())
            cache.append([kv[:, :m] for kv in new_kv], m)
            outs.append(tuple(np.array(o[:, :m]) for o in out) if isinstance(out, tuple) else np.array(out[:, :m]))
            a += m
        if isinstance(outs[0], tuple):
            return tuple(np.concatenate(parts, axis=1) for parts in zip(*outs))
        return np.concatenate(outs, axis=1)


def _run(fn: GraphFn, cache: KVCache, inputs):
    """Run fn on inputs [1, T, ...] (or a tuple of them) after the cache's content; append the new KV; -> out[0]
    (or a tuple of the outputs' [0])."""
    n = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[1]
    cache.check_room(n)
    if getattr(fn, "static", False):     # a fixed-shape graph: windows of its width over the whole cache
        out = fn.run(inputs, cache)
        return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]
    pos, mask = _positions(cache.length, n)
    out, new_kv = fn(inputs, pos, mask, cache.views())
    if new_kv is None:                   # a stateful graph appended to its own states (speculative/openvino.py)
        cache.advance(n)
    else:
        cache.append(list(new_kv), n)
    if isinstance(out, tuple):
        return tuple(np.array(o[0]) for o in out)
    return np.array(out[0])              # a copy: backends may reuse their output buffers


class GraphStep:
    """A whole decoder graph (ids -> logits) as a step model."""

    def __init__(self, fn: GraphFn, cache: KVCache):
        self.fn, self.cache = fn, cache

    @property
    def length(self) -> int:
        return self.cache.length

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        return _run(self.fn, self.cache, np.asarray([list(tokens)], dtype=np.int64))

    def truncate(self, length: int) -> None:
        self.cache.rollback(length)


class SharedTrunk:
    """Layers [0, L): KV cache plus the hidden state each cached token left at layer L."""

    def __init__(self, fn: GraphFn, cache: KVCache, hidden_size: int):
        self.fn, self.cache = fn, cache
        self.hidden = np.zeros((cache.capacity, hidden_size), dtype=np.float32)
        self.tokens = np.full(cache.capacity, -1, dtype=np.int64)
        self.computed = 0        # trunk tokens computed in total (to measure the sharing)

    @property
    def length(self) -> int:
        return self.cache.length

    def hidden_for(self, tokens: Sequence[int], start: int) -> np.ndarray:
        """Hidden states [T, C] of `tokens` placed at positions [start, start+T); computes what is missing."""
        tokens = np.asarray(list(tokens), dtype=np.int64)
        end = start + len(tokens)
        if start > self.length:
            raise ValueError(f"trunk holds {self.length} tokens; cannot place tokens at {start}")
        held = min(self.length, end)
        differ = np.nonzero(self.tokens[start:held] != tokens[: held - start])[0]
        if differ.size:                                    # a different continuation: drop the stale rows
            self.cache.rollback(start + int(differ[0]))
        have = self.length
        if have < end:
            h = _run(self.fn, self.cache, tokens[None, have - start:])
            self.hidden[have:end] = h
            self.tokens[have:end] = tokens[have - start:]
            self.computed += end - have
        return self.hidden[start:end]

    def truncate(self, length: int) -> None:
        self.cache.rollback(min(length, self.length))


class FusedDraftStep:
    """Drafter = trunk + exit layer + final norm + head over `vocab_ids` (None: the full vocabulary)."""

    def __init__(self, trunk: SharedTrunk, head_fn: GraphFn, head_cache: KVCache, vocab_size: int,
                 vocab_ids: np.ndarray | None = None):
        self.trunk, self.fn, self.cache = trunk, head_fn, head_cache
        self.vocab_size = vocab_size
        self.vocab_ids = None if vocab_ids is None else np.asarray(vocab_ids, dtype=np.int64)

    @property
    def length(self) -> int:
        return self.cache.length

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        h = self.trunk.hidden_for(tokens, self.length)
        logits = _run(self.fn, self.cache, h[None])                               # [T, S]
        if self.vocab_ids is None:
            return logits
        # a reduced head proposes only tokens of its set: the rest get probability 0 (logit -inf)
        full = np.full((logits.shape[0], self.vocab_size), -np.inf, dtype=np.float32)
        full[:, self.vocab_ids] = logits
        return full

    def truncate(self, length: int) -> None:
        self.cache.rollback(length)


class FusedTargetStep:
    """Target = trunk + layers [L, N). Its truncation also rolls the shared trunk back."""

    def __init__(self, trunk: SharedTrunk, tail_fn: GraphFn, tail_cache: KVCache):
        self.trunk, self.fn, self.cache = trunk, tail_fn, tail_cache

    @property
    def length(self) -> int:
        return self.cache.length

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        h = self.trunk.hidden_for(tokens, self.length)
        return _run(self.fn, self.cache, h[None])

    def truncate(self, length: int) -> None:
        self.cache.rollback(length)
        self.trunk.truncate(length)


def fused_steps(trunk: tuple[GraphFn, KVCache], head: tuple[GraphFn, KVCache], tail: tuple[GraphFn, KVCache],
                hidden_size: int, vocab_size: int, vocab_ids=None) -> tuple[FusedTargetStep, FusedDraftStep]:
    """The fused drafter's (target step, draft step) over one shared trunk: each of trunk, head and tail is
    (graph function, its cache). The one place these are wired (the artifact runtime, the drafter's torch
    training and evaluation, the speculative benchmark all call it)."""
    shared = SharedTrunk(trunk[0], trunk[1], hidden_size)
    return FusedTargetStep(shared, *tail), FusedDraftStep(shared, head[0], head[1], vocab_size, vocab_ids)


def torch_graph_fn(graph) -> GraphFn:
    """A graph function over a torch module with the contract's signature (e.g. passes.decoder_graph.DecoderGraph)."""
    import torch

    main = len(graph.output_names()) - 2 * (graph.last - graph.first)

    def fn(inputs, position_ids, attention_mask, past):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.inference_mode():
            outs = graph(*[torch.from_numpy(np.ascontiguousarray(x)) for x in xs], torch.from_numpy(position_ids),
                         torch.from_numpy(attention_mask), *[torch.from_numpy(np.ascontiguousarray(p)) for p in past])
        first = tuple(o.numpy() for o in outs[:main])
        return (first if main > 1 else first[0]), [o.numpy() for o in outs[main:]]
    return fn


def is_stateful(fn: GraphFn) -> bool:
    """True for graph functions that keep the KV cache themselves (the caller's KVCache only counts)."""
    return bool(getattr(fn, "stateful", False))


def cache_for(graph, capacity: int, fn: GraphFn | None = None) -> KVCache:
    """A cache matching a DecoderGraph's layer range: preallocated, or bookkeeping only when `fn` is stateful."""
    return KVCache(graph.last - graph.first, capacity, graph.kv_heads, graph.head_dim,
                   allocate=not (fn is not None and is_stateful(fn)))
