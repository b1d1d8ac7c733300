"""The token loop's two steps as plain functions over preallocated state (gpt-fast style).

    state = DecodeState(artifact, capacity)     # cache [1, capacity, H, D] per layer + input buffers
    logits = prefill(state, prompt_ids)         # [V] logits of the last prompt token
    logits = decode_one(state, token)           # [V] logits after one more token

Dynamic graphs get a prefix of the cache (a no-copy view). In decode_one that prefix is rounded up to
a multiple of BUCKET slots with the unfilled ones masked out: the graph's input shapes then change
once per BUCKET tokens instead of every token (OpenVINO re-prepares shape-dependent kernels on every
new shape: measured about 18% of a SmolLM2-135M decode step), for attention over < BUCKET extra
masked slots.
Static graphs (NPU) always get the whole fixed-length cache and a mask of its valid slots; prefill
runs in fixed chunks (the last one padded, its padding masked out and never written to the cache).
Stateful OpenVINO graphs (the CPU default, backends/openvino.py) keep the cache in the infer request: the
runtime's KVCache only counts positions, every call passes the past length (the backend trims its
states after a rollback) and an all-ones mask of the visible length; no buckets are needed.
Returned logits may be views of backend buffers, valid until the next call.
"""
from __future__ import annotations

import numpy as np

from ..compiler.errors import InputError
from .kv_cache import KVCache, static_mask

BUCKET = 64


class DecodeState:
    def __init__(self, art, capacity: int):
        if art.static:
            if capacity > art.cache_len:
                raise InputError(f"{capacity} tokens do not fit the artifact's static KV cache of {art.cache_len} "
                                 "(shorten the prompt or --max-new-tokens, or compile with a larger --cache-len)")
            capacity = art.cache_len
        self.art = art
        self.static = art.static
        self.encoder = getattr(art, "encoder", None)      # an encoder-decoder's encoder (runtime/encoder.py)
        runner = art.runners["decoder"] if not art.static else None
        self.stateful = bool(getattr(runner, "stateful", False))
        self.cache = KVCache(art.layers, capacity, art.kv_heads, art.head_dim, allocate=not self.stateful)
        chunk = art.prefill_chunk or 1
        self.mask = np.ones((1, capacity + chunk), dtype=np.int64)      # dynamic: sliced; static: rewritten
        self.tok = np.zeros((1, 1), dtype=np.int64)
        self.pos = np.zeros((1, 1), dtype=np.int64)
        if self.static:
            self.decoder = art.runners["decode"]
            self.prefiller = art.runners["prefill"]
            self.chunk_ids = np.zeros((1, chunk), dtype=np.int64)
            self.chunk_pos = np.zeros((1, chunk), dtype=np.int64)
        else:
            self.decoder = self.prefiller = art.runners["decoder"]

    @property
    def length(self) -> int:
        return self.cache.length


def _static_mask(state: DecodeState, n_new: int, width: int) -> np.ndarray:
    """[1, C + width]: cache slots [0, L) and the first n_new of `width` new tokens are visible."""
    C = state.cache.capacity
    return static_mask(state.mask[:, :C + width], C, state.cache.length, n_new)


def prefill(state: DecodeState, ids, all_logits: bool = False) -> np.ndarray:
    """Feed prompt tokens ids [T] after what the cache holds. -> logits [V] of the last token
    (a copy), or [T, V] of every token with all_logits (an encoder-decoder's prompt: of the tokens the decoder ran,
    the prompt's last one when the encoder took the rest)."""
    if getattr(state, "fixed", False):          # a fixed-size cache (runtime/fixed_cache.py)
        return state.prefill(ids, all_logits)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    T = ids.shape[0]
    if T == 0:
        raise InputError("empty prompt")
    cache = state.cache
    cache.check_room(T)
    if state.encoder is not None and cache.length == 0 and T > 1:     # encoder-decoder: runtime/encoder.py
        ids = ids[state.encoder.encode(state, ids[:-1]):]
        T = ids.shape[0]
    if state.stateful:
        if all_logits and state.prefiller.last_logits_only:
            raise InputError("this artifact was opened for generation (last-token logits only): "
                             "open it with full_logits=True for every position's logits")
        P = cache.length
        # a backend that computes only the rows asked for takes all_logits (the OpenVINO graph's rows are fixed
        # when it is opened)
        rows = {"all_logits": all_logits} if getattr(state.prefiller, "rows_on_request", False) else {}
        logits = state.prefiller.forward_stateful(ids[None], np.arange(P, P + T, dtype=np.int64)[None],
                                                  state.mask[:, :P + T], P, **rows)
        cache.advance(T)
        return np.array(logits[0]) if all_logits else np.array(logits[0, -1])
    if not state.static:
        P = cache.length
        mask = state.mask[:, :P + T]
        mask[:] = 1
        logits, new_kv = state.prefiller.forward(ids[None], np.arange(P, P + T, dtype=np.int64)[None], mask,
                                                 cache.views())
        cache.append(new_kv)
        return np.array(logits[0]) if all_logits else np.array(logits[0, -1])
    chunk = state.chunk_ids.shape[1]
    rows = []
    for s in range(0, T, chunk):
        part = ids[s:s + chunk]
        n = part.shape[0]
        L = cache.length
        state.chunk_ids[0, :n] = part
        state.chunk_ids[0, n:] = 0
        state.chunk_pos[0] = np.arange(L, L + chunk)
        logits, new_kv = state.prefiller.forward(state.chunk_ids, state.chunk_pos, _static_mask(state, n, chunk),
                                                 cache.full())
        cache.append(new_kv, n)
        if all_logits or s + chunk >= T:
            rows.append(np.array(logits[0, :n]))
    return np.concatenate(rows) if all_logits else rows[-1][-1]


def decode_one(state: DecodeState, token: int) -> np.ndarray:
    """Feed one token; -> logits [V] (a view valid until the next call)."""
    if getattr(state, "fixed", False):
        return state.decode_one(token)
    cache = state.cache
    L = cache.length
    cache.check_room(1)
    state.tok[0, 0] = token
    state.pos[0, 0] = L
    if state.stateful:
        logits = state.decoder.forward_stateful(state.tok, state.pos, state.mask[:, :L + 1], L)   # mask: all ones
        cache.advance(1)
        return logits[0, -1]
    if state.static:
        logits, new_kv = state.decoder.forward(state.tok, state.pos, _static_mask(state, 1, 1), cache.full())
    else:
        Pb = min(-(-L // BUCKET) * BUCKET, cache.capacity)       # >= L + 1 <= capacity: room was checked
        mask = state.mask[:, :Pb + 1]
        mask[0, :L] = 1
        mask[0, L:Pb] = 0
        mask[0, Pb] = 1
        logits, new_kv = state.decoder.forward(state.tok, state.pos, mask, cache.views(Pb))
    cache.append(new_kv, 1)
    return logits[0, -1]
