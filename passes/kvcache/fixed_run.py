"""A sequence fed chunk by chunk through the torch decoder graph with a fixed-size cache: the reference the exported
fixed-cache graphs are validated against, the loop LoCoCo's compressors are trained in, and the `--context`
perplexity protocol in torch.

Before a chunk of T tokens attends to a cache of P slots, a cache of kind window/sink/h2o/lococo with P + T >
M + buffer and P > M is cut to exactly M (passes/kvcache/policies.py; LoCoCo: lococo.py); the chunk then attends
to [cache ; itself] (causal among itself) at its absolute positions, and its keys and values are appended. Scores
for the cut: h2o accumulates each slot's attention over every call that saw it (H2O); lococo uses the last call's
(the reference's). A full cache is never cut.
"""
from __future__ import annotations

import torch

from .policies import KVCacheSpec, gather_slots, select


class FixedCacheRun:
    def __init__(self, graph, spec: KVCacheSpec, compressors=None):
        if not graph.scores:
            raise ValueError("the fixed-cache run needs a DecoderGraph built with scores=True")
        if spec.kind == "lococo" and (compressors is None or len(compressors) != graph.last - graph.first):
            raise ValueError("a lococo cache needs one compressor per layer")
        self.graph, self.spec, self.compressors = graph, spec, compressors
        self.layers = graph.last - graph.first
        self.reset()

    def reset(self) -> None:
        self.device = next(self.graph.parameters()).device       # the graph's (a training may run on a GPU)
        self.cache = self.graph.empty_cache(1, device=self.device)
        self.scores = [torch.zeros(1, self.graph.kv_heads, 0, device=self.device) for _ in range(self.layers)]
        self.pos = 0
        self.cuts = 0

    @property
    def slots(self) -> int:
        return self.cache[0].shape[1]

    def _cut(self) -> None:
        for j in range(self.layers):
            k, v, s = self.cache[2 * j], self.cache[2 * j + 1], self.scores[j]
            if self.spec.kind == "lococo":
                k, v = self.compressors[j](k, v, s)
                s = torch.zeros(1, s.shape[1], k.shape[1], device=s.device)
            else:
                idx = select(self.spec, s)
                k, v, s = gather_slots(k, idx), gather_slots(v, idx), torch.gather(s, 2, idx)
            self.cache[2 * j], self.cache[2 * j + 1], self.scores[j] = k, v, s
        self.cuts += 1

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [1, T] -> logits [1, T, V] (the cache is cut first when it must be)."""
        T = ids.shape[1]
        sp = self.spec
        if sp.fixed and self.slots > sp.slots and self.slots + T > sp.slots + sp.buffer:
            self._cut()
        P = self.slots
        pos = torch.arange(self.pos, self.pos + T, device=ids.device)[None]
        mask = torch.ones(1, P + T, dtype=torch.long, device=ids.device)
        out = self.graph(ids, pos, mask, *self.cache)
        n = 2 * self.layers
        logits, new, cols = out[0], out[1:1 + n], out[1 + n:1 + 2 * n]
        for j in range(self.layers):
            self.cache[2 * j] = torch.cat((self.cache[2 * j], new[2 * j]), dim=1).detach()
            self.cache[2 * j + 1] = torch.cat((self.cache[2 * j + 1], new[2 * j + 1]), dim=1).detach()
            col = cols[j].detach()
            if sp.kind == "h2o":
                prev = self.scores[j]
                col = col + torch.cat((prev, torch.zeros(*prev.shape[:2], T, device=prev.device)), dim=-1)
            self.scores[j] = col
        self.pos += T
        return logits

