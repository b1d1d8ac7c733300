"""The exported decoder graph: a plain torch module with an explicit KV cache (docs/architecture.md).

It reuses the model's own projection modules (pruned or quantized layers export as they are), the
norms' weights and the rotary frequencies, and defines attention and masking itself, so no
transformers mask or cache code is traced. Inputs and outputs follow the graph contract:

    input_ids [B,T] int64 (or hidden_in [B,T,C] for a graph that starts mid-model), position_ids [B,T],
    attention_mask [B,P+T] int64, past_key.{i} / past_value.{i} [B,P,H,D]
 -> logits [B,T,V] (or hidden_out [B,T,C], or both), new_key.{i} / new_value.{i} [B,T,H,D]
    [, attn_scores.{i} [B,H,P+T]: with `scores`, the attention probability each slot received, summed over the
       call's queries and the query heads sharing KV head h (what H2O and LoCoCo rank cache slots by)]

Layer indices i are absolute model layers, also for a layer range [first, last).
With causal=False (an encoder, passes/encdec/) every query sees every slot whose attention_mask is 1 (sliding
windows become symmetric). With blend=g0 (an encoder that learns how bidirectional to be) each query head h of
layer j mixes the two: probs = causal + g[j, h] * (bidirectional - causal), g a parameter clamped to [0, 1] and
started at g0 (0: the causal model exactly). Without cache tensors, the keys are the new tokens only.
Sliding-window layers count attended slots: a query sees the `window` most recent slots whose
attention_mask is 1 (itself included); without padding this is transformers' slot distance.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ...compiler import graph as contract
from ...compiler.errors import UnsupportedArchitectureError
from ...models.adapter import ArchAdapter

# families whose attention applies config.attn_logit_softcapping (transformers 5.5: Gemma3 ignores it)
_ATTN_SOFTCAP = {"gemma2"}
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "proportional"}


def _eps(norm: nn.Module) -> float:
    for k in ("variance_epsilon", "eps"):
        if hasattr(norm, k):
            return float(getattr(norm, k))
    raise UnsupportedArchitectureError(f"norm {type(norm).__name__} has no epsilon attribute")


class _RMSNorm(nn.Module):
    """RMSNorm with the model's weight: Llama `w * x`, Gemma `(1 + w) * x` (computed in float32)."""

    def __init__(self, norm: nn.Module, plus_one: bool):
        super().__init__()
        self.weight = norm.weight            # shared parameter, not a copy
        self.eps = _eps(norm)
        self.plus_one = plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = _cast(x, torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return _cast(h * (1.0 + _cast(self.weight, torch.float32)), dtype)
        return self.weight * _cast(h, dtype)


def _rope_tables(model: nn.Module, cfg, layer_types: list[str] | None) -> dict[str, tuple[torch.Tensor, float]]:
    """name -> (inv_freq, attention_scaling) from the model's rotary module (rope scaling included)."""
    rot = model.model.rotary_emb
    rope_type = getattr(rot, "rope_type", "default")
    types = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
    bad = [t for t in types if t not in _STATIC_ROPE]
    if bad:
        raise UnsupportedArchitectureError(f"rope type {bad[0]!r} changes with sequence length and cannot be exported "
                                           f"(supported: {', '.join(sorted(_STATIC_ROPE))})")
    if hasattr(rot, "inv_freq"):
        return {"default": (rot.inv_freq.detach().float().clone(), float(rot.attention_scaling))}
    out = {}
    for t in sorted(set(layer_types or [])):
        out[t] = (getattr(rot, f"{t}_inv_freq").detach().float().clone(), float(getattr(rot, f"{t}_attention_scaling")))
    return out


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # skip no-op casts: the legacy exporter would emit Cast nodes (which also confuse NNCF's ONNX passes)
    return x if x.dtype == dtype else x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class DecoderGraph(nn.Module):
    """Layers [first, last) of a decoder-only model as an explicit-cache graph.

    input:  "ids" (token ids, embedded here) or "hidden" (a residual-stream state from layer `first`)
    output: "logits" (final norm, head, softcapping), "hidden" (the residual stream after `last - 1`) or "both"
            (logits, then that hidden state: what an EAGLE drafter reads from its target)
    Defaults: the whole model, ids in, logits out.
    """

    def __init__(self, model: nn.Module, adapter: ArchAdapter | None = None, layers: tuple[int, int] | None = None,
                 input: str | None = None, output: str | None = None, scores: bool = False, causal: bool = True,
                 blend: float | None = None):
        super().__init__()
        self.scores = scores
        self.causal = causal and blend is None
        self.checkpoint_layers = False     # training sets it: see trunk
        ad = adapter or ArchAdapter(model)
        cfg, fam = ad.config, ad.family
        n = ad.num_layers
        first, last = layers if layers is not None else (0, n)
        if not 0 <= first < last <= n:
            raise ValueError(f"layer range [{first}, {last}) is not inside [0, {n})")
        self.first, self.last = first, last
        self.input_kind = input or ("ids" if first == 0 else "hidden")
        self.output_kind = output or ("logits" if last == n else "hidden")
        if self.input_kind not in ("ids", "hidden") or self.output_kind not in ("logits", "hidden", "both"):
            raise ValueError(f"input must be ids|hidden and output logits|hidden|both, got {input!r}, {output!r}")
        if getattr(cfg, "use_bidirectional_attention", False):
            raise UnsupportedArchitectureError("bidirectional attention models are not causal decoders")
        self.num_heads, self.kv_heads, self.head_dim = ad.num_heads, ad.num_kv_heads, ad.head_dim
        self.hidden_size, self.vocab = ad.hidden_size, ad.vocab_size

        if self.input_kind == "ids":
            self.embed = ad.embed
            # Gemma's scaled embedding module scales itself; a plain Embedding on a Gemma model needs it here
            self.embed_scale = (math.sqrt(ad.hidden_size) if fam.embed_scale and not hasattr(ad.embed, "embed_scale")
                                else None)
        if self.output_kind != "hidden":
            self.final_norm = _RMSNorm(ad.final_norm, fam.norm_plus_one)
            self.head = ad.head
            self.final_softcap = getattr(cfg, "final_logit_softcapping", None)

        layer_types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        rope = _rope_tables(model, cfg, layer_types)
        for name, (inv_freq, _) in rope.items():
            self.register_buffer(f"inv_freq_{name}", inv_freq, persistent=False)
        self.rope_scaling = {name: s for name, (_, s) in rope.items()}
        self.sandwich, self.qk_norm = fam.sandwich_norms, fam.qk_norm
        self.attn_softcap = getattr(cfg, "attn_logit_softcapping", None) if fam.name in _ATTN_SOFTCAP else None

        self.attn, self.mlp, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.layer_rope, self.layer_window, self.layer_scaling = [], [], []
        for i in range(first, last):
            proj = ad.attn_proj(i)
            self.attn.append(nn.ModuleDict(proj))
            mlp = ad.mlp(i)
            self.mlp.append(nn.ModuleDict({**ad.mlp_proj(i), "act": mlp.act_fn}))
            self.norms.append(nn.ModuleDict({k: _RMSNorm(m, fam.norm_plus_one) for k, m in ad.norms(i).items()}))
            ltype = layer_types[i] if layer_types and fam.name != "mistral" else None
            self.layer_rope.append(ltype if ltype in rope else "default")
            sliding = (ltype == "sliding_attention") if ltype is not None else True  # Mistral: every layer
            self.layer_window.append(int(window) if window and sliding else None)
            self.layer_scaling.append(float(getattr(ad.attn(i), "scaling", self.head_dim ** -0.5)))
        self.blend_gate = None if blend is None else nn.Parameter(torch.full((last - first, self.num_heads),
                                                                              float(blend)))

    # -- names (the ONNX input/output order follows these lists) ----------------------------------
    def input_names(self) -> list[str]:
        return contract.input_names(self.last - self.first, self.first, self.input_kind)

    def output_names(self) -> list[str]:
        return contract.output_names(self.last - self.first, self.first, self.output_kind, self.scores)

    # -- the graph --------------------------------------------------------------------------------
    def _mask(self, attention_mask: torch.Tensor, T: int, window: int | None, causal: bool | None = None):
        """Additive bias [B,1,1,T,S]: 0 where allowed, dtype min elsewhere (finite: padded rows stay NaN-free)."""
        causal = self.causal if causal is None else causal
        S = attention_mask.shape[1]
        kv = torch.arange(S, device=attention_mask.device)
        q = torch.arange(T, device=attention_mask.device) + (S - T)
        allowed = attention_mask[:, None, :] > 0                                             # [B,1,S]
        if causal:
            allowed = (kv[None, :] <= q[:, None])[None] & allowed                            # [B,T,S]
        if window is not None:
            cnt = torch.cumsum(attention_mask, dim=-1)                                        # [B,S]
            dist = cnt[:, S - T:, None] - cnt[:, None, :]
            allowed = allowed & ((dist if causal else dist.abs()) < window)
        zero = torch.zeros((), dtype=torch.float32, device=kv.device)
        neg = torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32, device=kv.device)
        return torch.where(allowed, zero, neg)[:, None, None]

    def _rope(self, position_ids: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = getattr(self, f"inv_freq_{name}")
        freqs = position_ids[..., None].float() * inv_freq                                   # [B,T,D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        s = self.rope_scaling[name]
        return (emb.cos() * s)[:, :, None, :], (emb.sin() * s)[:, :, None, :]              # [B,T,1,D]

    def _attention(self, j: int, x: torch.Tensor, rope, bias, past_k, past_v, qmask=None):
        B, T, _ = x.shape
        H, D, G = self.kv_heads, self.head_dim, self.num_heads // self.kv_heads
        p, norms = self.attn[j], self.norms[j]
        q = p["q"](x).view(B, T, H * G, D)
        k = p["k"](x).view(B, T, H, D)
        v = p["v"](x).view(B, T, H, D)
        if self.qk_norm:
            q, k = norms["q"](q), norms["k"](k)
        cos, sin = rope
        cos, sin = _cast(cos, q.dtype), _cast(sin, q.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past_k is None:                                                                   # no cache: S = T
            keys, vals = k, v
        else:
            keys = _cast(torch.cat((past_k, _cast(k, past_k.dtype)), dim=1), q.dtype)              # [B,S,H,D]
            vals = _cast(torch.cat((past_v, _cast(v, past_v.dtype)), dim=1), q.dtype)
        qh = q.view(B, T, H, G, D).permute(0, 2, 3, 1, 4)                                   # [B,H,G,T,D]
        kh = keys.permute(0, 2, 3, 1)[:, :, None]                                            # [B,H,1,D,S]
        vh = vals.permute(0, 2, 1, 3)[:, :, None]                                            # [B,H,1,S,D]
        scores = torch.matmul(qh, kh) * self.layer_scaling[j]                                # [B,H,G,T,S]
        if self.attn_softcap:
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        if isinstance(bias, tuple):      # blend: causal and bidirectional, mixed per query head
            sc = _cast(scores, torch.float32)
            causal, both = torch.softmax(sc + bias[0], dim=-1), torch.softmax(sc + bias[1], dim=-1)
            g = torch.clamp(self.blend_gate[j], 0.0, 1.0).view(1, H, G, 1, 1)
            probs = _cast(causal + g * (both - causal), q.dtype)
        else:
            probs = _cast(torch.softmax(_cast(scores, torch.float32) + bias, dim=-1), q.dtype)
        out = torch.matmul(probs, vh).permute(0, 3, 1, 2, 4).reshape(B, T, H * G * D)     # [B,T,C']
        col = None
        if self.scores:     # masked (padding) queries of a static chunk add nothing: qmask [B,1,1,T,1]
            col = (_cast(probs, torch.float32) * qmask).sum(dim=(2, 3))                     # [B,H,S]
        return p["o"](out), k, v, col

    def forward(self, inputs: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor):
        h, new, cols = self.trunk(inputs, position_ids, attention_mask, *past)
        if self.output_kind == "hidden":
            return (h, *new, *cols)
        logits = self.head_logits(h)
        if self.output_kind == "both":
            return (logits, h, *new, *cols)
        return (logits, *new, *cols)

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last layer -> float32 logits (final norm, head, softcapping)."""
        logits = self.head(self.final_norm(h))
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return _cast(logits, torch.float32)

    def trunk(self, inputs: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
              *past: torch.Tensor, only: list[int] | None = None):
        """The layers without the head -> (the residual stream after the last layer, [key, value per layer],
        [attention column sums per layer when scores]). With checkpoint_layers set and gradients on (training),
        each layer keeps only its input for the backward pass and recomputes the rest there. only: run just these
        layers (indices into this graph's, in order; past then holds their caches only), skipping the others."""
        run = list(range(self.last - self.first)) if only is None else list(only)
        if len(past) not in (0, 2 * len(run)):
            raise ValueError(f"expected {2 * len(run)} cache tensors, got {len(past)}")
        if self.input_kind == "ids":
            h = self.embed(inputs)
            if self.embed_scale is not None:
                h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        else:
            h = inputs
        T = h.shape[1]
        ropes = {name: self._rope(position_ids, name) for name in sorted(set(self.layer_rope))}
        biases = {w: self._mask(attention_mask, T, w) if self.blend_gate is None else
                  (self._mask(attention_mask, T, w, True), self._mask(attention_mask, T, w, False))
                  for w in sorted(set(self.layer_window), key=str)}
        new, cols = [], []
        qmask = (attention_mask[:, -T:] > 0).to(torch.float32)[:, None, None, :, None] if self.scores else None
        recompute = self.checkpoint_layers and torch.is_grad_enabled()
        for i, j in enumerate(run):
            args = (j, h, ropes[self.layer_rope[j]], biases[self.layer_window[j]],
                    *(past[2 * i:2 * i + 2] or (None, None)), qmask)
            h, k, v, col = checkpoint(self._layer, *args, use_reentrant=False) if recompute else self._layer(*args)
            new += [_cast(k, past[2 * i].dtype), _cast(v, past[2 * i + 1].dtype)] if past else [k, v]
            if col is not None:
                cols.append(col)
        return h, new, cols

    def _layer(self, j: int, h: torch.Tensor, rope, bias, past_k, past_v, qmask):
        """Layer j: (the residual stream after it, its new key and value, its attention column sums or None)."""
        norms, mlp = self.norms[j], self.mlp[j]
        a, k, v, col = self._attention(j, norms["input"](h), rope, bias, past_k, past_v, qmask)
        h = h + (norms["post_attn"](a) if self.sandwich else a)
        x = norms["pre_ffn"](h)
        m = mlp["down"](mlp["act"](mlp["gate"](x)) * mlp["up"](x))
        return h + (norms["post_ffn"](m) if self.sandwich else m), k, v, col

    def empty_cache(self, batch: int, length: int = 0, dtype=torch.float32, device=None) -> list[torch.Tensor]:
        """Zero cache tensors [batch, length, H, D] for every layer (key, value interleaved)."""
        return [torch.zeros(batch, length, self.kv_heads, self.head_dim, dtype=dtype, device=device)
                for _ in range(2 * (self.last - self.first))]
