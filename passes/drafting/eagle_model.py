"""The EAGLE drafter's graph (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"; input norms as in EAGLE-3): one decoder layer that reads the target's own last hidden state.

At position t it takes the target's hidden state f_t (the residual stream after the last layer, before the
final norm) and the embedding of token t+1, mixes them with a linear 2C -> C, runs one decoder layer and
returns its estimate of f_{t+1} together with the target's final norm and a reduced-vocabulary head over it:

    input_ids [B,T] (token t+1), hidden_in [B,T,C] (f_t), position_ids [B,T], attention_mask [B,P+T],
    past_key.0 / past_value.0 [B,P,H,D]
 -> logits [B,T,S], hidden_out [B,T,C] (f^_{t+1}), new_key.0 / new_value.0 [B,T,H,D]

The drafter feeds its own hidden_out back for the next draft position. Everything that reads a hidden state
(the input norm here, the final norm before the head) is scale invariant, so the estimate is trained on its
direction (eagle_train.py). The embedding table and the final norm are the target's (frozen); the head is a
copy of the target's head rows for the S most frequent calibration tokens; fc, the two input norms and the
layer (a copy of one of the target's layers) train.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ...compiler import graph as contract
from ...models.adapter import ArchAdapter
from ..export.decoder_graph import DecoderGraph
from .drafter_model import ExitModel


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class EagleGraph(nn.Module):
    """The EAGLE draft graph (contract role "eagle_draft"); exports like a DecoderGraph."""

    first, last = 0, 1
    input_kind, output_kind = "ids+hidden", "both"

    def __init__(self, model: nn.Module, adapter: ArchAdapter, vocab_ids: np.ndarray | None, init_from: int):
        super().__init__()
        C = adapter.hidden_size
        self.body = ExitModel(model, adapter, 0, init_from, vocab_ids)
        self.layer = DecoderGraph(self.body, ArchAdapter(self.body), layers=(0, 1), input="hidden", output="both")
        self.embed = adapter.embed
        self.embed_scale = (math.sqrt(C) if adapter.family.embed_scale and not hasattr(adapter.embed, "embed_scale")
                            else None)
        self.norm_embed, self.norm_hidden = RMSNorm(C), RMSNorm(C)
        self.fc = nn.Linear(2 * C, C, bias=False)
        with torch.no_grad():               # start by passing the state through, plus a random token mix
            self.fc.weight[:, C:].copy_(torch.eye(C))
        self.vocab_ids = vocab_ids
        self.hidden_size, self.vocab = C, self.layer.vocab
        self.kv_heads, self.head_dim = self.layer.kv_heads, self.layer.head_dim

    def input_names(self) -> list[str]:
        return contract.input_names(1, 0, self.input_kind)

    def output_names(self) -> list[str]:
        return contract.output_names(1, 0, self.output_kind)

    def trainable(self) -> list[nn.Parameter]:
        return [*self.fc.parameters(), *self.norm_embed.parameters(), *self.norm_hidden.parameters(),
                *self.body.trainable()]

    def mix(self, input_ids: torch.Tensor, hidden_in: torch.Tensor) -> torch.Tensor:
        e = self.embed(input_ids)
        if self.embed_scale is not None:
            e = e * torch.tensor(self.embed_scale, dtype=e.dtype)
        return self.fc(torch.cat((self.norm_embed(e), self.norm_hidden(hidden_in)), dim=-1))

    def forward(self, input_ids, hidden_in, position_ids, attention_mask, past_key, past_value):
        return self.layer(self.mix(input_ids, hidden_in), position_ids, attention_mask, past_key, past_value)

    def empty_cache(self, batch: int, length: int = 0, dtype=torch.float32, device=None) -> list[torch.Tensor]:
        return self.layer.empty_cache(batch, length, dtype, device)


def target_graph(model: nn.Module, adapter: ArchAdapter, scores: bool = False) -> DecoderGraph:
    """The target as the EAGLE runtime verifies with it (role "eagle_target"): logits and its last hidden state
    (with `scores`, also the attention each cache slot received: the graph then runs over a fixed-size cache)."""
    return DecoderGraph(model, adapter, output="both", scores=scores).eval()


def default_init_layer(num_layers: int) -> int:
    """The target layer the drafter's layer starts as a copy of: the last one (it maps states near f_t)."""
    return num_layers - 1
