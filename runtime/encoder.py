"""An encoder-decoder artifact's encoder at run time (passes/encdec/, docs/passes/encdec.md).

A prompt of n tokens is split as the model was trained: the encoder graph reads its first n - 1 tokens at once,
bidirectionally (positions 0..n-2), and writes each decoder layer's memory (keys and values) into the decoder's
cache; the decoder then runs the prompt's last token at position n - 1 and generates as any decoder does, its
queries attending over [memory ; its own tokens]. Only a prompt fed to an empty cache is encoded; later turns of a
chat go through the decoder. A static encoder (npu) takes at most its fixed length: a longer prompt's remaining
tokens go through the decoder's prefill. The memory depends on every prompt token, so the cache cannot be rolled
back into it: KVCache.floor marks its end (generate and chat then start over).
"""
from __future__ import annotations

import numpy as np

from ..compiler.graph import encoder_input_names, encoder_output_names, record_dim, INPUT_IDS
from .backends.named import NamedGraph


class EncoderRunner:
    def __init__(self, path, backend: str, device: str, threads: int, rec: dict, layers: int):
        self.length = record_dim(rec, INPUT_IDS, 1) if rec.get("static") else None     # static: the fixed T
        self.graph = NamedGraph(path, backend, device, threads, encoder_input_names(), encoder_output_names(layers),
                                "the encoder graph")
        if self.length:
            self.ids = np.zeros((1, self.length), np.int64)
            self.pos = np.arange(self.length, dtype=np.int64)[None]
            self.mask = np.zeros((1, self.length), np.int64)

    def encode(self, state, ids: np.ndarray) -> int:
        """Encode ids [n] (n >= 1) into the empty cache of a DecodeState (runtime/decode.py); -> the number of tokens
        encoded (all, or the static length). A stateful OpenVINO decoder gets the memory as its KV states."""
        cache = state.cache
        n = ids.shape[0] if not self.length else min(ids.shape[0], self.length)
        if self.length:
            self.ids[0, :n] = ids[:n]
            self.ids[0, n:] = 0
            self.mask[0, :n] = 1
            self.mask[0, n:] = 0
            memory = self.graph(self.ids, self.pos, self.mask)
        else:
            memory = self.graph(ids[None], np.arange(n, dtype=np.int64)[None], np.ones((1, n), np.int64))
        if state.stateful:
            state.prefiller.write_states([m[:, :n] for m in memory])
            cache.advance(n)
        else:
            cache.append(memory, n)
        cache.floor = n
        return n
