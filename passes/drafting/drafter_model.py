"""The fused self-speculative drafter's modules: the target's first L layers (the trunk), a trained exit
layer with the shared final norm and a (possibly reduced-vocabulary) head, and the target's layers [L, N)
(the verify tail). All three are DecoderGraph modules, so they export like the target's own graph.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ...compiler.errors import InputError
from ...models.adapter import ArchAdapter
from ..export.decoder_graph import DecoderGraph


class _Body(nn.Module):
    def __init__(self, layers: nn.ModuleList, norm: nn.Module, embed: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layers, self.norm, self.embed_tokens = layers, norm, embed
        self.rotary_emb = rotary


class ExitModel(nn.Module):
    """A one-layer causal LM in transformers' module layout: ArchAdapter and DecoderGraph read it like a model.

    layers[0] is the trainable exit layer; norm, embeddings and rotary tables are the target's own modules;
    lm_head is the target's head (full vocabulary) or a copy of its rows `vocab_ids` (reduced vocabulary).
    """

    def __init__(self, model: nn.Module, adapter: ArchAdapter, exit_layer: int, init_from: int,
                 vocab_ids: np.ndarray | None):
        super().__init__()
        cfg = copy.deepcopy(model.config)
        types = getattr(cfg, "layer_types", None)
        if types:
            cfg.layer_types = [types[init_from]]
        cfg.num_hidden_layers = 1
        self.config = cfg
        layer = copy.deepcopy(adapter.layers[init_from])
        layer.self_attn.layer_idx = 0
        head = adapter.head
        if vocab_ids is not None:
            ids = torch.as_tensor(vocab_ids, dtype=torch.long)
            head = nn.Linear(head.in_features, len(ids), bias=head.bias is not None)
            with torch.no_grad():
                head.weight.copy_(adapter.head.weight[ids])
                if head.bias is not None:
                    head.bias.copy_(adapter.head.bias[ids])
        self.model = _Body(nn.ModuleList([layer]), adapter.final_norm, adapter.embed, model.model.rotary_emb)
        self.lm_head = head
        self.exit_layer = exit_layer

    def trainable(self) -> list[nn.Parameter]:
        return list(self.model.layers[0].parameters())


@dataclass
class FusedDrafter:
    """What the fused-drafter pass attaches to the bundle (bundle.records["drafter_module"])."""

    exit_layer: int                      # L: the drafter runs layers [0, L) of the target, then its exit layer
    exit_model: ExitModel
    vocab_ids: np.ndarray | None         # the reduced head's token ids (sorted), None: full vocabulary

    def trunk_graph(self, model, adapter) -> DecoderGraph:       # ids -> hidden + KV of layers [0, L)
        return DecoderGraph(model, adapter, layers=(0, self.exit_layer), output="hidden").eval()

    def head_graph(self) -> DecoderGraph:                        # hidden -> draft logits [.., S] + exit-layer KV
        return DecoderGraph(self.exit_model, ArchAdapter(self.exit_model), layers=(0, 1), input="hidden",
                            output="logits").eval()

    def tail_graph(self, model, adapter) -> DecoderGraph:        # hidden -> logits [.., V] + KV of layers [L, N)
        return DecoderGraph(model, adapter, layers=(self.exit_layer, adapter.num_layers), input="hidden",
                            output="logits").eval()


def default_exit_layer(num_layers: int) -> int:
    return min(num_layers - 1, max(1, round(num_layers / 4)))


def check_exit_layer(layer: int, num_layers: int) -> None:
    if not 1 <= layer < num_layers:
        raise InputError(f"drafter exit layer must be in [1, {num_layers - 1}] for a {num_layers}-layer model, "
                         f"got {layer}")


def fused_steps(model, adapter: ArchAdapter, drafter: FusedDrafter, capacity: int):
    """(target step, draft step) in torch over shared-trunk caches (runtime/speculative/steps.py)."""
    from ...runtime.speculative.steps import cache_for, fused_steps, torch_graph_fn
    graphs = (drafter.trunk_graph(model, adapter), drafter.head_graph(), drafter.tail_graph(model, adapter))
    return fused_steps(*((torch_graph_fn(g), cache_for(g, capacity)) for g in graphs), adapter.hidden_size,
                       adapter.vocab_size, drafter.vocab_ids)
