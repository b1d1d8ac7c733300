"""The fixed-size KV cache at run time (issue 17; docs/runtime/kv-cache.md): M slots per layer, cut back to M
when more tokens would take it past M + buffer, so memory and per-token time stay flat however long the text.

    state = art.new_state(capacity)      # a FixedState when the artifact was compiled with --kv-cache KIND:M
    prefill(state, ids); decode_one(state, tok)     # runtime/decode.py hands fixed states to the methods here

Tokens go through the decoder graph in chunks of at most `chunk` (the artifact's prefill chunk, else the spec's
`chunk`, default 64). Before a chunk of T tokens attends to a cache of L slots, the cache is cut to exactly M when
L > M and L + T > M + buffer: window / sink / h2o select slots here (numpy); lococo runs the artifact's
compression graph (role "compress", passes/kvcache/compress_graph.py). Scores per slot come from the decoder
graph's attn_scores outputs: h2o accumulates them over every call, lococo keeps the last call's (the reference's).
Positions keep counting past the cache: token n is at position n, whatever was dropped. Every call gets the whole
buffer of capacity M + max(buffer, chunk) and a mask of the filled slots (static graphs must; dynamic ones then keep
one input shape per chunk length). Static graphs (NPU) take padded chunks of exactly `chunk` tokens, or one token.
This mirrors passes/kvcache/fixed_run.py (the torch reference the artifact is validated against).

Rollback (chat turns reusing a cached prefix): back to any length since the last cut (the slots after it are
verbatim); an earlier length resets the cache (the prompt is prefilled again). Slot scores are not rolled back.
"""
from __future__ import annotations

import sys

import numpy as np

from ..compiler.errors import ArtifactError, InputError
from ..compiler.graph import SLOT_MASK, attn_scores, compress_input_names, compress_output_names, past_key, past_value
from ..compiler.kv_spec import KVCacheSpec
from .backends.named import NamedGraph

DEFAULT_CHUNK = 64


def select_slots(spec: KVCacheSpec, scores: np.ndarray, filled: int) -> np.ndarray:
    """Slot indices [H, M] to keep (in slot order) out of the first `filled` > M slots; scores [H, >= filled]."""
    m, H = spec.slots, scores.shape[0]
    if spec.kind == "window":
        return np.broadcast_to(np.arange(filled - m, filled), (H, m))
    if spec.kind == "sink":
        idx = np.concatenate((np.arange(spec.sinks), np.arange(filled - (m - spec.sinks), filled)))
        return np.broadcast_to(idx, (H, m))
    if spec.kind == "h2o":
        top = np.argpartition(-scores[:, :filled], m - 1, axis=-1)[:, :m]
        return np.sort(top, axis=-1)
    raise ArtifactError(f"no selection rule for cache kind {spec.kind}")


class CompressRunner:
    """The compression graph on the artifact's backend (OpenVINO or ONNX Runtime)."""

    def __init__(self, path, backend: str, device: str, threads: int, layers: int):
        self.layers = layers
        self._graph = NamedGraph(path, backend, device, threads, compress_input_names(layers),
                                 compress_output_names(layers), "the fixed cache's compression graph")

    def __call__(self, slot_mask: np.ndarray, caches: list[np.ndarray]) -> list[np.ndarray]:
        return self._graph(slot_mask, *caches)


class FixedCache:
    """Buffers [1, size, H, D] per layer (key.0, value.0, ...) and per-slot scores [H, size] per layer."""

    # tokens it can take (what callers compare a generation's length with): no limit, it forgets instead
    capacity = sys.maxsize

    def __init__(self, spec: KVCacheSpec, layers: int, kv_heads: int, head_dim: int, size: int):
        self.spec, self.layers, self.size = spec, layers, size
        self.buffers = [np.zeros((1, size, kv_heads, head_dim), np.float32) for _ in range(2 * layers)]
        self.scores = [np.zeros((kv_heads, size), np.float32) for _ in range(layers)]
        self.slots = 0          # filled slots: every token adds one, a cut leaves M
        self.length = 0         # tokens seen (the next token's position)
        self.floor = 0          # tokens seen at the last cut: rollback cannot go below it
        self.cuts = 0

    def reset(self) -> None:
        self.slots = self.length = self.floor = self.cuts = 0

    def rollback(self, length: int) -> None:
        if length == self.length:
            return
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        if length < self.floor or length == 0:
            self.reset()
            return
        self.slots -= self.length - length          # one slot per token since the last cut
        self.length = length

    def cut(self, compress: CompressRunner | None) -> None:
        S, m = self.slots, self.spec.slots
        if self.spec.kind == "lococo":      # the whole buffer and a mask of its S filled slots (static graphs must)
            mask = np.zeros((1, self.size), np.int64)
            mask[0, :S] = 1
            feeds = []
            for j in range(self.layers):
                feeds += [self.buffers[2 * j], self.buffers[2 * j + 1], self.scores[j][None]]
            out = compress(mask, feeds)
            for i, o in enumerate(out):
                self.buffers[i][:, :m] = o
            for s in self.scores:
                s[:, :m] = 0.0
        else:
            for j in range(self.layers):
                idx = select_slots(self.spec, self.scores[j], S)                   # [H, M]
                for b in (self.buffers[2 * j], self.buffers[2 * j + 1]):
                    b[0, :m] = np.take_along_axis(b[0, :S], idx.T[:, :, None], axis=0)
                self.scores[j][:, :m] = np.take_along_axis(self.scores[j][:, :S], idx, axis=1)
        self.slots = m
        self.floor = self.length
        self.cuts += 1


