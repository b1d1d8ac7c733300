"""Tiny random configs of each supported family, for unit tests (seconds, no network)."""
from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, LlamaConfig,
                          MistralConfig, Qwen2Config)

_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def tiny_config(family: str):
    if family == "llama":
        return LlamaConfig(**_COMMON, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**_COMMON, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**_COMMON, tie_word_embeddings=True)
    if family == "gemma":
        return GemmaConfig(**_COMMON, head_dim=16)
    if family == "gemma2":
        return Gemma2Config(**_COMMON, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    if family == "gemma3_text":
        return Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    raise ValueError(f"no tiny config for {family}")


TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A tiny random model in eval mode, fp32, eager attention."""
    cfg = tiny_config(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()
