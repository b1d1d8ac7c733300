"""Architecture adapters: where the parts of a decoder-only transformers model live.

Passes and exporters go through `ArchAdapter` and never name SmolLM2 (or any model) directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..compiler.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Family:
    """What differs between the supported decoder-only families."""

    name: str
    norm_plus_one: bool = False        # Gemma RMSNorm multiplies by (1 + weight)
    embed_scale: bool = False          # Gemma scales embeddings by sqrt(hidden)
    sandwich_norms: bool = False       # Gemma2/3: post-attention and pre/post-feedforward norms
    qk_norm: bool = False              # Gemma3: RMSNorm on queries and keys
    activation: str = "silu"           # or "gelu_tanh"


FAMILIES = {
    "llama": Family("llama"),
    "mistral": Family("mistral"),
    "qwen2": Family("qwen2"),
    "gemma": Family("gemma", norm_plus_one=True, embed_scale=True, activation="gelu_tanh"),
    "gemma2": Family("gemma2", norm_plus_one=True, embed_scale=True, sandwich_norms=True, activation="gelu_tanh"),
    "gemma3_text": Family("gemma3_text", norm_plus_one=True, embed_scale=True, sandwich_norms=True,
                          qk_norm=True, activation="gelu_tanh"),
}
SUPPORTED = ", ".join(sorted(FAMILIES))


class ArchAdapter:
    """Locates the embeddings, decoder layers, attention and MLP projections, norms and head."""

    def __init__(self, model: nn.Module):
        cfg = model.config
        mt = getattr(cfg, "model_type", None)
        if mt == "gemma3":  # multimodal wrapper config: use its text part
            mt = "gemma3_text"
        if mt not in FAMILIES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture '{mt}' ({type(model).__name__}); supported decoder-only families: {SUPPORTED}")
        if not hasattr(model, "model") or not hasattr(model.model, "layers"):
            raise UnsupportedArchitectureError(f"{type(model).__name__} has no decoder layer list (model.layers)")
        self.model = model
        self.family = FAMILIES[mt]
        self.config = cfg

    # -- model-level parts ----------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def embed(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @property
    def head(self) -> nn.Linear:
        return self.model.lm_head

    @property
    def tied_embeddings(self) -> bool:
        return self.head.weight.data_ptr() == self.embed.weight.data_ptr()

    # -- per-layer parts ------------------------------------------------------------------------
    def attn(self, i: int) -> nn.Module:
        return self.layers[i].self_attn

    def mlp(self, i: int) -> nn.Module:
        return self.layers[i].mlp

    def attn_proj(self, i: int) -> dict[str, nn.Linear]:
        a = self.attn(i)
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj}

    def mlp_proj(self, i: int) -> dict[str, nn.Linear]:
        m = self.mlp(i)
        return {"gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}

    def norms(self, i: int) -> dict[str, nn.Module]:
        layer = self.layers[i]
        out = {"input": layer.input_layernorm}
        if self.family.sandwich_norms:
            out.update(post_attn=layer.post_attention_layernorm, pre_ffn=layer.pre_feedforward_layernorm,
                       post_ffn=layer.post_feedforward_layernorm)
        else:
            out["pre_ffn"] = layer.post_attention_layernorm
        if self.family.qk_norm:
            out.update(q=self.attn(i).q_norm, k=self.attn(i).k_norm)
        return out

    def linears(self, include_head: bool = False) -> dict[str, nn.Linear]:
        """Every linear layer of the decoder, by a stable name ("layers.3.mlp.up" ...)."""
        out: dict[str, nn.Linear] = {}
        for i in range(self.num_layers):
            for k, lin in self.attn_proj(i).items():
                out[f"layers.{i}.attn.{k}"] = lin
            for k, lin in self.mlp_proj(i).items():
                out[f"layers.{i}.mlp.{k}"] = lin
        if include_head:
            out["head"] = self.head
        return out

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads

    @property
    def vocab_size(self) -> int:
        return self.head.weight.shape[0]

    def intermediate_sizes(self) -> list[int]:
        return [self.mlp_proj(i)["up"].weight.shape[0] for i in range(self.num_layers)]

    def num_parameters(self) -> int:
        """Parameters counted once (tied embeddings count once)."""
        seen: set[int] = set()
        n = 0
        for p in self.model.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            n += p.numel()
        return n

    def describe(self) -> dict[str, Any]:
        return {"family": self.family.name, "layers": self.num_layers, "hidden": self.hidden_size,
                "heads": self.num_heads, "kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "vocab": self.vocab_size, "tied_embeddings": self.tied_embeddings,
                "parameters": self.num_parameters(), **self._max_positions()}

    def _max_positions(self) -> dict[str, int]:
        """The context the model was trained for (the runtime refuses longer prompts), when the config says."""
        n = getattr(self.config, "max_position_embeddings", None)
        return {"max_positions": int(n)} if isinstance(n, int) and n > 0 else {}
