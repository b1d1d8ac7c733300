"""Building the encoder-decoder from a decoder-only model, and its torch forward.

Merged attention with layer-aligned memory (docs/passes/encdec.md): decoder layer j, taken from source layer s_j,
attends over [the encoder's keys/values of layer s_j over the prompt ; its own cache] with one set of q/k/v/o
weights, no new parameters. The encoder is a copy of the source's layers [0, max s_j] with bidirectional attention;
the decoder is the source model with its layers reduced to s_0 < s_1 < ... (all of them when balanced). Embeddings
and the tied head are shared by both. RoPE positions: the encoder's run 0..P-1 over the prompt's first P tokens,
the decoder's continue from P (its first input is the prompt's last token). Made causal, the balanced conversion
is therefore the source model exactly (the construction check in tests/passes/test_encdec.py).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ...compiler.errors import InputError
from ...models.adapter import ArchAdapter
from ..export.decoder_graph import DecoderGraph


def pick_layers(n: int, k: int, how: str) -> list[int]:
    """k of n source layers for the decoder (sorted): ends (the first round(k/5), at least 1, and the last ones),
    spread evenly (first and last included), the last k, the first k."""
    if not 1 <= k <= n:
        raise InputError(f"--convert encdec: decoder_layers must be between 1 and the model's {n} layers, got {k}")
    if how == "ends":
        head = min(k - 1, max(1, round(k / 5))) if k > 1 else 0
        return list(range(head)) + list(range(n - (k - head), n))
    if how == "greedy":
        if k < n:
            raise ValueError(f"pick=greedy chooses its {k} layers by measurement (passes/encdec/pick.py): pass layers=")
        return list(range(n))
    if how == "last":
        return list(range(n - k, n))
    if how == "first":
        return list(range(k))
    if k == 1:
        return [n - 1]
    return sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})


def _keep_layers(model: nn.Module, idx: list[int]) -> None:
    """Reduce a transformers causal LM to its layers `idx` (in order), config included."""
    layers = list(model.model.layers)
    model.model.layers = nn.ModuleList([layers[i] for i in idx])
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    if types:
        cfg.layer_types = [types[i] for i in idx]
    cfg.num_hidden_layers = len(idx)
    for j, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j


class EncoderGraph(nn.Module):
    """input_ids, position_ids, attention_mask [B, T] -> per decoder layer j: key, value [B, T, H, D] of encoder layer
    memory[j] (compiler/graph.py encoder_output_names)."""

    def __init__(self, encoder: nn.Module, memory: list[int], causal: bool = False, blend: float | None = None):
        super().__init__()
        self.memory = list(memory)
        self.body = DecoderGraph(encoder, ArchAdapter(encoder), layers=(0, max(memory) + 1), output="hidden",
                                 causal=causal, blend=blend)
        self.kv_heads, self.head_dim = self.body.kv_heads, self.body.head_dim

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor):
        new = self.body(input_ids, position_ids, attention_mask)[1:]        # no cache: keys are the prompt's
        return tuple(t for m in self.memory for t in (new[2 * m], new[2 * m + 1]))


class EncDec(nn.Module):
    """The converted model. encoder / decoder: transformers causal LMs sharing embeddings and head; memory[j]: the
    encoder layer whose keys/values decoder layer j attends to. blend=g0: the encoder's heads mix causal and
    bidirectional attention with learned gates started at g0 (DecoderGraph)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, memory: list[int], decoder_from: list[int],
                 causal_encoder: bool = False, blend: float | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.memory, self.decoder_from = list(memory), list(decoder_from)
        self.causal_encoder = causal_encoder and blend is None
        self.enc_graph = EncoderGraph(encoder, memory, causal=self.causal_encoder, blend=blend)
        self.dec_graph = DecoderGraph(decoder, ArchAdapter(decoder))

    def encode(self, prefix: torch.Tensor) -> list[torch.Tensor]:
        """prefix [B, P] -> the decoder's memory: key, value [B, P, H, D] per decoder layer."""
        B, P = prefix.shape
        if P == 0:
            return self.dec_graph.empty_cache(B, 0, device=prefix.device)
        pos = torch.arange(P, device=prefix.device)[None].expand(B, P)
        return list(self.enc_graph(prefix, pos, torch.ones(B, P, dtype=torch.long, device=prefix.device)))

    def forward(self, prefix: torch.Tensor, dec_ids: torch.Tensor) -> torch.Tensor:
        """prefix [B, P] (the encoder's), dec_ids [B, T] (the decoder's, at positions P..P+T-1) -> logits [B, T, V]."""
        return self.decode(self.encode(prefix), dec_ids)

    def decode(self, mem: list[torch.Tensor], dec_ids: torch.Tensor) -> torch.Tensor:
        """The decoder over memory (key, value [B, P, H, D] per decoder layer) -> logits [B, T, V]."""
        return self.dec_graph.head_logits(self.decode_hidden(mem, dec_ids))

    def decode_hidden(self, mem: list[torch.Tensor], dec_ids: torch.Tensor) -> torch.Tensor:
        """decode without the head: the decoder's last residual stream [B, T, C] (training applies the head a chunk
        of positions at a time)."""
        B, P = mem[0].shape[:2]
        T = dec_ids.shape[1]
        dev = dec_ids.device
        pos = torch.arange(P, P + T, device=dev)[None].expand(B, T)
        return self.dec_graph.trunk(dec_ids, pos, torch.ones(B, P + T, dtype=torch.long, device=dev), *mem)[0]

    def checkpoint_layers(self, on: bool) -> None:
        """Activation checkpointing of every encoder and decoder layer while gradients are on (adaptation)."""
        self.enc_graph.body.checkpoint_layers = self.dec_graph.checkpoint_layers = on

    def prompt_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """A prompt ids [B, n] split as the runtime splits it (encoder: all but the last token) -> logits [B, 1, V]
        of its last token."""
        return self(ids[:, :-1], ids[:, -1:])

    @torch.no_grad()
    def reference(self, ids, steps: int):
        """Greedy continuation with the decoder's cache (validation's torch reference): (tokens [1, n + steps],
        logits [1, 1 + steps, V] from the prompt's last token on)."""
        seq = torch.as_tensor(ids)
        cache = self.encode(seq[:, :-1])
        rows, tok = [], seq[:, -1:]
        for t in range(steps + 1):
            P = cache[0].shape[1]
            out = self.dec_graph(tok, torch.tensor([[P]]), torch.ones(1, P + 1, dtype=torch.long), *cache)
            rows.append(out[0])
            cache = [torch.cat((c, new), dim=1) for c, new in zip(cache, out[1:])]
            if t < steps:
                tok = out[0][:, -1:].argmax(-1)
                seq = torch.cat((seq, tok), dim=1)
        return seq.numpy(), torch.cat(rows, dim=1).float().numpy()

    @torch.no_grad()
    def uncached(self, tokens, n_prompt: int):
        """Logits [1, len - n_prompt + 1, V] of one decoder call over tokens[n_prompt - 1:] (validation's noise floor)."""
        t = torch.as_tensor(tokens)
        return self(t[:, :n_prompt - 1], t[:, n_prompt - 1:]).float().numpy()


def convert(model: nn.Module, decoder_layers: int = 0, pick: str = "spread", causal_encoder: bool = False,
            blend: float | None = None, layers: list[int] | None = None) -> EncDec:
    """Turn `model` (modified in place: it becomes the decoder) into an EncDec. blend=g0: a blended encoder
    (EncDec). layers: the decoder's source layers when already chosen (pick=greedy, pick.py)."""
    ad = ArchAdapter(model)
    n = ad.num_layers
    if getattr(model.config, "use_bidirectional_attention", False):
        raise InputError("--convert encdec: the model's attention is already bidirectional")
    picks = sorted(layers) if layers is not None else pick_layers(n, decoder_layers or n, pick)
    encoder = copy.deepcopy(model)
    _keep_layers(encoder, list(range(max(picks) + 1)))
    encoder.model.embed_tokens = model.model.embed_tokens            # shared (tied) embeddings and head
    encoder.lm_head = model.lm_head
    _keep_layers(model, picks)
    return EncDec(encoder, model, memory=picks, decoder_from=picks, causal_encoder=causal_encoder, blend=blend)