class FixedState:
    """What runtime/decode.py's prefill / decode_one run for an artifact with a fixed cache."""

    fixed = True

    def __init__(self, art, spec: KVCacheSpec, compress: CompressRunner | None, runner=None, on_hidden=None):
        """runner: a backend over another graph of the artifact with the decoder's cache (the EAGLE target, whose
        outputs start with hidden_out: on_hidden(position, rows [T, C]) hears each call's hidden states)."""
        if spec.kind == "lococo" and compress is None:
            raise ArtifactError("this lococo artifact has no compression graph")
        self.art, self.spec, self.compress = art, spec, compress
        self.static = bool(art.static)
        if runner is not None and self.static:
            raise ArtifactError("a fixed cache over static graphs runs the artifact's own decode / prefill graphs")
        self.runner = runner or (art.runners["decoder"] if not self.static else None)
        self.on_hidden = on_hidden
        self.chunk = int(art.prefill_chunk or spec.options.get("chunk", DEFAULT_CHUNK))
        capacity = art.cache_len if self.static else spec.slots + max(spec.buffer, self.chunk)
        if capacity < spec.slots + max(spec.buffer, self.chunk):
            raise ArtifactError(f"the static cache ({capacity} slots) cannot hold {spec} with buffer {spec.buffer}")
        self.cache = FixedCache(spec, art.layers, art.kv_heads, art.head_dim, capacity)
        self.mask = np.ones((1, capacity + self.chunk), np.int64)
        self.ids = np.zeros((1, self.chunk), np.int64)
        self.pos = np.zeros((1, self.chunk), np.int64)

    @property
    def length(self) -> int:
        return self.cache.length

    def room(self) -> int:
        """New tokens the next call can take and leave the cache as the same tokens fed one at a time would: one
        token at a time, a cut comes when the cache holds M + buffer slots, so a call must not run past that point
        (a cut due now is made first). Speculative decoding caps its drafts by it, so its rounds cut where plain
        decoding cuts (runtime/speculative/loop.py)."""
        c, sp = self.cache, self.spec
        edge = sp.slots + sp.buffer
        return sp.buffer if c.slots >= edge else edge - c.slots

    def _call(self, ids: np.ndarray) -> np.ndarray:
        """ids [T] (T <= chunk) after the cache (cut first when it must be) -> logits [T, V] (a copy)."""
        c, sp = self.cache, self.spec
        T = ids.shape[0]
        if c.slots > sp.slots and c.slots + T > sp.slots + sp.buffer:
            c.cut(self.compress)
        L, n = c.slots, 2 * c.layers
        # every call gets the whole buffer and a mask of its filled slots: the graph's input shapes stay fixed
        # (OpenVINO prepares kernels per shape), at the cost of attending over < buffer + chunk masked slots
        if self.static:
            runner = self.art.runners["decode" if T == 1 else "prefill"]
            W = 1 if T == 1 else self.chunk
        else:
            runner, W = self.runner, T
        ids_in, pos_in = self.ids[:, :W], self.pos[:, :W]
        ids_in[0, :T], ids_in[0, T:] = ids, 0
        pos_in[0] = np.arange(c.length, c.length + W)
        mask = self.mask[:, :c.size + W]
        mask[:] = 0
        mask[0, :L] = 1
        mask[0, c.size:c.size + T] = 1
        logits, outs = runner.forward(ids_in, pos_in, mask, c.buffers)
        if len(outs) == 3 * c.layers + 1:                                   # hidden_out first (an EAGLE target)
            if self.on_hidden is not None:
                self.on_hidden(c.length, outs[0][0, :T])
            outs = outs[1:]
        if len(outs) != 3 * c.layers:
            raise ArtifactError("the decoder graph has no attn_scores outputs (not compiled with a fixed cache)")
        for i in range(n):
            c.buffers[i][:, L:L + T] = outs[i][:, :T]
        for j in range(c.layers):
            col = outs[n + j][0]                                            # [H, P + W]
            s = c.scores[j]
            if sp.kind == "h2o":
                s[:, :L] += col[:, :L]
            else:
                s[:, :L] = col[:, :L]
            s[:, L:L + T] = col[:, c.size:c.size + T]                       # the new tokens' columns
        c.slots = L + T
        c.length += T
        return np.array(logits[0, :T])

    def prefill(self, ids, all_logits: bool = False) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.shape[0] == 0:
            raise InputError("empty prompt")
        rows, last = [], None
        for s in range(0, ids.shape[0], self.chunk):
            last = self._call(ids[s:s + self.chunk])
            if all_logits:              # otherwise only the last chunk's logits are kept (a long prompt's would
                rows.append(last)       # be prompt x vocab floats)
        return np.concatenate(rows) if all_logits else last[-1]

    def decode_one(self, token: int) -> np.ndarray:
        return self._call(np.array([token], np.int64))[-1]
